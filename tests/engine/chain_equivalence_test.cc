// The KV-Runahead chain equals the single worker: for every family, 1..4 workers, even,
// cost-model and random splits (1-token chunks included), chain and fan-out topologies and every
// choice of the last worker, the first token's logits and the final KV-cache of the worker that
// ends the chain equal those of a one-worker prefill. The CPU ops compute each element with the
// same float operations whatever the chunking, so equality here is exact, bit for bit.
#include <random>

#include "engine/prefill/coordinator.h"
#include "engine/prefill/cost_model.h"
#include "engine/prefill/inproc_transport.h"
#include "engine/prefill/planner.h"
#include "gtest/gtest.h"
#include "tests/engine/fixture_util.h"

namespace kvr::testing {
namespace {

struct Snapshot {
  std::vector<float> logits;
  std::vector<std::vector<float>> k, v;  // per layer, (C, Hkv, D)
};

Snapshot Prefill(PrefillCoordinator& coordinator, const std::vector<int32_t>& prompt, const PrefillPlan& plan) {
  Snapshot s;
  auto result = coordinator.Run(prompt, plan, static_cast<int>(prompt.size()) + 4);
  EXPECT_TRUE(result.ok()) << result.status() << " for " << plan.ToString();
  if (!result.ok()) return s;
  EXPECT_EQ(result->owner, plan.last_worker());
  EXPECT_EQ(result->workers.size(), static_cast<size_t>(plan.num_chunks()));
  s.logits = result->logits;
  ModelRunner& owner = coordinator.runner(result->owner);
  const int C = static_cast<int>(prompt.size());
  for (int l = 0; l < owner.config().num_layers; ++l) {
    std::vector<float> k, v;
    EXPECT_TRUE(owner.ReadKv(*result->cache, l, 0, C, &k, &v).ok());
    s.k.push_back(k);
    s.v.push_back(v);
  }
  return s;
}

std::vector<int> RandomSizes(int C, int p, std::mt19937& rng) {
  // p - 1 distinct cut points in [1, C); the first draw is forced to 1 sometimes so 1-token chunks
  // appear.
  std::vector<int> cuts;
  std::uniform_int_distribution<int> pick(1, C - 1);
  if (rng() % 2 && p > 1) cuts.push_back(1);
  while (static_cast<int>(cuts.size()) < p - 1) {
    int c = pick(rng);
    if (std::find(cuts.begin(), cuts.end(), c) == cuts.end()) cuts.push_back(c);
  }
  std::sort(cuts.begin(), cuts.end());
  std::vector<int> sizes;
  int prev = 0;
  for (int c : cuts) { sizes.push_back(c - prev); prev = c; }
  sizes.push_back(C - prev);
  return sizes;
}

class ChainEquivalence : public ::testing::TestWithParam<std::string> {};

TEST_P(ChainEquivalence, EveryPlanMatchesOneWorker) {
  const std::string family = GetParam();
  LoadedModel m = LoadCpuModel(FixtureDir(family), 4);
  ASSERT_EQ(m.runners.size(), 4u);
  const ModelConfig& config = m.folder->config();
  std::mt19937 rng(7);
  std::vector<int32_t> prompt(37);
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % config.vocab_size);
  const int C = static_cast<int>(prompt.size());

  PrefillCoordinator coordinator(m.runner_ptrs(), MakeInProcessFabric());
  const Snapshot base = Prefill(coordinator, prompt, *FixedPlanner({C}).Plan(C, 4, 0));
  ASSERT_FALSE(base.logits.empty());

  const CostModelPlanner cost(LayerShape::Of(config, 4), DeviceCosts{});
  int plans = 0;
  for (int p = 1; p <= 4; ++p) {
    for (Topology topology : {Topology::kChain, Topology::kFanOut, Topology::kAllGather}) {
      for (int last = 0; last < 4; ++last) {
        std::vector<PrefillPlan> candidates = {*EvenPlanner(topology).Plan(C, p, last % p),
                                               *FixedPlanner(RandomSizes(C, p, rng), topology).Plan(C, p, last % p)};
        auto planned = cost.Plan(C, p, last % p);
        ASSERT_TRUE(planned.ok()) << planned.status();
        candidates.push_back(*planned);
        for (const PrefillPlan& plan : candidates) {
          // Plans made for p workers run on a 4-worker coordinator: same worker indices.
          const Snapshot s = Prefill(coordinator, prompt, plan);
          ++plans;
          EXPECT_EQ(s.logits, base.logits) << family << " " << plan.ToString();
          ASSERT_EQ(s.k.size(), base.k.size());
          for (size_t l = 0; l < s.k.size(); ++l) {
            EXPECT_EQ(s.k[l], base.k[l]) << family << " layer " << l << " K, " << plan.ToString();
            EXPECT_EQ(s.v[l], base.v[l]) << family << " layer " << l << " V, " << plan.ToString();
          }
        }
      }
    }
  }
  EXPECT_EQ(plans, 4 * 3 * 4 * 3);
}

TEST(ChainEquivalence, DecodeContinuesInTheOwnersCache) {
  LoadedModel m = LoadCpuModel(FixtureDir("llama3"), 3);
  const Reference ref = LoadReference("llama3");
  PrefillCoordinator coordinator(m.runner_ptrs(), MakeInProcessFabric());
  const int C = static_cast<int>(ref.prompt.size());
  auto plan = FixedPlanner({11, 1, C - 12}).Plan(C, 3, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto result = coordinator.Run(ref.prompt, *plan, C + 8);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->owner, 1);
  std::vector<float> logits = result->logits;
  for (int step = 0; step < 8; ++step) {
    const int token = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    ASSERT_EQ(token, ref.greedy_tokens[step]) << "step " << step;
    DecodeSlot slot{result->cache.get(), token, C + step};
    absl::Span<const float> out;
    ASSERT_TRUE(coordinator.RunOn(result->owner, [&] {
      return coordinator.runner(result->owner).Decode(absl::MakeConstSpan(&slot, 1), &out);
    }).ok());
    logits.assign(out.begin(), out.end());
  }
}

INSTANTIATE_TEST_SUITE_P(Families, ChainEquivalence, ::testing::ValuesIn(FixtureFamilies()));

}  // namespace
}  // namespace kvr::testing
