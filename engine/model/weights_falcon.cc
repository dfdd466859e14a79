// Falcon (7B layout) checkpoint names -> ModelWeights.
//   transformer.word_embeddings.weight                       (V, C)
//   transformer.h.{i}.input_layernorm.{weight,bias}          (C)
//   transformer.h.{i}.post_attention_layernorm.{weight,bias} (C), only when parallel_attn is false
//   transformer.h.{i}.self_attention.query_key_value.weight  (Hq*D + 2*Hkv*D, C)  (+ .bias when bias)
//       multi_query: rows [q heads; k; v], as wqkv wants them.
//       otherwise:   rows [q0 k0 v0 q1 k1 v1 ...], one D-row block each, regrouped here as row slices.
//   transformer.h.{i}.self_attention.dense.weight            (C, Hq*D)            (+ .bias)
//   transformer.h.{i}.mlp.dense_h_to_4h.weight               (F, C)               (+ .bias)
//   transformer.h.{i}.mlp.dense_4h_to_h.weight               (C, F)               (+ .bias)
//   transformer.ln_f.{weight,bias}                           (C)
//   lm_head.weight                                           (V, C), or the embedding when tied
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/model/weights_internal.h"
#include "engine/util/status_macros.h"

namespace kvr::weights_internal {
namespace {

// Regroups per-head interleaved [q_h; k_h; v_h] blocks of D rows into [all q; all k; all v].
WeightRef Deinterleave(WeightBinder& b, const TensorView& t, int heads, int64_t D) {
  std::vector<const TensorView*> parts;
  for (int which = 0; which < 3; ++which) {
    for (int h = 0; h < heads; ++h) parts.push_back(b.Slice(t, (3 * int64_t{h} + which) * D, D));
  }
  return Concat(std::move(parts));
}

}  // namespace

absl::Status BindFalconWeights(const ModelFolder& folder, ModelWeights* w) {
  const ModelConfig& c = folder.config();
  WeightBinder b(folder, w);
  const int64_t V = c.vocab_size, C = c.hidden_size, F = c.intermediate_size, D = c.head_dim;
  const int64_t QD = c.q_dim(), QKV = c.qkv_dim();
  const bool interleaved = c.num_kv_heads != 1;  // multi_query false: Hkv == Hq

  KVR_RETURN_IF_ERROR(b.Matrix(&w->embed, "transformer.word_embeddings.weight", V, C, "(V, C)"));
  w->layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w->layers[i];
    const std::string p = absl::StrCat("transformer.h.", i, ".");
    KVR_RETURN_IF_ERROR(b.Vector(&l.attn_norm_w, p + "input_layernorm.weight", C, "(C)"));
    KVR_RETURN_IF_ERROR(b.Vector(&l.attn_norm_b, p + "input_layernorm.bias", C, "(C)"));
    if (!c.parallel_attn_mlp) {
      KVR_RETURN_IF_ERROR(b.Vector(&l.mlp_norm_w, p + "post_attention_layernorm.weight", C, "(C)"));
      KVR_RETURN_IF_ERROR(b.Vector(&l.mlp_norm_b, p + "post_attention_layernorm.bias", C, "(C)"));
    }
    KVR_ASSIGN_OR_RETURN(const TensorView* qkv,
                         b.Tensor(p + "self_attention.query_key_value.weight", {QKV, C}, "(Hq*D + 2*Hkv*D, C)"));
    l.wqkv = interleaved ? Deinterleave(b, *qkv, c.num_q_heads, D) : Concat({qkv});
    if (c.qkv_bias) {
      KVR_ASSIGN_OR_RETURN(const TensorView* bqkv,
                           b.Tensor(p + "self_attention.query_key_value.bias", {QKV}, "(Hq*D + 2*Hkv*D)"));
      l.bqkv = interleaved ? Deinterleave(b, *bqkv, c.num_q_heads, D) : Concat({bqkv});
    }
    KVR_RETURN_IF_ERROR(b.Matrix(&l.wo, p + "self_attention.dense.weight", C, QD, "(C, Hq*D)"));
    if (c.out_bias) KVR_RETURN_IF_ERROR(b.Vector(&l.bo, p + "self_attention.dense.bias", C, "(C)"));
    KVR_RETURN_IF_ERROR(b.Matrix(&l.w_up, p + "mlp.dense_h_to_4h.weight", F, C, "(F, C)"));
    KVR_RETURN_IF_ERROR(b.Matrix(&l.w_down, p + "mlp.dense_4h_to_h.weight", C, F, "(C, F)"));
    if (c.mlp_bias) {
      KVR_RETURN_IF_ERROR(b.Vector(&l.b_up, p + "mlp.dense_h_to_4h.bias", F, "(F)"));
      KVR_RETURN_IF_ERROR(b.Vector(&l.b_down, p + "mlp.dense_4h_to_h.bias", C, "(C)"));
    }
  }
  KVR_RETURN_IF_ERROR(b.Vector(&w->final_norm_w, "transformer.ln_f.weight", C, "(C)"));
  KVR_RETURN_IF_ERROR(b.Vector(&w->final_norm_b, "transformer.ln_f.bias", C, "(C)"));
  KVR_RETURN_IF_ERROR(b.LmHead(w));
  return absl::OkStatus();
}

}  // namespace kvr::weights_internal
