// Engine: a loaded model ready to serve, the one object that kvrd, kvr-generate and kvr-bench
// build: the model folder (mapped), its weights bound per architecture, one ModelRunner per
// worker (CPU reference or CUDA device), the prefill coordinator with its transport, the
// planner, and the tokenizer when the folder has one.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model/model_folder.h"
#include "engine/model/model_weights.h"
#include "engine/prefill/coordinator.h"
#include "engine/prefill/cost_model.h"
#include "engine/prefill/planner.h"
#include "engine/runtime/model_runner.h"

namespace kvr {

class Tokenizer;
class CudaBackend;

struct EngineOptions {
  std::string model_dir;
  std::string backend = "auto";     // auto (CUDA when a GPU is present), cpu, cuda
  int workers = 0;                  // prefill workers: 0 = every GPU, or 2 on the CPU
  std::string partition = "even";   // even | cost | table:PATH | fixed:n1,n2,...
  std::string topology = "chain";   // chain | fan-out
  std::string transport = "auto";   // CUDA K/V transport: auto | nccl | copy (engine/core/cuda_backend.h)
  int tsp_below = 0;                // prompts shorter than this: TSP (CrossoverPlanner); 0 = never
  std::string attn_impl = "mma";    // CUDA prefill attention: mma | cudnn | auto (cuda_runner.h)
  // CUDA backend with partition cost or table: measure the cost model's compute rates on GPU 0
  // at load (engine/prefill/calibration.h, a few seconds) instead of using typical H100 rates.
  bool calibrate = true;
  int cpu_threads = 1;              // matrix-product threads per CPU worker
  bool load_tokenizer = true;       // false: token ids only
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Load(const EngineOptions& options);
  ~Engine();

  const ModelConfig& config() const { return folder_->config(); }
  const ModelFolder& folder() const { return *folder_; }
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }  // null without tokenizer.json
  const EngineOptions& options() const { return options_; }
  const std::string& backend() const { return backend_; }          // "cpu" or "cuda"
  int num_workers() const { return coordinator_->num_workers(); }
  PrefillCoordinator& coordinator() { return *coordinator_; }
  const Planner& planner() const { return *planner_; }
  ModelRunner& runner(int worker) { return *runners_[worker]; }

  // Plans the split (the last worker rotates from call to call, so decode work spreads over
  // devices) and runs the KV-Runahead prefill; the cache gets room for `cache_capacity` tokens.
  absl::StatusOr<PrefillResult> Prefill(absl::Span<const int32_t> tokens, int cache_capacity);

  // One decode step for `batch`, all of whose caches live on `worker`; logits (batch, V), held by
  // that worker's runner until its next Decode (ModelRunner::Decode).
  absl::Status Decode(int worker, absl::Span<const DecodeSlot> batch, absl::Span<const float>* logits);

 private:
  Engine() = default;
  EngineOptions options_;
  std::string backend_;
  std::unique_ptr<CudaBackend> cuda_;  // the loaded CUDA module, when the backend is CUDA
  std::unique_ptr<ModelFolder> folder_;
  ModelWeights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<std::unique_ptr<ModelRunner>> runners_;
  std::unique_ptr<PrefillCoordinator> coordinator_;
  std::unique_ptr<Planner> planner_;
  std::atomic<int> next_last_worker_{0};
};

// Parses EngineOptions::partition into a planner for `config`. `setup` (setup_key.h: shape,
// workers x card, link) and `workers` select the curve of a table:PATH split table;
// `fallback_setup` (if not empty) is used where the table has no curve for `setup` but one for it.
absl::StatusOr<std::unique_ptr<Planner>> MakePlanner(const std::string& partition, Topology topology,
                                                     const ModelConfig& config, int element_bytes,
                                                     const std::string& setup = "", int workers = 1,
                                                     const DeviceCosts* calibrated = nullptr,
                                                     const std::string& fallback_setup = "");

}  // namespace kvr
