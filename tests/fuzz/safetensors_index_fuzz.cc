// Fuzzes ModelFolder::Open on an arbitrary model.safetensors.index.json, in a folder that holds a
// valid config.json and two small valid shards (shard-a/shard-b.safetensors, tensors "a.weight",
// "b.weight", "c.weight"), so that an index naming them gets past parsing to the cross-checks
// between the index and the files.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/model/model_folder.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// A safetensors file with one F32 tensor per name, shape [2], zeros.
std::string Shard(std::initializer_list<const char*> names) {
  std::string header = "{";
  size_t off = 0;
  for (const char* n : names) {
    if (header.size() > 1) header += ",";
    header += std::string("\"") + n + "\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[" +
              std::to_string(off) + "," + std::to_string(off + 8) + "]}";
    off += 8;
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(off, '\0');
}

void Write(const std::string& path, const std::string& s) {
  kvr::fuzz::WriteOrDie(path, reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string& dir = kvr::fuzz::ScratchDir();
  Write(dir + "/config.json", kvr::fuzz::ReadOrDie(kvr::fuzz::DataPath("config.json")));
  Write(dir + "/shard-a.safetensors", Shard({"a.weight", "b.weight"}));
  Write(dir + "/shard-b.safetensors", Shard({"c.weight"}));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = kvr::fuzz::ScratchDir();
  kvr::fuzz::WriteOrDie(dir + "/model.safetensors.index.json", data, size);
  auto folder = kvr::ModelFolder::Open(dir);
  if (folder.ok()) {
    (void)(*folder)->TotalBytes();
    (void)(*folder)->Find("a.weight");
  }
  return 0;
}
