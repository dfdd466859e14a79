#include "engine/prefill/cost_model.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_format.h"

namespace kvr {

LayerShape LayerShape::Of(const ModelConfig& c, int element_bytes) {
  LayerShape s;
  s.num_layers = c.num_layers;
  const double C = c.hidden_size, F = c.intermediate_size;
  s.gemm_flops_qkv = 2.0 * C * c.qkv_dim();
  const double mlp = c.mlp == MlpKind::kSiluGate ? 6.0 * C * F : 4.0 * C * F;
  s.gemm_flops_rest = 2.0 * c.q_dim() * C + mlp;
  s.attn_flops_per_pair = 4.0 * c.q_dim();
  s.kv_bytes_per_token = 2.0 * c.kv_dim() * element_bytes;
  return s;
}

std::string DeviceCosts::ToString() const {
  return absl::StrFormat("gemm %.1f TFLOP/s, attention %.1f TFLOP/s, %.1f us/layer, link %.1f GB/s + %.1f us",
                         gemm_flops_per_s / 1e12, attn_flops_per_s / 1e12, layer_overhead_s * 1e6,
                         link_bytes_per_s / 1e9, link_latency_s * 1e6);
}

double SimulatePrefill(const LayerShape& shape, const DeviceCosts& costs, const std::vector<int>& sizes,
                       Topology topology) {
  const int p = static_cast<int>(sizes.size());
  PrefillPlan plan;
  plan.topology = topology;
  plan.bounds.push_back(0);
  for (int n : sizes) plan.bounds.push_back(plan.bounds.back() + n);
  plan.order.resize(p);
  plan.context_len = plan.bounds.back();
  const std::vector<KvTransfer> transfers = TransfersOf(plan);

  std::vector<double> qkv_cost(p), rest_cost(p);
  for (int k = 0; k < p; ++k) {
    const double n = sizes[k], s = plan.bounds[k];
    const double pairs = n * s + n * (n + 1) / 2;
    qkv_cost[k] = costs.layer_overhead_s / 2 + n * shape.gemm_flops_qkv / costs.gemm_flops_per_s;
    rest_cost[k] = costs.layer_overhead_s / 2 + n * shape.gemm_flops_rest / costs.gemm_flops_per_s +
                   pairs * shape.attn_flops_per_pair / costs.attn_flops_per_s;
  }
  std::vector<double> done(p, 0.0), qkv_done(p), arrived(p);
  std::map<std::pair<int, int>, double> link_free;  // (from, to) -> time the link is idle again
  for (int l = 0; l < shape.num_layers; ++l) {
    for (int k = 0; k < p; ++k) {
      qkv_done[k] = done[k] + qkv_cost[k];
      double arrive = 0;
      for (const KvTransfer& t : transfers) {
        if (t.to != k) continue;
        const bool forwards = t.begin < plan.bounds[t.from];
        const double ready = forwards ? std::max(qkv_done[t.from], arrived[t.from]) : qkv_done[t.from];
        double& free_at = link_free[{t.from, t.to}];
        const double start = std::max(ready, free_at);
        const double wire = (t.end - t.begin) * shape.kv_bytes_per_token / costs.link_bytes_per_s;
        free_at = start + wire;
        arrive = std::max(arrive, start + wire + costs.link_latency_s);
      }
      arrived[k] = arrive;
      done[k] = std::max(qkv_done[k], arrive) + rest_cost[k];
    }
  }
  return done[p - 1];
}

std::vector<int> SearchSplit(int context_len, int chunks, const std::function<double(const std::vector<int>&)>& cost,
                             int min_step, std::vector<int> start, int* evaluations) {
  const int p = std::max(1, std::min(chunks, context_len));
  std::vector<int> best = std::move(start);
  if (static_cast<int>(best.size()) != p) {
    best.assign(p, context_len / p);
    for (int k = 0; k < context_len % p; ++k) ++best[k];
  }
  int evals = 1;
  double best_cost = cost(best);
  for (int step = std::max(min_step, context_len / (2 * p)); p > 1; step /= 2) {
    bool improved = true;
    while (improved) {
      improved = false;
      // Move `step` tokens from chunk j to chunk i (every boundary in between shifts), for every
      // ordered pair: a min-max cost needs moves between non-adjacent chunks too.
      for (int i = 0; i < p && !improved; ++i) {
        for (int j = 0; j < p && !improved; ++j) {
          if (i == j || best[j] - step < 1) continue;
          std::vector<int> trial = best;
          trial[i] += step;
          trial[j] -= step;
          ++evals;
          const double c = cost(trial);
          if (c < best_cost) {
            best_cost = c;
            best = std::move(trial);
            improved = true;
          }
        }
      }
    }
    if (step <= min_step) break;
  }
  if (evaluations) *evaluations = evals;
  return best;
}

std::vector<int> ConfirmBest(const std::vector<std::pair<std::vector<int>, double>>& seen, int k,
                             const std::function<double(const std::vector<int>&)>& remeasure,
                             double* remeasured_cost, const std::vector<std::vector<int>>& also) {
  std::map<std::vector<int>, double> cheapest;  // distinct candidates, the lowest cost seen
  for (const auto& [sizes, cost] : seen) {
    auto it = cheapest.find(sizes);
    if (it == cheapest.end() || cost < it->second) cheapest[sizes] = cost;
  }
  std::vector<std::pair<double, std::vector<int>>> ranked;
  for (const auto& [sizes, cost] : cheapest) ranked.push_back({cost, sizes});
  std::sort(ranked.begin(), ranked.end());
  if (static_cast<int>(ranked.size()) > k) ranked.resize(std::max(k, 1));
  for (const std::vector<int>& sizes : also) {
    const bool listed = std::any_of(ranked.begin(), ranked.end(), [&](const auto& r) { return r.second == sizes; });
    if (!sizes.empty() && !listed) ranked.push_back({0.0, sizes});
  }
  std::vector<int> best;
  double best_cost = 0;
  for (const auto& [cost, sizes] : ranked) {
    const double c = remeasure(sizes);
    if (best.empty() || c < best_cost) {
      best = sizes;
      best_cost = c;
    }
  }
  if (remeasured_cost) *remeasured_cost = best_cost;
  return best;
}

absl::StatusOr<PrefillPlan> CostModelPlanner::Plan(int context_len, int num_workers, int last_worker) const {
  if (context_len <= 0) return absl::InvalidArgumentError("cannot plan an empty prompt");
  if (num_workers <= 0) return absl::InvalidArgumentError("need at least one worker");
  const int p = std::min(num_workers, context_len);
  const int min_step = std::max(1, context_len / 1024);
  std::vector<int> sizes = SearchSplit(
      context_len, p, [&](const std::vector<int>& s) { return SimulatePrefill(shape_, costs_, s, topology_); },
      min_step);
  return PlanFromSizes(sizes, context_len, num_workers, last_worker, topology_, name());
}

}  // namespace kvr
