// kvr-tokenize: encode or decode with kvr's tokenizer from the command line.
//
//   kvr-tokenize --tokenizer DIR|FILE.gguf --text "Hello world"          ids on one line
//   kvr-tokenize --tokenizer DIR --file corpus.txt --lines --print-ids   one line of ids per line
//   kvr-tokenize --tokenizer DIR --file corpus.txt --bench 5             tokens/s of Encode
//   kvr-tokenize --tokenizer DIR --decode "15043 3186"                    text
// Flags: --add-special (BOS/EOS rules as HF add_special_tokens=True), --lines (each input line
// is encoded separately, without its newline).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

namespace {

int Fail(const std::string& msg) {
  std::fprintf(stderr, "kvr-tokenize: %s\n", msg.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_path, text, file, decode;
  bool print_ids = true, lines = false, add_special = false, have_text = false;
  int bench = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string v;
    if (a == "--tokenizer" && value(&tokenizer_path)) {
    } else if (a == "--text" && value(&text)) {
      have_text = true;
    } else if (a == "--file" && value(&file)) {
    } else if (a == "--decode" && value(&decode)) {
    } else if (a == "--bench" && value(&v)) {
      bench = std::stoi(v);
    } else if (a == "--print-ids") {
      print_ids = true;
    } else if (a == "--lines") {
      lines = true;
    } else if (a == "--add-special") {
      add_special = true;
    } else {
      return Fail("unknown or incomplete flag " + a);
    }
  }
  if (tokenizer_path.empty()) return Fail("--tokenizer is required");
  const bool gguf = tokenizer_path.size() > 5 && tokenizer_path.substr(tokenizer_path.size() - 5) == ".gguf";
  auto tok = gguf ? kvr::Tokenizer::FromGguf(tokenizer_path) : kvr::Tokenizer::FromModelFolder(tokenizer_path);
  if (!tok.ok()) return Fail(std::string(tok.status().message()));

  if (!decode.empty()) {
    std::vector<int32_t> ids;
    std::istringstream in(decode);
    for (int32_t id; in >> id;) ids.push_back(id);
    auto out = (*tok)->Decode(ids, false);
    if (!out.ok()) return Fail(std::string(out.status().message()));
    std::cout << *out << "\n";
    return 0;
  }
  if (!file.empty()) {
    std::ifstream f(file, std::ios::binary);
    if (!f) return Fail("cannot open " + file);
    std::ostringstream ss;
    ss << f.rdbuf();
    text = ss.str();
  } else if (!have_text) {
    return Fail("give --text, --file or --decode");
  }
  std::vector<std::string> inputs;
  if (lines) {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) inputs.push_back(line);
  } else {
    inputs.push_back(text);
  }
  if (bench > 0) {
    size_t tokens = 0, bytes = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < bench; ++r) {
      for (const std::string& s : inputs) {
        auto ids = (*tok)->Encode(s, add_special);
        if (!ids.ok()) return Fail(std::string(ids.status().message()));
        tokens += ids->size();
        bytes += s.size();
      }
    }
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("tokens=%zu bytes=%zu seconds=%.4f tokens_per_s=%.0f MB_per_s=%.2f\n", tokens, bytes, sec,
                tokens / sec, bytes / sec / 1e6);
    return 0;
  }
  std::string out;
  for (const std::string& s : inputs) {
    auto ids = (*tok)->Encode(s, add_special);
    if (!ids.ok()) return Fail(std::string(ids.status().message()));
    for (size_t k = 0; k < ids->size(); ++k) {
      if (k) out.push_back(' ');
      out += std::to_string((*ids)[k]);
    }
    out.push_back('\n');
  }
  if (print_ids) std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}
