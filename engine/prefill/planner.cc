#include "engine/prefill/planner.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace kvr {

std::vector<int> RotatedOrder(int num_workers, int last_worker) {
  std::vector<int> order(num_workers);
  for (int k = 0; k < num_workers; ++k) order[k] = (last_worker + 1 + k) % num_workers;
  return order;
}

absl::StatusOr<PrefillPlan> PlanFromSizes(const std::vector<int>& sizes, int context_len, int num_workers,
                                          int last_worker, Topology topology, const std::string& name) {
  if (num_workers <= 0) return absl::InvalidArgumentError("need at least one worker");
  if (last_worker < 0 || last_worker >= num_workers) {
    return absl::InvalidArgumentError(
        absl::StrCat("last worker ", last_worker, " is not in [0, ", num_workers, ")"));
  }
  if (static_cast<int>(sizes.size()) > num_workers) {
    return absl::InvalidArgumentError(
        absl::StrCat("a split into ", sizes.size(), " chunks needs as many workers; there are ", num_workers));
  }
  const int total = std::accumulate(sizes.begin(), sizes.end(), 0);
  if (total != context_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("the split's chunk sizes add up to ", total, ", not the context length ", context_len));
  }
  PrefillPlan plan;
  plan.context_len = context_len;
  plan.topology = topology;
  plan.planner = name;
  plan.bounds.push_back(0);
  for (int s : sizes) plan.bounds.push_back(plan.bounds.back() + s);
  // Chain positions are the workers in rotated order; with fewer chunks than workers the
  // positions nearest the end (the last worker's side) are the ones used.
  const std::vector<int> order = RotatedOrder(num_workers, last_worker);
  plan.order.assign(order.end() - static_cast<int>(sizes.size()), order.end());
  KVR_RETURN_IF_ERROR(ValidatePlan(plan, num_workers));
  return plan;
}

absl::StatusOr<PrefillPlan> EvenPlanner::Plan(int context_len, int num_workers, int last_worker) const {
  if (context_len <= 0) return absl::InvalidArgumentError("cannot plan an empty prompt");
  if (num_workers <= 0) return absl::InvalidArgumentError("need at least one worker");
  const int p = std::min(num_workers, context_len);
  std::vector<int> sizes(p, context_len / p);
  for (int k = 0; k < context_len % p; ++k) ++sizes[k];
  return PlanFromSizes(sizes, context_len, num_workers, last_worker, topology_, name());
}

absl::StatusOr<PrefillPlan> FixedPlanner::Plan(int context_len, int num_workers, int last_worker) const {
  return PlanFromSizes(sizes_, context_len, num_workers, last_worker, topology_, name());
}

absl::StatusOr<PrefillPlan> CrossoverPlanner::Plan(int context_len, int num_workers, int last_worker) const {
  if (context_len < below_) return tsp_.Plan(context_len, num_workers, last_worker);
  return inner_->Plan(context_len, num_workers, last_worker);
}

std::string CrossoverPlanner::name() const {
  return absl::StrCat(inner_->name(), ", tsp below ", below_, " tokens");
}

}  // namespace kvr
