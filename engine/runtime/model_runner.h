// ModelRunner: runs a model's layers on one device. Implemented by the CPU reference backend
// (engine/cpu) and the CUDA backend (engine/cuda); everything above (prefill chain, decode loop,
// scheduler, server) talks only to this interface.
//
// Prefill of a chunk is exposed layer by layer so that a KV-Runahead worker can put its
// transfers between the ops:
//
//   auto chunk = runner.BeginChunk(tokens[s, e), s, cache);    // embedding
//   for l in 0..L-1:
//     runner.LayerQkv(*chunk, l);      // norm, Q/K/V, rotary; K/V of [s, e) -> cache layer l
//     ... transport: send K/V on, wait for the prefix [0, s) of layer l ...
//     runner.LayerAttnMlp(*chunk, l);  // attention over keys [0, e), output proj, MLP, residual
//   runner.FinishChunk(*chunk, &logits); // final norm + lm_head of the chunk's last token
//
// Asynchronous backends (CUDA) enqueue work on the runner's compute stream and return at once;
// `compute_stream()` lets a transport of the same backend order itself against that work.
// Synchronous backends (CPU) do the work before returning.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model/model_config.h"
#include "engine/runtime/kv_cache.h"

namespace kvr {

// A chunk's activations between calls; owned by the runner's implementation.
class ChunkState {
 public:
  virtual ~ChunkState() = default;
};

// One sequence in a decode batch: its cache holds positions [0, pos); `token` sits at `pos`.
struct DecodeSlot {
  KvCache* cache = nullptr;
  int32_t token = 0;
  int pos = 0;
};

struct MemoryReport {
  size_t weights_bytes = 0;
  size_t workspace_bytes = 0;
  size_t free_bytes = 0;   // left for KV-caches
  size_t total_bytes = 0;
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  virtual const ModelConfig& config() const = 0;
  virtual std::string device_name() const = 0;  // "cpu" or "cuda:0 (NVIDIA H100 ...)"
  virtual int device() const = 0;               // device index, 0 for the CPU
  virtual MemoryReport memory() const = 0;

  // A cache for up to `capacity` tokens. ResourceExhausted (with the sizes) if it cannot fit.
  virtual absl::StatusOr<std::unique_ptr<KvCache>> NewKvCache(int capacity) = 0;

  // Prefill of tokens at positions [start, start + tokens.size()) against `cache`, which must
  // hold (or, by the time each layer's attention runs, receive) positions [0, start).
  virtual absl::StatusOr<std::unique_ptr<ChunkState>> BeginChunk(absl::Span<const int32_t> tokens,
                                                                 int start, KvCache& cache) = 0;
  virtual absl::Status LayerQkv(ChunkState& chunk, int layer) = 0;
  virtual absl::Status LayerAttnMlp(ChunkState& chunk, int layer) = 0;
  // Logits of the chunk's last token: (V) floats. Waits for the device.
  virtual absl::Status FinishChunk(ChunkState& chunk, std::vector<float>* last_logits) = 0;

  // One decode step for a batch: appends each slot's token to its cache at `pos`; `logits` is set
  // to (batch, V) floats, row b for slot b, in host memory the runner owns (the CUDA runner's is
  // pinned, so the copy from the device runs at full speed into memory that stays mapped), valid
  // until the runner's next Decode or its destruction. Waits for the device.
  virtual absl::Status Decode(absl::Span<const DecodeSlot> batch, absl::Span<const float>* logits) = 0;

  // Copies `cache` layer `l`, tokens [a, b), K and V, into host fp32 arrays of
  // (b - a, Hkv, D) each. For tests and debugging.
  virtual absl::Status ReadKv(KvCache& cache, int layer, int a, int b, std::vector<float>* k,
                              std::vector<float>* v) = 0;

  // Opaque compute stream (cudaStream_t on CUDA, nullptr on the CPU).
  virtual void* compute_stream() const { return nullptr; }
  // Waits until all work enqueued on the compute stream is done.
  virtual absl::Status Synchronize() { return absl::OkStatus(); }
};

}  // namespace kvr
