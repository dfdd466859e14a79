// SamplingParams: how the next token is picked and when a generation stops. Plain data shared by
// the daemon (engine/serving, server/) and the offline CLI (tools/kvr-generate), so that both
// sample identically for the same prompt, seed and parameters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace kvr {

struct SamplingParams {
  int max_tokens = 16;               // tokens to generate, >= 1
  float temperature = 1.0f;          // >= 0; 0 = greedy (argmax)
  int top_k = 0;                     // 0 = all tokens, else keep the k most likely
  float top_p = 1.0f;                // (0, 1]: keep the smallest set with this much mass
  float min_p = 0.0f;                // [0, 1]: drop tokens below min_p * p(most likely)
  float repetition_penalty = 1.0f;   // > 0; 1 = off. On tokens of the prompt and the output
  float presence_penalty = 0.0f;     // [-2, 2]; on tokens of the output
  float frequency_penalty = 0.0f;    // [-2, 2]; on tokens of the output, times their count
  uint64_t seed = 0;                 // the stream of random numbers; same seed, same output
  bool ignore_eos = false;           // keep going past the model's end-of-sequence tokens
  int logprobs = -1;                 // -1 = none; 0 = the chosen token's; n = also the top n
  std::vector<std::string> stop;     // stop strings: the text ends before the first match
  std::vector<int32_t> stop_token_ids;  // tokens that end the generation (even with ignore_eos)
};

// Allowed ranges, also quoted in error messages.
inline constexpr int kMaxLogprobs = 20;
inline constexpr int kMaxStopStrings = 16;
inline constexpr int kMaxStopStringBytes = 256;

// InvalidArgument naming the field, the value and what is allowed. `vocab_size` bounds top_k
// and stop_token_ids.
absl::Status ValidateSamplingParams(const SamplingParams& p, int vocab_size);

}  // namespace kvr
