#include "engine/tokenizer/added_tokens.h"

#include "engine/tokenizer/unicode.h"

namespace kvr {

namespace {

// Rust's char::is_whitespace is the White_Space property, as our class bit.
bool IsSpaceAt(std::string_view s, size_t i, int* len) {
  const int n = ValidUtf8SeqLen(s, i);
  if (n == 0) return false;
  const char32_t cp = DecodeUtf8(s, i, len);
  return (ClassOf(cp) & kClassWhitespace) != 0;
}

// Length of the whitespace character that ends at s[end-1], or 0.
int SpaceEndingAt(std::string_view s, size_t end) {
  size_t start = end;
  while (start > 0) {
    --start;
    if ((static_cast<unsigned char>(s[start]) & 0xC0) != 0x80) break;
  }
  if (start == end) return 0;
  int len = 0;
  if (IsSpaceAt(s, start, &len) && start + len == end) return len;
  return 0;
}

bool IsWordCharAt(std::string_view s, size_t i) {
  if (i >= s.size() || ValidUtf8SeqLen(s, i) == 0) return false;
  int len = 0;
  const uint8_t c = ClassOf(DecodeUtf8(s, i, &len));
  return (c & (kClassLetter | kClassNumber)) != 0 || s[i] == '_';
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) : tokens_(tokens) {
  terminal_.push_back(-1);  // root
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& s = tokens_[t].content;
    if (s.empty()) continue;
    int node = 0;
    for (char ch : s) {
      const auto b = static_cast<uint8_t>(ch);
      int child = Child(node, b);
      if (child < 0) {
        child = static_cast<int>(terminal_.size());
        terminal_.push_back(-1);
        edges_.emplace((static_cast<uint64_t>(node) << 8) | b, child);
      }
      node = child;
    }
    if (terminal_[node] < 0) terminal_[node] = static_cast<int>(t);
    first_byte_[static_cast<uint8_t>(s[0])] = true;
  }
}

void AddedTokenMatcher::Split(std::string_view text, std::vector<Segment>* out) const {
  out->clear();
  size_t text_start = 0;  // start of the pending text segment
  size_t i = 0;
  while (i < text.size()) {
    if (!first_byte_[static_cast<uint8_t>(text[i])]) {
      ++i;
      continue;
    }
    int node = 0;
    int best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < text.size(); ++j) {
      node = Child(node, static_cast<uint8_t>(text[j]));
      if (node < 0) break;
      if (terminal_[node] >= 0) {
        best = terminal_[node];
        best_end = j + 1;
      }
    }
    const AddedToken* tok = best >= 0 ? &tokens_[best] : nullptr;
    if (tok != nullptr && tok->single_word &&
        (IsWordCharAt(text, best_end) || (i > 0 && SpaceEndingAt(text, i) == 0 &&
                                          IsWordCharAt(text, i - 1)))) {
      tok = nullptr;
    }
    if (tok == nullptr) {
      ++i;
      continue;
    }
    size_t begin = i;
    size_t end = best_end;
    if (tok->lstrip) {
      while (begin > text_start) {
        const int len = SpaceEndingAt(text, begin);
        if (len == 0) break;
        begin -= len;
      }
    }
    if (tok->rstrip) {
      int len = 0;
      while (end < text.size() && IsSpaceAt(text, end, &len)) end += len;
    }
    if (text_start < begin) {
      out->push_back({-1, static_cast<uint32_t>(text_start), static_cast<uint32_t>(begin)});
    }
    out->push_back({tok->id, static_cast<uint32_t>(begin), static_cast<uint32_t>(end)});
    text_start = end;
    i = end;
  }
  if (text_start < text.size()) {
    out->push_back({-1, static_cast<uint32_t>(text_start), static_cast<uint32_t>(text.size())});
  }
}

}  // namespace kvr
