#include "engine/serving/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace kvr {
namespace {

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0;
  return p;
}

TEST(SamplerTest, GreedyPicksArgmaxLowestIdOnTies) {
  Sampler s(Greedy(), {});
  EXPECT_EQ(s.Sample(std::vector<float>{0, 3, 1, 3}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{0, 1, 7, 3}), 2);
  EXPECT_EQ(s.steps(), 2);
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedsDiffer) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = 0.1f * (i % 7);
  auto run = [&](uint64_t seed) {
    SamplingParams p;
    p.seed = seed;
    Sampler s(p, {1, 2, 3});
    std::vector<int32_t> out;
    for (int i = 0; i < 20; ++i) out.push_back(s.Sample(logits));
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(SamplerTest, FollowsTheDistribution) {
  // p = (0.25, 0.75).
  std::vector<float> logits = {std::log(0.25f), std::log(0.75f)};
  int ones = 0;
  const int n = 4000;
  for (int seed = 0; seed < n; ++seed) {
    SamplingParams p;
    p.seed = seed;
    Sampler s(p, {});
    ones += s.Sample(logits);
  }
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 0.03);
}

TEST(SamplerTest, TopKKeepsOnlyTheKMostLikely) {
  std::vector<float> logits = {1.0f, 0.9f, 0.8f, 0.7f, 0.6f};
  std::set<int32_t> seen;
  for (int seed = 0; seed < 500; ++seed) {
    SamplingParams p;
    p.top_k = 2;
    p.seed = seed;
    Sampler s(p, {});
    seen.insert(s.Sample(logits));
  }
  EXPECT_EQ(seen, (std::set<int32_t>{0, 1}));
}

TEST(SamplerTest, TopPKeepsTheSmallestPrefixWithTheMass) {
  // p ~ (0.5, 0.3, 0.2): top_p 0.6 keeps {0, 1}; top_p 0.4 keeps {0}.
  std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  for (auto [top_p, expect] :
       {std::pair{0.6f, std::set<int32_t>{0, 1}}, std::pair{0.4f, std::set<int32_t>{0}}}) {
    std::set<int32_t> seen;
    for (int seed = 0; seed < 500; ++seed) {
      SamplingParams p;
      p.top_p = top_p;
      p.seed = seed;
      Sampler s(p, {});
      seen.insert(s.Sample(logits));
    }
    EXPECT_EQ(seen, expect) << "top_p " << top_p;
  }
}

// The sampler's steps 4-6 written the obvious way: double std::exp weights of every token, a
// full sort in (probability desc, id asc) order, top_k, then the top_p prefix summed in that
// order, min_p, and the walk with the same uniform draw. Returns the token and, through
// `margin`, how far (as a fraction of the kept mass) the draw lies from the nearest boundary
// between two tokens: the sampler computes its weights in float, so it may differ only there.
int32_t ReferenceDraw(const std::vector<float>& logits, const SamplingParams& p, int step, double* margin) {
  struct C {
    double p;
    int32_t id;
  };
  const int V = static_cast<int>(logits.size());
  auto clean = [](float x) { return std::isnan(x) ? -std::numeric_limits<double>::infinity() : double{x}; };
  double m = -std::numeric_limits<double>::infinity();
  for (float x : logits) m = std::max(m, clean(x));
  std::vector<C> c;
  for (int i = 0; i < V; ++i) {
    const double w = std::exp((clean(logits[i]) - m) / p.temperature);
    if (w > 0) c.push_back({w, i});
  }
  auto before = [](const C& a, const C& b) { return a.p > b.p || (a.p == b.p && a.id < b.id); };
  const bool ordered = p.top_k > 0 || p.top_p < 1;
  if (ordered) std::sort(c.begin(), c.end(), before);
  if (p.top_k > 0 && p.top_k < static_cast<int>(c.size())) c.resize(p.top_k);
  if (p.top_p < 1) {
    double total = 0, cum = 0;
    for (const C& x : c) total += x.p;
    size_t keep = 0;
    while (keep < c.size() && cum < p.top_p * total) cum += c[keep++].p;
    c.resize(keep);
  }
  std::erase_if(c, [&](const C& x) { return x.p < p.min_p; });  // the most likely weighs 1
  double total = 0;
  for (const C& x : c) total += x.p;
  const double u = Sampler::Uniform(p.seed, step) * total;
  double cum = 0;
  for (const C& x : c) {
    const double before_x = cum;
    cum += x.p;
    if (u < cum) {
      *margin = std::min(u - before_x, cum - u) / total;
      return x.id;
    }
  }
  *margin = 0;
  return c.back().id;
}

TEST(SamplerTest, LargeVocabulariesMatchAStraightforwardSampler) {
  std::mt19937 rng(17);
  int draws = 0, differ = 0;
  for (int trial = 0; trial < 48; ++trial) {
    const int V = trial % 2 ? 128256 : 32000;
    std::vector<float> logits(V);
    std::normal_distribution<float> bulk(0, trial % 3 == 0 ? 0.5f : 2.5f);
    for (float& x : logits) x = bulk(rng);
    if (trial % 3 == 2) {  // a language model's shape: a head of likely tokens over the bulk
      std::uniform_real_distribution<float> head(6, 16);
      for (int i = 0; i < 200; ++i) logits[(i * 7919 + trial) % V] = head(rng);
    }
    logits[trial] = std::numeric_limits<float>::quiet_NaN();  // never drawn
    logits[trial + 1] = -std::numeric_limits<float>::infinity();
    SamplingParams p;
    p.seed = trial;
    p.temperature = std::vector<float>{0.5f, 0.8f, 1.0f, 1.3f}[trial % 4];
    switch (trial % 6) {
      case 1: p.top_p = 0.9f; break;
      case 2: p.top_k = 50; break;
      case 3: p.top_k = 1000; p.top_p = 0.95f; break;
      case 4: p.min_p = 0.05f; break;
      case 5: p.top_p = 0.5f; p.min_p = 0.02f; break;
      default: break;
    }
    Sampler s(p, {});
    for (int step = 0; step < 8; ++step) {
      double margin = 0;
      const int32_t want = ReferenceDraw(logits, p, step, &margin);
      const int32_t got = s.Sample(logits);
      ++draws;
      if (got == want) continue;
      ++differ;
      EXPECT_LT(margin, 1e-5) << "trial " << trial << " step " << step << ": " << got << " vs " << want;
    }
    EXPECT_NE(logits[trial], logits[trial]);  // (the NaN stayed in the input)
  }
  EXPECT_LE(differ, draws / 100) << differ << " of " << draws << " draws differ";
}

TEST(SamplerTest, TopPOverALargeVocabulary) {
  std::vector<float> logits(5000, 0.0f);
  logits[4321] = 20.0f;  // nearly all the mass
  for (int seed = 0; seed < 50; ++seed) {
    SamplingParams p;
    p.top_p = 0.9f;
    p.seed = seed;
    Sampler s(p, {});
    EXPECT_EQ(s.Sample(logits), 4321);
  }
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  // p ~ (0.6, 0.3, 0.1): min_p 0.4 drops token 2 (0.1 < 0.24) and keeps token 1 (0.3 >= 0.24).
  std::vector<float> logits = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  std::set<int32_t> seen;
  for (int seed = 0; seed < 500; ++seed) {
    SamplingParams p;
    p.min_p = 0.4f;
    p.seed = seed;
    Sampler s(p, {});
    seen.insert(s.Sample(logits));
  }
  EXPECT_EQ(seen, (std::set<int32_t>{0, 1}));
}

TEST(SamplerTest, RepetitionPenaltyAppliesToPromptTokens) {
  SamplingParams p = Greedy();
  p.repetition_penalty = 2.0f;
  Sampler s(p, {0});
  // Token 0 (in the prompt): 3 / 2 = 1.5 < 2.
  EXPECT_EQ(s.Sample(std::vector<float>{3, 2, 0}), 1);
  // Now 1 is an output token too: 1.5 vs 1.0 -> 0 wins, 2 is 0.
  EXPECT_EQ(s.Sample(std::vector<float>{3, 2, 0}), 0);
}

TEST(SamplerTest, FrequencyAndPresencePenaltiesApplyToOutputTokens) {
  SamplingParams p = Greedy();
  p.frequency_penalty = 1.0f;
  p.presence_penalty = 0.5f;
  Sampler s(p, {1});  // prompt tokens are not penalized by these
  std::vector<float> logits = {2.0f, 2.2f, 0.0f};
  EXPECT_EQ(s.Sample(logits), 1);  // nothing generated yet
  EXPECT_EQ(s.Sample(logits), 0);  // 1: 2.2 - 1 - 0.5 = 0.7
  EXPECT_EQ(s.Sample(logits), 1);  // 0: 2 - 1.5 = 0.5 < 0.7
}

TEST(SamplerTest, LogprobsComeFromTheRawDistribution) {
  SamplingParams p = Greedy();
  p.logprobs = 2;
  p.repetition_penalty = 5.0f;  // processing must not change the reported logprobs
  Sampler s(p, {0});
  std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  TokenLogprobs lp;
  int32_t t = s.Sample(logits, &lp);
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  EXPECT_EQ(lp.token, t);
  EXPECT_NEAR(lp.logprob, logits[t] - lse, 1e-5);
  ASSERT_EQ(lp.top.size(), 2u);
  EXPECT_EQ(lp.top[0].token, 2);
  EXPECT_EQ(lp.top[1].token, 1);
  EXPECT_NEAR(lp.top[0].logprob, 3.0 - lse, 1e-5);
}

TEST(SamplerTest, UniformIsInRangeAndDeterministic) {
  for (uint64_t step = 0; step < 1000; ++step) {
    double u = Sampler::Uniform(7, step);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
    EXPECT_EQ(u, Sampler::Uniform(7, step));
  }
}

TEST(ValidateSamplingParamsTest, NamesTheFieldAndWhatIsAllowed) {
  auto check = [](auto mutate, const std::string& field) {
    SamplingParams p;
    mutate(p);
    absl::Status s = ValidateSamplingParams(p, 100);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
    EXPECT_NE(s.message().find("allowed"), std::string::npos) << s;
  };
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}, 100).ok());
  check([](SamplingParams& p) { p.max_tokens = 0; }, "max_tokens");
  check([](SamplingParams& p) { p.temperature = -1; }, "temperature");
  check([](SamplingParams& p) { p.temperature = NAN; }, "temperature");
  check([](SamplingParams& p) { p.top_k = -1; }, "top_k");
  check([](SamplingParams& p) { p.top_k = 101; }, "top_k");
  check([](SamplingParams& p) { p.top_p = 0; }, "top_p");
  check([](SamplingParams& p) { p.top_p = 1.5; }, "top_p");
  check([](SamplingParams& p) { p.min_p = -0.1f; }, "min_p");
  check([](SamplingParams& p) { p.repetition_penalty = 0; }, "repetition_penalty");
  check([](SamplingParams& p) { p.presence_penalty = 3; }, "presence_penalty");
  check([](SamplingParams& p) { p.frequency_penalty = -3; }, "frequency_penalty");
  check([](SamplingParams& p) { p.logprobs = 21; }, "logprobs");
  check([](SamplingParams& p) { p.stop = {""}; }, "stop");
  check([](SamplingParams& p) { p.stop_token_ids = {100}; }, "stop_token_ids");
}

}  // namespace
}  // namespace kvr
