#include "engine/prefill/chain_progress.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvr {

ChainProgress::ChainProgress(int positions) : unfinished_(positions) {
  const absl::Time now = absl::Now();
  states_.resize(positions);
  for (ChainPositionState& s : states_) s.since = now;
}

void ChainProgress::Report(int position, ChainPhase phase, int layer) {
  absl::MutexLock lock(&mu_);
  ChainPositionState& s = states_[position];
  s.phase = phase;
  s.layer = layer;
  s.since = absl::Now();
}

void ChainProgress::Finish(int position, absl::Status status) {
  absl::MutexLock lock(&mu_);
  ChainPositionState& s = states_[position];
  if (s.finished) return;
  s.finished = true;
  s.status = std::move(status);
  s.since = absl::Now();
  --unfinished_;
}

std::optional<ChainStall> ChainProgress::FindStall(absl::Time now, absl::Duration timeout) const {
  // The longest-stalled position that is not waiting on the transport; else a waiting one, but
  // only when no other position computes (nobody it could be waiting for is at work) or when it
  // has waited twice the timeout.
  std::optional<ChainStall> busy, waiting;
  bool anyone_computing = false;
  for (int k = 0; k < static_cast<int>(states_.size()); ++k) {
    const ChainPositionState& s = states_[k];
    if (s.finished) continue;
    const bool is_waiting = s.phase == ChainPhase::kWaiting;
    anyone_computing |= !is_waiting;
    if (now - s.since < timeout) continue;
    std::optional<ChainStall>& best = is_waiting ? waiting : busy;
    if (!best || s.since < best->state.since) best = ChainStall{k, s, now - s.since};
  }
  if (busy) return busy;
  if (waiting && (!anyone_computing || waiting->stalled >= 2 * timeout)) return waiting;
  return std::nullopt;
}

std::optional<ChainStall> ChainProgress::Wait(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto all_done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return unfinished_ == 0; };
  if (timeout <= absl::ZeroDuration()) {
    mu_.Await(absl::Condition(&all_done));
    return std::nullopt;
  }
  while (unfinished_ > 0) {
    const absl::Time now = absl::Now();
    if (std::optional<ChainStall> stall = FindStall(now, timeout)) return stall;
    // Sleep until the next moment FindStall could answer differently: a position reaching the
    // timeout, or a stalled waiter reaching twice the timeout.
    absl::Time next = absl::InfiniteFuture();
    for (const ChainPositionState& s : states_) {
      if (s.finished) continue;
      next = std::min(next, now < s.since + timeout ? s.since + timeout : s.since + 2 * timeout);
    }
    mu_.AwaitWithDeadline(absl::Condition(&all_done), next);
  }
  return std::nullopt;
}

bool ChainProgress::WaitFinished(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto all_done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return unfinished_ == 0; };
  return mu_.AwaitWithTimeout(absl::Condition(&all_done), timeout);
}

bool ChainProgress::AllFinished() const {
  absl::MutexLock lock(&mu_);
  return unfinished_ == 0;
}

ChainPositionState ChainProgress::state(int position) const {
  absl::MutexLock lock(&mu_);
  return states_[position];
}

std::string DescribePosition(const ChainPositionState& state) {
  const char* phase = state.phase == ChainPhase::kQueued      ? "queued behind an earlier job"
                      : state.phase == ChainPhase::kComputing ? "computing"
                                                              : "waiting for the transport";
  if (state.layer < 0) return absl::StrCat("before its first layer (", phase, ")");
  return absl::StrCat("at layer ", state.layer, " (", phase, ")");
}

}  // namespace kvr
