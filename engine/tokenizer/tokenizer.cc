#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/gguf_vocab.h"
#include "engine/tokenizer/tokenizer_json.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/status_macros.h"

namespace kvr {

namespace {

// Pieces up to this many bytes are memoized within one Encode call (natural text repeats its
// words; long pieces rarely repeat and would bloat the table).
constexpr size_t kMaxCachedPieceBytes = 64;

// Cuts pieces before every "▁" that follows another character (see
// BpeModel::splits_before_metaspace), so long sentencepiece-style texts encode word by word.
void SplitBeforeMetaspace(const std::string& text, std::vector<Span>* pieces) {
  constexpr std::string_view kMeta = "\xE2\x96\x81";
  std::vector<Span> out;
  out.reserve(pieces->size() + text.size() / 4);
  for (const Span& p : *pieces) {
    uint32_t start = p.begin;
    const std::string_view view(text);
    for (size_t pos = view.find(kMeta, p.begin + 1); pos != std::string_view::npos && pos < p.end;
         pos = view.find(kMeta, pos + 3)) {
      if (pos >= p.begin + 3 && view.substr(pos - 3, 3) == kMeta) continue;  // inside a run of "▁"
      out.push_back({start, static_cast<uint32_t>(pos)});
      start = static_cast<uint32_t>(pos);
    }
    out.push_back({start, p.end});
  }
  pieces->swap(out);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromModelFolder(const std::string& dir) {
  KVR_ASSIGN_OR_RETURN(TokenizerSpec spec, LoadTokenizerSpecFromFolder(dir));
  return FromSpec(std::move(spec));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const std::string& path) {
  KVR_ASSIGN_OR_RETURN(TokenizerSpec spec, LoadTokenizerSpecFromGguf(path));
  return FromSpec(std::move(spec));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSpec(TokenizerSpec spec) {
  absl::StatusOr<BpeModel> model =
      spec.merges.empty() && !spec.scores.empty()
          ? BpeModel::FromScores(spec.vocab, spec.scores, spec.bpe)
          : BpeModel::FromMerges(spec.vocab, spec.merges, spec.bpe);
  if (!model.ok()) return model.status();
  for (const AddedToken& t : spec.added_tokens) {
    if (t.id < 0) return absl::InvalidArgumentError(absl::StrCat("added token '", t.content, "' has a negative id"));
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(*std::move(model), std::move(spec)));
}

Tokenizer::Tokenizer(BpeModel model, TokenizerSpec spec)
    : model_(std::move(model)),
      normalizer_(std::move(spec.normalizer)),
      pre_tokenizer_(std::move(spec.pre_tokenizer)),
      added_(spec.added_tokens),
      decoder_(std::move(spec.decoder)),
      prefix_ids_(std::move(spec.prefix_ids)),
      suffix_ids_(std::move(spec.suffix_ids)),
      bos_id_(spec.bos_id),
      eos_ids_(std::move(spec.eos_ids)) {
  int32_t n = model_.size();
  for (const AddedToken& t : spec.added_tokens) n = std::max(n, t.id + 1);
  token_text_.resize(n);
  special_.assign(n, 0);
  for (int32_t id = 0; id < model_.size(); ++id) token_text_[id] = model_.token(id);
  for (const AddedToken& t : spec.added_tokens) {
    token_text_[t.id] = t.content;
    special_[t.id] = t.special ? 1 : 0;
  }
  rendered_.resize(n);
  for (int32_t id = 0; id < n; ++id) rendered_[id] = RenderToken(decoder_, token_text_[id], false);
}

std::string Tokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return token_text_[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && special_[id] != 0;
}

std::string Tokenizer::RenderFirst(int32_t id) const {
  if (!decoder_.metaspace_drop_first) return rendered_[id];
  return RenderToken(decoder_, token_text_[id], true);
}

void Tokenizer::EncodeSegment(std::string_view segment, bool at_text_start,
                              std::vector<int32_t>* out) const {
  std::string text(segment);
  normalizer_.Run(&text);
  std::vector<Span> pieces;
  pre_tokenizer_.Run(&text, at_text_start, &pieces);
  if (model_.splits_before_metaspace()) SplitBeforeMetaspace(text, &pieces);
  // piece text -> (offset, count) of its ids, first written into *out.
  absl::flat_hash_map<std::string_view, std::pair<uint32_t, uint32_t>> memo;
  for (const Span& p : pieces) {
    const std::string_view piece(text.data() + p.begin, p.end - p.begin);
    const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
    if (cacheable) {
      auto it = memo.find(piece);
      if (it != memo.end()) {
        const auto [offset, count] = it->second;
        for (uint32_t k = 0; k < count; ++k) out->push_back((*out)[offset + k]);
        continue;
      }
    }
    const size_t before = out->size();
    model_.Encode(piece, out);
    if (cacheable) {
      memo.emplace(piece, std::make_pair(static_cast<uint32_t>(before),
                                         static_cast<uint32_t>(out->size() - before)));
    }
  }
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  KVR_RETURN_IF_ERROR(ValidateUtf8(text));
  if (text.size() > UINT32_MAX / 2) return absl::InvalidArgumentError("input longer than 2 GiB");
  std::vector<int32_t> out;
  out.reserve(text.size() / 4 + 8);
  if (add_special_tokens) out = prefix_ids_;
  std::vector<Segment> segments;
  added_.Split(text, &segments);
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      out.push_back(s.id);
    } else {
      EncodeSegment(text.substr(s.begin, s.end - s.begin), s.begin == 0, &out);
    }
  }
  if (add_special_tokens) out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
  return out;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  std::string out;
  Utf8Stream stream(decoder_.strip_leading_spaces);
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size(), ")"));
    }
    if (skip_special_tokens && special_[id]) continue;
    if (first) {
      stream.Push(RenderFirst(id), &out);
      first = false;
    } else {
      stream.Push(rendered_[id], &out);
    }
  }
  stream.Flush(&out);
  return out;
}

}  // namespace kvr
