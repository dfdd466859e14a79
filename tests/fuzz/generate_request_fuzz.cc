// Fuzzes request validation on arbitrary kvr.v1.GenerateRequest messages, exactly as
// GenerationService::Generate runs it: the wire bytes are parsed as a GenerateRequest (unknown
// fields included), then CheckGenerateRequest, ToSamplingParams, tokenization of a text prompt
// with the test tokenizer (or the ids as given), and CheckPromptLength.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_json.h"
#include "server/validation.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
const kvr::Tokenizer* tokenizer = nullptr;
kvr::ModelLimits limits;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  auto spec = kvr::ParseTokenizerSpec(
      kvr::fuzz::ReadOrDie(kvr::fuzz::DataPath("tokenizer.json")), "", "");
  if (!spec.ok()) std::abort();
  auto tok = kvr::Tokenizer::FromSpec(std::move(*spec));
  if (!tok.ok()) std::abort();
  tokenizer = tok->release();
  limits.name = "kvr-test";
  limits.vocab_size = tokenizer->vocab_size();
  limits.max_model_len = 128;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvr::v1::GenerateRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (!kvr::CheckGenerateRequest(req, limits).ok()) return 0;
  auto sampling = kvr::ToSamplingParams(req.sampling(), limits);
  if (!sampling.ok()) return 0;
  std::vector<int32_t> prompt;
  if (req.has_token_ids()) {
    prompt.assign(req.token_ids().ids().begin(), req.token_ids().ids().end());
  } else {
    auto ids = tokenizer->Encode(req.text(), req.has_add_special_tokens() ? req.add_special_tokens() : true);
    if (!ids.ok()) return 0;
    prompt = std::move(*ids);
  }
  absl::Status s = kvr::CheckPromptLength(prompt, sampling->max_tokens, limits);
  if (s.ok()) {
    // What validation accepted must be safe for the engine: ids in range, lengths within limits.
    for (int32_t id : prompt) {
      if (id < 0 || id >= limits.vocab_size) std::abort();
    }
    if (static_cast<int64_t>(prompt.size()) + sampling->max_tokens > limits.max_model_len ||
        sampling->max_tokens < 1)
      std::abort();
  }
  return 0;
}
