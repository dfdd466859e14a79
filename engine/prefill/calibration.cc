#include "engine/prefill/calibration.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/util/clock.h"
#include "engine/util/median.h"
#include "engine/util/status_macros.h"

namespace kvr {
namespace {

double Pairs(const CalibrationChunk& c) { return double(c.n) * c.s + double(c.n) * (c.n + 1) / 2; }

}  // namespace

std::vector<CalibrationChunk> DefaultCalibrationChunks() {
  return {{1024, 0}, {4096, 0}, {8192, 0}, {2048, 8192}, {4096, 12288}, {2048, 24576}};
}

std::string Calibration::ToString() const {
  std::string s = costs.ToString();
  for (const CalibrationPoint& p : points) {
    absl::StrAppend(&s, absl::StrFormat("; n=%d at s=%d: %.2f ms measured, %.2f fitted", p.chunk.n, p.chunk.s,
                                        p.measured_s * 1e3, p.fitted_s * 1e3));
  }
  return s;
}

absl::StatusOr<Calibration> CalibrateCompute(ModelRunner& runner, const LayerShape& shape, DeviceCosts base,
                                             int max_tokens, std::vector<CalibrationChunk> chunks,
                                             const std::function<void(int, int)>& progress,
                                             const std::function<double()>& seconds_now) {
  const SteadyClock::time_point epoch = SteadyClock::now();
  auto now = [&] {
    if (seconds_now) return seconds_now();
    return std::chrono::duration<double>(SteadyClock::now() - epoch).count();
  };
  if (chunks.empty()) chunks = DefaultCalibrationChunks();
  chunks.erase(std::remove_if(chunks.begin(), chunks.end(),
                              [&](const CalibrationChunk& c) { return c.n < 1 || c.s + c.n > max_tokens; }),
               chunks.end());
  if (chunks.size() < 3) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot calibrate the cost model: fewer than 3 calibration chunks fit in ", max_tokens, " tokens"));
  }
  Calibration cal;
  std::mt19937 rng(3);
  int done = 0;
  for (const CalibrationChunk& c : chunks) {
    KVR_ASSIGN_OR_RETURN(auto cache, runner.NewKvCache(c.s + c.n));
    std::vector<int32_t> tokens(c.n);
    for (auto& t : tokens) t = static_cast<int32_t>(rng() % runner.config().vocab_size);
    std::vector<double> runs;
    for (int rep = 0; rep < 4; ++rep) {
      KVR_RETURN_IF_ERROR(runner.Synchronize());
      const double t0 = now();
      KVR_ASSIGN_OR_RETURN(auto state, runner.BeginChunk(tokens, c.s, *cache));
      for (int l = 0; l < shape.num_layers; ++l) {
        KVR_RETURN_IF_ERROR(runner.LayerQkv(*state, l));
        KVR_RETURN_IF_ERROR(runner.LayerAttnMlp(*state, l));
      }
      KVR_RETURN_IF_ERROR(runner.Synchronize());
      if (rep > 0) runs.push_back(now() - t0);
    }
    cal.points.push_back({c, Median(runs), 0});
    if (progress) progress(++done, static_cast<int>(chunks.size()));
  }
  // Normal equations of the relative-error least squares: each equation divided by its time.
  double ata[3][3] = {}, atb[3] = {};
  for (const CalibrationPoint& p : cal.points) {
    const double y = p.measured_s / shape.num_layers;
    const double row[3] = {p.chunk.n * (shape.gemm_flops_qkv + shape.gemm_flops_rest) / y,
                           Pairs(p.chunk) * shape.attn_flops_per_pair / y, 1 / y};
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) ata[i][j] += row[i] * row[j];
      atb[i] += row[i];
    }
  }
  for (int i = 0; i < 3; ++i) {  // Gaussian elimination, 3x3
    if (ata[i][i] == 0) return absl::InternalError("calibration: singular fit");
    for (int r = i + 1; r < 3; ++r) {
      const double f = ata[r][i] / ata[i][i];
      for (int c = i; c < 3; ++c) ata[r][c] -= f * ata[i][c];
      atb[r] -= f * atb[i];
    }
  }
  double x[3];
  for (int i = 2; i >= 0; --i) {
    double v = atb[i];
    for (int c = i + 1; c < 3; ++c) v -= ata[i][c] * x[c];
    x[i] = v / ata[i][i];
  }
  if (!(x[0] > 0) || !(x[1] > 0)) {
    return absl::InternalError(absl::StrCat("calibration: the fit gave a non-positive rate (1/gemm ", x[0],
                                            ", 1/attention ", x[1], "); the timings are too noisy"));
  }
  cal.costs = base;
  cal.costs.gemm_flops_per_s = 1 / x[0];
  cal.costs.attn_flops_per_s = 1 / x[1];
  cal.costs.layer_overhead_s = std::max(x[2], 0.0);
  for (CalibrationPoint& p : cal.points) {
    p.fitted_s = shape.num_layers * (p.chunk.n * (shape.gemm_flops_qkv + shape.gemm_flops_rest) * x[0] +
                                     Pairs(p.chunk) * shape.attn_flops_per_pair * x[1] + cal.costs.layer_overhead_s);
  }
  return cal;
}

}  // namespace kvr
