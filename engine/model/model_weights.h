// ModelWeights: the checkpoint's tensors arranged in the one layout every backend consumes,
// still pointing into the mapped files (no copy). A backend converts each WeightRef to its own
// dtype and memory (fp32 host for the CPU reference, bf16 device for CUDA).
//
// Fused layouts (rows are the output dimension, as in torch.nn.Linear's (out, in) weight):
//   wqkv:  (Hq*D + 2*Hkv*D, C)  rows: all q heads, then all k heads, then all v heads
//   w_up:  (2F, C) for SiLU-gate (rows: gate, then up); (F, C) for GELU
// Binding checks every tensor's shape against ModelConfig and fails with the file, the tensor
// and the expected shape.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_folder.h"

namespace kvr {

// A logical weight: the concatenation along dim 0 of one or more checkpoint tensors.
// Empty `parts` means absent (e.g. no bias).
struct WeightRef {
  std::vector<const TensorView*> parts;
  int64_t rows = 0;  // sum of the parts' dim 0 (or length, for vectors)
  int64_t cols = 0;  // dim 1; 1 for vectors

  bool present() const { return !parts.empty(); }
  int64_t NumElements() const { return rows * cols; }
  // Converts to fp32 into `out` (rows*cols floats, row-major).
  void ToFloat(float* out) const;
  std::vector<float> ToFloat() const;
  // Converts to bf16 or fp16 bits into `out` (rows*cols values, row-major).
  void ToHalf(DType target, uint16_t* out) const;
};

struct LayerWeights {
  WeightRef attn_norm_w;  // (C)
  WeightRef attn_norm_b;  // (C), LayerNorm only
  WeightRef mlp_norm_w;   // (C), absent when attention and MLP run in parallel
  WeightRef mlp_norm_b;   // (C), LayerNorm only
  WeightRef wqkv;         // (Hq*D + 2*Hkv*D, C)
  WeightRef bqkv;         // (Hq*D + 2*Hkv*D), optional
  WeightRef wo;           // (C, Hq*D)
  WeightRef bo;           // (C), optional
  WeightRef w_up;         // (2F, C) SiLU-gate [gate; up], or (F, C) GELU
  WeightRef b_up;         // optional
  WeightRef w_down;       // (C, F)
  WeightRef b_down;       // (C), optional
};

struct ModelWeights {
  WeightRef embed;         // (V, C)
  std::vector<LayerWeights> layers;  // L entries
  WeightRef final_norm_w;  // (C)
  WeightRef final_norm_b;  // (C), LayerNorm only
  WeightRef lm_head;       // (V, C); the embedding when tied
  // Row slices of checkpoint tensors that some parts point into, e.g. Falcon's per-head
  // interleaved QKV ([q0 k0 v0 q1 k1 v1 ...] when multi_query is false) regrouped as [q; k; v].
  // Shared so copies of ModelWeights stay valid; the data still lives in the mapped files.
  std::shared_ptr<std::deque<TensorView>> slices;
};

// Maps the folder's tensor names for its architecture onto ModelWeights and checks shapes.
absl::StatusOr<ModelWeights> BindWeights(const ModelFolder& folder);

}  // namespace kvr
