// What the CUDA K/V transports (engine/cuda/nccl, engine/cuda/peer) share: a CUDA error as an
// absl::Status, and the measurement of how long a worker's compute stream stalled on K/V.
// Header-only; no NCCL.
#pragma once

#include <cuda_runtime.h>

#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace kvr {

inline absl::Status CudaOk(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

// Per layer, two timing events on the compute stream around its wait for that layer's incoming
// K/V (WaitPrefix). Events are made on the current device at Init.
class StallClock {
 public:
  StallClock() = default;
  StallClock(const StallClock&) = delete;
  StallClock& operator=(const StallClock&) = delete;
  ~StallClock() {
    for (auto& [a, b] : events_) {
      cudaEventDestroy(a);
      cudaEventDestroy(b);
    }
  }
  absl::Status Init(int layers) {
    events_.resize(layers);
    for (auto& [a, b] : events_) {
      KVR_RETURN_IF_ERROR(CudaOk(cudaEventCreate(&a), "cudaEventCreate"));
      KVR_RETURN_IF_ERROR(CudaOk(cudaEventCreate(&b), "cudaEventCreate"));
    }
    return absl::OkStatus();
  }
  absl::Status Begin(int layer, cudaStream_t compute) {
    return CudaOk(cudaEventRecord(events_[layer].first, compute), "cudaEventRecord");
  }
  absl::Status End(int layer, cudaStream_t compute) {
    return CudaOk(cudaEventRecord(events_[layer].second, compute), "cudaEventRecord");
  }
  // The stalls' total, once the compute stream has run past them.
  double Seconds() const {
    double wait = 0;
    for (const auto& [a, b] : events_) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, a, b) == cudaSuccess) wait += ms * 1e-3;
    }
    return wait;
  }

 private:
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> events_;  // [layer]
};

// An endpoint's Finish: waits for its transfer streams (`what` names them in an error) and its
// compute stream, then returns the compute stream's total stall on K/V.
inline absl::StatusOr<double> DrainAndTime(const std::vector<cudaStream_t>& transfer_streams, const char* what,
                                           cudaStream_t compute, const StallClock& stalls) {
  for (cudaStream_t s : transfer_streams) KVR_RETURN_IF_ERROR(CudaOk(cudaStreamSynchronize(s), what));
  KVR_RETURN_IF_ERROR(CudaOk(cudaStreamSynchronize(compute), "waiting for the compute stream"));
  return stalls.Seconds();
}

}  // namespace kvr
