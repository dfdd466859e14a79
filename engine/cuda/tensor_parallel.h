// Megatron tensor parallelism on the CUDA backend: the baseline that KV-Runahead is measured
// against besides one GPU and TSP (issue 4). One CudaRunner per GPU, each holding a shard of
// every layer (see cuda_runner.h): QKV and gate/up split by output (heads, intermediate
// features), O and down split by input, and two all-reduces of the hidden state per layer
// (after the O projection and after the MLP), in the compute type, on each rank's compute
// stream. Embedding, norms and lm_head are replicated; every rank computes the whole residual
// stream, so rank 0's logits are the result.
//
// Head split: query heads [r*Hq/P, (r+1)*Hq/P) on rank r. Key-value heads: Hkv/P per rank when
// P divides Hkv; when Hkv < P and Hkv divides P (GQA/MQA with few K/V heads), each rank keeps
// the one K/V head its query heads read (replicated, as Megatron does). Anything else is
// refused: Falcon-7B's 71 query heads cannot be split over 2, 4 or 8 GPUs at all (TSP, the
// all-gather KV-Runahead topology, is the baseline there).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/cuda/cuda_runner.h"
#include "engine/model/model_config.h"
#include "engine/model/model_weights.h"
#include "engine/runtime/device_worker.h"
#include "engine/runtime/kv_cache.h"
#include "engine/runtime/model_runner.h"

namespace kvr {

// What rank `rank` of `size` holds of a model.
struct TensorParallelShard {
  int rank = 0, size = 1;
  int q_head0 = 0, q_heads = 0;    // query heads [q_head0, q_head0 + q_heads) of the model
  int kv_head0 = 0, kv_heads = 0;  // key-value heads [kv_head0, kv_head0 + kv_heads)
  int ff0 = 0, ff = 0;             // intermediate features [ff0, ff0 + ff)
  ModelConfig local;               // the model with the shard's head counts and intermediate size
};

// The shard of rank `rank` of `size`, or InvalidArgument saying why `config` cannot be split
// (query heads, key-value heads or intermediate size not divisible) and what to use instead.
absl::StatusOr<TensorParallelShard> TensorParallelShardOf(const ModelConfig& config, int rank, int size);

// One tensor-parallel prefill's result.
struct TensorParallelPrefill {
  std::vector<float> logits;                     // (V): rank 0's logits of the last token
  std::vector<std::unique_ptr<KvCache>> caches;  // rank r's cache (its K/V heads) on GPU r
  double seconds = 0;  // from the first layer's launch to rank 0's logits on the host (and every
                       // rank idle), as PrefillResult::chain_seconds; cache allocation excluded
};

// P runners on GPUs 0..P-1, their NCCL communicator and one DeviceWorker thread per GPU.
// Destroys the runners before the communicator.
class TensorParallelGroup {
 public:
  ~TensorParallelGroup();
  TensorParallelGroup(const TensorParallelGroup&) = delete;
  TensorParallelGroup& operator=(const TensorParallelGroup&) = delete;

  int size() const { return static_cast<int>(runners_.size()); }
  ModelRunner& rank(int r) { return *runners_[r]; }
  const TensorParallelShard& shard(int r) const { return shards_[r]; }

  // Prefill of `tokens` (C) on every rank at once: each rank's thread runs BeginChunk(whole
  // prompt) / LayerQkv / LayerAttnMlp for every layer / FinishChunk (rank 0) or Synchronize.
  // Caches get room for `cache_capacity` >= C tokens. Validation and allocation errors (token
  // ids, capacity, workspace) come back before any rank starts a layer. A failure on one rank
  // after that aborts the communicator (ncclCommAbort), so that no rank hangs in an all-reduce;
  // the group then refuses further work and must be rebuilt.
  absl::StatusOr<TensorParallelPrefill> Prefill(absl::Span<const int32_t> tokens, int cache_capacity);

  // Runs fn(r) on every rank's thread at once and waits for all; the first error is returned
  // (with the rank) and aborts the communicator.
  absl::Status RunOnRanks(const std::function<absl::Status(int)>& fn);

 private:
  friend absl::StatusOr<std::unique_ptr<TensorParallelGroup>> MakeTensorParallelGroup(
      const ModelConfig&, const ModelWeights*, uint64_t, int, const CudaRunnerOptions&);
  TensorParallelGroup() = default;
  void Abort();

  std::vector<void*> comms_;  // ncclComm_t per rank
  std::vector<TensorParallelShard> shards_;
  std::vector<std::unique_ptr<ModelRunner>> runners_;
  std::vector<std::unique_ptr<DeviceWorker>> threads_;
  bool broken_ = false;
};

// Tensor parallelism over GPUs 0..num_gpus-1 with the checkpoint's weights (each rank uploads
// its shard). `config` is the whole model's; refuses configs whose heads do not divide.
absl::StatusOr<std::unique_ptr<TensorParallelGroup>> MakeTensorParallelCudaRunners(
    const ModelConfig& config, const ModelWeights& weights, int num_gpus,
    const CudaRunnerOptions& options = {});

// The same with random weights: rank r holds its shard of exactly the weights that
// MakeRandomCudaRunner(config, device, options, seed) generates.
absl::StatusOr<std::unique_ptr<TensorParallelGroup>> MakeRandomTensorParallelCudaRunners(
    const ModelConfig& config, int num_gpus, const CudaRunnerOptions& options = {}, uint64_t seed = 1);

// Implementation of both factories (weights == nullptr: random with `seed`).
absl::StatusOr<std::unique_ptr<TensorParallelGroup>> MakeTensorParallelGroup(
    const ModelConfig& config, const ModelWeights* weights, uint64_t seed, int num_gpus,
    const CudaRunnerOptions& options);

}  // namespace kvr
