#include "engine/tokenizer/tokenizer_json.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvr {

namespace {

using json = nlohmann::json;

// A token id read from JSON: an integer in [0, limit). Floats and huge numbers are refused here,
// before a conversion could overflow (nlohmann's get<int> of 1e300 is undefined behaviour), and
// so are ids far past the vocabulary's size, which would make the id tables huge (a 1 KB file
// with id 16000000 must not allocate half a gigabyte).
struct BadTokenId : std::runtime_error {
  using std::runtime_error::runtime_error;
};
constexpr int64_t kMaxTokenId = int64_t{1} << 24;
// Ids may leave gaps, but no more than this many past the number of tokens defined.
constexpr int64_t kIdSlack = int64_t{1} << 16;
int32_t TokenId(const json& v, int64_t limit = kMaxTokenId) {
  limit = std::min(limit, kMaxTokenId);
  if (!v.is_number_integer()) throw BadTokenId("a token id must be an integer, got " + v.dump());
  const bool too_big = v.is_number_unsigned() ? v.get<uint64_t>() >= static_cast<uint64_t>(limit)
                                              : v.get<int64_t>() >= limit;
  if (too_big || (!v.is_number_unsigned() && v.get<int64_t>() < 0)) {
    throw BadTokenId(absl::StrCat("a token id must be in [0, ", limit, "), got ", v.dump()));
  }
  return static_cast<int32_t>(v.get<int64_t>());
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool GetBool(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

std::string GetString(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

absl::Status Unsupported(const std::string& what, const json& j) {
  return absl::UnimplementedError(
      absl::StrCat("tokenizer.json: unsupported ", what, ": ", j.dump().substr(0, 200)));
}

absl::Status ParseModel(const json& m, TokenizerSpec* spec) {
  if (GetString(m, "type") != "BPE" && !(m.contains("merges") && !m.contains("type"))) {
    return Unsupported("model type (only BPE)", m.value("type", json()));
  }
  if (!GetString(m, "continuing_subword_prefix").empty() || !GetString(m, "end_of_word_suffix").empty()) {
    return Unsupported("BPE subword prefix/suffix", m);
  }
  const json& vocab = m.at("vocab");
  if (!vocab.is_object()) return Unsupported("BPE vocab", vocab);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int64_t id = TokenId(it.value(), static_cast<int64_t>(vocab.size()) + kIdSlack);
    if (static_cast<size_t>(id) >= spec->vocab.size()) spec->vocab.resize(id + 1);
    spec->vocab[id] = it.key();
  }
  for (const json& merge : m.at("merges")) {
    if (merge.is_string()) {
      const std::string s = merge.get<std::string>();
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) return Unsupported("merge", merge);
      spec->merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (merge.is_array() && merge.size() == 2) {
      spec->merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
    } else {
      return Unsupported("merge", merge);
    }
  }
  spec->bpe.byte_fallback = GetBool(m, "byte_fallback", false);
  spec->bpe.ignore_merges = GetBool(m, "ignore_merges", false);
  spec->bpe.fuse_unk = GetBool(m, "fuse_unk", false);
  const std::string unk = GetString(m, "unk_token");
  if (!unk.empty() && vocab.contains(unk)) spec->bpe.unk_id = TokenId(vocab.at(unk));
  return absl::OkStatus();
}

absl::Status ParseNormalizer(const json& n, TokenizerSpec* spec) {
  if (n.is_null()) return absl::OkStatus();
  const std::string type = GetString(n, "type");
  if (type == "Sequence") {
    for (const json& s : n.at("normalizers")) KVR_RETURN_IF_ERROR(ParseNormalizer(s, spec));
  } else if (type == "Prepend") {
    spec->normalizer.push_back({NormalizerStep::Kind::kPrepend, "", n.at("prepend").get<std::string>()});
  } else if (type == "Replace" && n.at("pattern").contains("String")) {
    spec->normalizer.push_back({NormalizerStep::Kind::kReplace,
                                n.at("pattern").at("String").get<std::string>(),
                                n.at("content").get<std::string>()});
  } else {
    return Unsupported("normalizer", n);
  }
  return absl::OkStatus();
}

absl::Status ParsePrependScheme(const json& p, PreTokenizerStep* step) {
  if (p.contains("prepend_scheme")) {
    const std::string s = GetString(p, "prepend_scheme");
    if (s == "always") {
      step->prepend_scheme = PrependScheme::kAlways;
    } else if (s == "first") {
      step->prepend_scheme = PrependScheme::kFirst;
    } else if (s == "never") {
      step->prepend_scheme = PrependScheme::kNever;
    } else {
      return Unsupported("prepend_scheme", p);
    }
  } else {
    step->prepend_scheme = GetBool(p, "add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  return absl::OkStatus();
}

absl::Status ParsePreTokenizer(const json& p, TokenizerSpec* spec) {
  if (p.is_null()) return absl::OkStatus();
  const std::string type = GetString(p, "type");
  PreTokenizerStep step;
  if (type == "Sequence") {
    for (const json& s : p.at("pretokenizers")) KVR_RETURN_IF_ERROR(ParsePreTokenizer(s, spec));
    return absl::OkStatus();
  } else if (type == "Split") {
    const json& pattern = p.at("pattern");
    if (!pattern.contains("Regex") || GetString(p, "behavior") != "Isolated" || GetBool(p, "invert", false) ||
        !ParseSplitPattern(pattern.at("Regex").get<std::string>(), &step.pattern)) {
      return Unsupported("Split pre-tokenizer", p);
    }
    step.kind = PreTokenizerStep::Kind::kSplit;
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = GetBool(p, "add_prefix_space", true);
    step.use_regex = GetBool(p, "use_regex", true);
    spec->bpe.byte_level = true;
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    if (p.contains("replacement")) step.replacement = p.at("replacement").get<std::string>();
    step.split = GetBool(p, "split", true);
    KVR_RETURN_IF_ERROR(ParsePrependScheme(p, &step));
  } else if (type == "Punctuation" || type == "Digits") {
    step.kind = type == "Digits" ? PreTokenizerStep::Kind::kDigits : PreTokenizerStep::Kind::kPunctuation;
    if (type == "Digits") {
      step.contiguous = !GetBool(p, "individual_digits", false);
    } else {
      const std::string behavior = GetString(p, "behavior");
      if (behavior != "Isolated" && behavior != "Contiguous" && !behavior.empty()) {
        return Unsupported("Punctuation behavior", p);
      }
      step.contiguous = behavior == "Contiguous";
    }
  } else {
    return Unsupported("pre_tokenizer", p);
  }
  spec->pre_tokenizer.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status ParseDecoder(const json& d, TokenizerSpec* spec) {
  if (d.is_null()) return absl::OkStatus();
  const std::string type = GetString(d, "type");
  DecoderConfig& c = spec->decoder;
  if (type == "Sequence") {
    for (const json& s : d.at("decoders")) KVR_RETURN_IF_ERROR(ParseDecoder(s, spec));
  } else if (type == "ByteLevel") {
    c.byte_level = true;
  } else if (type == "Metaspace") {
    PreTokenizerStep step;
    KVR_RETURN_IF_ERROR(ParsePrependScheme(d, &step));
    c.replace_metaspace = true;
    if (d.contains("replacement")) c.metaspace = d.at("replacement").get<std::string>();
    if (c.metaspace.empty())
      return absl::InvalidArgumentError("decoder Metaspace: empty \"replacement\" (expected a string such as \"\u2581\")");
    c.metaspace_drop_first = step.prepend_scheme != PrependScheme::kNever;
  } else if (type == "Replace" && d.at("pattern").contains("String") &&
             GetString(d, "content") == " ") {
    c.replace_metaspace = true;
    c.metaspace = d.at("pattern").at("String").get<std::string>();
    if (c.metaspace.empty())
      return absl::InvalidArgumentError("decoder Replace: empty \"pattern\" string (it would match everywhere)");
  } else if (type == "ByteFallback") {
    c.byte_fallback = true;
  } else if (type == "Fuse") {
    // Tokens are always fused.
  } else if (type == "Strip" && GetString(d, "content") == " " && d.value("stop", 0) == 0) {
    c.strip_leading_spaces = d.value("start", 0);
  } else {
    return Unsupported("decoder", d);
  }
  return absl::OkStatus();
}

// Fills prefix/suffix ids from the post-processor.
absl::Status ParsePostProcessor(const json& p, TokenizerSpec* spec) {
  if (p.is_null()) return absl::OkStatus();
  const std::string type = GetString(p, "type");
  if (type == "Sequence") {
    for (const json& s : p.at("processors")) KVR_RETURN_IF_ERROR(ParsePostProcessor(s, spec));
  } else if (type == "ByteLevel") {
    // Offsets only.
  } else if (type == "TemplateProcessing") {
    spec->prefix_ids.clear();
    spec->suffix_ids.clear();
    bool seen_sequence = false;
    for (const json& item : p.at("single")) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      const std::string name = item.at("SpecialToken").at("id").get<std::string>();
      const json& ids = p.at("special_tokens").at(name).at("ids");
      for (const json& id : ids) (seen_sequence ? spec->suffix_ids : spec->prefix_ids).push_back(TokenId(id));
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    spec->prefix_ids = {TokenId(p.at("cls").at(1))};
    spec->suffix_ids = {TokenId(p.at("sep").at(1))};
  } else {
    return Unsupported("post_processor", p);
  }
  return absl::OkStatus();
}

int32_t TokenIdOf(const TokenizerSpec& spec, const std::string& content) {
  if (content.empty()) return -1;
  for (const AddedToken& t : spec.added_tokens) {
    if (t.content == content) return t.id;
  }
  for (size_t id = 0; id < spec.vocab.size(); ++id) {
    if (spec.vocab[id] == content) return static_cast<int32_t>(id);
  }
  return -1;
}

// "bos_token": "<s>" or {"content": "<s>", ...}
std::string TokenContent(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) return GetString(*it, "content");
  return "";
}

}  // namespace

absl::StatusOr<TokenizerSpec> ParseTokenizerSpec(const std::string& tokenizer_json,
                                                 const std::string& config_json,
                                                 const std::string& generation_json) {
  TokenizerSpec spec;
  try {
    const json tj = json::parse(tokenizer_json);
    KVR_RETURN_IF_ERROR(ParseModel(tj.at("model"), &spec));
    if (tj.contains("added_tokens")) {
      const int64_t id_limit = static_cast<int64_t>(spec.vocab.size() + tj.at("added_tokens").size()) + kIdSlack;
      for (const json& a : tj.at("added_tokens")) {
        AddedToken t;
        t.id = TokenId(a.at("id"), id_limit);
        t.content = a.at("content").get<std::string>();
        t.special = GetBool(a, "special", false);
        t.lstrip = GetBool(a, "lstrip", false);
        t.rstrip = GetBool(a, "rstrip", false);
        t.single_word = GetBool(a, "single_word", false);
        spec.added_tokens.push_back(std::move(t));
      }
    }
    KVR_RETURN_IF_ERROR(ParseNormalizer(tj.value("normalizer", json()), &spec));
    KVR_RETURN_IF_ERROR(ParsePreTokenizer(tj.value("pre_tokenizer", json()), &spec));
    KVR_RETURN_IF_ERROR(ParseDecoder(tj.value("decoder", json()), &spec));
    KVR_RETURN_IF_ERROR(ParsePostProcessor(tj.value("post_processor", json()), &spec));
    if (spec.decoder.byte_level) spec.bpe.byte_level = true;

    json config = config_json.empty() ? json::object() : json::parse(config_json);
    const int32_t bos = TokenIdOf(spec, TokenContent(config, "bos_token"));
    const int32_t eos = TokenIdOf(spec, TokenContent(config, "eos_token"));
    spec.bos_id = bos >= 0 ? bos : (spec.prefix_ids.empty() ? -1 : spec.prefix_ids[0]);
    if (eos >= 0) spec.eos_ids.push_back(eos);
    // transformers' Llama/Gemma fast tokenizers rebuild the post-processor from these flags.
    const std::string cls = GetString(config, "tokenizer_class");
    const bool llama_like = cls.rfind("LlamaTokenizer", 0) == 0 || cls.rfind("CodeLlamaTokenizer", 0) == 0 ||
                            cls.rfind("GemmaTokenizer", 0) == 0;
    if (llama_like) {
      spec.prefix_ids.clear();
      spec.suffix_ids.clear();
      if (GetBool(config, "add_bos_token", true) && bos >= 0) spec.prefix_ids.push_back(bos);
      if (GetBool(config, "add_eos_token", false) && eos >= 0) spec.suffix_ids.push_back(eos);
    }
    if (!generation_json.empty()) {
      const json gj = json::parse(generation_json);
      auto add_eos = [&spec](const json& v) {
        const int32_t id = TokenId(v);
        if (std::find(spec.eos_ids.begin(), spec.eos_ids.end(), id) == spec.eos_ids.end()) spec.eos_ids.push_back(id);
      };
      if (gj.contains("eos_token_id")) {
        const json& e = gj.at("eos_token_id");
        if (e.is_array()) {
          for (const json& v : e) add_eos(v);
        } else if (e.is_number_integer()) {
          add_eos(e);
        }
      }
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer files: bad JSON: ", e.what()));
  } catch (const BadTokenId& e) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer files: ", e.what()));
  }
  return spec;
}

absl::StatusOr<TokenizerSpec> LoadTokenizerSpecFromFolder(const std::string& dir) {
  KVR_ASSIGN_OR_RETURN(std::string tokenizer_json, ReadFile(dir + "/tokenizer.json"));
  absl::StatusOr<std::string> config = ReadFile(dir + "/tokenizer_config.json");
  absl::StatusOr<std::string> generation = ReadFile(dir + "/generation_config.json");
  return ParseTokenizerSpec(tokenizer_json, config.ok() ? *config : "",
                            generation.ok() ? *generation : "");
}

}  // namespace kvr
