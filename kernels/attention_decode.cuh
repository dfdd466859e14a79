// Decode attention: one new query token per sequence against its whole cache, split across the
// key dimension (flash-decoding) so that one sequence with a long cache fills the GPU.
//
// Legend: B = sequences in the batch, Hq / Hkv = query / key-value heads (G = Hq / Hkv queries
// share one K/V head), D = head size (64 or 128), S = splits of the keys, len[b] = keys of
// sequence b (its position + 1).
// Layouts: q (B, Hq, D) T; k_table[b] / v_table[b] point at one layer of sequence b's token-major
// cache, (capacity, Hkv, D) T, rows [0, len[b]) read (or the last `window` of them);
// out (B, Hq, D) T. Work buffers: o_part (B, Hq, S, D) fp32 and lse_part (B, Hq, S) fp32.
// The launch shape depends only on (B, Hkv, S), and lengths and pointers are read on the device,
// so a decode step can be captured in a CUDA graph once and replayed as caches grow.
// Host-includable: declarations only; the kernels live in attention_decode.cu.
#pragma once

#include <cstdint>

#include "kernels/cuda_check.h"

namespace kvr::kernels {

struct DecodeAttnParams {
  const void* q = nullptr;           // (B, Hq, D)
  const void* const* k_table = nullptr;  // (B) device pointers to (capacity, Hkv, D)
  const void* const* v_table = nullptr;  // (B)
  const int32_t* len = nullptr;      // (B) device: keys per sequence
  void* out = nullptr;               // (B, Hq, D)
  float* o_part = nullptr;           // (B, Hq, S, D)
  float* lse_part = nullptr;         // (B, Hq, S)
  // (B, Hkv) zeros, or null. Set: the last split block of each (sequence, kv head) merges the
  // splits and zeroes its counter again (one kernel per step). Null: a second kernel merges.
  int* counters = nullptr;
  int B = 0, Hq = 0, Hkv = 0, D = 0;
  int splits = 1;                    // S
  int window = 0;                    // 0 = attend to all len keys, else the last `window`
  float scale = 0.f;
  // Rotary embedding and cache append fused in (decode): with qkv set, q is not read. The queries
  // are rotated from qkv (B, Hq*D + 2*Hkv*D) T (q heads, k heads, v heads, as RopeAppend reads
  // it) at position len[b] - 1 with inv_freq (D/2, fp32), rounded to T as RopeAppend rounds them;
  // that position's rotated K and its V are written to the caches k_out[b] / v_out[b] (the same
  // caches as k_table / v_table) before any block reads them, so the result equals RopeAppend
  // followed by this kernel, bit for bit.
  const void* qkv = nullptr;
  const float* inv_freq = nullptr;
  void* const* k_out = nullptr;
  void* const* v_out = nullptr;
};

// Number of key splits for a batch of B with Hq / Hkv heads of size D: one full wave of split
// blocks (as many as the SMs hold at once), at most 128. KVR_DECODE_SPLITS_PER_SM (a knob for
// benchmarks) replaces the blocks per SM that the occupancy calculator gives.
int DecodeAttentionSplits(DType dt, int B, int Hq, int Hkv, int D, int num_sms);

// Supported: D in {64, 128}; Hq % Hkv == 0; G * D <= 8192.
cudaError_t DecodeAttention(DType dt, const DecodeAttnParams& p, cudaStream_t stream);

}  // namespace kvr::kernels
