// kvr-sampler-bench: what the host-side sampler (engine/serving/sampler.h) costs per token, for
// the vocabulary sizes of Llama 2 (32,000) and Llama 3 (128,256) and the usual settings. The
// decode loop samples every sequence of a step on the host after the GPU step, so this adds to
// the inter-token latency that users see.
//
//   kvr-sampler-bench [--reps 200] [--batch 8] [--json out.json]
//
// Logits: "flat" = normal(0, 2) over the whole vocabulary (a random-weight model: large top_p
// sets); "lm" = normal(0, 2.5) plus a head of 200 tokens at +6..+16 (a trained model's shape).
// Each case is timed over --reps samples after 5 warm-up samples; mean microseconds per sample.
// Then a decode step's sampling at batch --batch (V = 128,256, lm logits, one sampler per
// sequence), on 1 thread and on the scheduler's default pool (SchedulerOptions::sampling_threads
// = 0: up to 8): mean microseconds per step.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "engine/serving/sampler.h"
#include "engine/util/fork_join_pool.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(int, reps, 200, "samples timed per case");
ABSL_FLAG(int, batch, 8, "sequences per decode step for the batched part (0: skip it)");
ABSL_FLAG(std::string, json, "", "also write the results to this JSON file");

namespace {

std::vector<float> Logits(int V, bool lm, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> bulk(0, lm ? 2.5f : 2.f);
  std::vector<float> l(V);
  for (float& x : l) x = bulk(rng);
  if (lm) {
    std::uniform_real_distribution<float> head(6, 16);
    for (int i = 0; i < 200; ++i) l[(i * 7919) % V] = head(rng);
  }
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int reps = std::max(1, absl::GetFlag(FLAGS_reps));
  struct Setting {
    const char* name;
    float temperature, top_p;
    int top_k;
    float min_p;
    kvr::SamplingParams Params() const {
      kvr::SamplingParams p;
      p.temperature = temperature;
      p.top_p = top_p;
      p.top_k = top_k;
      p.min_p = min_p;
      return p;
    }
  };
  const Setting settings[] = {{"greedy", 0, 1, 0, 0},
                              {"t=1", 1, 1, 0, 0},
                              {"t=0.7 top_p=0.9", 0.7f, 0.9f, 0, 0},
                              {"t=0.8 top_k=50", 0.8f, 1, 50, 0},
                              {"t=1 min_p=0.05", 1, 1, 0, 0.05f}};
  nlohmann::json out = nlohmann::json::array();
  for (int V : {32000, 128256}) {
    for (bool lm : {false, true}) {
      const std::vector<float> logits = Logits(V, lm, 1);
      for (const Setting& s : settings) {
        kvr::Sampler sampler(s.Params(), {});
        long sum = 0;
        for (int i = 0; i < 5; ++i) sum += sampler.Sample(logits);
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i) sum += sampler.Sample(logits);
        const double us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
        std::printf("V=%6d %-4s %-16s %9.1f us per sample  (token sum %ld)\n", V, lm ? "lm" : "flat", s.name, us, sum);
        std::fflush(stdout);
        out.push_back({{"vocab", V}, {"logits", lm ? "lm" : "flat"}, {"setting", s.name}, {"us", us}});
      }
    }
  }
  if (const int B = absl::GetFlag(FLAGS_batch); B > 0) {
    const int V = 128256;
    const std::vector<float> logits = Logits(V, true, 2);
    const int hw = std::min(8, static_cast<int>(std::thread::hardware_concurrency()));
    for (const Setting& s : {settings[1], settings[2]}) {
      for (int threads : {1, std::max(1, hw)}) {
        kvr::ForkJoinPool pool(threads - 1);
        kvr::SamplingParams p = s.Params();
        std::vector<kvr::Sampler> samplers;
        for (int b = 0; b < B; ++b) {
          p.seed = b;
          samplers.emplace_back(p, std::vector<int32_t>{});
        }
        std::vector<int32_t> tok(B);
        auto step = [&] { pool.Run(B, [&](int b) { tok[b] = samplers[b].Sample(logits); }); };
        for (int i = 0; i < 3; ++i) step();
        const int steps = std::max(1, reps / 4);
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < steps; ++i) step();
        const double us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / steps;
        std::printf("batch %d, V=%d lm %-16s %d thread(s): %9.1f us per step\n", B, V, s.name, threads, us);
        std::fflush(stdout);
        out.push_back({{"batch", B}, {"vocab", V}, {"logits", "lm"}, {"setting", s.name}, {"threads", threads}, {"us_per_step", us}});
      }
    }
  }
  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) std::ofstream(path) << out.dump(1) << "\n";
  return 0;
}
