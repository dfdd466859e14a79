#include "engine/prefill/split_table.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvr {

absl::StatusOr<SplitTable> SplitTable::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open the split table"));
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), path);
}

absl::StatusOr<SplitTable> SplitTable::Parse(const std::string& json_text, const std::string& path) {
  SplitTable t;
  try {
    const nlohmann::json j = nlohmann::json::parse(json_text);
    for (const auto& e : j.at("entries")) {
      SplitEntry entry{e.at("setup").get<std::string>(), e.at("context").get<int>(),
                       e.at("sizes").get<std::vector<int>>()};
      int sum = 0;
      for (int s : entry.sizes) {
        if (s <= 0) return absl::InvalidArgumentError(absl::StrCat(path, ": a chunk size is not positive"));
        sum += s;
      }
      if (sum != entry.context || entry.sizes.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": entry ", entry.setup, " C=", entry.context, ": sizes add up to ", sum));
      }
      t.Add(std::move(entry));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  return t;
}

std::string SplitTable::ToJson() const {
  nlohmann::json j;
  j["entries"] = nlohmann::json::array();
  for (const SplitEntry& e : entries_) {
    j["entries"].push_back({{"setup", e.setup}, {"context", e.context}, {"sizes", e.sizes}});
  }
  return j.dump(1);
}

void SplitTable::Add(SplitEntry e) {
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                [&](const SplitEntry& x) {
                                  return x.setup == e.setup && x.context == e.context &&
                                         x.sizes.size() == e.sizes.size();
                                }),
                 entries_.end());
  entries_.push_back(std::move(e));
  std::sort(entries_.begin(), entries_.end(), [](const SplitEntry& a, const SplitEntry& b) {
    return a.setup != b.setup ? a.setup < b.setup : a.context < b.context;
  });
}

bool SplitTable::HasCurve(const std::string& setup, int chunks) const {
  for (const SplitEntry& e : entries_) {
    if (e.setup == setup && static_cast<int>(e.sizes.size()) == chunks) return true;
  }
  return false;
}

int SplitTable::LongestContext(const std::string& setup, int chunks) const {
  int longest = 0;
  for (const SplitEntry& e : entries_) {
    if (e.setup == setup && static_cast<int>(e.sizes.size()) == chunks) longest = std::max(longest, e.context);
  }
  return longest;
}

absl::StatusOr<std::vector<int>> SplitTable::Lookup(const std::string& setup, int context, int chunks) const {
  if (chunks < 1 || context < chunks) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot split ", context, " tokens into ", chunks, " chunks of at least one token"));
  }
  std::vector<const SplitEntry*> curve;
  for (const SplitEntry& e : entries_) {
    if (e.setup == setup && static_cast<int>(e.sizes.size()) == chunks) curve.push_back(&e);
  }
  if (curve.empty()) {
    return absl::NotFoundError(absl::StrCat("no searched split for ", setup, " with ", chunks, " chunks"));
  }
  auto shares = [](const SplitEntry& e) {
    std::vector<double> f;
    for (int s : e.sizes) f.push_back(static_cast<double>(s) / e.context);
    return f;
  };
  std::vector<double> f;
  if (context <= curve.front()->context) {
    f = shares(*curve.front());
  } else if (context >= curve.back()->context) {
    f = shares(*curve.back());
  } else {
    size_t i = 1;
    while (curve[i]->context < context) ++i;
    const std::vector<double> lo = shares(*curve[i - 1]), hi = shares(*curve[i]);
    const double w = static_cast<double>(context - curve[i - 1]->context) / (curve[i]->context - curve[i - 1]->context);
    for (int k = 0; k < chunks; ++k) f.push_back(lo[k] + w * (hi[k] - lo[k]));
  }
  // Round the shares to sizes >= 1 that add up to the context (largest remainders first).
  std::vector<int> sizes(chunks);
  int used = 0;
  for (int k = 0; k < chunks; ++k) {
    sizes[k] = std::max(1, static_cast<int>(std::floor(f[k] * context)));
    used += sizes[k];
  }
  for (int k = 0; used < context; k = (k + 1) % chunks, ++used) ++sizes[k];
  for (int k = chunks - 1; used > context; k = (k + chunks - 1) % chunks) {
    if (sizes[k] > 1) { --sizes[k]; --used; }
  }
  return sizes;
}

absl::StatusOr<PrefillPlan> TablePlanner::Plan(int context_len, int num_workers, int last_worker) const {
  const int p = std::min(num_workers, context_len);
  if (fallback_ != nullptr && context_len > table_.LongestContext(setup_, p))
    return fallback_->Plan(context_len, num_workers, last_worker);  // no curve, or past its end
  absl::StatusOr<std::vector<int>> sizes = table_.Lookup(setup_, context_len, p);
  if (!sizes.ok()) return sizes.status();
  return PlanFromSizes(*sizes, context_len, num_workers, last_worker, topology_, name());
}

}  // namespace kvr
