// ForkJoinPool: a fixed set of helper threads that run one batch of independent tasks at a time,
// the calling thread working alongside them. For short parallel sections on a hot path (the
// scheduler samples a decode step's sequences with it), where starting threads each time would
// cost more than the work.
//
//   ForkJoinPool pool(3);                      // 3 helpers: up to 4 tasks at once
//   pool.Run(n, [&](int i) { work(i); });      // returns once work(0) .. work(n - 1) have run
//
// Each index runs exactly once, on any of the threads, in no set order. Run is not reentrant and
// is called from one thread at a time. The destructor joins the helpers.
#pragma once

#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kvr {

class ForkJoinPool {
 public:
  explicit ForkJoinPool(int helpers);
  ~ForkJoinPool();
  ForkJoinPool(const ForkJoinPool&) = delete;
  ForkJoinPool& operator=(const ForkJoinPool&) = delete;

  int helpers() const { return static_cast<int>(threads_.size()); }
  void Run(int n, const std::function<void(int)>& fn);

 private:
  void Helper();
  // Takes the next index of the current batch and runs it until none is left.
  void Drain() ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  const std::function<void(int)>* fn_ ABSL_GUARDED_BY(mu_) = nullptr;
  int n_ ABSL_GUARDED_BY(mu_) = 0;        // tasks of the current batch
  int next_ ABSL_GUARDED_BY(mu_) = 0;     // next index to hand out
  int running_ ABSL_GUARDED_BY(mu_) = 0;  // indexes handed out and not finished
  uint64_t batch_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvr
