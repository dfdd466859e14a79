// RMSNorm / LayerNorm kernels: one block per row, fp32 statistics. See norm.cuh.
#include "kernels/common.cuh"
#include "kernels/norm.cuh"

namespace kvr::kernels {
namespace {

constexpr int kThreads = 256;

// x (n, C) fp32 -> out (n, C) T. One block per row; each thread keeps its slice in registers
// when C <= kThreads * 32 (C up to 8192), else re-reads.
template <typename T, bool kLayer>
__global__ void NormKernel(const float* __restrict__ x, const T* __restrict__ w,
                           const T* __restrict__ b, float eps, int C, T* __restrict__ out) {
  __shared__ float scratch[32];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * C;
  T* orow = out + static_cast<size_t>(blockIdx.x) * C;
  float mean = 0.f;
  if (kLayer) {
    float s = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += xr[i];
    mean = BlockSum(s, scratch) / C;
  }
  float ss = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    const float d = xr[i] - mean;
    ss += d * d;
  }
  const float inv = rsqrtf(BlockSum(ss, scratch) / C + eps);
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float y = (xr[i] - mean) * inv * ToF(w[i]);
    if (kLayer && b != nullptr) y += ToF(b[i]);
    orow[i] = FromF<T>(y);
  }
}

}  // namespace

cudaError_t RmsNorm(DType dt, const float* x, const void* w, float eps, int n, int C, void* out,
                    cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    NormKernel<T, false><<<n, kThreads, 0, stream>>>(x, static_cast<const T*>(w), nullptr, eps, C,
                                                     static_cast<T*>(out));
    return cudaGetLastError();
  });
}

cudaError_t LayerNorm(DType dt, const float* x, const void* w, const void* b, float eps, int n,
                      int C, void* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    NormKernel<T, true><<<n, kThreads, 0, stream>>>(x, static_cast<const T*>(w),
                                                    static_cast<const T*>(b), eps, C,
                                                    static_cast<T*>(out));
    return cudaGetLastError();
  });
}

}  // namespace kvr::kernels
