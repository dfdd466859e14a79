// Test-only writers: safetensors files (well-formed or deliberately broken) and tiny random
// Hugging Face model folders for llama, mistral and falcon, so tests never need real weights.
//
//   kvr::testutil::TempDir tmp;
//   ModelConfig cfg = kvr::testutil::TinyLlamaConfig();
//   auto values = kvr::testutil::WriteTinyModelFolder(tmp.path(), cfg, {.dtype = DType::kF16, .num_shards = 3});
//   auto folder = ModelFolder::Open(tmp.path());
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/dtype.h"
#include "engine/model/model_config.h"

namespace kvr::testutil {

// A tensor to write; `values` (row-major, one per element) are rounded to `dtype` on write.
struct HostTensor {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<float> values;
};
using TensorMap = std::map<std::string, HostTensor>;

// The safetensors bytes for `tensors`: data in name order, header padded with spaces to a
// multiple of 8 and carrying {"__metadata__": {"format": "pt"}}.
std::string EncodeSafetensors(const TensorMap& tensors);
absl::Status WriteSafetensors(const std::string& path, const TensorMap& tensors);

// A file with exactly this header text and data; `header_len` overrides the 8-byte length field
// (default: the header's size). For malformed-file tests.
absl::Status WriteRawSafetensors(const std::string& path, const std::string& header, const std::string& data,
                                 std::optional<uint64_t> header_len = std::nullopt);
absl::Status WriteTextFile(const std::string& path, const std::string& text);
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// The value `v` as it reads back after a round trip through `dtype`.
float RoundTo(DType dtype, float v);

// A fresh directory under $TEST_TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Small configs for each family (every dimension distinct where the layout allows, so a transposed
// or swapped tensor cannot pass a shape check):
//   llama:   V=96 C=32 L=2 Hq=4 Hkv=2 D=8 F=48, llama3 rope, untied
//   mistral: V=80 C=48 L=2 Hq=6 Hkv=2 D=8 F=56, sliding window 16, untied
//   falcon:  V=72 C=40 L=2 Hq=5 Hkv=1 D=8 F=160, parallel attention, LayerNorm, GELU, tied
ModelConfig TinyLlamaConfig();
ModelConfig TinyMistralConfig();
ModelConfig TinyFalconConfig();

// config.json text for `config`, with the key names transformers writes for its model_type.
std::string ConfigJson(const ModelConfig& config);

// The checkpoint tensors a folder for `config` holds, in file order, with HF names and shapes.
std::vector<std::pair<std::string, std::vector<int64_t>>> HfTensorShapes(const ModelConfig& config);

struct TinyFolderOptions {
  DType dtype = DType::kBF16;
  int num_shards = 1;  // > 1: model-0000i-of-0000n.safetensors plus model.safetensors.index.json
  uint32_t seed = 1;
  std::set<std::string> skip = {};                          // tensors to leave out (and out of the index)
  std::map<std::string, std::vector<int64_t>> shapes = {};  // tensors to write with another shape
  bool write_config = true;
};

// Writes config.json and random weights for `config` into `dir` (which must exist). Matrices are
// uniform in +-1/sqrt(cols), embeddings in +-1, norm weights near 1, biases near 0. Returns the
// values written by tensor name, as they read back (already rounded to options.dtype).
absl::StatusOr<std::map<std::string, std::vector<float>>> WriteTinyModelFolder(const std::string& dir,
                                                                               const ModelConfig& config,
                                                                               const TinyFolderOptions& options = {});

}  // namespace kvr::testutil
