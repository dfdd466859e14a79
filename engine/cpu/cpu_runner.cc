#include "engine/cpu/cpu_runner.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_ops.h"
#include "engine/util/status_macros.h"

namespace kvr {
namespace {

// fp32 copies of one layer's weights; shapes as in engine/model/model_weights.h.
struct CpuLayer {
  std::vector<float> attn_norm_w, attn_norm_b;  // (C)
  std::vector<float> mlp_norm_w, mlp_norm_b;    // (C), empty for parallel attention+MLP
  std::vector<float> wqkv, bqkv;                // (Hq*D + 2*Hkv*D, C), (Hq*D + 2*Hkv*D)
  std::vector<float> wo, bo;                    // (C, Hq*D), (C)
  std::vector<float> w_up, b_up;                // (2F, C) or (F, C)
  std::vector<float> w_down, b_down;            // (C, F), (C)
};

const float* OrNull(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

// fp32 host cache: per layer K then V, each (capacity, Hkv, D).
class CpuKvCache : public KvCache {
 public:
  CpuKvCache(int layers, int capacity, int kv_dim)
      : layers_(layers), capacity_(capacity), kv_dim_(kv_dim),
        data_(static_cast<size_t>(layers) * 2 * capacity * kv_dim, 0.0f) {}
  int capacity() const override { return capacity_; }
  int num_layers() const override { return layers_; }
  int device() const override { return 0; }
  size_t bytes() const override { return data_.size() * sizeof(float); }
  KvLayerView layer(int l) override {
    float* k = data_.data() + static_cast<size_t>(l) * 2 * capacity_ * kv_dim_;
    return KvLayerView{reinterpret_cast<std::byte*>(k),
                       reinterpret_cast<std::byte*>(k + static_cast<size_t>(capacity_) * kv_dim_),
                       kv_dim_ * sizeof(float)};
  }
  float* k(int l) { return reinterpret_cast<float*>(layer(l).k); }
  float* v(int l) { return reinterpret_cast<float*>(layer(l).v); }

 private:
  int layers_, capacity_, kv_dim_;
  std::vector<float> data_;
};

// Activations of one chunk of T tokens at positions [start, start + T).
struct CpuChunk : public ChunkState {
  CpuKvCache* cache = nullptr;
  int start = 0, T = 0;
  std::vector<float> x;    // (T, C) residual stream
  std::vector<float> xn;   // (T, C) normed input of the current layer
  std::vector<float> q;    // (T, Hq, D) rotated queries of the current layer
  bool fault = false;      // fault injection: this prefill chunk fails at options.fail_at_layer
};

class CpuRunner : public ModelRunner {
 public:
  CpuRunner(const ModelConfig& config, const CpuRunnerOptions& options)
      : config_(config), options_(options),
        inv_freq_(RopeInverseFrequencies(config.rope, config.head_dim)) {}

  void Load(const ModelWeights& w) {
    embed_ = w.embed.ToFloat();
    for (const LayerWeights& lw : w.layers) {
      CpuLayer l;
      l.attn_norm_w = lw.attn_norm_w.ToFloat();
      l.attn_norm_b = lw.attn_norm_b.ToFloat();
      l.mlp_norm_w = lw.mlp_norm_w.ToFloat();
      l.mlp_norm_b = lw.mlp_norm_b.ToFloat();
      l.wqkv = lw.wqkv.ToFloat();
      l.bqkv = lw.bqkv.ToFloat();
      l.wo = lw.wo.ToFloat();
      l.bo = lw.bo.ToFloat();
      l.w_up = lw.w_up.ToFloat();
      l.b_up = lw.b_up.ToFloat();
      l.w_down = lw.w_down.ToFloat();
      l.b_down = lw.b_down.ToFloat();
      layers_.push_back(std::move(l));
    }
    final_norm_w_ = w.final_norm_w.ToFloat();
    final_norm_b_ = w.final_norm_b.ToFloat();
    lm_head_ = w.lm_head.ToFloat();
  }

  const ModelConfig& config() const override { return config_; }
  std::string device_name() const override { return absl::StrCat("cpu worker ", options_.device_index); }
  int device() const override { return options_.device_index; }

  MemoryReport memory() const override {
    size_t floats = embed_.size() + final_norm_w_.size() + final_norm_b_.size() + lm_head_.size();
    for (const CpuLayer& l : layers_) {
      for (const auto* v : {&l.attn_norm_w, &l.attn_norm_b, &l.mlp_norm_w, &l.mlp_norm_b, &l.wqkv,
                            &l.bqkv, &l.wo, &l.bo, &l.w_up, &l.b_up, &l.w_down, &l.b_down}) {
        floats += v->size();
      }
    }
    MemoryReport r;
    r.weights_bytes = floats * sizeof(float);
    return r;
  }

  absl::StatusOr<std::unique_ptr<KvCache>> NewKvCache(int capacity) override {
    if (capacity <= 0) return absl::InvalidArgumentError("KV-cache capacity must be positive");
    return std::make_unique<CpuKvCache>(config_.num_layers, capacity, config_.kv_dim());
  }

  absl::StatusOr<std::unique_ptr<ChunkState>> BeginChunk(absl::Span<const int32_t> tokens, int start,
                                                         KvCache& cache) override {
    const int T = static_cast<int>(tokens.size());
    if (T == 0) return absl::InvalidArgumentError("empty chunk");
    if (start < 0 || start + T > cache.capacity()) {
      return absl::OutOfRangeError(absl::StrCat("chunk [", start, ", ", start + T,
                                                ") does not fit a KV-cache of ", cache.capacity(), " tokens"));
    }
    for (int32_t t : tokens) {
      if (t < 0 || t >= config_.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", t, " is outside the vocabulary [0, ", config_.vocab_size, ")"));
      }
    }
    auto chunk = std::make_unique<CpuChunk>();
    chunk->cache = static_cast<CpuKvCache*>(&cache);
    chunk->start = start;
    chunk->T = T;
    chunk->x.resize(static_cast<size_t>(T) * config_.hidden_size);
    chunk->xn.resize(chunk->x.size());
    chunk->q.resize(static_cast<size_t>(T) * config_.q_dim());
    cpu::Embed(tokens, embed_.data(), config_.hidden_size, chunk->x.data());  // x (T, C)
    if (options_.fail_at_layer >= 0) {
      for (int32_t t : tokens) chunk->fault |= options_.fail_on_token < 0 || t == options_.fail_on_token;
    }
    return chunk;
  }

  // xn = norm(x); [q | k | v] = xn @ wqkv^T; rotary on q and k; K/V rows [start, start+T) -> cache.
  absl::Status LayerQkv(ChunkState& state, int layer) override {
    auto& c = static_cast<CpuChunk&>(state);
    if (c.fault && layer == options_.fail_at_layer && options_.hang_seconds > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(options_.hang_seconds));
    } else if (c.fault && layer == options_.fail_at_layer) {
      return absl::InternalError(absl::StrCat("cpu worker ", options_.device_index,
                                              ": injected fault at layer ", layer, " (testing)"));
    }
    const CpuLayer& l = layers_[layer];
    const int T = c.T, C = config_.hidden_size, D = config_.head_dim;
    const int Hq = config_.num_q_heads, Hkv = config_.num_kv_heads;
    const int qd = config_.q_dim(), kvd = config_.kv_dim(), qkvd = config_.qkv_dim();
    Norm(c.x.data(), l.attn_norm_w, l.attn_norm_b, T, c.xn.data());
    std::vector<float> qkv(static_cast<size_t>(T) * qkvd);  // (T, Hq*D + 2*Hkv*D)
    cpu::Linear(c.xn.data(), l.wqkv.data(), OrNull(l.bqkv), T, C, qkvd, qkv.data(), options_.threads);
    float* k_cache = c.cache->k(layer) + static_cast<size_t>(c.start) * kvd;  // (T, Hkv, D)
    float* v_cache = c.cache->v(layer) + static_cast<size_t>(c.start) * kvd;
    for (int t = 0; t < T; ++t) {
      const float* row = qkv.data() + static_cast<size_t>(t) * qkvd;
      std::memcpy(c.q.data() + static_cast<size_t>(t) * qd, row, sizeof(float) * qd);
      std::memcpy(k_cache + static_cast<size_t>(t) * kvd, row + qd, sizeof(float) * kvd);
      std::memcpy(v_cache + static_cast<size_t>(t) * kvd, row + qd + kvd, sizeof(float) * kvd);
    }
    cpu::Rotary(c.q.data(), T, Hq, D, c.start, inv_freq_.data());
    cpu::Rotary(k_cache, T, Hkv, D, c.start, inv_freq_.data());
    return absl::OkStatus();
  }

  // attn = softmax(q k^T / sqrt(D)) v over keys [0, start+T); o = attn @ wo^T;
  // sequential: x += o; x += mlp(norm2(x)).   parallel (Falcon): x += o + mlp(xn).
  absl::Status LayerAttnMlp(ChunkState& state, int layer) override {
    auto& c = static_cast<CpuChunk&>(state);
    const CpuLayer& l = layers_[layer];
    const int T = c.T, C = config_.hidden_size, D = config_.head_dim;
    const int Hq = config_.num_q_heads, Hkv = config_.num_kv_heads;
    const int64_t n = static_cast<int64_t>(T) * C;
    std::vector<float> attn(static_cast<size_t>(T) * config_.q_dim());  // (T, Hq, D)
    cpu::Attention(c.q.data(), c.cache->k(layer), c.cache->v(layer), T, c.start, Hq, Hkv, D,
                   config_.sliding_window, attn.data());
    std::vector<float> o(n);  // (T, C)
    cpu::Linear(attn.data(), l.wo.data(), OrNull(l.bo), T, config_.q_dim(), C, o.data(), options_.threads);
    if (config_.parallel_attn_mlp) {
      std::vector<float> m = Mlp(l, c.xn.data(), T);
      cpu::AddInPlace(m.data(), o.data(), n);  // mlp + attn, then the residual, as HF Falcon adds
      cpu::AddInPlace(c.x.data(), m.data(), n);
    } else {
      cpu::AddInPlace(c.x.data(), o.data(), n);
      Norm(c.x.data(), l.mlp_norm_w, l.mlp_norm_b, T, c.xn.data());
      std::vector<float> m = Mlp(l, c.xn.data(), T);
      cpu::AddInPlace(c.x.data(), m.data(), n);
    }
    return absl::OkStatus();
  }

  // logits (V) = final_norm(x[T-1]) @ lm_head^T.
  absl::Status FinishChunk(ChunkState& state, std::vector<float>* last_logits) override {
    auto& c = static_cast<CpuChunk&>(state);
    const int C = config_.hidden_size;
    std::vector<float> h(C);
    Norm(c.x.data() + static_cast<size_t>(c.T - 1) * C, final_norm_w_, final_norm_b_, 1, h.data());
    last_logits->resize(config_.vocab_size);
    cpu::Linear(h.data(), lm_head_.data(), nullptr, 1, C, config_.vocab_size, last_logits->data(),
                options_.threads);
    return absl::OkStatus();
  }

  absl::Status Decode(absl::Span<const DecodeSlot> batch, absl::Span<const float>* logits) override {
    const int V = config_.vocab_size;
    *logits = {};
    decode_logits_.resize(batch.size() * static_cast<size_t>(V));
    for (size_t b = 0; b < batch.size(); ++b) {
      const DecodeSlot& s = batch[b];
      const int32_t token = s.token;
      KVR_ASSIGN_OR_RETURN(auto chunk, BeginChunk(absl::MakeConstSpan(&token, 1), s.pos, *s.cache));
      static_cast<CpuChunk&>(*chunk).fault = false;  // injected faults hit prefills only
      for (int l = 0; l < config_.num_layers; ++l) {
        KVR_RETURN_IF_ERROR(LayerQkv(*chunk, l));
        KVR_RETURN_IF_ERROR(LayerAttnMlp(*chunk, l));
      }
      std::vector<float> row;
      KVR_RETURN_IF_ERROR(FinishChunk(*chunk, &row));
      std::memcpy(decode_logits_.data() + b * V, row.data(), sizeof(float) * V);
    }
    *logits = decode_logits_;
    return absl::OkStatus();
  }

  absl::Status ReadKv(KvCache& cache, int layer, int a, int b, std::vector<float>* k,
                      std::vector<float>* v) override {
    auto& cc = static_cast<CpuKvCache&>(cache);
    if (a < 0 || b > cc.capacity() || a > b) return absl::OutOfRangeError("ReadKv: bad token range");
    const size_t kvd = config_.kv_dim();
    k->assign(cc.k(layer) + a * kvd, cc.k(layer) + b * kvd);
    v->assign(cc.v(layer) + a * kvd, cc.v(layer) + b * kvd);
    return absl::OkStatus();
  }

 private:
  void Norm(const float* x, const std::vector<float>& w, const std::vector<float>& b, int T, float* out) const {
    if (config_.norm == NormKind::kRmsNorm) {
      cpu::RmsNorm(x, w.data(), T, config_.hidden_size, config_.norm_eps, out);
    } else {
      cpu::LayerNorm(x, w.data(), OrNull(b), T, config_.hidden_size, config_.norm_eps, out);
    }
  }

  // SiLU-gate: down(silu(gate(x)) * up(x));  GELU: down(gelu(up(x))).  x (T, C) -> (T, C).
  std::vector<float> Mlp(const CpuLayer& l, const float* x, int T) const {
    const int C = config_.hidden_size, F = config_.intermediate_size;
    std::vector<float> act(static_cast<size_t>(T) * F);  // (T, F)
    if (config_.mlp == MlpKind::kSiluGate) {
      std::vector<float> gu(static_cast<size_t>(T) * 2 * F);  // (T, 2F)
      cpu::Linear(x, l.w_up.data(), OrNull(l.b_up), T, C, 2 * F, gu.data(), options_.threads);
      cpu::SiluGate(gu.data(), T, F, act.data());
    } else {
      cpu::Linear(x, l.w_up.data(), OrNull(l.b_up), T, C, F, act.data(), options_.threads);
      cpu::GeluErf(act.data(), static_cast<int64_t>(T) * F);
    }
    std::vector<float> out(static_cast<size_t>(T) * C);
    cpu::Linear(act.data(), l.w_down.data(), OrNull(l.b_down), T, F, C, out.data(), options_.threads);
    return out;
  }

  ModelConfig config_;
  CpuRunnerOptions options_;
  std::vector<float> inv_freq_;  // (D/2)
  std::vector<float> embed_;     // (V, C)
  std::vector<CpuLayer> layers_;
  std::vector<float> final_norm_w_, final_norm_b_;  // (C)
  std::vector<float> lm_head_;   // (V, C)
  std::vector<float> decode_logits_;  // (batch, V): the last Decode's, which its caller reads
};

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRunner>> MakeCpuRunner(const ModelConfig& config,
                                                           const ModelWeights& weights,
                                                           const CpuRunnerOptions& options) {
  if (static_cast<int>(weights.layers.size()) != config.num_layers) {
    return absl::InvalidArgumentError("weights do not match the config's layer count");
  }
  CpuRunnerOptions o = options;
  if (o.fail_at_layer < 0) {
    // Fault injection for tests of the daemon: KVR_TESTING_CPU_FAULT=worker:layer[:token[:hang]].
    if (const char* env = std::getenv("KVR_TESTING_CPU_FAULT"); env != nullptr && *env != '\0') {
      int worker = -1, layer = -1, token = -1;
      double hang = 0;
      if (std::sscanf(env, "%d:%d:%d:%lf", &worker, &layer, &token, &hang) < 2 || layer < 0 ||
          hang < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "KVR_TESTING_CPU_FAULT=\"", env, "\": expected worker:layer[:token[:hang_seconds]]"));
      }
      if (worker == o.device_index) {
        o.fail_at_layer = layer;
        o.fail_on_token = token;
        o.hang_seconds = hang;
      }
    }
  }
  auto runner = std::make_unique<CpuRunner>(config, o);
  runner->Load(weights);
  return runner;
}

}  // namespace kvr
