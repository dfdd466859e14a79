#include "engine/tokenizer/gguf_vocab.h"

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/gguf_reader.h"
#include "engine/util/status_macros.h"

namespace kvr {

namespace {

// llama.cpp's token types.
enum GgufTokenType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

int64_t IntOr(const GgufMetadata& md, const std::string& key, int64_t fallback) {
  auto it = md.ints.find(key);
  return it == md.ints.end() ? fallback : it->second;
}

absl::Status SetPreTokenizer(const std::string& pre, TokenizerSpec* spec) {
  using Kind = PreTokenizerStep::Kind;
  PreTokenizerStep byte_level;
  byte_level.kind = Kind::kByteLevel;
  byte_level.add_prefix_space = false;
  if (pre == "llama-bpe" || pre == "llama3") {
    PreTokenizerStep split;
    split.kind = Kind::kSplit;
    split.pattern = SplitPattern::kLlama3;
    byte_level.use_regex = false;
    spec->pre_tokenizer = {split, byte_level};
    spec->bpe.ignore_merges = true;  // as Llama 3's tokenizer.json says
  } else if (pre == "gpt-2" || pre == "default" || pre.empty()) {
    spec->pre_tokenizer = {byte_level};
  } else if (pre == "falcon") {
    PreTokenizerStep punct;
    punct.kind = Kind::kPunctuation;
    punct.contiguous = true;
    PreTokenizerStep digits;
    digits.kind = Kind::kDigits;
    digits.contiguous = true;
    PreTokenizerStep three;
    three.kind = Kind::kSplit;
    three.pattern = SplitPattern::kThreeDigits;
    spec->pre_tokenizer = {punct, byte_level, digits, three};
  } else {
    return absl::UnimplementedError(absl::StrCat("GGUF pre-tokenizer '", pre, "' not supported"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TokenizerSpec> LoadTokenizerSpecFromGguf(const std::string& path) {
  KVR_ASSIGN_OR_RETURN(GgufMetadata md, ReadGgufMetadata(path));
  TokenizerSpec spec;
  auto model_it = md.strings.find("tokenizer.ggml.model");
  auto tokens_it = md.string_arrays.find("tokenizer.ggml.tokens");
  if (model_it == md.strings.end() || tokens_it == md.string_arrays.end()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no tokenizer.ggml vocabulary"));
  }
  const std::string& model = model_it->second;
  spec.vocab = tokens_it->second;
  const std::vector<int64_t>* types = nullptr;
  if (auto it = md.int_arrays.find("tokenizer.ggml.token_type"); it != md.int_arrays.end()) {
    types = &it->second;
  }
  bool add_bos;
  if (model == "llama") {
    auto scores = md.float_arrays.find("tokenizer.ggml.scores");
    if (scores == md.float_arrays.end()) return absl::InvalidArgumentError("GGUF llama vocabulary without scores");
    spec.scores = scores->second;
    spec.bpe.byte_fallback = true;
    spec.bpe.unk_id = static_cast<int32_t>(IntOr(md, "tokenizer.ggml.unknown_token_id", 0));
    const bool space_prefix = IntOr(md, "tokenizer.ggml.add_space_prefix", 1) != 0;
    const std::string meta = "\xE2\x96\x81";
    if (space_prefix) spec.normalizer.push_back({NormalizerStep::Kind::kPrepend, "", meta});
    spec.normalizer.push_back({NormalizerStep::Kind::kReplace, " ", meta});
    spec.decoder.replace_metaspace = true;
    spec.decoder.byte_fallback = true;
    spec.decoder.strip_leading_spaces = space_prefix ? 1 : 0;
    add_bos = IntOr(md, "tokenizer.ggml.add_bos_token", 1) != 0;
  } else if (model == "gpt2") {
    auto merges = md.string_arrays.find("tokenizer.ggml.merges");
    if (merges == md.string_arrays.end()) return absl::InvalidArgumentError("GGUF gpt2 vocabulary without merges");
    for (const std::string& m : merges->second) {
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("GGUF: bad merge '", m, "'"));
      spec.merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
    }
    spec.bpe.byte_level = true;
    spec.decoder.byte_level = true;
    auto pre = md.strings.find("tokenizer.ggml.pre");
    KVR_RETURN_IF_ERROR(SetPreTokenizer(pre == md.strings.end() ? "" : pre->second, &spec));
    add_bos = IntOr(md, "tokenizer.ggml.add_bos_token", 0) != 0;
  } else {
    return absl::UnimplementedError(absl::StrCat("GGUF tokenizer model '", model, "' not supported"));
  }
  if (types != nullptr) {
    for (size_t id = 0; id < types->size() && id < spec.vocab.size(); ++id) {
      const int64_t t = (*types)[id];
      if (t == kControl || t == kUnknown || t == kUserDefined) {
        AddedToken a;
        a.id = static_cast<int32_t>(id);
        a.content = spec.vocab[id];
        a.special = t != kUserDefined;
        spec.added_tokens.push_back(std::move(a));
      }
    }
  }
  spec.bos_id = static_cast<int32_t>(IntOr(md, "tokenizer.ggml.bos_token_id", -1));
  const int64_t eos = IntOr(md, "tokenizer.ggml.eos_token_id", -1);
  if (eos >= 0) spec.eos_ids.push_back(static_cast<int32_t>(eos));
  const int64_t eot = IntOr(md, "tokenizer.ggml.eot_token_id", -1);
  if (eot >= 0 && eot != eos) spec.eos_ids.push_back(static_cast<int32_t>(eot));
  if (add_bos && spec.bos_id >= 0) spec.prefix_ids.push_back(spec.bos_id);
  if (IntOr(md, "tokenizer.ggml.add_eos_token", 0) != 0 && eos >= 0) {
    spec.suffix_ids.push_back(static_cast<int32_t>(eos));
  }
  return spec;
}

}  // namespace kvr
