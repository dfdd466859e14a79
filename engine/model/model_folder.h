// ModelFolder: a Hugging Face model folder as users have it on disk:
//   config.json
//   model.safetensors                       (one file), or
//   model.safetensors.index.json + model-0000i-of-0000n.safetensors   (sharded)
//   tokenizer.json, tokenizer_config.json   (read by engine/tokenizer)
// Opens the config and maps every safetensors file; tensors are looked up by name.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"

namespace kvr {

class ModelFolder {
 public:
  // Progress callback: (files opened so far, total files, path just opened).
  using Progress = std::function<void(int, int, const std::string&)>;

  static absl::StatusOr<std::unique_ptr<ModelFolder>> Open(const std::string& dir,
                                                           const Progress& progress = nullptr);

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  // NotFound naming the tensor and the files searched if absent.
  absl::StatusOr<const TensorView*> Find(const std::string& name) const;
  bool Has(const std::string& name) const { return index_.count(name) > 0; }
  size_t TotalBytes() const;  // all mapped tensor data

 private:
  std::string dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

}  // namespace kvr
