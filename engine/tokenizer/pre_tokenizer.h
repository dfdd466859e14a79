// Pre-tokenization: cuts one normalized text segment into the pieces that BPE encodes one at a
// time, as the pre_tokenizer section of a tokenizer.json describes.
//
// Supported steps (tokenizer.json type): Split with a known regex (split_patterns.h), ByteLevel,
// Metaspace, Punctuation, Digits. A Sequence is a list of steps.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tokenizer/split_patterns.h"

namespace kvr {

enum class PrependScheme { kAlways, kFirst, kNever };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel, kMetaspace, kPunctuation, kDigits };
  Kind kind = Kind::kSplit;
  SplitPattern pattern = SplitPattern::kGpt2;  // kSplit; kByteLevel with use_regex uses kGpt2
  bool use_regex = true;                       // kByteLevel
  bool add_prefix_space = false;               // kByteLevel
  bool contiguous = true;                      // kPunctuation, kDigits (individual_digits = !contiguous)
  std::string replacement = "\xE2\x96\x81";    // kMetaspace: U+2581 "▁"
  PrependScheme prepend_scheme = PrependScheme::kAlways;  // kMetaspace
  bool split = false;                          // kMetaspace: split before each replacement
};

// A piece of the segment text: bytes [begin, end).
struct Span {
  uint32_t begin;
  uint32_t end;
};

class PreTokenizer {
 public:
  PreTokenizer() = default;
  explicit PreTokenizer(std::vector<PreTokenizerStep> steps);

  // Splits *text into *pieces (spans of *text, which a Metaspace or prefix-space step may
  // rewrite). at_text_start: the segment starts the whole input (Metaspace's "first" scheme).
  void Run(std::string* text, bool at_text_start, std::vector<Span>* pieces) const;

  // True once a ByteLevel step runs: pieces are then raw bytes for a byte-level vocabulary.
  bool byte_level() const { return byte_level_; }

 private:
  std::vector<PreTokenizerStep> steps_;
  bool byte_level_ = false;
};

}  // namespace kvr
