// Executor: what the scheduler needs from the engine to run a step (vLLM's executor). The real
// one (coordinator_executor.h) drives the KV-Runahead chain for prefill and each worker's runner
// for decode; tests give the scheduler a fake.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/runtime/kv_cache.h"
#include "engine/runtime/model_runner.h"
#include "engine/serving/request.h"

namespace kvr {

struct PrefillOutcome {
  std::vector<float> logits;        // (V): the prompt's last token
  std::unique_ptr<KvCache> cache;   // holds [0, C), room for the capacity asked
  int owner = 0;                    // worker whose device holds `cache`; it decodes
  std::string plan;                 // text form of the split
  std::vector<WorkerPrefillTiming> workers;
  double seconds = 0;
};

// One decode batch on one worker: every slot's cache lives on that worker's device.
struct DecodeGroup {
  int worker = 0;
  std::vector<DecodeSlot> slots;
  absl::Span<const float> logits;   // out: (slots, V), the worker runner's (ModelRunner::Decode)
  absl::Status status;              // out
};

class Executor {
 public:
  virtual ~Executor() = default;
  virtual int num_workers() const = 0;
  virtual int vocab_size() const = 0;
  // Bytes that KV-caches may use over all workers (for the usage metric); 0 if unknown.
  virtual size_t kv_capacity_bytes() const = 0;

  // Prefill of a whole prompt across the workers; the chain ends on `last_worker`, whose cache
  // gets room for `cache_capacity` tokens. ResourceExhausted when the cache does not fit.
  virtual absl::StatusOr<PrefillOutcome> Prefill(absl::Span<const int32_t> prompt,
                                                 int cache_capacity, int last_worker) = 0;

  // One decode step for each group (distinct workers; they may run concurrently). Fills each
  // group's logits and status.
  virtual void Decode(absl::Span<DecodeGroup> groups) = 0;
};

}  // namespace kvr
