// Unicode helpers for the tokenizer: UTF-8 decoding and validation, general categories, and the
// character classes the pre-tokenizer regexes use (\p{L}, \p{N}, \p{P}, \s).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace kvr {

// Order matches gen/gen_unicode_tables.py.
enum class GeneralCategory : uint8_t {
  kCn, kLu, kLl, kLt, kLm, kLo, kMn, kMc, kMe, kNd, kNl, kNo, kPc, kPd, kPs, kPe, kPi, kPf, kPo,
  kSm, kSc, kSk, kSo, kZs, kZl, kZp, kCc, kCf, kCs, kCo,
};

GeneralCategory CategoryOf(char32_t cp);

// Character classes as bit flags, so one lookup answers every question about a code point.
enum CharClass : uint8_t {
  kClassLetter = 1,      // \p{L}
  kClassNumber = 2,      // \p{N} (Rust's char::is_numeric as well)
  kClassWhitespace = 4,  // \s: the Unicode White_Space property
  kClassPunct = 8,       // \p{P}
  kClassNewline = 16,    // \r or \n
  kClassAsciiPunct = 32, // ASCII punctuation (Rust's is_ascii_punctuation), symbols included
};

uint8_t ClassOf(char32_t cp);

// Decodes the code point starting at s[i] of a valid UTF-8 string; sets *len to its length.
inline char32_t DecodeUtf8(std::string_view s, size_t i, int* len) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    *len = 1;
    return b0;
  }
  if (b0 < 0xE0) {
    *len = 2;
    return ((b0 & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
  }
  if (b0 < 0xF0) {
    *len = 3;
    return ((b0 & 0x0Fu) << 12) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
           (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
  }
  *len = 4;
  return ((b0 & 0x07u) << 18) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
         ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) |
         (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
}

// Length of the UTF-8 sequence that starts with lead byte b (1 for stray continuation bytes).
inline int Utf8SeqLen(unsigned char b) {
  return b < 0x80 ? 1 : b < 0xC0 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

void AppendUtf8(char32_t cp, std::string* out);

// Length of the valid UTF-8 sequence at s[i], or 0 if the bytes there are not one (overlong
// forms, surrogates, code points past U+10FFFF and truncated sequences are invalid).
int ValidUtf8SeqLen(std::string_view s, size_t i);

// OK if s is valid UTF-8; otherwise InvalidArgument naming the byte offset of the first bad byte.
absl::Status ValidateUtf8(std::string_view s);

// Appends s to out, replacing each maximal invalid subsequence by U+FFFD (as Rust's
// String::from_utf8_lossy does).
void AppendUtf8Lossy(std::string_view s, std::string* out);

}  // namespace kvr
