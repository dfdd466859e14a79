// Fuzzes tokenizer_config.json and generation_config.json (BOS/EOS tokens, add_bos_token,
// add_eos_token, eos_token_id as a number or a list) next to a valid tokenizer.json. The input
// is the tokenizer_config.json text, then optionally a NUL byte and the generation_config.json.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_json.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
const std::string* tokenizer_json = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizer_json = new std::string(kvr::fuzz::ReadOrDie(kvr::fuzz::DataPath("tokenizer.json")));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string config = input.substr(0, nul);
  const std::string generation = nul == std::string::npos ? "" : input.substr(nul + 1);
  auto spec = kvr::ParseTokenizerSpec(*tokenizer_json, config, generation);
  if (!spec.ok()) return 0;
  auto tok = kvr::Tokenizer::FromSpec(std::move(*spec));
  if (!tok.ok()) return 0;
  auto ids = (*tok)->Encode("the cat", true);
  if (ids.ok()) (void)(*tok)->Decode(*ids, true);
  (void)(*tok)->eos_ids();
  return 0;
}
