#include "server/validation.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/reflection.h"
#include "google/protobuf/unknown_field_set.h"

namespace kvr {
namespace {

void CollectUnknown(const google::protobuf::Message& m, const std::string& path,
                    std::vector<std::string>* out) {
  const google::protobuf::Reflection* r = m.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown = r->GetUnknownFields(m);
  for (int i = 0; i < unknown.field_count(); ++i)
    out->push_back(absl::StrCat(path, "#", unknown.field(i).number()));
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const auto* f : fields) {
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const std::string sub = path.empty() ? f->name() : absl::StrCat(path, ".", f->name());
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(m, f); ++i)
        CollectUnknown(r->GetRepeatedMessage(m, f, i), sub, out);
    } else {
      CollectUnknown(r->GetMessage(m, f), sub, out);
    }
  }
}

absl::Status Bad(const std::string& what) { return absl::InvalidArgumentError(what); }

}  // namespace

absl::Status CheckNoUnknownFields(const google::protobuf::Message& message) {
  std::vector<std::string> unknown;
  CollectUnknown(message, "", &unknown);
  if (unknown.empty()) return absl::OkStatus();
  return Bad(absl::StrCat("the request has fields this server does not know (", message.GetTypeName(),
                          " field numbers ", absl::StrJoin(unknown, ", "),
                          "); use the kvr.v1 proto this server serves (see server reflection)"));
}

absl::StatusOr<SamplingParams> ToSamplingParams(const v1::SamplingParams& p,
                                                const ModelLimits& limits) {
  SamplingParams s;
  s.max_tokens = p.has_max_tokens() ? p.max_tokens() : kDefaultMaxTokens;
  if (p.has_temperature()) s.temperature = p.temperature();
  if (p.has_top_k()) s.top_k = p.top_k();
  if (p.has_top_p()) s.top_p = p.top_p();
  if (p.has_min_p()) s.min_p = p.min_p();
  if (p.has_repetition_penalty()) s.repetition_penalty = p.repetition_penalty();
  if (p.has_presence_penalty()) s.presence_penalty = p.presence_penalty();
  if (p.has_frequency_penalty()) s.frequency_penalty = p.frequency_penalty();
  if (p.has_seed()) s.seed = p.seed();
  s.ignore_eos = p.ignore_eos();
  s.logprobs = p.has_logprobs() ? p.logprobs() : -1;
  if (p.has_logprobs() && p.logprobs() < 0)
    return Bad(absl::StrCat("sampling.logprobs = ", p.logprobs(), " is not allowed: must be in [0, ",
                            kMaxLogprobs, "], or unset for none"));
  s.stop.assign(p.stop().begin(), p.stop().end());
  s.stop_token_ids.assign(p.stop_token_ids().begin(), p.stop_token_ids().end());
  absl::Status st = ValidateSamplingParams(s, limits.vocab_size);
  if (!st.ok()) return Bad(absl::StrCat("sampling.", st.message()));
  if (s.max_tokens > limits.max_model_len)
    return Bad(absl::StrCat("sampling.max_tokens = ", s.max_tokens,
                            " is not allowed: the context length is ", limits.max_model_len,
                            " tokens, prompt included"));
  return s;
}

absl::Status CheckPromptTextSize(size_t bytes, const ModelLimits& limits) {
  if (bytes <= limits.max_prompt_bytes) return absl::OkStatus();
  return Bad(absl::StrCat("the prompt text is ", bytes, " bytes; allowed: at most ", limits.max_prompt_bytes,
                          " (--max_prompt_bytes)"));
}

absl::Status CheckGenerateRequest(const v1::GenerateRequest& request, const ModelLimits& limits) {
  if (!request.model().empty() && request.model() != limits.name)
    return Bad(absl::StrCat("model \"", request.model(), "\" is not served here; allowed: \"",
                            limits.name, "\" or empty"));
  if (request.request_id().size() > kMaxRequestIdBytes)
    return Bad(absl::StrCat("request_id is ", request.request_id().size(),
                            " bytes; allowed: at most ", kMaxRequestIdBytes));
  if (absl::Status s = CheckNoUnknownFields(request); !s.ok()) return s;
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText:
      if (request.text().empty())
        return Bad("the prompt is empty: give a non-empty text or at least one token id");
      if (absl::Status s = CheckPromptTextSize(request.text().size(), limits); !s.ok()) return s;
      break;
    case v1::GenerateRequest::kTokenIds:
      if (request.token_ids().ids().empty())
        return Bad("the prompt is empty: give a non-empty text or at least one token id");
      break;
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return Bad("no prompt: set `text` or `token_ids`");
  }
  return absl::OkStatus();
}

absl::Status CheckPromptLength(const std::vector<int32_t>& prompt, int max_tokens,
                               const ModelLimits& limits) {
  if (prompt.empty())
    return Bad("the prompt is empty (it tokenized to no tokens): give a non-empty prompt");
  for (int32_t id : prompt) {
    if (id < 0 || id >= limits.vocab_size)
      return Bad(absl::StrCat("prompt token id ", id, " is out of range; allowed: [0, ",
                              limits.vocab_size, ")"));
  }
  const int64_t n = static_cast<int64_t>(prompt.size());
  if (n >= limits.max_model_len)
    return Bad(absl::StrCat("the prompt has ", n, " tokens, more than the context length of ",
                            limits.max_model_len, " tokens allows; allowed: at most ",
                            limits.max_model_len - 1, " prompt tokens, and prompt + max_tokens <= ",
                            limits.max_model_len));
  if (n + max_tokens > limits.max_model_len)
    return Bad(absl::StrCat("prompt (", n, " tokens) + max_tokens (", max_tokens, ") = ",
                            n + max_tokens, " exceeds the context length of ",
                            limits.max_model_len, " tokens; allowed: max_tokens <= ",
                            limits.max_model_len - n, " for this prompt"));
  return absl::OkStatus();
}

}  // namespace kvr
