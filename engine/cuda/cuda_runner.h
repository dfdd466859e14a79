// CudaRunner: the CUDA backend of ModelRunner on one GPU.
//
// Weights live in one device arena in bf16 or fp16 (converted from the checkpoint at upload);
// the residual stream is fp32; matrix products go through cuBLASLt with fp32 accumulation, the
// output projections accumulating straight into the residual. The KV-cache is CudaKvCache, the
// token-major layout of engine/runtime/kv_cache.h in the compute type.
//
// BeginChunk / LayerQkv / LayerAttnMlp enqueue on the runner's compute stream and return without
// waiting (compute_stream() lets a transport order itself against that work); FinishChunk,
// Decode, ReadKv and Synchronize wait. Decode steps of a batch size are captured once in a CUDA
// graph and replayed (positions, tokens and cache pointers are read from device tables).
// One thread at a time per runner (the device worker's).
//
// Megatron tensor parallelism (tp_size > 1; normally built by tensor_parallel.h): the runner is
// rank r of P and holds only its shard: the fused QKV projection split by heads (query heads
// [r*Hq/P, (r+1)*Hq/P) and their key-value heads, replicated when Hkv < P), gate/up split by
// intermediate features (column parallel), O and down split along their inputs (row parallel).
// The O-projection and MLP-down partial products are written in the compute type, summed over
// the ranks with ncclAllReduce on the compute stream, then added to the fp32 residual (biases
// after the sum). Its KV-cache holds only its key-value heads, and config() describes the shard
// (num_q_heads, num_kv_heads and intermediate_size of the rank). Every op that runs layers
// (BeginChunk..FinishChunk, Decode) must be called on all ranks with the same arguments, each
// rank on its own thread. tp_size == 1 is the whole model, unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/dtype.h"
#include "engine/model/model_config.h"
#include "engine/model/model_folder.h"
#include "engine/model/model_weights.h"
#include "engine/runtime/model_runner.h"

namespace kvr {

struct CudaRunnerOptions {
  DType dtype = DType::kBF16;               // compute type: kBF16 or kF16
  size_t gemm_workspace_bytes = 64ull << 20;
  bool decode_graphs = true;                // capture decode steps in CUDA graphs
  size_t reserve_bytes = 1ull << 30;        // kept free on the device (driver, cuBLAS, fragmentation)
  int attn_variant = 0;                     // prefill attention kernel variant (0 = default)
  // Prefill attention implementation: "mma" (our flash kernel), "cudnn" (cuDNN fused attention,
  // kernels/cudnn_attention.h; shapes it cannot run, e.g. sliding windows, fall back to ours with
  // a warning) or "auto" (cuDNN for chunks of >= 512 queries whose bucketed plan is built or
  // which have >= 2048 queries, ours elsewhere, silently; PrefillAttentionWith). Ours until
  // measured. With cudnn or auto, each KV-cache is zeroed at allocation (cudaMemsetAsync of the
  // whole cache: bytes / HBM write bandwidth, ~2-3 ms per 8 GiB on H200, an estimate, not
  // measured; plus a wait for the compute stream) so that bucketed plans may read rows past a
  // sequence's keys, and the chunk's query/output buffers have bucket-many rows.
  std::string attn_impl = "mma";
  // With cudnn or auto: build cuDNN plans at load (CudnnAttention::Prewarm) for every bucket
  // (BucketGrid) of chunks of [cudnn_prewarm_min_chunk, cudnn_prewarm_max_chunk] queries and up
  // to cudnn_prewarm_tokens keys (capped at the model's max_position when that is known; -1: up
  // to max_position). 0 = no prewarm unless KVR_CUDNN_PREWARM_TOKENS is set in the environment
  // (the same meaning; kvrd has no flag for it yet). Costs about 50 ms per plan (the log says
  // how many and the total time), per runner: each GPU worker prewarms its own.
  int cudnn_prewarm_tokens = 0;
  int cudnn_prewarm_min_chunk = 512;   // kernels::kAutoMinQueries
  int cudnn_prewarm_max_chunk = 4096;
  // Tensor parallelism (see above): rank tp_rank of tp_size, summing over `tp_comm`, an
  // ncclComm_t of tp_size ranks whose rank tp_rank is on this runner's device (opaque here so
  // that this header stays free of nccl.h). The communicator must outlive the runner.
  int tp_rank = 0;
  int tp_size = 1;
  void* tp_comm = nullptr;
};

// Number of CUDA devices; 0 (never an error, never a crash) without a driver or a GPU.
int CudaDeviceCount();

// Uploads `weights` (bound from `folder`) to device `device`.
absl::StatusOr<std::unique_ptr<ModelRunner>> MakeCudaRunner(const ModelFolder& folder,
                                                            const ModelWeights& weights,
                                                            int device,
                                                            const CudaRunnerOptions& options = {});

// The same from a config and weights bound elsewhere (tensor-parallel ranks: `config` is the
// whole model's; the runner keeps its shard as options.tp_rank / tp_size say).
absl::StatusOr<std::unique_ptr<ModelRunner>> MakeCudaRunner(const ModelConfig& config,
                                                            const ModelWeights& weights,
                                                            int device,
                                                            const CudaRunnerOptions& options = {});

// A runner of `config`'s shape with random weights generated on the device (uniform, std 0.02;
// norm weights uniform in [0.5, 1.5], norm biases in [-0.1, 0.1]; other biases 0.01): benchmarks
// and tests that need no checkpoint. With options.tp_size > 1 the rank's shard of exactly the
// weights that tp_size == 1 generates for the same seed (so a tensor-parallel group's logits can
// be checked against one GPU).
absl::StatusOr<std::unique_ptr<ModelRunner>> MakeRandomCudaRunner(
    const ModelConfig& config, int device, const CudaRunnerOptions& options = {},
    uint64_t seed = 1);

// Where a decode step's time goes on the device, for benchmarks (kvr_cuda_bench): with timing on,
// each Decode of a CUDA runner records events on its compute stream around its three device parts
// (a few microseconds of host time a step, so off unless asked for). Milliseconds, last step.
struct CudaDecodeTimes {
  double table_ms = 0;   // the step's table to the device
  double step_ms = 0;    // then the step's kernels (the captured graph, or eager launches), from
                         // the table's arrival, so including any wait for their launch
  double logits_ms = 0;  // the logits to the host
};
// Errors: `runner` is not a CUDA runner; no timed step yet (LastCudaDecodeTimes).
absl::Status SetCudaDecodeTiming(ModelRunner& runner, bool on);
absl::StatusOr<CudaDecodeTimes> LastCudaDecodeTimes(const ModelRunner& runner);

}  // namespace kvr
