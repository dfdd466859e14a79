#include "engine/tokenizer/byte_level.h"

#include "engine/tokenizer/unicode.h"

namespace kvr {

namespace {

// Printable bytes stand for themselves; the other 68 get 256, 257, ... in byte order.
constexpr bool IsSelfMapped(int b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct ByteTables {
  char32_t to_cp[256];
  int16_t from_cp[324];  // code points 0..323 cover the whole alphabet
  constexpr ByteTables() : to_cp(), from_cp() {
    for (int i = 0; i < 324; ++i) from_cp[i] = -1;
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      to_cp[b] = IsSelfMapped(b) ? static_cast<char32_t>(b) : static_cast<char32_t>(next++);
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
constexpr ByteTables kByteTables;

}  // namespace

char32_t ByteToUnicode(uint8_t b) { return kByteTables.to_cp[b]; }

int UnicodeToByte(char32_t cp) { return cp < 324 ? kByteTables.from_cp[cp] : -1; }

std::string BytesToByteLevel(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) AppendUtf8(ByteToUnicode(static_cast<uint8_t>(c)), &out);
  return out;
}

bool ByteLevelToBytes(std::string_view text, std::string* bytes) {
  bytes->clear();
  size_t i = 0;
  while (i < text.size()) {
    int len = ValidUtf8SeqLen(text, i);
    if (len == 0) return false;
    const int b = UnicodeToByte(DecodeUtf8(text, i, &len));
    if (b < 0) return false;
    bytes->push_back(static_cast<char>(b));
    i += len;
  }
  return true;
}

}  // namespace kvr
