#include "engine/tokenizer/decoder.h"

#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/unicode.h"

namespace kvr {

namespace {

// "<0xXX>" -> XX, or -1.
int ParseByteToken(std::string_view t) {
  if (t.size() != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(t[3]);
  const int lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// True if s[i..] could still become a valid sequence once more bytes arrive.
bool IsIncompleteTail(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  const int want = Utf8SeqLen(b0);
  if (b0 < 0xC2 || b0 > 0xF4 || static_cast<int>(s.size() - i) >= want) return false;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 == 0xE0) lo = 0xA0;
  if (b0 == 0xED) hi = 0x9F;
  if (b0 == 0xF0) lo = 0x90;
  if (b0 == 0xF4) hi = 0x8F;
  for (size_t k = i + 1; k < s.size(); ++k) {
    const auto b = static_cast<unsigned char>(s[k]);
    if (k == i + 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) return false;
  }
  return true;
}

}  // namespace

std::string RenderToken(const DecoderConfig& config, std::string_view token, bool first) {
  std::string out;
  if (config.byte_level) {
    if (!ByteLevelToBytes(token, &out)) out.assign(token);  // e.g. added tokens: verbatim
    return out;
  }
  if (config.byte_fallback) {
    const int b = ParseByteToken(token);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
      return out;
    }
  }
  if (!config.replace_metaspace || config.metaspace.empty()) {  // an empty pattern matches nothing
    out.assign(token);
    return out;
  }
  const std::string_view rep = config.metaspace;
  size_t pos = 0;
  while (pos < token.size()) {
    if (token.substr(pos, rep.size()) == rep) {
      if (!(first && config.metaspace_drop_first)) out.push_back(' ');
      pos += rep.size();
    } else {
      out.push_back(token[pos++]);
    }
  }
  return out;
}

void Utf8Stream::Push(std::string_view bytes, std::string* out) {
  while (strip_ > 0 && !bytes.empty()) {
    if (bytes[0] != ' ') {
      strip_ = 0;
      break;
    }
    bytes.remove_prefix(1);
    --strip_;
  }
  if (bytes.empty()) return;
  pending_.append(bytes);
  // Emit all but an incomplete final character.
  size_t keep = pending_.size();
  for (size_t back = 1; back <= 3 && back <= pending_.size(); ++back) {
    const size_t i = pending_.size() - back;
    const auto b = static_cast<unsigned char>(pending_[i]);
    if ((b & 0xC0) != 0x80) {  // the last lead byte
      if (IsIncompleteTail(pending_, i)) keep = i;
      break;
    }
  }
  AppendUtf8Lossy(std::string_view(pending_).substr(0, keep), out);
  pending_.erase(0, keep);
}

void Utf8Stream::Flush(std::string* out) {
  AppendUtf8Lossy(pending_, out);
  pending_.clear();
}

}  // namespace kvr
