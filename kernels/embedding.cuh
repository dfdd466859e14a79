// Token embedding lookup into the fp32 residual stream.
//
// Legend: n = rows (tokens), C = hidden size, V = vocab size. Element type T is bf16 or fp16.
// Host-includable: declarations only; kernels live in embedding.cu.
#pragma once

#include <cstdint>

#include "kernels/cuda_check.h"

namespace kvr::kernels {

// out[i, :] = float(table[ids[i], :]).  table (V, C) T; ids (n) int32 on the device; out (n, C) fp32.
// Ids outside [0, V) give a row of zeros (the caller validates ids before upload).
cudaError_t EmbeddingLookup(DType dt, const void* table, const int32_t* ids, int n, int C, int V,
                            float* out, cudaStream_t stream);

}  // namespace kvr::kernels
