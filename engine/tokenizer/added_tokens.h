// Added tokens (tokenizer.json "added_tokens", GGUF control and user-defined tokens): found in
// the raw text before normalization, leftmost-longest, and emitted as single ids.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace kvr {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;      // dropped by Decode(skip_special_tokens=true)
  bool lstrip = false;       // swallows whitespace on its left
  bool rstrip = false;       // swallows whitespace on its right
  bool single_word = false;  // matches only when not inside a word
};

// One part of the input: an added token (id >= 0) or text bytes [begin, end) (id == -1).
struct Segment {
  int32_t id;
  uint32_t begin;
  uint32_t end;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);

  // Cuts text into segments. Time is O(text size x longest token).
  void Split(std::string_view text, std::vector<Segment>* out) const;

 private:
  int Child(int node, uint8_t byte) const {
    auto it = edges_.find((static_cast<uint64_t>(node) << 8) | byte);
    return it == edges_.end() ? -1 : it->second;
  }

  std::vector<AddedToken> tokens_;
  absl::flat_hash_map<uint64_t, int> edges_;  // (node << 8 | byte) -> child node
  std::vector<int> terminal_;                 // node -> index into tokens_, or -1
  bool first_byte_[256] = {};
};

}  // namespace kvr
