// Fuzzes decoding of arbitrary token sequences: Tokenizer::Decode on arbitrary ids (out of range
// must be an error) and IncrementalDecoder on arbitrary ids with a prompt as context. Checks
// the streaming contract where it is exact: without a prompt, the pushed deltas plus Flush equal
// Decode of the same ids.
// Input: byte 0 flags, then little-endian uint16 ids; the first `byte 1 % 8` ids are the prompt.
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

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

std::string StreamAll(const kvr::Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  kvr::IncrementalDecoder stream(tok, {}, skip);
  std::string out;
  for (int32_t id : ids) out += stream.Push(id);
  return out + stream.Flush();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  byte_level = Load("tokenizer.json");
  spm = Load("tokenizer_spm.json");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const kvr::Tokenizer* tok = (data[0] & 1) ? spm : byte_level;
  const bool skip_special = (data[0] & 2) != 0;
  const int V = tok->vocab_size();
  std::vector<int32_t> raw, ids;
  for (size_t i = 2; i + 1 < size; i += 2) {
    const int32_t v = static_cast<int32_t>(data[i] | (data[i + 1] << 8));
    raw.push_back(v - 8);  // a few negative ids too
    ids.push_back(v % V);
  }
  // Arbitrary ids: out-of-range ones must be refused, not read.
  bool in_range = true;
  for (int32_t id : raw) in_range = in_range && id >= 0 && id < V;
  auto decoded = tok->Decode(raw, skip_special);
  if (decoded.ok() != in_range) std::abort();

  const size_t n_prompt = std::min<size_t>(data[1] % 8, ids.size());
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + n_prompt);
  kvr::IncrementalDecoder stream(*tok, prompt, skip_special);
  std::string streamed;
  for (size_t i = n_prompt; i < raw.size(); ++i) streamed += stream.Push(raw[i]);
  streamed += stream.Flush();
  if (n_prompt == 0) {
    auto whole = tok->Decode(ids, skip_special);
    if (!whole.ok() || *whole != StreamAll(*tok, ids, skip_special)) std::abort();
  }
  return 0;
}
