// MLP activations and bias adds.
//
// Legend: n = rows (tokens), F = intermediate size, cols = any row length.
// Host-includable: declarations only; kernels live in activation.cu.
#pragma once

#include <cstdint>

#include "kernels/cuda_check.h"

namespace kvr::kernels {

// out[r, j] = silu(in[r, j]) * in[r, F + j].   in (n, 2F) T, rows [gate | up]; out (n, F) T.
cudaError_t SiluGate(DType dt, const void* in, int n, int F, void* out, cudaStream_t stream);

// x = gelu_erf(x) in place (exact erf form, as torch.nn.GELU()).   x (n, F) T.
cudaError_t GeluInPlace(DType dt, void* x, int n, int F, cudaStream_t stream);

// out[r, j] += bias[j].   out (n, cols) T; bias (cols) T.
cudaError_t AddBias(DType dt, void* out, const void* bias, int n, int cols, cudaStream_t stream);
// out[r, j] += bias[j].   out (n, cols) fp32 (the residual stream); bias (cols) T.
cudaError_t AddBiasF32(DType dt, float* out, const void* bias, int n, int cols, cudaStream_t stream);

// Fills count elements of T with uniform values in [center - scale, center + scale] from a hash
// of (seed, index): random weights for benchmarks and tests, generated on the device.
cudaError_t FillUniform(DType dt, void* p, size_t count, float scale, uint64_t seed,
                        cudaStream_t stream, float center = 0.f);
// Fills count elements of T with `value`.
cudaError_t FillConst(DType dt, void* p, size_t count, float value, cudaStream_t stream);

}  // namespace kvr::kernels
