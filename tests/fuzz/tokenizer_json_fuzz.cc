// Fuzzes tokenizer.json: ParseTokenizerSpec on arbitrary text, then Tokenizer::FromSpec, and for a
// tokenizer that loads, an encode and decode of a fixed text.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto spec = kvr::ParseTokenizerSpec(text, "", "");
  if (!spec.ok()) return 0;
  auto tok = kvr::Tokenizer::FromSpec(std::move(*spec));
  if (!tok.ok()) return 0;
  auto ids = (*tok)->Encode("Hello world, héllo 世界 <s>\n", true);
  if (ids.ok()) (void)(*tok)->Decode(*ids, false);
  return 0;
}
