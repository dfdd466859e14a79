// RMSNorm and LayerNorm of the fp32 residual stream into the compute type.
//
// Legend: n = rows (tokens), C = hidden size. x is the fp32 residual (n, C) with row stride C;
// w, b are (C) in T; out is (n, C) in T. Statistics in fp32.
// The residual add is fused elsewhere: the output projections accumulate straight into x
// (GEMM with beta = 1, fp32 C/D), so a norm only reads x once and writes T once.
// Host-includable: declarations only; kernels live in norm.cu.
#pragma once

#include "kernels/cuda_check.h"

namespace kvr::kernels {

// out = x / sqrt(mean(x^2) + eps) * w.          x (n, C) fp32; w (C) T; out (n, C) T.
cudaError_t RmsNorm(DType dt, const float* x, const void* w, float eps, int n, int C, void* out,
                    cudaStream_t stream);

// out = (x - mean) / sqrt(var + eps) * w + b.   x (n, C) fp32; w, b (C) T; out (n, C) T.
cudaError_t LayerNorm(DType dt, const float* x, const void* w, const void* b, float eps, int n,
                      int C, void* out, cudaStream_t stream);

}  // namespace kvr::kernels
