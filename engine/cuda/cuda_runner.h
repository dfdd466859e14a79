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
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

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
};

// Number of CUDA devices; 0 (never an error, never a crash) without a driver or a GPU.
int CudaDeviceCount();

// Uploads `weights` (bound from `folder`) to device `device`.
absl::StatusOr<std::unique_ptr<ModelRunner>> MakeCudaRunner(const ModelFolder& folder,
                                                            const ModelWeights& weights,
                                                            int device,
                                                            const CudaRunnerOptions& options = {});

// A runner of `config`'s shape with random weights generated on the device (uniform, std 0.02;
// norm weights 1): benchmarks and tests that need no checkpoint.
absl::StatusOr<std::unique_ptr<ModelRunner>> MakeRandomCudaRunner(
    const ModelConfig& config, int device, const CudaRunnerOptions& options = {},
    uint64_t seed = 1);

}  // namespace kvr
