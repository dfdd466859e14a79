// config.json -> ModelConfig, for the Llama family (llama, mistral) and Falcon (falcon and the
// older RefinedWebModel/RefinedWeb configs). Defaults follow transformers' LlamaConfig,
// MistralConfig and FalconConfig, so a config.json that loads there loads the same way here.
#include "engine/model/model_config.h"

#include <cmath>
#include <initializer_list>
#include <numbers>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvr {
namespace {

using json = nlohmann::json;

// Typed access to config.json keys, with errors that name the file and the key. A key that is
// absent or null counts as missing; `keys` lists aliases (e.g. Falcon's "n_head"), first wins.
class ConfigReader {
 public:
  ConfigReader(const json& j, const std::string& path) : j_(j), path_(path) {}

  const json* Find(std::initializer_list<const char*> keys) const {
    for (const char* k : keys) {
      const auto it = j_.find(k);
      if (it != j_.end() && !it->is_null()) return &*it;
    }
    return nullptr;
  }
  bool Has(std::initializer_list<const char*> keys) const { return Find(keys) != nullptr; }

  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", message));
  }
  absl::Status Missing(std::initializer_list<const char*> keys) const {
    return Error(absl::StrCat("missing \"", *keys.begin(), "\""));
  }

  absl::StatusOr<int64_t> Int(std::initializer_list<const char*> keys, std::optional<int64_t> def = {}) const {
    const json* v = Find(keys);
    if (v == nullptr) {
      if (def) return *def;
      return Missing(keys);
    }
    if (v->is_number_integer()) return v->get<int64_t>();
    if (v->is_number_float()) {  // some exporters write 4096.0
      const double d = v->get<double>();
      if (std::floor(d) == d && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
    }
    return Error(absl::StrCat("\"", *keys.begin(), "\" must be an integer, got ", v->dump()));
  }
  // An int that must fit an int and be > 0.
  absl::StatusOr<int> PositiveInt(std::initializer_list<const char*> keys, std::optional<int64_t> def = {}) const {
    KVR_ASSIGN_OR_RETURN(const int64_t v, Int(keys, def));
    if (v <= 0 || v > (int64_t{1} << 30)) {
      return Error(absl::StrCat("\"", *keys.begin(), "\" must be a positive integer, got ", v));
    }
    return static_cast<int>(v);
  }
  absl::StatusOr<double> Number(std::initializer_list<const char*> keys, std::optional<double> def = {}) const {
    const json* v = Find(keys);
    if (v == nullptr) {
      if (def) return *def;
      return Missing(keys);
    }
    if (!v->is_number()) return Error(absl::StrCat("\"", *keys.begin(), "\" must be a number, got ", v->dump()));
    return v->get<double>();
  }
  absl::StatusOr<bool> Bool(std::initializer_list<const char*> keys, bool def) const {
    const json* v = Find(keys);
    if (v == nullptr) return def;
    if (!v->is_boolean()) return Error(absl::StrCat("\"", *keys.begin(), "\" must be true or false, got ", v->dump()));
    return v->get<bool>();
  }
  absl::StatusOr<std::string> String(std::initializer_list<const char*> keys, std::optional<std::string> def = {}) const {
    const json* v = Find(keys);
    if (v == nullptr) {
      if (def) return *def;
      return Missing(keys);
    }
    if (!v->is_string()) return Error(absl::StrCat("\"", *keys.begin(), "\" must be a string, got ", v->dump()));
    return v->get<std::string>();
  }

  const json& root() const { return j_; }
  const std::string& path() const { return path_; }

 private:
  const json& j_;
  const std::string& path_;
};

// rope_scaling: null, {"rope_type"|"type": "default"|"linear"|"llama3", ...}. transformers v5
// writes "rope_parameters" (with rope_theta inside) instead; both are read.
absl::Status ParseRope(const ConfigReader& r, RopeConfig* rope) {
  KVR_ASSIGN_OR_RETURN(const double theta, r.Number({"rope_theta"}, 10000.0));
  rope->theta = static_cast<float>(theta);
  const json* params = r.Find({"rope_parameters"});
  const json* scaling = r.Find({"rope_scaling"});
  const bool v5 = scaling == nullptr && params != nullptr;
  if (v5) scaling = params;
  if (scaling == nullptr) return absl::OkStatus();
  if (!scaling->is_object()) {
    return r.Error(absl::StrCat("\"", v5 ? "rope_parameters" : "rope_scaling", "\" must be null or an object"));
  }
  const ConfigReader s(*scaling, r.path());
  if (v5 && s.Has({"rope_theta"})) {
    KVR_ASSIGN_OR_RETURN(const double t, s.Number({"rope_theta"}));
    rope->theta = static_cast<float>(t);
  }
  const json* type = s.Find({"rope_type", "type"});
  if (type == nullptr && v5) return absl::OkStatus();
  if (type == nullptr || !type->is_string()) {
    return r.Error("\"rope_scaling\" has no string \"rope_type\" (or \"type\")");
  }
  const std::string t = type->get<std::string>();
  if (t == "default") return absl::OkStatus();
  if (t != "linear" && t != "llama3") {
    return absl::UnimplementedError(absl::StrCat(r.path(), ": rope_scaling type \"", t,
                                                 "\" is not supported (supported: default, linear, llama3)"));
  }
  KVR_ASSIGN_OR_RETURN(const double factor, s.Number({"factor"}));
  if (!(factor > 0.0)) return r.Error(absl::StrCat("rope_scaling \"factor\" must be positive, got ", factor));
  rope->factor = static_cast<float>(factor);
  if (t == "linear") {
    rope->scaling = RopeConfig::Scaling::kLinear;
    return absl::OkStatus();
  }
  rope->scaling = RopeConfig::Scaling::kLlama3;
  KVR_ASSIGN_OR_RETURN(const double low, s.Number({"low_freq_factor"}));
  KVR_ASSIGN_OR_RETURN(const double high, s.Number({"high_freq_factor"}));
  KVR_ASSIGN_OR_RETURN(const int orig, s.PositiveInt({"original_max_position_embeddings"}));
  if (!(low > 0.0) || !(high > low)) {
    return r.Error(absl::StrCat("rope_scaling needs 0 < low_freq_factor < high_freq_factor, got ", low, " and ", high));
  }
  rope->low_freq_factor = static_cast<float>(low);
  rope->high_freq_factor = static_cast<float>(high);
  rope->original_max_position = orig;
  return absl::OkStatus();
}

absl::Status ParseDType(const ConfigReader& r, DType* dtype) {
  KVR_ASSIGN_OR_RETURN(const std::string s, r.String({"torch_dtype", "dtype"}, std::string("bfloat16")));
  if (s == "bfloat16") {
    *dtype = DType::kBF16;
  } else if (s == "float16") {
    *dtype = DType::kF16;
  } else if (s == "float32") {
    *dtype = DType::kF32;
  } else {
    return absl::UnimplementedError(absl::StrCat(r.path(), ": torch_dtype \"", s,
                                                 "\" is not supported (supported: bfloat16, float16, float32)"));
  }
  return absl::OkStatus();
}

absl::Status ParseTokenIds(const ConfigReader& r, int default_bos, int default_eos, ModelConfig* c) {
  // Absent: the transformers default for the model_type. Present but null: none.
  const bool bos_null = r.root().contains("bos_token_id") && r.root()["bos_token_id"].is_null();
  KVR_ASSIGN_OR_RETURN(const int64_t bos, r.Int({"bos_token_id"}, bos_null ? -1 : default_bos));
  c->bos_token_id = static_cast<int>(bos);
  c->eos_token_ids.clear();
  const json* eos = r.Find({"eos_token_id"});
  if (eos == nullptr) {
    if (!r.root().contains("eos_token_id")) c->eos_token_ids.push_back(default_eos);
  } else if (eos->is_number_integer()) {
    c->eos_token_ids.push_back(eos->get<int>());
  } else if (eos->is_array()) {
    for (const json& e : *eos) {
      if (!e.is_number_integer()) return r.Error(absl::StrCat("\"eos_token_id\" entries must be integers, got ", e.dump()));
      c->eos_token_ids.push_back(e.get<int>());
    }
  } else {
    return r.Error(absl::StrCat("\"eos_token_id\" must be an integer or a list of integers, got ", eos->dump()));
  }
  return absl::OkStatus();
}

// Llama 2, Llama 3 (GQA, llama3 rope), Mistral (sliding window).
absl::Status ParseLlamaFamily(const ConfigReader& r, ModelConfig* c) {
  const bool mistral = c->model_type == "mistral";
  c->arch = mistral ? Architecture::kMistral : Architecture::kLlama;
  c->norm = NormKind::kRmsNorm;
  c->mlp = MlpKind::kSiluGate;
  c->parallel_attn_mlp = false;
  KVR_ASSIGN_OR_RETURN(c->vocab_size, r.PositiveInt({"vocab_size"}));
  KVR_ASSIGN_OR_RETURN(c->hidden_size, r.PositiveInt({"hidden_size"}));
  KVR_ASSIGN_OR_RETURN(c->num_layers, r.PositiveInt({"num_hidden_layers"}));
  KVR_ASSIGN_OR_RETURN(c->num_q_heads, r.PositiveInt({"num_attention_heads"}));
  KVR_ASSIGN_OR_RETURN(c->num_kv_heads, r.PositiveInt({"num_key_value_heads"}, c->num_q_heads));
  KVR_ASSIGN_OR_RETURN(c->intermediate_size, r.PositiveInt({"intermediate_size"}));
  if (r.Has({"head_dim"})) {
    KVR_ASSIGN_OR_RETURN(c->head_dim, r.PositiveInt({"head_dim"}));
  } else if (c->hidden_size % c->num_q_heads != 0) {
    return r.Error(absl::StrCat("hidden_size ", c->hidden_size, " is not divisible by num_attention_heads ",
                                c->num_q_heads, " (and no \"head_dim\" is given)"));
  } else {
    c->head_dim = c->hidden_size / c->num_q_heads;
  }
  KVR_ASSIGN_OR_RETURN(c->max_position, r.PositiveInt({"max_position_embeddings"}, mistral ? 4096 * 32 : 2048));
  KVR_ASSIGN_OR_RETURN(const double eps, r.Number({"rms_norm_eps"}, 1e-6));
  c->norm_eps = static_cast<float>(eps);
  KVR_ASSIGN_OR_RETURN(const std::string act, r.String({"hidden_act"}, std::string("silu")));
  if (act != "silu") {
    return absl::UnimplementedError(
        absl::StrCat(r.path(), ": hidden_act \"", act, "\" is not supported for ", c->model_type, " (supported: silu)"));
  }
  KVR_ASSIGN_OR_RETURN(const bool attention_bias, r.Bool({"attention_bias"}, false));
  c->qkv_bias = attention_bias;
  c->out_bias = attention_bias;
  KVR_ASSIGN_OR_RETURN(c->mlp_bias, r.Bool({"mlp_bias"}, false));
  KVR_ASSIGN_OR_RETURN(c->tie_word_embeddings, r.Bool({"tie_word_embeddings"}, false));
  c->sliding_window = 0;
  if (mistral) {
    KVR_ASSIGN_OR_RETURN(const int64_t w, r.Int({"sliding_window"}, 0));
    if (w < 0 || w > (int64_t{1} << 30)) return r.Error(absl::StrCat("\"sliding_window\" must be >= 0, got ", w));
    c->sliding_window = static_cast<int>(w);
  }
  KVR_RETURN_IF_ERROR(ParseRope(r, &c->rope));
  return ParseTokenIds(r, 1, 2, c);
}

// Falcon-7B layout. FalconConfig's attribute_map maps n_layer/n_head onto the standard names, and
// it still accepts n_embed for hidden_size; RefinedWebModel configs use the short names.
absl::Status ParseFalcon(const ConfigReader& r, ModelConfig* c) {
  c->arch = Architecture::kFalcon;
  c->norm = NormKind::kLayerNorm;
  c->mlp = MlpKind::kGelu;
  KVR_ASSIGN_OR_RETURN(const bool new_arch, r.Bool({"new_decoder_architecture"}, false));
  if (new_arch) {
    return absl::UnimplementedError(
        absl::StrCat(r.path(), ": Falcon-40B/180B layout (new_decoder_architecture) is not supported"));
  }
  KVR_ASSIGN_OR_RETURN(const bool alibi, r.Bool({"alibi"}, false));
  if (alibi) {
    return absl::UnimplementedError(
        absl::StrCat(r.path(), ": Falcon with ALiBi positions (alibi: true) is not supported; only rotary"));
  }
  KVR_ASSIGN_OR_RETURN(const bool post_ln_residual, r.Bool({"apply_residual_connection_post_layernorm"}, false));
  if (post_ln_residual) {
    return absl::UnimplementedError(
        absl::StrCat(r.path(), ": apply_residual_connection_post_layernorm: true is not supported"));
  }
  KVR_ASSIGN_OR_RETURN(c->vocab_size, r.PositiveInt({"vocab_size"}));
  KVR_ASSIGN_OR_RETURN(c->hidden_size, r.PositiveInt({"hidden_size", "n_embed"}));
  KVR_ASSIGN_OR_RETURN(c->num_layers, r.PositiveInt({"num_hidden_layers", "n_layer"}));
  KVR_ASSIGN_OR_RETURN(c->num_q_heads, r.PositiveInt({"num_attention_heads", "n_head"}));
  if (c->hidden_size % c->num_q_heads != 0) {
    return r.Error(absl::StrCat("hidden_size ", c->hidden_size, " is not divisible by num_attention_heads ",
                                c->num_q_heads));
  }
  c->head_dim = c->hidden_size / c->num_q_heads;
  // multi_query: one K and one V head (Falcon-7B); otherwise one per query head, interleaved.
  KVR_ASSIGN_OR_RETURN(const bool multi_query, r.Bool({"multi_query"}, true));
  c->num_kv_heads = multi_query ? 1 : c->num_q_heads;
  KVR_ASSIGN_OR_RETURN(c->parallel_attn_mlp, r.Bool({"parallel_attn"}, true));
  KVR_ASSIGN_OR_RETURN(const bool bias, r.Bool({"bias"}, false));
  c->qkv_bias = c->out_bias = c->mlp_bias = bias;
  KVR_ASSIGN_OR_RETURN(c->intermediate_size, r.PositiveInt({"ffn_hidden_size"}, int64_t{4} * c->hidden_size));
  KVR_ASSIGN_OR_RETURN(const std::string act, r.String({"activation"}, std::string("gelu")));
  if (act != "gelu") {
    return absl::UnimplementedError(
        absl::StrCat(r.path(), ": activation \"", act, "\" is not supported for falcon (supported: gelu)"));
  }
  KVR_ASSIGN_OR_RETURN(const double eps, r.Number({"layer_norm_epsilon"}, 1e-5));
  c->norm_eps = static_cast<float>(eps);
  KVR_ASSIGN_OR_RETURN(c->max_position, r.PositiveInt({"max_position_embeddings"}, 2048));
  KVR_ASSIGN_OR_RETURN(c->tie_word_embeddings, r.Bool({"tie_word_embeddings"}, true));
  c->sliding_window = 0;
  KVR_RETURN_IF_ERROR(ParseRope(r, &c->rope));
  return ParseTokenIds(r, 11, 11, c);
}

absl::Status Validate(const ConfigReader& r, const ModelConfig& c) {
  if (c.num_q_heads % c.num_kv_heads != 0) {
    return r.Error(absl::StrCat("num_attention_heads ", c.num_q_heads, " is not divisible by num_key_value_heads ",
                                c.num_kv_heads));
  }
  if (c.head_dim % 2 != 0) return r.Error(absl::StrCat("head_dim ", c.head_dim, " must be even for rotary"));
  if (!(c.norm_eps > 0.0f)) return r.Error(absl::StrCat("norm epsilon must be positive, got ", c.norm_eps));
  if (!(c.rope.theta > 0.0f)) return r.Error(absl::StrCat("\"rope_theta\" must be positive, got ", c.rope.theta));
  return absl::OkStatus();
}

}  // namespace

std::string ArchitectureName(Architecture a) {
  switch (a) {
    case Architecture::kLlama: return "llama";
    case Architecture::kMistral: return "mistral";
    case Architecture::kFalcon: return "falcon";
  }
  return "?";
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& path) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": top level is not a JSON object"));
  const ConfigReader r(j, path);
  ModelConfig c;
  KVR_ASSIGN_OR_RETURN(c.model_type, r.String({"model_type"}));
  if (c.model_type == "llama" || c.model_type == "mistral") {
    KVR_RETURN_IF_ERROR(ParseLlamaFamily(r, &c));
  } else if (c.model_type == "falcon" || c.model_type == "RefinedWebModel" || c.model_type == "RefinedWeb") {
    KVR_RETURN_IF_ERROR(ParseFalcon(r, &c));
  } else {
    return absl::UnimplementedError(absl::StrCat(path, ": model_type \"", c.model_type,
                                                 "\" is not supported (supported: llama, mistral, falcon, "
                                                 "RefinedWebModel, RefinedWeb)"));
  }
  KVR_RETURN_IF_ERROR(ParseDType(r, &c.dtype));
  KVR_RETURN_IF_ERROR(Validate(r, c));
  return c;
}

int64_t ModelConfig::NumParameters() const {
  const int64_t C = hidden_size, V = vocab_size, F = intermediate_size;
  const int64_t norm_params = norm == NormKind::kLayerNorm ? 2 * C : C;  // weight (+ bias)
  int64_t layer = norm_params;                                           // attention norm
  if (!parallel_attn_mlp) layer += norm_params;                          // MLP norm
  layer += int64_t{qkv_dim()} * C + (qkv_bias ? qkv_dim() : 0);
  layer += C * q_dim() + (out_bias ? C : 0);
  if (mlp == MlpKind::kSiluGate) {
    layer += 3 * F * C + (mlp_bias ? 2 * F + C : 0);
  } else {
    layer += 2 * F * C + (mlp_bias ? F + C : 0);
  }
  return V * C + (tie_word_embeddings ? 0 : V * C) + num_layers * layer + norm_params;
}

std::string ModelConfig::Summary() const {
  std::string s = absl::StrCat(ArchitectureName(arch), ": L=", num_layers, " C=", hidden_size, " Hq=", num_q_heads,
                               " Hkv=", num_kv_heads, " D=", head_dim, " F=", intermediate_size, " V=", vocab_size);
  absl::StrAppend(&s, " theta=", rope.theta);
  if (rope.scaling == RopeConfig::Scaling::kLinear) absl::StrAppend(&s, " rope=linear(", rope.factor, ")");
  if (rope.scaling == RopeConfig::Scaling::kLlama3) absl::StrAppend(&s, " rope=llama3(", rope.factor, ")");
  if (sliding_window > 0) absl::StrAppend(&s, " window=", sliding_window);
  if (tie_word_embeddings) absl::StrAppend(&s, " tied");
  return s;
}

// transformers' modeling_rope_utils: _compute_default_rope_parameters, the linear variant
// (inv_freq / factor, the same as dividing positions by factor) and _compute_llama3_parameters.
std::vector<float> RopeInverseFrequencies(const RopeConfig& rope, int head_dim) {
  const int half = head_dim / 2;
  std::vector<float> out(half);
  const double theta = rope.theta, factor = rope.factor;
  const double low = rope.low_freq_factor, high = rope.high_freq_factor;
  const double old_len = rope.original_max_position;
  const double low_freq_wavelen = old_len / low;
  const double high_freq_wavelen = old_len / high;
  for (int i = 0; i < half; ++i) {
    const double inv = 1.0 / std::pow(theta, static_cast<double>(2 * i) / head_dim);
    double v = inv;
    if (rope.scaling == RopeConfig::Scaling::kLinear) {
      v = inv / factor;
    } else if (rope.scaling == RopeConfig::Scaling::kLlama3) {
      const double wavelen = 2.0 * std::numbers::pi / inv;
      const double inv_llama = wavelen > low_freq_wavelen ? inv / factor : inv;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      if (medium) {
        const double smooth = (old_len / wavelen - low) / (high - low);
        v = (1.0 - smooth) * inv_llama / factor + smooth * inv_llama;
      } else {
        v = inv_llama;
      }
    }
    out[i] = static_cast<float>(v);
  }
  return out;
}

}  // namespace kvr
