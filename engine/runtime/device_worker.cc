#include "engine/runtime/device_worker.h"

namespace kvr {

DeviceWorker::DeviceWorker(std::function<void()> on_start)
    : thread_([this, f = std::move(on_start)]() mutable { Loop(std::move(f)); }) {}

DeviceWorker::~DeviceWorker() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void DeviceWorker::Post(std::function<void()> job) {
  absl::MutexLock lock(&mu_);
  jobs_.push_back(std::move(job));
}

void DeviceWorker::Loop(std::function<void()> on_start) {
  if (on_start) on_start();
  while (true) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](DeviceWorker* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) { return w->stopping_ || !w->jobs_.empty(); },
          this));
      if (jobs_.empty()) return;  // stopping and drained
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace kvr
