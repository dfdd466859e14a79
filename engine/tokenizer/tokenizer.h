// kvr's tokenizer: text <-> token ids exactly as the model's Hugging Face tokenizer.json (or a
// GGUF vocabulary) defines them, for BPE models: byte-level (GPT-2, Llama 3, Falcon) and
// sentencepiece-style with byte fallback (Llama 2, Mistral). Thread-safe: all methods are const
// except IncrementalDecoder's.
//
//   KVR_ASSIGN_OR_RETURN(auto tok, Tokenizer::FromModelFolder("/models/llama3"));
//   KVR_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode(prompt, /*add_special_tokens=*/true));
//   IncrementalDecoder stream(*tok, ids);
//   for (int32_t id : generated) Send(stream.Push(id));
//   Send(stream.Flush());
//
// Invalid UTF-8 input is rejected by Encode with InvalidArgument (naming the byte offset).
// Decode replaces invalid byte sequences produced by byte tokens with U+FFFD, as HF does.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer/added_tokens.h"
#include "engine/tokenizer/bpe_model.h"
#include "engine/tokenizer/decoder.h"
#include "engine/tokenizer/normalizer.h"
#include "engine/tokenizer/pre_tokenizer.h"
#include "engine/tokenizer/tokenizer_spec.h"

namespace kvr {

class Tokenizer {
 public:
  // Reads dir/tokenizer.json, plus dir/tokenizer_config.json and dir/generation_config.json
  // when present (BOS/EOS tokens, add_bos_token / add_eos_token, extra EOS ids).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromModelFolder(const std::string& dir);
  // Reads the tokenizer.ggml.* metadata of a GGUF file (vocabulary only; weights are skipped).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromSpec(TokenizerSpec spec);

  // add_special_tokens: add BOS/EOS as the tokenizer's post-processor (or tokenizer_config's
  // add_bos_token / add_eos_token) says, as HF's encode(add_special_tokens=True) does. Added and
  // special tokens written in the text are always recognized.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens) const;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_ids_.empty() ? -1 : eos_ids_[0]; }
  std::vector<int32_t> eos_ids() const { return eos_ids_; }
  int vocab_size() const { return static_cast<int>(token_text_.size()); }
  // The token's text as the vocabulary spells it ("Ġhello", "▁hello", "<0x0A>"); "" if unknown.
  std::string IdToPiece(int32_t id) const;
  bool IsSpecial(int32_t id) const;

  // For IncrementalDecoder: the bytes token id adds to the output.
  const std::string& RenderedBytes(int32_t id) const { return rendered_[id]; }
  std::string RenderFirst(int32_t id) const;
  const DecoderConfig& decoder_config() const { return decoder_; }

 private:
  Tokenizer(BpeModel model, TokenizerSpec spec);
  // Encodes a text segment (no added tokens inside) and appends its ids.
  void EncodeSegment(std::string_view segment, bool at_text_start, std::vector<int32_t>* out) const;

  BpeModel model_;
  Normalizer normalizer_;
  PreTokenizer pre_tokenizer_;
  AddedTokenMatcher added_;
  DecoderConfig decoder_;
  std::vector<std::string> token_text_;  // id -> token text (model vocab and added tokens)
  std::vector<std::string> rendered_;    // id -> output bytes when not the first token
  std::vector<uint8_t> special_;         // id -> 1 if a special added token
  std::vector<int32_t> prefix_ids_;
  std::vector<int32_t> suffix_ids_;
  int32_t bos_id_ = -1;
  std::vector<int32_t> eos_ids_;
};

// Turns generated ids into text deltas for streaming. The concatenated deltas equal
// Decode(prompt + generated) minus Decode(prompt): spacing rules see the prompt as context,
// and a delta never ends inside a UTF-8 character (bytes wait for the rest of it).
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, absl::Span<const int32_t> prompt_ids = {},
                              bool skip_special_tokens = true);

  // Text that id completes; may be empty.
  std::string Push(int32_t id);
  // Whatever is left at the end of the stream (an incomplete character becomes U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  bool first_ = true;
  Utf8Stream stream_;
};

}  // namespace kvr
