#include "engine/tokenizer/split_patterns.h"

#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/unicode.h"

namespace kvr {

namespace {

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kThreeDigitsRegex = "[0-9][0-9][0-9]";

constexpr uint8_t kLN = kClassLetter | kClassNumber;
constexpr uint8_t kWLN = kClassWhitespace | kClassLetter | kClassNumber;

inline bool IsOther(uint8_t c) { return (c & kWLN) == 0; }  // [^\s\p{L}\p{N}]

char32_t FoldAscii(char32_t c, bool ignore_case) {
  if (!ignore_case) return c;
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c == 0x17F) return 's';  // LATIN SMALL LETTER LONG S folds to s
  return c;
}

// 's|'t|'re|'ve|'m|'ll|'d
size_t MatchContraction(const CharRun& r, size_t k, bool ignore_case) {
  const size_t n = r.size();
  if (r.cp[k] != '\'' || k + 1 >= n) return 0;
  const char32_t a = FoldAscii(r.cp[k + 1], ignore_case);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (k + 2 >= n) return 0;
  const char32_t b = FoldAscii(r.cp[k + 2], ignore_case);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

size_t RunWhile(const CharRun& r, size_t k, uint8_t mask) {
  size_t j = k;
  while (j < r.size() && (r.cls[j] & mask)) ++j;
  return j;
}

size_t RunOther(const CharRun& r, size_t k) {
  size_t j = k;
  while (j < r.size() && IsOther(r.cls[j])) ++j;
  return j;
}

// \s+(?!\S)|\s+ at a whitespace char k whose run ends at j.
size_t MatchTrailingWhitespace(const CharRun& r, size_t k, size_t j) {
  if (j == r.size() || j - k == 1) return j - k;
  return j - k - 1;  // leave the last space to prefix the next word
}

size_t MatchGpt2(const CharRun& r, size_t k) {
  const size_t n = r.size();
  if (size_t m = MatchContraction(r, k, false)) return m;
  const uint8_t c = r.cls[k];
  const bool space = r.cp[k] == ' ' && k + 1 < n;
  const uint8_t next = space ? r.cls[k + 1] : 0;
  if (c & kClassLetter) return RunWhile(r, k, kClassLetter) - k;
  if (space && (next & kClassLetter)) return RunWhile(r, k + 1, kClassLetter) - k;
  if (c & kClassNumber) return RunWhile(r, k, kClassNumber) - k;
  if (space && (next & kClassNumber)) return RunWhile(r, k + 1, kClassNumber) - k;
  if (IsOther(c)) return RunOther(r, k) - k;
  if (space && IsOther(next)) return RunOther(r, k + 1) - k;
  return MatchTrailingWhitespace(r, k, RunWhile(r, k, kClassWhitespace));
}

size_t MatchLlama3(const CharRun& r, size_t k) {
  const size_t n = r.size();
  if (size_t m = MatchContraction(r, k, true)) return m;
  const uint8_t c = r.cls[k];
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c & kClassLetter) return RunWhile(r, k, kClassLetter) - k;
  if (!(c & (kLN | kClassNewline)) && k + 1 < n && (r.cls[k + 1] & kClassLetter)) {
    return RunWhile(r, k + 1, kClassLetter) - k;
  }
  // \p{N}{1,3}
  if (c & kClassNumber) {
    size_t j = k;
    while (j < n && j < k + 3 && (r.cls[j] & kClassNumber)) ++j;
    return j - k;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  size_t s = k;
  if (r.cp[k] == ' ' && k + 1 < n && IsOther(r.cls[k + 1])) s = k + 1;
  if (IsOther(r.cls[s])) {
    return RunWhile(r, RunOther(r, s), kClassNewline) - k;
  }
  // \s*[\r\n]+ : through the last newline of the whitespace run.
  const size_t j = RunWhile(r, k, kClassWhitespace);
  for (size_t p = j; p > k; --p) {
    if (r.cls[p - 1] & kClassNewline) return p - k;
  }
  return MatchTrailingWhitespace(r, k, j);
}

size_t MatchThreeDigits(const CharRun& r, size_t k) {
  if (k + 3 > r.size()) return 0;
  for (size_t i = k; i < k + 3; ++i) {
    if (r.cp[i] < '0' || r.cp[i] > '9') return 0;
  }
  return 3;
}

}  // namespace

bool ParseSplitPattern(std::string_view regex, SplitPattern* out) {
  if (regex == kGpt2Regex) {
    *out = SplitPattern::kGpt2;
  } else if (regex == kLlama3Regex) {
    *out = SplitPattern::kLlama3;
  } else if (regex == kThreeDigitsRegex) {
    *out = SplitPattern::kThreeDigits;
  } else {
    return false;
  }
  return true;
}

void CharRun::Load(std::string_view piece, bool byte_level) {
  cp.clear();
  cls.clear();
  off.clear();
  size_t i = 0;
  while (i < piece.size()) {
    int len = 1;
    char32_t c;
    if (byte_level) {
      c = ByteToUnicode(static_cast<uint8_t>(piece[i]));
    } else {
      c = DecodeUtf8(piece, i, &len);
    }
    cp.push_back(c);
    cls.push_back(ClassOf(c));
    off.push_back(static_cast<uint32_t>(i));
    i += len;
  }
  off.push_back(static_cast<uint32_t>(piece.size()));
}

size_t MatchSplitPattern(SplitPattern pattern, const CharRun& run, size_t k) {
  switch (pattern) {
    case SplitPattern::kGpt2:
      return MatchGpt2(run, k);
    case SplitPattern::kLlama3:
      return MatchLlama3(run, k);
    case SplitPattern::kThreeDigits:
      return MatchThreeDigits(run, k);
  }
  return 0;
}

}  // namespace kvr
