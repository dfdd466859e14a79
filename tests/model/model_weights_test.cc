// BindWeights for each family from tiny random folders (single file and sharded; bf16, f16,
// f32): fused layouts, values, conversions, and shape/presence errors.
#include "engine/model/model_weights.h"

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/model/test_helpers.h"
#include "tests/util/safetensors_writer.h"

namespace kvr {
namespace {

using testutil::HasError;
using testutil::TempDir;
using testutil::TinyFolderOptions;
using Values = std::map<std::string, std::vector<float>>;

std::vector<float> Cat(std::initializer_list<const std::vector<float>*> parts) {
  std::vector<float> out;
  for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}

// A folder written and opened, its weights bound.
struct Bound {
  TempDir tmp;
  Values values;
  std::unique_ptr<ModelFolder> folder;
  ModelWeights weights;
};

std::unique_ptr<Bound> WriteAndBind(const ModelConfig& cfg, const TinyFolderOptions& options) {
  auto b = std::make_unique<Bound>();
  auto values = testutil::WriteTinyModelFolder(b->tmp.path(), cfg, options);
  EXPECT_TRUE(values.ok()) << values.status();
  if (!values.ok()) return nullptr;
  b->values = *std::move(values);
  auto folder = ModelFolder::Open(b->tmp.path());
  EXPECT_TRUE(folder.ok()) << folder.status();
  if (!folder.ok()) return nullptr;
  b->folder = *std::move(folder);
  auto weights = BindWeights(*b->folder);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  b->weights = *std::move(weights);
  return b;
}

void ExpectShape(const WeightRef& w, int64_t rows, int64_t cols, const std::string& what) {
  EXPECT_TRUE(w.present()) << what;
  EXPECT_EQ(w.rows, rows) << what;
  EXPECT_EQ(w.cols, cols) << what;
}

// Every conversion of `w` reproduces `expected` (which is exactly representable in `dtype`).
void ExpectValues(const WeightRef& w, const std::vector<float>& expected, DType dtype, const std::string& what) {
  ASSERT_EQ(w.NumElements(), static_cast<int64_t>(expected.size())) << what;
  EXPECT_EQ(w.ToFloat(), expected) << what;
  for (DType half : {DType::kBF16, DType::kF16}) {
    std::vector<uint16_t> h(expected.size());
    w.ToHalf(half, h.data());
    for (size_t i = 0; i < h.size(); ++i) {
      const uint16_t want = half == DType::kBF16 ? FloatToBf16(expected[i]) : FloatToF16(expected[i]);
      ASSERT_EQ(h[i], want) << what << " [" << i << "] to " << DTypeName(half);
    }
  }
}

struct LlamaCase {
  const char* name;
  ModelConfig (*config)();
  DType dtype;
  int shards;
  bool biases;
  bool tie;
};

class LlamaBindTest : public ::testing::TestWithParam<LlamaCase> {};

TEST_P(LlamaBindTest, BindsEveryTensor) {
  const LlamaCase& p = GetParam();
  ModelConfig cfg = p.config();
  cfg.qkv_bias = cfg.out_bias = cfg.mlp_bias = p.biases;
  cfg.tie_word_embeddings = p.tie;
  auto b = WriteAndBind(cfg, {.dtype = p.dtype, .num_shards = p.shards, .seed = 7});
  ASSERT_NE(b, nullptr);
  const ModelWeights& w = b->weights;
  const Values& v = b->values;
  const int64_t V = cfg.vocab_size, C = cfg.hidden_size, F = cfg.intermediate_size;
  ExpectShape(w.embed, V, C, "embed");
  ExpectValues(w.embed, v.at("model.embed_tokens.weight"), p.dtype, "embed");
  ASSERT_EQ(w.layers.size(), static_cast<size_t>(cfg.num_layers));
  for (int i = 0; i < cfg.num_layers; ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string n = absl::StrCat("model.layers.", i, ".");
    ExpectShape(l.attn_norm_w, C, 1, "attn_norm");
    ExpectValues(l.attn_norm_w, v.at(n + "input_layernorm.weight"), p.dtype, "attn_norm");
    ExpectValues(l.mlp_norm_w, v.at(n + "post_attention_layernorm.weight"), p.dtype, "mlp_norm");
    EXPECT_FALSE(l.attn_norm_b.present() || l.mlp_norm_b.present());
    ExpectShape(l.wqkv, cfg.qkv_dim(), C, "wqkv");
    ExpectValues(l.wqkv,
                 Cat({&v.at(n + "self_attn.q_proj.weight"), &v.at(n + "self_attn.k_proj.weight"),
                      &v.at(n + "self_attn.v_proj.weight")}),
                 p.dtype, "wqkv");
    ExpectShape(l.wo, C, cfg.q_dim(), "wo");
    ExpectValues(l.wo, v.at(n + "self_attn.o_proj.weight"), p.dtype, "wo");
    ExpectShape(l.w_up, 2 * F, C, "w_up");
    ExpectValues(l.w_up, Cat({&v.at(n + "mlp.gate_proj.weight"), &v.at(n + "mlp.up_proj.weight")}), p.dtype, "w_up");
    ExpectShape(l.w_down, C, F, "w_down");
    ExpectValues(l.w_down, v.at(n + "mlp.down_proj.weight"), p.dtype, "w_down");
    EXPECT_EQ(l.bqkv.present(), p.biases);
    EXPECT_EQ(l.bo.present(), p.biases);
    EXPECT_EQ(l.b_up.present(), p.biases);
    EXPECT_EQ(l.b_down.present(), p.biases);
    if (p.biases) {
      ExpectShape(l.bqkv, cfg.qkv_dim(), 1, "bqkv");
      ExpectValues(l.bqkv,
                   Cat({&v.at(n + "self_attn.q_proj.bias"), &v.at(n + "self_attn.k_proj.bias"),
                        &v.at(n + "self_attn.v_proj.bias")}),
                   p.dtype, "bqkv");
      ExpectValues(l.bo, v.at(n + "self_attn.o_proj.bias"), p.dtype, "bo");
      ExpectValues(l.b_up, Cat({&v.at(n + "mlp.gate_proj.bias"), &v.at(n + "mlp.up_proj.bias")}), p.dtype, "b_up");
      ExpectValues(l.b_down, v.at(n + "mlp.down_proj.bias"), p.dtype, "b_down");
    }
  }
  ExpectValues(w.final_norm_w, v.at("model.norm.weight"), p.dtype, "final_norm");
  EXPECT_FALSE(w.final_norm_b.present());
  ExpectShape(w.lm_head, V, C, "lm_head");
  ExpectValues(w.lm_head, v.at(p.tie ? "model.embed_tokens.weight" : "lm_head.weight"), p.dtype, "lm_head");
  EXPECT_EQ(p.tie, w.lm_head.parts == w.embed.parts);
}

INSTANTIATE_TEST_SUITE_P(
    Families, LlamaBindTest,
    ::testing::Values(LlamaCase{"llama3_bf16_single", testutil::TinyLlamaConfig, DType::kBF16, 1, false, false},
                      LlamaCase{"llama3_f16_sharded", testutil::TinyLlamaConfig, DType::kF16, 4, false, false},
                      LlamaCase{"llama_f32_biases_tied", testutil::TinyLlamaConfig, DType::kF32, 3, true, true},
                      LlamaCase{"mistral_bf16_sharded", testutil::TinyMistralConfig, DType::kBF16, 2, false, false},
                      LlamaCase{"mistral_f32_single", testutil::TinyMistralConfig, DType::kF32, 1, false, true}),
    [](const auto& info) { return std::string(info.param.name); });

struct FalconCase {
  const char* name;
  DType dtype;
  int shards;
  bool multi_query;
  bool parallel;
  bool bias;
  bool tie;
};

class FalconBindTest : public ::testing::TestWithParam<FalconCase> {};

TEST_P(FalconBindTest, BindsEveryTensor) {
  const FalconCase& p = GetParam();
  ModelConfig cfg = testutil::TinyFalconConfig();
  cfg.num_kv_heads = p.multi_query ? 1 : cfg.num_q_heads;
  cfg.parallel_attn_mlp = p.parallel;
  cfg.qkv_bias = cfg.out_bias = cfg.mlp_bias = p.bias;
  cfg.tie_word_embeddings = p.tie;
  auto b = WriteAndBind(cfg, {.dtype = p.dtype, .num_shards = p.shards, .seed = 3});
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->folder->config().num_kv_heads, cfg.num_kv_heads);
  EXPECT_EQ(b->folder->config().parallel_attn_mlp, p.parallel);
  const ModelWeights& w = b->weights;
  const Values& v = b->values;
  const int64_t V = cfg.vocab_size, C = cfg.hidden_size, F = cfg.intermediate_size, D = cfg.head_dim;
  ExpectValues(w.embed, v.at("transformer.word_embeddings.weight"), p.dtype, "embed");
  for (int i = 0; i < cfg.num_layers; ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string n = absl::StrCat("transformer.h.", i, ".");
    ExpectValues(l.attn_norm_w, v.at(n + "input_layernorm.weight"), p.dtype, "ln w");
    ExpectValues(l.attn_norm_b, v.at(n + "input_layernorm.bias"), p.dtype, "ln b");
    EXPECT_EQ(l.mlp_norm_w.present(), !p.parallel);
    EXPECT_EQ(l.mlp_norm_b.present(), !p.parallel);
    if (!p.parallel) {
      ExpectValues(l.mlp_norm_w, v.at(n + "post_attention_layernorm.weight"), p.dtype, "post ln w");
      ExpectValues(l.mlp_norm_b, v.at(n + "post_attention_layernorm.bias"), p.dtype, "post ln b");
    }
    // Expected [q; k; v]: with multi_query the checkpoint is already in that order; otherwise it
    // holds [q0 k0 v0 q1 k1 v1 ...] in D-row blocks.
    auto regroup = [&](const std::vector<float>& fused, int64_t cols) {
      if (p.multi_query) return fused;
      std::vector<float> out;
      for (int which = 0; which < 3; ++which) {
        for (int h = 0; h < cfg.num_q_heads; ++h) {
          const auto begin = fused.begin() + ((3 * h + which) * D) * cols;
          out.insert(out.end(), begin, begin + D * cols);
        }
      }
      return out;
    };
    ExpectShape(l.wqkv, cfg.qkv_dim(), C, "wqkv");
    ExpectValues(l.wqkv, regroup(v.at(n + "self_attention.query_key_value.weight"), C), p.dtype, "wqkv");
    ExpectShape(l.wo, C, cfg.q_dim(), "wo");
    ExpectValues(l.wo, v.at(n + "self_attention.dense.weight"), p.dtype, "wo");
    ExpectShape(l.w_up, F, C, "w_up");
    ExpectValues(l.w_up, v.at(n + "mlp.dense_h_to_4h.weight"), p.dtype, "w_up");
    ExpectShape(l.w_down, C, F, "w_down");
    ExpectValues(l.w_down, v.at(n + "mlp.dense_4h_to_h.weight"), p.dtype, "w_down");
    EXPECT_EQ(l.bqkv.present(), p.bias);
    if (p.bias) {
      ExpectValues(l.bqkv, regroup(v.at(n + "self_attention.query_key_value.bias"), 1), p.dtype, "bqkv");
      ExpectValues(l.bo, v.at(n + "self_attention.dense.bias"), p.dtype, "bo");
      ExpectValues(l.b_up, v.at(n + "mlp.dense_h_to_4h.bias"), p.dtype, "b_up");
      ExpectValues(l.b_down, v.at(n + "mlp.dense_4h_to_h.bias"), p.dtype, "b_down");
    }
  }
  ExpectValues(w.final_norm_w, v.at("transformer.ln_f.weight"), p.dtype, "ln_f w");
  ExpectValues(w.final_norm_b, v.at("transformer.ln_f.bias"), p.dtype, "ln_f b");
  ExpectShape(w.lm_head, V, C, "lm_head");
  ExpectValues(w.lm_head, v.at(p.tie ? "transformer.word_embeddings.weight" : "lm_head.weight"), p.dtype, "lm_head");
  // Copies of the weights keep the regrouped slices alive.
  const ModelWeights copy = w;
  EXPECT_EQ(copy.layers[0].wqkv.ToFloat(), w.layers[0].wqkv.ToFloat());
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, FalconBindTest,
    ::testing::Values(FalconCase{"falcon7b_bf16_single", DType::kBF16, 1, true, true, false, true},
                      FalconCase{"falcon7b_f16_sharded", DType::kF16, 3, true, true, false, true},
                      FalconCase{"falcon_f32_bias_untied", DType::kF32, 2, true, true, true, false},
                      FalconCase{"falcon_sequential_bf16", DType::kBF16, 1, true, false, true, true},
                      FalconCase{"falcon_multihead_interleaved_f32", DType::kF32, 2, false, true, true, true},
                      FalconCase{"falcon_multihead_sequential_f16", DType::kF16, 1, false, false, false, false}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(WeightRefTest, ConvertsAcrossDtypes) {
  // ToHalf from f32 rounds; from the other 16-bit type it goes through float.
  TempDir tmp;
  testutil::TensorMap t;
  t["a"] = testutil::HostTensor{DType::kF32, {2, 2}, {1.0f, 1.0f + 1.0f / 1024, 65504.0f, 1e-7f}};
  t["b"] = testutil::HostTensor{DType::kBF16, {1, 2}, {3.0f, -0.0078125f}};
  t["c"] = testutil::HostTensor{DType::kF16, {1, 2}, {0.333251953125f, 2048.0f}};
  ASSERT_TRUE(testutil::WriteSafetensors(tmp.file("x.safetensors"), t).ok());
  auto file = SafetensorsFile::Open(tmp.file("x.safetensors"));
  ASSERT_TRUE(file.ok());
  WeightRef w;
  w.parts = {&(*file)->tensors().at("a"), &(*file)->tensors().at("b"), &(*file)->tensors().at("c")};
  w.rows = 4;
  w.cols = 2;
  const std::vector<float> expected = {1.0f, 1.0f + 1.0f / 1024, 65504.0f, 1e-7f, 3.0f, -0.0078125f,
                                       0.333251953125f, 2048.0f};
  EXPECT_EQ(w.ToFloat(), expected);
  std::vector<uint16_t> h(8);
  w.ToHalf(DType::kF16, h.data());
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(h[i], FloatToF16(expected[i])) << i;
  w.ToHalf(DType::kBF16, h.data());
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(h[i], FloatToBf16(expected[i])) << i;
}

// The folders transformers itself wrote (tests/fixtures/make_fixtures.py, transformers 5.x: the
// "dtype" and "rope_parameters" spellings, Falcon's multi_query beside num_kv_heads).
TEST(FixtureFoldersTest, BindTransformersWrittenFolders) {
  const char* src = std::getenv("KVR_SOURCE_DIR");
  const std::string root = std::string(src != nullptr ? src : ".") + "/tests/fixtures/";
  if (!std::filesystem::exists(root + "llama3/config.json")) GTEST_SKIP() << "no fixtures under " << root;
  for (const char* family : {"llama2", "llama3", "mistral", "falcon"}) {
    auto folder = ModelFolder::Open(root + family);
    ASSERT_TRUE(folder.ok()) << folder.status();
    auto weights = BindWeights(**folder);
    ASSERT_TRUE(weights.ok()) << weights.status();
    const ModelConfig& c = (*folder)->config();
    const int64_t elem = static_cast<int64_t>(DTypeSize(weights->embed.parts[0]->dtype));  // one dtype per fixture
    EXPECT_EQ(static_cast<int64_t>((*folder)->TotalBytes()), elem * c.NumParameters()) << family;
    EXPECT_EQ(weights->layers.size(), static_cast<size_t>(c.num_layers));
    const std::string f = family;
    if (f == "llama3") {
      EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kLlama3);
      EXPECT_EQ(c.rope.theta, 500000.0f);
      EXPECT_EQ(c.num_kv_heads, 2);
    }
    if (f == "falcon") {
      EXPECT_EQ(c.arch, Architecture::kFalcon);
      EXPECT_EQ(c.num_kv_heads, 1);  // multi_query wins over num_kv_heads, as in FalconAttention
      EXPECT_TRUE(weights->lm_head.parts == weights->embed.parts);
    }
  }
}

// --- broken checkpoints ---------------------------------------------------------------------

absl::Status BindStatus(const std::string& dir) {
  auto folder = ModelFolder::Open(dir);
  if (!folder.ok()) return folder.status();
  return BindWeights(**folder).status();
}

TEST(BadWeightsTest, MissingTensor) {
  TempDir tmp;
  ASSERT_TRUE(testutil::WriteTinyModelFolder(tmp.path(), testutil::TinyLlamaConfig(),
                                             {.num_shards = 2, .skip = {"model.layers.1.self_attn.k_proj.weight"}})
                  .ok());
  EXPECT_TRUE(HasError(BindStatus(tmp.path()), absl::StatusCode::kNotFound,
                       {tmp.path(), "\"model.layers.1.self_attn.k_proj.weight\"", "missing",
                        "model-00001-of-00002.safetensors"}));
}

TEST(BadWeightsTest, MissingFalconTensor) {
  TempDir tmp;
  ASSERT_TRUE(testutil::WriteTinyModelFolder(tmp.path(), testutil::TinyFalconConfig(),
                                             {.skip = {"transformer.h.0.input_layernorm.bias"}})
                  .ok());
  EXPECT_TRUE(HasError(BindStatus(tmp.path()), absl::StatusCode::kNotFound,
                       {"\"transformer.h.0.input_layernorm.bias\"", "missing", "model.safetensors"}));
}

TEST(BadWeightsTest, MissingUntiedLmHead) {
  TempDir tmp;
  ASSERT_TRUE(testutil::WriteTinyModelFolder(tmp.path(), testutil::TinyMistralConfig(), {.skip = {"lm_head.weight"}})
                  .ok());
  EXPECT_TRUE(HasError(BindStatus(tmp.path()), absl::StatusCode::kNotFound,
                       {tmp.path(), "\"lm_head.weight\"", "tie_word_embeddings false"}));
}

TEST(BadWeightsTest, WrongShape) {
  TempDir tmp;
  // k_proj written as (Hq*D, C) = (32, 32) where GQA wants (Hkv*D, C) = (16, 32).
  ASSERT_TRUE(testutil::WriteTinyModelFolder(tmp.path(), testutil::TinyLlamaConfig(),
                                             {.shapes = {{"model.layers.0.self_attn.k_proj.weight", {32, 32}}}})
                  .ok());
  EXPECT_TRUE(HasError(BindStatus(tmp.path()), absl::StatusCode::kInvalidArgument,
                       {tmp.file("model.safetensors"), "\"model.layers.0.self_attn.k_proj.weight\"",
                        "shape [32, 32], expected [16, 32] (Hkv*D, C)"}));
}

TEST(BadWeightsTest, TransposedMatrix) {
  TempDir tmp;
  ASSERT_TRUE(testutil::WriteTinyModelFolder(tmp.path(), testutil::TinyFalconConfig(),
                                             {.dtype = DType::kF16,
                                              .num_shards = 2,
                                              .shapes = {{"transformer.h.1.mlp.dense_4h_to_h.weight", {160, 40}}}})
                  .ok());
  EXPECT_TRUE(HasError(BindStatus(tmp.path()), absl::StatusCode::kInvalidArgument,
                       {".safetensors", "\"transformer.h.1.mlp.dense_4h_to_h.weight\"",
                        "shape [160, 40], expected [40, 160] (C, F)"}));
}

TEST(BadWeightsTest, WrongVectorLength) {
  TempDir tmp;
  ASSERT_TRUE(testutil::WriteTinyModelFolder(tmp.path(), testutil::TinyLlamaConfig(),
                                             {.shapes = {{"model.norm.weight", {31}}}})
                  .ok());
  EXPECT_TRUE(HasError(BindStatus(tmp.path()), absl::StatusCode::kInvalidArgument,
                       {"model.safetensors", "\"model.norm.weight\"", "shape [31], expected [32] (C)"}));
}

}  // namespace
}  // namespace kvr
