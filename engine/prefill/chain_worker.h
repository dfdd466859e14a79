// What one chain position does in a KV-Runahead prefill: the protocol of kv-runahead.md, in
// the order a reader expects, with the transport's calls between the runner's ops.
#pragma once

#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/prefill/chain_progress.h"
#include "engine/prefill/coordinator.h"
#include "engine/prefill/transport.h"
#include "engine/runtime/model_runner.h"

namespace kvr {

struct ChainPositionTask {
  absl::Span<const int32_t> tokens;  // the whole prompt (C)
  int begin = 0, end = 0;            // this position's chunk [begin, end)
  bool last = false;                 // ends the chain: computes the first token's logits
  // Progress for the watchdog (may be empty): called as each layer's compute starts, before and
  // after blocking on incoming K/V, and before the final wait for the sends.
  std::function<void(ChainPhase phase, int layer)> report;
};

// Runs the chunk through every layer on `runner`, exchanging K/V through `endpoint`.
// Fills `logits` (V) when task.last. Times go to `timing`.
absl::Status RunChainPosition(ModelRunner& runner, ChainEndpoint& endpoint, KvCache& cache,
                              const ChainPositionTask& task, std::vector<float>* logits,
                              WorkerTiming* timing);

}  // namespace kvr
