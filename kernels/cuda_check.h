// Error checking for CUDA runtime, cuBLAS(Lt) and kernel launches. Host-only, no engine headers.
//
//   KVR_CUDA_TRY(cudaMemsetAsync(p, 0, n, stream));   // returns the cudaError_t from the caller
//   KVR_CUDA_TRY(cudaGetLastError());                 // after every launch
#pragma once

#include <cuda_runtime.h>

#define KVR_CUDA_TRY(expr)                     \
  do {                                         \
    cudaError_t kvr_cuda_err_ = (expr);        \
    if (kvr_cuda_err_ != cudaSuccess) return kvr_cuda_err_; \
  } while (0)

namespace kvr::kernels {

// Element type of weights, activations and the KV-cache on the device.
enum class DType { kBF16, kF16 };

inline size_t ElemSize(DType) { return 2; }

}  // namespace kvr::kernels
