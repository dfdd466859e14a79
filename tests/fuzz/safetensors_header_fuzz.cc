// Fuzzes SafetensorsFile::Open on arbitrary file contents: the 8-byte header length, the JSON
// header (dtypes, shapes, data_offsets, __metadata__) and the bounds checks against the file.
// An accepted file's every tensor is read end to end (a range outside the mapping would fault).
#include <cstddef>
#include <cstdint>

#include "engine/model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = kvr::fuzz::ScratchDir() + "/model.safetensors";
  kvr::fuzz::WriteOrDie(path, data, size);
  auto file = kvr::SafetensorsFile::Open(path);
  if (!file.ok()) return 0;
  volatile unsigned sum = 0;
  for (const auto& [name, view] : (*file)->tensors()) {
    (void)view.NumElements();
    (void)view.ShapeString();
    for (size_t i = 0; i < view.num_bytes; ++i) sum = sum + static_cast<unsigned>(view.data[i]);
  }
  return 0;
}
