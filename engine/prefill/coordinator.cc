#include "engine/prefill/coordinator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "engine/prefill/chain_worker.h"
#include "engine/util/clock.h"
#include "engine/util/status_macros.h"

namespace kvr {
namespace {

// After the watchdog aborts the fabric, how long the positions get to return before a stuck one
// is left behind (at most the timeout itself): waking on an abort takes milliseconds.
constexpr absl::Duration kAbortGrace = absl::Seconds(5);

}  // namespace

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

// Everything the jobs of one prefill touch. Shared with them, so that a job that the watchdog
// gave up on can still finish safely after Run returned.
struct PrefillCoordinator::RunState {
  std::vector<int32_t> tokens;
  PrefillPlan plan;
  int cache_capacity = 0;
  std::vector<std::unique_ptr<KvCache>> caches;  // per chain position
  PrefillResult result;
};

absl::Status PrefillCoordinator::CheckNoStuckJobs() {
  if (stuck_jobs_ == nullptr) return absl::OkStatus();
  if (!stuck_jobs_->AllFinished()) {
    return absl::UnavailableError(absl::StrCat(
        stuck_description_, " is still stuck in an earlier prefill: no new prefill until it returns"));
  }
  stuck_jobs_.reset();
  return absl::OkStatus();
}

absl::Status PrefillCoordinator::RunOnPositions(int count, const PositionFn& fn,
                                                const std::vector<int>& order) {
  auto progress = std::make_shared<ChainProgress>(count);
  for (int k = 0; k < count; ++k) {
    threads_[order[k]]->Post([this, progress, fn, k] {
      progress->Report(k, ChainPhase::kComputing, -1);
      absl::Status s = fn(k, *progress);
      if (!s.ok()) fabric_->Abort(s);  // wake the others; nobody hangs
      progress->Finish(k, std::move(s));
    });
  }
  if (std::optional<ChainStall> stall = progress->Wait(prefill_timeout_)) {
    const std::string who =
        absl::StrCat("prefill worker ", order[stall->position], " (chain position ", stall->position, ")");
    absl::Status status = absl::DeadlineExceededError(absl::StrCat(
        who, " made no progress for ", absl::FormatDuration(stall->stalled), " ",
        DescribePosition(stall->state), "; prefill timeout ", absl::FormatDuration(prefill_timeout_),
        ": the prefill was aborted"));
    fabric_->Abort(status);
    // The others wake on the abort; a worker stuck for good is left behind (see the header).
    if (!progress->WaitFinished(std::min(prefill_timeout_, kAbortGrace))) {
      stuck_jobs_ = progress;
      stuck_description_ = who;
    }
    return status;
  }
  for (int k = 0; k < count; ++k) {
    const absl::Status s = progress->state(k).status;
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("prefill worker ", order[k], " (chain position ", k,
                                                 "): ", s.message()));
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
  KVR_RETURN_IF_ERROR(CheckNoStuckJobs());
  const int p = plan.num_chunks();
  auto st = std::make_shared<RunState>();
  st->tokens.assign(tokens.begin(), tokens.end());
  st->plan = plan;
  st->cache_capacity = cache_capacity;
  st->caches.resize(p);

  // 1. Each position allocates, on its own device, a cache for [0, end); the last one for the
  //    whole request.
  KVR_RETURN_IF_ERROR(RunOnPositions(
      p,
      [this, st, p](int k, ChainProgress&) -> absl::Status {
        // All-gather (TSP) fills every position's cache with the whole prompt.
        const PrefillPlan& plan = st->plan;
        const int needed = plan.topology == Topology::kAllGather ? plan.context_len : plan.chunk_end(k);
        const int capacity = k == p - 1 ? st->cache_capacity : needed;
        KVR_ASSIGN_OR_RETURN(st->caches[k], runners_[plan.order[k]]->NewKvCache(capacity));
        return absl::OkStatus();
      },
      plan.order));

  const double alloc_seconds = SecondsSince(t0);

  // 2. The fabric learns who sends what to whom.
  const auto prepare_start = SteadyClock::now();
  std::vector<KvCache*> cache_ptrs;
  std::vector<ModelRunner*> position_runners;
  for (int k = 0; k < p; ++k) {
    cache_ptrs.push_back(st->caches[k].get());
    position_runners.push_back(runners_[plan.order[k]]);
  }
  KVR_RETURN_IF_ERROR(fabric_->Prepare(plan, cache_ptrs, position_runners));
  const double prepare_seconds = SecondsSince(prepare_start);

  // 3. Every position runs its chunk through all layers at once: KV-Runahead.
  st->result.plan = plan;
  st->result.workers.resize(p);
  const auto chain_start = SteadyClock::now();
  KVR_RETURN_IF_ERROR(RunOnPositions(
      p,
      [this, st, p](int k, ChainProgress& progress) -> absl::Status {
        const PrefillPlan& plan = st->plan;
        KVR_ASSIGN_OR_RETURN(auto endpoint, fabric_->Connect(k));
        ChainPositionTask task{st->tokens, plan.chunk_begin(k), plan.chunk_end(k), k == p - 1,
                               [&progress, k](ChainPhase phase, int layer) {
                                 progress.Report(k, phase, layer);
                               }};
        st->result.workers[k].worker = plan.order[k];
        return RunChainPosition(*runners_[plan.order[k]], *endpoint, *st->caches[k], task,
                                &st->result.logits, &st->result.workers[k]);
      },
      plan.order));
  const double chain_seconds = SecondsSince(chain_start);

  // 4. The other positions' caches are freed on their own devices; the last one's is kept.
  const auto release_start = SteadyClock::now();
  KVR_RETURN_IF_ERROR(RunOnPositions(
      p - 1, [st](int k, ChainProgress&) { st->caches[k].reset(); return absl::OkStatus(); },
      plan.order));
  PrefillResult result = std::move(st->result);  // every job has finished: no one else touches it
  result.chain_seconds = chain_seconds;
  result.alloc_seconds = alloc_seconds;
  result.prepare_seconds = prepare_seconds;
  result.release_seconds = SecondsSince(release_start);
  result.owner = plan.last_worker();
  result.cache = std::move(st->caches[p - 1]);
  result.seconds = SecondsSince(t0);
  return result;
}

}  // namespace kvr
