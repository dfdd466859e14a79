#include "engine/util/fork_join_pool.h"

namespace kvr {

ForkJoinPool::ForkJoinPool(int helpers) {
  for (int i = 0; i < helpers; ++i) threads_.emplace_back([this] { Helper(); });
}

ForkJoinPool::~ForkJoinPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void ForkJoinPool::Run(int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  if (threads_.empty() || n == 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    fn_ = &fn;
    n_ = n;
    next_ = 0;
    ++batch_;
  }
  Drain();
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return next_ >= n_ && running_ == 0; };
  mu_.Await(absl::Condition(&done));
  fn_ = nullptr;  // helpers that wake late find nothing to take
}

void ForkJoinPool::Drain() {
  while (true) {
    const std::function<void(int)>* fn = nullptr;
    int i = 0;
    {
      absl::MutexLock lock(&mu_);
      if (fn_ == nullptr || next_ >= n_) return;
      fn = fn_;
      i = next_++;
      ++running_;
    }
    (*fn)(i);
    absl::MutexLock lock(&mu_);
    --running_;
  }
}

void ForkJoinPool::Helper() {
  uint64_t seen = 0;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || (batch_ != seen && fn_ != nullptr); };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      seen = batch_;
    }
    Drain();
  }
}

}  // namespace kvr
