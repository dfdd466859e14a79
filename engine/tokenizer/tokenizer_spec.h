// Everything a Tokenizer is built from, whatever file it came from (tokenizer.json or GGUF).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/tokenizer/added_tokens.h"
#include "engine/tokenizer/bpe_model.h"
#include "engine/tokenizer/decoder.h"
#include "engine/tokenizer/normalizer.h"
#include "engine/tokenizer/pre_tokenizer.h"

namespace kvr {

struct TokenizerSpec {
  // Model: vocab[id] is the token text; merges or scores order the merges.
  std::vector<std::string> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<float> scores;  // used when merges is empty (sentencepiece-style GGUF)
  BpeOptions bpe;

  std::vector<AddedToken> added_tokens;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  DecoderConfig decoder;

  // Encode(add_special_tokens=true) puts prefix_ids before and suffix_ids after the text.
  std::vector<int32_t> prefix_ids;
  std::vector<int32_t> suffix_ids;
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;  // the first is eos_id()
};

}  // namespace kvr
