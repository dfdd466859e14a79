// The CPU reference backend against Hugging Face transformers' own implementation of each family
// (tests/fixtures, recorded by make_fixtures.py in float32 on the same rounded weights).
//
// Tolerance: 2e-4 absolute on logits of magnitude ~1-10. Both sides compute in float32 from the
// same weights; only summation order (our 8-lane dot products versus BLAS) and libm's exp/erf/cos
// differ, each worth a few ulps per op, compounding over 2 layers to ~1e-5. 2e-4 leaves a 10x
// margin and is still 100x below the smallest top-1 margin the fixtures allow (2e-3), so the
// greedy tokens must match exactly.
#include <algorithm>

#include "engine/prefill/coordinator.h"
#include "engine/prefill/inproc_transport.h"
#include "engine/prefill/planner.h"
#include "gtest/gtest.h"
#include "tests/engine/fixture_util.h"

namespace kvr::testing {
namespace {

constexpr double kLogitTolerance = 2e-4;

int Argmax(const std::vector<float>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

class CpuVsTransformers : public ::testing::TestWithParam<std::string> {};

TEST_P(CpuVsTransformers, PrefillLogitsAndGreedyTokens) {
  const std::string family = GetParam();
  const Reference ref = LoadReference(family);
  LoadedModel m = LoadCpuModel(FixtureDir(family), 1);
  ASSERT_EQ(m.runners.size(), 1u);
  ModelRunner& runner = *m.runners[0];

  PrefillCoordinator coordinator(m.runner_ptrs(), MakeInProcessFabric());
  const int C = static_cast<int>(ref.prompt.size());
  auto plan = EvenPlanner().Plan(C, 1, 0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto result = coordinator.Run(ref.prompt, *plan, C + static_cast<int>(ref.greedy_tokens.size()));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_LE(MaxAbsDiff(result->logits, ref.prefill_logits), kLogitTolerance) << family << " prefill";

  std::vector<float> logits = result->logits;
  for (size_t step = 0; step < ref.greedy_tokens.size(); ++step) {
    EXPECT_LE(MaxAbsDiff(logits, ref.step_logits[step]), kLogitTolerance) << family << " step " << step;
    const int token = Argmax(logits);
    ASSERT_EQ(token, ref.greedy_tokens[step]) << family << " greedy token " << step;
    if (step + 1 == ref.greedy_tokens.size()) break;
    DecodeSlot slot{result->cache.get(), token, C + static_cast<int>(step)};
    absl::Span<const float> out;
    ASSERT_TRUE(runner.Decode(absl::MakeConstSpan(&slot, 1), &out).ok());
    logits.assign(out.begin(), out.end());
  }
}

INSTANTIATE_TEST_SUITE_P(Families, CpuVsTransformers, ::testing::ValuesIn(FixtureFamilies()));

}  // namespace
}  // namespace kvr::testing
