// Rotary embedding of Q and K, fused with the append of K and V to the KV-cache.
//
// Legend: n = rows (tokens of a chunk, or sequences of a decode batch), Hq / Hkv = query / key-value
// heads, D = head size, E = Hq*D + 2*Hkv*D (columns of the fused QKV projection output).
// Pairs are (i, i + D/2) ("rotate_half", as in HF Llama, Mistral and Falcon); the angle of pair i
// at position p is p * inv_freq[i], computed in fp32; inv_freq carries any scaling (Llama 3,
// linear), computed once on the host by RopeInverseFrequencies.
// Host-includable: declarations only; kernels live in rotary.cu.
#pragma once

#include <cstdint>

#include "kernels/cuda_check.h"

namespace kvr::kernels {

struct RopeAppendParams {
  const void* qkv = nullptr;        // (n, E) T: q heads, then k heads, then v heads
  int n = 0, Hq = 0, Hkv = 0, D = 0;
  void* q_out = nullptr;            // (n, Hq, D) T: rotated queries
  const float* inv_freq = nullptr;  // (D/2) fp32, device
  // Position of row i: pos[i] when pos != nullptr (device, decode), else pos0 + i (prefill chunk).
  const int32_t* pos = nullptr;
  int pos0 = 0;
  // Cache of row i: k_table[i] / v_table[i] when the tables are set (device arrays of n base
  // pointers, decode), else k_cache / v_cache. Each base is one layer's (capacity, Hkv, D) array;
  // row i's rotated K and its V land at token index = its position.
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  void* const* k_table = nullptr;
  void* const* v_table = nullptr;
};

// Supported: D in {64, 128}; qkv, q_out and the cache rows 16-byte aligned (the kernel moves 8
// elements per access).
cudaError_t RopeAppend(DType dt, const RopeAppendParams& p, cudaStream_t stream);

}  // namespace kvr::kernels
