// Calibration of the cost model's compute rates (cost_model.h) on one device: a few chunks of
// random tokens run through every layer of `runner`, timed on the host, and fitted by least
// squares on relative error to
//     t / L = n * G * g + pairs * A * a + o
// where n = chunk tokens, pairs = query-key pairs of its bottom-right causal block
// (n * s + n (n + 1) / 2 for a chunk at offset s), G = gemm_flops per token, A = attention
// flops per pair (LayerShape), and the unknowns g = 1 / gemm rate, a = 1 / attention rate,
// o = per-layer overhead. Link rates are not measured here (kvr-bench measures them with NCCL);
// `base` supplies them.
//
// Chunks: the default list spans what long-prompt splits produce (up to 8k tokens, prefixes up
// to 24k); chunks longer than max_tokens (for instance the model's context) are skipped. Cost:
// 4 runs of each chunk (the first untimed), a few seconds on one GPU for a 7B model.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/prefill/cost_model.h"
#include "engine/runtime/model_runner.h"

namespace kvr {

struct CalibrationChunk {
  int n = 0;  // tokens in the chunk
  int s = 0;  // its offset (prefix length)
};

std::vector<CalibrationChunk> DefaultCalibrationChunks();

struct CalibrationPoint {
  CalibrationChunk chunk;
  double measured_s = 0;  // median wall time of the chunk through every layer
  double fitted_s = 0;    // the fitted model's time for it
};

struct Calibration {
  DeviceCosts costs;
  std::vector<CalibrationPoint> points;
  std::string ToString() const;  // rates and each point, measured vs fitted
};

// Runs on the calling thread, which must be allowed to use the runner's device. `progress`
// (optional) is called after each chunk with (done, total). `seconds_now` (optional) is the
// clock the chunks are timed with, in seconds: the steady clock unless a test supplies one (a
// fake runner then advances it by exactly the time it models, so that the fit is checked
// independently of how busy the test machine is).
absl::StatusOr<Calibration> CalibrateCompute(ModelRunner& runner, const LayerShape& shape, DeviceCosts base,
                                             int max_tokens, std::vector<CalibrationChunk> chunks = {},
                                             const std::function<void(int, int)>& progress = nullptr,
                                             const std::function<double()>& seconds_now = nullptr);

}  // namespace kvr
