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

#include <cuda.h>  // CUtensorMap

#include <cstdint>

#include "kernels/cuda_check.h"

namespace kvr::kernels {

// Which split kernel runs (DecodeAttnParams::kernel). kAuto: kMma for groups of 2 or more
// queries per K/V head (KVR_DECODE_MMA=0, a benchmark knob, keeps them on kScalar), kScalar
// otherwise.
// kSingle: single queries (G = 1 only), per-warp online softmax, four K/V stages and one block
// per SM: faster than kScalar at short caches, slower at long ones (PlanDecodeAttention).
// kStream: groups of 1, 2, 4 or 8 queries (planned for 1), K/V streamed through registers with
// no shared-memory tiles (attention_decode.cu says why).
enum class DecodeKernel { kAuto, kScalar, kSingle, kMma, kStream };

struct DecodeAttnParams {
  const void* q = nullptr;           // (B, Hq, D)
  const void* const* k_table = nullptr;  // (B) device pointers to (capacity, Hkv, D)
  const void* const* v_table = nullptr;  // (B)
  const int32_t* len = nullptr;      // (B) device: keys per sequence
  void* out = nullptr;               // (B, Hq, D)
  float* o_part = nullptr;           // (B, Hq, S, D)
  float* lse_part = nullptr;         // (B, Hq, S)
  // (B, Hq) zeros, or null. Set: the last split block of each (sequence, query group) merges the
  // splits and zeroes its counter again (one kernel per step); a group is a kv head's G queries,
  // or for the tensor-core kernel a slice of at most 16 of them. Null: a second kernel merges.
  int* counters = nullptr;
  int B = 0, Hq = 0, Hkv = 0, D = 0;
  int splits = 1;                    // S
  DecodeKernel kernel = DecodeKernel::kAuto;
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
  // (B) device arrays of tensor maps of the same caches (EncodeKvTensorMap): the tensor-core
  // kernel (kMma) loads its K/V tiles through them with the copy engine. Required for kMma.
  const CUtensorMap* k_maps = nullptr;
  const CUtensorMap* v_maps = nullptr;
};

// The tensor map through which the tensor-core decode kernel reads one layer's K (or V) cache of
// a sequence, `base` (capacity, Hkv, D) T token-major: a 3-D tensor (D, Hkv, capacity), innermost
// first, read in boxes of 64 elements x 1 head x 64 keys with the 128-byte swizzle (a box row is
// 128 bytes). Host function; the map is copied to device memory for DecodeAttnParams.
cudaError_t EncodeKvTensorMap(DType dt, const void* base, int capacity, int Hkv, int D, CUtensorMap* map);

// How a decode step's attention runs: the kernel and its split count, planned on the host from
// the shapes and the class of the step's longest cache (DecodeLengthClass). A captured graph
// replays one plan, so the runner keeps a graph per plan. The splits fill one wave of split blocks
// (as many as the SMs hold at once), at most 128. Single queries (G = 1) run kStream at every
// length and batch size (H200, session 12: Llama-2-7B steps 2% faster at 2k-4k and 5% at 32k than
// the kernels before it). Groups run kAuto's choice (kStream was 5-25% slower for Llama-3-8B's
// groups of 4). Knobs for benchmarks: KVR_DECODE_STREAM=0 plans single queries as before:
// kSingle for one sequence whose cache holds at most kDecodeSingleMaxLen keys (measured on an
// H100: 1.3-1.7% off a Llama-2-7B step at 2k-4k against kScalar, 1.2-2.6% slower at 16k-32k;
// docs/benchmarks.md, session 9), kScalar otherwise; with it, KVR_DECODE_SINGLE=0 never plans
// kSingle, =1 plans it at any length. KVR_DECODE_SPLITS_PER_SM replaces the blocks per SM that
// the occupancy calculator gives. Planning queries the occupancy calculator: plan once per shape,
// not per step.
struct DecodeAttnPlan {
  DecodeKernel kernel = DecodeKernel::kScalar;
  int splits = 1;
};
constexpr int kDecodeSingleMaxLen = 8192;
constexpr int kDecodeLengthClasses = 2;  // 0: at most kDecodeSingleMaxLen keys; 1: more
inline int DecodeLengthClass(int max_len) { return max_len <= kDecodeSingleMaxLen ? 0 : 1; }
DecodeAttnPlan PlanDecodeAttention(DType dt, int B, int Hq, int Hkv, int D, int num_sms, int length_class);

// Supported: D in {64, 128}; Hq % Hkv == 0; G * D <= 8192; kSingle only for G = 1; kStream for
// G in {1, 2, 4, 8}; kMma (kAuto for G >= 2) needs k_maps and v_maps.
cudaError_t DecodeAttention(DType dt, const DecodeAttnParams& p, cudaStream_t stream);

}  // namespace kvr::kernels
