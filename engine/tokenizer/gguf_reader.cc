#include "engine/tokenizer/gguf_reader.h"

#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace kvr {

namespace {

enum GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

class Reader {
 public:
  explicit Reader(std::ifstream* f) : f_(f) {}

  template <typename T>
  absl::StatusOr<T> Read() {
    T v;
    if (!f_->read(reinterpret_cast<char*>(&v), sizeof(T))) return Truncated();
    return v;
  }

  absl::StatusOr<std::string> ReadString() {
    KVR_ASSIGN_OR_RETURN(uint64_t n, Read<uint64_t>());
    if (n > (1u << 30)) return absl::InvalidArgumentError("GGUF: string too long");
    std::string s(n, '\0');
    if (n > 0 && !f_->read(s.data(), static_cast<std::streamsize>(n))) return Truncated();
    return s;
  }

  // Reads a scalar of the given type as integer or double.
  absl::Status ReadScalar(uint32_t type, int64_t* i, double* d, bool* is_float) {
    *is_float = false;
    switch (type) {
      case kU8: { KVR_ASSIGN_OR_RETURN(uint8_t v, Read<uint8_t>()); *i = v; break; }
      case kI8: { KVR_ASSIGN_OR_RETURN(int8_t v, Read<int8_t>()); *i = v; break; }
      case kU16: { KVR_ASSIGN_OR_RETURN(uint16_t v, Read<uint16_t>()); *i = v; break; }
      case kI16: { KVR_ASSIGN_OR_RETURN(int16_t v, Read<int16_t>()); *i = v; break; }
      case kU32: { KVR_ASSIGN_OR_RETURN(uint32_t v, Read<uint32_t>()); *i = v; break; }
      case kI32: { KVR_ASSIGN_OR_RETURN(int32_t v, Read<int32_t>()); *i = v; break; }
      case kBool: { KVR_ASSIGN_OR_RETURN(uint8_t v, Read<uint8_t>()); *i = v != 0; break; }
      case kU64: { KVR_ASSIGN_OR_RETURN(uint64_t v, Read<uint64_t>()); *i = static_cast<int64_t>(v); break; }
      case kI64: { KVR_ASSIGN_OR_RETURN(int64_t v, Read<int64_t>()); *i = v; break; }
      case kF32: { KVR_ASSIGN_OR_RETURN(float v, Read<float>()); *d = v; *is_float = true; break; }
      case kF64: { KVR_ASSIGN_OR_RETURN(double v, Read<double>()); *d = v; *is_float = true; break; }
      default:
        return absl::InvalidArgumentError(absl::StrCat("GGUF: unknown value type ", type));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Truncated() { return absl::InvalidArgumentError("GGUF: file truncated"); }
  std::ifstream* f_;
};

}  // namespace

absl::StatusOr<GgufMetadata> ReadGgufMetadata(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  Reader r(&f);
  KVR_ASSIGN_OR_RETURN(uint32_t magic, r.Read<uint32_t>());
  if (std::memcmp(&magic, "GGUF", 4) != 0) return absl::InvalidArgumentError(absl::StrCat(path, " is not a GGUF file"));
  KVR_ASSIGN_OR_RETURN(uint32_t version, r.Read<uint32_t>());
  if (version < 2 || version > 3) return absl::InvalidArgumentError(absl::StrCat("GGUF version ", version, " not supported"));
  KVR_ASSIGN_OR_RETURN(uint64_t n_tensors, r.Read<uint64_t>());
  (void)n_tensors;
  KVR_ASSIGN_OR_RETURN(uint64_t n_kv, r.Read<uint64_t>());
  GgufMetadata md;
  for (uint64_t k = 0; k < n_kv; ++k) {
    KVR_ASSIGN_OR_RETURN(std::string key, r.ReadString());
    KVR_ASSIGN_OR_RETURN(uint32_t type, r.Read<uint32_t>());
    if (type == kString) {
      KVR_ASSIGN_OR_RETURN(md.strings[key], r.ReadString());
    } else if (type == kArray) {
      KVR_ASSIGN_OR_RETURN(uint32_t elem, r.Read<uint32_t>());
      KVR_ASSIGN_OR_RETURN(uint64_t n, r.Read<uint64_t>());
      if (n > (1ull << 28)) return absl::InvalidArgumentError("GGUF: array too long");
      if (elem == kString) {
        auto& v = md.string_arrays[key];
        v.reserve(n);
        for (uint64_t i = 0; i < n; ++i) {
          KVR_ASSIGN_OR_RETURN(std::string s, r.ReadString());
          v.push_back(std::move(s));
        }
      } else if (elem == kArray) {
        return absl::InvalidArgumentError("GGUF: nested arrays not supported");
      } else {
        int64_t iv = 0;
        double dv = 0;
        bool is_float = false;
        for (uint64_t i = 0; i < n; ++i) {
          KVR_RETURN_IF_ERROR(r.ReadScalar(elem, &iv, &dv, &is_float));
          if (is_float) {
            md.float_arrays[key].push_back(static_cast<float>(dv));
          } else {
            md.int_arrays[key].push_back(iv);
          }
        }
      }
    } else {
      int64_t iv = 0;
      double dv = 0;
      bool is_float = false;
      KVR_RETURN_IF_ERROR(r.ReadScalar(type, &iv, &dv, &is_float));
      if (is_float) {
        md.floats[key] = dv;
      } else {
        md.ints[key] = iv;
      }
    }
  }
  return md;
}

}  // namespace kvr
