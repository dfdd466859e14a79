// KV-Runahead across GPUs through the NCCL fabric (engine/cuda/nccl), and the peer-copy fabric
// (engine/cuda/peer, PeerCopyChain.*): PrefillCoordinator + the fabric + one random-weight
// CudaRunner per GPU, over 2 GPUs, 4 when present and all of
// them when more, for the chain, fan-out and all-gather (TSP) topologies, with uneven splits
// (1-token chunks first, last and in the middle) and with the last position on the first and on
// the last GPU.
//
// Expectation: every chunk's products are those of the same chunk run on one GPU after the
// chunks before it (the kernels do not depend on which GPU runs them, and the transport only
// moves bytes), so the first token's logits and the whole final KV-cache (every layer, [0, C))
// must equal BIT FOR BIT those of the same chunks run one after another on GPU 0. (Against the
// one-chunk prefill they differ within bf16 rounding, because products of <= 4 rows take the
// GEMV path; that is checked with the runner tests' tolerance.) A missing, misplaced or late
// transfer shows as a mismatch, reported with its layer and first token.
//
// All-gather runs first, in a fresh process (no link used yet): the case that hung before the
// fabric connected every link up front. A watchdog ends the process with exit code 3, naming
// the case, when one prefill takes over 60 s, so that a hang still reports within one device
// call. Label gpu: exits 77 with fewer than 2 GPUs.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/cuda/cuda_runner.h"
#include "engine/cuda/nccl/nccl_fabric.h"
#include "engine/cuda/peer/peer_fabric.h"
#include "engine/prefill/coordinator.h"
#include "engine/prefill/planner.h"
#include "tests/cuda/gpu_test_util.h"

namespace kvr::testing {
namespace {

// Ends the process if a case runs past its deadline (a hang must not eat the device call).
class Watchdog {
 public:
  Watchdog() : thread_([this] { Loop(); }) {}
  ~Watchdog() {
    stop_ = true;
    thread_.join();
  }
  void Arm(const std::string& what, int seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    what_ = what;
    deadline_ = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    armed_ = true;
  }
  void Disarm() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = false;
  }

 private:
  void Loop() {
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      std::lock_guard<std::mutex> lock(mu_);
      if (armed_ && std::chrono::steady_clock::now() > deadline_) {
        std::fprintf(stderr, "\nHUNG (watchdog): %s did not finish in time; exiting\n", what_.c_str());
        std::fflush(stderr);
        std::fflush(stdout);
        std::_Exit(3);
      }
    }
  }
  std::mutex mu_;
  std::string what_;
  std::chrono::steady_clock::time_point deadline_;
  bool armed_ = false;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

Watchdog& Dog() {
  static Watchdog dog;
  return dog;
}

ModelConfig Model(int layers) {
  ModelConfig c;
  c.arch = Architecture::kLlama;
  c.model_type = "llama-test";
  c.vocab_size = 1999;
  c.hidden_size = 512;
  c.num_layers = layers;
  c.num_q_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 64;
  c.intermediate_size = 1376;
  c.max_position = 1 << 15;
  c.norm_eps = 1e-5f;
  return c;
}

std::vector<int32_t> Tokens(int n, int V, int seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = std::uniform_int_distribution<int>(0, V - 1)(rng);
  return t;
}

// The chunks of `bounds` run one after another on `runner` (GPU 0) into one cache: the bitwise
// reference of a multi-GPU prefill with those bounds.
struct Sequential {
  std::vector<float> logits;
  std::unique_ptr<KvCache> cache;
};
Sequential RunSequential(ModelRunner& runner, const std::vector<int32_t>& tokens, const std::vector<int>& bounds) {
  Sequential out;
  const int C = static_cast<int>(tokens.size());
  auto cache = runner.NewKvCache(C + 4);
  EXPECT_TRUE(cache.ok()) << cache.status();
  if (!cache.ok()) return out;
  out.cache = std::move(*cache);
  for (size_t k = 0; k + 1 < bounds.size(); ++k) {
    const int s = bounds[k], e = bounds[k + 1];
    auto chunk = runner.BeginChunk(absl::MakeConstSpan(tokens).subspan(s, e - s), s, *out.cache);
    EXPECT_TRUE(chunk.ok()) << chunk.status();
    if (!chunk.ok()) return out;
    for (int l = 0; l < runner.config().num_layers; ++l) {
      EXPECT_TRUE(runner.LayerQkv(**chunk, l).ok());
      EXPECT_TRUE(runner.LayerAttnMlp(**chunk, l).ok());
    }
    if (e == C) {
      auto st = runner.FinishChunk(**chunk, &out.logits);
      EXPECT_TRUE(st.ok()) << st;
    }
  }
  return out;
}

// Compares layer l, tokens [0, C) of two caches bit for bit; describes the first difference.
std::string CompareKv(ModelRunner& ra, KvCache& a, ModelRunner& rb, KvCache& b, int l, int C, int kv_dim) {
  std::vector<float> ka, va, kb, vb;
  auto s1 = ra.ReadKv(a, l, 0, C, &ka, &va);
  auto s2 = rb.ReadKv(b, l, 0, C, &kb, &vb);
  if (!s1.ok() || !s2.ok()) return "ReadKv failed: " + s1.ToString() + " " + s2.ToString();
  for (int which = 0; which < 2; ++which) {
    const std::vector<float>& x = which == 0 ? ka : va;
    const std::vector<float>& y = which == 0 ? kb : vb;
    if (std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0) continue;
    size_t i = 0;
    while (i < x.size() && std::memcmp(&x[i], &y[i], sizeof(float)) == 0) ++i;
    size_t last = x.size();
    while (last > i && std::memcmp(&x[last - 1], &y[last - 1], sizeof(float)) == 0) --last;
    return std::string(which == 0 ? "K" : "V") + " of layer " + std::to_string(l) + " differs from token " +
           std::to_string(i / kv_dim) + " to token " + std::to_string((last - 1) / kv_dim) + " (" +
           std::to_string(x[i]) + " vs " + std::to_string(y[i]) + "; rel L2 " + std::to_string(RelL2(x, y)) + ")";
  }
  return "";
}

struct Case {
  Topology topology;
  std::vector<int> sizes;
  int last_worker;
};

// Uneven splits of C over p: largest first with a 1-token last chunk; a 1-token first chunk;
// a 1-token chunk in the middle; and even.
std::vector<std::vector<int>> Splits(int C, int p) {
  std::vector<std::vector<int>> out;
  {  // descending, last chunk of one token
    std::vector<int> s(p, 1);
    int rest = C - 1, w = 0;
    for (int k = 0; k < p - 1; ++k) w += p - 1 - k;
    int used = 0;
    for (int k = 0; k < p - 1; ++k) {
      s[k] = k == p - 2 ? rest - used : std::max(1, rest * (p - 1 - k) / w);
      used += s[k];
    }
    out.push_back(s);
  }
  {  // a 1-token first chunk, the rest even
    std::vector<int> s(p, (C - 1) / (p - 1));
    s[0] = 1;
    s[p - 1] += C - 1 - (C - 1) / (p - 1) * (p - 1);
    out.push_back(s);
  }
  if (p >= 3) {  // a 1-token chunk in the middle
    std::vector<int> s(p, (C - 1) / (p - 1));
    s[1] = 1;
    int sum = 0;
    for (int x : s) sum += x;
    s[p - 1] += C - sum;
    out.push_back(s);
  }
  {  // even
    std::vector<int> s(p, C / p);
    s[0] += C - C / p * p;
    out.push_back(s);
  }
  return out;
}

std::string Describe(int p, const PrefillPlan& plan) { return std::to_string(p) + " GPUs, " + plan.ToString(); }

// Runs every case on p GPUs and checks it against its sequential reference on GPU 0.
// `copy`: through the peer-copy fabric instead of NCCL.
void RunCases(const ModelConfig& cfg, int p, int C, const std::vector<Case>& cases, const std::vector<int>& layers_to_check,
              int runs_per_case, bool copy = false) {
  std::vector<std::unique_ptr<ModelRunner>> owned;
  std::vector<ModelRunner*> runners;
  for (int d = 0; d < p; ++d) {
    auto r = MakeRandomCudaRunner(cfg, d, {}, 9);
    ASSERT_TRUE(r.ok()) << r.status();
    runners.push_back(r->get());
    owned.push_back(std::move(*r));
  }
  Dog().Arm(std::string(copy ? "MakePeerCopyFabric(" : "MakeNcclFabric(") + std::to_string(p) + ")", 120);
  SelectCudaDevice(0);
  auto fabric = copy ? MakePeerCopyFabric(p) : MakeNcclFabric(p);
  Dog().Disarm();
  ASSERT_TRUE(fabric.ok()) << fabric.status();
  PrefillCoordinator co(runners, std::move(*fabric), [](int d) { SelectCudaDevice(d); });
  const auto tokens = Tokens(C, cfg.vocab_size, 4);
  // The one-chunk prefill (tolerance reference).
  Sequential whole = RunSequential(*runners[0], tokens, {0, C});
  const int kv_dim = cfg.kv_dim();
  for (const Case& c : cases) {
    auto plan = FixedPlanner(c.sizes, c.topology).Plan(C, p, c.last_worker);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const std::string what = Describe(p, *plan);
    SCOPED_TRACE(what);
    Sequential ref = RunSequential(*runners[0], tokens, plan->bounds);
    for (int run = 0; run < runs_per_case; ++run) {
      Dog().Arm(what, 60);
      auto res = co.Run(tokens, *plan, C + 4);
      Dog().Disarm();
      ASSERT_TRUE(res.ok()) << res.status();
      std::printf("%-60s run %d: %.2f ms\n", what.c_str(), run, res->chain_seconds * 1e3);
      std::fflush(stdout);
      ASSERT_EQ(res->logits.size(), ref.logits.size());
      EXPECT_EQ(std::memcmp(res->logits.data(), ref.logits.data(), ref.logits.size() * sizeof(float)), 0)
          << "logits differ from the sequential run on GPU 0 (rel L2 " << RelL2(res->logits, ref.logits) << ")";
      EXPECT_LT(RelL2(res->logits, whole.logits), 2e-2) << "logits far from the one-chunk prefill";
      ModelRunner& owner = co.runner(res->owner);
      for (int l : layers_to_check) {
        const std::string diff = CompareKv(owner, *res->cache, *runners[0], *ref.cache, l, C, kv_dim);
        EXPECT_EQ(diff, "") << "final KV-cache on GPU " << res->owner << " vs the sequential run";
      }
      res->cache.reset();
    }
  }
}

// Small model (4 layers), 301 tokens: many splits, every topology, both ends as the last GPU,
// every layer of the final cache compared.
TEST(NcclChain, EveryTopologyAndSplitMatchesOneGpuBitForBit) {
  const ModelConfig cfg = Model(4);
  const int C = 301;
  for (int p : MultiGpuCounts()) {
    std::vector<Case> cases;
    const auto splits = Splits(C, p);
    // All-gather first: nothing connected yet in this process (for p = 2 the process's very first
    // prefill); then chain and fan-out; then all-gather again with the links already used.
    for (Topology t : {Topology::kAllGather, Topology::kChain, Topology::kFanOut, Topology::kAllGather}) {
      for (const auto& s : splits) {
        cases.push_back({t, s, p - 1});
        cases.push_back({t, s, 0});
      }
    }
    std::vector<int> layers;
    for (int l = 0; l < cfg.num_layers; ++l) layers.push_back(l);
    RunCases(cfg, p, C, cases, layers, 2);
  }
}

// The same splits and topologies through the peer-copy fabric (copy engines, no kernels), and
// the deep 8k-token case: both bit for bit against the sequential run on GPU 0.
TEST(PeerCopyChain, EveryTopologyAndSplitMatchesOneGpuBitForBit) {
  const ModelConfig cfg = Model(4);
  const int C = 301;
  for (int p : MultiGpuCounts()) {
    std::vector<Case> cases;
    for (Topology t : {Topology::kChain, Topology::kFanOut, Topology::kAllGather}) {
      for (const auto& s : Splits(C, p)) {
        cases.push_back({t, s, p - 1});
        cases.push_back({t, s, 0});
      }
    }
    std::vector<int> layers;
    for (int l = 0; l < cfg.num_layers; ++l) layers.push_back(l);
    RunCases(cfg, p, C, cases, layers, 2, /*copy=*/true);
  }
  const ModelConfig deep = Model(32);
  for (int p : MultiGpuCounts()) {
    std::vector<int> even(p, 8192 / p);
    even[p - 1] += 8192 % p;
    RunCases(deep, p, 8192, {{Topology::kChain, even, p - 1}, {Topology::kAllGather, even, 0}}, {0, 15, 31}, 1,
             /*copy=*/true);
  }
}

// Deep model (32 layers, as Llama-7B; 32 rounds of receives posted up front for chain and
// fan-out), 8192 tokens: the shape of the kvr-bench run that hung, in miniature width.
TEST(NcclChain, DeepLongPromptEveryTopology) {
  const ModelConfig cfg = Model(32);
  const int C = 8192;
  for (int p : MultiGpuCounts()) {
    std::vector<Case> cases;
    std::vector<int> even(p, C / p), front(p);
    int used = 0;
    for (int k = 0; k < p; ++k) {  // larger first chunks, as the cost model makes them
      front[k] = k == p - 1 ? C - used : C * (2 * (p - k)) / (p * (p + 1));
      used += front[k];
    }
    for (Topology t : {Topology::kAllGather, Topology::kChain, Topology::kFanOut}) {
      cases.push_back({t, even, p - 1});
      cases.push_back({t, front, p - 1});
    }
    RunCases(cfg, p, C, cases, {0, 15, 31}, 1);
  }
}

// The other families in miniature: Falcon (one K/V head, an odd number of query heads,
// LayerNorm, GELU, parallel attention and MLP; the chain carries one head per token) and
// Llama 3 (GQA 4:1, llama3 rope scaling), 1,021 tokens (prime: no split divides it), every
// topology, last position on either end.
TEST(NcclChain, FalconAndLlama3Families) {
  ModelConfig falcon = Model(4);
  falcon.arch = Architecture::kFalcon;
  falcon.model_type = "falcon-test";
  falcon.num_q_heads = 9;
  falcon.num_kv_heads = 1;
  falcon.head_dim = 64;
  falcon.hidden_size = 576;
  falcon.intermediate_size = 4 * 576;
  falcon.norm = NormKind::kLayerNorm;
  falcon.mlp = MlpKind::kGelu;
  falcon.parallel_attn_mlp = true;
  ModelConfig llama3 = Model(4);
  llama3.num_q_heads = 8;
  llama3.num_kv_heads = 2;
  llama3.head_dim = 128;
  llama3.hidden_size = 1024;
  llama3.rope.theta = 500000;
  llama3.rope.scaling = RopeConfig::Scaling::kLlama3;
  llama3.rope.factor = 8;
  llama3.rope.low_freq_factor = 1;
  llama3.rope.high_freq_factor = 4;
  llama3.rope.original_max_position = 8192;
  const int C = 1021;
  for (const ModelConfig& cfg : {falcon, llama3}) {
    SCOPED_TRACE(cfg.model_type);
    for (int p : MultiGpuCounts()) {
      std::vector<Case> cases;
      const auto splits = Splits(C, p);
      for (Topology t : {Topology::kAllGather, Topology::kChain, Topology::kFanOut}) {
        cases.push_back({t, splits.front(), p - 1});
        cases.push_back({t, splits.back(), 0});
      }
      RunCases(cfg, p, C, cases, {0, cfg.num_layers - 1}, 1);
    }
  }
}

}  // namespace
}  // namespace kvr::testing

int main(int argc, char** argv) {
  const int n = kvr::CudaDeviceCount();
  if (n < 2) {
    std::printf("%d CUDA GPU(s): the NCCL fabric needs 2, skipped\n", n);
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
