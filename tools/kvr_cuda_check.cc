// kvr_cuda_check: runs a Hugging Face folder on one GPU with the CUDA backend, for comparison
// with transformers (tests/cuda/hf_compare.py).
//
//   kvr_cuda_check --model DIR --tokens FILE [--decode N] [--force FILE] [--out out.json]
//                  [--logits logits.bin] [--device 0] [--dtype bf16|fp16]
//
// Prefill of the prompt (token ids, whitespace-separated, in --tokens) as one chunk, then N
// greedy decode steps (or, with --force, decode steps fed the given ids: teacher forcing).
// --logits writes (1 + N) rows of V float32: the prompt's last-position logits, then each decode
// step's. --out writes JSON: the ids chosen by argmax at each row, timings and memory.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "engine/cuda/cuda_runner.h"
#include "engine/model/model_folder.h"
#include "engine/model/model_weights.h"
#include "nlohmann/json.hpp"

namespace {

std::vector<int32_t> ReadIds(const std::string& path) {
  std::ifstream f(path);
  std::vector<int32_t> ids;
  long long v;
  while (f >> v) ids.push_back(static_cast<int32_t>(v));
  return ids;
}

int Argmax(const float* x, int n) { return static_cast<int>(std::max_element(x, x + n) - x); }

int Fail(const std::string& what) {
  std::fprintf(stderr, "kvr_cuda_check: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, tokens_path, force_path, out_path, logits_path, dtype = "bf16";
  int decode = 0, device = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--model") model = next();
    else if (a == "--tokens") tokens_path = next();
    else if (a == "--force") force_path = next();
    else if (a == "--out") out_path = next();
    else if (a == "--logits") logits_path = next();
    else if (a == "--decode") decode = std::atoi(next().c_str());
    else if (a == "--device") device = std::atoi(next().c_str());
    else if (a == "--dtype") dtype = next();
    else return Fail("unknown argument " + a);
  }
  if (model.empty() || tokens_path.empty()) return Fail("--model and --tokens are required");
  if (kvr::CudaDeviceCount() == 0) return Fail("no CUDA device");
  const std::vector<int32_t> prompt = ReadIds(tokens_path);
  std::vector<int32_t> forced;
  if (!force_path.empty()) forced = ReadIds(force_path);
  if (prompt.empty()) return Fail("no token ids in " + tokens_path);
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  const auto t_load = Clock::now();
  auto folder = kvr::ModelFolder::Open(model);
  if (!folder.ok()) return Fail(folder.status().ToString());
  auto weights = kvr::BindWeights(**folder);
  if (!weights.ok()) return Fail(weights.status().ToString());
  kvr::CudaRunnerOptions opt;
  opt.dtype = dtype == "fp16" ? kvr::DType::kF16 : kvr::DType::kBF16;
  auto runner_or = kvr::MakeCudaRunner(**folder, *weights, device, opt);
  if (!runner_or.ok()) return Fail(runner_or.status().ToString());
  kvr::ModelRunner& runner = **runner_or;
  const auto t_loaded = Clock::now();
  const int V = runner.config().vocab_size;
  const int C = static_cast<int>(prompt.size());
  auto cache = runner.NewKvCache(C + decode);
  if (!cache.ok()) return Fail(cache.status().ToString());

  std::vector<float> all;  // (1 + decode, V)
  std::vector<float> logits;
  nlohmann::json out;
  // Warm-up prefill (cuBLASLt plans, module load), then the timed one.
  for (int rep = 0; rep < 2; ++rep) {
    const auto t0 = Clock::now();
    auto chunk = runner.BeginChunk(prompt, 0, **cache);
    if (!chunk.ok()) return Fail(chunk.status().ToString());
    for (int l = 0; l < runner.config().num_layers; ++l) {
      auto st = runner.LayerQkv(**chunk, l);
      if (st.ok()) st = runner.LayerAttnMlp(**chunk, l);
      if (!st.ok()) return Fail(st.ToString());
    }
    auto st = runner.FinishChunk(**chunk, &logits);
    if (!st.ok()) return Fail(st.ToString());
    out["prefill_ms"] = ms(t0, Clock::now());
  }
  all.insert(all.end(), logits.begin(), logits.end());
  std::vector<int> ids = {Argmax(logits.data(), V)};
  std::vector<double> step_ms;
  for (int s = 0; s < decode; ++s) {
    const int32_t tok = s < static_cast<int>(forced.size()) ? forced[s] : ids.back();
    const auto t0 = Clock::now();
    kvr::DecodeSlot slot{cache->get(), tok, C + s};
    absl::Span<const float> out;
    auto st = runner.Decode({slot}, &out);
    if (!st.ok()) return Fail(st.ToString());
    logits.assign(out.begin(), out.end());
    step_ms.push_back(ms(t0, Clock::now()));
    all.insert(all.end(), logits.begin(), logits.end());
    ids.push_back(Argmax(logits.data(), V));
  }
  const kvr::MemoryReport m = runner.memory();
  out["model"] = model;
  out["device"] = runner.device_name();
  out["config"] = runner.config().Summary();
  out["prompt_tokens"] = C;
  out["ids"] = ids;
  out["forced"] = !forced.empty();
  out["decode_ms"] = step_ms;
  out["load_ms"] = ms(t_load, t_loaded);
  out["memory"] = {{"weights_bytes", m.weights_bytes}, {"workspace_bytes", m.workspace_bytes},
                   {"kv_cache_bytes", (*cache)->bytes()}, {"free_bytes", m.free_bytes},
                   {"total_bytes", m.total_bytes}};
  if (!logits_path.empty()) {
    std::ofstream f(logits_path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(all.data()), static_cast<std::streamsize>(all.size() * sizeof(float)));
  }
  if (!out_path.empty()) {
    std::ofstream(out_path) << out.dump(1) << "\n";
  } else {
    std::cout << out.dump(1) << "\n";
  }
  return 0;
}
