// Helpers shared by kvr's libFuzzer targets (tests/fuzz/*_fuzz.cc). Each target is a parser that
// reads outside input; it must return an error for bad input, never crash, hang or leak.
//
// Files the targets need (a tokenizer.json, a model config) come from tests/fuzz/data, found
// through $KVR_FUZZ_DATA (run_fuzzers.sh sets it) or the path compiled in (KVR_FUZZ_DATA_DIR).
// Parsers that take a path (safetensors, model folders) get a private scratch folder per process.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace kvr::fuzz {

inline std::string DataPath(const std::string& name) {
  const char* env = std::getenv("KVR_FUZZ_DATA");
  return std::string(env != nullptr && *env != '\0' ? env : KVR_FUZZ_DATA_DIR) + "/" + name;
}

inline std::string ReadOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "fuzz: cannot read %s\n", path.c_str());
    std::abort();
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void WriteOrDie(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || (size > 0 && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

// A folder of its own for this process, made once (under $TMPDIR or /tmp).
inline const std::string& ScratchDir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/kvr-fuzz-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    return pattern;
  }();
  return dir;
}

}  // namespace kvr::fuzz
