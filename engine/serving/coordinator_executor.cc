#include "engine/serving/coordinator_executor.h"

#include <thread>
#include <utility>

#include "engine/util/status_macros.h"

namespace kvr {

CoordinatorExecutor::CoordinatorExecutor(PrefillCoordinator* coordinator, const Planner* planner)
    : coordinator_(coordinator), planner_(planner) {
  for (int w = 0; w < coordinator_->num_workers(); ++w)
    kv_capacity_bytes_ += coordinator_->runner(w).memory().free_bytes;
}

int CoordinatorExecutor::num_workers() const { return coordinator_->num_workers(); }

int CoordinatorExecutor::vocab_size() const { return coordinator_->runner(0).config().vocab_size; }

absl::StatusOr<PrefillOutcome> CoordinatorExecutor::Prefill(absl::Span<const int32_t> prompt,
                                                            int cache_capacity,
                                                            int last_worker) {
  KVR_ASSIGN_OR_RETURN(PrefillPlan plan,
                       planner_->Plan(static_cast<int>(prompt.size()), num_workers(), last_worker));
  KVR_ASSIGN_OR_RETURN(PrefillResult r, coordinator_->Run(prompt, plan, cache_capacity));
  PrefillOutcome out;
  out.logits = std::move(r.logits);
  out.cache = std::move(r.cache);
  out.owner = r.owner;
  out.plan = r.plan.ToString();
  out.seconds = r.seconds;
  for (const WorkerTiming& t : r.workers) {
    WorkerPrefillTiming w;
    w.worker = t.worker;
    w.begin = t.begin;
    w.end = t.end;
    w.busy_seconds = t.busy_seconds;
    w.wait_seconds = t.wait_seconds;
    w.kv_bytes_sent = t.kv_bytes_sent;
    w.kv_bytes_received = t.kv_bytes_received;
    out.workers.push_back(w);
  }
  return out;
}

void CoordinatorExecutor::DecodeOne(DecodeGroup& group) {
  ModelRunner& runner = coordinator_->runner(group.worker);
  group.status = coordinator_->RunOn(group.worker, [&]() -> absl::Status {
    return runner.Decode(group.slots, &group.logits);
  });
}

void CoordinatorExecutor::Decode(absl::Span<DecodeGroup> groups) {
  if (groups.empty()) return;
  // Each worker's DeviceWorker thread runs its group; RunOn blocks, so wait on all of them from
  // helper threads (one per extra group) to let the devices work at the same time.
  std::vector<std::thread> helpers;
  for (size_t g = 1; g < groups.size(); ++g) helpers.emplace_back([&, g] { DecodeOne(groups[g]); });
  DecodeOne(groups[0]);
  for (std::thread& t : helpers) t.join();
}

}  // namespace kvr
