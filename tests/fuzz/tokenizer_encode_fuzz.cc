// Fuzzes Tokenizer::Encode on arbitrary bytes (invalid UTF-8 included: it must be refused with
// InvalidArgument, never crash) with the byte-level test tokenizer (tests/fuzz/data/tokenizer.json)
// and the sentencepiece-style one with byte fallback (tokenizer_spm.json); what encodes must
// decode back without error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string_view>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_json.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const kvr::Tokenizer* Load(const char* name) {
  auto spec = kvr::ParseTokenizerSpec(kvr::fuzz::ReadOrDie(kvr::fuzz::DataPath(name)), "", "");
  if (!spec.ok()) std::abort();
  auto tok = kvr::Tokenizer::FromSpec(std::move(*spec));
  if (!tok.ok()) std::abort();
  return tok->release();
}

const kvr::Tokenizer* byte_level = nullptr;
const kvr::Tokenizer* spm = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  byte_level = Load("tokenizer.json");
  spm = Load("tokenizer_spm.json");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const kvr::Tokenizer* tok = (data[0] & 1) ? spm : byte_level;
  const bool special = (data[0] & 2) != 0;
  auto ids = tok->Encode(text, special);
  if (!ids.ok()) return 0;
  for (int32_t id : *ids) {
    if (id < 0 || id >= tok->vocab_size()) std::abort();
  }
  auto back = tok->Decode(*ids, (data[0] & 4) != 0);
  if (!back.ok()) std::abort();
  return 0;
}
