// The BPE merge engine: turns one pre-tokenized piece into token ids.
//
// Merges come either as an ordered list of pairs (tokenizer.json, GGUF "gpt2" models) or are
// derived from sentencepiece scores (GGUF "llama" models: merging a pair is allowed when the
// concatenation is a token, and higher scores merge first). Either way the engine applies the
// lowest-ranked adjacent pair first, leftmost on ties, with a heap: O(n log n) per piece, so a
// megabyte-long word costs no more than its length deserves.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace kvr {

struct BpeOptions {
  bool byte_level = false;     // pieces are raw bytes, vocabulary is GPT-2's byte alphabet
  bool byte_fallback = false;  // unknown characters become <0xXX> tokens
  bool ignore_merges = false;  // a piece that is itself a token is emitted whole (Llama 3)
  bool fuse_unk = false;       // consecutive unknown characters give one unk token
  int32_t unk_id = -1;
};

class BpeModel {
 public:
  // vocab[id] is the token's text as the vocabulary spells it (byte-level alphabet or "▁...").
  // Empty strings are allowed for ids the model does not own (added tokens fill them).
  static absl::StatusOr<BpeModel> FromMerges(
      std::vector<std::string> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      const BpeOptions& options);
  static absl::StatusOr<BpeModel> FromScores(std::vector<std::string> vocab,
                                             const std::vector<float>& scores,
                                             const BpeOptions& options);

  // Appends the ids of piece (raw bytes when byte_level, else UTF-8 text).
  void Encode(std::string_view piece, std::vector<int32_t>* out) const;

  int32_t Find(std::string_view token) const;  // -1 if absent
  // True if no token has a "▁" right after another character: then no merge ever joins
  // across such a boundary, and a sentencepiece-style text may be cut before each "▁" that
  // follows a non-"▁" character without changing the result (words encode independently).
  bool splits_before_metaspace() const { return splits_before_metaspace_; }
  const std::string& token(int32_t id) const { return vocab_[id]; }
  int size() const { return static_cast<int>(vocab_.size()); }
  const BpeOptions& options() const { return options_; }

 private:
  struct Merge {
    uint32_t rank;
    int32_t result;
  };
  BpeModel(std::vector<std::string> vocab, const BpeOptions& options);
  void InitSymbols(std::string_view piece, std::vector<int32_t>* ids) const;
  const Merge* FindMerge(int32_t left, int32_t right) const {
    auto it = merges_.find((static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
                           static_cast<uint32_t>(right));
    return it == merges_.end() ? nullptr : &it->second;
  }

  std::vector<std::string> vocab_;
  BpeOptions options_;
  absl::flat_hash_map<std::string, int32_t> ids_;      // vocabulary text -> id
  absl::flat_hash_map<std::string, int32_t> raw_ids_;  // byte_level: raw bytes -> id
  absl::flat_hash_map<uint64_t, Merge> merges_;        // (left << 32 | right) -> merge
  bool splits_before_metaspace_ = false;
  int32_t byte_ids_[256];  // byte_level: id of each byte's character; else <0xXX> ids (or -1)
};

}  // namespace kvr
