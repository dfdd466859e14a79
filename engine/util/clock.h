// Wall-clock helpers for timings reported to users (TTFT, per-worker busy and wait).
#pragma once

#include <chrono>

namespace kvr {

using SteadyClock = std::chrono::steady_clock;

inline double SecondsSince(SteadyClock::time_point t0) {
  return std::chrono::duration<double>(SteadyClock::now() - t0).count();
}

}  // namespace kvr
