// PrefillCoordinator: runs one request's prefill across its workers with KV-Runahead.
//
// It owns one DeviceWorker thread per runner (a device), hands each chain position its chunk,
// its cache and its transport endpoint, and collects the last token's logits together with the
// cache of the worker that ends the chain. It knows the chain protocol and nothing about CUDA:
// the runners and the fabric it is given decide where the work runs.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/prefill/chain_progress.h"
#include "engine/prefill/prefill_plan.h"
#include "engine/prefill/transport.h"
#include "engine/runtime/device_worker.h"
#include "engine/runtime/model_runner.h"

namespace kvr {

// What one chain position did during a prefill.
struct WorkerTiming {
  int worker = 0;          // device index
  int begin = 0, end = 0;  // its chunk [begin, end)
  double busy_seconds = 0;   // wall time of its prefill minus wait_seconds
  double wait_seconds = 0;   // time blocked on incoming K/V (host-side view)
  size_t kv_bytes_sent = 0;
  size_t kv_bytes_received = 0;
};

struct PrefillResult {
  PrefillPlan plan;
  std::vector<float> logits;         // (V): logits of the prompt's last token
  int owner = 0;                     // worker that holds the whole cache [0, C)
  std::unique_ptr<KvCache> cache;    // on `owner`'s device, capacity >= requested
  std::vector<WorkerTiming> workers; // one per chain position
  double seconds = 0;                // wall time of the whole prefill, cache allocation included
  double chain_seconds = 0;          // from the chain's start to the first token's logits
  double alloc_seconds = 0;          // before the chain: every position's cache allocated
  double prepare_seconds = 0;        // before the chain: the fabric told who sends what
  double release_seconds = 0;        // after the chain: the other positions' caches freed
};

class PrefillCoordinator {
 public:
  // `runners[i]` runs on worker i; all must share one ModelConfig. The fabric moves K/V
  // between them (in-process for CPU runners, NCCL for CUDA runners).
  // `on_thread_start(i)` runs first on worker i's thread (the CUDA backend selects its device).
  PrefillCoordinator(std::vector<ModelRunner*> runners, std::unique_ptr<ChainFabric> fabric,
                     std::function<void(int)> on_thread_start = nullptr);
  ~PrefillCoordinator();

  int num_workers() const { return static_cast<int>(runners_.size()); }
  ModelRunner& runner(int worker) { return *runners_[worker]; }

  // The prefill watchdog: a chain position that makes no progress (no layer started, no K/V
  // received, no job finished) for `timeout` fails the prefill with DEADLINE_EXCEEDED naming the
  // worker, its chain position and layer; the fabric is aborted so that the other positions wake.
  // A worker still stuck min(timeout, 5 s) after the abort is left to finish on its own thread
  // (the prefill's state stays alive until it does) and Run returns; until that worker has
  // finished, Run refuses new prefills with UNAVAILABLE naming it (its fabric endpoint and device
  // are still in use). Zero or negative: off (the default). Set before the first Run.
  void set_prefill_timeout(absl::Duration timeout) { prefill_timeout_ = timeout; }
  absl::Duration prefill_timeout() const { return prefill_timeout_; }

  // Prefills `tokens` (C = tokens.size()) by `plan`; the owner's cache gets room for
  // `cache_capacity` >= C tokens so that decode can continue in it. Not reentrant: one prefill
  // at a time (the scheduler's loop).
  absl::StatusOr<PrefillResult> Run(absl::Span<const int32_t> tokens, const PrefillPlan& plan,
                                    int cache_capacity);

  // Runs `fn` on worker `worker`'s thread and waits for it (decode steps run where the cache is).
  absl::Status RunOn(int worker, std::function<absl::Status()> fn);

 private:
  struct RunState;  // one prefill's state, shared with its jobs (coordinator.cc)
  using PositionFn = std::function<absl::Status(int position, ChainProgress& progress)>;

  // Runs fn(k) for chain positions k < count, each on worker order[k]'s thread; waits for all,
  // or until the watchdog finds a stall. `fn` must own (by shared_ptr) whatever it touches: a
  // stuck job may outlive this call.
  absl::Status RunOnPositions(int count, const PositionFn& fn, const std::vector<int>& order);
  // UNAVAILABLE while a stuck job of an earlier prefill still runs.
  absl::Status CheckNoStuckJobs();

  std::vector<ModelRunner*> runners_;
  std::unique_ptr<ChainFabric> fabric_;
  absl::Duration prefill_timeout_ = absl::ZeroDuration();
  // The jobs of the last prefill the watchdog gave up on, with who was stuck, until they finish.
  std::shared_ptr<ChainProgress> stuck_jobs_;
  std::string stuck_description_;
  std::vector<std::unique_ptr<DeviceWorker>> threads_;  // last: joined before the rest goes
};

}  // namespace kvr
