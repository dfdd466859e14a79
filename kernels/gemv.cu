// Decode GEMV kernel. See gemv.cuh.
//
// Block of kWarps warps. kSplit warps share one output row, each taking a contiguous range of the
// row's 256-element chunks (lane l reads elements chunk * 256 + 8l .. + 7 as one 16-byte load); a
// block covers kWarps / kSplit rows. A warp issues kUnroll weight loads at a time; with kPipe the
// next kUnroll are issued before the current ones are consumed (two batches in flight). The x
// values are small and cached (__ldg); the weights, read once, do not allocate in L1. The first
// batch is loaded before PdlWait: weights never depend on the previous kernel, so under
// programmatic dependent launch the weight stream starts while that kernel is finishing. fp32
// accumulation; warp sums, then (kSplit > 1) the kSplit partial sums in a fixed order through
// shared memory: deterministic.
// The shapes (warps, split, unroll, pipelining) are numbered variants, measured against each
// other by kvr_cuda_bench (docs/benchmarks.md): variant 4 (8 warps, 4 per row, 4 loads, two
// batches in flight) was the fastest on every decode shape of the 7B/8B models on an H200, alone
// and in the whole decode step, so Gemv uses it.
#include <cstdint>
#include <cstdlib>

#include "kernels/common.cuh"
#include "kernels/gemv.cuh"

namespace kvr::kernels {
namespace {

// A weight load: read once, so it does not allocate in L1, where x is read by every block of the
// SM. Against __ldg (H200, session 12): Falcon-7B decode steps 8.5% faster at 4k and 3% at 32k,
// Llama-3-8B and Mistral-7B 0.6% at 4k, Llama-2-7B within 0.5% either way.
__device__ __forceinline__ uint4 LoadStream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// acc[r] += (this lane's share of) dot(x row r, weight row) over chunks [c0, c1) of the row; wr
// already points at the lane's first element. Issues the first kUnroll weight loads, then waits
// for the previous kernel (PdlWait) and calls after_wait() before reading x. Every thread of the
// block must call it.
template <typename T, int N, int kUnroll, bool kPipe, typename AfterWait>
__device__ __forceinline__ void RowDot(const T* __restrict__ x, const T* __restrict__ wr, int in,
                                       int c0, int c1, bool active, float (&acc)[N],
                                       const AfterWait& after_wait) {
  const int lane = threadIdx.x & 31;
  auto valid = [&](int c) { return active && c < c1 && c * 256 + lane * 8 < in; };
  auto load = [&](int c) {
    return valid(c) ? LoadStream(reinterpret_cast<const uint4*>(wr + c * 256)) : make_uint4(0, 0, 0, 0);
  };
  uint4 wv[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) wv[u] = load(c0 + u);
  PdlWait();
  PdlTrigger();
  after_wait();
#pragma unroll
  for (int r = 0; r < N; ++r) acc[r] = 0.f;
  for (int c = c0; c < c1; c += kUnroll) {
    uint4 nx[kPipe ? kUnroll : 1];
    if constexpr (kPipe) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) nx[u] = load(c + kUnroll + u);
    } else if (c != c0) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) wv[u] = load(c + u);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (!valid(c + u)) continue;
      const int k = (c + u) * 256 + lane * 8;
      const T* wa = reinterpret_cast<const T*>(&wv[u]);
#pragma unroll
      for (int r = 0; r < N; ++r) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + static_cast<size_t>(r) * in + k));
        const T* xa = reinterpret_cast<const T*>(&xv);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r] += ToF(wa[e]) * ToF(xa[e]);
      }
    }
    if constexpr (kPipe) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) wv[u] = nx[u];
    }
  }
#pragma unroll
  for (int r = 0; r < N; ++r) acc[r] = WarpSum(acc[r]);
}

template <typename T, int N, int kWarps, int kSplit, int kUnroll, bool kPipe>
__global__ void __launch_bounds__(kWarps * 32) GemvKernel(const T* __restrict__ x,
                                                          const T* __restrict__ w, int in, int out,
                                                          void* y, bool y_f32, float beta) {
  constexpr int kRows = kWarps / kSplit;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x * kRows + warp / kSplit;
  const int part = warp % kSplit;
  const bool active = row < out;
  const int chunks = (in + 255) / 256;
  const int c0 = part * chunks / kSplit, c1 = (part + 1) * chunks / kSplit;
  const T* wr = w + static_cast<size_t>(active ? row : 0) * in + lane * 8;
  float acc[N];
  // With beta, the thread that writes the row reads its old y values as soon as the kernel before
  // has finished, so that the read is not on the block's tail.
  const bool writer = lane == 0 && part == 0 && active;
  const bool accumulate = y_f32 && beta != 0.f;
  float y_old[N];
  RowDot<T, N, kUnroll, kPipe>(x, wr, in, c0, c1, active, acc, [&] {
#pragma unroll
    for (int r = 0; r < N; ++r)
      y_old[r] = writer && accumulate ? static_cast<const float*>(y)[static_cast<size_t>(r) * out + row] : 0.f;
  });
  if constexpr (kSplit > 1) {
    __shared__ float partial[kWarps][N];
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < N; ++r) partial[warp][r] = acc[r];
    }
    __syncthreads();
    if (part != 0) return;
#pragma unroll
    for (int r = 0; r < N; ++r) {
      acc[r] = partial[warp][r];
#pragma unroll
      for (int q = 1; q < kSplit; ++q) acc[r] += partial[warp + q][r];
    }
  }
  if (writer) {
#pragma unroll
    for (int r = 0; r < N; ++r) {
      const size_t i = static_cast<size_t>(r) * out + row;
      if (y_f32) {
        static_cast<float*>(y)[i] = accumulate ? y_old[r] * beta + acc[r] : acc[r];
      } else {
        static_cast<T*>(y)[i] = FromF<T>(acc[r]);
      }
    }
  }
}

struct Args {
  const void* x;
  const void* w;
  int in, out;
  void* y;
  bool y_f32;
  float beta;
  cudaStream_t stream;
};

template <typename T, int N, int kWarps, int kSplit, int kUnroll, bool kPipe>
cudaError_t Launch(const Args& a) {
  constexpr int kRows = kWarps / kSplit;
  return LaunchPdl(GemvKernel<T, N, kWarps, kSplit, kUnroll, kPipe>,
                   dim3((a.out + kRows - 1) / kRows), dim3(kWarps * 32), 0, a.stream,
                   static_cast<const T*>(a.x), static_cast<const T*>(a.w), a.in, a.out, a.y,
                   a.y_f32, a.beta);
}

// Variants: (warps, warps per row, loads per batch, two batches in flight).
template <typename T, int N>
cudaError_t LaunchVariant(int v, const Args& a) {
  switch (v) {
    case 0: return Launch<T, N, 4, 1, 4, false>(a);
    case 1: return Launch<T, N, 4, 1, 8, false>(a);
    case 2: return Launch<T, N, 4, 1, 4, true>(a);
    case 3: return Launch<T, N, 8, 2, 4, true>(a);
    case 4: return Launch<T, N, 8, 4, 4, true>(a);
    case 5: return Launch<T, N, 4, 1, 16, false>(a);
    case 6: return Launch<T, N, 4, 2, 8, false>(a);
    default: return Launch<T, N, 2, 1, 8, false>(a);
  }
}

// Gemv's variant: KVR_GEMV_VARIANT when set (benchmarks), else 4, the fastest measured on every
// decode shape (see the header comment).
int DefaultVariant() {
  static const int forced = [] {
    const char* e = std::getenv("KVR_GEMV_VARIANT");
    return e != nullptr ? std::atoi(e) : -1;
  }();
  return forced >= 0 && forced < kGemvVariants ? forced : 4;
}

}  // namespace

cudaError_t GemvVariant(int variant, DType dt, const void* x, const void* w, int n, int in,
                        int out, void* y, bool y_f32, float beta, cudaStream_t stream) {
  if (n < 1 || n > kGemvMaxRows || in % 8 != 0 || (reinterpret_cast<uintptr_t>(x) & 15) ||
      (reinterpret_cast<uintptr_t>(w) & 15) || variant >= kGemvVariants)
    return cudaErrorInvalidValue;
  const int v = variant >= 0 ? variant : DefaultVariant();
  const Args a{x, w, in, out, y, y_f32, beta, stream};
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    switch (n) {
      case 1: return LaunchVariant<T, 1>(v, a);
      case 2: return LaunchVariant<T, 2>(v, a);
      case 3: return LaunchVariant<T, 3>(v, a);
      default: return LaunchVariant<T, 4>(v, a);
    }
  });
}

cudaError_t Gemv(DType dt, const void* x, const void* w, int n, int in, int out, void* y,
                 bool y_f32, float beta, cudaStream_t stream) {
  return GemvVariant(-1, dt, x, w, n, in, out, y, y_f32, beta, stream);
}

}  // namespace kvr::kernels
