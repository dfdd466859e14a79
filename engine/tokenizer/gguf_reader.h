// A GGUF metadata reader: the key/value header only, enough for tokenizer.ggml.* keys. Tensor
// data is never read, so it is cheap on multi-gigabyte model files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace kvr {

struct GgufMetadata {
  absl::flat_hash_map<std::string, std::string> strings;
  absl::flat_hash_map<std::string, int64_t> ints;  // all integer types and bools
  absl::flat_hash_map<std::string, double> floats;
  absl::flat_hash_map<std::string, std::vector<std::string>> string_arrays;
  absl::flat_hash_map<std::string, std::vector<int64_t>> int_arrays;
  absl::flat_hash_map<std::string, std::vector<float>> float_arrays;
};

absl::StatusOr<GgufMetadata> ReadGgufMetadata(const std::string& path);

}  // namespace kvr
