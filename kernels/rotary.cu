// Rotary embedding + KV-cache append kernel. See rotary.cuh.
#include "kernels/common.cuh"
#include "kernels/rotary.cuh"

namespace kvr::kernels {
namespace {

// One block per row. The row's D/2 angles are computed once (fp32 sincosf) into shared memory,
// then thread t walks over (head, pair) for the Hq + Hkv rotated heads, then over the V elements.
template <typename T, int D>
__global__ void RopeAppendKernel(RopeAppendParams p) {
  constexpr int half = D / 2;
  __shared__ float s_cos[half], s_sin[half];
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
  const int pairs = (p.Hq + p.Hkv) * half;
  for (int t = threadIdx.x; t < pairs; t += blockDim.x) {
    const int h = t / half, i = t % half;
    const T* x = src + h * D;  // q heads then k heads are contiguous in the fused row
    const float c = s_cos[i], s = s_sin[i];
    const float x1 = ToF(x[i]), x2 = ToF(x[i + half]);
    const T y1 = FromF<T>(x1 * c - x2 * s), y2 = FromF<T>(x2 * c + x1 * s);
    T* dst = h < p.Hq ? qdst + h * D : kbase + kv_row + (h - p.Hq) * D;
    dst[i] = y1;
    dst[i + half] = y2;
  }
  const T* vsrc = src + (p.Hq + p.Hkv) * D;
  for (int t = threadIdx.x; t < p.Hkv * D; t += blockDim.x) vbase[kv_row + t] = vsrc[t];
}

}  // namespace

cudaError_t RopeAppend(DType dt, const RopeAppendParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  if (p.D != 64 && p.D != 128) return cudaErrorInvalidValue;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    if (p.D == 64) {
      RopeAppendKernel<T, 64><<<p.n, 256, 0, stream>>>(p);
    } else {
      RopeAppendKernel<T, 128><<<p.n, 256, 0, stream>>>(p);
    }
    return cudaGetLastError();
  });
}

}  // namespace kvr::kernels
