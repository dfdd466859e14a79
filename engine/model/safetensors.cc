// Memory-mapped safetensors reader. Every check names the file, and the tensor where there is one:
//   "<path>: tensor \"<name>\": <reason>"
// DataLoss means the file is shorter than its header says (a truncated download); InvalidArgument
// means the header itself is malformed or uses something kvr does not read (e.g. dtype I8).
#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace kvr {
namespace {

using json = nlohmann::json;

// The safetensors format caps the JSON header at 100 MB; anything larger is a corrupt length.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

absl::Status TensorError(absl::StatusCode code, const std::string& path, const std::string& name,
                         absl::string_view reason) {
  return absl::Status(code, absl::StrCat(path, ": tensor \"", name, "\": ", reason));
}

absl::Status FileError(absl::StatusCode code, const std::string& path, absl::string_view reason) {
  return absl::Status(code, absl::StrCat(path, ": ", reason));
}

// Reads a JSON array of non-negative integers (a shape or data_offsets).
bool ReadUints(const json& j, std::vector<uint64_t>* out) {
  if (!j.is_array()) return false;
  out->clear();
  for (const json& v : j) {
    if (v.is_number_unsigned()) {
      out->push_back(v.get<uint64_t>());
    } else if (v.is_number_integer()) {
      const int64_t s = v.get<int64_t>();
      if (s < 0) return false;
      out->push_back(static_cast<uint64_t>(s));
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

int64_t TensorView::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::ShapeString() const { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string reason = absl::StrCat("cannot open: ", std::strerror(err));
    return err == ENOENT ? FileError(absl::StatusCode::kNotFound, path, reason)
                         : FileError(absl::StatusCode::kPermissionDenied, path, reason);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(absl::StatusCode::kInvalidArgument, path, "not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return FileError(absl::StatusCode::kDataLoss, path,
                     absl::StrCat("truncated: ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    return FileError(absl::StatusCode::kInternal, path, absl::StrCat("mmap failed: ", std::strerror(map_errno)));
  }
  // From here the destructor unmaps on every error path.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->size_ = size;
  const auto* bytes = static_cast<const std::byte*>(map);

  // 8-byte little-endian header length.
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | std::to_integer<uint64_t>(bytes[i]);
  if (header_len > size - 8) {
    return FileError(absl::StatusCode::kDataLoss, path,
                     absl::StrCat("header length ", header_len, " exceeds the ", size - 8,
                                  " bytes after it (truncated file, or not a safetensors file)"));
  }
  if (header_len < 2 || header_len > kMaxHeaderBytes) {
    return FileError(absl::StatusCode::kInvalidArgument, path,
                     absl::StrCat("implausible header length ", header_len, " (not a safetensors file?)"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len);
  } catch (const json::exception& e) {
    return FileError(absl::StatusCode::kInvalidArgument, path, absl::StrCat("invalid JSON header: ", e.what()));
  }
  if (!header.is_object()) {
    return FileError(absl::StatusCode::kInvalidArgument, path, "JSON header is not an object");
  }

  const std::byte* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    if (!entry.is_object()) {
      return TensorError(absl::StatusCode::kInvalidArgument, path, name, "entry is not an object");
    }
    const auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return TensorError(absl::StatusCode::kInvalidArgument, path, name, "missing or non-string \"dtype\"");
    }
    auto dtype = ParseSafetensorsDType(dtype_it->get<std::string>());
    if (!dtype.ok()) {
      return TensorError(dtype.status().code(), path, name, dtype.status().message());
    }
    std::vector<uint64_t> shape, offsets;
    const auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !ReadUints(*shape_it, &shape)) {
      return TensorError(absl::StatusCode::kInvalidArgument, path, name,
                         "\"shape\" must be an array of non-negative integers");
    }
    const auto off_it = entry.find("data_offsets");
    if (off_it == entry.end() || !ReadUints(*off_it, &offsets) || offsets.size() != 2) {
      return TensorError(absl::StatusCode::kInvalidArgument, path, name,
                         "\"data_offsets\" must be two non-negative integers [begin, end]");
    }
    const uint64_t begin = offsets[0], end = offsets[1];
    if (begin > end) {
      return TensorError(absl::StatusCode::kInvalidArgument, path, name,
                         absl::StrCat("data_offsets [", begin, ", ", end, "] end before they begin"));
    }
    // Element count, guarding against overflow: no tensor can exceed the file.
    uint64_t numel = 1;
    for (uint64_t d : shape) {
      if (d != 0 && numel > std::numeric_limits<int64_t>::max() / d) {
        return TensorError(absl::StatusCode::kInvalidArgument, path, name, "shape overflows int64");
      }
      numel *= d;
    }
    const uint64_t elem = DTypeSize(*dtype);
    if (numel > std::numeric_limits<uint64_t>::max() / elem || numel * elem != end - begin) {
      return TensorError(absl::StatusCode::kInvalidArgument, path, name,
                         absl::StrCat("data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes but ",
                                      std::string(DTypeName(*dtype)), " [", absl::StrJoin(shape, ", "), "]",
                                      " needs ", numel * elem));
    }
    if (end > data_size) {
      return TensorError(absl::StatusCode::kDataLoss, path, name,
                         absl::StrCat("data_offsets [", begin, ", ", end, "] extend past the end of the data (",
                                      data_size, " bytes): truncated file"));
    }
    TensorView view;
    view.name = name;
    view.file = path;
    view.dtype = *dtype;
    view.shape.assign(shape.begin(), shape.end());
    view.data = data + begin;
    view.num_bytes = end - begin;
    auto [it, inserted] = file->tensors_.emplace(name, std::move(view));
    (void)inserted;  // JSON object keys are unique once parsed
    ranges.push_back({begin, end, &it->first});
  }

  // No two tensors may share bytes. Empty tensors occupy no bytes and cannot overlap.
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const Range* prev = nullptr;
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;
    if (prev != nullptr && r.begin < prev->end) {
      return TensorError(absl::StatusCode::kInvalidArgument, path, *r.name,
                         absl::StrCat("data_offsets [", r.begin, ", ", r.end, "] overlap tensor \"", *prev->name,
                                      "\" at [", prev->begin, ", ", prev->end, "]"));
    }
    prev = &r;
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, size_);
}

}  // namespace kvr
