// Embedding lookup kernel. See embedding.cuh.
#include "kernels/common.cuh"
#include "kernels/embedding.cuh"

namespace kvr::kernels {
namespace {

template <typename T>
__global__ void EmbeddingKernel(const T* __restrict__ table, const int32_t* __restrict__ ids,
                                int C, int V, float* __restrict__ out) {
  PdlWait();
  PdlTrigger();
  const int row = blockIdx.x;
  const int id = ids[row];
  float* o = out + static_cast<size_t>(row) * C;
  const bool ok = id >= 0 && id < V;
  const T* t = table + static_cast<size_t>(ok ? id : 0) * C;
  for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = ok ? ToF(t[i]) : 0.f;
}

}  // namespace

cudaError_t EmbeddingLookup(DType dt, const void* table, const int32_t* ids, int n, int C, int V,
                            float* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    return LaunchPdl(EmbeddingKernel<T>, dim3(n), dim3(256), 0, stream,
                     static_cast<const T*>(table), ids, C, V, out);
  });
}

}  // namespace kvr::kernels
