#include "engine/prefill/prefill_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvr {

std::string TopologyName(Topology t) {
  switch (t) {
    case Topology::kChain: return "chain";
    case Topology::kFanOut: return "fan-out";
    case Topology::kAllGather: return "all-gather";
  }
  return "?";
}

absl::StatusOr<Topology> ParseTopology(const std::string& name) {
  for (Topology t : {Topology::kChain, Topology::kFanOut, Topology::kAllGather}) {
    if (name == TopologyName(t)) return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown topology \"", name, "\" (allowed: chain, fan-out, all-gather)"));
}

std::string PrefillPlan::ToString() const {
  std::string s = absl::StrCat(planner, " ", TopologyName(topology), " C=", context_len);
  for (int k = 0; k < num_chunks(); ++k) {
    absl::StrAppend(&s, " [", chunk_begin(k), ",", chunk_end(k), ")@", order[k]);
  }
  return s;
}

absl::Status ValidatePlan(const PrefillPlan& plan, int num_workers) {
  const int p = plan.num_chunks();
  if (plan.context_len <= 0) return absl::InvalidArgumentError("plan: empty context");
  if (p == 0 || p > num_workers) {
    return absl::InvalidArgumentError(absl::StrCat("plan: ", p, " chunks for ", num_workers, " workers"));
  }
  if (static_cast<int>(plan.bounds.size()) != p + 1 || plan.bounds.front() != 0 ||
      plan.bounds.back() != plan.context_len) {
    return absl::InvalidArgumentError(absl::StrCat("plan: bounds must run from 0 to C=", plan.context_len,
                                                   " in ", p + 1, " entries: ", plan.ToString()));
  }
  for (int k = 0; k < p; ++k) {
    if (plan.bounds[k] >= plan.bounds[k + 1]) {
      return absl::InvalidArgumentError(absl::StrCat("plan: chunk ", k, " is empty: ", plan.ToString()));
    }
  }
  std::vector<bool> seen(num_workers, false);
  for (int w : plan.order) {
    if (w < 0 || w >= num_workers || seen[w]) {
      return absl::InvalidArgumentError(absl::StrCat("plan: order is not a set of distinct workers: ", plan.ToString()));
    }
    seen[w] = true;
  }
  return absl::OkStatus();
}

std::vector<KvTransfer> TransfersOf(const PrefillPlan& plan) {
  std::vector<KvTransfer> out;
  const int p = plan.num_chunks();
  for (int k = 0; k < p; ++k) {
    switch (plan.topology) {
      case Topology::kChain:
        if (k > 0) out.push_back({k - 1, k, 0, plan.chunk_begin(k)});
        break;
      case Topology::kFanOut:
        for (int j = 0; j < k; ++j) out.push_back({j, k, plan.chunk_begin(j), plan.chunk_end(j)});
        break;
      case Topology::kAllGather:
        for (int j = 0; j < p; ++j) {
          if (j != k) out.push_back({j, k, plan.chunk_begin(j), plan.chunk_end(j)});
        }
        break;
    }
  }
  return out;
}

}  // namespace kvr
