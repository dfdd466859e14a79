// Fuzzes ParseModelConfig on arbitrary config.json text: JSON syntax, types of every key,
// architecture detection, ranges (heads, dims, rope scaling) and the derived sizes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = kvr::ParseModelConfig(text, "fuzz/config.json");
  if (config.ok()) {
    (void)config->Summary();
    (void)config->NumParameters();
    if (config->head_dim > 0 && config->head_dim <= 4096)
      (void)kvr::RopeInverseFrequencies(config->rope, config->head_dim);
  }
  return 0;
}
