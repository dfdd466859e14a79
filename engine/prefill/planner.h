// Planners: pure functions from (context length, worker count) to a PrefillPlan. No device
// access; a planner that needs measurements receives them as data (see cost_model.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/prefill/prefill_plan.h"

namespace kvr {

class Planner {
 public:
  virtual ~Planner() = default;
  // `last_worker` picks which worker ends the chain (holds the cache and decodes); the others
  // keep their relative order. Rotating it spreads decode work over devices.
  virtual absl::StatusOr<PrefillPlan> Plan(int context_len, int num_workers,
                                           int last_worker) const = 0;
  virtual std::string name() const = 0;
};

// Chain positions 0..p-1 in worker order, rotated so that `last_worker` comes last.
std::vector<int> RotatedOrder(int num_workers, int last_worker);

// A validated plan from chunk sizes (in chain order) that add up to `context_len`.
absl::StatusOr<PrefillPlan> PlanFromSizes(const std::vector<int>& sizes, int context_len, int num_workers,
                                          int last_worker, Topology topology, const std::string& name);

// KVR-E: chunks of equal size (the first ones one token larger when C % p != 0). Fewer
// chunks than workers when C < p.
class EvenPlanner : public Planner {
 public:
  explicit EvenPlanner(Topology topology = Topology::kChain) : topology_(topology) {}
  absl::StatusOr<PrefillPlan> Plan(int context_len, int num_workers, int last_worker) const override;
  std::string name() const override { return "even"; }

 private:
  Topology topology_;
};

// A split given as explicit chunk sizes (tests, the CLI's --split, searched tables).
class FixedPlanner : public Planner {
 public:
  FixedPlanner(std::vector<int> sizes, Topology topology = Topology::kChain)
      : sizes_(std::move(sizes)), topology_(topology) {}
  absl::StatusOr<PrefillPlan> Plan(int context_len, int num_workers, int last_worker) const override;
  std::string name() const override { return "fixed"; }

 private:
  std::vector<int> sizes_;
  Topology topology_;
};

// Prompts shorter than `below` tokens take the paper's TSP instead of `inner`'s plan: an even
// split in which every worker all-gathers the K/V of every layer (Topology::kAllGather). On 4x
// H200 our TSP was faster than the best KV-Runahead chain up to 4k tokens for Llama-2-7B and up
// to 8k for the GQA / MQA shapes (Llama-3-8B, Falcon-7B), and slower from 16k on
// (docs/benchmarks.md, "Four GPUs, session 4"); kvrd's --tsp_below sets the crossover.
class CrossoverPlanner : public Planner {
 public:
  CrossoverPlanner(int below, std::unique_ptr<Planner> inner)
      : below_(below), inner_(std::move(inner)), tsp_(Topology::kAllGather) {}
  absl::StatusOr<PrefillPlan> Plan(int context_len, int num_workers, int last_worker) const override;
  std::string name() const override;

 private:
  int below_;
  std::unique_ptr<Planner> inner_;
  EvenPlanner tsp_;
};

}  // namespace kvr
