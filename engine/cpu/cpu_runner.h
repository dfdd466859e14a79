// CpuRunner: the CPU reference backend. Weights converted once to fp32 host arrays; the
// KV-cache is fp32 host memory in the layout of engine/runtime/kv_cache.h. Readable above all:
// one function per layer stage, shapes in comments. It is the oracle for the CUDA backend and the
// backend that CI runs end to end.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/model/model_folder.h"
#include "engine/model/model_weights.h"
#include "engine/runtime/model_runner.h"

namespace kvr {

struct CpuRunnerOptions {
  int threads = 1;        // threads for the matrix products of one chunk
  int device_index = 0;   // the worker index this runner serves (reported as device())
};

absl::StatusOr<std::unique_ptr<ModelRunner>> MakeCpuRunner(const ModelConfig& config,
                                                           const ModelWeights& weights,
                                                           const CpuRunnerOptions& options);

}  // namespace kvr
