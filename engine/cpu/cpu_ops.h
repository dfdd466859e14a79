// The CPU reference backend's ops: plain fp32, one function per op, written to be obviously
// right. Every op computes each output element with the same sequence of float operations
// whatever the batch (T) is, so a chunked prefill reproduces a one-shot prefill bit for bit.
//
// Legend: T tokens in the chunk, C hidden size, V vocab, Hq/Hkv query/key-value heads,
// D head dim, F MLP size, N cached tokens visible to a query. All arrays row-major.
#pragma once

#include <cstdint>

#include "absl/types/span.h"

namespace kvr::cpu {

// out (T, C) = table (V, C) rows at tokens (T).
void Embed(absl::Span<const int32_t> tokens, const float* table, int C, float* out);

// out (T, C) = x / sqrt(mean(x^2) + eps) * w, per row.
void RmsNorm(const float* x, const float* w, int T, int C, float eps, float* out);

// out (T, C) = (x - mean) / sqrt(var + eps) * w + b, per row (biased variance).
void LayerNorm(const float* x, const float* w, const float* b, int T, int C, float eps, float* out);

// out (T, O) = x (T, I) @ W(O, I)^T + bias (O) (bias may be null). Rows of O are split over
// `threads` threads when there is enough work.
void Linear(const float* x, const float* W, const float* bias, int T, int I, int O, float* out,
            int threads);

// Rotary embedding in place on x (T, H, D) for positions start..start+T-1, pairing element i
// with i + D/2 ("rotate_half"); inv_freq has D/2 entries.
void Rotary(float* x, int T, int H, int D, int start, const float* inv_freq);

// Causal attention of queries at positions [start, start + T) over keys [0, start + T):
// query t sees key j iff j <= start + t and (window == 0 or start + t - j < window).
//   q (T, Hq, D); k, v: (N >= start + T, Hkv, D) token-major cache; out (T, Hq, D).
// Query head h reads key/value head h / (Hq / Hkv).
void Attention(const float* q, const float* k, const float* v, int T, int start, int Hq, int Hkv,
               int D, int window, float* out);

// out (T, F) = silu(gu[:, :F]) * gu[:, F:], gu (T, 2F).
void SiluGate(const float* gu, int T, int F, float* out);

// In place: x = 0.5 x (1 + erf(x / sqrt(2))), n elements.
void GeluErf(float* x, int64_t n);

// y += x, n elements.
void AddInPlace(float* y, const float* x, int64_t n);

}  // namespace kvr::cpu
