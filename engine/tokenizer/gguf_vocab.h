// Builds a TokenizerSpec from a GGUF file's tokenizer.ggml.* metadata: "llama" (sentencepiece
// BPE with scores and byte fallback) and "gpt2" (byte-level BPE with merges) models, with the
// pre-tokenizers "llama-bpe", "gpt-2"/"default" and "falcon" (tokenizer.ggml.pre).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer_spec.h"

namespace kvr {

absl::StatusOr<TokenizerSpec> LoadTokenizerSpecFromGguf(const std::string& path);

}  // namespace kvr
