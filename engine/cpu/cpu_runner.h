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
  // Fault injection, for tests only: a prefill chunk on this worker that holds the token id
  // `fail_on_token` (-1: any prefill chunk) fails at layer `fail_at_layer` with INTERNAL, as a
  // device error would; decode steps are not affected. -1 (the default): off. With
  // `hang_seconds` > 0 it hangs instead: that layer stalls for hang_seconds (no error, no
  // progress, as a stuck device or a lost transfer), then goes on. When fail_at_layer is left at
  // -1, MakeCpuRunner reads all three once from the environment variable
  //   KVR_TESTING_CPU_FAULT=worker:layer[:token[:hang_seconds]]   e.g. "1:1:7" or "1:1:-1:30"
  // which applies to the runner whose device_index is `worker` (how tests reach kvrd's runners).
  int fail_at_layer = -1;
  int fail_on_token = -1;
  double hang_seconds = 0;
};

absl::StatusOr<std::unique_ptr<ModelRunner>> MakeCpuRunner(const ModelConfig& config,
                                                           const ModelWeights& weights,
                                                           const CpuRunnerOptions& options);

}  // namespace kvr
