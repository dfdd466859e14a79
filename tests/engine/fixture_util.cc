#include "tests/engine/fixture_util.h"

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "engine/cpu/cpu_runner.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvr::testing {

std::string FixtureDir(const std::string& family) {
  const char* root = std::getenv("KVR_SOURCE_DIR");
  return std::string(root ? root : ".") + "/tests/fixtures/" + family;
}

Reference LoadReference(const std::string& family) {
  std::ifstream in(FixtureDir(family) + "/reference.json");
  EXPECT_TRUE(in.good()) << "missing reference for " << family;
  nlohmann::json j = nlohmann::json::parse(in);
  Reference r;
  r.prompt = j["prompt"].get<std::vector<int32_t>>();
  r.prefill_logits = j["prefill_logits"].get<std::vector<float>>();
  r.greedy_tokens = j["greedy_tokens"].get<std::vector<int32_t>>();
  r.step_logits = j["step_logits"].get<std::vector<std::vector<float>>>();
  r.margins = j["top1_margins"].get<std::vector<double>>();
  return r;
}

std::vector<ModelRunner*> LoadedModel::runner_ptrs() const {
  std::vector<ModelRunner*> out;
  for (const auto& r : runners) out.push_back(r.get());
  return out;
}

LoadedModel LoadCpuModel(const std::string& dir, int workers, int faulty,
                         const CpuRunnerOptions& fault) {
  LoadedModel m;
  auto folder = ModelFolder::Open(dir);
  EXPECT_TRUE(folder.ok()) << folder.status();
  if (!folder.ok()) return m;
  m.folder = std::move(*folder);
  auto weights = BindWeights(*m.folder);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return m;
  m.weights = std::move(*weights);
  for (int w = 0; w < workers; ++w) {
    CpuRunnerOptions o{1, w};
    if (w == faulty) {
      o.fail_at_layer = fault.fail_at_layer;
      o.fail_on_token = fault.fail_on_token;
      o.hang_seconds = fault.hang_seconds;
    }
    auto runner = MakeCpuRunner(m.folder->config(), m.weights, o);
    EXPECT_TRUE(runner.ok()) << runner.status();
    m.runners.push_back(std::move(*runner));
  }
  return m;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

}  // namespace kvr::testing
