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
// Layouts (row-major, element T = bf16 or fp16):
//   q   (n, Hq, D)      cuDNN (b, h, s, d) dims (1, Hq, n, D)  strides (n*Hq*D, D, Hq*D, 1)
//   K   (cap, Hkv, D)   rows [0, N) read; the first product reads it as K^T:
//                       dims (1, Hkv, D, N) strides (N*Hkv*D, D, 1, Hkv*D)
//   V   (cap, Hkv, D)   dims (1, Hkv, N, D) strides (N*Hkv*D, D, Hkv*D, 1)
//   out (n, Hq, D)      like q
// Only rows [0, N) of K and V are read (the graph's key extent is exactly N); nothing past them.
//
// The graph (the pattern cuDNN fuses into one flash-attention kernel, inference form):
//   S = Q K^T (fp32) -> S * scale -> causal mask: row index (axis 2) + N - n >= column index
//   (axis 3), else -inf (GEN_INDEX, ADD, SUB, CMP_GE, BINARY_SELECT) -> softmax (max, sub, exp,
//   sum, div; the log-sum-exp statistic is computed into a virtual tensor, as the frontend does)
//   -> P (T) V -> O (T).
// scale, N and n enter as pass-by-value scalars at execution time.
//
// Plans: one execution plan per (dtype, Hq, Hkv, D, n, N), built on first use (heuristics mode A,
// then fallback; the first engine configuration that finalizes within the workspace limit), then
// cached (at most 512; the cache is emptied when full); a failure is cached too, so a shape cuDNN
// cannot do costs one attempt. Every shape is exact: no padding to buckets, so no row past the
// valid ones is ever read. Plan building can take long (runtime-compiled engines), so graphs are
// first built with dynamic shapes enabled and one kernel cache shared by all plans (a new (n, N)
// then reuses the kernels compiled for an earlier one); if that fails the object builds static
// plans from then on (KVR_CUDNN_STATIC=1 in the environment forces static plans). stats()
// reports build times. One CudnnAttention per device worker (handle on the device current at
// Init; the stream is set per call). Not thread-safe.
// Host-only header; cudnn.h stays inside cudnn_attention.cc. No engine headers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>

#include "kernels/attention_prefill.cuh"
#include "kernels/cuda_check.h"

namespace kvr::kernels {

// Which prefill attention runs: ours (mma.sync flash kernel), cuDNN's, or auto (cuDNN where it
// builds a plan for the shape, ours elsewhere; no timing-based choice yet).
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

// The selector. kMma: PrefillAttention. kCudnn / kAuto: cudnn->Run, falling back to
// PrefillAttention when cuDNN cannot run the shape (cudnn null or not initialized, window > 0,
// unsupported, plan build failure); under kCudnn a fallback prints one line to stderr per shape
// (under kAuto only when the cause is an error rather than "unsupported").
// A cuDNN execution error is returned (cudaErrorLaunchFailure), not hidden. *used (optional)
// says which implementation ran (kMma or kCudnn).
cudaError_t PrefillAttentionWith(AttnImpl impl, CudnnAttention* cudnn, DType dt,
                                 const PrefillAttnParams& p, cudaStream_t stream,
                                 AttnImpl* used = nullptr);

}  // namespace kvr::kernels
