// Reader for the safetensors format, memory-mapped.
//
// File layout: 8-byte little-endian header length N, N bytes of JSON header
//   {"name": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {...}}
// then the data section; offsets are relative to the start of the data section.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/dtype.h"

namespace kvr {

// A tensor inside a mapped file. `data` stays valid while the SafetensorsFile lives.
struct TensorView {
  std::string name;
  std::string file;            // path of the file that holds it, for error messages
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // row-major, e.g. (rows, cols) for a linear weight (out, in)
  const std::byte* data = nullptr;
  size_t num_bytes = 0;

  int64_t NumElements() const;
  std::string ShapeString() const;  // "[4096, 11008]"
};

class SafetensorsFile {
 public:
  // Maps `path` read-only and validates the header: JSON syntax, dtypes, that every tensor's
  // byte range matches its shape and dtype and lies inside the file, and that ranges do not
  // overlap. Errors name the file and the tensor.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  size_t file_size() const { return size_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
};

}  // namespace kvr
