// Normalization of one text segment before pre-tokenization (tokenizer.json "normalizer").
// Supported: Prepend, Replace with a literal pattern, and Sequence of these; this covers the
// sentencepiece-style Llama 2 and Mistral files. Unicode normalization forms are not supported.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvr {

struct NormalizerStep {
  enum class Kind { kPrepend, kReplace };
  Kind kind = Kind::kPrepend;
  std::string pattern;  // kReplace: literal text to find
  std::string content;  // kPrepend: the prefix; kReplace: the replacement
};

class Normalizer {
 public:
  Normalizer() = default;
  explicit Normalizer(std::vector<NormalizerStep> steps) : steps_(std::move(steps)) {}

  bool empty() const { return steps_.empty(); }
  void Run(std::string* text) const;

 private:
  std::vector<NormalizerStep> steps_;
};

}  // namespace kvr
