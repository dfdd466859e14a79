// Transport: moves K/V rows of one layer between the caches of the workers of one prefill.
// One ChainEndpoint per worker per prefill, made by a ChainFabric. Implementations: in-process
// (CPU threads, engine/prefill/inproc_transport.h), NCCL point-to-point (engine/cuda/nccl) and
// peer copies by the copy engines (engine/cuda/peer).
//
// The worker calls, per layer l, in this order:
//   runner.LayerQkv(l)     own K/V rows [s, e) are written (or enqueued) into the cache
//   SendLayer(l)           sends this position's outgoing transfers of layer l; must not block
//                          the worker's compute. A transfer that forwards rows received from a
//                          predecessor (chain) is ordered after their arrival by the endpoint.
//   WaitPrefix(l)          makes the worker's following compute wait until every incoming
//                          transfer of layer l has landed in its cache (blocks the thread on the
//                          CPU; a stream-side wait on CUDA)
//   runner.LayerAttnMlp(l)
// and Finish() at the end, which returns once every send of this worker has completed (its cache
// may then be freed) and every receive has landed.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/prefill/prefill_plan.h"
#include "engine/runtime/kv_cache.h"
#include "engine/runtime/model_runner.h"

namespace kvr {

// Bytes moved and time spent waiting, per worker, for metrics and the benchmark's timeline.
struct TransportStats {
  size_t bytes_sent = 0;
  size_t bytes_received = 0;
  double wait_seconds = 0;  // time the worker's compute waited for incoming K/V (host-side view)
};

class ChainEndpoint {
 public:
  virtual ~ChainEndpoint() = default;
  virtual absl::Status SendLayer(int layer) = 0;
  virtual absl::Status WaitPrefix(int layer) = 0;
  virtual absl::Status Finish() = 0;
  virtual TransportStats stats() const = 0;
};

// Makes the endpoints of one prefill. `caches[k]` and `runners[k]` belong to chain position k.
// Connect is called by each worker on its own thread (CUDA needs the device current there);
// the fabric matches the positions up through `plan`.
class ChainFabric {
 public:
  virtual ~ChainFabric() = default;
  // Called once per prefill by the coordinator before the workers start.
  virtual absl::Status Prepare(const PrefillPlan& plan, std::vector<KvCache*> caches,
                               std::vector<ModelRunner*> runners) = 0;
  // Called by the worker at chain position `position` on its own thread.
  virtual absl::StatusOr<std::unique_ptr<ChainEndpoint>> Connect(int position) = 0;
  // A worker failed, or the coordinator's watchdog found one stuck: wake every waiter of this
  // prefill with `why` so that no thread hangs. Called from any thread, possibly several times;
  // the next Prepare starts afresh.
  virtual void Abort(const absl::Status& why) = 0;
};

}  // namespace kvr
