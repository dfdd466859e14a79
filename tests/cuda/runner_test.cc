// CudaRunner consistency on random-weight models (no checkpoint): a prefill split into chunks
// (KV-Runahead's per-GPU view: prefix first, then the chunk at an offset) gives the same logits
// and KV-cache as one chunk; prefill + decode equals a longer prefill; a decode batch equals its
// rows run alone (graph capture and replay included); contexts that cannot fit are refused; the
// memory pool keeps what its peak needed mapped.
// Label gpu: exits 77 without a GPU.
#include <cmath>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "engine/cuda/cuda_runner.h"
#include "kernels/attention_decode.cuh"
#include "tests/cuda/gpu_test_util.h"

namespace kvr::testing {
namespace {

ModelConfig Llama(int D) {
  ModelConfig c;
  c.arch = Architecture::kLlama;
  c.model_type = "llama";
  c.vocab_size = 1999;
  c.hidden_size = 512;
  c.num_layers = 3;
  c.num_q_heads = 512 / D;
  c.num_kv_heads = c.num_q_heads / 2;
  c.head_dim = D;
  c.intermediate_size = 1376;
  c.max_position = 8192;
  c.norm_eps = 1e-5f;
  c.rope.theta = 500000.f;
  c.rope.scaling = RopeConfig::Scaling::kLlama3;
  c.rope.factor = 8.f;
  return c;
}

ModelConfig Falcon() {
  ModelConfig c = Llama(64);
  c.arch = Architecture::kFalcon;
  c.model_type = "falcon";
  c.hidden_size = 576;
  c.num_q_heads = 9;
  c.num_kv_heads = 1;
  c.intermediate_size = 4 * 576;
  c.norm = NormKind::kLayerNorm;
  c.mlp = MlpKind::kGelu;
  c.parallel_attn_mlp = true;
  c.rope = RopeConfig{};
  return c;
}

std::vector<int32_t> Tokens(int n, int V, int seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = std::uniform_int_distribution<int>(0, V - 1)(rng);
  return t;
}

// Prefill of tokens [s, e) of toks as one chunk at position s of the cache; the last position's
// logits.
absl::Status RunChunk(ModelRunner& r, KvCache& cache, const std::vector<int32_t>& toks, int s, int e,
                      std::vector<float>* logits) {
  auto chunk = r.BeginChunk(absl::MakeConstSpan(toks).subspan(s, e - s), s, cache);
  if (!chunk.ok()) return chunk.status();
  for (int l = 0; l < r.config().num_layers; ++l) {
    if (absl::Status st = r.LayerQkv(**chunk, l); !st.ok()) return st;
    if (absl::Status st = r.LayerAttnMlp(**chunk, l); !st.ok()) return st;
  }
  return r.FinishChunk(**chunk, logits);
}

std::vector<float> Prefill(ModelRunner& r, KvCache& cache, const std::vector<int32_t>& toks,
                           std::vector<int> cuts) {
  std::vector<float> logits;
  cuts.insert(cuts.begin(), 0);
  cuts.push_back(static_cast<int>(toks.size()));
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    const absl::Status st = RunChunk(r, cache, toks, cuts[c], cuts[c + 1], &logits);
    EXPECT_TRUE(st.ok()) << st;
  }
  return logits;
}

struct Variant {
  const char* name;
  ModelConfig cfg;
  ::kvr::DType dt;
};

std::vector<Variant> Variants() {
  ModelConfig win = Llama(128);
  win.arch = Architecture::kMistral;
  win.sliding_window = 100;
  return {{"llama_d128_bf16", Llama(128), ::kvr::DType::kBF16},
          {"llama_d64_fp16", Llama(64), ::kvr::DType::kF16},
          {"mistral_window", win, ::kvr::DType::kBF16},
          {"falcon_mqa_gelu_ln", Falcon(), ::kvr::DType::kBF16}};
}

TEST(CudaRunner, ChunkedPrefillMatchesOneChunkAndDecodeMatchesPrefill) {
  for (const Variant& v : Variants()) {
    SCOPED_TRACE(v.name);
    CudaRunnerOptions opt;
    opt.dtype = v.dt;
    auto r = MakeRandomCudaRunner(v.cfg, 0, opt, 7);
    ASSERT_TRUE(r.ok()) << r.status();
    ModelRunner& run = **r;
    const int N = 333;
    auto toks = Tokens(N + 1, v.cfg.vocab_size, 3);
    std::vector<int32_t> prompt(toks.begin(), toks.begin() + N);
    auto c1 = run.NewKvCache(N + 8);
    auto c2 = run.NewKvCache(N + 8);
    auto c3 = run.NewKvCache(N + 8);
    ASSERT_TRUE(c1.ok() && c2.ok() && c3.ok());
    auto one = Prefill(run, **c1, prompt, {});
    auto three = Prefill(run, **c2, prompt, {200, 332});  // last chunk: one token at 332
    ASSERT_EQ(one.size(), static_cast<size_t>(v.cfg.vocab_size));
    EXPECT_LT(RelL2(three, one), 2e-2);
    std::vector<float> k1, v1, k2, v2;
    ASSERT_TRUE(run.ReadKv(**c1, 2, 0, N, &k1, &v1).ok());
    ASSERT_TRUE(run.ReadKv(**c2, 2, 0, N, &k2, &v2).ok());
    EXPECT_LT(RelL2(k2, k1), 2e-2);
    EXPECT_LT(RelL2(v2, v1), 2e-2);
    // Prefill of N+1 tokens vs prefill of N then one decode step (three times: eager, capture,
    // replay, each on a fresh copy of the prefix).
    auto longer = Prefill(run, **c3, toks, {});
    for (int rep = 0; rep < 3; ++rep) {
      auto c = run.NewKvCache(N + 8);
      ASSERT_TRUE(c.ok());
      Prefill(run, **c, prompt, {});
      absl::Span<const float> out;
      DecodeSlot slot{c->get(), toks[N], N};
      auto st = run.Decode({slot}, &out);
      ASSERT_TRUE(st.ok()) << st;
      const std::vector<float> dl(out.begin(), out.end());
      EXPECT_LT(RelL2(dl, longer), 2e-2) << "rep " << rep;
    }
    // A batch of two sequences at different positions equals each alone.
    auto ca = run.NewKvCache(N + 8);
    auto cb = run.NewKvCache(N + 8);
    ASSERT_TRUE(ca.ok() && cb.ok());
    Prefill(run, **ca, prompt, {});
    std::vector<int32_t> shortp(prompt.begin(), prompt.begin() + 57);
    auto short_ref = Prefill(run, **cb, std::vector<int32_t>(toks.begin(), toks.begin() + 58), {});
    Prefill(run, **cb, shortp, {});
    absl::Span<const float> bl;
    for (int rep = 0; rep < 3; ++rep) {  // eager, captured, replayed; same inputs each time
      ASSERT_TRUE(run.Decode({DecodeSlot{ca->get(), toks[N], N}, DecodeSlot{cb->get(), toks[57], 57}}, &bl).ok());
      std::vector<float> row0(bl.begin(), bl.begin() + v.cfg.vocab_size), row1(bl.begin() + v.cfg.vocab_size, bl.end());
      EXPECT_LT(RelL2(row0, longer), 2e-2) << "rep " << rep;
      EXPECT_LT(RelL2(row1, short_ref), 2e-2) << "rep " << rep;
    }
  }
}

// Decode steps on both sides of the attention plan's length boundary (kDecodeSingleMaxLen keys:
// the single-query kernel up to it, the scalar one past it), each plan's steps eager, captured
// and replayed, equal a prefill of the same tokens (the prompt and the first decode token in one
// chunk, then one token per chunk).
TEST(CudaRunner, DecodeAcrossTheAttentionPlanBoundary) {
  ModelConfig cfg = Llama(128);
  cfg.num_kv_heads = cfg.num_q_heads;  // one query per K/V head, as Llama 2
  cfg.max_position = 16384;
  auto r = MakeRandomCudaRunner(cfg, 0, CudaRunnerOptions{}, 11);
  ASSERT_TRUE(r.ok()) << r.status();
  ModelRunner& run = **r;
  const int P = kernels::kDecodeSingleMaxLen - 4, steps = 8;
  const auto toks = Tokens(P + steps, cfg.vocab_size, 13);
  auto dc = run.NewKvCache(P + steps);
  auto rc = run.NewKvCache(P + steps);
  ASSERT_TRUE(dc.ok() && rc.ok());
  Prefill(run, **dc, std::vector<int32_t>(toks.begin(), toks.begin() + P), {});
  std::vector<float> ref, got;
  for (int k = 0; k < steps; ++k) {
    const absl::Status st = RunChunk(run, **rc, toks, k == 0 ? 0 : P + k, P + k + 1, &ref);
    ASSERT_TRUE(st.ok()) << st;
    absl::Span<const float> out;
    ASSERT_TRUE(run.Decode({DecodeSlot{dc->get(), toks[P + k], P + k}}, &out).ok());
    got.assign(out.begin(), out.end());
    EXPECT_LT(RelL2(got, ref), 2e-2) << "decode with " << P + k + 1 << " keys";
  }
}

// attn_impl = cudnn (cuDNN fused attention, our kernel where cuDNN cannot run, e.g. the window)
// gives the logits of the default mma runner, in one chunk and in three (a 1-token last chunk).
TEST(CudaRunner, CudnnAttentionMatchesMma) {
  for (const Variant& v : Variants()) {
    SCOPED_TRACE(v.name);
    CudaRunnerOptions opt;
    opt.dtype = v.dt;
    auto rm = MakeRandomCudaRunner(v.cfg, 0, opt, 7);
    ASSERT_TRUE(rm.ok()) << rm.status();
    opt.attn_impl = "cudnn";
    auto rc = MakeRandomCudaRunner(v.cfg, 0, opt, 7);
    ASSERT_TRUE(rc.ok()) << rc.status();
    const int N = 333;
    auto prompt = Tokens(N, v.cfg.vocab_size, 5);
    auto cm = (*rm)->NewKvCache(N + 8);
    auto c1 = (*rc)->NewKvCache(N + 8);
    auto c3 = (*rc)->NewKvCache(N + 8);
    ASSERT_TRUE(cm.ok() && c1.ok() && c3.ok());
    auto ref = Prefill(**rm, **cm, prompt, {});
    auto one = Prefill(**rc, **c1, prompt, {});
    auto three = Prefill(**rc, **c3, prompt, {200, 332});
    EXPECT_LT(RelL2(one, ref), 2e-2);
    EXPECT_LT(RelL2(three, ref), 2e-2);
  }
  CudaRunnerOptions bad;
  bad.attn_impl = "flash9";
  EXPECT_FALSE(MakeRandomCudaRunner(Llama(64), 0, bad, 7).ok());
}

// attn_impl = auto with cuDNN plans prewarmed at load (cudnn_prewarm_*): chunks of 600 queries
// (bucket 640) at offsets 0, 600, 1200 run on the prewarmed bucketed plans (keys padded into
// the zeroed cache), a 37-token last chunk on ours; the logits match the mma runner's. Then
// attn_impl = cudnn on a cache exactly as long as the prompt: the first chunks use key buckets,
// the last two (N = 1800, 1837; bucket 1920 > capacity) exact keys.
TEST(CudaRunner, CudnnBucketedPrewarmedMatchesMma) {
  if (std::getenv("KVR_CUDNN_BUCKETS") == nullptr || std::string(std::getenv("KVR_CUDNN_BUCKETS")) != "1") {
    GTEST_SKIP() << "bucketed cuDNN plans are off (measured wrong on cuDNN 9.14, see kernels/cudnn_attention.h); "
                    "KVR_CUDNN_BUCKETS=1 runs this test";
  }
  for (const Variant& v : Variants()) {
    SCOPED_TRACE(v.name);
    CudaRunnerOptions opt;
    opt.dtype = v.dt;
    auto rm = MakeRandomCudaRunner(v.cfg, 0, opt, 7);
    ASSERT_TRUE(rm.ok()) << rm.status();
    opt.attn_impl = "auto";
    opt.cudnn_prewarm_tokens = 2048;
    opt.cudnn_prewarm_min_chunk = 512;
    opt.cudnn_prewarm_max_chunk = 640;
    auto ra = MakeRandomCudaRunner(v.cfg, 0, opt, 7);
    ASSERT_TRUE(ra.ok()) << ra.status();
    opt.attn_impl = "cudnn";
    opt.cudnn_prewarm_tokens = 0;
    auto rc = MakeRandomCudaRunner(v.cfg, 0, opt, 7);
    ASSERT_TRUE(rc.ok()) << rc.status();
    const int N = 1837;
    auto prompt = Tokens(N, v.cfg.vocab_size, 9);
    auto cm = (*rm)->NewKvCache(2000);
    auto ca = (*ra)->NewKvCache(2000);
    auto cx = (*rc)->NewKvCache(N);
    ASSERT_TRUE(cm.ok() && ca.ok() && cx.ok());
    const std::vector<int> cuts = {600, 1200, 1800};
    auto ref = Prefill(**rm, **cm, prompt, cuts);
    auto a = Prefill(**ra, **ca, prompt, cuts);
    auto x = Prefill(**rc, **cx, prompt, cuts);
    EXPECT_LT(RelL2(a, ref), 2e-2) << "auto, prewarmed buckets";
    EXPECT_LT(RelL2(x, ref), 2e-2) << "cudnn, cache without room for key buckets";
  }
}

// The stream-ordered pool keeps its peak mapped: after two long contexts alive at once and then
// short ones, it still holds at least both long caches, so that long prompts after short ones do
// not wait for the driver to map memory again.
TEST(CudaRunner, PoolKeepsItsPeak) {
  ModelConfig cfg = Llama(128);
  auto r = MakeRandomCudaRunner(cfg, 0, {}, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  const int longest = 8000;
  const uint64_t long_cache = 2ull * cfg.num_layers * longest * cfg.kv_dim() * 2;
  {
    auto big = (*r)->NewKvCache(longest);
    auto big2 = (*r)->NewKvCache(longest);
    ASSERT_TRUE(big.ok() && big2.ok());
  }
  for (int i = 0; i < 2; ++i) {
    auto small = (*r)->NewKvCache(100);
    ASSERT_TRUE(small.ok()) << small.status();
  }
  cudaMemPool_t pool;
  ASSERT_EQ(cudaDeviceGetDefaultMemPool(&pool, 0), cudaSuccess);
  uint64_t reserved = 0;
  ASSERT_EQ(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved), cudaSuccess);
  EXPECT_GE(reserved, 2 * long_cache) << "the pool gave back memory its peak needed";
}

TEST(CudaRunner, RefusesContextThatDoesNotFit) {
  ModelConfig cfg = Llama(128);
  auto r = MakeRandomCudaRunner(cfg, 0, {}, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  const MemoryReport m = (*r)->memory();
  EXPECT_GT(m.weights_bytes, 0u);
  EXPECT_GT(m.total_bytes, m.free_bytes);
  auto c = (*r)->NewKvCache(2000000000);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted) << c.status();
  EXPECT_NE(c.status().message().find("does not fit"), std::string::npos);
  auto ok = (*r)->NewKvCache(100);
  ASSERT_TRUE(ok.ok());
  std::vector<int32_t> toks(101, 1);
  EXPECT_EQ((*r)->BeginChunk(toks, 0, **ok).status().code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace kvr::testing

KVR_GPU_TEST_MAIN()
