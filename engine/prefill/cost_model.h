// A cost model of KV-Runahead prefill, and the split search that uses it.
//
// Per layer, chain position k with chunk [s_k, e_k), n_k = e_k - s_k tokens:
//   qkv_k  = overhead/2 + n_k * gemm_flops_qkv / gemm_rate                (before its send)
//   rest_k = overhead/2 + n_k * gemm_flops_rest / gemm_rate
//            + pairs_k * attn_flops_per_pair / attn_rate                   (after its wait)
//   pairs_k = query-key pairs of the bottom-right causal block = n_k * s_k + n_k (n_k + 1) / 2
// A transfer of T tokens costs latency + T * kv_bytes_per_token / link_rate and starts when the
// sender's K/V (and, for a forwarded prefix, its arrival) is ready and its link is free.
// SimulatePrefill plays this out event by event for every layer, so the chain's fill latency,
// waits and link queueing are all in the predicted TTFT, not only max_k of the per-layer cost.
// The rates are calibrated on the device (kvr-bench --calibrate); planning itself is pure.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"
#include "engine/prefill/planner.h"

namespace kvr {

// What one layer costs per token and per query-key pair, from the model's shape.
struct LayerShape {
  int num_layers = 0;
  double gemm_flops_qkv = 0;      // per token: 2 * C * (Hq + 2 Hkv) D
  double gemm_flops_rest = 0;     // per token: output projection + MLP
  double attn_flops_per_pair = 0; // per query-key pair: 4 * Hq * D (scores and weighted sum)
  double kv_bytes_per_token = 0;  // per layer, K and V: 2 * Hkv * D * element size
  static LayerShape Of(const ModelConfig& config, int element_bytes);
};

// Measured rates of one device and its links.
struct DeviceCosts {
  double gemm_flops_per_s = 1e12;
  double attn_flops_per_s = 1e12;
  double layer_overhead_s = 0;     // per layer per chunk: launches and small kernels
  double link_bytes_per_s = 1e11;
  double link_latency_s = 1e-5;
  std::string ToString() const;
};

// Predicted TTFT in seconds of the split `sizes` (chain order) under `topology`.
double SimulatePrefill(const LayerShape& shape, const DeviceCosts& costs, const std::vector<int>& sizes,
                       Topology topology);

// Coarse-to-fine search over chunk sizes (p chunks adding up to C, each >= 1) minimising
// `cost`. Starts from `start` (or an even split) and moves `step` tokens from one chunk to any
// other while that lowers the cost; the step starts at C/(2p) and halves down to `min_step`. Returns the best sizes found; `evaluations`
// (if given) counts calls of `cost`.
std::vector<int> SearchSplit(int context_len, int chunks, const std::function<double(const std::vector<int>&)>& cost,
                             int min_step = 1, std::vector<int> start = {}, int* evaluations = nullptr);

// For a search over noisy costs (one timing per candidate on the device): re-evaluates the `k`
// cheapest distinct candidates of `seen` (sizes, cost as the search saw it) with `remeasure`
// (e.g. a median of several timings) and returns the cheapest under it, its cost in
// `remeasured_cost`. A candidate that won the search by one lucky timing no longer decides the
// split alone. `also` (e.g. the even and the cost-model split) are re-evaluated too, whether the
// search saw them or not, so the result is never one a plain split beats under `remeasure`.
// Empty `seen` and `also`: returns {}.
std::vector<int> ConfirmBest(const std::vector<std::pair<std::vector<int>, double>>& seen, int k,
                             const std::function<double(const std::vector<int>&)>& remeasure,
                             double* remeasured_cost = nullptr,
                             const std::vector<std::vector<int>>& also = {});

// KVR cost-model planner: SearchSplit over SimulatePrefill.
class CostModelPlanner : public Planner {
 public:
  CostModelPlanner(LayerShape shape, DeviceCosts costs, Topology topology = Topology::kChain)
      : shape_(shape), costs_(costs), topology_(topology) {}
  absl::StatusOr<PrefillPlan> Plan(int context_len, int num_workers, int last_worker) const override;
  std::string name() const override { return "cost-model"; }

 private:
  LayerShape shape_;
  DeviceCosts costs_;
  Topology topology_;
};

}  // namespace kvr
