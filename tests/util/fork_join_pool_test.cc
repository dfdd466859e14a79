#include "engine/util/fork_join_pool.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace kvr {
namespace {

TEST(ForkJoinPoolTest, RunsEveryIndexOnceBatchAfterBatch) {
  for (int helpers : {0, 1, 3}) {
    ForkJoinPool pool(helpers);
    EXPECT_EQ(pool.helpers(), helpers);
    for (int n : {0, 1, 2, 7, 100, 3}) {
      std::vector<std::atomic<int>> ran(n);
      pool.Run(n, [&](int i) { ran[i].fetch_add(1); });
      for (int i = 0; i < n; ++i) EXPECT_EQ(ran[i].load(), 1) << "helpers " << helpers << " n " << n << " i " << i;
    }
  }
}

TEST(ForkJoinPoolTest, TasksRunAtTheSameTimeOnDifferentThreads) {
  ForkJoinPool pool(3);
  std::atomic<int> arrived{0};
  std::mutex m;
  std::set<std::thread::id> threads;
  pool.Run(4, [&](int) {
    arrived.fetch_add(1);
    // Wait (bounded) for the others: a task that returned early would let this thread take a
    // second index, so four arrivals mean four tasks in flight at once.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (arrived.load() < 4 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    std::lock_guard<std::mutex> lock(m);
    threads.insert(std::this_thread::get_id());
  });
  EXPECT_EQ(arrived.load(), 4);
  EXPECT_EQ(threads.size(), 4u);
  EXPECT_TRUE(threads.count(std::this_thread::get_id())) << "the caller works too";
}

TEST(ForkJoinPoolTest, RunReturnsOnlyAfterTheSlowestTask) {
  ForkJoinPool pool(2);
  std::atomic<int> done{0};
  pool.Run(3, [&](int i) {
    if (i == 2) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    done.fetch_add(1);
  });
  EXPECT_EQ(done.load(), 3);
}

}  // namespace
}  // namespace kvr
