// Scheduler: admission queue, prefill of one request at a time across all workers (the
// KV-Runahead chain), continuous-batching decode of every running request grouped by the worker
// that holds its cache, stop rules, cancellation. Runs no math: each step is vLLM's three beats,
//
//   ScheduledStep s = Schedule();   // under the lock: apply aborts, pick prefill or decode
//   Execute(s);                     // the executor runs it, no lock held
//   Update(s);                      // sample, stream out, finish, free caches
//
// Policy (prefill vs decode). A prefill occupies every worker, so a step is either one prefill
// or one decode step of all running requests. Prefills go first-come first-served and are taken
// as soon as one waits, except that between two prefills at least
// `decode_steps_per_prefill` decode steps run whenever requests are decoding: a burst of
// arrivals (or of long prompts) delays each running stream by at most one prefill per
// `decode_steps_per_prefill` tokens, never forever, and a waiting request waits at most that
// many decode steps per request ahead of it. No prefill starts while `max_running` requests hold
// caches, or while the last prefill found no memory for its cache and nothing has finished since.
//
// Threads: Submit, Abort, StopAdmitting, stats may be called from any thread. Either call
// Start() (the scheduler's own thread runs Step in a loop) or drive Step() yourself (tests);
// sinks and the observer are called on the thread that runs Step, never under the lock, except
// that an Abort that frees a request at once calls its sink on the caller's thread.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/serving/executor.h"
#include "engine/serving/request.h"
#include "engine/util/fork_join_pool.h"

namespace kvr {

struct SchedulerOptions {
  int max_queue = 64;        // requests waiting for their prefill; past it Submit refuses
  int max_running = 32;      // requests holding a KV-cache (decoding)
  int max_model_len = 0;     // prompt + max_tokens must fit; > 0
  int decode_steps_per_prefill = 1;  // see the policy above; >= 1
  // Threads that sample a decode step's sequences, the stepping thread included (each token is
  // sampled on the host after the step; docs/benchmarks.md, session 8); 0 = up to 8, as many as
  // the machine has hardware threads.
  int sampling_threads = 0;
};

struct SchedulerStats {
  int waiting = 0;           // admitted, not yet prefilled (the one prefilling not counted)
  int running = 0;           // prefilling or decoding
  size_t kv_bytes = 0;       // held by KV-caches of running requests
  size_t kv_capacity_bytes = 0;
  uint64_t prefills = 0;
  uint64_t decode_steps = 0;
  bool admitting = true;
};

// Hooks for metrics; called on the stepping thread unless said otherwise. Must not block.
class SchedulerObserver {
 public:
  virtual ~SchedulerObserver() = default;
  // After any change of the counts (any thread).
  virtual void OnStats(const SchedulerStats& stats) {}
  // A request was refused by Submit (any thread); `status` says why.
  virtual void OnRejected(const absl::Status& status) {}
  virtual void OnPrefillDone(double queue_seconds, double prefill_seconds, int prompt_tokens,
                             const std::vector<WorkerPrefillTiming>& workers) {}
  virtual void OnFirstToken(double ttft_seconds, int prompt_tokens) {}
  virtual void OnNextToken(double inter_token_seconds) {}
  virtual void OnFinished(const GenerationResult& result) {}
};

class Scheduler {
 public:
  Scheduler(Executor* executor, SchedulerOptions options, SchedulerObserver* observer = nullptr);
  ~Scheduler();  // Stop()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Admits a request or says why not: ResourceExhausted (queue full), Unavailable (shutting
  // down), AlreadyExists (id in use), InvalidArgument (empty prompt, too long, bad sampling).
  // On success the sink will get exactly one OnFinish or OnError.
  absl::Status Submit(GenerationRequest request);

  // Ends a request: it finishes with reason abort and its KV-cache is freed. At once when it is
  // waiting, or decoding while no decode step runs (e.g. during another request's prefill);
  // else at the end of the step that uses it (one decode step, or its own prefill). NotFound if
  // no live request has this id.
  absl::Status Abort(const std::string& id);

  // Starts the scheduler's thread.
  void Start();
  // One schedule/execute/update step on the calling thread. False when there was nothing to do.
  bool Step();

  // Refuse new requests from now on (Unavailable).
  void StopAdmitting();
  // Waits until no request is waiting or running; false on timeout.
  bool WaitIdle(absl::Duration timeout);
  // Aborts every live request (reason abort).
  void AbortAll();
  // AbortAll, then stops the thread once the aborts are applied. Idempotent.
  void Stop();

  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return options_; }

 private:
  struct Sequence;
  enum class StepKind { kIdle, kPrefill, kDecode };
  struct ScheduledStep {
    StepKind kind = StepKind::kIdle;
    Sequence* prefill = nullptr;
    int last_worker = 0;
    bool retired_any = false;  // Schedule applied aborts
    std::vector<DecodeGroup> groups;
    std::vector<std::vector<Sequence*>> group_seqs;  // parallel to groups
    absl::StatusOr<PrefillOutcome> prefill_out = absl::UnknownError("not run");
  };

  ScheduledStep Schedule();
  void Execute(ScheduledStep& step);
  void Update(ScheduledStep& step);

  // Token handling for a running sequence; returns true if it finished.
  bool HandleToken(Sequence& seq, int32_t token, TokenLogprobs* lp, GenerationChunk* chunk);
  // Removes a finished/aborted/failed sequence, frees its cache, notifies sink and observer.
  void Retire(Sequence* seq, GenerationChunk chunk, absl::Status error);
  int PickLastWorker() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  SchedulerStats StatsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishStats();
  void Loop();

  Executor* const executor_;
  const SchedulerOptions options_;
  SchedulerObserver* const observer_;

  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // live_, waiting_, running_ or abort_pending_ changed
  absl::flat_hash_map<std::string, std::unique_ptr<Sequence>> live_ ABSL_GUARDED_BY(mu_);
  std::deque<Sequence*> waiting_ ABSL_GUARDED_BY(mu_);
  std::vector<Sequence*> running_ ABSL_GUARDED_BY(mu_);  // decoding, in admission order
  Sequence* prefilling_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t kv_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t prefills_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t decode_steps_ ABSL_GUARDED_BY(mu_) = 0;
  int decode_steps_since_prefill_ ABSL_GUARDED_BY(mu_) = 0;
  bool memory_blocked_ ABSL_GUARDED_BY(mu_) = false;
  bool admitting_ ABSL_GUARDED_BY(mu_) = true;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool abort_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool decode_in_flight_ ABSL_GUARDED_BY(mu_) = false;  // a decode step is executing/updating
  absl::BitGen bitgen_ ABSL_GUARDED_BY(mu_);
  ForkJoinPool sampling_pool_;  // helpers for Update's sampling; the stepping thread is the other
  std::thread thread_;
};

}  // namespace kvr
