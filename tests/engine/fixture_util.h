// Test helpers: the tiny Hugging Face fixtures under tests/fixtures and their references.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/cpu/cpu_runner.h"
#include "engine/model/model_folder.h"
#include "engine/model/model_weights.h"
#include "engine/runtime/model_runner.h"

namespace kvr::testing {

// The four families of tests/fixtures/make_fixtures.py.
inline const std::vector<std::string>& FixtureFamilies() {
  static const std::vector<std::string> kFamilies = {"llama2", "llama3", "mistral", "falcon"};
  return kFamilies;
}

std::string FixtureDir(const std::string& family);

// transformers' fp32 reference, as make_fixtures.py recorded it.
struct Reference {
  std::vector<int32_t> prompt;
  std::vector<float> prefill_logits;            // (V)
  std::vector<int32_t> greedy_tokens;           // 16
  std::vector<std::vector<float>> step_logits;  // 16 x (V): logits that chose each greedy token
  std::vector<double> margins;
};
Reference LoadReference(const std::string& family);

// A loaded fixture: folder, bound weights and `workers` CPU runners. Worker `faulty` (if in
// range) gets the fault-injection fields of `fault` (fail_at_layer, fail_on_token, hang_seconds).
struct LoadedModel {
  std::unique_ptr<ModelFolder> folder;
  ModelWeights weights;
  std::vector<std::unique_ptr<ModelRunner>> runners;
  std::vector<ModelRunner*> runner_ptrs() const;
};
LoadedModel LoadCpuModel(const std::string& dir, int workers, int faulty = -1,
                         const CpuRunnerOptions& fault = {});

// max |a - b|.
double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace kvr::testing
