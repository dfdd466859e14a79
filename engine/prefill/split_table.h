// KVR-P: a table of searched splits, interpolated for unseen context lengths.
//
// The table is JSON, saved under config/ (one file can hold many setups):
//   {"entries": [{"setup": "llama-7b/4xH100/nvlink", "context": 16384, "sizes": [5120, 4224, 3712, 3328]},
//                ...]}
// `setup` names (model shape, GPU count, card, link); entries with the same setup and chunk
// count form one curve. For a length between two searched lengths, each chunk's share of the
// context is interpolated linearly in the length; outside the searched range the nearest
// entry's shares are used. Sizes are then rounded to add up to the length.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/prefill/planner.h"

namespace kvr {

struct SplitEntry {
  std::string setup;
  int context = 0;
  std::vector<int> sizes;
};

class SplitTable {
 public:
  static absl::StatusOr<SplitTable> Load(const std::string& path);
  static absl::StatusOr<SplitTable> Parse(const std::string& json_text, const std::string& path);
  std::string ToJson() const;

  void Add(SplitEntry e);
  const std::vector<SplitEntry>& entries() const { return entries_; }
  // Whether `setup` has entries with `chunks` chunks.
  bool HasCurve(const std::string& setup, int chunks) const;
  // The longest searched context of that curve; 0 without one.
  int LongestContext(const std::string& setup, int chunks) const;
  // Interpolated sizes for `context` over `chunks` chunks; NotFound if the setup has no entry
  // with that many chunks; InvalidArgument if context < chunks (every chunk needs a token).
  absl::StatusOr<std::vector<int>> Lookup(const std::string& setup, int context, int chunks) const;

 private:
  std::vector<SplitEntry> entries_;
};

// Plans from the table's curve for `setup`. Where the table has no curve for the setup and
// worker count, or the prompt is longer than the curve's longest searched length, `fallback`
// plans instead (the daemon passes the cost model); without one, Plan returns NotFound, or the
// longest entry's shares. Beyond the longest length the nearest entry's shares were 9.1-9.6%
// slower than the searched split in kvr-bench's leave-one-out runs at 32k, the cost model 0.5-4.0%
// (docs/benchmarks.md, "Four GPUs", sessions 4 and 5).
class TablePlanner : public Planner {
 public:
  TablePlanner(SplitTable table, std::string setup, Topology topology = Topology::kChain,
               std::shared_ptr<const Planner> fallback = nullptr)
      : table_(std::move(table)), setup_(std::move(setup)), topology_(topology), fallback_(std::move(fallback)) {}
  absl::StatusOr<PrefillPlan> Plan(int context_len, int num_workers, int last_worker) const override;
  std::string name() const override { return "table"; }
  // Whether the table has a curve for this setup with `chunks` chunks.
  bool Covers(int chunks) const { return table_.HasCurve(setup_, chunks); }

 private:
  SplitTable table_;
  std::string setup_;
  Topology topology_;
  std::shared_ptr<const Planner> fallback_;
};

}  // namespace kvr
