// The in-process transport: a prefix lands row for row in the receiver's cache, and an aborted
// prefill wakes a waiting receiver instead of hanging it.
#include <thread>

#include "engine/cpu/cpu_runner.h"
#include "engine/prefill/inproc_transport.h"
#include "engine/prefill/planner.h"
#include "gtest/gtest.h"

namespace kvr {
namespace {

class FakeCache : public KvCache {
 public:
  FakeCache(int capacity, int fill) : data_(2 * capacity * 4, fill), capacity_(capacity) {}
  int capacity() const override { return capacity_; }
  int num_layers() const override { return 1; }
  KvLayerView layer(int) override {
    return {reinterpret_cast<std::byte*>(data_.data()),
            reinterpret_cast<std::byte*>(data_.data() + capacity_ * 4), 4 * sizeof(float)};
  }
  int device() const override { return 0; }
  size_t bytes() const override { return data_.size() * 4; }
  std::vector<float> data_;
  int capacity_;
};

TEST(InProcessTransport, ChainForwardsThePrefix) {
  PrefillPlan plan = *FixedPlanner({2, 3, 1}).Plan(6, 3, 2);
  FakeCache c0(6, 0), c1(6, 0), c2(6, 0);
  for (int i = 0; i < 2 * 4; ++i) c0.data_[i] = 100 + i;              // K rows [0,2)
  for (int i = 2 * 4; i < 5 * 4; ++i) c1.data_[i] = 200 + i;          // K rows [2,5)
  auto fabric = MakeInProcessFabric();
  ASSERT_TRUE(fabric->Prepare(plan, {&c0, &c1, &c2}, {nullptr, nullptr, nullptr}).ok());
  std::vector<std::thread> threads;
  for (int k = 0; k < 3; ++k) {
    threads.emplace_back([&, k] {
      auto ep = fabric->Connect(k);
      ASSERT_TRUE(ep.ok());
      ASSERT_TRUE((*ep)->SendLayer(0).ok());
      ASSERT_TRUE((*ep)->WaitPrefix(0).ok());
      ASSERT_TRUE((*ep)->Finish().ok());
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 2 * 4; ++i) EXPECT_EQ(c2.data_[i], 100 + i);
  for (int i = 2 * 4; i < 5 * 4; ++i) EXPECT_EQ(c2.data_[i], 200 + i);
  EXPECT_EQ(c2.data_[5 * 4], 0);  // its own row is not touched by the transport
}

TEST(InProcessTransport, AbortWakesAWaitingReceiver) {
  PrefillPlan plan = *FixedPlanner({2, 2}).Plan(4, 2, 1);
  FakeCache c0(4, 0), c1(4, 0);
  auto fabric = MakeInProcessFabric();
  ASSERT_TRUE(fabric->Prepare(plan, {&c0, &c1}, {nullptr, nullptr}).ok());
  auto ep = fabric->Connect(1);
  ASSERT_TRUE(ep.ok());
  std::thread failer([&] { fabric->Abort(absl::InternalError("worker 0 failed")); });
  absl::Status s = (*ep)->WaitPrefix(0);  // position 0 never sends
  failer.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace kvr
