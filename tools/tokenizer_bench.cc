// kvr-tokenizer-bench: Encode throughput on a ~100k-token English text, incremental decoding
// throughput, and timings of pathological inputs (a million spaces, a 1 MB word, emoji runs).
//
//   kvr-tokenizer-bench --tokenizer DIR|FILE.gguf [--file english.txt] [--repeat 5]
// Without --file the English text is generated: sentences drawn from a fixed word list by a
// seeded generator, about 100k tokens.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string GenerateEnglish(size_t target_bytes) {
  static const char* kWords[] = {
      "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
      "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
      "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has",
      "there", "been", "if", "more", "when", "will", "would", "who", "so", "no", "system",
      "memory", "server", "request", "latency", "throughput", "model", "token", "prefill",
      "decode", "attention", "cache", "schedule", "network", "question", "answer", "river",
      "mountain", "library", "engineer", "measurement", "afternoon", "surprisingly", "quietly",
      "however", "although", "because", "between", "through", "during", "without", "before",
      "people", "government", "development", "information", "understanding", "responsibility",
      "2024", "17", "3.14", "GPU", "H100", "don't", "it's", "we're", "they'll", "I've"};
  constexpr int kN = sizeof(kWords) / sizeof(kWords[0]);
  std::mt19937 rng(12345);
  std::string out;
  out.reserve(target_bytes + 256);
  while (out.size() < target_bytes) {
    const int len = 6 + static_cast<int>(rng() % 18);
    for (int w = 0; w < len; ++w) {
      std::string word = kWords[rng() % kN];
      if (w == 0) word[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
      out += word;
      const unsigned r = rng() % 20;
      out += w + 1 == len ? (r < 15 ? ". " : r < 18 ? "? " : "!\n\n") : (r == 0 ? ", " : r == 1 ? "; " : " ");
    }
  }
  return out;
}

void TimeEncode(const kvr::Tokenizer& tok, const char* name, const std::string& text) {
  const auto t0 = Clock::now();
  auto ids = tok.Encode(text, false);
  const double s = Since(t0);
  std::printf("  %-28s %9zu bytes -> %9zu tokens in %8.3f s%s\n", name, text.size(),
              ids.ok() ? ids->size() : 0, s, ids.ok() ? "" : "  (error)");
}

}  // namespace

int main(int argc, char** argv) {
  std::string path, file;
  int repeat = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--tokenizer") path = argv[i + 1];
    else if (a == "--file") file = argv[i + 1];
    else if (a == "--repeat") repeat = std::stoi(argv[i + 1]);
  }
  if (path.empty()) {
    std::fprintf(stderr, "usage: kvr-tokenizer-bench --tokenizer DIR|FILE.gguf [--file F] [--repeat N]\n");
    return 1;
  }
  const bool gguf = path.size() > 5 && path.substr(path.size() - 5) == ".gguf";
  const auto t_load = Clock::now();
  auto tok = gguf ? kvr::Tokenizer::FromGguf(path) : kvr::Tokenizer::FromModelFolder(path);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  std::printf("load: %.3f s, vocab %d\n", Since(t_load), (*tok)->vocab_size());

  std::string text;
  if (!file.empty()) {
    std::ifstream f(file, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    text = ss.str();
  } else {
    text = GenerateEnglish(520000);
  }
  std::vector<int32_t> ids;
  double best = 1e30;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = Clock::now();
    auto got = (*tok)->Encode(text, false);
    best = std::min(best, Since(t0));
    if (!got.ok()) {
      std::fprintf(stderr, "%s\n", std::string(got.status().message()).c_str());
      return 1;
    }
    ids = *std::move(got);
  }
  std::printf("encode: %zu bytes -> %zu tokens, best of %d: %.4f s = %.0f tokens/s (%.1f MB/s)\n",
              text.size(), ids.size(), repeat, best, ids.size() / best, text.size() / best / 1e6);

  auto t0 = Clock::now();
  kvr::IncrementalDecoder stream(**tok);
  size_t out_bytes = 0;
  for (int32_t id : ids) out_bytes += stream.Push(id).size();
  out_bytes += stream.Flush().size();
  const double dec = Since(t0);
  std::printf("incremental decode: %zu tokens -> %zu bytes in %.4f s = %.0f tokens/s\n", ids.size(),
              out_bytes, dec, ids.size() / dec);

  std::printf("pathological inputs:\n");
  TimeEncode(**tok, "1M spaces", std::string(1000000, ' '));
  TimeEncode(**tok, "1M newlines", std::string(1000000, '\n'));
  TimeEncode(**tok, "1 MB single word (abc...)", [] {
    std::string s;
    for (int i = 0; i < 1000000; ++i) s.push_back(static_cast<char>('a' + (i * 7) % 26));
    return s;
  }());
  TimeEncode(**tok, "1 MB of 'a'", std::string(1000000, 'a'));
  TimeEncode(**tok, "1 MB digits", std::string(1000000, '7'));
  TimeEncode(**tok, "emoji run (250k x U+1F600)", [] {
    std::string s;
    for (int i = 0; i < 250000; ++i) s += "\xF0\x9F\x98\x80";
    return s;
  }());
  TimeEncode(**tok, "emoji ZWJ run (100k)", [] {
    std::string s;
    for (int i = 0; i < 100000; ++i) s += "\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB";
    return s;
  }());
  TimeEncode(**tok, "1M punctuation (!?...)", [] {
    std::string s;
    for (int i = 0; i < 1000000; ++i) s.push_back("!?.,;"[i % 5]);
    return s;
  }());
  return 0;
}
