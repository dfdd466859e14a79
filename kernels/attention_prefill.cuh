// Prefill attention: a chunk's queries at positions [s, s + n) against keys [0, s + n) of the
// KV-cache, bottom-right-aligned causal mask (query i sees keys j <= s + i), optional sliding
// window (and i + s - j < W), grouped- and multi-query heads.
//
// Legend: n = queries in the chunk, s = prefix length (position of the chunk's first query),
// Hq / Hkv = query / key-value heads (Hq % Hkv == 0, head h reads kv head h / (Hq / Hkv)),
// D = head size (64 or 128).
// Layouts: q (n, Hq, D) T; K and V are one layer of the token-major cache, (capacity, Hkv, D) T,
// rows [0, s + n) valid; out (n, Hq, D) T. T is bf16 or fp16; products on tensor cores with fp32
// accumulation; flash-style (tiles of 128 queries x 64 keys, online softmax in fp32, no score
// matrix in memory).
// Host-includable: declarations only; the kernel lives in attention_prefill.cu.
#pragma once

#include "kernels/cuda_check.h"

namespace kvr::kernels {

struct PrefillAttnParams {
  const void* q = nullptr;  // (n, Hq, D)
  const void* k = nullptr;  // (capacity, Hkv, D), rows [0, s + n) read
  const void* v = nullptr;  // (capacity, Hkv, D)
  void* out = nullptr;      // (n, Hq, D)
  int n = 0;                // queries
  int s = 0;                // prefix length: query i is at position s + i
  int Hq = 0, Hkv = 0, D = 0;
  int window = 0;           // key j visible to position p iff j <= p and p - j < window; 0 = no window
  float scale = 0.f;        // softmax scale, usually 1/sqrt(D)
  // Kernel variant: 1 = 8 warps x 16 query rows, 2 = 4 warps x 16 rows, 3 = 4 warps x 32 rows;
  // 0 = the default for n (see attention_prefill.cu).
  int variant = 0;
  // Extents of the caller's buffers, read only by cuDNN's bucketed plans (cudnn_attention.h); the
  // mma kernel ignores them. 0 / false: exactly what the shape needs (no bucketing).
  int q_rows = 0;               // rows of q and out the caller owns (>= n); rows [n, q_rows) may
                                // be read (q) and overwritten (out) by a bucketed plan
  int kv_rows = 0;              // rows of k and v (the cache capacity)
  bool kv_tail_finite = false;  // rows [s + n, kv_rows) of k and v hold finite values (e.g. the
                                // cache was zeroed at allocation)
};

// Supported: D in {64, 128}; Hq % Hkv == 0. Returns cudaErrorInvalidValue otherwise.
cudaError_t PrefillAttention(DType dt, const PrefillAttnParams& p, cudaStream_t stream);

}  // namespace kvr::kernels
