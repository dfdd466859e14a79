// The prefill watchdog (PrefillCoordinator::set_prefill_timeout), on the CPU backend:
//  - ChainProgress blames the position that computes (or is silent), not those waiting for it;
//  - a worker that hangs mid-prefill (CpuRunnerOptions::hang_seconds) fails that prefill with
//    DEADLINE_EXCEEDED naming the worker and the layer, long before the hang ends; while the
//    worker is still stuck a new prefill is refused with UNAVAILABLE naming it; once it returns,
//    the same coordinator serves again, bit for bit as a healthy chain;
//  - with the watchdog off, the same hang only delays the prefill (what fails it is the timeout).
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "engine/cpu/cpu_runner.h"
#include "engine/prefill/chain_progress.h"
#include "engine/prefill/coordinator.h"
#include "engine/prefill/inproc_transport.h"
#include "engine/prefill/planner.h"
#include "gtest/gtest.h"
#include "tests/engine/fixture_util.h"

namespace kvr::testing {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kWorkers = 3;
constexpr int kHungWorker = 1;  // the middle of the chain in the plans below
constexpr int kHungLayer = 1;
constexpr int32_t kTrigger = 7;  // a prefill chunk holding this token hangs on kHungWorker

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

TEST(ChainProgress, BlamesTheComputingPositionNotTheOnesWaitingForIt) {
  ChainProgress progress(3);
  progress.Report(1, ChainPhase::kComputing, 2);  // stuck in its compute
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  progress.Report(2, ChainPhase::kWaiting, 2);  // waits for position 1's K/V
  progress.Report(0, ChainPhase::kWaiting, 3);
  std::optional<ChainStall> stall = progress.Wait(absl::Milliseconds(50));
  ASSERT_TRUE(stall.has_value());
  EXPECT_EQ(stall->position, 1);
  EXPECT_EQ(stall->state.layer, 2);
  EXPECT_EQ(DescribePosition(stall->state), "at layer 2 (computing)");
  EXPECT_GE(stall->stalled, absl::Milliseconds(50));
  EXPECT_FALSE(progress.AllFinished());
}

TEST(ChainProgress, BlamesAWaiterWhenNobodyComputes) {
  // A lost transfer: the sender has finished, the receiver waits for ever.
  ChainProgress progress(2);
  progress.Finish(0, absl::OkStatus());
  progress.Report(1, ChainPhase::kWaiting, 3);
  std::optional<ChainStall> stall = progress.Wait(absl::Milliseconds(30));
  ASSERT_TRUE(stall.has_value());
  EXPECT_EQ(stall->position, 1);
  EXPECT_EQ(DescribePosition(stall->state), "at layer 3 (waiting for the transport)");
}

TEST(ChainProgress, NoStallWhenEveryPositionFinishesInTime) {
  ChainProgress progress(2);
  std::thread worker([&] {
    progress.Finish(1, absl::InternalError("x"));
    for (int l = 0; l < 30; ++l) {
      progress.Report(0, ChainPhase::kComputing, l);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    progress.Finish(0, absl::OkStatus());
  });
  // Each report comes well within the timeout although the whole round (>= 300 ms) takes longer.
  EXPECT_FALSE(progress.Wait(absl::Milliseconds(200)).has_value());
  worker.join();
  EXPECT_TRUE(progress.AllFinished());
  EXPECT_EQ(progress.state(1).status.code(), absl::StatusCode::kInternal);
}

// The llama3 fixture on kWorkers CPU runners; kHungWorker stalls for `hang_seconds` at
// kHungLayer on chunks that hold kTrigger.
LoadedModel LoadWithHang(double hang_seconds) {
  CpuRunnerOptions fault;
  fault.fail_at_layer = kHungLayer;
  fault.fail_on_token = kTrigger;
  fault.hang_seconds = hang_seconds;
  return LoadCpuModel(FixtureDir("llama3"), kWorkers, kHungWorker, fault);
}

std::vector<int32_t> Prompt(bool with_trigger) {
  std::vector<int32_t> p;
  for (int i = 0; i < 24; ++i) p.push_back(static_cast<int32_t>(20 + (i * 37) % 200));
  if (with_trigger) p.assign(p.size(), kTrigger);
  return p;
}

TEST(PrefillWatchdog, AHungWorkerFailsThePrefillWithDeadlineExceededAndTheChainRecovers) {
  const double kHang = 4.0;
  const absl::Duration kTimeout = absl::Milliseconds(300);
  LoadedModel m = LoadWithHang(kHang);
  LoadedModel healthy = LoadCpuModel(FixtureDir("llama3"), kWorkers);
  PrefillCoordinator coordinator(m.runner_ptrs(), MakeInProcessFabric());
  coordinator.set_prefill_timeout(kTimeout);
  PrefillCoordinator reference(healthy.runner_ptrs(), MakeInProcessFabric());
  const std::vector<int32_t> bad = Prompt(true), good = Prompt(false);
  const int C = static_cast<int>(bad.size());
  auto plan = EvenPlanner(Topology::kChain).Plan(C, kWorkers, kWorkers - 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->order[1], kHungWorker) << plan->ToString();

  // A healthy prefill is not cut short by the watchdog.
  auto first = coordinator.Run(good, *plan, C + 4);
  ASSERT_TRUE(first.ok()) << first.status();

  const auto t0 = Clock::now();
  auto failed = coordinator.Run(bad, *plan, C + 4);
  const double seconds = SecondsSince(t0);
  ASSERT_FALSE(failed.ok()) << "the watchdog did not fire (" << seconds << " s)";
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kDeadlineExceeded) << failed.status();
  const std::string msg(failed.status().message());
  EXPECT_NE(msg.find("prefill worker 1 (chain position 1) made no progress"), std::string::npos) << msg;
  EXPECT_NE(msg.find("at layer 1 (computing)"), std::string::npos) << msg;
  // Failed at the timeout (plus the grace given to the others), not at the end of the hang.
  EXPECT_LT(seconds, kHang / 2) << msg;

  // The worker is still stuck: the next prefill is refused, naming it, instead of queueing.
  auto refused = coordinator.Run(good, *plan, C + 4);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  EXPECT_NE(refused.status().message().find("prefill worker 1 (chain position 1) is still stuck"),
            std::string::npos)
      << refused.status();

  // Once the hang ends, the same coordinator and fabric serve again, bit for bit.
  absl::StatusOr<PrefillResult> ok = refused.status();
  while (!ok.ok() && ok.status().code() == absl::StatusCode::kUnavailable &&
         SecondsSince(t0) < kHang + 30) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ok = coordinator.Run(good, *plan, C + 4);
  }
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_GE(SecondsSince(t0), kHang * 0.9);  // only after the hang
  auto want = reference.Run(good, *plan, C + 4);
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(ok->logits, want->logits);
}

TEST(PrefillWatchdog, OffTheSameHangOnlyDelaysThePrefill) {
  const double kHang = 1.0;
  LoadedModel m = LoadWithHang(kHang);
  PrefillCoordinator coordinator(m.runner_ptrs(), MakeInProcessFabric());
  EXPECT_EQ(coordinator.prefill_timeout(), absl::ZeroDuration());  // off by default
  const std::vector<int32_t> bad = Prompt(true);
  const int C = static_cast<int>(bad.size());
  auto plan = EvenPlanner(Topology::kChain).Plan(C, kWorkers, kWorkers - 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const auto t0 = Clock::now();
  auto r = coordinator.Run(bad, *plan, C + 4);
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_GE(SecondsSince(t0), kHang * 0.9);
}

TEST(PrefillWatchdog, EnvironmentVariableSetsTheHang) {
  LoadedModel base = LoadCpuModel(FixtureDir("llama3"), 0);
  ASSERT_EQ(setenv("KVR_TESTING_CPU_FAULT", "0:0:-1:0.5", 1), 0);
  auto runner = MakeCpuRunner(base.folder->config(), base.weights, CpuRunnerOptions{1, 0});
  ASSERT_EQ(setenv("KVR_TESTING_CPU_FAULT", "0:0:-1:-2", 1), 0);
  auto bad = MakeCpuRunner(base.folder->config(), base.weights, CpuRunnerOptions{1, 0});
  unsetenv("KVR_TESTING_CPU_FAULT");
  ASSERT_TRUE(runner.ok()) << runner.status();
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  auto cache = (*runner)->NewKvCache(4);
  ASSERT_TRUE(cache.ok());
  const std::vector<int32_t> prompt = {1, 2, 3};
  auto chunk = (*runner)->BeginChunk(prompt, 0, **cache);
  ASSERT_TRUE(chunk.ok());
  const auto t0 = Clock::now();
  EXPECT_TRUE((*runner)->LayerQkv(**chunk, 0).ok());  // a hang, not an error
  EXPECT_GE(SecondsSince(t0), 0.45);
}

}  // namespace
}  // namespace kvr::testing
