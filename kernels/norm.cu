// RMSNorm / LayerNorm kernels: one block per row, fp32 statistics. See norm.cuh.
//
// The row stays in registers (kMaxPer float4 per thread, C up to 4 * kThreads * kMaxPer = 8192 when
// C % 4 == 0) and the statistics are two block reductions over registers: the kernel reads x
// once. Decode calls it on one row, where it is latency-bound: the norm weights (immutable) are
// loaded before PdlWait. Other sizes take the plain loop, which re-reads x.
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/norm.cuh"

namespace kvr::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kMaxPer = 4;

template <typename T>
struct alignas(8) Vec4 {  // 4 elements of T, one 8-byte load
  T v[4];
};

template <typename T, bool kLayer>
__global__ void __launch_bounds__(kThreads) NormRegKernel(const float* __restrict__ x,
                                                          const T* __restrict__ w,
                                                          const T* __restrict__ b, float eps,
                                                          int C, T* __restrict__ out) {
  __shared__ float scratch[32];
  const int C4 = C / 4;
  Vec4<T> wv[kMaxPer], bv[kMaxPer];
#pragma unroll
  for (int j = 0; j < kMaxPer; ++j) {
    const int i = threadIdx.x + j * kThreads;
    if (i < C4) {
      wv[j] = reinterpret_cast<const Vec4<T>*>(w)[i];
      if (kLayer && b != nullptr) bv[j] = reinterpret_cast<const Vec4<T>*>(b)[i];
    }
  }
  PdlWait();
  PdlTrigger();
  const float4* xr = reinterpret_cast<const float4*>(x + static_cast<size_t>(blockIdx.x) * C);
  float4 xv[kMaxPer];
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxPer; ++j) {
    const int i = threadIdx.x + j * kThreads;
    xv[j] = i < C4 ? xr[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    s += (xv[j].x + xv[j].y) + (xv[j].z + xv[j].w);
  }
  float mean = 0.f;
  if (kLayer) mean = BlockSum(s, scratch) / C;
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxPer; ++j) {
    const int i = threadIdx.x + j * kThreads;
    if (i < C4) {
      const float a = xv[j].x - mean, b2 = xv[j].y - mean, c = xv[j].z - mean, d = xv[j].w - mean;
      ss += (a * a + b2 * b2) + (c * c + d * d);
    }
  }
  const float inv = rsqrtf(BlockSum(ss, scratch) / C + eps);
  Vec4<T>* orow = reinterpret_cast<Vec4<T>*>(out + static_cast<size_t>(blockIdx.x) * C);
#pragma unroll
  for (int j = 0; j < kMaxPer; ++j) {
    const int i = threadIdx.x + j * kThreads;
    if (i >= C4) continue;
    const float in[4] = {xv[j].x, xv[j].y, xv[j].z, xv[j].w};
    Vec4<T> o;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float y = (in[e] - mean) * inv * ToF(wv[j].v[e]);
      if (kLayer && b != nullptr) y += ToF(bv[j].v[e]);
      o.v[e] = FromF<T>(y);
    }
    orow[i] = o;
  }
}

// Any C: one block per row, re-reading x.
template <typename T, bool kLayer>
__global__ void __launch_bounds__(kThreads) NormLoopKernel(const float* __restrict__ x,
                                                           const T* __restrict__ w,
                                                           const T* __restrict__ b, float eps,
                                                           int C, T* __restrict__ out) {
  __shared__ float scratch[32];
  PdlWait();
  PdlTrigger();
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

template <bool kLayer>
cudaError_t LaunchNorm(DType dt, const float* x, const void* w, const void* b, float eps, int n,
                       int C, void* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const bool reg = C % 4 == 0 && C <= 4 * kThreads * kMaxPer &&
                   (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(w) & 7) == 0 &&
                   (reinterpret_cast<uintptr_t>(b) & 7) == 0 &&
                   (reinterpret_cast<uintptr_t>(out) & 7) == 0;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    auto kernel = reg ? NormRegKernel<T, kLayer> : NormLoopKernel<T, kLayer>;
    return LaunchPdl(kernel, dim3(n), dim3(kThreads), 0, stream, x, static_cast<const T*>(w),
                     static_cast<const T*>(b), eps, C, static_cast<T*>(out));
  });
}

}  // namespace

cudaError_t RmsNorm(DType dt, const float* x, const void* w, float eps, int n, int C, void* out,
                    cudaStream_t stream) {
  return LaunchNorm<false>(dt, x, w, nullptr, eps, n, C, out, stream);
}

cudaError_t LayerNorm(DType dt, const float* x, const void* w, const void* b, float eps, int n,
                      int C, void* out, cudaStream_t stream) {
  return LaunchNorm<true>(dt, x, w, b, eps, n, C, out, stream);
}

}  // namespace kvr::kernels
