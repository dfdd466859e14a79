// kvr_cuda_bench: single-GPU benchmarks of the CUDA backend on random weights (no checkpoint).
//
//   kvr_cuda_bench [--shape llama2-7b|llama3-8b|mistral-7b|falcon-7b] [--layers N]
//                  [--hidden H --ffn F]  (the shape with other widths: H / head_dim query heads,
//                  K/V heads scaled alike; for seeing what scales with bytes and what does not)
//                  [--prefill 4096,8192,16384,32768] [--attn 4096,...] [--decode 4096,32768]
//                  [--reps 5] [--dtype bf16|fp16] [--variant 0..3] [--out bench.json]
//                  [--attn_impl mma,cudnn] [--attn_prefix S]
//                  [--serve_lens 3001,5500,9000,12345,16000] [--serve_chunk 2048]
//                  [--gemv_bench 0|1] [--floors 0|1] [--prefill_at S] [--profile_step 0|1]
//
// Measures, each the median of --reps after warm-ups:
//   floors   device-to-device copy bandwidth (bytes read + written) and a 8192^3 matrix product
//            through the same cuBLASLt wrapper the runner uses;
//   prefill  TTFT of one chunk of C tokens (host clock from an idle device to the logits on the
//            host), with FLOPs and the fraction of the measured matmul rate; with --prefill_at S
//            the chunk is positions [S, S + C) after a prefix of S random K/V rows (what the
//            last GPU of a KV-Runahead chain computes; FLOPs then count its S*C prefix pairs
//            too); once per
//            --attn_impl (a fresh runner each), so TTFT compares them; cache_ms is NewKvCache's
//            time (the memory pool mapping memory when it must grow); first_ms is the first
//            (cold) run, which includes cuDNN plan building;
//   attn     the prefill attention kernel alone (causal, a chunk of C queries after a prefix of
//            --attn_prefix keys, default 0), CUDA events, TFLOP/s, for each --attn_impl: mma (our
//            kernel, variants 1-3) and cudnn/auto (cuDNN fused attention; plan build ms of the
//            shape, reported apart from the timed runs), then the cuDNN plan build time of chunk
//            shapes as serving sees them (n = 2048 at successive offsets, each shape new);
//   serve    (when cudnn or auto is among --attn_impl) requests of --serve_lens tokens, each
//            prefilled in chunks of --serve_chunk (the last one ragged): per chunk (n, s), the
//            attention time of mma (best variant 0 default), cuDNN with bucketed plans after a
//            Prewarm of BucketGrid(512, serve_chunk, longest) (time of the prewarm reported), and
//            cuDNN with exact plans (plan build of each new shape + run, as a daemon without
//            buckets pays it); totals per implementation, builds included;
//   --floors 0 skips the floors (for profilers that should see only the model's kernels).
//   decode   inter-token latency at batch 1 with a cache of C tokens (host clock per Decode call,
//            CUDA graph replay), against the floor bytes(weights read + K/V read) / copy bandwidth;
//            then the same steps timed by parts on the device (kernels, table and logits copies,
//            the rest host work: SetCudaDecodeTiming). --profile_step 1 brackets one of those
//            steps with cudaProfilerStart / Stop, for a profiler started with profiling off
//            (Nsight Compute: --profile-from-start off --graph-profiling graph).
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/cuda/cuda_runner.h"
#include "engine/util/median.h"
#include "kernels/activation.cuh"
#include "kernels/attention_prefill.cuh"
#include "kernels/cudnn_attention.h"
#include "kernels/gemm.h"
#include "kernels/gemv.cuh"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;
namespace K = kvr::kernels;
using kvr::Median;

std::vector<int> Ints(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ',')) if (!x.empty()) v.push_back(std::atoi(x.c_str()));
  return v;
}

void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}
template <typename S>
void Check(const S& st, const char* what) {
  if (!st.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(st.message()).c_str());
    std::exit(1);
  }
}

kvr::ModelConfig Shape(const std::string& name) {
  kvr::ModelConfig c;
  c.arch = kvr::Architecture::kLlama;
  c.model_type = "llama";
  c.vocab_size = 32000;
  c.hidden_size = 4096;
  c.num_layers = 32;
  c.num_q_heads = 32;
  c.num_kv_heads = 32;
  c.head_dim = 128;
  c.intermediate_size = 11008;
  c.max_position = 131072;
  if (name == "llama3-8b") {
    c.vocab_size = 128256;
    c.num_kv_heads = 8;
    c.intermediate_size = 14336;
    c.rope.theta = 500000.f;
    c.rope.scaling = kvr::RopeConfig::Scaling::kLlama3;
    c.rope.factor = 8.f;
  } else if (name == "mistral-7b") {
    c.arch = kvr::Architecture::kMistral;
    c.num_kv_heads = 8;
    c.intermediate_size = 14336;
  } else if (name == "falcon-7b") {
    c.arch = kvr::Architecture::kFalcon;
    c.vocab_size = 65024;
    c.hidden_size = 4544;
    c.num_q_heads = 71;
    c.num_kv_heads = 1;
    c.head_dim = 64;
    c.intermediate_size = 4 * 4544;
    c.norm = kvr::NormKind::kLayerNorm;
    c.mlp = kvr::MlpKind::kGelu;
    c.parallel_attn_mlp = true;
  } else if (name != "llama2-7b" && name != "llama-7b") {  // llama-7b: kvr-bench's name for it
    std::fprintf(stderr, "unknown shape %s (llama2-7b or llama-7b, llama3-8b, mistral-7b, falcon-7b)\n",
                 name.c_str());
    std::exit(2);
  }
  return c;
}

// FLOPs of a prefill of n tokens from position 0: linear layers on every token, attention over
// the causal triangle (2 products of 2*D each per visible (query, key) pair), lm_head on one row.
// With a prefix of s tokens, each query also sees the s prefix keys.
double PrefillFlops(const kvr::ModelConfig& c, double n, double s = 0) {
  const double C = c.hidden_size, E = c.qkv_dim(), QD = c.q_dim(), F = c.intermediate_size;
  const double U = c.mlp == kvr::MlpKind::kSiluGate ? 2 * F : F;
  const double lin = 2 * n * (C * E + QD * C + C * U + F * C);
  const double att = 4.0 * c.num_q_heads * c.head_dim * (n * (n + 1) / 2 + n * s);
  return c.num_layers * (lin + att) + 2.0 * C * c.vocab_size;
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape = "llama2-7b", out_path, dtype = "bf16";
  std::string prefill_s = "4096,8192,16384,32768", attn_s = "4096,8192,16384,32768", decode_s = "4096,32768";
  std::string attn_impl_s = "mma", serve_lens_s = "3001,5500,9000,12345,16000";
  int layers = 0, hidden = 0, ffn = 0, reps = 5, variant = 0, attn_prefix = 0, serve_chunk = 2048, gemv_bench = 1, floors = 1,
      prefill_at = 0, profile_step = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--shape") shape = next();
    else if (a == "--layers") layers = std::atoi(next().c_str());
    else if (a == "--hidden") hidden = std::atoi(next().c_str());
    else if (a == "--ffn") ffn = std::atoi(next().c_str());
    else if (a == "--prefill") prefill_s = next();
    else if (a == "--attn") attn_s = next();
    else if (a == "--decode") decode_s = next();
    else if (a == "--reps") reps = std::atoi(next().c_str());
    else if (a == "--dtype") dtype = next();
    else if (a == "--variant") variant = std::atoi(next().c_str());
    else if (a == "--out") out_path = next();
    else if (a == "--attn_impl") attn_impl_s = next();
    else if (a == "--attn_prefix") attn_prefix = std::atoi(next().c_str());
    else if (a == "--serve_lens") serve_lens_s = next();
    else if (a == "--serve_chunk") serve_chunk = std::atoi(next().c_str());
    else if (a == "--gemv_bench") gemv_bench = std::atoi(next().c_str());
    else if (a == "--floors") floors = std::atoi(next().c_str());
    else if (a == "--profile_step") profile_step = std::atoi(next().c_str());
    else if (a == "--prefill_at") prefill_at = std::atoi(next().c_str());
    else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
  }
  std::vector<std::string> attn_impls;
  {
    std::stringstream ss(attn_impl_s);
    std::string x;
    while (std::getline(ss, x, ',')) {
      K::AttnImpl impl;
      if (!K::ParseAttnImpl(x, &impl)) { std::fprintf(stderr, "--attn_impl: %s is not mma, cudnn or auto\n", x.c_str()); return 2; }
      attn_impls.push_back(x);
    }
    if (attn_impls.empty()) attn_impls.push_back("mma");
  }
  if (kvr::CudaDeviceCount() == 0) { std::fprintf(stderr, "no CUDA device\n"); return 1; }
  kvr::ModelConfig cfg = Shape(shape);
  if (layers > 0) cfg.num_layers = layers;
  if (hidden > 0) {
    if (hidden % cfg.head_dim != 0 || cfg.num_q_heads * cfg.head_dim != cfg.hidden_size) {
      std::fprintf(stderr, "--hidden must be a multiple of the head size %d\n", cfg.head_dim);
      return 2;
    }
    const int g = cfg.num_q_heads / cfg.num_kv_heads;
    cfg.hidden_size = hidden;
    cfg.num_q_heads = hidden / cfg.head_dim;
    cfg.num_kv_heads = std::max(1, cfg.num_q_heads / g);
  }
  if (ffn > 0) cfg.intermediate_size = ffn;
  const K::DType kdt = dtype == "fp16" ? K::DType::kF16 : K::DType::kBF16;
  nlohmann::json out;
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "props");
  out["device"] = prop.name;
  out["shape"] = shape;
  out["config"] = cfg.Summary();
  out["dtype"] = dtype;
  out["cudnn_version"] = K::CudnnRuntimeVersion();
  std::printf("cuDNN %zu (%s)\n", K::CudnnRuntimeVersion(), K::CudnnAvailable() ? "linked" : "not built in");
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "stream");
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  auto event_ms = [&](auto&& fn, int warm, int n) {
    for (int i = 0; i < warm; ++i) fn();
    std::vector<double> t;
    for (int i = 0; i < n; ++i) {
      cudaEventRecord(e0, stream);
      fn();
      cudaEventRecord(e1, stream);
      Check(cudaEventSynchronize(e1), "event");
      float m = 0;
      cudaEventElapsedTime(&m, e0, e1);
      t.push_back(m);
    }
    return Median(t);
  };

  // ---- floors: copy bandwidth and matmul rate ----
  double copy_gbs = 0, gemm_tflops = 0;
  if (floors) {
    const size_t bytes = 2ull << 30;
    void *a = nullptr, *b = nullptr;
    Check(cudaMalloc(&a, bytes), "malloc");
    Check(cudaMalloc(&b, bytes), "malloc");
    Check(K::FillUniform(kdt, a, bytes / 2, 1.f, 3, stream), "fill");
    const double t = event_ms([&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream); }, 2, 10);
    copy_gbs = 2.0 * bytes / (t * 1e-3) / 1e9;
    cudaFree(a);
    cudaFree(b);
    const int M = 8192;
    void *x, *w, *y;
    Check(cudaMalloc(&x, 2ull * M * M), "malloc");
    Check(cudaMalloc(&w, 2ull * M * M), "malloc");
    Check(cudaMalloc(&y, 2ull * M * M), "malloc");
    Check(K::FillUniform(kdt, x, 1ull * M * M, 1.f, 4, stream), "fill");
    Check(K::FillUniform(kdt, w, 1ull * M * M, 1.f, 5, stream), "fill");
    K::Gemm gemm;
    if (gemm.Init() != CUBLAS_STATUS_SUCCESS) { std::fprintf(stderr, "gemm init\n"); return 1; }
    const double tg = event_ms([&] { gemm.Linear(kdt, x, w, M, M, M, y, K::GemmOut::kSame, 0.f, stream); }, 3, 10);
    gemm_tflops = 2.0 * M * M * M / (tg * 1e-3) / 1e12;
    // Decode-shaped products (one row): cuBLASLt against the GEMV kernel (Gemv's own variant
    // choice, then each variant), in GB/s of weights. Each run reads another copy of the weights
    // in a 1 GiB buffer, so that, as in a decode step, none of them is in L2.
    if (gemv_bench) {
      const size_t big = size_t{1} << 30;
      void* wbig = nullptr;
      Check(cudaMalloc(&wbig, big), "malloc");
      Check(K::FillUniform(kdt, wbig, big / 2, 0.05f, 6, stream), "fill");
      const int shapes[][2] = {{4096, 12288}, {4096, 4096}, {4096, 22016}, {11008, 4096}, {4096, 32000},
                               {4096, 6144}, {4096, 28672}, {14336, 4096}};
      for (auto& s : shapes) {
        const size_t bytes = 2ull * s[0] * s[1];
        const int copies = static_cast<int>(big / bytes);
        int rep = 0;
        auto wat = [&] { return static_cast<char*>(wbig) + (rep++ % copies) * bytes; };
        for (int g = -2; g < K::kGemvVariants; ++g) {
          double t1;
          std::string impl;
          if (g == -2) {
            gemm.set_use_gemv(false);
            impl = "cublaslt";
            t1 = event_ms([&] { gemm.Linear(kdt, x, wat(), 1, s[0], s[1], y, K::GemmOut::kSame, 0.f, stream); }, 3, 20);
          } else {
            impl = g < 0 ? "gemv" : "gemv-v" + std::to_string(g);
            t1 = event_ms([&] { K::GemvVariant(g, kdt, x, wat(), 1, s[0], s[1], y, false, 0.f, stream); }, 3, 20);
          }
          const double gbs = bytes / (t1 * 1e-3) / 1e9;
          out["gemv"].push_back({{"in", s[0]}, {"out", s[1]}, {"impl", impl}, {"us", t1 * 1e3}, {"GBps", gbs}});
          std::printf("1-row product %5d -> %5d %-9s %7.1f us  %6.0f GB/s\n", s[0], s[1], impl.c_str(), t1 * 1e3, gbs);
        }
      }
      cudaFree(wbig);
    }
    cudaFree(x);
    cudaFree(w);
    cudaFree(y);
  }
  out["copy_GBps"] = copy_gbs;
  out["gemm_8192_TFLOPs"] = gemm_tflops;
  std::printf("floors: copy %.0f GB/s (read+write), bf16 matmul 8192^3 %.0f TFLOP/s\n", copy_gbs, gemm_tflops);

  // ---- attention kernel alone ----
  K::CudnnAttention cudnn_attn;
  for (const std::string& impl : attn_impls) {
    if (impl == "mma") continue;
    const K::CudnnAttnStatus st = cudnn_attn.Init();
    if (!st.ok()) std::printf("cudnn attention: Init failed: %s\n", st.message.c_str());
    cudnn_attn.set_verbose(true);
    break;
  }
  for (int n : Ints(attn_s)) {
    const int N = attn_prefix + n;  // keys
    const size_t qn = static_cast<size_t>(n) * cfg.num_q_heads * cfg.head_dim;
    const size_t kn = static_cast<size_t>(N) * cfg.num_kv_heads * cfg.head_dim;
    void *q, *k, *v, *o;
    Check(cudaMalloc(&q, qn * 2), "malloc");
    Check(cudaMalloc(&o, qn * 2), "malloc");
    Check(cudaMalloc(&k, kn * 2), "malloc");
    Check(cudaMalloc(&v, kn * 2), "malloc");
    K::FillUniform(kdt, q, qn, 1.f, 6, stream);
    K::FillUniform(kdt, k, kn, 1.f, 7, stream);
    K::FillUniform(kdt, v, kn, 1.f, 8, stream);
    K::PrefillAttnParams p;
    p.q = q; p.k = k; p.v = v; p.out = o; p.n = n; p.s = attn_prefix;
    p.Hq = cfg.num_q_heads; p.Hkv = cfg.num_kv_heads; p.D = cfg.head_dim;
    p.scale = 1.f / std::sqrt(static_cast<float>(cfg.head_dim));
    // Visible (query, key) pairs: query i sees s + i + 1 keys.
    const double fl = 4.0 * cfg.num_q_heads * cfg.head_dim * (double(n) * attn_prefix + double(n) * (n + 1) / 2);
    for (const std::string& impl : attn_impls) {
      if (impl == "mma") {
        for (int v : {1, 2, 3}) {
          p.variant = v;
          const double t = event_ms([&] { Check(K::PrefillAttention(kdt, p, stream), "attn"); }, 2, reps);
          out["attn"].push_back({{"ctx", n}, {"prefix", attn_prefix}, {"impl", "mma"}, {"variant", v}, {"ms", t},
                                 {"TFLOPs", fl / (t * 1e-3) / 1e12}});
          std::printf("attn  ctx %6d, variant %d: %8.3f ms  %6.1f TFLOP/s (causal, one layer, all heads; mma, prefix %d)\n",
                      n, v, t, fl / (t * 1e-3) / 1e12, attn_prefix);
        }
        continue;
      }
      // cudnn (and auto, which is cuDNN wherever a plan builds): plan build timed cold, apart.
      double build_ms = 0;
      const K::CudnnAttnStatus st = cudnn_attn.Prepare(kdt, p, &build_ms);
      if (!st.ok()) {
        out["attn"].push_back({{"ctx", n}, {"prefix", attn_prefix}, {"impl", impl}, {"plan_build_ms", build_ms},
                               {"error", st.message}});
        std::printf("attn  ctx %6d, %s: no cuDNN plan after %.1f ms: %s\n", n, impl.c_str(), build_ms,
                    st.message.c_str());
        continue;
      }
      const double t = event_ms([&] {
        const K::CudnnAttnStatus r = cudnn_attn.Run(kdt, p, stream);
        if (!r.ok()) { std::fprintf(stderr, "cudnn attn: %s\n", r.message.c_str()); std::exit(1); }
      }, 2, reps);
      Check(cudaGetLastError(), "cudnn attn");
      out["attn"].push_back({{"ctx", n}, {"prefix", attn_prefix}, {"impl", impl}, {"variant", 0}, {"ms", t},
                             {"TFLOPs", fl / (t * 1e-3) / 1e12}, {"plan_build_ms", build_ms},
                             {"workspace_bytes", cudnn_attn.stats().workspace_bytes}});
      std::printf("attn  ctx %6d, %-9s: %8.3f ms  %6.1f TFLOP/s (causal, one layer, all heads; prefix %d)  plan build %.1f ms\n",
                  n, impl.c_str(), t, fl / (t * 1e-3) / 1e12, attn_prefix, build_ms);
    }
    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o);
  }

  // ---- cuDNN plan building as serving sees it: chunks of 2048 queries at successive offsets,
  // each a new (n, N) shape (nothing runs; Prepare only builds the plan) ----
  if (cudnn_attn.initialized()) {
    alignas(16) static char dummy[64];
    const std::vector<int> ctxs = Ints(attn_s);
    const int longest = ctxs.empty() ? 16384 : *std::max_element(ctxs.begin(), ctxs.end());
    std::vector<double> builds;
    for (int s0 = 0; s0 + 2048 <= longest; s0 += 2048) {
      K::PrefillAttnParams p;
      p.q = p.k = p.v = dummy;
      p.out = dummy;
      p.n = 2048; p.s = s0 + 1;  // +1: shapes the attn section above did not build
      p.Hq = cfg.num_q_heads; p.Hkv = cfg.num_kv_heads; p.D = cfg.head_dim;
      p.scale = 1.f / std::sqrt(static_cast<float>(cfg.head_dim));
      double ms = 0;
      const K::CudnnAttnStatus st = cudnn_attn.Prepare(kdt, p, &ms);
      builds.push_back(ms);
      out["cudnn_plan_builds"].push_back({{"n", p.n}, {"s", p.s}, {"build_ms", ms}, {"ok", st.ok()}});
      std::printf("cudnn plan build, chunk n=2048 at s=%6d: %8.1f ms%s%s\n", p.s, ms, st.ok() ? "" : "  FAILED: ",
                  st.ok() ? "" : st.message.c_str());
    }
    if (!builds.empty())
      std::printf("cudnn plan build over %zu new chunk shapes: median %.1f ms, max %.1f ms\n", builds.size(),
                  Median(builds), *std::max_element(builds.begin(), builds.end()));
  }

  // ---- serving-like chunk sequence: mma vs cuDNN bucketed (after prewarm) vs cuDNN exact ----
  if (cudnn_attn.initialized() && !Ints(serve_lens_s).empty() && serve_chunk > 0) {
    const std::vector<int> lens = Ints(serve_lens_s);
    const int longest = *std::max_element(lens.begin(), lens.end());
    const int Hq = cfg.num_q_heads, Hkv = cfg.num_kv_heads, D = cfg.head_dim;
    // A zeroed cache of capacity >= the longest bucket, random keys/values everywhere below
    // `longest` (rows past a chunk's N are then finite, as in the runner's zeroed cache).
    const int cap = K::CudnnAttention::BucketKeys(longest) + 128;
    const int q_rows = K::CudnnAttention::BucketQueries(serve_chunk);
    const size_t kvn = static_cast<size_t>(cap) * Hkv * D, qn = static_cast<size_t>(q_rows) * Hq * D;
    void *q, *k, *v, *o;
    Check(cudaMalloc(&q, qn * 2), "malloc");
    Check(cudaMalloc(&o, qn * 2), "malloc");
    Check(cudaMalloc(&k, kvn * 2), "malloc");
    Check(cudaMalloc(&v, kvn * 2), "malloc");
    Check(cudaMemset(k, 0, kvn * 2), "memset");
    Check(cudaMemset(v, 0, kvn * 2), "memset");
    K::FillUniform(kdt, q, qn, 1.f, 16, stream);
    K::FillUniform(kdt, k, static_cast<size_t>(longest) * Hkv * D, 1.f, 17, stream);
    K::FillUniform(kdt, v, static_cast<size_t>(longest) * Hkv * D, 1.f, 18, stream);
    Check(cudaStreamSynchronize(stream), "fill");
    const char* padmask = std::getenv("KVR_CUDNN_PADMASK");
    std::printf("serve: cuDNN graph %s\n", padmask != nullptr && padmask[0] == '1'
                                               ? "with the padding mask (KVR_CUDNN_PADMASK=1, experimental)"
                                               : "offset-only causal mask (default)");
    // Bucketed: cudnn_attn (bucketing on), prewarmed over the grid the runner would use.
    cudnn_attn.set_bucketing(true);
    cudnn_attn.set_verbose(false);
    const auto grid = K::CudnnAttention::BucketGrid(K::kAutoMinQueries, serve_chunk, longest);
    K::CudnnAttention::PrewarmReport rep;
    size_t free0 = 0, free1 = 0, total_mem = 0;
    cudaMemGetInfo(&free0, &total_mem);
    const K::CudnnAttnStatus pst = cudnn_attn.Prewarm(kdt, Hq, Hkv, D, grid, [](int done, int total, double ms) {
      if (done % 50 == 0 || done == total) std::printf("serve: prewarm %d/%d plans, %.1f s\n", done, total, ms / 1000);
    }, &rep);
    std::printf("serve: prewarm of %zu buckets (chunks %d..%d, up to %d keys): built %d, cached %d, failed %d, "
                "skipped %d in %.1f s (%.1f ms per plan built)%s%s\n",
                grid.size(), K::kAutoMinQueries, serve_chunk, longest, rep.built, rep.cached, rep.failed, rep.skipped,
                rep.total_ms / 1000, rep.built > 0 ? rep.total_ms / rep.built : 0.0, pst.ok() ? "" : ": ",
                pst.message.c_str());
    cudaMemGetInfo(&free1, &total_mem);
    const double plan_mib = (static_cast<double>(free0) - static_cast<double>(free1)) / (1 << 20);
    std::printf("serve: device memory taken by the prewarmed plans (free before - after, workspace included): "
                "%.1f MiB\n", plan_mib);
    out["serve_prewarm"] = {{"buckets", grid.size()}, {"built", rep.built}, {"failed", rep.failed},
                            {"total_ms", rep.total_ms}, {"device_mib", plan_mib}, {"error", rep.first_error}};
    // Exact: a separate object, bucketing off (every new (n, N) builds a plan).
    K::CudnnAttention exact;
    const K::CudnnAttnStatus est = exact.Init();
    exact.set_bucketing(false);
    double tot_mma = 0, tot_bucket = 0, tot_exact_run = 0, tot_exact_build = 0, tot_auto = 0;
    for (int len : lens) {
      for (int s0 = 0; s0 < len; s0 += serve_chunk) {
        K::PrefillAttnParams p;
        p.q = q; p.k = k; p.v = v; p.out = o;
        p.n = std::min(serve_chunk, len - s0); p.s = s0;
        p.Hq = Hq; p.Hkv = Hkv; p.D = D;
        p.scale = 1.f / std::sqrt(static_cast<float>(D));
        p.q_rows = q_rows; p.kv_rows = cap; p.kv_tail_finite = true;
        const double t_mma = event_ms([&] { Check(K::PrefillAttention(kdt, p, stream), "attn"); }, 1, reps);
        const auto [nb, Nb] = cudnn_attn.PlanDims(p);
        const bool hit = cudnn_attn.HasPlan(kdt, p);
        double t_b = -1, t_e = -1, build_e = 0, t_auto = -1;
        K::CudnnAttnStatus st = cudnn_attn.Prepare(kdt, p);
        if (st.ok())
          t_b = event_ms([&] {
            if (!cudnn_attn.Run(kdt, p, stream).ok()) { std::fprintf(stderr, "cudnn run failed\n"); std::exit(1); }
          }, 1, reps);
        K::AttnImpl used = K::AttnImpl::kMma;
        t_auto = event_ms([&] { Check(K::PrefillAttentionWith(K::AttnImpl::kAuto, &cudnn_attn, kdt, p, stream, &used), "auto"); }, 1, reps);
        if (est.ok()) {
          K::CudnnAttnStatus es = exact.Prepare(kdt, p, &build_e);
          if (es.ok())
            t_e = event_ms([&] {
              if (!exact.Run(kdt, p, stream).ok()) { std::fprintf(stderr, "cudnn run failed\n"); std::exit(1); }
            }, 1, reps);
        }
        tot_mma += t_mma;
        tot_bucket += t_b >= 0 ? t_b : t_mma;
        tot_auto += t_auto;
        tot_exact_run += t_e >= 0 ? t_e : t_mma;
        tot_exact_build += build_e;
        out["serve"].push_back({{"len", len}, {"n", p.n}, {"s", p.s}, {"bucket_n", nb}, {"bucket_N", Nb},
                                {"prewarmed", hit}, {"mma_ms", t_mma}, {"cudnn_bucketed_ms", t_b},
                                {"auto_ms", t_auto}, {"auto_used", K::AttnImplName(used)},
                                {"cudnn_exact_ms", t_e}, {"exact_build_ms", build_e}});
        std::printf("serve len %6d chunk n=%5d s=%6d bucket (%5d,%6d)%s: mma %7.3f ms, cudnn bucketed %7.3f ms, "
                    "auto(%s) %7.3f ms, cudnn exact %7.3f ms + plan build %6.1f ms\n",
                    len, p.n, p.s, nb, Nb, hit ? "" : " NOT prewarmed", t_mma, t_b, K::AttnImplName(used), t_auto,
                    t_e, build_e);
      }
    }
    std::printf("serve totals (one layer, all chunks): mma %.2f ms; cudnn bucketed %.2f ms (+ prewarm %.1f s once "
                "at load); auto %.2f ms; cudnn exact %.2f ms run + %.1f ms plan builds\n",
                tot_mma, tot_bucket, rep.total_ms / 1000, tot_auto, tot_exact_run, tot_exact_build);
    out["serve_totals"] = {{"mma_ms", tot_mma}, {"cudnn_bucketed_ms", tot_bucket}, {"auto_ms", tot_auto},
                           {"cudnn_exact_run_ms", tot_exact_run}, {"cudnn_exact_build_ms", tot_exact_build},
                           {"prewarm_ms", rep.total_ms}};
    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o);
  }

  if (Ints(prefill_s).empty() && Ints(decode_s).empty()) {  // kernels only: no model needed
    if (!out_path.empty()) std::ofstream(out_path) << out.dump(1) << "\n";
    return 0;
  }

  // ---- whole model: prefill once per --attn_impl (a fresh runner each), decode on the last ----
  std::unique_ptr<kvr::ModelRunner> runner;
  out["attn_variant"] = variant;
  std::vector<float> logits;
  absl::Span<const float> step_logits;
  for (const std::string& impl : attn_impls) {
    runner.reset();
    kvr::CudaRunnerOptions opt;
    opt.dtype = dtype == "fp16" ? kvr::DType::kF16 : kvr::DType::kBF16;
    opt.attn_variant = variant;
    opt.attn_impl = impl;
    auto runner_or = kvr::MakeRandomCudaRunner(cfg, 0, opt, 11);
    Check(runner_or.status(), "runner");
    runner = std::move(*runner_or);
    kvr::ModelRunner& r = *runner;
    const kvr::MemoryReport mem = r.memory();
    out["weights_bytes"] = mem.weights_bytes;
    std::printf("model %s: weights %.2f GiB, prefill attention %s\n", cfg.Summary().c_str(),
                mem.weights_bytes / 1073741824.0, impl.c_str());
    for (int n : Ints(prefill_s)) {
      const int at = prefill_at;
      const auto ta = Clock::now();
      auto cache = r.NewKvCache(at + n);
      const double cache_ms = std::chrono::duration<double, std::milli>(Clock::now() - ta).count();
      if (!cache.ok()) {
        out["prefill"].push_back({{"ctx", n}, {"attn_impl", impl}, {"error", std::string(cache.status().message())}});
        std::printf("prefill ctx %d: %s\n", n, std::string(cache.status().message()).c_str());
        continue;
      }
      for (int l = 0; l < cfg.num_layers && at > 0; ++l) {  // the prefix: random K/V rows [0, at)
        const kvr::KvLayerView v = (*cache)->layer(l);
        const size_t cnt = static_cast<size_t>(at) * v.bytes_per_token / 2;
        Check(K::FillUniform(kdt, v.k, cnt, 1.f, 300 + l, stream), "fill");
        Check(K::FillUniform(kdt, v.v, cnt, 1.f, 400 + l, stream), "fill");
      }
      Check(cudaStreamSynchronize(stream), "sync");
      std::vector<int32_t> toks(n);
      for (int i = 0; i < n; ++i) toks[i] = (i * 7919 + 13) % cfg.vocab_size;
      std::vector<double> t;
      double first_ms = 0;
      for (int rep = 0; rep < reps + 2; ++rep) {
        Check(r.Synchronize(), "sync");
        const auto t0 = Clock::now();
        auto chunk = r.BeginChunk(toks, at, **cache);
        Check(chunk.status(), "begin");
        for (int l = 0; l < cfg.num_layers; ++l) {
          Check(r.LayerQkv(**chunk, l), "qkv");
          Check(r.LayerAttnMlp(**chunk, l), "attnmlp");
        }
        Check(r.FinishChunk(**chunk, &logits), "finish");
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (rep == 0) first_ms = ms;
        if (rep >= 2) t.push_back(ms);
      }
      const double ms = Median(t), fl = PrefillFlops(cfg, n, at);
      const double tf = fl / (ms * 1e-3) / 1e12;
      out["prefill"].push_back({{"ctx", n}, {"at", at}, {"attn_impl", impl}, {"ttft_ms", ms}, {"all_ms", t}, {"first_ms", first_ms}, {"cache_ms", cache_ms},
                                {"flop", fl}, {"TFLOPs", tf}, {"frac_of_gemm_rate", gemm_tflops > 0 ? tf / gemm_tflops : 0.0}});
      std::printf("prefill ctx %6d at %d: TTFT %9.2f ms  %.3g FLOP  %6.1f TFLOP/s = %.2f of the matmul rate  (attn %s, first run %.2f ms, cache allocation %.2f ms)\n",
                  n, at, ms, fl, tf, gemm_tflops > 0 ? tf / gemm_tflops : 0.0, impl.c_str(), first_ms, cache_ms);
    }
  }
  kvr::ModelRunner& r = *runner;
  const kvr::MemoryReport mem = r.memory();
  // Decode ITL at batch 1 with a cache of n tokens (random K/V), the step appending at n.
  for (int n : Ints(decode_s)) {
    auto cache = r.NewKvCache(n + 1);
    if (!cache.ok()) {
      std::printf("decode ctx %d: %s\n", n, std::string(cache.status().message()).c_str());
      continue;
    }
    for (int l = 0; l < cfg.num_layers; ++l) {
      const kvr::KvLayerView v = (*cache)->layer(l);
      const size_t cnt = static_cast<size_t>(n + 1) * v.bytes_per_token / 2;
      Check(K::FillUniform(kdt, v.k, cnt, 1.f, 100 + l, stream), "fill");
      Check(K::FillUniform(kdt, v.v, cnt, 1.f, 200 + l, stream), "fill");
    }
    Check(cudaStreamSynchronize(stream), "sync");
    // One decode step appending at n, optionally bracketed for a profiler; its host time in ms.
    auto step = [&](bool profiled) {
      const auto t0 = Clock::now();
      kvr::DecodeSlot slot{cache->get(), 17, n};
      if (profiled) Check(cudaProfilerStart(), "profiler start");
      Check(r.Decode({slot}, &step_logits), "decode");
      if (profiled) Check(cudaProfilerStop(), "profiler stop");
      return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    };
    std::vector<double> t;
    for (int rep = 0; rep < 20 + 3; ++rep) {
      const double itl = step(false);
      if (rep >= 3) t.push_back(itl);
    }
    const double ms = Median(t);
    const size_t embed_bytes = static_cast<size_t>(cfg.vocab_size) * cfg.hidden_size * 2;
    const double bytes = double(mem.weights_bytes - (cfg.tie_word_embeddings ? 0 : embed_bytes)) +
                         2.0 * cfg.num_layers * double(n + 1) * cfg.kv_dim() * 2;
    const double floor_ms = bytes / (copy_gbs * 1e9) * 1e3;
    out["decode"].push_back({{"ctx", n}, {"itl_ms", ms}, {"floor_ms", floor_ms}, {"ratio", ms / floor_ms},
                             {"bytes", bytes}});
    std::printf("decode ctx %6d: ITL %7.3f ms  floor %7.3f ms (%.2f GB at %.0f GB/s)  ratio %.2f\n", n, ms,
                floor_ms, bytes / 1e9, copy_gbs, ms / floor_ms);
    // The same steps with device events around their parts: how much of the ITL is the kernels,
    // the table and logits copies, and host work (the rest). A separate loop: the events cost a
    // few microseconds of host time a step.
    Check(kvr::SetCudaDecodeTiming(r, true), "timing");
    std::vector<double> tt, tk, tl, ti;
    for (int rep = 0; rep < 20 + 3; ++rep) {
      const double itl = step(profile_step != 0 && rep == 10);
      auto times = kvr::LastCudaDecodeTimes(r);
      Check(times.status(), "times");
      if (rep >= 3) {
        ti.push_back(itl);
        tt.push_back(times->table_ms);
        tk.push_back(times->step_ms);
        tl.push_back(times->logits_ms);
      }
    }
    Check(kvr::SetCudaDecodeTiming(r, false), "timing");
    const double kern = Median(tk), itl_t = Median(ti), table = Median(tt), copy = Median(tl);
    out["decode"].back()["timed"] = {{"itl_ms", itl_t}, {"kernels_ms", kern}, {"table_ms", table},
                                     {"logits_ms", copy}};
    std::printf("decode ctx %6d, timed: ITL %7.3f ms = kernels %7.3f (ratio %.2f) + table %.3f + logits %.3f + host %.3f\n",
                n, itl_t, kern, kern / floor_ms, table, copy, itl_t - kern - table - copy);
  }
  if (!out_path.empty()) std::ofstream(out_path) << out.dump(1) << "\n";
  return 0;
}
