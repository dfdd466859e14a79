// PrefillPlan: how one request's prompt is split across workers. Plain data: ints and vectors,
// with equality and a text form, made once per request by a planner and only read afterwards.
//
// Chunk k of the chain covers tokens [bounds[k], bounds[k+1]); chain position k runs on worker
// order[k]; the worker at the last position ends holding the whole KV-cache [0, C) and decodes.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvr {

enum class Topology {
  kChain,   // the paper's: position k receives [0, s_k) from k-1 and forwards [0, e_k) to k+1
  kFanOut,  // position k sends its own [s_k, e_k) straight to every later position
  kAllGather,  // the paper's TSP baseline: every position sends its own chunk to every other
               // position and waits for all of them (an all-gather of K/V per layer)
};
std::string TopologyName(Topology t);
// "chain", "fan-out" or "all-gather"; anything else is InvalidArgument naming those.
absl::StatusOr<Topology> ParseTopology(const std::string& name);

struct PrefillPlan {
  int context_len = 0;            // C
  std::vector<int> bounds;        // p + 1 entries: 0 = b_0 < b_1 < ... < b_p = C
  std::vector<int> order;         // p entries: worker index of each chain position
  Topology topology = Topology::kChain;
  std::string planner;            // who made it: "even", "cost-model", "fixed", ...

  int num_chunks() const { return static_cast<int>(order.size()); }
  int chunk_begin(int k) const { return bounds[k]; }
  int chunk_end(int k) const { return bounds[k + 1]; }
  int last_worker() const { return order.back(); }
  std::string ToString() const;   // "even chain C=100 [0,25)@0 [25,50)@1 [50,75)@2 [75,100)@3"
  bool operator==(const PrefillPlan&) const = default;
};

// Checks the invariants above for `num_workers` workers: non-empty chunks, a permutation order.
absl::Status ValidatePlan(const PrefillPlan& plan, int num_workers);

// One transfer of a layer's K/V rows [begin, end) between two chain positions.
struct KvTransfer {
  int from = 0;   // chain position of the sender
  int to = 0;     // chain position of the receiver
  int begin = 0;  // first token
  int end = 0;    // one past the last token
};

// The transfers of every layer (the same for all layers), by topology. Receives of position k
// together cover [0, s_k) exactly once (chain, fan-out), or [0, C) minus its own chunk
// (all-gather).
std::vector<KvTransfer> TransfersOf(const PrefillPlan& plan);

}  // namespace kvr
