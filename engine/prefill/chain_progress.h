// ChainProgress: one round of jobs over the chain positions of a prefill (cache allocation, the
// chain itself, freeing the caches) as the coordinator and the worker threads share it, and the
// prefill watchdog that reads it.
//
// Each worker thread reports where its position is (Report) and, at the end, its status
// (Finish). The coordinator waits (Wait) until every position has finished or until one of them
// has made no progress for the timeout: a stall, which it then handles (aborts the fabric, fails
// the request). Progress is any report; a position blocked on incoming K/V reports that it waits,
// so that the watchdog blames the position that computes (or is silent), not those waiting for it.
// Thread-safe; held by shared_ptr so that a stuck worker can outlive the coordinator's wait.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace kvr {

enum class ChainPhase {
  kQueued,     // posted to the worker's thread, not started (e.g. behind an earlier job)
  kComputing,  // running on the device: allocation, a layer's compute, the last logits
  kWaiting,    // blocked on the transport: incoming K/V of a layer, or the sends at the end
};

// Where one position stands. `layer` is the layer it works on, -1 before the first layer.
struct ChainPositionState {
  ChainPhase phase = ChainPhase::kQueued;
  int layer = -1;
  absl::Time since;        // time of the last report (progress)
  bool finished = false;
  absl::Status status;     // set by Finish
};

// A position that made no progress for the watchdog's timeout.
struct ChainStall {
  int position = 0;
  ChainPositionState state;
  absl::Duration stalled;  // time since its last report
};

class ChainProgress {
 public:
  explicit ChainProgress(int positions);

  // Worker side, from the thread that runs `position`.
  void Report(int position, ChainPhase phase, int layer);
  void Finish(int position, absl::Status status);

  // Coordinator side. Waits until every position has finished (returns nullopt) or until an
  // unfinished position has made no progress for `timeout` (returns it): the longest-stalled
  // position that computes (or is queued); a position waiting on the transport only when no
  // position computes any more (a lost transfer) or after 2 * timeout. timeout <= 0: no watchdog.
  std::optional<ChainStall> Wait(absl::Duration timeout);
  // Waits up to `timeout` for every position to finish; true when they all have.
  bool WaitFinished(absl::Duration timeout);
  bool AllFinished() const;
  ChainPositionState state(int position) const;
  int positions() const { return static_cast<int>(states_.size()); }

 private:
  std::optional<ChainStall> FindStall(absl::Time now, absl::Duration timeout) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<ChainPositionState> states_ ABSL_GUARDED_BY(mu_);
  int unfinished_ ABSL_GUARDED_BY(mu_);
};

// "layer 3 (computing)", "before its first layer (queued)": for error messages.
std::string DescribePosition(const ChainPositionState& state);

}  // namespace kvr
