#include "engine/tokenizer/unicode.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode_tables.h"

namespace kvr {

GeneralCategory CategoryOf(char32_t cp) {
  const uint32_t key = (static_cast<uint32_t>(cp) << 5) | 31u;
  const uint32_t* begin = kUnicodeCategoryRanges;
  const uint32_t* end = kUnicodeCategoryRanges + kUnicodeCategoryRangeCount;
  const uint32_t* it = std::upper_bound(begin, end, key);  // first entry starting after cp
  if (it == begin) return GeneralCategory::kCn;
  return static_cast<GeneralCategory>(*(it - 1) & 31u);
}

namespace {

bool IsWhiteSpaceProperty(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

uint8_t ComputeClass(char32_t cp) {
  uint8_t c = 0;
  switch (CategoryOf(cp)) {
    case GeneralCategory::kLu: case GeneralCategory::kLl: case GeneralCategory::kLt:
    case GeneralCategory::kLm: case GeneralCategory::kLo:
      c |= kClassLetter;
      break;
    case GeneralCategory::kNd: case GeneralCategory::kNl: case GeneralCategory::kNo:
      c |= kClassNumber;
      break;
    case GeneralCategory::kPc: case GeneralCategory::kPd: case GeneralCategory::kPs:
    case GeneralCategory::kPe: case GeneralCategory::kPi: case GeneralCategory::kPf:
    case GeneralCategory::kPo:
      c |= kClassPunct;
      break;
    default:
      break;
  }
  if (IsWhiteSpaceProperty(cp)) c |= kClassWhitespace;
  if (cp == '\r' || cp == '\n') c |= kClassNewline;
  if (cp < 0x80 && ((cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) ||
                    (cp >= 0x5B && cp <= 0x60) || (cp >= 0x7B && cp <= 0x7E))) {
    c |= kClassAsciiPunct;
  }
  return c;
}

// The class of every ASCII code point, computed at compile time.
struct AsciiClasses {
  uint8_t v[128];
  constexpr AsciiClasses() : v() {
    for (int cp = 0; cp < 128; ++cp) {
      uint8_t c = 0;
      if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) c |= kClassLetter;
      if (cp >= '0' && cp <= '9') c |= kClassNumber;
      if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x20) c |= kClassWhitespace;
      if (cp == '\r' || cp == '\n') c |= kClassNewline;
      const bool ascii_punct = (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) ||
                               (cp >= 0x5B && cp <= 0x60) || (cp >= 0x7B && cp <= 0x7E);
      if (ascii_punct) {
        c |= kClassAsciiPunct;
        // Of ASCII punctuation, $ + < = > ^ ` | ~ are symbols (S*), not \p{P}.
        const bool symbol = cp == '$' || cp == '+' || cp == '<' || cp == '=' || cp == '>' ||
                            cp == '^' || cp == '`' || cp == '|' || cp == '~';
        if (!symbol) c |= kClassPunct;
      }
      v[cp] = c;
    }
  }
};
constexpr AsciiClasses kAsciiClasses;

}  // namespace

uint8_t ClassOf(char32_t cp) {
  if (cp < 128) return kAsciiClasses.v[cp];
  return ComputeClass(cp);
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

int ValidUtf8SeqLen(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  int n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // past U+10FFFF
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  const auto b1 = static_cast<unsigned char>(s[i + 1]);
  if (b1 < lo || b1 > hi) return 0;
  for (int k = 2; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (b < 0x80 || b > 0xBF) return 0;
  }
  return n;
}

absl::Status ValidateUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // Fast path over ASCII, 8 bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= s.size()) break;
    const int n = ValidUtf8SeqLen(s, i);
    if (n == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("input is not valid UTF-8: bad byte 0x",
                       absl::Hex(static_cast<unsigned char>(s[i]), absl::kZeroPad2),
                       " at byte offset ", i));
    }
    i += n;
  }
  return absl::OkStatus();
}

void AppendUtf8Lossy(std::string_view s, std::string* out) {
  size_t i = 0;
  while (i < s.size()) {
    const int n = ValidUtf8SeqLen(s, i);
    if (n > 0) {
      out->append(s.data() + i, n);
      i += n;
      continue;
    }
    // Skip the maximal prefix of a valid sequence (at least one byte), then emit U+FFFD.
    const auto b0 = static_cast<unsigned char>(s[i]);
    size_t j = i + 1;
    const int want = Utf8SeqLen(b0);
    if (b0 >= 0xC2 && b0 <= 0xF4) {
      unsigned char lo = 0x80, hi = 0xBF;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
      if (j < s.size() && static_cast<unsigned char>(s[j]) >= lo &&
          static_cast<unsigned char>(s[j]) <= hi) {
        ++j;
        while (j < s.size() && static_cast<int>(j - i) < want &&
               (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) {
          ++j;
        }
      }
    }
    out->append("\xEF\xBF\xBD");
    i = j;
  }
}

}  // namespace kvr
