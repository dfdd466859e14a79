// Rotary embedding + KV-cache append kernel. See rotary.cuh.
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/rotary.cuh"

namespace kvr::kernels {
namespace {

// Block (row, head group). The row's D/2 angles are computed once per block (fp32 sincosf) into
// shared memory; then thread t walks over (head, 8 pairs) of the group's heads: pairs i..i+7 are
// one 16-byte load from each half of the head and one 16-byte store to each half (2-byte accesses
// left the kernel issue-bound at about 2.1 TB/s in a 4k-token prefill on an H200). Head slots are
// the Hq query heads, the Hkv key heads (rotated), then the Hkv value heads (copied). A prefill
// chunk puts every head of a row in one block; a decode step (few rows) spreads a row's heads
// over several blocks, so the step is not one block's latency.
template <typename T, int D>
__global__ void RopeAppendKernel(RopeAppendParams p, int heads_per_block) {
  constexpr int half = D / 2;
  __shared__ float s_cos[half], s_sin[half];
  PdlWait();
  PdlTrigger();
  const int row = blockIdx.x;
  const int E = (p.Hq + 2 * p.Hkv) * D;
  const T* src = static_cast<const T*>(p.qkv) + static_cast<size_t>(row) * E;
  const int pos = p.pos != nullptr ? p.pos[row] : p.pos0 + row;
  T* kbase = static_cast<T*>(p.k_table != nullptr ? p.k_table[row] : p.k_cache);
  T* vbase = static_cast<T*>(p.v_table != nullptr ? p.v_table[row] : p.v_cache);
  const size_t kv_row = static_cast<size_t>(pos) * p.Hkv * D;
  T* qdst = static_cast<T*>(p.q_out) + static_cast<size_t>(row) * p.Hq * D;
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    sincosf(static_cast<float>(pos) * p.inv_freq[i], &s_sin[i], &s_cos[i]);
  __syncthreads();
  const int h0 = blockIdx.y * heads_per_block;
  const int h1 = min(h0 + heads_per_block, p.Hq + 2 * p.Hkv);
  const int rotated = p.Hq + p.Hkv;
  constexpr int kVec = 8;                // pairs per thread: one uint4 of T from each half
  constexpr int kPerHead = half / kVec;  // threads per head
  for (int t = threadIdx.x; t < (h1 - h0) * kPerHead; t += blockDim.x) {
    const int h = h0 + t / kPerHead, i = (t % kPerHead) * kVec;
    const T* x = src + h * D;  // q, k, v heads are contiguous in the fused row
    const uint4 lo = *reinterpret_cast<const uint4*>(x + i);
    const uint4 hi = *reinterpret_cast<const uint4*>(x + i + half);
    T* dst;
    uint4 out_lo = lo, out_hi = hi;  // value heads: copied as they are
    if (h < rotated) {
      dst = h < p.Hq ? qdst + h * D : kbase + kv_row + (h - p.Hq) * D;
      const T* a = reinterpret_cast<const T*>(&lo);
      const T* b = reinterpret_cast<const T*>(&hi);
      T* ra = reinterpret_cast<T*>(&out_lo);
      T* rb = reinterpret_cast<T*>(&out_hi);
#pragma unroll
      for (int u = 0; u < kVec; ++u) {
        const float c = s_cos[i + u], s = s_sin[i + u];
        const float x1 = ToF(a[u]), x2 = ToF(b[u]);
        ra[u] = FromF<T>(x1 * c - x2 * s);
        rb[u] = FromF<T>(x2 * c + x1 * s);
      }
    } else {
      dst = vbase + kv_row + (h - rotated) * D;
    }
    *reinterpret_cast<uint4*>(dst + i) = out_lo;
    *reinterpret_cast<uint4*>(dst + i + half) = out_hi;
  }
}

}  // namespace

cudaError_t RopeAppend(DType dt, const RopeAppendParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  if (p.D != 64 && p.D != 128) return cudaErrorInvalidValue;
  auto misaligned = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) != 0; };
  if (misaligned(p.qkv) || misaligned(p.q_out) || misaligned(p.k_cache) || misaligned(p.v_cache))
    return cudaErrorInvalidValue;
  const int heads = p.Hq + 2 * p.Hkv;
  const int per = p.n >= 32 ? heads : 8;
  const dim3 grid(p.n, (heads + per - 1) / per);
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    auto kernel = p.D == 64 ? RopeAppendKernel<T, 64> : RopeAppendKernel<T, 128>;
    return LaunchPdl(kernel, grid, dim3(256), 0, stream, p, per);
  });
}

}  // namespace kvr::kernels
