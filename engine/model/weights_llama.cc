// Llama / Mistral checkpoint names -> ModelWeights.
//   model.embed_tokens.weight                         (V, C)
//   model.layers.{i}.input_layernorm.weight           (C)
//   model.layers.{i}.self_attn.{q,k,v}_proj.weight    (Hq*D, C), (Hkv*D, C), (Hkv*D, C)  -> wqkv
//   model.layers.{i}.self_attn.o_proj.weight          (C, Hq*D)
//   (+ .bias on q/k/v/o when attention_bias)
//   model.layers.{i}.post_attention_layernorm.weight  (C)
//   model.layers.{i}.mlp.{gate,up}_proj.weight        (F, C) each                         -> w_up (2F, C)
//   model.layers.{i}.mlp.down_proj.weight             (C, F)
//   (+ .bias on gate/up/down when mlp_bias)
//   model.norm.weight                                 (C)
//   lm_head.weight                                    (V, C), or the embedding when tied
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/model/weights_internal.h"
#include "engine/util/status_macros.h"

namespace kvr::weights_internal {

absl::Status BindLlamaWeights(const ModelFolder& folder, ModelWeights* w) {
  const ModelConfig& c = folder.config();
  WeightBinder b(folder, w);
  const int64_t V = c.vocab_size, C = c.hidden_size, F = c.intermediate_size;
  const int64_t QD = c.q_dim(), KVD = c.kv_dim();

  KVR_RETURN_IF_ERROR(b.Matrix(&w->embed, "model.embed_tokens.weight", V, C, "(V, C)"));
  w->layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w->layers[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    KVR_RETURN_IF_ERROR(b.Vector(&l.attn_norm_w, p + "input_layernorm.weight", C, "(C)"));
    KVR_RETURN_IF_ERROR(b.Vector(&l.mlp_norm_w, p + "post_attention_layernorm.weight", C, "(C)"));

    KVR_ASSIGN_OR_RETURN(const TensorView* q, b.Tensor(p + "self_attn.q_proj.weight", {QD, C}, "(Hq*D, C)"));
    KVR_ASSIGN_OR_RETURN(const TensorView* k, b.Tensor(p + "self_attn.k_proj.weight", {KVD, C}, "(Hkv*D, C)"));
    KVR_ASSIGN_OR_RETURN(const TensorView* v, b.Tensor(p + "self_attn.v_proj.weight", {KVD, C}, "(Hkv*D, C)"));
    l.wqkv = Concat({q, k, v});
    KVR_RETURN_IF_ERROR(b.Matrix(&l.wo, p + "self_attn.o_proj.weight", C, QD, "(C, Hq*D)"));
    if (c.qkv_bias) {
      KVR_ASSIGN_OR_RETURN(const TensorView* qb, b.Tensor(p + "self_attn.q_proj.bias", {QD}, "(Hq*D)"));
      KVR_ASSIGN_OR_RETURN(const TensorView* kb, b.Tensor(p + "self_attn.k_proj.bias", {KVD}, "(Hkv*D)"));
      KVR_ASSIGN_OR_RETURN(const TensorView* vb, b.Tensor(p + "self_attn.v_proj.bias", {KVD}, "(Hkv*D)"));
      l.bqkv = Concat({qb, kb, vb});
    }
    if (c.out_bias) KVR_RETURN_IF_ERROR(b.Vector(&l.bo, p + "self_attn.o_proj.bias", C, "(C)"));

    KVR_ASSIGN_OR_RETURN(const TensorView* gate, b.Tensor(p + "mlp.gate_proj.weight", {F, C}, "(F, C)"));
    KVR_ASSIGN_OR_RETURN(const TensorView* up, b.Tensor(p + "mlp.up_proj.weight", {F, C}, "(F, C)"));
    l.w_up = Concat({gate, up});
    KVR_RETURN_IF_ERROR(b.Matrix(&l.w_down, p + "mlp.down_proj.weight", C, F, "(C, F)"));
    if (c.mlp_bias) {
      KVR_ASSIGN_OR_RETURN(const TensorView* gb, b.Tensor(p + "mlp.gate_proj.bias", {F}, "(F)"));
      KVR_ASSIGN_OR_RETURN(const TensorView* ub, b.Tensor(p + "mlp.up_proj.bias", {F}, "(F)"));
      l.b_up = Concat({gb, ub});
      KVR_RETURN_IF_ERROR(b.Vector(&l.b_down, p + "mlp.down_proj.bias", C, "(C)"));
    }
  }
  KVR_RETURN_IF_ERROR(b.Vector(&w->final_norm_w, "model.norm.weight", C, "(C)"));
  KVR_RETURN_IF_ERROR(b.LmHead(w));
  return absl::OkStatus();
}

}  // namespace kvr::weights_internal
