// ModelConfig: the architecture-independent description of a decoder-only transformer, parsed
// from a Hugging Face `config.json`. Every backend and the planner read only this struct.
//
// Legend used in shape comments across the engine:
//   V = vocab_size, C = hidden_size, L = num_layers, Hq = num_q_heads, Hkv = num_kv_heads,
//   D = head_dim, F = intermediate_size, T = tokens in a chunk, P = prefix length (tokens before
//   the chunk), N = P + T keys visible to the chunk's last query.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/dtype.h"

namespace kvr {

enum class Architecture {
  kLlama,    // Llama 2/3 (and Mistral): RMSNorm, SiLU-gated MLP, rotary, GQA
  kMistral,  // Llama layout plus an optional sliding attention window
  kFalcon,   // Falcon-7B layout: LayerNorm, parallel attention+MLP, GELU, multi-query, rotary
};
std::string ArchitectureName(Architecture a);

enum class NormKind { kRmsNorm, kLayerNorm };
enum class MlpKind {
  kSiluGate,  // down(silu(gate(x)) * up(x)), gate and up fused as one (2F, C) weight
  kGelu,      // down(gelu_erf(up(x))), up is (F, C)
};

// Rotary embedding. Pairs are (i, i + D/2) ("rotate_half"), as in HF Llama, Mistral and Falcon.
struct RopeConfig {
  enum class Scaling { kNone, kLinear, kLlama3 };
  float theta = 10000.0f;
  Scaling scaling = Scaling::kNone;
  float factor = 1.0f;            // linear and llama3
  float low_freq_factor = 1.0f;   // llama3
  float high_freq_factor = 4.0f;  // llama3
  int original_max_position = 8192;  // llama3
};

struct ModelConfig {
  Architecture arch = Architecture::kLlama;
  std::string model_type;   // as written in config.json, e.g. "llama"
  int vocab_size = 0;       // V, e.g. 32000
  int hidden_size = 0;      // C, e.g. 4096
  int num_layers = 0;       // L, e.g. 32
  int num_q_heads = 0;      // Hq, e.g. 32
  int num_kv_heads = 0;     // Hkv, e.g. 32 (Llama 2 7B), 8 (Llama 3 8B), 1 (Falcon 7B)
  int head_dim = 0;         // D, e.g. 128 (Llama) or 64 (Falcon)
  int intermediate_size = 0;  // F, e.g. 11008 (Llama 2 7B), 4*C for Falcon
  int max_position = 0;     // longest context the model was built for
  float norm_eps = 1e-5f;
  NormKind norm = NormKind::kRmsNorm;
  MlpKind mlp = MlpKind::kSiluGate;
  bool parallel_attn_mlp = false;  // Falcon: x + attn(ln(x)) + mlp(ln(x)), one norm per layer
  bool qkv_bias = false;           // bias on the fused QKV projection
  bool out_bias = false;           // bias on the attention output projection
  bool mlp_bias = false;           // bias on the MLP projections
  bool tie_word_embeddings = false;  // lm_head shares the embedding matrix
  RopeConfig rope;
  int sliding_window = 0;          // Mistral: key j visible to query i iff i - j < W; 0 = unlimited
  DType dtype = DType::kBF16;      // torch_dtype of the checkpoint (informational)
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;

  int q_dim() const { return num_q_heads * head_dim; }     // Hq*D
  int kv_dim() const { return num_kv_heads * head_dim; }   // Hkv*D
  int qkv_dim() const { return q_dim() + 2 * kv_dim(); }   // rows of the fused QKV weight
  // Parameters in the model (embedding and lm_head counted once each unless tied).
  int64_t NumParameters() const;
  std::string Summary() const;  // one line for logs: "llama: L=32 C=4096 Hq=32 Hkv=8 D=128 F=14336 V=128256"
};

// Parses the text of a config.json. `path` is only used in error messages.
// Supported model_type values: llama, mistral, falcon (also the older "RefinedWebModel").
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& path);

// Rotary inverse frequencies, one per pair: (D/2), including the configured scaling.
std::vector<float> RopeInverseFrequencies(const RopeConfig& rope, int head_dim);

}  // namespace kvr
