#include "engine/serving/scheduler.h"

#include <atomic>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/serving/fakes.h"

namespace kvr {
namespace {

using testing::FakeExecutor;
using testing::LetterDecoder;
using testing::RecordingSink;

struct Made {
  GenerationRequest req;
  std::shared_ptr<RecordingSink> sink;
};

Made MakeRequest(const std::string& id, std::vector<int32_t> prompt, int max_tokens,
                 float temperature = 0) {
  Made m;
  m.sink = std::make_shared<RecordingSink>();
  m.req.id = id;
  m.req.prompt = std::move(prompt);
  m.req.sampling.max_tokens = max_tokens;
  m.req.sampling.temperature = temperature;
  m.req.has_seed = true;
  m.req.eos_ids = {31};
  m.req.decoder = std::make_unique<LetterDecoder>();
  m.req.sink = m.sink;
  return m;
}

SchedulerOptions Options(int max_queue = 8, int max_running = 4, int max_len = 64) {
  SchedulerOptions o;
  o.max_queue = max_queue;
  o.max_running = max_running;
  o.max_model_len = max_len;
  return o;
}

void RunUntilIdle(Scheduler& s, int max_steps = 10000) {
  for (int i = 0; i < max_steps && s.Step(); ++i) {
  }
}

TEST(SchedulerTest, GeneratesGreedyTokensOnePerStep) {
  FakeExecutor ex;
  Scheduler s(&ex, Options());
  Made m = MakeRequest("a", {3, 4}, 5);
  ASSERT_TRUE(s.Submit(std::move(m.req)).ok());
  RunUntilIdle(s);
  ASSERT_TRUE(m.sink->done());
  EXPECT_EQ(m.sink->tokens(), (std::vector<int32_t>{5, 6, 7, 8, 9}));
  EXPECT_EQ(m.sink->text(), "fghij");
  EXPECT_EQ(m.sink->chunks().size(), 5u);  // one per step
  GenerationResult r = m.sink->result();
  EXPECT_EQ(r.reason, FinishReason::kLength);
  EXPECT_EQ(r.prompt_tokens, 2);
  EXPECT_EQ(r.completion_tokens, 5);
  EXPECT_EQ(r.workers.size(), 2u);
  EXPECT_EQ(r.plan, "fake C=2");
  EXPECT_GE(r.e2e_seconds, r.ttft_seconds);
  EXPECT_EQ(ex.allocated(), 0u);
  EXPECT_EQ(s.stats().kv_bytes, 0u);
  EXPECT_EQ(ex.events(), (std::vector<std::string>{"P", "D1", "D1", "D1", "D1"}));
}

TEST(SchedulerTest, StopsAtEos) {
  FakeExecutor ex;
  Scheduler s(&ex, Options());
  Made m = MakeRequest("a", {28}, 10);
  ASSERT_TRUE(s.Submit(std::move(m.req)).ok());
  RunUntilIdle(s);
  EXPECT_EQ(m.sink->tokens(), (std::vector<int32_t>{29, 30, 31}));
  EXPECT_EQ(m.sink->result().reason, FinishReason::kStop);
  EXPECT_EQ(m.sink->result().stop_reason, "31");
}

TEST(SchedulerTest, RefusesWhatIsWrongWithTheRightCode) {
  FakeExecutor ex;
  Scheduler s(&ex, Options(/*max_queue=*/2, 4, /*max_len=*/16));
  EXPECT_EQ(s.Submit(MakeRequest("e", {}, 4).req).code(), absl::StatusCode::kInvalidArgument);
  absl::Status too_long = s.Submit(MakeRequest("l", std::vector<int32_t>(10, 1), 7).req);
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.message().find("16"), std::string::npos) << too_long;
  EXPECT_EQ(s.Submit(MakeRequest("v", {99}, 4).req).code(), absl::StatusCode::kInvalidArgument);
  Made bad = MakeRequest("t", {1}, 4);
  bad.req.sampling.top_p = 2;
  EXPECT_EQ(s.Submit(std::move(bad.req)).code(), absl::StatusCode::kInvalidArgument);

  Made a = MakeRequest("a", {1}, 4), b = MakeRequest("b", {1}, 4);
  ASSERT_TRUE(s.Submit(std::move(a.req)).ok());
  EXPECT_EQ(s.Submit(MakeRequest("a", {1}, 4).req).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(s.Submit(std::move(b.req)).ok());
  absl::Status full = s.Submit(MakeRequest("c", {1}, 4).req);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("max_queue = 2"), std::string::npos) << full;

  s.StopAdmitting();
  EXPECT_EQ(s.Submit(MakeRequest("d", {1}, 4).req).code(), absl::StatusCode::kUnavailable);
  RunUntilIdle(s);
  EXPECT_TRUE(a.sink->done() && b.sink->done());
}

TEST(SchedulerTest, AbortOfAWaitingRequestFinishesItAtOnce) {
  FakeExecutor ex;
  Scheduler s(&ex, Options());
  Made m = MakeRequest("a", {1}, 4);
  ASSERT_TRUE(s.Submit(std::move(m.req)).ok());
  ASSERT_TRUE(s.Abort("a").ok());
  EXPECT_TRUE(m.sink->done());
  EXPECT_EQ(m.sink->result().reason, FinishReason::kAbort);
  EXPECT_EQ(s.stats().waiting, 0);
  EXPECT_EQ(s.Abort("a").code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(s.Step());
  EXPECT_TRUE(ex.events().empty());
}

TEST(SchedulerTest, AbortOfARunningRequestFreesItsCacheAtOnce) {
  FakeExecutor ex;
  Scheduler s(&ex, Options());
  Made m = MakeRequest("a", {1}, 20);
  Made other = MakeRequest("b", {1}, 20);
  ASSERT_TRUE(s.Submit(std::move(m.req)).ok());
  ASSERT_TRUE(s.Submit(std::move(other.req)).ok());
  for (int i = 0; i < 4; ++i) s.Step();
  const size_t one = 21 * FakeExecutor::kBytesPerToken;
  EXPECT_EQ(s.stats().kv_bytes, 2 * one);
  EXPECT_EQ(s.stats().running, 2);
  ASSERT_TRUE(s.Abort("a").ok());  // between steps: freed at once
  EXPECT_TRUE(m.sink->done());
  EXPECT_EQ(m.sink->result().reason, FinishReason::kAbort);
  EXPECT_EQ(s.stats().kv_bytes, one);
  EXPECT_EQ(ex.allocated(), one);
  EXPECT_EQ(m.sink->after_done(), 0);
  RunUntilIdle(s);
  EXPECT_EQ(other.sink->result().reason, FinishReason::kLength);
  EXPECT_EQ(other.sink->tokens().size(), 20u);
  EXPECT_EQ(ex.allocated(), 0u);
}

TEST(SchedulerTest, AbortDuringAnotherRequestsLongPrefillFreesAtOnce) {
  FakeExecutor ex;
  Scheduler s(&ex, Options());
  Made a = MakeRequest("a", {1}, 50);
  ASSERT_TRUE(s.Submit(std::move(a.req)).ok());
  s.Step();  // a: prefilled, decoding
  ex.prefill_delay_ms = 300;
  Made b = MakeRequest("b", {1}, 5);
  ASSERT_TRUE(s.Submit(std::move(b.req)).ok());
  s.Step();  // a decode step (the policy), then b's long prefill below
  std::thread t([&] { s.Step(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(s.Abort("a").ok());
  EXPECT_TRUE(a.sink->done());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(100));
  EXPECT_EQ(ex.allocated(), 0u);  // b's cache does not exist yet; a's is gone
  t.join();
  RunUntilIdle(s);
  EXPECT_EQ(b.sink->result().completion_tokens, 5);
}

TEST(SchedulerTest, AbortDuringPrefillIsAppliedWhenItEnds) {
  FakeExecutor ex;
  ex.prefill_delay_ms = 200;
  Scheduler s(&ex, Options());
  Made m = MakeRequest("a", {1}, 10);
  ASSERT_TRUE(s.Submit(std::move(m.req)).ok());
  std::thread t([&] { s.Step(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(s.Abort("a").ok());
  t.join();
  EXPECT_TRUE(m.sink->done());
  EXPECT_EQ(m.sink->result().reason, FinishReason::kAbort);
  EXPECT_EQ(ex.allocated(), 0u);
}

// The starvation policy: with requests decoding, prefills never run back to back.
TEST(SchedulerTest, PrefillsAlternateWithDecodeSteps) {
  for (int k : {1, 3}) {
    FakeExecutor ex;
    SchedulerOptions o = Options(/*max_queue=*/16, /*max_running=*/16);
    o.decode_steps_per_prefill = k;
    Scheduler s(&ex, o);
    std::vector<Made> ms;
    for (int i = 0; i < 8; ++i) {
      ms.push_back(MakeRequest(absl::StrCat(i), {1}, 30));
      ASSERT_TRUE(s.Submit(std::move(ms.back().req)).ok());
    }
    RunUntilIdle(s);
    std::vector<std::string> ev = ex.events();
    int prefills = 0, decodes_since = k;
    for (const std::string& e : ev) {
      if (e == "P") {
        if (prefills > 0) {
          EXPECT_GE(decodes_since, k) << "k=" << k;
        }
        ++prefills;
        decodes_since = 0;
      } else {
        ++decodes_since;
      }
    }
    EXPECT_EQ(prefills, 8);
    // Every request got its first token within (k + 1) steps per request ahead of it.
    for (auto& m : ms) EXPECT_EQ(m.sink->tokens().size(), 30u);
  }
}

TEST(SchedulerTest, RespectsMaxRunning) {
  FakeExecutor ex;
  Scheduler s(&ex, Options(/*max_queue=*/8, /*max_running=*/2));
  std::vector<Made> ms;
  for (int i = 0; i < 5; ++i) {
    ms.push_back(MakeRequest(absl::StrCat(i), {1}, 6));
    ASSERT_TRUE(s.Submit(std::move(ms.back().req)).ok());
  }
  for (int i = 0; i < 1000 && s.Step(); ++i) EXPECT_LE(s.stats().running, 2);
  for (auto& m : ms) EXPECT_EQ(m.sink->result().completion_tokens, 6);
}

TEST(SchedulerTest, DecodeIsGroupedByTheWorkerThatHoldsTheCache) {
  FakeExecutor ex(32, /*workers=*/3);
  Scheduler s(&ex, Options());
  std::vector<Made> ms;
  for (int i = 0; i < 3; ++i) {
    ms.push_back(MakeRequest(absl::StrCat(i), {1}, 8));
    ASSERT_TRUE(s.Submit(std::move(ms.back().req)).ok());
  }
  RunUntilIdle(s);
  std::set<int> owners;
  for (auto& m : ms) {
    EXPECT_EQ(m.sink->result().reason, FinishReason::kLength);  // fake checks slot devices
    owners.insert(m.sink->result().decode_worker);
  }
  EXPECT_EQ(owners.size(), 3u);  // least-loaded worker ends each chain
  std::vector<std::string> ev = ex.events();
  EXPECT_NE(std::find(ev.begin(), ev.end(), "D3"), ev.end());
}

TEST(SchedulerTest, WaitsForMemoryWhenACacheDoesNotFit) {
  // Room for two caches of 11 tokens.
  FakeExecutor ex(32, 2, 2 * 11 * FakeExecutor::kBytesPerToken + 10);
  Scheduler s(&ex, Options());
  std::vector<Made> ms;
  for (int i = 0; i < 3; ++i) {
    ms.push_back(MakeRequest(absl::StrCat(i), {1}, 10));
    ASSERT_TRUE(s.Submit(std::move(ms.back().req)).ok());
  }
  RunUntilIdle(s);
  for (auto& m : ms) {
    EXPECT_TRUE(m.sink->error().ok()) << m.sink->error();
    EXPECT_EQ(m.sink->result().completion_tokens, 10);
  }
  // Alone and still too big: the request fails with the executor's status.
  FakeExecutor tiny(32, 2, 100);
  Scheduler s2(&tiny, Options());
  Made m = MakeRequest("x", {1}, 10);
  ASSERT_TRUE(s2.Submit(std::move(m.req)).ok());
  RunUntilIdle(s2);
  EXPECT_EQ(m.sink->error().code(), absl::StatusCode::kResourceExhausted);
}

TEST(SchedulerTest, BackendFailuresEndRequestsWithAnError) {
  FakeExecutor ex;
  ex.fail_decode = true;
  Scheduler s(&ex, Options());
  Made m = MakeRequest("a", {1}, 10);
  ASSERT_TRUE(s.Submit(std::move(m.req)).ok());
  RunUntilIdle(s);
  EXPECT_EQ(m.sink->error().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(m.sink->tokens().size(), 1u);  // the first token came from the prefill
  EXPECT_EQ(ex.allocated(), 0u);
}

TEST(SchedulerTest, SeededSamplingIsReproducible) {
  auto run = [](bool has_seed, uint64_t seed) {
    FakeExecutor ex;
    Scheduler s(&ex, Options());
    Made m = MakeRequest("a", {1}, 10, /*temperature=*/5.0f);
    m.req.has_seed = has_seed;
    m.req.sampling.seed = seed;
    EXPECT_TRUE(s.Submit(std::move(m.req)).ok());
    RunUntilIdle(s);
    return m.sink->tokens();
  };
  EXPECT_EQ(run(true, 11), run(true, 11));
  EXPECT_NE(run(true, 11), run(true, 12));
}

// The sequences of a decode step are sampled on several threads; each has its own sampler, so
// the tokens (and their logprobs) are those of sampling them one after another.
TEST(SchedulerTest, SamplingOnSeveralThreadsGivesTheSameTokens) {
  auto run = [](int threads) {
    FakeExecutor ex(32, 2);
    SchedulerOptions o = Options(16, 8);
    o.sampling_threads = threads;
    Scheduler s(&ex, o);
    std::vector<Made> made;
    for (int r = 0; r < 8; ++r) {
      made.push_back(MakeRequest(absl::StrCat("r", r), {r + 1, r + 2}, 12, /*temperature=*/4.0f));
      made.back().req.sampling.seed = 100 + r;
      made.back().req.sampling.logprobs = r % 2 ? 2 : -1;
      EXPECT_TRUE(s.Submit(std::move(made.back().req)).ok());
    }
    RunUntilIdle(s);
    std::vector<std::vector<int32_t>> tokens;
    for (const Made& m : made) {
      EXPECT_TRUE(m.sink->done());
      tokens.push_back(m.sink->tokens());
    }
    return tokens;
  };
  const auto one = run(1);
  EXPECT_EQ(run(4), one);
  EXPECT_EQ(run(0), one);  // the machine's default
  std::set<std::vector<int32_t>> distinct(one.begin(), one.end());
  EXPECT_GT(distinct.size(), 4u) << "sampling at temperature 4 with 8 seeds";
}

// Many clients at once on the scheduler's own thread, with aborts in the mix: every request
// gets exactly one final callback, nothing after it, and every cache is freed.
TEST(SchedulerTest, ConcurrentClientsWithAbortsLoseNothing) {
  FakeExecutor ex(32, 2);
  ex.decode_delay_ms = 1;
  Scheduler s(&ex, Options(/*max_queue=*/16, /*max_running=*/8, /*max_len=*/128));
  s.Start();
  std::atomic<int> finished{0}, rejected{0}, aborted{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937 rng(c);
      for (int i = 0; i < 10; ++i) {
        const std::string id = absl::StrCat(c, "-", i);
        Made m = MakeRequest(id, {static_cast<int32_t>(rng() % 30)}, 1 + rng() % 40, 1.0f);
        absl::Status st = s.Submit(std::move(m.req));
        if (!st.ok()) {
          EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
          ++rejected;
          continue;
        }
        if (rng() % 3 == 0) {
          std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 10));
          absl::Status a = s.Abort(id);
          EXPECT_TRUE(a.ok() || a.code() == absl::StatusCode::kNotFound) << a;
        }
        EXPECT_TRUE(m.sink->WaitDone(absl::Seconds(30))) << id;
        EXPECT_EQ(m.sink->after_done(), 0);
        EXPECT_TRUE(m.sink->error().ok());
        if (m.sink->result().reason == FinishReason::kAbort) ++aborted;
        ++finished;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(finished + rejected, 80);
  EXPECT_TRUE(s.WaitIdle(absl::Seconds(5)));
  EXPECT_EQ(s.stats().kv_bytes, 0u);
  EXPECT_EQ(ex.allocated(), 0u);
  s.Stop();
}

TEST(SchedulerTest, StopAbortsWhatIsLeft) {
  FakeExecutor ex;
  ex.decode_delay_ms = 2;
  Scheduler s(&ex, Options());
  s.Start();
  Made m = MakeRequest("a", {1}, 60);
  ASSERT_TRUE(s.Submit(std::move(m.req)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(s.WaitIdle(absl::Milliseconds(10)));
  s.Stop();
  EXPECT_TRUE(m.sink->done());
  EXPECT_EQ(m.sink->result().reason, FinishReason::kAbort);
  EXPECT_EQ(ex.allocated(), 0u);
}

}  // namespace
}  // namespace kvr
