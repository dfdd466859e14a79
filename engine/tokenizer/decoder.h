// Decoding: token text -> output bytes, per the tokenizer.json "decoder" section, and the
// stream state that turns a sequence of tokens into valid UTF-8 text deltas.
//
// Supported decoders: ByteLevel; Metaspace; and a Sequence of Replace("▁" -> " "), ByteFallback,
// Fuse and Strip(" ", n, 0) (the sentencepiece-style Llama 2 / Mistral decoder).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kvr {

struct DecoderConfig {
  bool byte_level = false;           // map GPT-2 alphabet characters back to bytes
  bool replace_metaspace = false;    // "▁" -> " "
  bool byte_fallback = false;        // "<0xXX>" -> the byte
  bool metaspace_drop_first = false; // Metaspace decoder: no space from the first token's "▁"
  int strip_leading_spaces = 0;      // Strip decoder: spaces removed from the start of the text
  std::string metaspace = "\xE2\x96\x81";
};

// Bytes that token text contributes to the output. first: it is the first emitted token.
std::string RenderToken(const DecoderConfig& config, std::string_view token, bool first);

// Incremental UTF-8 assembly with the decoder's start-of-text rules. Push bytes one token at a
// time; the returned text never ends inside a character. Invalid bytes become U+FFFD.
class Utf8Stream {
 public:
  explicit Utf8Stream(int strip_leading_spaces) : strip_(strip_leading_spaces) {}

  // Appends to *out the text that bytes complete.
  void Push(std::string_view bytes, std::string* out);
  // Appends to *out what is left (an incomplete character becomes U+FFFD).
  void Flush(std::string* out);
  // Forgets any incomplete character held back.
  void Reset() { pending_.clear(); }

 private:
  int strip_;
  std::string pending_;
};

}  // namespace kvr
