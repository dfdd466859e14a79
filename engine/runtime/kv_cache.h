// KV-cache of one request on one device.
//
// Layout (decided once, here): for every layer l, two token-major arrays
//   K[l]: (capacity, Hkv, D)    V[l]: (capacity, Hkv, D)
// so the keys and values of any token range [a, b) of one layer are one contiguous byte range:
// a KV-Runahead receive lands on it directly, and a send reads it directly.
// Element type is the backend's compute type (fp32 on the CPU reference, bf16/fp16 on CUDA).
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvr {

// Where one layer's K and V live. Pointers are host or device addresses, as the backend says.
struct KvLayerView {
  std::byte* k = nullptr;       // (capacity, Hkv, D)
  std::byte* v = nullptr;       // (capacity, Hkv, D)
  size_t bytes_per_token = 0;   // Hkv * D * element size
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual int capacity() const = 0;    // tokens it can hold
  virtual int num_layers() const = 0;
  virtual KvLayerView layer(int l) = 0;
  virtual int device() const = 0;      // device index of the runner that made it (0 on the CPU)
  virtual size_t bytes() const = 0;    // memory it holds
};

}  // namespace kvr
