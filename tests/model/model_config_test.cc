// ParseModelConfig on the config.json files of real checkpoints (Llama 2 7B, Llama 3.1 8B,
// Mistral 7B, Falcon 7B in both its current and RefinedWebModel spellings), the errors for bad or
// unsupported configs, and the rotary inverse frequencies.
#include "engine/model/model_config.h"

#include <cmath>
#include <numbers>

#include "gtest/gtest.h"
#include "tests/model/test_helpers.h"

namespace kvr {
namespace {

using testutil::HasError;

constexpr char kLlama2_7B[] = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
  "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000})";

constexpr char kLlama31_8B[] = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

constexpr char kMistral_7B[] = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
  "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000})";

constexpr char kFalcon_7B[] = R"({
  "alibi": false, "apply_residual_connection_post_layernorm": false, "architectures": ["FalconForCausalLM"],
  "attention_dropout": 0.0, "bias": false, "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0,
  "hidden_size": 4544, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "falcon",
  "multi_query": true, "new_decoder_architecture": false, "num_attention_heads": 71, "num_hidden_layers": 32,
  "parallel_attn": true, "torch_dtype": "bfloat16", "transformers_version": "4.27.4", "use_cache": true,
  "vocab_size": 65024})";

constexpr char kFalcon_7B_RW[] = R"({
  "alibi": false, "apply_residual_connection_post_layernorm": false, "architectures": ["RWForCausalLM"],
  "attention_dropout": 0.0, "bias": false, "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0,
  "hidden_size": 4544, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "RefinedWebModel",
  "multi_query": true, "n_head": 71, "n_layer": 32, "parallel_attn": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.27.4", "use_cache": true, "vocab_size": 65024})";

constexpr char kFalcon_40B_RW[] = R"({
  "alibi": false, "bias": false, "hidden_size": 8192, "model_type": "RefinedWeb", "n_head": 128,
  "n_head_kv": 8, "n_layer": 60, "new_decoder_architecture": true, "parallel_attn": true, "vocab_size": 65024})";

ModelConfig Parse(const char* text) {
  auto c = ParseModelConfig(text, "/models/x/config.json");
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

TEST(ModelConfigTest, Llama2_7B) {
  const ModelConfig c = Parse(kLlama2_7B);
  EXPECT_EQ(c.arch, Architecture::kLlama);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_EQ(c.num_q_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.max_position, 4096);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.norm, NormKind::kRmsNorm);
  EXPECT_EQ(c.mlp, MlpKind::kSiluGate);
  EXPECT_FALSE(c.parallel_attn_mlp);
  EXPECT_FALSE(c.qkv_bias || c.out_bias || c.mlp_bias || c.tie_word_embeddings);
  EXPECT_EQ(c.rope.theta, 10000.0f);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kNone);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.dtype, DType::kF16);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});
  EXPECT_EQ(c.NumParameters(), 6738415616);  // the published count
  EXPECT_EQ(c.Summary(), "llama: L=32 C=4096 Hq=32 Hkv=32 D=128 F=11008 V=32000 theta=10000");
}

TEST(ModelConfigTest, Llama31_8B) {
  const ModelConfig c = Parse(kLlama31_8B);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.qkv_dim(), 4096 + 2 * 1024);
  EXPECT_EQ(c.rope.theta, 500000.0f);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kLlama3);
  EXPECT_EQ(c.rope.factor, 8.0f);
  EXPECT_EQ(c.rope.low_freq_factor, 1.0f);
  EXPECT_EQ(c.rope.high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope.original_max_position, 8192);
  EXPECT_EQ(c.max_position, 131072);
  EXPECT_EQ(c.dtype, DType::kBF16);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(c.NumParameters(), 8030261248);
  EXPECT_EQ(c.Summary(), "llama: L=32 C=4096 Hq=32 Hkv=8 D=128 F=14336 V=128256 theta=500000 rope=llama3(8)");
}

TEST(ModelConfigTest, Mistral_7B) {
  const ModelConfig c = Parse(kMistral_7B);
  EXPECT_EQ(c.arch, Architecture::kMistral);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.max_position, 32768);
  EXPECT_EQ(c.NumParameters(), 7241732096);
  // Mistral 7B v0.2 turned the window off with null.
  std::string v02 = kMistral_7B;
  v02.replace(v02.find("\"sliding_window\": 4096"), 22, "\"sliding_window\": null");
  EXPECT_EQ(Parse(v02.c_str()).sliding_window, 0);
}

TEST(ModelConfigTest, Falcon_7B) {
  for (const char* text : {kFalcon_7B, kFalcon_7B_RW}) {
    const ModelConfig c = Parse(text);
    EXPECT_EQ(c.arch, Architecture::kFalcon);
    EXPECT_EQ(c.hidden_size, 4544);
    EXPECT_EQ(c.num_layers, 32);
    EXPECT_EQ(c.num_q_heads, 71);
    EXPECT_EQ(c.num_kv_heads, 1);
    EXPECT_EQ(c.head_dim, 64);
    EXPECT_EQ(c.intermediate_size, 4 * 4544);
    EXPECT_EQ(c.norm, NormKind::kLayerNorm);
    EXPECT_EQ(c.mlp, MlpKind::kGelu);
    EXPECT_TRUE(c.parallel_attn_mlp);
    EXPECT_FALSE(c.qkv_bias || c.out_bias || c.mlp_bias);
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_EQ(c.max_position, 2048);
    EXPECT_EQ(c.rope.theta, 10000.0f);
    EXPECT_EQ(c.bos_token_id, 11);
    EXPECT_EQ(c.eos_token_ids, std::vector<int>{11});
    EXPECT_EQ(c.NumParameters(), 6921720704);
  }
}

TEST(ModelConfigTest, FalconVariants) {
  std::string text = kFalcon_7B;
  auto set = [&](const std::string& key_value, const std::string& replacement) {
    const size_t at = text.find(key_value);
    ASSERT_NE(at, std::string::npos) << key_value;
    text.replace(at, key_value.size(), replacement);
  };
  set("\"multi_query\": true", "\"multi_query\": false");
  set("\"parallel_attn\": true", "\"parallel_attn\": false");
  set("\"bias\": false", "\"bias\": true");
  const ModelConfig c = Parse(text.c_str());
  EXPECT_EQ(c.num_kv_heads, 71);
  EXPECT_FALSE(c.parallel_attn_mlp);
  EXPECT_TRUE(c.qkv_bias && c.out_bias && c.mlp_bias);
}

TEST(ModelConfigTest, HeadDimAndDefaults) {
  // Mistral-Nemo style: head_dim given and not hidden/heads; no num_key_value_heads -> heads.
  const ModelConfig c = Parse(R"({"model_type": "mistral", "vocab_size": 131072, "hidden_size": 5120,
      "num_hidden_layers": 40, "num_attention_heads": 32, "head_dim": 128, "intermediate_size": 14336,
      "rope_theta": 1000000.0, "sliding_window": null, "rope_scaling": {"type": "linear", "factor": 2.0}})");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_kv_heads, 32);
  EXPECT_EQ(c.q_dim(), 4096);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kLinear);
  EXPECT_EQ(c.rope.factor, 2.0f);
  EXPECT_EQ(c.dtype, DType::kBF16);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-6f);
  EXPECT_EQ(c.max_position, 4096 * 32);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});
  EXPECT_EQ(c.bos_token_id, 1);
  // Explicit nulls mean "no such token", not the default.
  const ModelConfig n = Parse(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128,
      "bos_token_id": null, "eos_token_id": null})");
  EXPECT_EQ(n.bos_token_id, -1);
  EXPECT_TRUE(n.eos_token_ids.empty());
}

TEST(ModelConfigTest, TransformersV5RopeParameters) {
  const ModelConfig c = Parse(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128, "dtype": "float32",
      "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                          "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})");
  EXPECT_EQ(c.rope.theta, 500000.0f);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kLlama3);
  EXPECT_EQ(c.rope.factor, 32.0f);
  EXPECT_EQ(c.dtype, DType::kF32);
}

absl::Status ParseError(const std::string& text) {
  return ParseModelConfig(text, "/models/x/config.json").status();
}

TEST(ModelConfigTest, Errors) {
  EXPECT_TRUE(HasError(ParseError("{\"model_type\": \"llama\", "), absl::StatusCode::kInvalidArgument,
                       {"/models/x/config.json", "invalid JSON", "parse error"}));
  EXPECT_TRUE(HasError(ParseError("[]"), absl::StatusCode::kInvalidArgument, {"config.json", "not a JSON object"}));
  EXPECT_TRUE(HasError(ParseError("{}"), absl::StatusCode::kInvalidArgument, {"config.json", "missing \"model_type\""}));
  EXPECT_TRUE(HasError(ParseError(R"({"model_type": "gpt2"})"), absl::StatusCode::kUnimplemented,
                       {"config.json", "model_type \"gpt2\" is not supported", "llama, mistral, falcon"}));

  std::string llama = kLlama2_7B;
  auto without = [&](const std::string& key_value) {
    std::string t = llama;
    t.replace(t.find(key_value), key_value.size(), "\"unused\": 0");
    return t;
  };
  auto with = [&](const std::string& key_value, const std::string& replacement) {
    std::string t = llama;
    t.replace(t.find(key_value), key_value.size(), replacement);
    return t;
  };
  EXPECT_TRUE(HasError(ParseError(without("\"hidden_size\": 4096")), absl::StatusCode::kInvalidArgument,
                       {"/models/x/config.json: missing \"hidden_size\""}));
  EXPECT_TRUE(HasError(ParseError(without("\"intermediate_size\": 11008")), absl::StatusCode::kInvalidArgument,
                       {"config.json: missing \"intermediate_size\""}));
  EXPECT_TRUE(HasError(ParseError(with("\"hidden_size\": 4096", "\"hidden_size\": -4096")),
                       absl::StatusCode::kInvalidArgument, {"config.json", "\"hidden_size\" must be a positive integer"}));
  EXPECT_TRUE(HasError(ParseError(with("\"hidden_size\": 4096", "\"hidden_size\": \"4096\"")),
                       absl::StatusCode::kInvalidArgument, {"config.json", "\"hidden_size\" must be an integer"}));
  EXPECT_TRUE(HasError(ParseError(with("\"hidden_size\": 4096", "\"hidden_size\": 4100")),
                       absl::StatusCode::kInvalidArgument, {"config.json", "not divisible by num_attention_heads"}));
  EXPECT_TRUE(HasError(ParseError(with("\"num_key_value_heads\": 32", "\"num_key_value_heads\": 5")),
                       absl::StatusCode::kInvalidArgument, {"config.json", "not divisible by num_key_value_heads"}));
  EXPECT_TRUE(HasError(ParseError(with("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"")),
                       absl::StatusCode::kUnimplemented, {"config.json", "hidden_act \"gelu\""}));
  EXPECT_TRUE(HasError(ParseError(with("\"rope_scaling\": null", R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})")),
                       absl::StatusCode::kUnimplemented, {"config.json", "\"yarn\"", "supported: default, linear, llama3"}));
  EXPECT_TRUE(HasError(ParseError(with("\"rope_scaling\": null", R"("rope_scaling": {"type": "dynamic", "factor": 2.0})")),
                       absl::StatusCode::kUnimplemented, {"\"dynamic\""}));
  EXPECT_TRUE(HasError(ParseError(with("\"rope_scaling\": null", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0})")),
                       absl::StatusCode::kInvalidArgument, {"config.json", "missing \"low_freq_factor\""}));
  EXPECT_TRUE(HasError(ParseError(with("\"torch_dtype\": \"float16\"", "\"torch_dtype\": \"float64\"")),
                       absl::StatusCode::kUnimplemented, {"config.json", "float64"}));
  EXPECT_TRUE(HasError(ParseError(with("\"eos_token_id\": 2", "\"eos_token_id\": \"</s>\"")),
                       absl::StatusCode::kInvalidArgument, {"config.json", "eos_token_id"}));

  EXPECT_TRUE(HasError(ParseError(kFalcon_40B_RW), absl::StatusCode::kUnimplemented,
                       {"config.json", "Falcon-40B/180B layout (new_decoder_architecture) is not supported"}));
  std::string falcon = kFalcon_7B;
  falcon.replace(falcon.find("\"alibi\": false"), 14, "\"alibi\": true");
  EXPECT_TRUE(HasError(ParseError(falcon), absl::StatusCode::kUnimplemented, {"config.json", "alibi"}));
  falcon = kFalcon_7B;
  falcon.replace(falcon.find("\"num_attention_heads\": 71"), 25, "\"num_attention_heads\": 70");
  EXPECT_TRUE(HasError(ParseError(falcon), absl::StatusCode::kInvalidArgument, {"config.json", "not divisible"}));
}

// --- rotary inverse frequencies ----------------------------------------------------------

// A direct transcription of transformers' _compute_llama3_parameters, one frequency at a time.
double Llama3Reference(double theta, int D, int i, double factor, double low, double high, double old_len) {
  const double inv = 1.0 / std::pow(theta, (2.0 * i) / D);
  const double wavelen = 2 * std::numbers::pi / inv;
  if (wavelen < old_len / high) return inv;            // high frequency: unchanged
  if (wavelen > old_len / low) return inv / factor;    // low frequency: scaled
  const double smooth = (old_len / wavelen - low) / (high - low);
  return (1 - smooth) * inv / factor + smooth * inv;   // in between: interpolated
}

TEST(RopeTest, DefaultAndLinear) {
  RopeConfig rope;  // theta 10000, no scaling
  const std::vector<float> inv = RopeInverseFrequencies(rope, 128);
  ASSERT_EQ(inv.size(), 64u);
  for (int i = 0; i < 64; ++i) EXPECT_FLOAT_EQ(inv[i], static_cast<float>(std::pow(10000.0, -i / 64.0))) << i;
  EXPECT_FLOAT_EQ(inv[0], 1.0f);
  EXPECT_FLOAT_EQ(inv[32], 0.01f);  // 10000^(-1/2)
  rope.scaling = RopeConfig::Scaling::kLinear;
  rope.factor = 4.0f;
  const std::vector<float> lin = RopeInverseFrequencies(rope, 128);
  for (int i = 0; i < 64; ++i) EXPECT_FLOAT_EQ(lin[i], inv[i] / 4.0f) << i;
}

TEST(RopeTest, Llama31_8B) {
  auto c = ParseModelConfig(kLlama31_8B, "config.json");
  ASSERT_TRUE(c.ok());
  const std::vector<float> inv = RopeInverseFrequencies(c->rope, c->head_dim);
  ASSERT_EQ(inv.size(), 64u);
  for (int i = 0; i < 64; ++i) {
    EXPECT_FLOAT_EQ(inv[i], static_cast<float>(Llama3Reference(500000, 128, i, 8, 1, 4, 8192))) << i;
  }
  // Worked by hand: wavelen_i = 2*pi * 500000^(i/64); 2048 <= wavelen <= 8192 for i in 29..34.
  EXPECT_FLOAT_EQ(inv[0], 1.0f);                    // wavelen 6.28: unchanged
  EXPECT_FLOAT_EQ(inv[28], 0.0032114459947525913f);  // wavelen 1956: unchanged
  EXPECT_FLOAT_EQ(inv[30], 0.0013718935677611381f);  // wavelen 2948: smooth 0.5927
  EXPECT_FLOAT_EQ(inv[34], 0.00017850781276799638f);  // wavelen 6695
  EXPECT_FLOAT_EQ(inv[35], 9.556212353964683e-05f);  // wavelen 8219: / 8
  EXPECT_FLOAT_EQ(inv[63], 3.068925988914511e-07f);  // 500000^(-126/128) / 8
}

}  // namespace
}  // namespace kvr
