// Faults at the engine level, on the CPU backend:
//  - a worker that fails mid-prefill (CpuRunnerOptions::fail_at_layer) fails that prefill with
//    INTERNAL naming the worker and the layer, whatever its position in the chain and the
//    topology; the other positions, blocked on K/V that will never come, wake up (the
//    coordinator aborts the fabric) instead of hanging; the next prefill on the same
//    coordinator and fabric succeeds with the same logits as a fault-free one;
//  - the model folder deleted, or its files truncated, after the runners loaded it: prefill and
//    decode go on unchanged (the CPU runner copied the weights; nothing reads the mapping again).
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include "engine/cpu/cpu_runner.h"
#include "engine/prefill/coordinator.h"
#include "engine/prefill/inproc_transport.h"
#include "engine/prefill/planner.h"
#include "gtest/gtest.h"
#include "tests/engine/fixture_util.h"

namespace kvr::testing {
namespace {

namespace fs = std::filesystem;
constexpr int kWorkers = 3;
constexpr int32_t kTrigger = 7;  // a prefill chunk holding this token fails on the faulty worker

// The llama3 fixture on kWorkers CPU runners; worker `faulty` fails at `layer` on chunks that
// hold kTrigger.
LoadedModel LoadWithFault(int faulty, int layer) {
  CpuRunnerOptions fault;
  fault.fail_at_layer = layer;
  fault.fail_on_token = kTrigger;
  return LoadCpuModel(FixtureDir("llama3"), kWorkers, faulty, fault);
}

// Runs the prefill on another thread so that a hang fails the test instead of blocking it.
absl::StatusOr<PrefillResult> RunBounded(PrefillCoordinator& c, const std::vector<int32_t>& prompt,
                                         const PrefillPlan& plan) {
  auto f = std::async(std::launch::async, [&] {
    return c.Run(prompt, plan, static_cast<int>(prompt.size()) + 4);
  });
  if (f.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    ADD_FAILURE() << "prefill did not return within 30 s: a worker is still waiting (" << plan.ToString()
                  << ")";
    std::abort();  // the hung threads cannot be joined
  }
  return f.get();
}

std::vector<int32_t> Prompt(bool with_trigger) {
  std::vector<int32_t> p;
  for (int i = 0; i < 24; ++i) p.push_back(static_cast<int32_t>(20 + (i * 37) % 200));
  if (with_trigger) p.assign(p.size(), kTrigger);  // every chunk holds the trigger
  return p;
}

TEST(WorkerFault, FailsThePrefillWithInternalAndTheChainRecovers) {
  const int faulty = 1, layer = 1;
  LoadedModel m = LoadWithFault(faulty, layer);
  LoadedModel healthy = LoadCpuModel(FixtureDir("llama3"), kWorkers);
  PrefillCoordinator coordinator(m.runner_ptrs(), MakeInProcessFabric());
  PrefillCoordinator reference(healthy.runner_ptrs(), MakeInProcessFabric());
  const std::vector<int32_t> bad = Prompt(true), good = Prompt(false);
  const int C = static_cast<int>(bad.size());
  int runs = 0;
  for (Topology topology : {Topology::kChain, Topology::kFanOut}) {
    // The faulty worker first, in the middle and last (the owner) of the chain.
    for (int last = 0; last < kWorkers; ++last) {
      auto plan = EvenPlanner(topology).Plan(C, kWorkers, last);
      ASSERT_TRUE(plan.ok()) << plan.status();
      auto failed = RunBounded(coordinator, bad, *plan);
      ASSERT_FALSE(failed.ok()) << plan->ToString();
      EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal) << failed.status();
      EXPECT_NE(failed.status().message().find("cpu worker 1"), std::string::npos) << failed.status();
      EXPECT_NE(failed.status().message().find("injected fault at layer 1"), std::string::npos)
          << failed.status();

      // The same coordinator and fabric serve the next request, bit for bit as a healthy chain.
      auto ok = RunBounded(coordinator, good, *plan);
      ASSERT_TRUE(ok.ok()) << ok.status() << " after a fault, " << plan->ToString();
      auto want = RunBounded(reference, good, *plan);
      ASSERT_TRUE(want.ok()) << want.status();
      EXPECT_EQ(ok->logits, want->logits) << plan->ToString();
      ++runs;
    }
  }
  EXPECT_EQ(runs, 2 * kWorkers);
}

TEST(WorkerFault, DecodeIsNotAffected) {
  // The hook fails prefill chunks only: a decode step of the trigger token on the faulty worker
  // runs.
  LoadedModel m = LoadWithFault(/*faulty=*/0, /*layer=*/0);
  auto cache = m.runners[0]->NewKvCache(8);
  ASSERT_TRUE(cache.ok());
  DecodeSlot slot{cache->get(), kTrigger, 0};
  absl::Span<const float> logits;
  EXPECT_TRUE(m.runners[0]->Decode(absl::MakeConstSpan(&slot, 1), &logits).ok());
}

TEST(WorkerFault, EnvironmentVariableReachesTheNamedWorkerOnly) {
  LoadedModel base = LoadCpuModel(FixtureDir("llama3"), 0);
  ASSERT_EQ(setenv("KVR_TESTING_CPU_FAULT", "1:0", 1), 0);
  std::vector<std::unique_ptr<ModelRunner>> runners;
  for (int w = 0; w < 2; ++w) {
    auto r = MakeCpuRunner(base.folder->config(), base.weights, CpuRunnerOptions{1, w});
    ASSERT_TRUE(r.ok()) << r.status();
    runners.push_back(std::move(*r));
  }
  ASSERT_EQ(setenv("KVR_TESTING_CPU_FAULT", "nonsense", 1), 0);
  auto bad = MakeCpuRunner(base.folder->config(), base.weights, CpuRunnerOptions{1, 0});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  unsetenv("KVR_TESTING_CPU_FAULT");
  const std::vector<int32_t> prompt = {1, 2, 3};
  for (int w = 0; w < 2; ++w) {
    auto cache = runners[w]->NewKvCache(4);
    ASSERT_TRUE(cache.ok());
    auto chunk = runners[w]->BeginChunk(prompt, 0, **cache);
    ASSERT_TRUE(chunk.ok());
    absl::Status s = runners[w]->LayerQkv(**chunk, 0);
    EXPECT_EQ(s.ok(), w == 0) << "worker " << w << ": " << s;
  }
}

// A private copy of the llama3 fixture (real files, not links) that the test may destroy.
std::string CopyFixture(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / (name + "-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(FixtureDir("llama3")))
    fs::copy_file(e.path(), dir / e.path().filename());
  return dir.string();
}

struct Output {
  std::vector<float> prefill_logits;
  std::vector<int32_t> greedy;
};

Output PrefillAndDecode(LoadedModel& m) {
  Output out;
  PrefillCoordinator coordinator(m.runner_ptrs(), MakeInProcessFabric());
  const std::vector<int32_t> prompt = Prompt(false);
  const int C = static_cast<int>(prompt.size());
  auto plan = EvenPlanner().Plan(C, 2, 1);
  EXPECT_TRUE(plan.ok());
  auto r = coordinator.Run(prompt, *plan, C + 6);
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return out;
  out.prefill_logits = r->logits;
  std::vector<float> logits = r->logits;
  for (int step = 0; step < 6; ++step) {
    const int token = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.greedy.push_back(token);
    DecodeSlot slot{r->cache.get(), token, C + step};
    absl::Span<const float> step_logits;
    EXPECT_TRUE(coordinator.RunOn(r->owner, [&] {
      return coordinator.runner(r->owner).Decode(absl::MakeConstSpan(&slot, 1), &step_logits);
    }).ok());
    logits.assign(step_logits.begin(), step_logits.end());
  }
  return out;
}

TEST(ModelFolder, DeletedAfterLoadChangesNothing) {
  LoadedModel healthy = LoadCpuModel(FixtureDir("llama3"), 2);
  const Output want = PrefillAndDecode(healthy);
  const std::string dir = CopyFixture("kvr-vanish");
  LoadedModel m = LoadCpuModel(dir, 2);
  fs::remove_all(dir);
  ASSERT_FALSE(fs::exists(dir));
  const Output got = PrefillAndDecode(m);
  EXPECT_EQ(got.prefill_logits, want.prefill_logits);
  EXPECT_EQ(got.greedy, want.greedy);
}

TEST(ModelFolder, TruncatedAfterLoadChangesNothing) {
  // Truncating a mapped file makes any later read of the mapping a SIGBUS: this passes only if
  // nothing reads the weights' mapping after load.
  LoadedModel healthy = LoadCpuModel(FixtureDir("llama3"), 2);
  const Output want = PrefillAndDecode(healthy);
  const std::string dir = CopyFixture("kvr-truncate");
  LoadedModel m = LoadCpuModel(dir, 2);
  for (const auto& e : fs::directory_iterator(dir)) fs::resize_file(e.path(), 0);
  { std::ofstream(fs::path(dir) / "config.json") << "{ not json"; }
  const Output got = PrefillAndDecode(m);
  EXPECT_EQ(got.prefill_logits, want.prefill_logits);
  EXPECT_EQ(got.greedy, want.greedy);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kvr::testing
