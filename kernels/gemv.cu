// Decode GEMV kernel. See gemv.cuh.
//
// Block of 4 warps; warp w computes output row blockIdx.x * 4 + w for all n input rows: each lane
// reads 8 consecutive weights (16 bytes) per step, 4 steps in flight, and the matching x values
// (small, cached); fp32 accumulation, a warp reduction, lane 0 writes.
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/gemv.cuh"

namespace kvr::kernels {
namespace {

constexpr int kWarps = 4;

template <typename T, int N>
__global__ void __launch_bounds__(kWarps * 32) GemvKernel(const T* __restrict__ x,
                                                          const T* __restrict__ w, int in, int out,
                                                          void* y, bool y_f32, float beta) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (row >= out) return;
  const T* wr = w + static_cast<size_t>(row) * in;
  float acc[N];
#pragma unroll
  for (int r = 0; r < N; ++r) acc[r] = 0.f;
  constexpr int kUnroll = 4;
  int k = lane * 8;
  for (; k + (kUnroll - 1) * 256 < in; k += kUnroll * 256) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) wv[u] = __ldg(reinterpret_cast<const uint4*>(wr + k + u * 256));
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const T* wa = reinterpret_cast<const T*>(&wv[u]);
#pragma unroll
      for (int r = 0; r < N; ++r) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + static_cast<size_t>(r) * in + k + u * 256));
        const T* xa = reinterpret_cast<const T*>(&xv);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r] += ToF(wa[e]) * ToF(xa[e]);
      }
    }
  }
  for (; k < in; k += 256) {
    const uint4 wv = __ldg(reinterpret_cast<const uint4*>(wr + k));
    const T* wa = reinterpret_cast<const T*>(&wv);
#pragma unroll
    for (int r = 0; r < N; ++r) {
      const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + static_cast<size_t>(r) * in + k));
      const T* xa = reinterpret_cast<const T*>(&xv);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r] += ToF(wa[e]) * ToF(xa[e]);
    }
  }
#pragma unroll
  for (int r = 0; r < N; ++r) acc[r] = WarpSum(acc[r]);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < N; ++r) {
      const size_t i = static_cast<size_t>(r) * out + row;
      if (y_f32) {
        float* yf = static_cast<float*>(y);
        yf[i] = beta != 0.f ? yf[i] * beta + acc[r] : acc[r];
      } else {
        static_cast<T*>(y)[i] = FromF<T>(acc[r]);
      }
    }
  }
}

template <typename T, int N>
cudaError_t Launch(const void* x, const void* w, int in, int out, void* y, bool y_f32, float beta,
                   cudaStream_t stream) {
  GemvKernel<T, N><<<(out + kWarps - 1) / kWarps, kWarps * 32, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(w), in, out, y, y_f32, beta);
  return cudaGetLastError();
}

}  // namespace

cudaError_t Gemv(DType dt, const void* x, const void* w, int n, int in, int out, void* y,
                 bool y_f32, float beta, cudaStream_t stream) {
  if (n < 1 || n > kGemvMaxRows || in % 8 != 0 || (reinterpret_cast<uintptr_t>(x) & 15) ||
      (reinterpret_cast<uintptr_t>(w) & 15))
    return cudaErrorInvalidValue;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    switch (n) {
      case 1: return Launch<T, 1>(x, w, in, out, y, y_f32, beta, stream);
      case 2: return Launch<T, 2>(x, w, in, out, y, y_f32, beta, stream);
      case 3: return Launch<T, 3>(x, w, in, out, y, y_f32, beta, stream);
      default: return Launch<T, 4>(x, w, in, out, y, y_f32, beta, stream);
    }
  });
}

}  // namespace kvr::kernels
