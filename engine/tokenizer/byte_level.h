// GPT-2's byte-level alphabet: every byte maps to one printable code point, so byte-level BPE
// vocabularies store arbitrary bytes as ordinary text ("Ġ" is the space byte 0x20).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvr {

// Code point that stands for byte b.
char32_t ByteToUnicode(uint8_t b);

// Byte that code point cp stands for, or -1 if cp is not part of the alphabet.
int UnicodeToByte(char32_t cp);

// The UTF-8 text that spells raw bytes in the alphabet ("a b" -> "aĠb").
std::string BytesToByteLevel(std::string_view bytes);

// Inverse of BytesToByteLevel; false if text holds a code point outside the alphabet.
bool ByteLevelToBytes(std::string_view text, std::string* bytes);

}  // namespace kvr
