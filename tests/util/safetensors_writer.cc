#include "tests/util/safetensors_writer.h"

#include <stdlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace kvr::testutil {
namespace {

using json = nlohmann::json;

void AppendLE(std::string* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void AppendValues(std::string* out, const HostTensor& t) {
  for (float v : t.values) {
    switch (t.dtype) {
      case DType::kF32: {
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        AppendLE(out, bits, 4);
        break;
      }
      case DType::kF16: AppendLE(out, FloatToF16(v), 2); break;
      case DType::kBF16: AppendLE(out, FloatToBf16(v), 2); break;
    }
  }
}

}  // namespace

std::string EncodeSafetensors(const TensorMap& tensors) {
  json header = json::object();
  std::string data;
  for (const auto& [name, t] : tensors) {
    const size_t begin = data.size();
    AppendValues(&data, t);
    header[name] = {{"dtype", std::string(DTypeName(t.dtype))}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  header["__metadata__"] = {{"format", "pt"}};
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  std::string out;
  AppendLE(&out, text.size(), 8);
  return out + text + data;
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

absl::Status WriteSafetensors(const std::string& path, const TensorMap& tensors) {
  return WriteTextFile(path, EncodeSafetensors(tensors));
}

absl::Status WriteRawSafetensors(const std::string& path, const std::string& header, const std::string& data,
                                 std::optional<uint64_t> header_len) {
  std::string out;
  AppendLE(&out, header_len.value_or(header.size()), 8);
  return WriteTextFile(path, out + header + data);
}

float RoundTo(DType dtype, float v) {
  switch (dtype) {
    case DType::kF32: return v;
    case DType::kF16: return F16ToFloat(FloatToF16(v));
    case DType::kBF16: return Bf16ToFloat(FloatToBf16(v));
  }
  return v;
}

TempDir::TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string templ = absl::StrCat(base != nullptr && *base ? base : "/tmp", "/kvr_test_XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    std::fprintf(stderr, "mkdtemp(%s) failed: %s\n", templ.c_str(), std::strerror(errno));
    std::abort();
  }
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ModelConfig TinyLlamaConfig() {
  ModelConfig c;
  c.arch = Architecture::kLlama;
  c.model_type = "llama";
  c.vocab_size = 96;
  c.hidden_size = 32;
  c.num_layers = 2;
  c.num_q_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.intermediate_size = 48;
  c.max_position = 256;
  c.norm_eps = 1e-5f;
  c.rope.theta = 500000.0f;
  c.rope.scaling = RopeConfig::Scaling::kLlama3;
  c.rope.factor = 8.0f;
  c.rope.low_freq_factor = 1.0f;
  c.rope.high_freq_factor = 4.0f;
  c.rope.original_max_position = 64;
  c.dtype = DType::kBF16;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

ModelConfig TinyMistralConfig() {
  ModelConfig c = TinyLlamaConfig();
  c.arch = Architecture::kMistral;
  c.model_type = "mistral";
  c.vocab_size = 80;
  c.hidden_size = 48;
  c.num_q_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.intermediate_size = 56;
  c.rope = RopeConfig{};
  c.rope.theta = 10000.0f;
  c.sliding_window = 16;
  return c;
}

ModelConfig TinyFalconConfig() {
  ModelConfig c;
  c.arch = Architecture::kFalcon;
  c.model_type = "falcon";
  c.vocab_size = 72;
  c.hidden_size = 40;
  c.num_layers = 2;
  c.num_q_heads = 5;
  c.num_kv_heads = 1;
  c.head_dim = 8;
  c.intermediate_size = 160;
  c.max_position = 2048;
  c.norm_eps = 1e-5f;
  c.norm = NormKind::kLayerNorm;
  c.mlp = MlpKind::kGelu;
  c.parallel_attn_mlp = true;
  c.tie_word_embeddings = true;
  c.dtype = DType::kBF16;
  c.bos_token_id = 11;
  c.eos_token_ids = {11};
  return c;
}

std::string ConfigJson(const ModelConfig& c) {
  json j;
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_q_heads;
  j["max_position_embeddings"] = c.max_position;
  j["rope_theta"] = c.rope.theta;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = c.dtype == DType::kBF16 ? "bfloat16" : c.dtype == DType::kF16 ? "float16" : "float32";
  j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else {
    j["eos_token_id"] = c.eos_token_ids;
  }
  switch (c.rope.scaling) {
    case RopeConfig::Scaling::kNone: j["rope_scaling"] = nullptr; break;
    case RopeConfig::Scaling::kLinear: j["rope_scaling"] = {{"type", "linear"}, {"factor", c.rope.factor}}; break;
    case RopeConfig::Scaling::kLlama3:
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", c.rope.factor},
                           {"low_freq_factor", c.rope.low_freq_factor},
                           {"high_freq_factor", c.rope.high_freq_factor},
                           {"original_max_position_embeddings", c.rope.original_max_position}};
      break;
  }
  if (c.arch == Architecture::kFalcon) {
    j["architectures"] = {"FalconForCausalLM"};
    j["multi_query"] = c.num_kv_heads == 1;
    j["parallel_attn"] = c.parallel_attn_mlp;
    j["bias"] = c.qkv_bias;
    j["alibi"] = false;
    j["new_decoder_architecture"] = false;
    j["layer_norm_epsilon"] = c.norm_eps;
    if (c.intermediate_size != 4 * c.hidden_size) j["ffn_hidden_size"] = c.intermediate_size;
  } else {
    j["architectures"] = {c.arch == Architecture::kMistral ? "MistralForCausalLM" : "LlamaForCausalLM"};
    j["num_key_value_heads"] = c.num_kv_heads;
    j["head_dim"] = c.head_dim;
    j["intermediate_size"] = c.intermediate_size;
    j["rms_norm_eps"] = c.norm_eps;
    j["hidden_act"] = "silu";
    j["attention_bias"] = c.qkv_bias;
    j["mlp_bias"] = c.mlp_bias;
    if (c.arch == Architecture::kMistral) {
      if (c.sliding_window > 0) {
        j["sliding_window"] = c.sliding_window;
      } else {
        j["sliding_window"] = nullptr;
      }
    }
  }
  return j.dump(2);
}

std::vector<std::pair<std::string, std::vector<int64_t>>> HfTensorShapes(const ModelConfig& c) {
  const int64_t V = c.vocab_size, C = c.hidden_size, F = c.intermediate_size;
  const int64_t QD = c.q_dim(), KVD = c.kv_dim(), QKV = c.qkv_dim();
  std::vector<std::pair<std::string, std::vector<int64_t>>> t;
  if (c.arch == Architecture::kFalcon) {
    t.push_back({"transformer.word_embeddings.weight", {V, C}});
    for (int i = 0; i < c.num_layers; ++i) {
      const std::string p = absl::StrCat("transformer.h.", i, ".");
      t.push_back({p + "input_layernorm.weight", {C}});
      t.push_back({p + "input_layernorm.bias", {C}});
      if (!c.parallel_attn_mlp) {
        t.push_back({p + "post_attention_layernorm.weight", {C}});
        t.push_back({p + "post_attention_layernorm.bias", {C}});
      }
      t.push_back({p + "self_attention.query_key_value.weight", {QKV, C}});
      if (c.qkv_bias) t.push_back({p + "self_attention.query_key_value.bias", {QKV}});
      t.push_back({p + "self_attention.dense.weight", {C, QD}});
      if (c.out_bias) t.push_back({p + "self_attention.dense.bias", {C}});
      t.push_back({p + "mlp.dense_h_to_4h.weight", {F, C}});
      if (c.mlp_bias) t.push_back({p + "mlp.dense_h_to_4h.bias", {F}});
      t.push_back({p + "mlp.dense_4h_to_h.weight", {C, F}});
      if (c.mlp_bias) t.push_back({p + "mlp.dense_4h_to_h.bias", {C}});
    }
    t.push_back({"transformer.ln_f.weight", {C}});
    t.push_back({"transformer.ln_f.bias", {C}});
  } else {
    t.push_back({"model.embed_tokens.weight", {V, C}});
    for (int i = 0; i < c.num_layers; ++i) {
      const std::string p = absl::StrCat("model.layers.", i, ".");
      t.push_back({p + "input_layernorm.weight", {C}});
      t.push_back({p + "self_attn.q_proj.weight", {QD, C}});
      t.push_back({p + "self_attn.k_proj.weight", {KVD, C}});
      t.push_back({p + "self_attn.v_proj.weight", {KVD, C}});
      t.push_back({p + "self_attn.o_proj.weight", {C, QD}});
      if (c.qkv_bias) {
        t.push_back({p + "self_attn.q_proj.bias", {QD}});
        t.push_back({p + "self_attn.k_proj.bias", {KVD}});
        t.push_back({p + "self_attn.v_proj.bias", {KVD}});
      }
      if (c.out_bias) t.push_back({p + "self_attn.o_proj.bias", {C}});
      t.push_back({p + "post_attention_layernorm.weight", {C}});
      t.push_back({p + "mlp.gate_proj.weight", {F, C}});
      t.push_back({p + "mlp.up_proj.weight", {F, C}});
      t.push_back({p + "mlp.down_proj.weight", {C, F}});
      if (c.mlp_bias) {
        t.push_back({p + "mlp.gate_proj.bias", {F}});
        t.push_back({p + "mlp.up_proj.bias", {F}});
        t.push_back({p + "mlp.down_proj.bias", {C}});
      }
    }
    t.push_back({"model.norm.weight", {C}});
  }
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {V, C}});
  return t;
}

absl::StatusOr<std::map<std::string, std::vector<float>>> WriteTinyModelFolder(const std::string& dir,
                                                                               const ModelConfig& config,
                                                                               const TinyFolderOptions& options) {
  if (options.write_config) {
    if (auto s = WriteTextFile(dir + "/config.json", ConfigJson(config)); !s.ok()) return s;
  }
  std::mt19937 rng(options.seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<std::pair<std::string, HostTensor>> tensors;
  std::map<std::string, std::vector<float>> values;
  for (auto [name, shape] : HfTensorShapes(config)) {
    if (options.skip.count(name)) continue;
    if (auto it = options.shapes.find(name); it != options.shapes.end()) shape = it->second;
    HostTensor t;
    t.dtype = options.dtype;
    t.shape = shape;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const bool is_norm = name.find("norm") != std::string::npos || name.find("ln_f") != std::string::npos;
    const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    const bool is_embed = name.find("embed") != std::string::npos;
    const float scale = shape.size() == 2 && !is_embed ? 1.0f / std::sqrt(static_cast<float>(shape[1])) : 1.0f;
    t.values.resize(static_cast<size_t>(n));
    for (float& v : t.values) {
      const float u = uniform(rng);
      v = is_bias ? 0.1f * u : is_norm ? 1.0f + 0.1f * u : scale * u;
      v = RoundTo(options.dtype, v);
    }
    values[name] = t.values;
    tensors.emplace_back(name, std::move(t));
  }

  const int shards = std::max(1, options.num_shards);
  if (shards == 1) {
    TensorMap all(tensors.begin(), tensors.end());
    if (auto s = WriteSafetensors(dir + "/model.safetensors", all); !s.ok()) return s;
    return values;
  }
  json weight_map = json::object();
  uint64_t total = 0;
  const size_t n = tensors.size();
  for (int s = 0; s < shards; ++s) {
    const std::string file = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards);
    TensorMap shard;
    for (size_t i = n * s / shards; i < n * (s + 1) / shards; ++i) {
      shard.insert(tensors[i]);
      weight_map[tensors[i].first] = file;
      total += tensors[i].second.values.size() * DTypeSize(options.dtype);
    }
    if (auto st = WriteSafetensors(dir + "/" + file, shard); !st.ok()) return st;
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  if (auto s = WriteTextFile(dir + "/model.safetensors.index.json", index.dump(2)); !s.ok()) return s;
  return values;
}

}  // namespace kvr::testutil
