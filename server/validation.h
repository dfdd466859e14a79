// Request validation: turns a kvr.v1 request into the engine's plain structs, or says exactly
// what is wrong and what is allowed (INVALID_ARGUMENT). Never trusts a client's value.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/serving/sampling_params.h"
#include "kvr/v1/kvr.pb.h"

namespace kvr {

inline constexpr size_t kMaxPromptTextBytes = 4 << 20;  // default of --max_prompt_bytes

// What the served model allows.
struct ModelLimits {
  std::string name;       // the served model's name
  int vocab_size = 0;
  int max_model_len = 0;  // prompt + max_tokens
  size_t max_prompt_bytes = kMaxPromptTextBytes;  // a text prompt, checked before tokenizing
};

inline constexpr int kDefaultMaxTokens = 16;
inline constexpr size_t kMaxRequestIdBytes = 256;

// Unknown fields anywhere in the message (a client built from another proto): InvalidArgument
// listing their field numbers.
absl::Status CheckNoUnknownFields(const google::protobuf::Message& message);

// The sampling fields with their defaults, checked against the model.
absl::StatusOr<SamplingParams> ToSamplingParams(const v1::SamplingParams& p,
                                                const ModelLimits& limits);

// Checks the parts of a GenerateRequest that need no tokenizer: model name, request id,
// unknown fields, that a prompt is given. (Length limits are checked once the prompt is tokens,
// by CheckPromptLength.)
// InvalidArgument when a prompt text is longer than --max_prompt_bytes (checked before
// tokenizing, by Generate and Tokenize alike).
absl::Status CheckPromptTextSize(size_t bytes, const ModelLimits& limits);

absl::Status CheckGenerateRequest(const v1::GenerateRequest& request, const ModelLimits& limits);

// Prompt and output must fit: non-empty prompt, ids in range, prompt + max_tokens <= the limit.
absl::Status CheckPromptLength(const std::vector<int32_t>& prompt, int max_tokens,
                               const ModelLimits& limits);

}  // namespace kvr
