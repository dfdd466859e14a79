// kvr-bench: time to first token of one prompt's prefill on 1..N GPUs, every way kvr can split
// it, on random weights of a real model shape. One command prints a table and writes JSON.
//
//   kvr-bench --shape llama-7b --gpus 1,2,4 --ctx 1024,4096,8192,16384,32768 --out bench.json
//
// Modes (--modes), all in the same engine with the same kernels:
//   1gpu       the whole prompt on one GPU
//   tp         Megatron tensor parallelism over p GPUs (heads and MLP split, two all-reduces per
//              layer); refused, with the reason in the JSON, where the head counts do not divide
//   tsp        the paper's baseline: even split, all-gather of K/V every layer
//   kvr-e      KV-Runahead, even split, chain               kvr-e-fan   same, fan-out topology
//   kvr-cost   KV-Runahead, split from the calibrated cost model (chain; kvr-cost-fan: fan-out)
//   kvr-s      KV-Runahead, split searched on the device (coarse to fine, from the kvr-cost split,
//              --search_reps timings per candidate), then the --confirm cheapest candidates
//              timed again with --reps, with the even and cost-model splits, and the cheapest
//              of those kept (ConfirmBest)
//   kvr-p      KV-Runahead, split interpolated from the searched splits of the OTHER lengths
//              (leave-one-out, so it is a prediction, not a replay): this run's kvr-s splits,
//              and those of the same setup in --kvrp_table (e.g. config/splits/h200.json), so
//              that kvr-p can run without searching again)
// TTFT is the chain's time from the first layer to the first token's logits (cache allocation
// excluded, as PyTorch's caching allocator excludes it); median of --reps after --warmup runs.
// run_ms is the whole coordinator Run, as kvrd's prefill time counts it: each GPU's KV-cache
// allocated, the fabric prepared, the chain, the other GPUs' caches freed.
// tp is timed the same way: from the launch of the first layer on every rank to rank 0's logits
// on the host. Every multi-GPU mode's logits (and the K/V of its final cache's first and last
// layer; for tp gathered from the ranks' heads) are compared with the one-GPU prefill on GPU 0:
// logits_rel_err, kv_rel_err (max |diff| / max |ref|) in the JSON.
// --calibrate measures the cost model's rates on GPU 0 and the link between GPUs 0 and 1.
// --timeline CTX records, for kvr-s at CTX on the most GPUs, each GPU's busy and stalled time.
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/cuda/cuda_runner.h"
#include "engine/cuda/nccl/nccl_fabric.h"
#include "engine/cuda/peer/peer_fabric.h"
#include "engine/cuda/tensor_parallel.h"
#include "engine/prefill/calibration.h"
#include "engine/prefill/coordinator.h"
#include "engine/prefill/cost_model.h"
#include "engine/prefill/setup_key.h"
#include "engine/prefill/split_table.h"
#include "engine/util/clock.h"
#include "engine/util/log.h"
#include "engine/util/median.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, shape, "llama-7b", "llama-7b, llama3-8b or falcon-7b");
ABSL_FLAG(int, layers, 0, "override the number of layers (0: the shape's)");
ABSL_FLAG(std::string, gpus, "1,2,4", "GPU counts to run");
ABSL_FLAG(std::string, ctx, "4096,16384", "context lengths");
ABSL_FLAG(std::string, modes, "1gpu,tp,tsp,kvr-e,kvr-e-fan,kvr-cost,kvr-cost-fan,kvr-s,kvr-p", "modes");
ABSL_FLAG(int, reps, 5, "timed runs per point (median reported)");
ABSL_FLAG(int, warmup, 2, "untimed runs per point");
ABSL_FLAG(int, search_reps, 2, "timed runs per candidate split in kvr-s");
ABSL_FLAG(int, confirm, 4, "kvr-s: candidates re-timed (median of --reps) after the search; 0 = none");
ABSL_FLAG(int, search_resolution, 64, "kvr-s stops refining at steps of C / this");
ABSL_FLAG(std::string, link, "nvlink", "label of the GPU link for the split table (nvlink, p2p-off)");
ABSL_FLAG(std::string, transport, "nccl",
          "K/V transport of the KV-Runahead modes and TSP: nccl (point-to-point kernels) or copy (the "
          "copy engines, engine/cuda/peer/peer_fabric.h; its searched splits are filed under link "
          "LINK-copy)");
ABSL_FLAG(std::string, table, "", "split table to add the kvr-s results to (JSON, see split_table.h)");
ABSL_FLAG(std::string, kvrp_table, "",
          "split table whose entries for this setup kvr-p interpolates from too (this run's kvr-s "
          "splits take precedence at the same length)");
ABSL_FLAG(int, timeline, 0, "context length whose kvr-s per-GPU timeline is recorded");
ABSL_FLAG(std::string, out, "", "write all results as JSON here");
ABSL_FLAG(std::string, attn_impl, "mma", "prefill attention kernel: mma (ours), cudnn or auto (engine/cuda/cuda_runner.h)");

namespace kvr {
namespace {

ModelConfig Shape(const std::string& name) {
  ModelConfig c;
  c.model_type = name;
  c.num_layers = 32;
  c.max_position = 1 << 17;
  if (name == "llama-7b") {
    c.hidden_size = 4096; c.num_q_heads = 32; c.num_kv_heads = 32; c.head_dim = 128;
    c.intermediate_size = 11008; c.vocab_size = 32000;
  } else if (name == "llama3-8b") {
    c.hidden_size = 4096; c.num_q_heads = 32; c.num_kv_heads = 8; c.head_dim = 128;
    c.intermediate_size = 14336; c.vocab_size = 128256; c.rope.theta = 500000;
    c.rope.scaling = RopeConfig::Scaling::kLlama3; c.rope.factor = 8; c.rope.low_freq_factor = 1;
    c.rope.high_freq_factor = 4; c.rope.original_max_position = 8192;
  } else if (name == "falcon-7b") {
    c.arch = Architecture::kFalcon; c.hidden_size = 4544; c.num_q_heads = 71; c.num_kv_heads = 1;
    c.head_dim = 64; c.intermediate_size = 4 * 4544; c.vocab_size = 65024; c.norm = NormKind::kLayerNorm;
    c.mlp = MlpKind::kGelu; c.parallel_attn_mlp = true; c.tie_word_embeddings = true;
  } else {
    KVR_LOG(ERROR) << "unknown shape " << name << " (llama-7b, llama3-8b, falcon-7b)";
    std::exit(2);
  }
  return c;
}

std::vector<int> Ints(const std::string& s) {
  std::vector<int> v;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int x;
    if (absl::SimpleAtoi(p, &x)) v.push_back(x);
  }
  return v;
}

std::vector<double> Millis(const std::vector<double>& seconds) {
  std::vector<double> ms;
  for (double s : seconds) ms.push_back(s * 1e3);
  return ms;
}

std::vector<int> SizesOf(const PrefillPlan& plan) {
  std::vector<int> s;
  for (int k = 0; k < plan.num_chunks(); ++k) s.push_back(plan.chunk_end(k) - plan.chunk_begin(k));
  return s;
}

struct Measurement {
  double ttft = 0;  // median chain seconds
  double run = 0;   // median seconds of the whole Run (allocation and freeing included)
  double alloc = 0, prepare = 0, release = 0;  // medians of the Run's parts outside the chain
  std::vector<double> whole;                   // each timed run's whole-Run seconds
  std::vector<double> runs;
  PrefillResult last;
};

absl::StatusOr<Measurement> Measure(PrefillCoordinator& co, const std::vector<int32_t>& prompt,
                                    const PrefillPlan& plan, int warmup, int reps) {
  Measurement m;
  std::vector<double> alloc, prepare, release;
  for (int i = 0; i < warmup + reps; ++i) {
    KVR_ASSIGN_OR_RETURN(PrefillResult r, co.Run(prompt, plan, plan.context_len + 1));
    if (i >= warmup) {
      m.runs.push_back(r.chain_seconds);
      m.whole.push_back(r.seconds);
      alloc.push_back(r.alloc_seconds);
      prepare.push_back(r.prepare_seconds);
      release.push_back(r.release_seconds);
    }
    m.last.cache.reset();  // free the previous run's cache before keeping this one
    m.last = std::move(r);
  }
  m.ttft = Median(m.runs);
  m.run = Median(m.whole);
  m.alloc = Median(alloc);
  m.prepare = Median(prepare);
  m.release = Median(release);
  return m;
}

// The JSON record and the printed line of one chain mode's measurement (every chain mode, kvr-p
// included, reports the same fields).
nlohmann::json MeasurementJson(int p, int C, const std::string& mode, const PrefillPlan& plan, const Measurement& m) {
  return {{"gpus", p}, {"ctx", C}, {"mode", mode}, {"ttft_ms", m.ttft * 1e3}, {"runs_ms", Millis(m.runs)},
          {"run_ms", m.run * 1e3}, {"whole_runs_ms", Millis(m.whole)}, {"alloc_ms", m.alloc * 1e3},
          {"prepare_ms", m.prepare * 1e3}, {"release_ms", m.release * 1e3}, {"plan", plan.ToString()},
          {"sizes", SizesOf(plan)}};
}
void PrintMeasurement(int p, int C, const std::string& mode, const PrefillPlan& plan, const Measurement& m) {
  std::printf("%-10s %dxGPU C=%-6d TTFT %8.2f ms (whole run %8.2f: caches %.2f, fabric %.2f, free %.2f)   %s\n",
              mode.c_str(), p, C, m.ttft * 1e3, m.run * 1e3, m.alloc * 1e3, m.prepare * 1e3, m.release * 1e3,
              plan.ToString().c_str());
  std::fflush(stdout);
}

// Rates of the cost model: compute on GPU 0 (engine/prefill/calibration.h), the link between
// GPUs 0 and 1 by NCCL send/recv of a small and a large message.
absl::StatusOr<DeviceCosts> Calibrate(ModelRunner& runner, const LayerShape& shape, int gpus) {
  KVR_ASSIGN_OR_RETURN(Calibration cal,
                       CalibrateCompute(runner, shape, DeviceCosts{}, runner.config().max_position, {},
                                        [](int done, int total) {
                                          KVR_LOG(INFO) << "calibration chunk " << done << "/" << total;
                                        }));
  KVR_LOG(INFO) << "compute calibration: " << cal.ToString();
  DeviceCosts costs = cal.costs;
  if (gpus >= 2) {
    ncclComm_t comms[2];
    int devs[2] = {0, 1};
    if (ncclCommInitAll(comms, 2, devs) != ncclSuccess) return absl::InternalError("ncclCommInitAll failed");
    void* buf[2];
    cudaStream_t st[2];
    const size_t big = 256ull << 20, small = 64 << 10;
    for (int d = 0; d < 2; ++d) {
      cudaSetDevice(d);
      cudaMalloc(&buf[d], big);
      cudaStreamCreate(&st[d]);
    }
    auto xfer = [&](size_t bytes) {
      std::vector<double> runs;
      for (int rep = 0; rep < 6; ++rep) {
        const auto t0 = SteadyClock::now();
        ncclGroupStart();
        ncclSend(buf[0], bytes, ncclInt8, 1, comms[0], st[0]);
        ncclRecv(buf[1], bytes, ncclInt8, 0, comms[1], st[1]);
        ncclGroupEnd();
        for (int d = 0; d < 2; ++d) { cudaSetDevice(d); cudaStreamSynchronize(st[d]); }
        if (rep > 0) runs.push_back(SecondsSince(t0));
      }
      return Median(runs);
    };
    const double t_small = xfer(small), t_big = xfer(big);
    costs.link_bytes_per_s = (big - small) / std::max(t_big - t_small, 1e-9);
    costs.link_latency_s = std::max(0.0, t_small - small / costs.link_bytes_per_s);
    for (int d = 0; d < 2; ++d) {
      cudaSetDevice(d);
      cudaFree(buf[d]);
      cudaStreamDestroy(st[d]);
      ncclCommDestroy(comms[d]);
    }
  }
  KVR_LOG(INFO) << "calibrated: " << costs.ToString();
  return costs;
}

// Logits and the K/V of the first and last layer of a prefill's final cache, on the host.
struct Reference {
  std::vector<float> logits;
  std::vector<float> kv;
};

Reference TakeReference(PrefillCoordinator& co, const PrefillResult& r, int C) {
  Reference ref;
  ref.logits = r.logits;
  ModelRunner& owner = co.runner(r.owner);
  const int L = owner.config().num_layers;
  for (int l : {0, L - 1}) {
    std::vector<float> k, v;
    absl::Status s = co.RunOn(r.owner, [&] { return owner.ReadKv(*r.cache, l, 0, C, &k, &v); });
    if (!s.ok()) KVR_LOG(WARNING) << "ReadKv: " << s;
    ref.kv.insert(ref.kv.end(), k.begin(), k.end());
    ref.kv.insert(ref.kv.end(), v.begin(), v.end());
  }
  return ref;
}

// Tensor parallelism's prefill, measured like Measure: median of `reps` after `warmup` runs.
struct TpMeasurement {
  double ttft = 0;
  std::vector<double> runs;
  TensorParallelPrefill last;
};

absl::StatusOr<TpMeasurement> MeasureTp(TensorParallelGroup& tp, const std::vector<int32_t>& prompt,
                                        int warmup, int reps) {
  TpMeasurement m;
  for (int i = 0; i < warmup + reps; ++i) {
    m.last.caches.clear();  // free the previous run's caches before making new ones
    KVR_ASSIGN_OR_RETURN(TensorParallelPrefill r, tp.Prefill(prompt, static_cast<int>(prompt.size()) + 1));
    if (i >= warmup) m.runs.push_back(r.seconds);
    m.last = std::move(r);
  }
  m.ttft = Median(m.runs);
  return m;
}

// TakeReference for tensor parallelism: rank 0's logits, and the K/V of the first and last
// layer with each rank's key-value heads put back in place (the whole model's layout).
Reference TakeTpReference(TensorParallelGroup& tp, const TensorParallelPrefill& r, const ModelConfig& config, int C) {
  Reference ref;
  ref.logits = r.logits;
  const int L = config.num_layers, Hkv = config.num_kv_heads, D = config.head_dim;
  for (int l : {0, L - 1}) {
    std::vector<float> k(static_cast<size_t>(C) * Hkv * D), v(k.size());
    for (int rank = 0; rank < tp.size(); ++rank) {
      const TensorParallelShard& sh = tp.shard(rank);
      std::vector<float> kr, vr;
      absl::Status s = tp.rank(rank).ReadKv(*r.caches[rank], l, 0, C, &kr, &vr);
      if (!s.ok()) {
        KVR_LOG(WARNING) << "ReadKv (tensor-parallel rank " << rank << "): " << s;
        continue;
      }
      for (int t = 0; t < C; ++t) {
        for (int j = 0; j < sh.kv_heads; ++j) {
          const size_t from = (static_cast<size_t>(t) * sh.kv_heads + j) * D;
          const size_t to = (static_cast<size_t>(t) * Hkv + sh.kv_head0 + j) * D;
          std::copy(kr.begin() + from, kr.begin() + from + D, k.begin() + to);
          std::copy(vr.begin() + from, vr.begin() + from + D, v.begin() + to);
        }
      }
    }
    ref.kv.insert(ref.kv.end(), k.begin(), k.end());
    ref.kv.insert(ref.kv.end(), v.begin(), v.end());
  }
  return ref;
}

// max |a - b| / max |b|; 1e9 when the sizes differ or a value is not finite.
double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || b.empty()) return 1e9;
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - b[i]);
    if (!std::isfinite(d)) return 1e9;
    diff = std::max(diff, d);
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

CudaRunnerOptions RunnerOptions() {
  CudaRunnerOptions o;
  o.attn_impl = absl::GetFlag(FLAGS_attn_impl);
  return o;
}

std::string Gpu0Card() {
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  return CardName(prop.name);
}

absl::Status Run() {
  ModelConfig config = Shape(absl::GetFlag(FLAGS_shape));
  if (absl::GetFlag(FLAGS_layers) > 0) config.num_layers = absl::GetFlag(FLAGS_layers);
  const std::vector<int> gpu_counts = Ints(absl::GetFlag(FLAGS_gpus));
  const std::vector<int> contexts = Ints(absl::GetFlag(FLAGS_ctx));
  std::vector<std::string> modes = absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipEmpty());
  auto has = [&](const std::string& m) { return std::find(modes.begin(), modes.end(), m) != modes.end(); };
  const int reps = absl::GetFlag(FLAGS_reps), warmup = absl::GetFlag(FLAGS_warmup);
  const int available = CudaDeviceCount();
  const int max_gpus = *std::max_element(gpu_counts.begin(), gpu_counts.end());
  if (available < max_gpus) {
    return absl::FailedPreconditionError(absl::StrCat(max_gpus, " GPUs asked for, ", available, " present"));
  }
  const std::string card = Gpu0Card();
  KVR_LOG(INFO) << "kvr-bench: " << config.model_type << " (L=" << config.num_layers << "), " << available
                << "x " << card << ", contexts " << absl::GetFlag(FLAGS_ctx);

  std::vector<std::unique_ptr<ModelRunner>> runners;
  for (int d = 0; d < max_gpus; ++d) {
    KVR_LOG(INFO) << "creating random " << config.model_type << " weights on GPU " << d;
    KVR_ASSIGN_OR_RETURN(auto r, MakeRandomCudaRunner(config, d, RunnerOptions(), 1));
    runners.push_back(std::move(r));
  }
  const LayerShape shape = LayerShape::Of(config, 2);
  DeviceCosts costs;
  {
    SelectCudaDevice(0);
    KVR_ASSIGN_OR_RETURN(costs, Calibrate(*runners[0], shape, max_gpus));
  }
  nlohmann::json out;
  out["shape"] = config.model_type;
  out["layers"] = config.num_layers;
  out["card"] = card;
  out["attn_impl"] = absl::GetFlag(FLAGS_attn_impl);
  const bool copy = absl::GetFlag(FLAGS_transport) == "copy";
  if (!copy && absl::GetFlag(FLAGS_transport) != "nccl")
    return absl::InvalidArgumentError("--transport must be nccl or copy");
  const std::string link = absl::GetFlag(FLAGS_link) + (copy ? "-copy" : "");
  out["link"] = link;
  out["transport"] = absl::GetFlag(FLAGS_transport);
  out["calibration"] = {{"gemm_tflops", costs.gemm_flops_per_s / 1e12}, {"attn_tflops", costs.attn_flops_per_s / 1e12},
                        {"layer_overhead_us", costs.layer_overhead_s * 1e6}, {"link_gbps", costs.link_bytes_per_s / 1e9},
                        {"link_latency_us", costs.link_latency_s * 1e6}};
  SplitTable table;
  if (!absl::GetFlag(FLAGS_table).empty()) {
    auto loaded = SplitTable::Load(absl::GetFlag(FLAGS_table));
    if (loaded.ok()) table = *loaded;
  }
  std::mt19937 rng(11);
  std::vector<int32_t> prompt_all(*std::max_element(contexts.begin(), contexts.end()));
  for (auto& t : prompt_all) t = rng() % config.vocab_size;

  for (int p : gpu_counts) {
    std::vector<ModelRunner*> ptrs;
    for (int d = 0; d < p; ++d) ptrs.push_back(runners[d].get());
    std::unique_ptr<ChainFabric> fabric;
    if (p > 1) {
      SelectCudaDevice(0);
      if (copy) {
        KVR_ASSIGN_OR_RETURN(fabric, MakePeerCopyFabric(p));
      } else {
        KVR_ASSIGN_OR_RETURN(fabric, MakeNcclFabric(p));
      }
    } else {
      fabric = MakeNcclFabric(1).value();
    }
    PrefillCoordinator co(ptrs, std::move(fabric), [](int d) { SelectCudaDevice(d); });
    // Megatron tensor parallelism over the same p GPUs, random weights of the same seed as the
    // runners above (so its logits can be checked against the one-GPU run).
    std::unique_ptr<TensorParallelGroup> tp;
    std::string tp_refused;
    if (p > 1 && has("tp")) {
      KVR_LOG(INFO) << "creating tensor-parallel " << config.model_type << " over " << p << " GPUs";
      auto made = MakeRandomTensorParallelCudaRunners(config, p, RunnerOptions(), 1);
      if (made.ok()) {
        tp = std::move(*made);
      } else {
        tp_refused = std::string(made.status().message());
        KVR_LOG(WARNING) << "tp at " << p << " GPUs: " << tp_refused;
      }
    }
    const std::string setup =
        SetupKey(ShapeName(config), p, card, link, absl::GetFlag(FLAGS_attn_impl));
    std::map<int, std::vector<int>> searched;  // context -> kvr-s sizes
    if (!absl::GetFlag(FLAGS_kvrp_table).empty()) {
      KVR_ASSIGN_OR_RETURN(SplitTable given, SplitTable::Load(absl::GetFlag(FLAGS_kvrp_table)));
      // With --transport copy and no splits of its own yet, the NCCL setup's splits: the same
      // split under both transports is what isolates the transport's effect.
      const std::string nccl_setup =
          SetupKey(ShapeName(config), p, card, absl::GetFlag(FLAGS_link), absl::GetFlag(FLAGS_attn_impl));
      std::string used = setup;
      for (const std::string& want : {setup, nccl_setup}) {
        used = want;
        for (const SplitEntry& e : given.entries())
          if (e.setup == want && static_cast<int>(e.sizes.size()) == p) searched[e.context] = e.sizes;
        if (!searched.empty()) break;
      }
      KVR_LOG(INFO) << "kvr-p: " << searched.size() << " searched lengths of " << used << " from "
                    << absl::GetFlag(FLAGS_kvrp_table);
    }
    for (int C : contexts) {
      const std::vector<int32_t> prompt(prompt_all.begin(), prompt_all.begin() + C);
      // The one-GPU prefill on GPU 0 is the reference every split is checked against: logits
      // and the K/V of the first and last layer in the final cache, relative to their largest
      // magnitude (bf16: expect ~1e-2 from the different chunking of the matrix products).
      Reference ref;
      if (p > 1) {
        auto one = Measure(co, prompt, *FixedPlanner({C}).Plan(C, p, 0), 0, 1);
        if (!one.ok()) return one.status();
        ref = TakeReference(co, one->last, C);
      }
      auto record = [&](const std::string& mode, const PrefillPlan& plan, const Measurement& m, nlohmann::json extra) {
        nlohmann::json j = MeasurementJson(p, C, mode, plan, m);
        for (auto& [k, v] : extra.items()) j[k] = v;
        nlohmann::json workers = nlohmann::json::array();
        for (const WorkerTiming& w : m.last.workers) {
          workers.push_back({{"gpu", w.worker}, {"begin", w.begin}, {"end", w.end}, {"busy_ms", w.busy_seconds * 1e3},
                             {"stall_ms", w.wait_seconds * 1e3}, {"kv_bytes_sent", w.kv_bytes_sent}});
        }
        j["workers"] = workers;
        out["results"].push_back(j);
        PrintMeasurement(p, C, mode, plan, m);
      };
      auto run_plan = [&](const std::string& mode, absl::StatusOr<PrefillPlan> plan, nlohmann::json extra = {}) -> absl::Status {
        if (!plan.ok()) return plan.status();
        auto m = Measure(co, prompt, *plan, warmup, reps);
        if (!m.ok()) {
          KVR_LOG(WARNING) << mode << " at " << p << " GPUs, C=" << C << ": " << m.status();
          out["results"].push_back({{"gpus", p}, {"ctx", C}, {"mode", mode}, {"error", std::string(m.status().message())}});
          return absl::OkStatus();
        }
        if (p > 1) {
          const Reference mine = TakeReference(co, m->last, C);
          extra["logits_rel_err"] = RelErr(mine.logits, ref.logits);
          extra["kv_rel_err"] = std::max(RelErr(mine.kv, ref.kv), 0.0);
        }
        m->last.cache.reset();
        record(mode, *plan, *m, extra);
        return absl::OkStatus();
      };
      const int last = p - 1;
      if (p == 1) {
        if (has("1gpu")) KVR_RETURN_IF_ERROR(run_plan("1gpu", FixedPlanner({C}).Plan(C, 1, 0)));
        continue;
      }
      if (has("kvr-e")) KVR_RETURN_IF_ERROR(run_plan("kvr-e", EvenPlanner(Topology::kChain).Plan(C, p, last)));
      if (has("kvr-e-fan")) KVR_RETURN_IF_ERROR(run_plan("kvr-e-fan", EvenPlanner(Topology::kFanOut).Plan(C, p, last)));
      const CostModelPlanner cost_chain(shape, costs, Topology::kChain), cost_fan(shape, costs, Topology::kFanOut);
      auto cost_plan = cost_chain.Plan(C, p, last);
      if (has("kvr-cost")) {
        KVR_RETURN_IF_ERROR(run_plan("kvr-cost", cost_plan,
                                     {{"predicted_ms", SimulatePrefill(shape, costs, SizesOf(*cost_plan), Topology::kChain) * 1e3}}));
      }
      if (has("kvr-cost-fan")) {
        auto fan_plan = cost_fan.Plan(C, p, last);
        KVR_RETURN_IF_ERROR(run_plan("kvr-cost-fan", fan_plan,
                                     {{"predicted_ms", SimulatePrefill(shape, costs, SizesOf(*fan_plan), Topology::kFanOut) * 1e3}}));
      }
      if (has("kvr-s")) {
        const auto t0 = SteadyClock::now();
        int evals = 0;
        bool failed = false;
        std::vector<std::pair<std::vector<int>, double>> seen;  // every candidate and its timing
        auto timed = [&](const std::vector<int>& sizes, int runs) {
          auto plan = FixedPlanner(sizes, Topology::kChain).Plan(C, p, last);
          auto m = plan.ok() ? Measure(co, prompt, *plan, 1, runs) : absl::StatusOr<Measurement>(plan.status());
          if (!m.ok()) { failed = true; return 1e9; }
          m->last.cache.reset();
          return m->ttft;
        };
        auto measured = [&](const std::vector<int>& sizes) {
          const double t = timed(sizes, absl::GetFlag(FLAGS_search_reps));
          seen.push_back({sizes, t});
          return t;
        };
        std::vector<int> best =
            SearchSplit(C, p, measured, std::max(16, C / absl::GetFlag(FLAGS_search_resolution)), SizesOf(*cost_plan), &evals);
        const std::vector<int> searched_best = best;
        if (absl::GetFlag(FLAGS_confirm) > 0 && !failed) {
          // The even and cost-model splits are re-timed as well: the search's pick must beat them
          // under the same median-of-reps timing, not only under its one-run timings.
          std::vector<int> even = SizesOf(*EvenPlanner(Topology::kChain).Plan(C, p, last));
          best = ConfirmBest(seen, absl::GetFlag(FLAGS_confirm),
                             [&](const std::vector<int>& s) { return timed(s, reps); }, nullptr,
                             {even, SizesOf(*cost_plan)});
          if (best != searched_best)
            KVR_LOG(INFO) << "kvr-s C=" << C << ": re-timing the " << absl::GetFlag(FLAGS_confirm)
                          << " cheapest candidates picked " << absl::StrJoin(best, "/") << " over the search's "
                          << absl::StrJoin(searched_best, "/");
        }
        const double search_s = SecondsSince(t0);
        if (!failed) {
          searched[C] = best;
          table.Add({setup, C, best});
          // How far the cost model's own optimum (searched exhaustively on a grid in simulation)
          // lies from the measured search: the model's error, not the search's.
          KVR_RETURN_IF_ERROR(run_plan("kvr-s", FixedPlanner(best, Topology::kChain).Plan(C, p, last),
                                       {{"search_seconds", search_s}, {"search_evaluations", evals},
                                        {"search_best", searched_best}}));
          if (absl::GetFlag(FLAGS_timeline) == C && p == max_gpus) {
            auto plan = FixedPlanner(best, Topology::kChain).Plan(C, p, last);
            auto m = Measure(co, prompt, *plan, 1, 1);
            if (m.ok()) {
              m->last.cache.reset();
              nlohmann::json tl = nlohmann::json::array();
              for (const WorkerTiming& w : m->last.workers) {
                tl.push_back({{"gpu", w.worker}, {"chunk", {w.begin, w.end}}, {"busy_ms", w.busy_seconds * 1e3},
                              {"stall_ms", w.wait_seconds * 1e3}, {"kv_bytes_sent", w.kv_bytes_sent}});
              }
              out["timeline"] = {{"gpus", p}, {"ctx", C}, {"ttft_ms", m->ttft * 1e3}, {"workers", tl}};
            }
          }
        }
      }
      // The baselines last: tensor parallelism, then TSP.
      if (has("tp")) {
        if (!tp) {
          out["results"].push_back({{"gpus", p}, {"ctx", C}, {"mode", "tp"}, {"error", tp_refused}});
          std::printf("%-10s %dxGPU C=%-6d refused: %s\n", "tp", p, C, tp_refused.c_str());
        } else {
          auto m = MeasureTp(*tp, prompt, warmup, reps);
          if (!m.ok()) {
            KVR_LOG(WARNING) << "tp at " << p << " GPUs, C=" << C << ": " << m.status();
            out["results"].push_back({{"gpus", p}, {"ctx", C}, {"mode", "tp"}, {"error", std::string(m.status().message())}});
          } else {
            const Reference mine = TakeTpReference(*tp, m->last, config, C);
            m->last.caches.clear();
            const std::string what = absl::StrCat("tensor-parallel x", p, ": ", tp->shard(0).q_heads, " q heads, ",
                                                  tp->shard(0).kv_heads, " kv heads, F/", p, " per GPU");
            out["results"].push_back({{"gpus", p}, {"ctx", C}, {"mode", "tp"}, {"ttft_ms", m->ttft * 1e3},
                                      {"runs_ms", Millis(m->runs)}, {"plan", what},
                                      {"logits_rel_err", RelErr(mine.logits, ref.logits)},
                                      {"kv_rel_err", RelErr(mine.kv, ref.kv)}});
            std::printf("%-10s %dxGPU C=%-6d TTFT %8.2f ms   %s; logits_rel_err %.3g\n", "tp", p, C, m->ttft * 1e3,
                        what.c_str(), RelErr(mine.logits, ref.logits));
            std::fflush(stdout);
          }
        }
      }
      if (has("tsp")) KVR_RETURN_IF_ERROR(run_plan("tsp", EvenPlanner(Topology::kAllGather).Plan(C, p, last)));
    }
    if (has("kvr-p") && searched.size() >= 2) {
      for (int C : contexts) {
        SplitTable others;
        for (auto& [c, sizes] : searched) if (c != C) others.Add({setup, c, sizes});
        const std::vector<int32_t> prompt(prompt_all.begin(), prompt_all.begin() + C);
        auto plan = TablePlanner(others, setup, Topology::kChain).Plan(C, p, p - 1);
        if (!plan.ok()) continue;
        auto m = Measure(co, prompt, *plan, warmup, reps);
        if (!m.ok()) continue;
        m->last.cache.reset();
        out["results"].push_back(MeasurementJson(p, C, "kvr-p", *plan, *m));
        PrintMeasurement(p, C, "kvr-p", *plan, *m);
      }
    }
  }
  if (!absl::GetFlag(FLAGS_out).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_out)) << out.dump(1);
  }
  if (!absl::GetFlag(FLAGS_table).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_table)) << table.ToJson();
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvr

int main(int argc, char** argv) {
  // Before the first NCCL call (the calibration's): no NVLink multicast, which can take shared
  // GPUs out of service; an explicit setting wins.
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
  absl::ParseCommandLine(argc, argv);
  absl::Status s = kvr::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "kvr-bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
