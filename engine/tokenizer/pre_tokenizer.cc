#include "engine/tokenizer/pre_tokenizer.h"

#include <string_view>
#include <utility>

#include "engine/tokenizer/unicode.h"

namespace kvr {

namespace {

// Emits the matches of pattern in piece, and the gaps between them, as pieces.
void SplitIsolated(SplitPattern pattern, std::string_view text, Span piece, bool byte_level,
                   CharRun* run, std::vector<Span>* out) {
  run->Load(text.substr(piece.begin, piece.end - piece.begin), byte_level);
  const size_t n = run->size();
  size_t gap = 0;
  size_t k = 0;
  while (k < n) {
    const size_t m = MatchSplitPattern(pattern, *run, k);
    if (m == 0) {
      ++k;
      continue;
    }
    if (gap < k) out->push_back({piece.begin + run->off[gap], piece.begin + run->off[k]});
    out->push_back({piece.begin + run->off[k], piece.begin + run->off[k + m]});
    k += m;
    gap = k;
  }
  if (gap < n) out->push_back({piece.begin + run->off[gap], piece.end});
}

// Splits piece around characters whose class has any bit of mask: each such character alone
// (contiguous=false) or each run of them (contiguous=true) becomes a piece.
void SplitOnClass(uint8_t mask, bool contiguous, std::string_view text, Span piece,
                  bool byte_level, CharRun* run, std::vector<Span>* out) {
  run->Load(text.substr(piece.begin, piece.end - piece.begin), byte_level);
  const size_t n = run->size();
  size_t start = 0;
  for (size_t k = 0; k < n; ++k) {
    if (!(run->cls[k] & mask)) continue;
    if (start < k) out->push_back({piece.begin + run->off[start], piece.begin + run->off[k]});
    size_t j = k + 1;
    if (contiguous) {
      while (j < n && (run->cls[j] & mask)) ++j;
    }
    out->push_back({piece.begin + run->off[k], piece.begin + run->off[j]});
    start = j;
    k = j - 1;
  }
  if (start < n) out->push_back({piece.begin + run->off[start], piece.end});
}

// Metaspace: spaces become the replacement, which is also prepended per the scheme; with split,
// each piece is cut before every replacement (which stays with the text after it).
void RunMetaspace(const PreTokenizerStep& step, bool at_text_start, std::string* text,
                  std::vector<Span>* pieces) {
  std::string out;
  out.reserve(text->size() * 2);
  std::vector<Span> result;
  const std::string_view rep = step.replacement;
  for (const Span& p : *pieces) {
    const uint32_t begin = static_cast<uint32_t>(out.size());
    std::string_view src(text->data() + p.begin, p.end - p.begin);
    bool prepend = false;
    const bool starts_with_rep = !src.empty() && (src[0] == ' ' || src.substr(0, rep.size()) == rep);
    if (step.prepend_scheme == PrependScheme::kAlways) {
      prepend = !starts_with_rep;
    } else if (step.prepend_scheme == PrependScheme::kFirst) {
      prepend = !starts_with_rep && at_text_start && p.begin == 0;
    }
    if (prepend) out.append(rep);
    for (char c : src) {
      if (c == ' ') {
        out.append(rep);
      } else {
        out.push_back(c);
      }
    }
    const uint32_t end = static_cast<uint32_t>(out.size());
    if (!step.split) {
      result.push_back({begin, end});
      continue;
    }
    uint32_t start = begin;
    std::string_view view(out);
    size_t pos = view.find(rep, begin + 1);
    while (pos != std::string_view::npos && pos < end) {
      result.push_back({start, static_cast<uint32_t>(pos)});
      start = static_cast<uint32_t>(pos);
      pos = view.find(rep, pos + rep.size());
    }
    if (start < end) result.push_back({start, end});
  }
  *text = std::move(out);
  *pieces = std::move(result);
}

// ByteLevel's add_prefix_space: a space before each piece that does not start with one.
void PrefixSpaces(std::string* text, std::vector<Span>* pieces) {
  std::string out;
  out.reserve(text->size() + pieces->size());
  for (Span& p : *pieces) {
    const uint32_t begin = static_cast<uint32_t>(out.size());
    if (p.end > p.begin && (*text)[p.begin] != ' ') out.push_back(' ');
    out.append(*text, p.begin, p.end - p.begin);
    p = {begin, static_cast<uint32_t>(out.size())};
  }
  *text = std::move(out);
}

}  // namespace

PreTokenizer::PreTokenizer(std::vector<PreTokenizerStep> steps) : steps_(std::move(steps)) {
  for (const auto& s : steps_) {
    if (s.kind == PreTokenizerStep::Kind::kByteLevel) byte_level_ = true;
  }
}

void PreTokenizer::Run(std::string* text, bool at_text_start, std::vector<Span>* pieces) const {
  pieces->clear();
  if (text->empty()) return;
  pieces->push_back({0, static_cast<uint32_t>(text->size())});
  std::vector<Span> next;
  CharRun run;
  bool byte_level = false;  // pieces already in byte-level form: one char per byte
  for (const PreTokenizerStep& step : steps_) {
    next.clear();
    switch (step.kind) {
      case PreTokenizerStep::Kind::kSplit:
        for (const Span& p : *pieces) SplitIsolated(step.pattern, *text, p, byte_level, &run, &next);
        break;
      case PreTokenizerStep::Kind::kByteLevel:
        if (step.add_prefix_space) PrefixSpaces(text, pieces);
        if (step.use_regex) {
          for (const Span& p : *pieces) SplitIsolated(SplitPattern::kGpt2, *text, p, false, &run, &next);
        } else {
          next = *pieces;
        }
        byte_level = true;
        break;
      case PreTokenizerStep::Kind::kMetaspace:
        RunMetaspace(step, at_text_start, text, pieces);
        next = *pieces;
        break;
      case PreTokenizerStep::Kind::kPunctuation:
        for (const Span& p : *pieces) {
          SplitOnClass(kClassPunct | kClassAsciiPunct, step.contiguous, *text, p, byte_level, &run, &next);
        }
        break;
      case PreTokenizerStep::Kind::kDigits:
        for (const Span& p : *pieces) {
          SplitOnClass(kClassNumber, step.contiguous, *text, p, byte_level, &run, &next);
        }
        break;
    }
    pieces->swap(next);
  }
}

}  // namespace kvr
