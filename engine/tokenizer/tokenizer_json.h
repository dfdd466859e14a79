// Builds a TokenizerSpec from a Hugging Face model folder: tokenizer.json, and when present
// tokenizer_config.json (bos/eos tokens, add_bos_token/add_eos_token) and generation_config.json
// (eos_token_id, possibly a list). Unsupported components are an Unimplemented error, never a
// silent approximation.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer_spec.h"

namespace kvr {

absl::StatusOr<TokenizerSpec> LoadTokenizerSpecFromFolder(const std::string& dir);

// Same from file contents; config_json and generation_json may be empty.
absl::StatusOr<TokenizerSpec> ParseTokenizerSpec(const std::string& tokenizer_json,
                                                 const std::string& config_json,
                                                 const std::string& generation_json);

}  // namespace kvr
