// CoordinatorExecutor: the scheduler's Executor over the real engine. Prefill plans the split
// with the configured planner and runs the KV-Runahead chain through the PrefillCoordinator;
// decode runs each group on its worker's thread (groups of different workers concurrently).
// Backend-agnostic: CPU and CUDA runners look the same from here.
#pragma once

#include "engine/prefill/coordinator.h"
#include "engine/prefill/planner.h"
#include "engine/serving/executor.h"

namespace kvr {

class CoordinatorExecutor : public Executor {
 public:
  // Neither is owned; both must outlive the executor.
  CoordinatorExecutor(PrefillCoordinator* coordinator, const Planner* planner);

  int num_workers() const override;
  int vocab_size() const override;
  size_t kv_capacity_bytes() const override { return kv_capacity_bytes_; }
  absl::StatusOr<PrefillOutcome> Prefill(absl::Span<const int32_t> prompt, int cache_capacity,
                                         int last_worker) override;
  void Decode(absl::Span<DecodeGroup> groups) override;

 private:
  void DecodeOne(DecodeGroup& group);

  PrefillCoordinator* coordinator_;
  const Planner* planner_;
  size_t kv_capacity_bytes_ = 0;
};

}  // namespace kvr
