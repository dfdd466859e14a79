// BindWeights dispatch, the shared binder helpers and WeightRef's dtype conversions.
#include "engine/model/model_weights.h"

#include <cstdlib>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/weights_internal.h"
#include "engine/util/log.h"
#include "engine/util/status_macros.h"

namespace kvr {
namespace weights_internal {

absl::StatusOr<const TensorView*> WeightBinder::Tensor(const std::string& name, const std::vector<int64_t>& shape,
                                                       const std::string& what) const {
  KVR_ASSIGN_OR_RETURN(const TensorView* t, folder_.Find(name));
  if (t->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(t->file, ": tensor \"", name, "\": shape ", t->ShapeString(),
                                                   ", expected [", absl::StrJoin(shape, ", "), "] ", what, " for ",
                                                   folder_.config().Summary()));
  }
  return t;
}

absl::Status WeightBinder::Matrix(WeightRef* out, const std::string& name, int64_t rows, int64_t cols,
                                  const std::string& what) const {
  KVR_ASSIGN_OR_RETURN(const TensorView* t, Tensor(name, {rows, cols}, what));
  *out = Concat({t});
  return absl::OkStatus();
}

absl::Status WeightBinder::Vector(WeightRef* out, const std::string& name, int64_t len, const std::string& what) const {
  KVR_ASSIGN_OR_RETURN(const TensorView* t, Tensor(name, {len}, what));
  *out = Concat({t});
  return absl::OkStatus();
}

const TensorView* WeightBinder::Slice(const TensorView& t, int64_t begin, int64_t count) {
  if (weights_->slices == nullptr) weights_->slices = std::make_shared<std::deque<TensorView>>();
  TensorView s;
  s.name = absl::StrCat(t.name, "[", begin, ":", begin + count, "]");
  s.file = t.file;
  s.dtype = t.dtype;
  s.shape = t.shape;
  s.shape[0] = count;
  const size_t row_bytes = (t.shape.size() > 1 ? static_cast<size_t>(t.shape[1]) : 1) * DTypeSize(t.dtype);
  s.data = t.data + static_cast<size_t>(begin) * row_bytes;
  s.num_bytes = static_cast<size_t>(count) * row_bytes;
  weights_->slices->push_back(std::move(s));
  return &weights_->slices->back();
}

WeightRef Concat(std::vector<const TensorView*> parts) {
  WeightRef w;
  for (const TensorView* p : parts) {
    w.rows += p->shape.empty() ? 1 : p->shape[0];
    w.cols = p->shape.size() > 1 ? p->shape[1] : 1;
  }
  w.parts = std::move(parts);
  return w;
}

absl::Status WeightBinder::LmHead(ModelWeights* w) const {
  const ModelConfig& c = folder_.config();
  if (c.tie_word_embeddings) {
    w->lm_head = w->embed;
    return absl::OkStatus();
  }
  if (folder_.Has("lm_head.weight")) {
    return Matrix(&w->lm_head, "lm_head.weight", c.vocab_size, c.hidden_size, "(V, C)");
  }
  return absl::NotFoundError(absl::StrCat(folder_.dir(), ": tensor \"lm_head.weight\": missing, and config.json "
                                          "has tie_word_embeddings false"));
}

}  // namespace weights_internal

absl::StatusOr<ModelWeights> BindWeights(const ModelFolder& folder) {
  ModelWeights w;
  switch (folder.config().arch) {
    case Architecture::kLlama:
    case Architecture::kMistral:
      KVR_RETURN_IF_ERROR(weights_internal::BindLlamaWeights(folder, &w));
      break;
    case Architecture::kFalcon:
      KVR_RETURN_IF_ERROR(weights_internal::BindFalconWeights(folder, &w));
      break;
  }
  return w;
}

namespace {

// All of one tensor's elements as float, row-major.
void PartToFloat(const TensorView& t, float* out) {
  const size_t n = static_cast<size_t>(t.NumElements());
  switch (t.dtype) {
    case DType::kF32:
      std::memcpy(out, t.data, n * sizeof(float));
      return;
    case DType::kF16:
    case DType::kBF16: {
      const bool bf16 = t.dtype == DType::kBF16;
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, t.data + 2 * i, 2);  // mapped data need not be 2-byte aligned
        out[i] = bf16 ? Bf16ToFloat(v) : F16ToFloat(v);
      }
      return;
    }
  }
}

}  // namespace

void WeightRef::ToFloat(float* out) const {
  for (const TensorView* p : parts) {
    PartToFloat(*p, out);
    out += p->NumElements();
  }
}

std::vector<float> WeightRef::ToFloat() const {
  std::vector<float> out(static_cast<size_t>(NumElements()));
  ToFloat(out.data());
  return out;
}

void WeightRef::ToHalf(DType target, uint16_t* out) const {
  if (target == DType::kF32) {
    KVR_LOG(ERROR) << "WeightRef::ToHalf called with target F32; use ToFloat";
    std::abort();
  }
  const bool to_bf16 = target == DType::kBF16;
  for (const TensorView* p : parts) {
    const size_t n = static_cast<size_t>(p->NumElements());
    if (p->dtype == target) {
      std::memcpy(out, p->data, n * 2);
    } else if (p->dtype == DType::kF32) {
      for (size_t i = 0; i < n; ++i) {
        float f;
        std::memcpy(&f, p->data + 4 * i, 4);
        out[i] = to_bf16 ? FloatToBf16(f) : FloatToF16(f);
      }
    } else {  // the other 16-bit type, through float
      const bool from_bf16 = p->dtype == DType::kBF16;
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p->data + 2 * i, 2);
        const float f = from_bf16 ? Bf16ToFloat(v) : F16ToFloat(v);
        out[i] = to_bf16 ? FloatToBf16(f) : FloatToF16(f);
      }
    }
    out += n;
  }
}

}  // namespace kvr
