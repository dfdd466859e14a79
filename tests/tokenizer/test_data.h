// Locating the fetched tokenizer test data (see fetch_test_data.sh) and reading llama.cpp's
// .inp/.out vectors.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace kvr::testing {

// $KVR_TOKENIZER_DATA, else ${KVR_CACHE_DIR:-$HOME/.cache/kvr}/tokenizer-data.
inline std::string TokenizerDataDir() {
  if (const char* d = std::getenv("KVR_TOKENIZER_DATA"); d != nullptr && *d) return d;
  std::string cache;
  if (const char* c = std::getenv("KVR_CACHE_DIR"); c != nullptr && *c) {
    cache = c;
  } else if (const char* h = std::getenv("HOME"); h != nullptr) {
    cache = std::string(h) + "/.cache/kvr";
  }
  return cache + "/tokenizer-data";
}

inline bool ReadWholeFile(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

struct Vector {
  std::string text;
  std::vector<int32_t> ids;
};

// Cases in .inp are separated by "\n__ggml_vocab_test__\n"; .out has one line of ids per case.
inline bool ReadVectors(const std::string& base, std::vector<Vector>* out) {
  std::string inp, outs;
  if (!ReadWholeFile(base + ".inp", &inp) || !ReadWholeFile(base + ".out", &outs)) return false;
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  size_t pos = 0;
  while (pos < inp.size()) {
    const size_t next = inp.find(sep, pos);
    if (next == std::string::npos) {
      texts.push_back(inp.substr(pos));
      break;
    }
    texts.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::istringstream lines(outs);
  std::vector<std::vector<int32_t>> ids;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream in(line);
    std::vector<int32_t> v;
    for (int32_t id; in >> id;) v.push_back(id);
    ids.push_back(std::move(v));
  }
  if (texts.size() != ids.size() || texts.empty()) return false;
  for (size_t i = 0; i < texts.size(); ++i) out->push_back({texts[i], ids[i]});
  return true;
}

}  // namespace kvr::testing
