// Planners and the cost model: plans are valid, even splits are even, the cost model prefers
// larger early chunks for causal attention, the search finds the brute-force optimum and
// scales to 8 GPUs.
#include <algorithm>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <fstream>

#include "engine/core/engine.h"
#include "engine/prefill/cost_model.h"
#include "engine/prefill/planner.h"
#include "engine/prefill/setup_key.h"
#include "engine/prefill/split_table.h"
#include "gtest/gtest.h"

namespace kvr {
namespace {

TEST(EvenPlanner, SplitsEvenlyAndRotatesTheLastWorker) {
  auto plan = EvenPlanner().Plan(10, 4, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->bounds, (std::vector<int>{0, 3, 6, 8, 10}));
  EXPECT_EQ(plan->order, (std::vector<int>{2, 3, 0, 1}));
  EXPECT_EQ(plan->last_worker(), 1);
  EXPECT_TRUE(ValidatePlan(*plan, 4).ok());
  EXPECT_EQ(plan->ToString(), "even chain C=10 [0,3)@2 [3,6)@3 [6,8)@0 [8,10)@1");
}

TEST(EvenPlanner, FewerTokensThanWorkersUsesFewerChunks) {
  auto plan = EvenPlanner().Plan(2, 4, 3);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->num_chunks(), 2);
  EXPECT_EQ(plan->last_worker(), 3);
}

TEST(CrossoverPlanner, ShortPromptsTakeTspLongOnesTheInnerPlan) {
  CrossoverPlanner planner(4096, std::make_unique<FixedPlanner>(std::vector<int>{3000, 1000, 500, 500}));
  auto short_plan = planner.Plan(4095, 4, 2);
  ASSERT_TRUE(short_plan.ok()) << short_plan.status();
  EXPECT_EQ(short_plan->topology, Topology::kAllGather);
  EXPECT_EQ(short_plan->bounds, (std::vector<int>{0, 1024, 2048, 3072, 4095}));
  EXPECT_EQ(short_plan->last_worker(), 2);
  EXPECT_TRUE(ValidatePlan(*short_plan, 4).ok());
  auto long_plan = planner.Plan(5000, 4, 1);
  ASSERT_TRUE(long_plan.ok()) << long_plan.status();
  EXPECT_EQ(long_plan->topology, Topology::kChain);
  EXPECT_EQ(long_plan->bounds, (std::vector<int>{0, 3000, 4000, 4500, 5000}));
  EXPECT_EQ(long_plan->last_worker(), 1);
  EXPECT_EQ(planner.name(), "fixed, tsp below 4096 tokens");
  // The inner planner's errors come through unchanged.
  EXPECT_EQ(planner.Plan(4097, 4, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FixedPlanner, RejectsSizesThatDoNotAddUp) {
  EXPECT_EQ(FixedPlanner({3, 3}).Plan(7, 2, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FixedPlanner({3, 0, 4}).Plan(7, 3, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FixedPlanner({1, 1, 1}).Plan(3, 2, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Transfers, ChainForwardsThePrefixFanOutSendsOwnChunks) {
  PrefillPlan plan = *FixedPlanner({4, 3, 2}).Plan(9, 3, 2);
  auto chain = TransfersOf(plan);
  ASSERT_EQ(chain.size(), 2u);
  EXPECT_EQ(chain[1].from, 1);
  EXPECT_EQ(chain[1].begin, 0);
  EXPECT_EQ(chain[1].end, 7);
  plan.topology = Topology::kFanOut;
  auto fan = TransfersOf(plan);
  ASSERT_EQ(fan.size(), 3u);  // 0->1, 0->2, 1->2
  for (int k = 0; k < 3; ++k) {
    int covered = 0;
    for (const auto& t : fan) if (t.to == k) covered += t.end - t.begin;
    EXPECT_EQ(covered, plan.chunk_begin(k));
  }
}

LayerShape Llama7B() {
  ModelConfig c;
  c.hidden_size = 4096; c.num_layers = 32; c.num_q_heads = 32; c.num_kv_heads = 32; c.head_dim = 128;
  c.intermediate_size = 11008; c.vocab_size = 32000;
  return LayerShape::Of(c, 2);
}

TEST(CostModel, CausalAttentionMakesEarlyChunksLarger) {
  DeviceCosts costs;
  costs.gemm_flops_per_s = 600e12;
  costs.attn_flops_per_s = 400e12;
  costs.link_bytes_per_s = 300e9;
  auto plan = CostModelPlanner(Llama7B(), costs).Plan(16384, 4, 3);
  ASSERT_TRUE(plan.ok());
  for (int k = 0; k + 1 < 4; ++k) {
    EXPECT_GT(plan->chunk_end(k) - plan->chunk_begin(k), plan->chunk_end(k + 1) - plan->chunk_begin(k + 1))
        << plan->ToString();
  }
  const double even = SimulatePrefill(Llama7B(), costs, {4096, 4096, 4096, 4096}, Topology::kChain);
  std::vector<int> sizes;
  for (int k = 0; k < 4; ++k) sizes.push_back(plan->chunk_end(k) - plan->chunk_begin(k));
  EXPECT_LT(SimulatePrefill(Llama7B(), costs, sizes, Topology::kChain), even);
}

TEST(CostModel, OneWorkerIsLayersTimesTheChunkCost) {
  DeviceCosts costs;
  costs.layer_overhead_s = 0;
  const LayerShape s = Llama7B();
  const double n = 1000;
  const double expected = s.num_layers * (n * (s.gemm_flops_qkv + s.gemm_flops_rest) / costs.gemm_flops_per_s +
                                          n * (n + 1) / 2 * s.attn_flops_per_pair / costs.attn_flops_per_s);
  EXPECT_NEAR(SimulatePrefill(s, costs, {1000}, Topology::kChain), expected, expected * 1e-12);
}

TEST(SplitSearch, FindsTheBruteForceOptimumOfAConvexCost) {
  // Cost: max over chunks of a causal-attention-like cost; brute force over all 3-way splits of 60.
  auto cost = [](const std::vector<int>& sizes) {
    double worst = 0, start = 0;
    for (int n : sizes) { worst = std::max(worst, n + 0.05 * n * (start + n / 2.0)); start += n; }
    return worst;
  };
  double best = 1e18;
  for (int a = 1; a < 60; ++a)
    for (int b = 1; a + b < 60; ++b) best = std::min(best, cost({a, b, 60 - a - b}));
  int evals = 0;
  auto found = SearchSplit(60, 3, cost, 1, {}, &evals);
  EXPECT_NEAR(cost(found), best, 1e-9);
  EXPECT_LT(evals, 200);  // far fewer than the 1711 brute-force evaluations
}

// A noisy search (one timing per candidate) can be won by a lucky timing: ConfirmBest re-times
// the few cheapest candidates and keeps the truly cheapest of them.
TEST(SplitSearch, ConfirmBestRetimesTheCheapestCandidates) {
  auto truth = [](const std::vector<int>& s) { return std::abs(s[0] - 30) + 100.0; };  // best: 30 / 30
  std::vector<std::pair<std::vector<int>, double>> seen;
  for (int a : {10, 20, 28, 30, 34, 40, 50}) seen.push_back({{a, 60 - a}, truth({a, 60 - a})});
  seen.push_back({{40, 20}, 50.0});  // {40, 20} timed once, luckily, far below its truth (110)
  seen.push_back({{28, 32}, 103.0});  // a second, worse timing of a candidate: the lower one counts
  int remeasured = 0;
  double cost = 0;
  auto best = ConfirmBest(seen, 3, [&](const std::vector<int>& s) { ++remeasured; return truth(s); }, &cost);
  EXPECT_EQ(best, (std::vector<int>{30, 30}));
  EXPECT_EQ(cost, 100.0);
  EXPECT_EQ(remeasured, 3);  // {40, 20}, {30, 30}, {28, 32}: the three cheapest as seen
  EXPECT_TRUE(ConfirmBest({}, 3, truth).empty());
  // A split the search never saw (the even one, say) is re-timed too when passed in `also`, and
  // wins where it is truly the cheapest; one already among the k cheapest is not timed twice.
  auto shifted = [](const std::vector<int>& s) { return std::abs(s[0] - 31) + 100.0; };  // best: 31 / 29
  remeasured = 0;
  best = ConfirmBest(seen, 3, [&](const std::vector<int>& s) { ++remeasured; return shifted(s); }, &cost,
                     {{31, 29}, {30, 30}});
  EXPECT_EQ(best, (std::vector<int>{31, 29}));
  EXPECT_EQ(cost, 100.0);
  EXPECT_EQ(remeasured, 4);
}

// Issue 10: the split search must scale to 8 GPUs. Exhaustive search is only possible on a
// coarse grid, so both searches run on the same grid (the prompt in units of C/20 tokens for 8
// GPUs: every split of 20 units into 8 chunks is 50,388 candidates; C/96 for 3 GPUs: 4,465) and the coarse-to-fine search must land
// within 1% of the exhaustive optimum with a small fraction of its evaluations. The search at
// full resolution (the planner's) must then do at least as well as the grid's optimum.
TEST(SplitSearch, ScalesToEightGpusAndLandsNearTheExhaustiveOptimum) {
  DeviceCosts costs;
  costs.gemm_flops_per_s = 600e12;
  costs.attn_flops_per_s = 330e12;
  costs.layer_overhead_s = 40e-6;
  costs.link_bytes_per_s = 350e9;
  costs.link_latency_s = 25e-6;
  const LayerShape shape = Llama7B();
  for (int p : {3, 8}) {
    const int C = 32768, units = p == 8 ? 20 : 96, unit = C / units;
    auto tokens = [&](const std::vector<int>& u) {
      std::vector<int> t(u.size());
      for (size_t k = 0; k < u.size(); ++k) t[k] = u[k] * unit;
      t.back() += C - units * unit;
      return t;
    };
    auto cost_units = [&](const std::vector<int>& u) {
      return SimulatePrefill(shape, costs, tokens(u), Topology::kChain);
    };
    // Exhaustive: every composition of `units` into p positive parts.
    double best = 1e18;
    long candidates = 0;
    std::vector<int> u(p, 1);
    std::function<void(int, int)> walk = [&](int k, int left) {
      if (k == p - 1) {
        u[k] = left;
        ++candidates;
        best = std::min(best, cost_units(u));
        return;
      }
      for (int n = 1; n <= left - (p - 1 - k); ++n) {
        u[k] = n;
        walk(k + 1, left - n);
      }
    };
    walk(0, units);
    int evals = 0;
    const std::vector<int> found = SearchSplit(units, p, cost_units, 1, {}, &evals);
    const double got = cost_units(found);
    EXPECT_LE(got, best * 1.01) << p << " GPUs: search " << got << " s vs exhaustive " << best << " s";
    EXPECT_LT(evals * 20, candidates) << p << " GPUs: " << evals << " evaluations of " << candidates;
    auto plan = CostModelPlanner(shape, costs).Plan(C, p, p - 1);
    ASSERT_TRUE(plan.ok()) << plan.status();
    std::vector<int> sizes;
    for (int k = 0; k < p; ++k) sizes.push_back(plan->chunk_end(k) - plan->chunk_begin(k));
    EXPECT_LE(SimulatePrefill(shape, costs, sizes, Topology::kChain), best * 1.0001) << plan->ToString();
  }
}

}  // namespace
}  // namespace kvr

namespace kvr {
namespace {

TEST(SplitTable, InterpolatesSharesBetweenSearchedLengths) {
  auto table = SplitTable::Parse(R"({"entries": [
      {"setup": "s", "context": 1000, "sizes": [400, 300, 200, 100]},
      {"setup": "s", "context": 3000, "sizes": [900, 900, 600, 600]}]})", "t.json");
  ASSERT_TRUE(table.ok()) << table.status();
  auto mid = table->Lookup("s", 2000, 4);  // shares halfway: .35 .375 .25 .25 ... of 2000
  ASSERT_TRUE(mid.ok());
  EXPECT_EQ(*mid, (std::vector<int>{700, 600, 400, 300}));
  auto below = table->Lookup("s", 500, 4);
  ASSERT_TRUE(below.ok());
  EXPECT_EQ(*below, (std::vector<int>{200, 150, 100, 50}));
  EXPECT_EQ(table->Lookup("s", 2000, 3).status().code(), absl::StatusCode::kNotFound);
  auto plan = TablePlanner(*table, "s").Plan(2001, 4, 3);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->context_len, 2001);
  auto round_trip = SplitTable::Parse(table->ToJson(), "rt.json");
  ASSERT_TRUE(round_trip.ok());
  EXPECT_EQ(round_trip->entries().size(), 2u);
}

TEST(SplitTable, RejectsSizesThatDoNotAddUp) {
  auto bad = SplitTable::Parse(R"({"entries": [{"setup": "s", "context": 10, "sizes": [3, 3]}]})", "bad.json");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("bad.json"), std::string::npos);
  EXPECT_EQ(SplitTable::Parse("{", "x.json").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvr

namespace kvr {
namespace {

TEST(SetupKey, NamesKnownShapesCardsAndLinks) {
  ModelConfig c;
  c.hidden_size = 4096; c.num_layers = 32; c.num_q_heads = 32; c.num_kv_heads = 32; c.head_dim = 128;
  c.intermediate_size = 11008; c.vocab_size = 32000; c.model_type = "llama";
  EXPECT_EQ(ShapeName(c), "llama-7b");
  c.num_layers = 4;  // a different model: never filed under llama-7b
  EXPECT_EQ(ShapeName(c), "llama-L4-C4096-H32x32-F11008");
  EXPECT_EQ(CardName("cuda:1 (NVIDIA H200)"), "H200");
  EXPECT_EQ(CardName("cuda:0 (NVIDIA H100 80GB HBM3)"), "H100");
  EXPECT_EQ(CardName("cuda:0 (Some New Card)"), "SomeNewCard");
  EXPECT_EQ(CardName("cpu:0"), "cpu");
  EXPECT_EQ(SetupKey("llama-7b", 2, "H200", "nvlink"), "llama-7b/2xH200/nvlink");
  EXPECT_EQ(SetupKey("llama-7b", 4, "H200", "nvlink", "cudnn"), "llama-7b/4xH200/nvlink/cudnn");
}

// The table planner plans from the table where it has the setup, and from the fallback where not.
TEST(SplitTable, FallsBackWhereTheTableHasNoCurve) {
  auto table = SplitTable::Parse(R"({"entries": [{"setup": "s/2xH200/nvlink", "context": 1000, "sizes": [600, 400]}]})",
                                 "t.json");
  ASSERT_TRUE(table.ok());
  auto even = std::make_shared<EvenPlanner>();
  TablePlanner planner(*table, "s/2xH200/nvlink", Topology::kChain, even);
  EXPECT_TRUE(planner.Covers(2));
  EXPECT_FALSE(planner.Covers(3));
  auto two = planner.Plan(500, 2, 1);  // below the searched range: the nearest entry's shares
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->bounds, (std::vector<int>{0, 300, 500}));
  EXPECT_EQ(planner.Plan(1000, 2, 1)->planner, "table");
  // Past the longest searched length the fallback plans (the daemon's cost model); without a
  // fallback, the longest entry's shares.
  auto past = planner.Plan(2000, 2, 1);
  ASSERT_TRUE(past.ok());
  EXPECT_EQ(past->bounds, (std::vector<int>{0, 1000, 2000}));
  EXPECT_EQ(TablePlanner(*table, "s/2xH200/nvlink").Plan(2000, 2, 1)->bounds, (std::vector<int>{0, 1200, 2000}));
  auto three = planner.Plan(300, 3, 2);  // no 3-chunk curve: the even planner's plan
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(three->bounds, (std::vector<int>{0, 100, 200, 300}));
  EXPECT_EQ(TablePlanner(*table, "s/2xH200/nvlink").Plan(300, 3, 2).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table->Lookup("s/2xH200/nvlink", 1, 2).status().code(), absl::StatusCode::kInvalidArgument);
}

// kvrd's table planner with the copy transport: the "<link>-copy" curve where the table has one,
// else the same link's (NCCL) curve, else the cost model.
TEST(SplitTable, CopyTransportFallsBackToTheLinksNcclSplits) {
  const std::string path = ::testing::TempDir() + "/copy_fallback.json";
  std::ofstream(path) << R"({"entries": [
      {"setup": "s/2xH200/nvlink", "context": 1000, "sizes": [600, 400]},
      {"setup": "t/2xH200/nvlink-copy", "context": 1000, "sizes": [550, 450]},
      {"setup": "t/2xH200/nvlink", "context": 1000, "sizes": [700, 300]}]})";
  ModelConfig config;
  config.num_layers = 2;
  config.hidden_size = 64;
  config.num_q_heads = config.num_kv_heads = 4;
  config.head_dim = 16;
  config.intermediate_size = 128;
  config.vocab_size = 100;
  auto plan = [&](const std::string& setup, const std::string& fallback) -> std::vector<int> {
    auto planner = MakePlanner("table:" + path, Topology::kChain, config, 2, setup, 2, nullptr, fallback);
    if (!planner.ok()) return {};
    auto p = (*planner)->Plan(1000, 2, 1);
    return p.ok() ? p->bounds : std::vector<int>{};
  };
  EXPECT_EQ(plan("t/2xH200/nvlink-copy", "t/2xH200/nvlink"), (std::vector<int>{0, 550, 1000}));
  EXPECT_EQ(plan("s/2xH200/nvlink-copy", "s/2xH200/nvlink"), (std::vector<int>{0, 600, 1000}));
  const auto cost = plan("u/2xH200/nvlink-copy", "u/2xH200/nvlink");  // neither: the cost model
  ASSERT_EQ(cost.size(), 3u);
  EXPECT_NE(cost[1], 600);
  EXPECT_NE(cost[1], 550);
}

// The table shipped in config/ parses, and every curve in it adds up.
TEST(SplitTable, ShippedTablesParse) {
  const char* src = std::getenv("KVR_SOURCE_DIR");
  ASSERT_NE(src, nullptr) << "KVR_SOURCE_DIR is set by CTest";
  auto table = SplitTable::Load(std::string(src) + "/config/splits/h200.json");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_GE(table->entries().size(), 5u);
  auto sizes = table->Lookup("llama-7b/2xH200/nvlink", 12000, 2);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_EQ((*sizes)[0] + (*sizes)[1], 12000);
  EXPECT_GT((*sizes)[0], (*sizes)[1]);  // the first GPU takes more: its attention is cheaper
  // Every entry: as many chunks as its setup names GPUs ("shape/4xH200/..."), none empty, adding
  // up to its context.
  for (const SplitEntry& e : table->entries()) {
    const size_t slash = e.setup.find('/'), x = e.setup.find('x', slash);
    ASSERT_NE(slash, std::string::npos) << e.setup;
    ASSERT_NE(x, std::string::npos) << e.setup;
    EXPECT_EQ(static_cast<int>(e.sizes.size()), std::atoi(e.setup.substr(slash + 1, x - slash - 1).c_str()))
        << e.setup << " at " << e.context;
    int sum = 0;
    for (int n : e.sizes) {
      EXPECT_GT(n, 0) << e.setup << " at " << e.context;
      sum += n;
    }
    EXPECT_EQ(sum, e.context) << e.setup;
  }
  // A 4-GPU length between searched ones: four chunks that add up, the first the largest with
  // NVLink; with links off (host-staged K/V) the search put the short chunks first.
  auto four = table->Lookup("llama-7b/4xH200/nvlink/cudnn", 12000, 4);
  ASSERT_TRUE(four.ok()) << four.status();
  EXPECT_EQ((*four)[0] + (*four)[1] + (*four)[2] + (*four)[3], 12000);
  EXPECT_EQ(std::max_element(four->begin(), four->end()) - four->begin(), 0);
  auto off = table->Lookup("llama-7b/4xH200/p2p-off/cudnn", 16384, 4);
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_LT((*off)[0], (*off)[3]);
}

}  // namespace
}  // namespace kvr
