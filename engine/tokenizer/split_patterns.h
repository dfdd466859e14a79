// Hand-written matchers for the pre-tokenizer split regexes of the supported model families.
// A general regex engine is slow and easy to make quadratic; these run in linear time and
// reproduce the leftmost-first semantics of the Oniguruma patterns Hugging Face uses.
//
//   kGpt2:    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   kLlama3:  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//             ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   kThreeDigits: [0-9][0-9][0-9]
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace kvr {

enum class SplitPattern { kGpt2, kLlama3, kThreeDigits };

// Recognizes a tokenizer.json Split regex; false if it is not one we implement.
bool ParseSplitPattern(std::string_view regex, SplitPattern* out);

// The code points of one piece with their classes (see unicode.h) and byte offsets.
// In byte-level mode every byte is one character: the code point GPT-2's alphabet gives it.
struct CharRun {
  std::vector<char32_t> cp;
  std::vector<uint8_t> cls;
  std::vector<uint32_t> off;  // off[k] = byte offset of char k; off[size()] = piece length
  size_t size() const { return cp.size(); }
  void Load(std::string_view piece, bool byte_level);
};

// Length in chars of the match starting at char k, or 0 when the pattern does not match there.
size_t MatchSplitPattern(SplitPattern pattern, const CharRun& run, size_t k);

}  // namespace kvr
