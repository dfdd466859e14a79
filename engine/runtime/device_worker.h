// DeviceWorker: one long-lived thread per device that runs submitted jobs in order. CUDA keeps
// its current device per thread, so all work for a device goes through its worker.
#pragma once

#include <deque>
#include <functional>
#include <thread>

#include "absl/synchronization/mutex.h"

namespace kvr {

class DeviceWorker {
 public:
  // `on_start` runs first on the new thread (e.g. cudaSetDevice).
  explicit DeviceWorker(std::function<void()> on_start = nullptr);
  ~DeviceWorker();  // finishes queued jobs, then joins
  DeviceWorker(const DeviceWorker&) = delete;
  DeviceWorker& operator=(const DeviceWorker&) = delete;

  void Post(std::function<void()> job);

 private:
  void Loop(std::function<void()> on_start);
  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace kvr
