// CudaRunner implementation. See cuda_runner.h.
//
// Legend: V vocab, C hidden, L layers, Hq / Hkv heads, D head size, E = Hq*D + 2*Hkv*D (fused
// QKV width), F intermediate, U = 2F (SiLU-gate, [gate; up]) or F (GELU), T tokens in a chunk,
// B sequences in a decode batch. "T-typed" means the compute type (bf16 or fp16).
// Under tensor parallelism (opt_.tp_size > 1) cfg_ is the rank's shard (its heads and
// intermediate size) and full_ the whole model; otherwise both are the model.
#include "engine/cuda/cuda_runner.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/cuda/tensor_parallel.h"
#include "engine/util/log.h"
#include "engine/util/status_macros.h"
#include "kernels/activation.cuh"
#include "kernels/attention_decode.cuh"
#include "kernels/attention_prefill.cuh"
#include "kernels/cudnn_attention.h"
#include "kernels/embedding.cuh"
#include "kernels/gemm.h"
#include "kernels/norm.cuh"
#include "kernels/rotary.cuh"

namespace kvr {
namespace {

namespace K = ::kvr::kernels;

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  if (e == cudaErrorMemoryAllocation)
    return absl::ResourceExhaustedError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(e), " ", cudaGetErrorString(e)));
}
#define KVR_CU(expr) KVR_RETURN_IF_ERROR(CudaStatus((expr), #expr))
#define KVR_BLAS(expr)                                                                  \
  do {                                                                                  \
    cublasStatus_t st_ = (expr);                                                        \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                   \
      return absl::InternalError(absl::StrCat(#expr, ": ", K::CublasStatusName(st_)));  \
  } while (0)

std::string GiB(size_t b) { return absl::StrFormat("%.2f GiB", b / 1073741824.0); }

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Carves aligned slices out of one allocation; with base == nullptr it only counts.
class Carver {
 public:
  explicit Carver(std::byte* base) : base_(base) {}
  template <typename X>
  X* Take(size_t count, size_t elem = sizeof(X)) {
    std::byte* p = base_ ? base_ + off_ : nullptr;
    off_ = AlignUp(off_ + count * elem);
    return reinterpret_cast<X*>(p);
  }
  size_t size() const { return off_; }

 private:
  std::byte* base_;
  size_t off_ = 0;
};

// A KV-cache in the runner's stream-ordered pool: freed (cudaFreeAsync) on the runner's stream,
// so it must not outlive its runner; the pool keeps the memory mapped for the next cache.
class CudaKvCache : public KvCache {
 public:
  CudaKvCache(const void* owner, int device, cudaStream_t stream, int capacity, int layers,
              size_t bytes_per_token, std::byte* mem, bool zeroed, std::vector<CUtensorMap> maps)
      : owner_(owner), device_(device), stream_(stream), capacity_(capacity), layers_(layers),
        bytes_per_token_(bytes_per_token), mem_(mem), zeroed_(zeroed), maps_(std::move(maps)) {}
  ~CudaKvCache() override {
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(device_);
    cudaFreeAsync(mem_, stream_);
    cudaSetDevice(prev);
  }
  int capacity() const override { return capacity_; }
  int num_layers() const override { return layers_; }
  // Layer l: K at mem + 2l * cap * bpt, V right after it.
  KvLayerView layer(int l) override {
    const size_t per = static_cast<size_t>(capacity_) * bytes_per_token_;
    return KvLayerView{mem_ + 2 * l * per, mem_ + (2 * l + 1) * per, bytes_per_token_};
  }
  int device() const override { return device_; }
  size_t bytes() const override {
    return 2ull * layers_ * static_cast<size_t>(capacity_) * bytes_per_token_;
  }
  const void* owner() const { return owner_; }
  // Zeroed at allocation: every row holds zeros or what was written since (finite keys and
  // values), so a cuDNN bucketed plan may read rows past a sequence's length.
  bool zeroed() const { return zeroed_; }
  // The tensor maps of layer l's K (kv = 0) and V (kv = 1) through which the tensor-core decode
  // kernel reads them (kernels::EncodeKvTensorMap); empty when the runner's heads have none.
  bool has_maps() const { return !maps_.empty(); }
  const CUtensorMap& map(int l, int kv) const { return maps_[2 * l + kv]; }

 private:
  const void* owner_;
  int device_;
  cudaStream_t stream_;
  int capacity_, layers_;
  size_t bytes_per_token_;
  std::byte* mem_;
  bool zeroed_;
  std::vector<CUtensorMap> maps_;  // [layer][K, V]
};

// Part of a row-major matrix of 2-byte elements: the listed row ranges (begin, count), one
// after another, each row's columns [col0, col0 + cols) (cols 0: all). Empty `rows`: the whole.
struct Slice {
  std::vector<std::pair<size_t, size_t>> rows;
  size_t col0 = 0, cols = 0;
  bool whole() const { return rows.empty(); }
};

struct DevLayer {
  void *attn_norm_w = nullptr, *attn_norm_b = nullptr, *mlp_norm_w = nullptr, *mlp_norm_b = nullptr;
  void *wqkv = nullptr, *bqkv = nullptr, *wo = nullptr, *bo = nullptr;
  void *w_up = nullptr, *b_up = nullptr, *w_down = nullptr, *b_down = nullptr;
};

// Activations of one chunk: one stream-ordered allocation carved into buffers.
struct ChunkBuffers {
  int32_t* ids = nullptr;  // (T)
  float* x = nullptr;      // (T, C) fp32 residual
  void* h = nullptr;       // (T, C) normed input of the current sub-layer
  void* qkv = nullptr;     // (T, E)
  void* q = nullptr;       // (T, Hq, D) rotated queries
  void* attn = nullptr;    // (T, Hq*D) attention output
  void* up = nullptr;      // (T, U)
  void* act = nullptr;     // (T, F)
  float* logits = nullptr; // (V) last token
  void* part = nullptr;    // (T, C) a rank's partial output projection (tensor parallelism only)
};

class CudaChunk : public ChunkState {
 public:
  CudaChunk(int device, cudaStream_t stream) : device_(device), stream_(stream) {}
  ~CudaChunk() override {
    if (mem) {
      cudaSetDevice(device_);
      cudaFreeAsync(mem, stream_);
    }
  }
  CudaKvCache* cache = nullptr;
  int start = 0, n = 0;
  void* mem = nullptr;
  ChunkBuffers b;

 private:
  int device_;
  cudaStream_t stream_;
};

class CudaRunner : public ModelRunner {
 public:
  CudaRunner(const ModelConfig& cfg, int device, const CudaRunnerOptions& opt)
      : cfg_(cfg), device_(device), opt_(opt),
        dt_(opt.dtype == DType::kF16 ? K::DType::kF16 : K::DType::kBF16),
        fuse_decode_(FuseDecodeFromEnv()),
        skip_(DecodeSkipFromEnv()) {}

  ~CudaRunner() override {
    cudaSetDevice(device_);
    if (stream_) cudaStreamSynchronize(stream_);
    for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g);
    for (cudaEvent_t e : ev_)
      if (e != nullptr) cudaEventDestroy(e);
    FreeDecode();
    if (inv_freq_) cudaFree(inv_freq_);
    if (arena_) cudaFree(arena_);
    gemm_.reset();
    cudnn_attn_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  absl::Status Init() {
    if (opt_.dtype != DType::kBF16 && opt_.dtype != DType::kF16)
      return absl::InvalidArgumentError("CUDA compute dtype must be BF16 or F16");
    const int ndev = CudaDeviceCount();
    if (device_ < 0 || device_ >= ndev)
      return absl::FailedPreconditionError(
          absl::StrCat("CUDA device ", device_, " not available (", ndev, " devices)"));
    if (cfg_.head_dim != 64 && cfg_.head_dim != 128)
      return absl::UnimplementedError(absl::StrCat("head_dim ", cfg_.head_dim, " (CUDA supports 64, 128)"));
    if (cfg_.num_kv_heads <= 0 || cfg_.num_q_heads % cfg_.num_kv_heads != 0)
      return absl::InvalidArgumentError("num_q_heads must be a multiple of num_kv_heads");
    full_ = cfg_;
    if (Tp()) {
      if (opt_.tp_comm == nullptr)
        return absl::InvalidArgumentError("tensor parallelism (tp_size > 1) needs an NCCL communicator");
      KVR_ASSIGN_OR_RETURN(shard_, TensorParallelShardOf(full_, opt_.tp_rank, opt_.tp_size));
      cfg_ = shard_.local;       // from here on the runner is a model of the shard's width
      opt_.decode_graphs = false;  // decode steps all-reduce: run them eagerly
    }
    KVR_CU(cudaSetDevice(device_));
    cudaDeviceProp prop{};
    KVR_CU(cudaGetDeviceProperties(&prop, device_));
    name_ = absl::StrCat("cuda:", device_, " (", prop.name, ")");
    if (Tp()) absl::StrAppend(&name_, " tensor-parallel rank ", opt_.tp_rank, " of ", opt_.tp_size);
    num_sms_ = prop.multiProcessorCount;
    KVR_CU(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    // Keep freed chunk buffers in the stream-ordered pool between chunks.
    cudaMemPool_t pool;
    KVR_CU(cudaDeviceGetDefaultMemPool(&pool, device_));
    uint64_t threshold = UINT64_MAX;
    KVR_CU(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    pool_ = pool;
    // KV-caches come from this pool too, and KV-Runahead's copy engines write them from other
    // GPUs: pool memory follows cudaMemPoolSetAccess, not cudaDeviceEnablePeerAccess, so every
    // GPU that can reach this one maps it (otherwise peer copies take a staged path).
    int gpus = 0;
    KVR_CU(cudaGetDeviceCount(&gpus));
    for (int j = 0; j < gpus; ++j) {
      int can = 0;
      if (j == device_ || cudaDeviceCanAccessPeer(&can, j, device_) != cudaSuccess || !can) continue;
      cudaMemAccessDesc desc{};
      desc.location.type = cudaMemLocationTypeDevice;
      desc.location.id = j;
      desc.flags = cudaMemAccessFlagsProtReadWrite;
      if (cudaMemPoolSetAccess(pool, &desc, 1) != cudaSuccess) {
        cudaGetLastError();
        KVR_LOG(WARNING) << name_ << ": GPU " << j << " cannot map this GPU's memory pool; K/V copies to it may be staged";
      }
    }
    gemm_ = std::make_unique<K::Gemm>();
    KVR_BLAS(gemm_->Init(opt_.gemm_workspace_bytes));
    if (!K::ParseAttnImpl(opt_.attn_impl, &attn_impl_))
      return absl::InvalidArgumentError(
          absl::StrCat("attn_impl \"", opt_.attn_impl, "\": expected mma, cudnn or auto"));
    if (attn_impl_ != K::AttnImpl::kMma) {
      cudnn_attn_ = std::make_unique<K::CudnnAttention>();
      const K::CudnnAttnStatus st = cudnn_attn_->Init();
      if (!st.ok()) {
        KVR_LOG(WARNING) << name_ << ": cuDNN attention unavailable (" << st.message
                         << "); prefill attention runs the mma kernel";
        cudnn_attn_.reset();
      }
    }
    if (cudnn_attn_) PrewarmCudnn();
    const std::vector<float> inv = RopeInverseFrequencies(cfg_.rope, cfg_.head_dim);
    KVR_CU(cudaMalloc(&inv_freq_, inv.size() * sizeof(float)));
    KVR_CU(cudaMemcpy(inv_freq_, inv.data(), inv.size() * sizeof(float), cudaMemcpyHostToDevice));
    // Weight arena layout.
    const size_t C = cfg_.hidden_size, E = cfg_.qkv_dim(), QD = cfg_.q_dim(), F = cfg_.intermediate_size;
    const size_t U = Silu() ? 2 * F : F;
    const bool ln = cfg_.norm == NormKind::kLayerNorm;
    auto plan = [&](Carver& c) {
      embed_ = c.Take<void>(static_cast<size_t>(cfg_.vocab_size) * C, 2);
      layers_.assign(cfg_.num_layers, DevLayer{});
      for (DevLayer& l : layers_) {
        l.attn_norm_w = c.Take<void>(C, 2);
        if (ln) l.attn_norm_b = c.Take<void>(C, 2);
        if (!cfg_.parallel_attn_mlp) {
          l.mlp_norm_w = c.Take<void>(C, 2);
          if (ln) l.mlp_norm_b = c.Take<void>(C, 2);
        }
        l.wqkv = c.Take<void>(E * C, 2);
        if (cfg_.qkv_bias) l.bqkv = c.Take<void>(E, 2);
        l.wo = c.Take<void>(C * QD, 2);
        if (cfg_.out_bias) l.bo = c.Take<void>(C, 2);
        l.w_up = c.Take<void>(U * C, 2);
        if (cfg_.mlp_bias) l.b_up = c.Take<void>(U, 2);
        l.w_down = c.Take<void>(C * F, 2);
        if (cfg_.mlp_bias) l.b_down = c.Take<void>(C, 2);
      }
      final_norm_w_ = c.Take<void>(C, 2);
      if (ln) final_norm_b_ = c.Take<void>(C, 2);
      lm_head_ = cfg_.tie_word_embeddings ? embed_ : c.Take<void>(static_cast<size_t>(cfg_.vocab_size) * C, 2);
    };
    Carver count(nullptr);
    plan(count);
    arena_bytes_ = count.size();
    size_t free_b = 0, total_b = 0;
    KVR_CU(cudaMemGetInfo(&free_b, &total_b));
    if (arena_bytes_ + opt_.reserve_bytes > free_b)
      return absl::ResourceExhaustedError(absl::StrCat(
          "weights need ", GiB(arena_bytes_), " on ", name_, ", ", GiB(free_b), " free of ", GiB(total_b)));
    KVR_CU(cudaMalloc(&arena_, arena_bytes_));
    Carver real(static_cast<std::byte*>(arena_));
    plan(real);
    return absl::OkStatus();
  }

  // Copies the checkpoint's weights into the arena, converted to the compute type (a
  // tensor-parallel rank: its shard of each split weight; shapes are checked against the whole
  // model's).
  absl::Status Upload(const ModelWeights& w) {
    std::vector<uint16_t> host;
    const size_t C = full_.hidden_size, E = full_.qkv_dim(), QD = full_.q_dim(), F = full_.intermediate_size;
    const size_t U = Silu() ? 2 * F : F;
    const ShardSlices sl = Slices();
    auto put = [&](const WeightRef& ref, void* dst, size_t rows, size_t cols, const char* what,
                   int layer, const Slice& part = Slice{}) -> absl::Status {
      if (dst == nullptr) {
        if (ref.present())
          return absl::InvalidArgumentError(absl::StrCat("weight ", what, " of layer ", layer,
                                                         " present but the config has no slot for it"));
        return absl::OkStatus();
      }
      if (!ref.present())
        return absl::InvalidArgumentError(absl::StrCat("weight ", what, " of layer ", layer, " missing"));
      if (static_cast<size_t>(ref.rows) != rows || static_cast<size_t>(ref.cols) != cols)
        return absl::InvalidArgumentError(absl::StrFormat(
            "weight %s of layer %d is (%d, %d), expected (%d, %d)", what, layer, ref.rows, ref.cols, rows, cols));
      host.resize(rows * cols);
      ref.ToHalf(opt_.dtype, host.data());
      if (!part.whole()) return CopySlice(dst, host.data(), cols, part, cudaMemcpyHostToDevice, what);
      return CudaStatus(cudaMemcpy(dst, host.data(), rows * cols * 2, cudaMemcpyHostToDevice), what);
    };
    KVR_CU(cudaSetDevice(device_));
    if (w.layers.size() != static_cast<size_t>(cfg_.num_layers))
      return absl::InvalidArgumentError("layer count of weights and config differ");
    KVR_RETURN_IF_ERROR(put(w.embed, embed_, cfg_.vocab_size, C, "embed", -1));
    for (int i = 0; i < cfg_.num_layers; ++i) {
      const LayerWeights& s = w.layers[i];
      DevLayer& d = layers_[i];
      KVR_RETURN_IF_ERROR(put(s.attn_norm_w, d.attn_norm_w, C, 1, "attn_norm_w", i));
      KVR_RETURN_IF_ERROR(put(s.attn_norm_b, d.attn_norm_b, C, 1, "attn_norm_b", i));
      KVR_RETURN_IF_ERROR(put(s.mlp_norm_w, d.mlp_norm_w, C, 1, "mlp_norm_w", i));
      KVR_RETURN_IF_ERROR(put(s.mlp_norm_b, d.mlp_norm_b, C, 1, "mlp_norm_b", i));
      KVR_RETURN_IF_ERROR(put(s.wqkv, d.wqkv, E, C, "wqkv", i, sl.qkv));
      KVR_RETURN_IF_ERROR(put(s.bqkv, d.bqkv, E, 1, "bqkv", i, sl.qkv));
      KVR_RETURN_IF_ERROR(put(s.wo, d.wo, C, QD, "wo", i, sl.o));
      KVR_RETURN_IF_ERROR(put(s.bo, d.bo, C, 1, "bo", i));
      KVR_RETURN_IF_ERROR(put(s.w_up, d.w_up, U, C, "w_up", i, sl.up));
      KVR_RETURN_IF_ERROR(put(s.b_up, d.b_up, U, 1, "b_up", i, sl.up));
      KVR_RETURN_IF_ERROR(put(s.w_down, d.w_down, C, F, "w_down", i, sl.down));
      KVR_RETURN_IF_ERROR(put(s.b_down, d.b_down, C, 1, "b_down", i));
    }
    KVR_RETURN_IF_ERROR(put(w.final_norm_w, final_norm_w_, C, 1, "final_norm_w", -1));
    KVR_RETURN_IF_ERROR(put(w.final_norm_b, final_norm_b_, C, 1, "final_norm_b", -1));
    if (lm_head_ != embed_) KVR_RETURN_IF_ERROR(put(w.lm_head, lm_head_, cfg_.vocab_size, C, "lm_head", -1));
    return absl::OkStatus();
  }

  // Random weights from a hash of (seed, tensor, index). A tensor-parallel rank generates each
  // split tensor whole, in the same order and with the same seeds as tp_size == 1, into a scratch
  // buffer and keeps its slice, so its weights are exactly the single GPU's shard.
  absl::Status FillRandom(uint64_t seed) {
    KVR_CU(cudaSetDevice(device_));
    const float a = 0.02f * 1.7320508f;  // uniform with std 0.02
    const size_t C = cfg_.hidden_size, E = cfg_.qkv_dim(), QD = cfg_.q_dim(), F = cfg_.intermediate_size;
    const size_t U = Silu() ? 2 * F : F;
    uint64_t s = seed * 1000;
    auto rnd = [&](void* p, size_t n) { return CudaStatus(K::FillUniform(dt_, p, n, a, ++s, stream_), "fill"); };
    auto one = [&](void* p, size_t n, float v) {
      return p ? CudaStatus(K::FillConst(dt_, p, n, v, stream_), "fill") : absl::OkStatus();
    };
    // Norm weights in [0.5, 1.5] and biases in [-0.1, 0.1], so that a kernel that dropped or
    // misplaced them would show.
    auto norm = [&](void* p, size_t n, float center, float scale) {
      return p ? CudaStatus(K::FillUniform(dt_, p, n, scale, ++s, stream_, center), "fill") : absl::OkStatus();
    };
    // Shapes of the whole model's split weights.
    const ShardSlices sl = Slices();
    const size_t FE = full_.qkv_dim(), FQ = full_.q_dim(), FF = full_.intermediate_size;
    const size_t FU = Silu() ? 2 * FF : FF;
    void* scratch = nullptr;
    if (Tp()) KVR_CU(cudaMallocAsync(&scratch, std::max({FE * C, C * FQ, FU * C, C * FF}) * 2, stream_));
    // A split tensor of the whole model's (rows, cols): generated whole, then its slice kept.
    auto rnd_part = [&](void* p, size_t n, size_t rows, size_t cols, const Slice& part) -> absl::Status {
      if (!Tp()) return rnd(p, n);
      KVR_RETURN_IF_ERROR(rnd(scratch, rows * cols));
      return CopySlice(p, scratch, cols, part, cudaMemcpyDeviceToDevice, "random weight slice");
    };
    absl::Status st = [&]() -> absl::Status {
      KVR_RETURN_IF_ERROR(rnd(embed_, static_cast<size_t>(cfg_.vocab_size) * C));
      for (DevLayer& l : layers_) {
        KVR_RETURN_IF_ERROR(norm(l.attn_norm_w, C, 1.f, 0.5f));
        KVR_RETURN_IF_ERROR(norm(l.attn_norm_b, C, 0.f, 0.1f));
        KVR_RETURN_IF_ERROR(norm(l.mlp_norm_w, C, 1.f, 0.5f));
        KVR_RETURN_IF_ERROR(norm(l.mlp_norm_b, C, 0.f, 0.1f));
        KVR_RETURN_IF_ERROR(rnd_part(l.wqkv, E * C, FE, C, sl.qkv));
        KVR_RETURN_IF_ERROR(one(l.bqkv, E, 0.01f));
        KVR_RETURN_IF_ERROR(rnd_part(l.wo, C * QD, C, FQ, sl.o));
        KVR_RETURN_IF_ERROR(one(l.bo, C, 0.01f));
        KVR_RETURN_IF_ERROR(rnd_part(l.w_up, U * C, FU, C, sl.up));
        KVR_RETURN_IF_ERROR(one(l.b_up, U, 0.01f));
        KVR_RETURN_IF_ERROR(rnd_part(l.w_down, C * F, C, FF, sl.down));
        KVR_RETURN_IF_ERROR(one(l.b_down, C, 0.01f));
      }
      return absl::OkStatus();
    }();
    if (scratch) cudaFreeAsync(scratch, stream_);
    KVR_RETURN_IF_ERROR(st);
    KVR_RETURN_IF_ERROR(norm(final_norm_w_, C, 1.f, 0.5f));
    KVR_RETURN_IF_ERROR(norm(final_norm_b_, C, 0.f, 0.1f));
    if (lm_head_ != embed_) KVR_RETURN_IF_ERROR(rnd(lm_head_, static_cast<size_t>(cfg_.vocab_size) * C));
    KVR_CU(cudaStreamSynchronize(stream_));
    return absl::OkStatus();
  }

  const ModelConfig& config() const override { return cfg_; }
  std::string device_name() const override { return name_; }
  int device() const override { return device_; }
  void* compute_stream() const override { return stream_; }

  absl::Status Synchronize() override {
    KVR_CU(cudaSetDevice(device_));
    KVR_CU(cudaStreamSynchronize(stream_));
    return absl::OkStatus();
  }

  MemoryReport memory() const override {
    MemoryReport r;
    cudaSetDevice(device_);
    r.weights_bytes = arena_bytes_;
    r.workspace_bytes = gemm_ ? gemm_->workspace_bytes() : 0;
    r.workspace_bytes += decode_bytes_;
    cudaMemGetInfo(&r.free_bytes, &r.total_bytes);
    return r;
  }

  // Builds the cuDNN plans of the chunk buckets this model will meet (options), logging progress
  // every 5 s and the total. A failure leaves those shapes to our kernel (never fatal).
  void PrewarmCudnn() {
    int max_N = opt_.cudnn_prewarm_tokens;
    if (max_N == 0) {  // kvrd has no flag for it yet: the environment may ask
      if (const char* e = std::getenv("KVR_CUDNN_PREWARM_TOKENS"); e != nullptr) max_N = std::atoi(e);
    }
    if (max_N < 0) max_N = cfg_.max_position;  // -1: up to the model's context
    if (max_N <= 0) return;
    if (cfg_.sliding_window > 0) {
      KVR_LOG(INFO) << name_ << ": no cuDNN prewarm: the sliding window runs the mma kernel";
      return;
    }
    if (cfg_.max_position > 0) max_N = std::min(max_N, cfg_.max_position);
    const auto grid = K::CudnnAttention::BucketGrid(opt_.cudnn_prewarm_min_chunk, opt_.cudnn_prewarm_max_chunk, max_N);
    KVR_LOG(INFO) << name_ << ": building " << grid.size() << " cuDNN attention plans (chunks of "
                  << opt_.cudnn_prewarm_min_chunk << ".." << opt_.cudnn_prewarm_max_chunk << " queries, up to "
                  << max_N << " keys; ~50 ms each)";
    double last_log = 0;
    const std::string name = name_;
    auto progress = [&last_log, &name](int done, int total, double ms) {
      if (ms - last_log >= 5000 || done == total) {
        last_log = ms;
        KVR_LOG(INFO) << name << ": cuDNN plans " << done << "/" << total << " after " << ms / 1000 << " s";
      }
    };
    K::CudnnAttention::PrewarmReport rep;
    const K::CudnnAttnStatus st = cudnn_attn_->Prewarm(dt_, cfg_.num_q_heads, cfg_.num_kv_heads, cfg_.head_dim,
                                                       grid, progress, &rep);
    KVR_LOG(INFO) << name_ << ": cuDNN prewarm: " << rep.built << " plans built, " << rep.cached << " cached, "
                  << rep.failed << " failed, " << rep.skipped << " skipped (cache full) in " << rep.total_ms / 1000
                  << " s";
    if (!st.ok())
      KVR_LOG(WARNING) << name_ << ": cuDNN prewarm: " << st.message << " (those chunks run the mma kernel)";
  }

  // Rows of a chunk's query and attention-output buffers: T, or T's cuDNN query bucket when
  // cuDNN attention may run (a bucketed plan reads and writes rows [T, bucket)).
  int AttnRows(int T) const {
    return cudnn_attn_ ? std::max(T, K::CudnnAttention::BucketQueries(T)) : T;
  }

  // Device bytes of one chunk's activations for T tokens.
  size_t ChunkBytes(int T) const {
    Carver c(nullptr);
    ChunkBuffers b;
    Carve(c, T, &b);
    return c.size();
  }

  absl::StatusOr<std::unique_ptr<KvCache>> NewKvCache(int capacity) override {
    if (capacity <= 0) return absl::InvalidArgumentError("KV-cache capacity must be positive");
    KVR_CU(cudaSetDevice(device_));
    const size_t bpt = static_cast<size_t>(cfg_.kv_dim()) * 2;
    const size_t bytes = 2ull * cfg_.num_layers * static_cast<size_t>(capacity) * bpt;
    const size_t chunk = ChunkBytes(capacity);
    // The pool keeps freed caches and chunk workspaces mapped (release threshold: unlimited), so
    // that a request of a size seen before allocates without the driver mapping memory (a
    // cudaMalloc and cudaFree per request cost milliseconds, and cudaFree waits for the device;
    // growing the pool by a 16k-token request's cache costs 10-20 ms, docs/benchmarks.md). What
    // the pool holds beyond its live allocations plus this request, and beyond the most it has
    // had to hold at once so far (caches + workspaces), goes back to the device first, where
    // cuBLAS, cuDNN and NCCL allocate. Keeping that peak means that long prompts after short ones
    // do not pay for mapping their memory again.
    auto* pool = static_cast<cudaMemPool_t>(pool_);
    uint64_t used = 0, reserved = 0;
    KVR_CU(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
    KVR_CU(cudaMemPoolTrimTo(pool, std::max<uint64_t>(used + bytes + chunk, pool_peak_)));
    KVR_CU(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved));
    size_t free_b = 0, total_b = 0;
    KVR_CU(cudaMemGetInfo(&free_b, &total_b));
    const size_t avail = free_b + (reserved > used ? reserved - used : 0);  // + mapped, unused
    if (bytes + chunk + opt_.reserve_bytes > avail) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "a context of ", capacity, " tokens does not fit on ", name_, ": KV-cache ", GiB(bytes),
          " + prefill workspace ", GiB(chunk), " + reserve ", GiB(opt_.reserve_bytes), " > ",
          GiB(avail), " free (", GiB(total_b), " total, weights ", GiB(arena_bytes_), ")"));
    }
    std::byte* mem = nullptr;
    if (cudaMallocAsync(reinterpret_cast<void**>(&mem), bytes, stream_) != cudaSuccess) {
      cudaGetLastError();  // fragmented: give back every unused byte and try once more
      KVR_CU(cudaMemPoolTrimTo(pool, 0));
      KVR_CU(cudaMallocAsync(reinterpret_cast<void**>(&mem), bytes, stream_));
    }
    // cuDNN bucketed plans read (masked) rows past a sequence's keys: they must be finite, so
    // with bucketing on the cache starts zeroed (one memset at HBM bandwidth).
    const bool zero = cudnn_attn_ != nullptr && cudnn_attn_->bucketing();
    cudaError_t e = zero ? cudaMemsetAsync(mem, 0, bytes, stream_) : cudaSuccess;
    // Waited for: other streams (a transport's, other devices' copies) may write the cache next.
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream_);
    if (e != cudaSuccess) {
      cudaFreeAsync(mem, stream_);
      return CudaStatus(e, zero ? "KV-cache zeroing" : "KV-cache allocation");
    }
    // Tensor maps for the tensor-core decode kernel (head sizes 64 and 128, which it takes).
    std::vector<CUtensorMap> maps;
    if (cfg_.head_dim == 64 || cfg_.head_dim == 128) {
      maps.resize(2 * static_cast<size_t>(cfg_.num_layers));
      const size_t per = static_cast<size_t>(capacity) * bpt;
      for (int l = 0; l < cfg_.num_layers && e == cudaSuccess; ++l)
        for (int kv = 0; kv < 2 && e == cudaSuccess; ++kv)
          e = K::EncodeKvTensorMap(dt_, mem + (2 * l + kv) * per, capacity, cfg_.num_kv_heads, cfg_.head_dim,
                                   &maps[2 * l + kv]);
      if (e != cudaSuccess) {
        cudaFreeAsync(mem, stream_);
        return CudaStatus(e, "KV-cache tensor maps");
      }
    }
    pool_peak_ = std::max<uint64_t>(pool_peak_, used + bytes + chunk);
    return std::unique_ptr<KvCache>(new CudaKvCache(this, device_, stream_, capacity, cfg_.num_layers, bpt, mem,
                                                    zero, std::move(maps)));
  }

  absl::StatusOr<std::unique_ptr<ChunkState>> BeginChunk(absl::Span<const int32_t> tokens, int start,
                                                         KvCache& cache_in) override {
    KVR_ASSIGN_OR_RETURN(CudaKvCache * cache, Own(cache_in));
    const int T = static_cast<int>(tokens.size());
    if (T <= 0) return absl::InvalidArgumentError("empty chunk");
    if (start < 0 || start + T > cache->capacity())
      return absl::OutOfRangeError(absl::StrCat("chunk [", start, ", ", start + T,
                                                ") outside the cache capacity ", cache->capacity()));
    for (int32_t t : tokens)
      if (t < 0 || t >= cfg_.vocab_size)
        return absl::InvalidArgumentError(absl::StrCat("token id ", t, " outside [0, ", cfg_.vocab_size, ")"));
    KVR_CU(cudaSetDevice(device_));
    auto chunk = std::make_unique<CudaChunk>(device_, stream_);
    chunk->cache = cache;
    chunk->start = start;
    chunk->n = T;
    const size_t bytes = ChunkBytes(T);
    if (cudaMallocAsync(&chunk->mem, bytes, stream_) != cudaSuccess) {
      cudaGetLastError();
      chunk->mem = nullptr;
      return absl::ResourceExhaustedError(absl::StrCat("prefill workspace of ", GiB(bytes), " for ", T,
                                                       " tokens does not fit on ", name_));
    }
    Carver c(static_cast<std::byte*>(chunk->mem));
    Carve(c, T, &chunk->b);
    KVR_CU(cudaMemcpyAsync(chunk->b.ids, tokens.data(), T * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    KVR_CU(K::EmbeddingLookup(dt_, embed_, chunk->b.ids, T, cfg_.hidden_size, cfg_.vocab_size, chunk->b.x, stream_));
    return std::unique_ptr<ChunkState>(std::move(chunk));
  }

  absl::Status LayerQkv(ChunkState& state, int l) override {
    auto& ch = static_cast<CudaChunk&>(state);
    if (l < 0 || l >= cfg_.num_layers) return absl::OutOfRangeError("layer index");
    KVR_CU(cudaSetDevice(device_));
    const DevLayer& w = layers_[l];
    const KvLayerView kv = ch.cache->layer(l);
    K::RopeAppendParams rp;
    rp.pos0 = ch.start;
    rp.k_cache = kv.k;
    rp.v_cache = kv.v;
    return QkvBlock(w, ch.n, ch.b.x, ch.b.h, ch.b.qkv, ch.b.q, rp);
  }

  absl::Status LayerAttnMlp(ChunkState& state, int l) override {
    auto& ch = static_cast<CudaChunk&>(state);
    if (l < 0 || l >= cfg_.num_layers) return absl::OutOfRangeError("layer index");
    KVR_CU(cudaSetDevice(device_));
    const KvLayerView kv = ch.cache->layer(l);
    K::PrefillAttnParams ap;
    ap.q = ch.b.q;
    ap.k = kv.k;
    ap.v = kv.v;
    ap.out = ch.b.attn;
    ap.n = ch.n;
    ap.s = ch.start;
    ap.Hq = cfg_.num_q_heads;
    ap.Hkv = cfg_.num_kv_heads;
    ap.D = cfg_.head_dim;
    ap.window = cfg_.sliding_window;
    ap.scale = 1.f / std::sqrt(static_cast<float>(cfg_.head_dim));
    ap.variant = opt_.attn_variant;
    ap.q_rows = AttnRows(ch.n);  // Carve gives q and attn this many rows
    ap.kv_rows = ch.cache->capacity();
    ap.kv_tail_finite = ch.cache->zeroed();
    KVR_CU(K::PrefillAttentionWith(attn_impl_, cudnn_attn_.get(), dt_, ap, stream_));
    return OutMlpBlock(layers_[l], ch.n, ch.b.x, ch.b.h, ch.b.attn, ch.b.up, ch.b.act, ch.b.part);
  }

  absl::Status FinishChunk(ChunkState& state, std::vector<float>* last_logits) override {
    auto& ch = static_cast<CudaChunk&>(state);
    KVR_CU(cudaSetDevice(device_));
    const float* xlast = ch.b.x + static_cast<size_t>(ch.n - 1) * cfg_.hidden_size;
    KVR_RETURN_IF_ERROR(Head(1, xlast, ch.b.h, ch.b.logits));
    last_logits->resize(cfg_.vocab_size);
    KVR_CU(cudaMemcpyAsync(last_logits->data(), ch.b.logits, cfg_.vocab_size * sizeof(float),
                           cudaMemcpyDeviceToHost, stream_));
    KVR_CU(cudaStreamSynchronize(stream_));
    return absl::OkStatus();
  }

  absl::Status Decode(absl::Span<const DecodeSlot> batch, absl::Span<const float>* logits) override {
    const int B = static_cast<int>(batch.size());
    *logits = {};
    if (B == 0) {
      return absl::OkStatus();
    }
    KVR_CU(cudaSetDevice(device_));
    KVR_RETURN_IF_ERROR(EnsureDecode(B));
    // Host tables: ids (B), pos (B), len (B), k / v base per (layer, sequence).
    const int L = cfg_.num_layers;
    auto* ids = reinterpret_cast<int32_t*>(host_tab_);
    int32_t* pos = ids + B;
    int32_t* len = pos + B;
    auto** kt = reinterpret_cast<void**>(host_tab_ + TabPtrOffset(B));
    void** vt = kt + static_cast<size_t>(L) * B;
    auto* km = reinterpret_cast<CUtensorMap*>(host_tab_ + TabMapOffset(B));
    CUtensorMap* vm = km + static_cast<size_t>(L) * B;
    int max_len = 0;
    for (const DecodeSlot& s : batch) max_len = std::max(max_len, s.pos + 1);
    const K::DecodeAttnPlan plan = DecodePlan(B, max_len);
    // Only the tensor-core kernel reads the tensor maps (8 KB a sequence for 32 layers): the
    // table carries them only for its plans.
    const bool maps = plan.kernel == K::DecodeKernel::kMma;
    for (int b = 0; b < B; ++b) {
      const DecodeSlot& s = batch[b];
      if (s.cache == nullptr) return absl::InvalidArgumentError("decode slot without a cache");
      KVR_ASSIGN_OR_RETURN(CudaKvCache * c, Own(*s.cache));
      if (s.pos < 0 || s.pos >= c->capacity())
        return absl::OutOfRangeError(absl::StrCat("decode position ", s.pos, " outside capacity ", c->capacity()));
      if (s.token < 0 || s.token >= cfg_.vocab_size)
        return absl::InvalidArgumentError(absl::StrCat("token id ", s.token, " outside the vocabulary"));
      ids[b] = s.token;
      pos[b] = s.pos;
      len[b] = s.pos + 1;
      for (int l = 0; l < L; ++l) {
        const KvLayerView v = c->layer(l);
        kt[static_cast<size_t>(l) * B + b] = v.k;
        vt[static_cast<size_t>(l) * B + b] = v.v;
        if (maps && c->has_maps()) {
          km[static_cast<size_t>(l) * B + b] = c->map(l, 0);
          vm[static_cast<size_t>(l) * B + b] = c->map(l, 1);
        }
      }
    }
    if (timing_) KVR_CU(cudaEventRecord(ev_[0], stream_));
    KVR_CU(cudaMemcpyAsync(dev_tab_, host_tab_, maps ? TabBytes(B) : TabMapOffset(B),
                           cudaMemcpyHostToDevice, stream_));
    if (timing_) KVR_CU(cudaEventRecord(ev_[1], stream_));
    if (opt_.decode_graphs) {
      // One graph per (batch size, attention plan): the plan changes with the longest cache.
      const GraphKey key{B, static_cast<int>(plan.kernel), plan.splits};
      auto it = graphs_.find(key);
      if (it == graphs_.end() && warmed_.count(key)) {
        cudaGraph_t graph = nullptr;
        KVR_CU(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
        absl::Status st = DecodeStep(B, plan);
        cudaError_t e = cudaStreamEndCapture(stream_, &graph);
        KVR_RETURN_IF_ERROR(st);
        KVR_CU(e);
        cudaGraphExec_t exec = nullptr;
        e = cudaGraphInstantiate(&exec, graph, 0);
        cudaGraphDestroy(graph);
        KVR_CU(e);
        it = graphs_.emplace(key, exec).first;
      }
      if (it != graphs_.end()) {
        KVR_CU(cudaGraphLaunch(it->second, stream_));
      } else {
        KVR_RETURN_IF_ERROR(DecodeStep(B, plan));
        warmed_[key] = true;
      }
    } else {
      KVR_RETURN_IF_ERROR(DecodeStep(B, plan));
    }
    const size_t n = static_cast<size_t>(B) * cfg_.vocab_size;
    if (timing_) KVR_CU(cudaEventRecord(ev_[2], stream_));
    KVR_CU(cudaMemcpyAsync(host_logits_, dec_.logits, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    if (timing_) KVR_CU(cudaEventRecord(ev_[3], stream_));
    KVR_CU(cudaStreamSynchronize(stream_));
    if (timing_) {
      float ms[3];
      for (int i = 0; i < 3; ++i) KVR_CU(cudaEventElapsedTime(&ms[i], ev_[i], ev_[i + 1]));
      last_times_ = CudaDecodeTimes{ms[0], ms[1], ms[2]};
      timed_ = true;
    }
    *logits = absl::MakeConstSpan(host_logits_, n);
    return absl::OkStatus();
  }

  // SetCudaDecodeTiming / LastCudaDecodeTimes.
  absl::Status SetTiming(bool on) {
    KVR_CU(cudaSetDevice(device_));
    for (cudaEvent_t& e : ev_)
      if (on && e == nullptr) KVR_CU(cudaEventCreate(&e));
    timing_ = on;
    return absl::OkStatus();
  }
  absl::StatusOr<CudaDecodeTimes> LastTimes() const {
    if (!timed_) return absl::FailedPreconditionError("no decode step was timed (SetCudaDecodeTiming)");
    return last_times_;
  }

  absl::Status ReadKv(KvCache& cache_in, int layer, int a, int b, std::vector<float>* k,
                      std::vector<float>* v) override {
    KVR_ASSIGN_OR_RETURN(CudaKvCache * cache, Own(cache_in));
    if (layer < 0 || layer >= cfg_.num_layers || a < 0 || b > cache->capacity() || a > b)
      return absl::OutOfRangeError("ReadKv range");
    KVR_CU(cudaSetDevice(device_));
    KVR_CU(cudaStreamSynchronize(stream_));
    const KvLayerView view = cache->layer(layer);
    const size_t n = static_cast<size_t>(b - a) * cfg_.kv_dim();
    std::vector<uint16_t> hk(n), hv(n);
    KVR_CU(cudaMemcpy(hk.data(), view.k + a * view.bytes_per_token, n * 2, cudaMemcpyDeviceToHost));
    KVR_CU(cudaMemcpy(hv.data(), view.v + a * view.bytes_per_token, n * 2, cudaMemcpyDeviceToHost));
    k->resize(n);
    v->resize(n);
    for (size_t i = 0; i < n; ++i) {
      (*k)[i] = opt_.dtype == DType::kBF16 ? Bf16ToFloat(hk[i]) : F16ToFloat(hk[i]);
      (*v)[i] = opt_.dtype == DType::kBF16 ? Bf16ToFloat(hv[i]) : F16ToFloat(hv[i]);
    }
    return absl::OkStatus();
  }

 private:
  bool Silu() const { return cfg_.mlp == MlpKind::kSiluGate; }
  bool Tp() const { return opt_.tp_size > 1; }

  // What a tensor-parallel rank keeps of each split weight of the whole model (all whole when
  // tp_size == 1). Biases follow their weight's rows; bo and b_down are whole (added after the
  // all-reduce by every rank).
  struct ShardSlices {
    Slice qkv, o, up, down;
  };
  ShardSlices Slices() const {
    ShardSlices s;
    if (!Tp()) return s;
    const size_t D = full_.head_dim, Hq = full_.num_q_heads, Hkv = full_.num_kv_heads;
    const size_t C = full_.hidden_size, F = full_.intermediate_size;
    const size_t q0 = shard_.q_head0 * D, nq = shard_.q_heads * D;
    const size_t kv0 = shard_.kv_head0 * D, nkv = shard_.kv_heads * D;
    const size_t f0 = shard_.ff0, nf = shard_.ff;
    s.qkv.rows = {{q0, nq}, {Hq * D + kv0, nkv}, {(Hq + Hkv) * D + kv0, nkv}};  // [q; k; v] of its heads
    s.o.rows = {{0, C}};  // input columns of its query heads
    s.o.col0 = q0;
    s.o.cols = nq;
    if (Silu()) {
      s.up.rows = {{f0, nf}, {F + f0, nf}};  // [gate; up] of its features
    } else {
      s.up.rows = {{f0, nf}};
    }
    s.down.rows = {{0, C}};  // input columns of its features
    s.down.col0 = f0;
    s.down.cols = nf;
    return s;
  }

  // Copies `part` of the row-major (rows, src_cols) matrix of 2-byte elements at `src` (host or
  // device, as `kind` says) to `dst`, packed; waits for the copies.
  absl::Status CopySlice(void* dst, const void* src, size_t src_cols, const Slice& part,
                         cudaMemcpyKind kind, const char* what) {
    const size_t width = part.cols ? part.cols : src_cols;
    auto* d = static_cast<std::byte*>(dst);
    const auto* s = static_cast<const std::byte*>(src);
    for (const auto& [r0, nr] : part.rows) {
      KVR_RETURN_IF_ERROR(CudaStatus(cudaMemcpy2DAsync(d, width * 2, s + (r0 * src_cols + part.col0) * 2,
                                                       src_cols * 2, width * 2, nr, kind, stream_),
                                     what));
      d += nr * width * 2;
    }
    return CudaStatus(cudaStreamSynchronize(stream_), what);
  }

  // Sums `part` (n, C) T over the tensor-parallel ranks in place, then x (n, C) fp32 += part.
  absl::Status AllReduceAdd(void* part, int n, float* x) {
    const size_t C = cfg_.hidden_size;
    const ncclDataType_t type = opt_.dtype == DType::kF16 ? ncclFloat16 : ncclBfloat16;
    const ncclResult_t r = ncclAllReduce(part, part, static_cast<size_t>(n) * C, type, ncclSum,
                                         static_cast<ncclComm_t>(opt_.tp_comm), stream_);
    if (r != ncclSuccess)
      return absl::InternalError(absl::StrCat("ncclAllReduce (tensor-parallel rank ", opt_.tp_rank, " of ",
                                              opt_.tp_size, "): ", ncclGetErrorString(r)));
    // x += part, as a "bias" of rows*C columns on one row (in row blocks, so that fits an int).
    const int rows_per = std::max(1, static_cast<int>((size_t{1} << 30) / C));
    for (int r0 = 0; r0 < n; r0 += rows_per) {
      const int rows = std::min(rows_per, n - r0);
      KVR_CU(K::AddBiasF32(dt_, x + static_cast<size_t>(r0) * C,
                           static_cast<const std::byte*>(part) + static_cast<size_t>(r0) * C * 2, 1,
                           static_cast<int>(rows * C), stream_));
    }
    return absl::OkStatus();
  }
  int U() const { return Silu() ? 2 * cfg_.intermediate_size : cfg_.intermediate_size; }

  absl::StatusOr<CudaKvCache*> Own(KvCache& c) {
    auto* cc = dynamic_cast<CudaKvCache*>(&c);
    if (cc == nullptr || cc->owner() != this)
      return absl::InvalidArgumentError("KV-cache was not made by this CUDA runner");
    return cc;
  }

  void Carve(Carver& c, int T, ChunkBuffers* b) const {
    const size_t t = T, C = cfg_.hidden_size;
    b->ids = c.Take<int32_t>(t);
    b->x = c.Take<float>(t * C);
    b->h = c.Take<void>(t * C, 2);
    b->qkv = c.Take<void>(t * cfg_.qkv_dim(), 2);
    const size_t ta = AttnRows(T);  // >= t: room for a cuDNN query bucket's padded rows
    b->q = c.Take<void>(ta * cfg_.q_dim(), 2);
    b->attn = c.Take<void>(ta * cfg_.q_dim(), 2);
    b->up = c.Take<void>(t * U(), 2);
    b->act = Silu() ? c.Take<void>(t * cfg_.intermediate_size, 2) : b->up;
    b->logits = c.Take<float>(static_cast<size_t>(cfg_.vocab_size) * std::max(T, 1));
    if (Tp()) b->part = c.Take<void>(t * C, 2);
  }

  absl::Status Norm(const float* x, const void* w, const void* bias, int n, void* out) {
    if (cfg_.norm == NormKind::kLayerNorm)
      return CudaStatus(K::LayerNorm(dt_, x, w, bias, cfg_.norm_eps, n, cfg_.hidden_size, out, stream_), "layernorm");
    return CudaStatus(K::RmsNorm(dt_, x, w, cfg_.norm_eps, n, cfg_.hidden_size, out, stream_), "rmsnorm");
  }

  // Whether a decode step leaves out kernels of this kind (KVR_DECODE_SKIP; never in prefill).
  bool Skip(const char* kind) const { return in_decode_ && skip_.contains(kind); }

  // h = norm(x); qkv = h Wqkv^T (+b).
  absl::Status QkvProject(const DevLayer& w, int n, const float* x, void* h, void* qkv) {
    const int C = cfg_.hidden_size, E = cfg_.qkv_dim();
    if (!Skip("norm")) KVR_RETURN_IF_ERROR(Norm(x, w.attn_norm_w, w.attn_norm_b, n, h));
    if (!Skip("qkv")) KVR_BLAS(gemm_->Linear(dt_, h, w.wqkv, n, C, E, qkv, K::GemmOut::kSame, 0.f, stream_));
    if (w.bqkv) KVR_CU(K::AddBias(dt_, qkv, w.bqkv, n, E, stream_));
    return absl::OkStatus();
  }

  // QkvProject; rotary; K, V -> cache (rp carries positions and cache).
  absl::Status QkvBlock(const DevLayer& w, int n, const float* x, void* h, void* qkv, void* q,
                        K::RopeAppendParams rp) {
    KVR_RETURN_IF_ERROR(QkvProject(w, n, x, h, qkv));
    rp.qkv = qkv;
    rp.n = n;
    rp.Hq = cfg_.num_q_heads;
    rp.Hkv = cfg_.num_kv_heads;
    rp.D = cfg_.head_dim;
    rp.q_out = q;
    rp.inv_freq = inv_freq_;
    KVR_CU(K::RopeAppend(dt_, rp, stream_));
    return absl::OkStatus();
  }

  // x += attn Wo^T (+b); then the MLP (on norm(x), or on h for parallel attention + MLP).
  // Tensor parallelism: each output projection (O, down) writes the rank's partial product to
  // `part` in T, which is summed over the ranks and then added to x; the bias after the sum.
  absl::Status OutMlpBlock(const DevLayer& w, int n, float* x, void* h, const void* attn, void* up,
                           void* act, void* part) {
    const int C = cfg_.hidden_size, QD = cfg_.q_dim(), F = cfg_.intermediate_size;
    if (Tp()) {
      KVR_BLAS(gemm_->Linear(dt_, attn, w.wo, n, QD, C, part, K::GemmOut::kSame, 0.f, stream_));
      KVR_RETURN_IF_ERROR(AllReduceAdd(part, n, x));
    } else {
      if (!Skip("o")) KVR_BLAS(gemm_->Linear(dt_, attn, w.wo, n, QD, C, x, K::GemmOut::kF32, 1.f, stream_));
    }
    if (w.bo) KVR_CU(K::AddBiasF32(dt_, x, w.bo, n, C, stream_));
    if (!cfg_.parallel_attn_mlp && !Skip("norm")) KVR_RETURN_IF_ERROR(Norm(x, w.mlp_norm_w, w.mlp_norm_b, n, h));
    if (!Skip("up")) KVR_BLAS(gemm_->Linear(dt_, h, w.w_up, n, C, U(), up, K::GemmOut::kSame, 0.f, stream_));
    if (w.b_up) KVR_CU(K::AddBias(dt_, up, w.b_up, n, U(), stream_));
    if (Silu()) {
      if (!Skip("silu")) KVR_CU(K::SiluGate(dt_, up, n, F, act, stream_));
    } else {
      KVR_CU(K::GeluInPlace(dt_, up, n, F, stream_));
      act = up;
    }
    if (Tp()) {
      KVR_BLAS(gemm_->Linear(dt_, act, w.w_down, n, F, C, part, K::GemmOut::kSame, 0.f, stream_));
      KVR_RETURN_IF_ERROR(AllReduceAdd(part, n, x));
    } else {
      if (!Skip("down")) KVR_BLAS(gemm_->Linear(dt_, act, w.w_down, n, F, C, x, K::GemmOut::kF32, 1.f, stream_));
    }
    if (w.b_down) KVR_CU(K::AddBiasF32(dt_, x, w.b_down, n, C, stream_));
    return absl::OkStatus();
  }

  // logits (n, V) fp32 = final_norm(x rows) lm_head^T.
  absl::Status Head(int n, const float* x, void* h, float* logits) {
    KVR_RETURN_IF_ERROR(Norm(x, final_norm_w_, final_norm_b_, n, h));
    KVR_BLAS(gemm_->Linear(dt_, h, lm_head_, n, cfg_.hidden_size, cfg_.vocab_size, logits,
                           K::GemmOut::kF32, 0.f, stream_));
    return absl::OkStatus();
  }

  // ---- decode ----
  // The decode-attention plan (kernel, splits) for B <= dec_cap_ sequences whose longest cache
  // holds max_len keys (planned by EnsureDecode), and the most split rows (B x splits) any plan
  // for B needs.
  const K::DecodeAttnPlan& DecodePlan(int B, int max_len) const {
    return plans_[B][K::DecodeLengthClass(max_len)];
  }
  size_t PartRows(int B) const {
    int most = 1;
    for (const K::DecodeAttnPlan& p : plans_[B]) most = std::max(most, p.splits);
    return static_cast<size_t>(B) * most;
  }
  // The decode table (host_tab_, copied to dev_tab_ each step): ids, pos, len (B int32 each); K
  // and V cache pointers [L][B] each; K and V tensor maps [L][B] each (filled and copied only for
  // steps whose plan is the tensor-core kernel, the one that reads them).
  size_t TabPtrOffset(int B) const { return AlignUp(3ull * B * sizeof(int32_t)); }
  size_t TabMapOffset(int B) const { return AlignUp(TabPtrOffset(B) + 2ull * cfg_.num_layers * B * sizeof(void*)); }
  size_t TabBytes(int B) const { return TabMapOffset(B) + 2ull * cfg_.num_layers * B * sizeof(CUtensorMap); }

  struct DecodeBuffers {
    float* x = nullptr;
    void *h = nullptr, *qkv = nullptr, *q = nullptr, *attn = nullptr, *up = nullptr, *act = nullptr;
    float *logits = nullptr, *o_part = nullptr, *lse_part = nullptr;
    void* part = nullptr;  // (B, C) tensor parallelism only
  };

  void FreeDecode() {
    if (dec_mem_) cudaFree(dec_mem_);
    if (dec_counters_) cudaFree(dec_counters_);
    dec_counters_ = nullptr;
    if (dev_tab_) cudaFree(dev_tab_);
    if (host_tab_) cudaFreeHost(host_tab_);
    if (host_logits_) cudaFreeHost(host_logits_);
    host_logits_ = nullptr;
    dec_mem_ = nullptr;
    dev_tab_ = nullptr;
    host_tab_ = nullptr;
    decode_bytes_ = 0;
  }

  absl::Status EnsureDecode(int B) {
    if (B <= dec_cap_) {
      if (B != dec_b_) SetDecodeViews(B);
      return absl::OkStatus();
    }
    KVR_CU(cudaStreamSynchronize(stream_));
    for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g);
    graphs_.clear();
    warmed_.clear();
    FreeDecode();
    const int cap = std::max(B, 8);
    plans_.assign(cap + 1, {});
    for (int b = 1; b <= cap; ++b)
      for (int c = 0; c < K::kDecodeLengthClasses; ++c)
        plans_[b][c] = K::PlanDecodeAttention(dt_, b, cfg_.num_q_heads, cfg_.num_kv_heads, cfg_.head_dim, num_sms_, c);
    size_t part_rows = 0;
    for (int b = 1; b <= cap; ++b) part_rows = std::max(part_rows, PartRows(b));
    Carver c(nullptr);
    DecodeBuffers tmp;
    CarveDecode(c, cap, &tmp, part_rows);
    KVR_CU(cudaMalloc(&dec_mem_, c.size()));
    // Decode-attention merge counters (cap, Hq: at least a counter per query group): zero between
    // steps, whatever B a step has.
    KVR_CU(cudaMalloc(&dec_counters_, sizeof(int) * cap * cfg_.num_q_heads));
    KVR_CU(cudaMemset(dec_counters_, 0, sizeof(int) * cap * cfg_.num_q_heads));
    KVR_CU(cudaMalloc(&dev_tab_, TabBytes(cap)));
    KVR_CU(cudaMallocHost(&host_tab_, TabBytes(cap)));
    KVR_CU(cudaMallocHost(&host_logits_, sizeof(float) * cap * cfg_.vocab_size));
    decode_bytes_ = c.size() + TabBytes(cap) + sizeof(int) * cap * cfg_.num_q_heads;
    dec_cap_ = cap;
    SetDecodeViews(B);
    return absl::OkStatus();
  }

  // part_rows = PartRows(B) for views (whatever plan a step of B runs); for the allocation, the
  // largest PartRows over B <= cap (the split count shrinks as B grows, not always in proportion).
  void CarveDecode(Carver& c, int B, DecodeBuffers* d, size_t part_rows = 0) const {
    const size_t b = B, C = cfg_.hidden_size;
    if (part_rows == 0) part_rows = PartRows(B);
    d->x = c.Take<float>(b * C);
    d->h = c.Take<void>(b * C, 2);
    d->qkv = c.Take<void>(b * cfg_.qkv_dim(), 2);
    d->q = c.Take<void>(b * cfg_.q_dim(), 2);
    d->attn = c.Take<void>(b * cfg_.q_dim(), 2);
    d->up = c.Take<void>(b * U(), 2);
    d->act = c.Take<void>(b * cfg_.intermediate_size, 2);
    d->logits = c.Take<float>(b * cfg_.vocab_size);
    d->o_part = c.Take<float>(part_rows * cfg_.num_q_heads * cfg_.head_dim);
    d->lse_part = c.Take<float>(part_rows * cfg_.num_q_heads);
    if (Tp()) d->part = c.Take<void>(b * C, 2);
  }

  // Views of the decode buffers for batch B (split rows depend on B).
  void SetDecodeViews(int B) {
    Carver c(static_cast<std::byte*>(dec_mem_));
    CarveDecode(c, B, &dec_);
    dec_b_ = B;
  }

  // Rotary embedding and cache append inside decode attention (DecodeAttnParams::qkv): one
  // kernel less per layer. On unless KVR_DECODE_FUSE=0 (a knob for measuring what it buys).
  static bool FuseDecodeFromEnv() {
    const char* e = std::getenv("KVR_DECODE_FUSE");
    return !(e != nullptr && e[0] == '0');
  }

  // KVR_DECODE_SKIP=attn,qkv,o,up,down,norm,silu (a knob for measuring only): decode steps leave
  // out the kernels of those kinds, so that the difference in ITL is what each kind costs inside
  // the captured step (docs/benchmarks.md, session 8). The tokens are then wrong: says so.
  static absl::flat_hash_set<std::string> DecodeSkipFromEnv() {
    absl::flat_hash_set<std::string> kinds;
    const char* e = std::getenv("KVR_DECODE_SKIP");
    if (e == nullptr || *e == '\0') return kinds;
    for (absl::string_view k : absl::StrSplit(e, ',', absl::SkipEmpty())) kinds.insert(std::string(k));
    KVR_LOG(WARNING) << "KVR_DECODE_SKIP=" << e << ": decode steps leave out these kernels, for "
                     << "timing only; every generated token is wrong";
    return kinds;
  }

  // One decode step for the B sequences described by the device tables.
  absl::Status DecodeStep(int B, const K::DecodeAttnPlan& plan) {
    in_decode_ = true;
    absl::Status st = DecodeLayers(B, plan);
    in_decode_ = false;
    return st;
  }
  absl::Status DecodeLayers(int B, const K::DecodeAttnPlan& plan) {
    const int L = cfg_.num_layers, C = cfg_.hidden_size;
    auto* dids = reinterpret_cast<int32_t*>(dev_tab_);
    int32_t* dpos = dids + B;
    int32_t* dlen = dpos + B;
    auto** dkt = reinterpret_cast<void**>(static_cast<std::byte*>(dev_tab_) + TabPtrOffset(B));
    void** dvt = dkt + static_cast<size_t>(L) * B;
    auto* dkm = reinterpret_cast<const CUtensorMap*>(static_cast<std::byte*>(dev_tab_) + TabMapOffset(B));
    const CUtensorMap* dvm = dkm + static_cast<size_t>(L) * B;
    KVR_CU(K::EmbeddingLookup(dt_, embed_, dids, B, C, cfg_.vocab_size, dec_.x, stream_));
    for (int l = 0; l < L; ++l) {
      const DevLayer& w = layers_[l];
      K::RopeAppendParams rp;
      rp.pos = dpos;
      rp.k_table = dkt + static_cast<size_t>(l) * B;
      rp.v_table = dvt + static_cast<size_t>(l) * B;
      K::DecodeAttnParams ap;
      if (fuse_decode_) {  // rotary + append inside the attention kernel
        KVR_RETURN_IF_ERROR(QkvProject(w, B, dec_.x, dec_.h, dec_.qkv));
        ap.qkv = dec_.qkv;
        ap.inv_freq = inv_freq_;
        ap.k_out = rp.k_table;
        ap.v_out = rp.v_table;
      } else {
        KVR_RETURN_IF_ERROR(QkvBlock(w, B, dec_.x, dec_.h, dec_.qkv, dec_.q, rp));
      }
      ap.q = dec_.q;
      ap.k_table = const_cast<const void* const*>(rp.k_table);
      ap.v_table = const_cast<const void* const*>(rp.v_table);
      ap.k_maps = dkm + static_cast<size_t>(l) * B;
      ap.v_maps = dvm + static_cast<size_t>(l) * B;
      ap.len = dlen;
      ap.out = dec_.attn;
      ap.o_part = dec_.o_part;
      ap.lse_part = dec_.lse_part;
      ap.counters = dec_counters_;
      ap.B = B;
      ap.Hq = cfg_.num_q_heads;
      ap.Hkv = cfg_.num_kv_heads;
      ap.D = cfg_.head_dim;
      ap.splits = plan.splits;
      ap.kernel = plan.kernel;
      ap.window = cfg_.sliding_window;
      ap.scale = 1.f / std::sqrt(static_cast<float>(cfg_.head_dim));
      if (!Skip("attn")) KVR_CU(K::DecodeAttention(dt_, ap, stream_));
      KVR_RETURN_IF_ERROR(OutMlpBlock(w, B, dec_.x, dec_.h, dec_.attn, dec_.up, dec_.act, dec_.part));
    }
    return Head(B, dec_.x, dec_.h, dec_.logits);
  }

  ModelConfig cfg_;   // the model this runner computes: the whole, or a tensor-parallel shard
  ModelConfig full_;  // the whole model
  TensorParallelShard shard_;
  int device_;
  CudaRunnerOptions opt_;
  K::DType dt_;
  std::string name_;
  int num_sms_ = 0;
  cudaStream_t stream_ = nullptr;
  void* pool_ = nullptr;
  uint64_t pool_peak_ = 0;  // most pool bytes a NewKvCache has needed: live + new cache + workspace
  std::unique_ptr<K::Gemm> gemm_;
  K::AttnImpl attn_impl_ = K::AttnImpl::kMma;
  std::unique_ptr<K::CudnnAttention> cudnn_attn_;  // null unless attn_impl is cudnn or auto
  float* inv_freq_ = nullptr;
  void* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  void *embed_ = nullptr, *final_norm_w_ = nullptr, *final_norm_b_ = nullptr, *lm_head_ = nullptr;
  std::vector<DevLayer> layers_;
  // decode
  void* dec_mem_ = nullptr;
  int* dec_counters_ = nullptr;
  void* dev_tab_ = nullptr;
  std::byte* host_tab_ = nullptr;
  // Pinned (cap, V): the logits of the last Decode, which its caller reads (ModelRunner::Decode).
  // Pageable memory took 56 us for Llama-3-8B's 513 KB, pinned 18 (docs/benchmarks.md, session 8).
  float* host_logits_ = nullptr;
  size_t decode_bytes_ = 0;
  int dec_cap_ = 0, dec_b_ = 0;
  // Decode timing (SetCudaDecodeTiming): events before the table, the kernels, the logits, and after.
  bool timing_ = false, timed_ = false;
  cudaEvent_t ev_[4] = {};
  CudaDecodeTimes last_times_;
  DecodeBuffers dec_;
  bool fuse_decode_;                       // FuseDecodeFromEnv
  absl::flat_hash_set<std::string> skip_;  // DecodeSkipFromEnv
  bool in_decode_ = false;                 // inside DecodeStep: skip_ applies
  // Captured decode steps by (batch size, attention kernel, splits), and the keys whose step has
  // run once eagerly (a graph is captured on the second step of a key).
  using GraphKey = std::tuple<int, int, int>;
  // plans_[B][length class]: the decode-attention plans for B = 1..dec_cap_ (EnsureDecode).
  std::vector<std::array<K::DecodeAttnPlan, K::kDecodeLengthClasses>> plans_;
  std::map<GraphKey, cudaGraphExec_t> graphs_;
  std::map<GraphKey, bool> warmed_;
};

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<ModelRunner>> MakeCudaRunner(const ModelFolder& folder,
                                                            const ModelWeights& weights, int device,
                                                            const CudaRunnerOptions& options) {
  return MakeCudaRunner(folder.config(), weights, device, options);
}

absl::StatusOr<std::unique_ptr<ModelRunner>> MakeCudaRunner(const ModelConfig& config,
                                                            const ModelWeights& weights, int device,
                                                            const CudaRunnerOptions& options) {
  auto r = std::make_unique<CudaRunner>(config, device, options);
  KVR_RETURN_IF_ERROR(r->Init());
  KVR_RETURN_IF_ERROR(r->Upload(weights));
  const MemoryReport m = r->memory();
  KVR_LOG(INFO) << r->device_name() << ": " << config.Summary() << "; weights "
                << GiB(m.weights_bytes) << ", workspace " << GiB(m.workspace_bytes) << ", "
                << GiB(m.free_bytes) << " free of " << GiB(m.total_bytes);
  return std::unique_ptr<ModelRunner>(std::move(r));
}

absl::StatusOr<std::unique_ptr<ModelRunner>> MakeRandomCudaRunner(const ModelConfig& config,
                                                                  int device,
                                                                  const CudaRunnerOptions& options,
                                                                  uint64_t seed) {
  auto r = std::make_unique<CudaRunner>(config, device, options);
  KVR_RETURN_IF_ERROR(r->Init());
  KVR_RETURN_IF_ERROR(r->FillRandom(seed));
  return std::unique_ptr<ModelRunner>(std::move(r));
}

absl::Status SetCudaDecodeTiming(ModelRunner& runner, bool on) {
  auto* r = dynamic_cast<CudaRunner*>(&runner);
  if (r == nullptr) return absl::InvalidArgumentError("decode timing: not a CUDA runner");
  return r->SetTiming(on);
}

absl::StatusOr<CudaDecodeTimes> LastCudaDecodeTimes(const ModelRunner& runner) {
  const auto* r = dynamic_cast<const CudaRunner*>(&runner);
  if (r == nullptr) return absl::InvalidArgumentError("decode timing: not a CUDA runner");
  return r->LastTimes();
}

}  // namespace kvr
