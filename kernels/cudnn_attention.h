// Prefill attention through cuDNN's fused (flash) attention, built with the cuDNN 9 backend graph
// API, and the selector between it and our own kernel (attention_prefill.cuh).
//
// Contract: the same as PrefillAttention (attention_prefill.cuh). A chunk's queries at positions
// [s, s + n) attend to keys [0, s + n) of one layer of the KV-cache, bottom-right-aligned causal
// mask (query i sees keys j <= s + i), grouped- and multi-query heads (Hq % Hkv == 0, q head h
// reads kv head h / (Hq / Hkv)), D in {64, 128}, bf16 or fp16 in and out, fp32 accumulation and
// softmax, scale given.
//
// Legend: n = queries in the chunk, s = prefix length, N = s + n keys, cap = cache capacity
// (rows), Hq / Hkv = query / key-value heads, D = head size.
// (n_p, N_p) = the plan's dims: (n, N) for an exact plan, the bucket (n_b, N_b) otherwise.
// Layouts (row-major, element T = bf16 or fp16):
//   q   (q_rows, Hq, D)  rows [0, n) real; cuDNN (b, h, s, d) dims (1, Hq, n_p, D)
//                        strides (n_p*Hq*D, D, Hq*D, 1)
//   K   (cap, Hkv, D)    rows [0, N_p) read; the first product reads it as K^T:
//                        dims (1, Hkv, D, N_p) strides (N_p*Hkv*D, D, 1, Hkv*D)
//   V   (cap, Hkv, D)    dims (1, Hkv, N_p, D) strides (N_p*Hkv*D, D, Hkv*D, 1)
//   out (q_rows, Hq, D)  like q; rows [n, n_p) are overwritten with garbage
// Exact plans read only rows [0, N) of K and V and [0, n) of q. Bucketed plans (below) read more.
//
// The graph (the pattern cuDNN fuses into one flash-attention kernel, inference form), in the
// plan's dims (n_p, N_p):
//   S = Q K^T (fp32) -> S * scale -> causal mask: row index (axis 2) + s_kv - s_q >= column index
//   (axis 3), else -inf (GEN_INDEX, ADD, SUB, CMP_GE, BINARY_SELECT) -> softmax (max, sub, exp,
//   sum, div; the log-sum-exp statistic is computed into a virtual tensor, as the frontend does)
//   -> P (T) V -> O (T).
// scale, s_kv and s_q enter as pass-by-value scalars at execution time, always the chunk's ACTUAL
// values s_kv = N = s + n and s_q = n, so the mask is "query i sees keys j <= s + i" whatever the
// plan's dims.
//
// Shape buckets: OFF by default (exact plans only). On one H200 with cuDNN 9.14 (2026-11-27,
// tests/cuda/kernels_test.cc Kernels.CudnnBucketedPrefillAttention) every bucketed plan gave
// wrong attention (rel err 0.04-1.6 against the CPU reference; exact plans 2e-3): the fused
// engine does not honour the pass-by-value s_kv / s_q when the tensor dims are larger. Kept for
// later cuDNN versions behind KVR_CUDNN_BUCKETS=1 or set_bucketing(true); the tests that
// exercise it run only with KVR_CUDNN_BUCKETS=1. The design, as intended:
// A plan of dims (n_b, N_b) >= (n, N) serves the chunk:
//   n_b = BucketQueries(n) when p.q_rows >= n_b, else n;
//   N_b = BucketKeys(N) when p.kv_tail_finite and p.kv_rows >= N_b, else N.
// Bucket(x, m) = x rounded up to a multiple of max(m, floorpow2(x) / 8), m = 64 for queries and
// 128 for keys: 8 buckets per octave, so the padding is < 1/8 of x once x >= 8m (512 queries,
// 1024 keys), and < m rows below that.
// Why it is sound:
//   - padded keys j in [N, N_b) are masked for every real query (j >= N > s + i), so they get
//     P = 0; but 0 * NaN = NaN, so those K/V rows must be finite: the caller asserts it with
//     kv_tail_finite (the CUDA runner zeroes each KV-cache at allocation; rows past a sequence's
//     length then hold zeros or keys/values the model wrote earlier, finite), and they must lie
//     inside the allocation (kv_rows);
//   - padded query rows i in [n, n_b) read q rows [n, n_b) (anything, even NaN) and write out rows
//     [n, n_b): garbage rows in buffer space the caller owns (q_rows) and nobody reads; each
//     output row depends only on its own query row, so real rows are unaffected.
// KVR_CUDNN_PADMASK=1 (experimental, unverified on a device; read at construction): the graph
// adds cuDNN's padding mask (row < seq_q and column < seq_kv, per-batch int32 device tensors
// written by Run on the stream) and the causal offset comes from those tensors instead of the
// scalars, as cudnn-frontend emits for padded batches, so that an engine which recognises it may
// skip padded tiles; padded query rows are then fully masked (their garbage may differ). Same
// buffer conditions; one stream at a time. A plan that does not build falls back as usual.
// Cost of a bucket: padded query rows are computed in full (< 1/8 more rows above 512 queries);
// padded keys cost < 1/8 more key tiles above 1024 keys unless the engine skips fully masked
// tiles (not verified).
//
// Plans: one execution plan per (dtype, Hq, Hkv, D, n_p, N_p), built on first use (heuristics
// mode A, then fallback; the first engine configuration that finalizes within the workspace
// limit), or ahead of time by Prewarm, then cached (at most kMaxPlans; the cache is emptied when
// full, except that Prewarm stops there); a failure is cached too, so a shape cuDNN cannot do
// costs one attempt. Plan building can take long (runtime-compiled engines): graphs are first
// built with dynamic shapes enabled and one kernel cache shared by all plans; if that fails the
// object builds static plans from then on (KVR_CUDNN_STATIC=1 forces static plans). On cuDNN 9.14
// (H200) dynamic shapes offer no engine, so plans are static: 43-65 ms per new (n_p, N_p) once
// the runtime-compiled kernel of the head/dtype config exists, 340-700 ms for the first plan of a
// config (measured on H200, 2026-11-27, tests/cuda/cudnn_check.sh). stats() reports build times.
// One CudnnAttention per device worker (handle on the device current at Init; the stream is set
// per call). Not thread-safe.
// Host-only header; cudnn.h stays inside cudnn_attention.cc. No engine headers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/attention_prefill.cuh"
#include "kernels/cuda_check.h"

namespace kvr::kernels {

// Which prefill attention runs: ours (mma.sync flash kernel), cuDNN's, or auto (see
// PrefillAttentionWith: cuDNN for chunks of >= kAutoMinQueries queries whose bucketed plan is
// built, or is worth building; ours elsewhere; no timing-based choice yet).
enum class AttnImpl { kMma, kCudnn, kAuto };
const char* AttnImplName(AttnImpl impl);
// "mma", "cudnn" or "auto"; false for anything else.
bool ParseAttnImpl(const std::string& s, AttnImpl* impl);

struct CudnnAttnStatus {
  enum Code { kOk, kUnsupported, kError };
  Code code = kOk;
  std::string message;  // the step, the cuDNN status name and cuDNN's last error string
  bool ok() const { return code == kOk; }
  static CudnnAttnStatus Ok() { return {}; }
};

// True when this build links cuDNN (false: every call answers kUnsupported).
bool CudnnAvailable();
// cuDNN's version at run time (e.g. 91900), 0 without cuDNN.
size_t CudnnRuntimeVersion();

class CudnnAttention {
 public:
  struct Stats {
    int plans_built = 0;        // plans finalized (cached)
    int shapes_failed = 0;      // shapes for which no plan could be built (cached as failed)
    double build_ms_total = 0;  // host time spent building plans (graph, heuristics, finalize)
    double build_ms_last = 0;   // the most recent build (success or failure)
    size_t workspace_bytes = 0; // device workspace now allocated
  };

  // Plans kept at most (each may hold compiled code and host descriptors).
  static constexpr int kMaxPlans = 4096;

  // The bucket rule above (x > 0; x itself when bucketing would not change it).
  static int BucketQueries(int n);
  static int BucketKeys(int N);
  // The (n_b, N_b) buckets a serving run meets: every query bucket in [BucketQueries(min_n),
  // BucketQueries(max_n)] paired with every key bucket from it up to BucketKeys(max_N); sorted by
  // n_b then N_b. max_n is capped at max_N; empty when min_n > max_n or any bound is <= 0.
  static std::vector<std::pair<int, int>> BucketGrid(int min_n, int max_n, int max_N);

  struct PrewarmReport {
    int requested = 0;     // buckets asked for
    int built = 0;         // plans built now
    int cached = 0;        // already cached (built or failed earlier)
    int failed = 0;        // no plan (cached as failed; those chunks run our kernel)
    int skipped = 0;       // not attempted: the plan cache is full (kMaxPlans)
    double total_ms = 0;   // wall time of the whole call
    std::string first_error;  // the first failure's message
  };
  // progress(done, total, elapsed_ms) after each bucket.
  using PrewarmProgress = std::function<void(int done, int total, double elapsed_ms)>;

  CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;
  ~CudnnAttention();

  // Creates the cuDNN handle on the current device. Engine configurations that need more
  // workspace than max_workspace_bytes are skipped.
  CudnnAttnStatus Init(size_t max_workspace_bytes = 256ull << 20);
  bool initialized() const;

  // Builds (or finds in the cache) the plan for p's shape without running it; *build_ms (when
  // given) gets the time this call spent building (0 on a cache hit).
  CudnnAttnStatus Prepare(DType dt, const PrefillAttnParams& p, double* build_ms = nullptr);
  // Builds the plans of dims (n_b, N_b) for each of `buckets` (usually BucketGrid) for one head
  // config and dtype, ahead of time, so that chunks of those buckets find their plan built. Costs
  // about 43-65 ms per plan on H200 (the first of a config 340-700 ms): bound the list. Returns
  // kOk when every bucket has a plan (or was already cached), the first failure otherwise; the
  // report counts them. Not done with bucketing off.
  CudnnAttnStatus Prewarm(DType dt, int Hq, int Hkv, int D, const std::vector<std::pair<int, int>>& buckets,
                          const PrewarmProgress& progress = nullptr, PrewarmReport* report = nullptr);
  // True when Run(dt, p) would find a built plan (exact or bucketed) without building one.
  bool HasPlan(DType dt, const PrefillAttnParams& p) const;
  // The plan dims (n_p, N_p) Run would use for p (bucketed or exact, see above).
  std::pair<int, int> PlanDims(const PrefillAttnParams& p) const;
  // Bucketing off (default; on only if KVR_CUDNN_BUCKETS=1 was set at construction) or on.
  void set_bucketing(bool on);
  bool bucketing() const;

  // Enqueues p on `stream`. kUnsupported: cuDNN cannot do this shape (window > 0, D, alignment,
  // no engine); nothing was enqueued. p.variant is ignored.
  CudnnAttnStatus Run(DType dt, const PrefillAttnParams& p, cudaStream_t stream);

  const Stats& stats() const;
  // Prints one line per plan built or failed (engine, workspace, build time) to stderr.
  void set_verbose(bool on);
  // Drops every cached plan (and failure).
  void ClearCache();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// kAuto: chunks of fewer queries run our kernel (cuDNN's win is small there).
inline constexpr int kAutoMinQueries = 512;
// kAuto builds a missing plan on demand only for chunks of at least this many queries (a plan
// costs ~50 ms; a bucketed plan then serves later chunks too); smaller chunks use cuDNN only
// when their plan already exists (Prewarm).
inline constexpr int kAutoBuildMinQueries = 2048;

// The selector. kMma: PrefillAttention. kCudnn: cudnn->Run (building the plan if needed).
// kAuto: cudnn->Run when n >= kAutoMinQueries and (HasPlan or n >= kAutoBuildMinQueries), our
// kernel otherwise. Both compute the same function (to rounding), so the choice changes speed,
// not results. kCudnn / kAuto fall back to PrefillAttention when cuDNN cannot run the shape
// (cudnn null or not initialized, window > 0, unsupported, plan build failure); under kCudnn a
// fallback prints one line to stderr per shape (under kAuto only when the cause is an error
// rather than "unsupported").
// A cuDNN execution error is returned (cudaErrorLaunchFailure), not hidden. *used (optional)
// says which implementation ran (kMma or kCudnn).
cudaError_t PrefillAttentionWith(AttnImpl impl, CudnnAttention* cudnn, DType dt,
                                 const PrefillAttnParams& p, cudaStream_t stream,
                                 AttnImpl* used = nullptr);

}  // namespace kvr::kernels
