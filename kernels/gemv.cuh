// Matrix-vector products for decode (few rows): y = x W^T (+ beta * y), memory-bound, reading W
// once with 16-byte loads. Used by Gemm::Linear for n <= kGemvMaxRows (chosen by measurement:
// cuBLASLt's kernels for one row reached about 2 TB/s of the H100's 3 TB/s on the 7B shapes).
//
// Legend: n = rows of x (1..kGemvMaxRows), in = input features (a multiple of 8),
// out = output features. x (n, in) T; W (out, in) T; y (n, out) T, or fp32 with beta.
// Host-includable: declarations only; kernels live in gemv.cu.
#pragma once

#include "kernels/cuda_check.h"

namespace kvr::kernels {

constexpr int kGemvMaxRows = 4;
constexpr int kGemvVariants = 8;

// Returns cudaErrorInvalidValue unless 1 <= n <= kGemvMaxRows and in % 8 == 0 and x, W are
// 16-byte aligned.
cudaError_t Gemv(DType dt, const void* x, const void* w, int n, int in, int out, void* y,
                 bool y_f32, float beta, cudaStream_t stream);

// The same with kernel variant `variant` (0 .. kGemvVariants - 1; -1 = Gemv's own choice), for
// benchmarks that compare the variants.
cudaError_t GemvVariant(int variant, DType dt, const void* x, const void* w, int n, int in,
                        int out, void* y, bool y_f32, float beta, cudaStream_t stream);

}  // namespace kvr::kernels
