#include "engine/prefill/coordinator.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "engine/prefill/chain_worker.h"
#include "engine/util/clock.h"
#include "engine/util/status_macros.h"

namespace kvr {

PrefillCoordinator::PrefillCoordinator(std::vector<ModelRunner*> runners,
                                       std::unique_ptr<ChainFabric> fabric,
                                       std::function<void(int)> on_thread_start)
    : runners_(std::move(runners)), fabric_(std::move(fabric)) {
  for (size_t i = 0; i < runners_.size(); ++i) {
    const int worker = static_cast<int>(i);
    threads_.push_back(std::make_unique<DeviceWorker>(
        on_thread_start ? std::function<void()>([on_thread_start, worker] { on_thread_start(worker); })
                        : std::function<void()>()));
  }
}

PrefillCoordinator::~PrefillCoordinator() = default;

absl::Status PrefillCoordinator::RunOn(int worker, std::function<absl::Status()> fn) {
  if (worker < 0 || worker >= num_workers()) {
    return absl::InvalidArgumentError(absl::StrCat("no worker ", worker));
  }
  absl::Status result;
  absl::BlockingCounter done(1);
  threads_[worker]->Post([&] {
    result = fn();
    done.DecrementCount();
  });
  done.Wait();
  return result;
}

absl::Status PrefillCoordinator::RunOnPositions(int count, const std::function<absl::Status(int)>& fn,
                                                const std::vector<int>& order) {
  std::vector<absl::Status> results(count);
  absl::BlockingCounter done(count);
  for (int k = 0; k < count; ++k) {
    threads_[order[k]]->Post([&, k] {
      results[k] = fn(k);
      if (!results[k].ok()) fabric_->Abort(results[k]);  // wake the others; nobody hangs
      done.DecrementCount();
    });
  }
  done.Wait();
  for (int k = 0; k < count; ++k) {
    if (!results[k].ok()) {
      return absl::Status(results[k].code(),
                          absl::StrCat("prefill worker ", order[k], " (chain position ", k, "): ",
                                       results[k].message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PrefillResult> PrefillCoordinator::Run(absl::Span<const int32_t> tokens,
                                                      const PrefillPlan& plan, int cache_capacity) {
  const auto t0 = SteadyClock::now();
  KVR_RETURN_IF_ERROR(ValidatePlan(plan, num_workers()));
  if (plan.context_len != static_cast<int>(tokens.size())) {
    return absl::InvalidArgumentError(absl::StrCat("plan is for ", plan.context_len, " tokens, prompt has ",
                                                   tokens.size()));
  }
  if (cache_capacity < plan.context_len) {
    return absl::InvalidArgumentError(absl::StrCat("cache capacity ", cache_capacity,
                                                   " is smaller than the prompt (", plan.context_len, ")"));
  }
  const int p = plan.num_chunks();

  // 1. Each position allocates, on its own device, a cache for [0, end); the last one for the
  //    whole request.
  std::vector<std::unique_ptr<KvCache>> caches(p);
  KVR_RETURN_IF_ERROR(RunOnPositions(
      p,
      [&](int k) -> absl::Status {
        // All-gather (TSP) fills every position's cache with the whole prompt.
        const int needed = plan.topology == Topology::kAllGather ? plan.context_len : plan.chunk_end(k);
        const int capacity = k == p - 1 ? cache_capacity : needed;
        KVR_ASSIGN_OR_RETURN(caches[k], runners_[plan.order[k]]->NewKvCache(capacity));
        return absl::OkStatus();
      },
      plan.order));

  // 2. The fabric learns who sends what to whom.
  std::vector<KvCache*> cache_ptrs;
  std::vector<ModelRunner*> position_runners;
  for (int k = 0; k < p; ++k) {
    cache_ptrs.push_back(caches[k].get());
    position_runners.push_back(runners_[plan.order[k]]);
  }
  KVR_RETURN_IF_ERROR(fabric_->Prepare(plan, cache_ptrs, position_runners));

  // 3. Every position runs its chunk through all layers at once: KV-Runahead.
  PrefillResult result;
  result.plan = plan;
  result.workers.resize(p);
  const auto chain_start = SteadyClock::now();
  KVR_RETURN_IF_ERROR(RunOnPositions(
      p,
      [&](int k) -> absl::Status {
        KVR_ASSIGN_OR_RETURN(auto endpoint, fabric_->Connect(k));
        ChainPositionTask task{tokens, plan.chunk_begin(k), plan.chunk_end(k), k == p - 1};
        result.workers[k].worker = plan.order[k];
        return RunChainPosition(*runners_[plan.order[k]], *endpoint, *caches[k], task, &result.logits,
                                &result.workers[k]);
      },
      plan.order));
  result.chain_seconds = SecondsSince(chain_start);

  // 4. The other positions' caches are freed on their own devices; the last one's is kept.
  KVR_RETURN_IF_ERROR(RunOnPositions(
      p - 1, [&](int k) { caches[k].reset(); return absl::OkStatus(); }, plan.order));
  result.owner = plan.last_worker();
  result.cache = std::move(caches[p - 1]);
  result.seconds = SecondsSince(t0);
  return result;
}

}  // namespace kvr
