// Rotary embedding + KV-cache append kernel. See rotary.cuh.
#include "kernels/common.cuh"
#include "kernels/rotary.cuh"

namespace kvr::kernels {
namespace {

// Block (row, head group). The row's D/2 angles are computed once per block (fp32 sincosf) into
// shared memory; then thread t walks over (head, pair) of the group's heads. Head slots are the
// Hq query heads, the Hkv key heads (rotated), then the Hkv value heads (copied). A prefill chunk
// puts every head of a row in one block; a decode step (few rows) spreads a row's heads over
// several blocks, so the step is not one block's latency.
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
  for (int t = threadIdx.x; t < (h1 - h0) * half; t += blockDim.x) {
    const int h = h0 + t / half, i = t % half;
    const T* x = src + h * D;  // q, k, v heads are contiguous in the fused row
    if (h < rotated) {
      const float c = s_cos[i], s = s_sin[i];
      const float x1 = ToF(x[i]), x2 = ToF(x[i + half]);
      T* dst = h < p.Hq ? qdst + h * D : kbase + kv_row + (h - p.Hq) * D;
      dst[i] = FromF<T>(x1 * c - x2 * s);
      dst[i + half] = FromF<T>(x2 * c + x1 * s);
    } else {
      T* dst = vbase + kv_row + (h - rotated) * D;
      dst[i] = x[i];
      dst[i + half] = x[i + half];
    }
  }
}

}  // namespace

cudaError_t RopeAppend(DType dt, const RopeAppendParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  if (p.D != 64 && p.D != 128) return cudaErrorInvalidValue;
  const int heads = p.Hq + 2 * p.Hkv;
  const int per = p.n >= 32 ? heads : 8;
  const dim3 grid(p.n, (heads + per - 1) / per);
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    auto kernel = p.D == 64 ? RopeAppendKernel<T, 64> : RopeAppendKernel<T, 128>;
    return LaunchPdl(kernel, grid, dim3(256), 0, stream, p, per);
  });
}

}  // namespace kvr::kernels
