// Shared by the per-architecture binders (weights_llama.cc, weights_falcon.cc); not part of the
// kvr_model interface.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_folder.h"
#include "engine/model/model_weights.h"

namespace kvr::weights_internal {

// Looks tensors up in a folder, checks their shapes and assembles WeightRefs.
class WeightBinder {
 public:
  WeightBinder(const ModelFolder& folder, ModelWeights* weights) : folder_(folder), weights_(weights) {}

  // The tensor `name`, which must have exactly `shape`. `what` names the expected shape in the
  // legend's letters for the error, e.g. "(Hq*D, C)".
  absl::StatusOr<const TensorView*> Tensor(const std::string& name, const std::vector<int64_t>& shape,
                                           const std::string& what) const;
  // A rows-by-cols (or, with cols == 0, a length-rows vector) weight made of one tensor.
  absl::Status Matrix(WeightRef* out, const std::string& name, int64_t rows, int64_t cols, const std::string& what) const;
  absl::Status Vector(WeightRef* out, const std::string& name, int64_t len, const std::string& what) const;
  // Rows [begin, begin + count) of a 1-D or 2-D tensor, as a view that lives in weights->slices.
  const TensorView* Slice(const TensorView& t, int64_t begin, int64_t count);

  // lm_head (V, C): the embedding when config.json ties them (as transformers does, whether or
  // not lm_head.weight is stored), else the stored "lm_head.weight", else NotFound.
  absl::Status LmHead(ModelWeights* w) const;

  const ModelFolder& folder() const { return folder_; }

 private:
  const ModelFolder& folder_;
  ModelWeights* weights_;
};

// A WeightRef over `parts` concatenated along dim 0.
WeightRef Concat(std::vector<const TensorView*> parts);

// Per-architecture binders; `folder.config()` says which one applies.
absl::Status BindLlamaWeights(const ModelFolder& folder, ModelWeights* weights);   // llama, mistral
absl::Status BindFalconWeights(const ModelFolder& folder, ModelWeights* weights);  // falcon (7B layout)

}  // namespace kvr::weights_internal
