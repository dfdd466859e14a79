// ModelFolder::Open on single-file and sharded folders, and on each kind of broken folder.
#include "engine/model/model_folder.h"

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

TEST(ModelFolderTest, SingleFile) {
  TempDir tmp;
  const ModelConfig cfg = testutil::TinyLlamaConfig();
  auto values = testutil::WriteTinyModelFolder(tmp.path(), cfg);
  ASSERT_TRUE(values.ok()) << values.status();
  std::vector<std::string> opened;
  auto folder = ModelFolder::Open(tmp.path(), [&](int done, int total, const std::string& path) {
    EXPECT_EQ(total, 1);
    EXPECT_EQ(done, static_cast<int>(opened.size()) + 1);
    opened.push_back(path);
  });
  ASSERT_TRUE(folder.ok()) << folder.status();
  EXPECT_EQ(opened, std::vector<std::string>{tmp.file("model.safetensors")});
  EXPECT_EQ((*folder)->dir(), tmp.path());
  EXPECT_EQ((*folder)->config().Summary(), cfg.Summary());
  EXPECT_EQ((*folder)->config().NumParameters(), cfg.NumParameters());
  size_t bytes = 0;
  for (const auto& [name, v] : *values) {
    EXPECT_TRUE((*folder)->Has(name)) << name;
    bytes += v.size() * 2;
  }
  EXPECT_EQ((*folder)->TotalBytes(), bytes);
  EXPECT_EQ(static_cast<int64_t>(bytes), 2 * cfg.NumParameters());
  auto t = (*folder)->Find("model.norm.weight");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->ShapeString(), "[32]");
  EXPECT_TRUE(HasError((*folder)->Find("model.nope").status(), absl::StatusCode::kNotFound,
                       {tmp.path(), "\"model.nope\"", "missing", "model.safetensors"}));
}

TEST(ModelFolderTest, ShardedWithIndex) {
  TempDir tmp;
  const ModelConfig cfg = testutil::TinyFalconConfig();
  ASSERT_TRUE(testutil::WriteTinyModelFolder(tmp.path(), cfg, {.dtype = DType::kF16, .num_shards = 3}).ok());
  int calls = 0;
  auto folder = ModelFolder::Open(tmp.path(), [&](int done, int total, const std::string& path) {
    ++calls;
    EXPECT_EQ(total, 3);
    EXPECT_NE(path.find(absl::StrCat("model-0000", done, "-of-00003.safetensors")), std::string::npos) << path;
  });
  ASSERT_TRUE(folder.ok()) << folder.status();
  EXPECT_EQ(calls, 3);
  EXPECT_EQ((*folder)->config().arch, Architecture::kFalcon);
  EXPECT_EQ(static_cast<int64_t>((*folder)->TotalBytes()), 2 * cfg.NumParameters());
}

// Each broken folder fails at Open with the file, the tensor (where there is one) and the reason.
class BadFolderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testutil::WriteTinyModelFolder(tmp_.path(), testutil::TinyLlamaConfig(), {.num_shards = 2}).ok());
  }
  absl::Status Open() { return ModelFolder::Open(tmp_.path()).status(); }
  TempDir tmp_;
  const std::string shard1_ = "model-00001-of-00002.safetensors";
  const std::string shard2_ = "model-00002-of-00002.safetensors";
  const std::string index_ = "model.safetensors.index.json";
};

TEST_F(BadFolderTest, NotADirectory) {
  EXPECT_TRUE(HasError(ModelFolder::Open(tmp_.file("nope")).status(), absl::StatusCode::kNotFound,
                       {"nope", "not a directory"}));
}

TEST_F(BadFolderTest, MissingConfig) {
  std::filesystem::remove(tmp_.file("config.json"));
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kNotFound, {tmp_.file("config.json"), "no such file"}));
}

TEST_F(BadFolderTest, BadJsonInConfig) {
  ASSERT_TRUE(testutil::WriteTextFile(tmp_.file("config.json"), "{\"model_type\": \"llama\",,}").ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kInvalidArgument,
                       {tmp_.file("config.json"), "invalid JSON", "parse error"}));
}

TEST_F(BadFolderTest, ConfigMissingKey) {
  ModelConfig cfg = testutil::TinyLlamaConfig();
  std::string text = testutil::ConfigJson(cfg);
  const std::string key = "\"vocab_size\"";
  text.replace(text.find(key), key.size(), "\"vocab_size_\"");
  ASSERT_TRUE(testutil::WriteTextFile(tmp_.file("config.json"), text).ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kInvalidArgument,
                       {tmp_.file("config.json") + ": missing \"vocab_size\""}));
}

TEST_F(BadFolderTest, UnsupportedModelType) {
  ModelConfig cfg = testutil::TinyLlamaConfig();
  cfg.model_type = "qwen2";
  ASSERT_TRUE(testutil::WriteTextFile(tmp_.file("config.json"), testutil::ConfigJson(cfg)).ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kUnimplemented,
                       {tmp_.file("config.json"), "model_type \"qwen2\" is not supported"}));
}

TEST_F(BadFolderTest, BadJsonInIndex) {
  ASSERT_TRUE(testutil::WriteTextFile(tmp_.file(index_), "{\"weight_map\": {\"a\": ").ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kInvalidArgument, {tmp_.file(index_), "invalid JSON"}));
  ASSERT_TRUE(testutil::WriteTextFile(tmp_.file(index_), "{\"metadata\": {}}").ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kInvalidArgument, {tmp_.file(index_), "weight_map"}));
  ASSERT_TRUE(testutil::WriteTextFile(tmp_.file(index_), R"({"weight_map": {"model.norm.weight": "../x.safetensors"}})").ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kInvalidArgument,
                       {tmp_.file(index_), "\"model.norm.weight\"", "not a file name inside the folder"}));
}

TEST_F(BadFolderTest, IndexNamesMissingFile) {
  std::filesystem::remove(tmp_.file(shard2_));
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kNotFound,
                       {tmp_.file(index_), shard2_, "does not exist", "tensor \""}));
}

TEST_F(BadFolderTest, IndexNamesWrongFile) {
  auto text = testutil::ReadTextFile(tmp_.file(index_));
  ASSERT_TRUE(text.ok());
  // Claim the final norm (written to shard 2) is in shard 1.
  const std::string entry = "\"model.norm.weight\": \"" + shard2_ + "\"";
  const size_t at = text->find(entry);
  ASSERT_NE(at, std::string::npos) << *text;
  text->replace(at, entry.size(), "\"model.norm.weight\": \"" + shard1_ + "\"");
  ASSERT_TRUE(testutil::WriteTextFile(tmp_.file(index_), *text).ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kInvalidArgument,
                       {tmp_.file(shard2_), "\"model.norm.weight\"", "says it is in " + shard1_}));
}

TEST_F(BadFolderTest, IndexNamesTensorNotInFile) {
  auto text = testutil::ReadTextFile(tmp_.file(index_));
  ASSERT_TRUE(text.ok());
  text->insert(text->find("\"weight_map\": {") + 15, "\"model.extra.weight\": \"" + shard1_ + "\",");
  ASSERT_TRUE(testutil::WriteTextFile(tmp_.file(index_), *text).ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kNotFound,
                       {tmp_.file(shard1_), "\"model.extra.weight\"", "not in the file"}));
}

TEST_F(BadFolderTest, TruncatedShard) {
  auto bytes = testutil::ReadTextFile(tmp_.file(shard2_));
  ASSERT_TRUE(bytes.ok());
  ASSERT_TRUE(testutil::WriteTextFile(tmp_.file(shard2_), bytes->substr(0, bytes->size() - 100)).ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kDataLoss,
                       {tmp_.file(shard2_), "tensor \"", "extend past the end", "truncated"}));
}

TEST_F(BadFolderTest, UnsupportedTensorDtype) {
  testutil::TensorMap t;
  t["model.norm.weight"] = testutil::HostTensor{DType::kF32, {32}, std::vector<float>(32, 1.0f)};
  std::string bytes = testutil::EncodeSafetensors(t);
  const size_t at = bytes.find("\"F32\"");
  bytes.replace(at, 5, "\"I32\"");  // same length, so the header length stays right
  ASSERT_TRUE(testutil::WriteTextFile(tmp_.file(shard2_), bytes).ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kInvalidArgument,
                       {tmp_.file(shard2_), "\"model.norm.weight\"", "unsupported dtype \"I32\""}));
}

TEST_F(BadFolderTest, DuplicateTensorAcrossFiles) {
  std::filesystem::remove(tmp_.file(index_));  // no index: every *.safetensors is read
  testutil::TensorMap t;
  t["model.norm.weight"] = testutil::HostTensor{DType::kF32, {32}, std::vector<float>(32, 1.0f)};
  ASSERT_TRUE(testutil::WriteSafetensors(tmp_.file("zzz-extra.safetensors"), t).ok());
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kInvalidArgument,
                       {"zzz-extra.safetensors", "\"model.norm.weight\"", "also in", shard2_, "duplicate"}));
}

TEST_F(BadFolderTest, NoWeights) {
  std::filesystem::remove(tmp_.file(index_));
  std::filesystem::remove(tmp_.file(shard1_));
  std::filesystem::remove(tmp_.file(shard2_));
  EXPECT_TRUE(HasError(Open(), absl::StatusCode::kNotFound, {tmp_.path(), "no *.safetensors files"}));
}

}  // namespace
}  // namespace kvr
