// Plain structs that cross between the server and the scheduler, and the callback interface
// through which the scheduler streams a request's output. No gRPC here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/serving/sampler.h"
#include "engine/serving/sampling_params.h"
#include "engine/util/clock.h"

namespace kvr {

// Incremental detokenizer of one sequence (the server adapts the tokenizer's
// IncrementalDecoder; tests use a fake). Push returns the text that became final.
class TextDecoder {
 public:
  virtual ~TextDecoder() = default;
  virtual std::string Push(int32_t token) = 0;
  virtual std::string Flush() = 0;
};

// Why a generation ended; the names are the `finished_reason` label values of the metrics.
enum class FinishReason {
  kStop,    // an end-of-sequence token, a stop token or a stop string
  kLength,  // max_tokens, or the request's KV-cache (context) is full
  kAbort,   // Abort, client cancellation, or shutdown
  kError,   // the backend failed (the sink got OnError)
};
const char* FinishReasonName(FinishReason r);  // "stop", "length", "abort", "error"

// Some output of one step: the tokens sampled and the text that became final with them. A text
// that may still turn out to be the start of a stop string is held back until it cannot.
struct GenerationChunk {
  std::vector<int32_t> token_ids;
  std::string text;
  std::vector<TokenLogprobs> logprobs;  // one per token when asked for
};

// What one prefill worker (chain position) did for this request.
struct WorkerPrefillTiming {
  int worker = 0;            // worker (device) index
  int begin = 0, end = 0;    // its chunk of the prompt, [begin, end)
  double busy_seconds = 0;   // computing
  double wait_seconds = 0;   // blocked on incoming K/V
  uint64_t kv_bytes_sent = 0;
  uint64_t kv_bytes_received = 0;
};

struct GenerationResult {
  FinishReason reason = FinishReason::kStop;
  std::string stop_reason;       // the stop string matched, or the stop token id as text
  int prompt_tokens = 0;
  int completion_tokens = 0;
  double queue_seconds = 0;      // arrival -> prefill start
  double prefill_seconds = 0;    // the prefill itself (all workers, wall time)
  double ttft_seconds = 0;       // arrival -> first token sampled (0 if none)
  double decode_seconds = 0;     // first token -> end
  double e2e_seconds = 0;        // arrival -> end
  std::string plan;              // the split used, e.g. "even chain C=100 [0,50)@0 [50,100)@1"
  int decode_worker = -1;        // worker that held the cache and decoded
  std::vector<WorkerPrefillTiming> workers;
};

// Receives one request's output, called on the scheduler's thread. Implementations must not
// block (the server queues and lets its write reactor drain). After OnFinish or OnError
// nothing more is called.
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  virtual void OnChunk(GenerationChunk chunk) = 0;
  virtual void OnFinish(GenerationResult result) = 0;
  virtual void OnError(absl::Status status) = 0;
};

struct GenerationRequest {
  std::string id;                  // unique among live requests (Abort uses it)
  std::vector<int32_t> prompt;     // token ids, non-empty
  SamplingParams sampling;
  bool has_seed = false;           // false: the scheduler picks a random seed
  std::vector<int32_t> eos_ids;    // the model's end-of-sequence tokens
  std::unique_ptr<TextDecoder> decoder;  // null: no text in the chunks
  std::shared_ptr<RequestSink> sink;
  // When the request arrived (queue time and TTFT count from here); default: at Submit.
  SteadyClock::time_point arrival{};
};

}  // namespace kvr
