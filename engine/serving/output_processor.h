// OutputProcessor: turns one sequence's sampled tokens into what its client sees, and decides
// when the generation stops (vLLM's detokenizer + stop checker).
//
// Rules, in order, for each sampled token:
//   - an end-of-sequence id (unless ignore_eos) or a stop_token_id: stop. The token counts as
//     generated and is in the chunk's ids; its text is not added.
//   - else its text is appended; when the text now contains a stop string, the text ends just
//     before the earliest match and the generation stops (stop_reason = that string). Text that
//     could still be the beginning of a stop string is held back until it cannot.
//   - max_tokens reached: length.
// At the end for any reason, held-back text is released.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/serving/request.h"
#include "engine/serving/sampling_params.h"

namespace kvr {

class OutputProcessor {
 public:
  OutputProcessor(const SamplingParams& params, std::vector<int32_t> eos_ids,
                  std::unique_ptr<TextDecoder> decoder);

  // Adds a sampled token; appends the ids and the text that became final to `chunk`. True when
  // the generation ended (see reason()).
  bool Add(int32_t token, GenerationChunk* chunk);
  // The generation ends for another reason (length by context, abort): releases held text.
  void Finish(FinishReason reason, GenerationChunk* chunk);

  bool finished() const { return finished_; }
  FinishReason reason() const { return reason_; }
  const std::string& stop_reason() const { return stop_reason_; }
  int completion_tokens() const { return completion_tokens_; }
  const std::string& text() const { return text_; }  // all text so far (emitted and held)

 private:
  void AppendText(const std::string& delta);
  // Looks for a stop string in text_ that ends past `from`; truncates and returns true if found.
  bool MatchStop(size_t from);
  void Emit(size_t upto, GenerationChunk* chunk);
  size_t HoldBack() const;  // bytes at the end of text_ that may start a stop string

  SamplingParams params_;
  std::vector<int32_t> eos_ids_;
  std::unique_ptr<TextDecoder> decoder_;
  size_t max_stop_len_ = 0;
  std::string text_;
  size_t emitted_ = 0;
  int completion_tokens_ = 0;
  bool finished_ = false;
  FinishReason reason_ = FinishReason::kStop;
  std::string stop_reason_;
};

}  // namespace kvr
