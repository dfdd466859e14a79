#include "engine/tokenizer/bpe_model.h"

#include <algorithm>
#include <cstdio>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/unicode.h"

namespace kvr {

BpeModel::BpeModel(std::vector<std::string> vocab, const BpeOptions& options)
    : vocab_(std::move(vocab)), options_(options) {
  ids_.reserve(vocab_.size());
  for (size_t id = 0; id < vocab_.size(); ++id) {
    if (!vocab_[id].empty()) ids_.emplace(vocab_[id], static_cast<int32_t>(id));
  }
  for (int b = 0; b < 256; ++b) {
    std::string name;
    if (options_.byte_level) {
      AppendUtf8(ByteToUnicode(static_cast<uint8_t>(b)), &name);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
      name = buf;
    }
    byte_ids_[b] = Find(name);
  }
  if (!options_.byte_level) {
    constexpr std::string_view kMeta = "\xE2\x96\x81";
    splits_before_metaspace_ = true;
    for (const std::string& t : vocab_) {
      // A "▁" at offset > 0 must only follow other "▁"s.
      for (size_t pos = t.find(kMeta, 1); pos != std::string::npos; pos = t.find(kMeta, pos + 1)) {
        if (pos < 3 || std::string_view(t).substr(pos - 3, 3) != kMeta) {
          splits_before_metaspace_ = false;
          break;
        }
      }
      if (!splits_before_metaspace_) break;
    }
  }
  if (options_.byte_level && options_.ignore_merges) {
    std::string raw;
    for (size_t id = 0; id < vocab_.size(); ++id) {
      if (ByteLevelToBytes(vocab_[id], &raw)) raw_ids_.emplace(raw, static_cast<int32_t>(id));
    }
  }
}

int32_t BpeModel::Find(std::string_view token) const {
  auto it = ids_.find(absl::string_view(token.data(), token.size()));
  return it == ids_.end() ? -1 : it->second;
}

absl::StatusOr<BpeModel> BpeModel::FromMerges(
    std::vector<std::string> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
    const BpeOptions& options) {
  BpeModel model(std::move(vocab), options);
  model.merges_.reserve(merges.size());
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const int32_t left = model.Find(a);
    const int32_t right = model.Find(b);
    joined.assign(a).append(b);
    const int32_t result = model.Find(joined);
    if (left < 0 || right < 0 || result < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("BPE merge #", rank, " '", a, " ", b, "' names a token not in the vocabulary"));
    }
    const uint64_t key = (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right);
    model.merges_.try_emplace(key, Merge{static_cast<uint32_t>(rank), result});  // first wins
  }
  return model;
}

absl::StatusOr<BpeModel> BpeModel::FromScores(std::vector<std::string> vocab,
                                              const std::vector<float>& scores,
                                              const BpeOptions& options) {
  if (scores.size() != vocab.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary has ", vocab.size(), " tokens but ", scores.size(), " scores"));
  }
  BpeModel model(std::move(vocab), options);
  // Dense rank by score, highest first: equal scores share a rank, so ties go leftmost.
  std::vector<float> sorted(scores);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  for (size_t id = 0; id < model.vocab_.size(); ++id) {
    const std::string& s = model.vocab_[id];
    if (s.size() < 2) continue;
    const auto rank = static_cast<uint32_t>(
        std::lower_bound(sorted.begin(), sorted.end(), scores[id], std::greater<float>()) -
        sorted.begin());
    for (size_t cut = 1; cut < s.size(); ++cut) {
      if ((static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) continue;  // inside a character
      const int32_t left = model.Find(std::string_view(s).substr(0, cut));
      if (left < 0) continue;
      const int32_t right = model.Find(std::string_view(s).substr(cut));
      if (right < 0) continue;
      const uint64_t key = (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right);
      model.merges_.try_emplace(key, Merge{rank, static_cast<int32_t>(id)});
    }
  }
  return model;
}

void BpeModel::InitSymbols(std::string_view piece, std::vector<int32_t>* ids) const {
  ids->clear();
  if (options_.byte_level) {
    for (char c : piece) {
      const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
      if (id >= 0) {
        ids->push_back(id);
      } else if (options_.unk_id >= 0 && !(options_.fuse_unk && !ids->empty() && ids->back() == options_.unk_id)) {
        ids->push_back(options_.unk_id);
      }
    }
    return;
  }
  size_t i = 0;
  while (i < piece.size()) {
    const int len = std::min<int>(Utf8SeqLen(static_cast<unsigned char>(piece[i])),
                                  static_cast<int>(piece.size() - i));
    const int32_t id = Find(piece.substr(i, len));
    if (id >= 0) {
      ids->push_back(id);
    } else {
      bool fell_back = options_.byte_fallback;
      for (int k = 0; k < len && fell_back; ++k) {
        fell_back = byte_ids_[static_cast<uint8_t>(piece[i + k])] >= 0;
      }
      if (fell_back) {
        for (int k = 0; k < len; ++k) ids->push_back(byte_ids_[static_cast<uint8_t>(piece[i + k])]);
      } else if (options_.unk_id >= 0 &&
                 !(options_.fuse_unk && !ids->empty() && ids->back() == options_.unk_id)) {
        ids->push_back(options_.unk_id);
      }
    }
    i += len;
  }
}

void BpeModel::Encode(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.empty()) return;
  if (options_.ignore_merges) {
    const auto& table = options_.byte_level ? raw_ids_ : ids_;
    auto it = table.find(absl::string_view(piece.data(), piece.size()));
    if (it != table.end()) {
      out->push_back(it->second);
      return;
    }
  }
  std::vector<int32_t> ids;
  InitSymbols(piece, &ids);
  const size_t n = ids.size();
  if (n <= 1) {
    out->insert(out->end(), ids.begin(), ids.end());
    return;
  }
  if (n <= 24) {
    // Short pieces: rescanning every pair is cheaper than a heap.
    size_t m = n;
    while (m > 1) {
      uint32_t best_rank = UINT32_MAX;
      size_t best = 0;
      int32_t best_result = -1;
      for (size_t k = 0; k + 1 < m; ++k) {
        const Merge* merge = FindMerge(ids[k], ids[k + 1]);
        if (merge != nullptr && merge->rank < best_rank) {
          best_rank = merge->rank;
          best = k;
          best_result = merge->result;
        }
      }
      if (best_result < 0) break;
      ids[best] = best_result;
      ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best) + 1);
      --m;
    }
    out->insert(out->end(), ids.begin(), ids.end());
    return;
  }
  // Long pieces: a doubly linked list of symbols and a heap of candidate merges. A candidate is
  // stale once either symbol changed; it then no longer matches the ids it was made for.
  struct Candidate {
    uint32_t rank;
    uint32_t pos;
    int32_t left;
    int32_t right;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<int32_t> prev(n), next(n);
  for (size_t k = 0; k < n; ++k) {
    prev[k] = static_cast<int32_t>(k) - 1;
    next[k] = k + 1 < n ? static_cast<int32_t>(k + 1) : -1;
  }
  std::vector<Candidate> storage;
  storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap(
      std::greater<Candidate>(), std::move(storage));
  auto push = [&](int32_t pos) {
    const int32_t nx = next[pos];
    if (pos < 0 || nx < 0) return;
    if (const Merge* merge = FindMerge(ids[pos], ids[nx])) {
      heap.push({merge->rank, static_cast<uint32_t>(pos), ids[pos], ids[nx]});
    }
  };
  for (size_t k = 0; k + 1 < n; ++k) push(static_cast<int32_t>(k));
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int32_t pos = static_cast<int32_t>(c.pos);
    const int32_t nx = next[pos];
    if (ids[pos] != c.left || nx < 0 || ids[nx] != c.right) continue;
    ids[pos] = FindMerge(c.left, c.right)->result;
    ids[nx] = -1;  // removed
    next[pos] = next[nx];
    if (next[nx] >= 0) prev[next[nx]] = pos;
    if (prev[pos] >= 0) push(prev[pos]);
    push(pos);
  }
  for (int32_t k = 0; k >= 0; k = next[k]) out->push_back(ids[k]);
}

}  // namespace kvr
