// Peer-copy fabric. See peer_fabric.h.
#include "engine/cuda/peer/peer_fabric.h"

#include <cuda_runtime.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/cuda/transport_timing.h"
#include "engine/util/status_macros.h"

namespace kvr {
namespace {

// Restores the calling thread's current device when it goes out of scope.
class DeviceGuard {
 public:
  DeviceGuard() { cudaGetDevice(&saved_); }
  ~DeviceGuard() { cudaSetDevice(saved_); }

 private:
  int saved_ = 0;
};

class PeerCopyFabric;

class PeerEndpoint : public ChainEndpoint {
 public:
  PeerEndpoint(PeerCopyFabric* fabric, int position);
  absl::Status Init();  // on the worker's thread: the stall events on its device
  absl::Status SendLayer(int layer) override;
  absl::Status WaitPrefix(int layer) override;
  absl::Status Finish() override;
  TransportStats stats() const override { return stats_; }

 private:
  PeerCopyFabric* fabric_;
  int position_;
  StallClock stall_;                                         // the compute stream's waits, per layer
  std::vector<cudaStream_t> streams_used_;                   // copy streams to drain at Finish
  TransportStats stats_;
};

}  // namespace

absl::Status PeerCopyStatus(int num_devices) {
  for (int i = 0; i < num_devices; ++i) {
    for (int j = 0; j < num_devices; ++j) {
      if (i == j) continue;
      int can = 0;
      KVR_RETURN_IF_ERROR(CudaOk(cudaDeviceCanAccessPeer(&can, i, j), "cudaDeviceCanAccessPeer"));
      if (!can) {
        return absl::FailedPreconditionError(absl::StrCat(
            "GPU ", i, " cannot access GPU ", j, " directly (no peer access): the peer-copy transport "
            "needs it between every pair; use the NCCL transport"));
      }
    }
  }
  return absl::OkStatus();
}

namespace {

class PeerCopyFabric : public ChainFabric {
 public:
  absl::Status Init(int n) {
    n_ = n;
    copy_.assign(n, std::vector<cudaStream_t>(n, nullptr));
    KVR_RETURN_IF_ERROR(PeerCopyStatus(n));
    DeviceGuard guard;
    for (int i = 0; i < n; ++i) {
      KVR_RETURN_IF_ERROR(CudaOk(cudaSetDevice(i), "cudaSetDevice"));
      int lo = 0, hi = 0;
      cudaDeviceGetStreamPriorityRange(&lo, &hi);
      for (int j = 0; j < n; ++j) {
        if (i == j) continue;
        const cudaError_t e = cudaDeviceEnablePeerAccess(j, 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled) {
          cudaGetLastError();  // enabled earlier in this process: fine
        } else {
          KVR_RETURN_IF_ERROR(CudaOk(e, "cudaDeviceEnablePeerAccess"));
        }
        KVR_RETURN_IF_ERROR(
            CudaOk(cudaStreamCreateWithPriority(&copy_[i][j], cudaStreamNonBlocking, hi), "cudaStreamCreate"));
      }
    }
    return absl::OkStatus();
  }

  ~PeerCopyFabric() override {
    DestroyEvents();
    for (int i = 0; i < n_; ++i) {
      cudaSetDevice(i);
      for (int j = 0; j < n_; ++j) {
        if (copy_[i][j]) cudaStreamDestroy(copy_[i][j]);
      }
    }
  }

  // One done event per (layer, transfer), made on the sending device; the last prefill's events
  // are finished with (every endpoint's Finish waited for its streams) and are destroyed here.
  absl::Status Prepare(const PrefillPlan& plan, std::vector<KvCache*> caches,
                       std::vector<ModelRunner*> runners) override {
    DestroyEvents();
    plan_ = plan;
    caches_ = std::move(caches);
    runners_ = std::move(runners);
    transfers_ = TransfersOf(plan_);
    layers_ = caches_.empty() ? 0 : caches_[0]->num_layers();
    const size_t T = transfers_.size();
    DeviceGuard guard;
    done_.assign(static_cast<size_t>(layers_) * T, nullptr);
    for (size_t t = 0; t < T; ++t) {
      KVR_RETURN_IF_ERROR(CudaOk(cudaSetDevice(device(transfers_[t].from)), "cudaSetDevice"));
      for (int l = 0; l < layers_; ++l) {
        KVR_RETURN_IF_ERROR(CudaOk(cudaEventCreateWithFlags(&done_[l * T + t], cudaEventDisableTiming),
                                   "cudaEventCreate"));
      }
    }
    absl::MutexLock lock(&mu_);
    recorded_.assign(done_.size(), false);
    error_ = absl::OkStatus();
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<ChainEndpoint>> Connect(int position) override {
    auto ep = std::make_unique<PeerEndpoint>(this, position);
    KVR_RETURN_IF_ERROR(ep->Init());
    return std::unique_ptr<ChainEndpoint>(std::move(ep));
  }

  void Abort(const absl::Status& why) override {
    absl::MutexLock lock(&mu_);
    if (error_.ok()) error_ = why.ok() ? absl::AbortedError("prefill aborted") : why;
  }

  // The event marking transfer t of `layer` as landed.
  cudaEvent_t done(int layer, size_t t) const { return done_[layer * transfers_.size() + t]; }
  void MarkRecorded(int layer, size_t t) {
    absl::MutexLock lock(&mu_);
    recorded_[layer * transfers_.size() + t] = true;
  }
  // Blocks until every listed transfer of `layer` has its done event recorded, or the prefill
  // is aborted (returns the reason).
  absl::Status AwaitRecorded(int layer, const std::vector<size_t>& ts) {
    absl::MutexLock lock(&mu_);
    auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      if (!error_.ok()) return true;
      for (size_t t : ts) {
        if (!recorded_[layer * transfers_.size() + t]) return false;
      }
      return true;
    };
    mu_.Await(absl::Condition(&ready));
    return error_;
  }

  int device(int position) const { return plan_.order[position]; }
  cudaStream_t copy_stream(int from_pos, int to_pos) const { return copy_[device(from_pos)][device(to_pos)]; }
  const PrefillPlan& plan() const { return plan_; }
  const std::vector<KvTransfer>& transfers() const { return transfers_; }
  KvCache& cache(int position) { return *caches_[position]; }
  ModelRunner& runner(int position) { return *runners_[position]; }

 private:
  void DestroyEvents() {
    for (size_t i = 0; i < done_.size(); ++i) {
      if (done_[i]) cudaEventDestroy(done_[i]);
    }
    done_.clear();
  }

  int n_ = 0;
  std::vector<std::vector<cudaStream_t>> copy_;  // [from device][to device], on the from device
  PrefillPlan plan_;
  std::vector<KvCache*> caches_;
  std::vector<ModelRunner*> runners_;
  std::vector<KvTransfer> transfers_;
  int layers_ = 0;
  std::vector<cudaEvent_t> done_;  // [layer * transfers + t]
  absl::Mutex mu_;
  std::vector<bool> recorded_ ABSL_GUARDED_BY(mu_);  // [layer * transfers + t]
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

PeerEndpoint::PeerEndpoint(PeerCopyFabric* fabric, int position) : fabric_(fabric), position_(position) {
  for (const KvTransfer& t : fabric_->transfers()) {
    if (t.from == position_) streams_used_.push_back(fabric_->copy_stream(position_, t.to));
  }
}

absl::Status PeerEndpoint::Init() { return stall_.Init(fabric_->cache(position_).num_layers()); }

absl::Status PeerEndpoint::SendLayer(int layer) {
  const std::vector<KvTransfer>& transfers = fabric_->transfers();
  std::vector<size_t> incoming;  // this layer's transfers into this position
  for (size_t i = 0; i < transfers.size(); ++i) {
    if (transfers[i].to == position_) incoming.push_back(i);
  }
  cudaStream_t compute = static_cast<cudaStream_t>(fabric_->runner(position_).compute_stream());
  const KvLayerView src = fabric_->cache(position_).layer(layer);
  const int own_begin = fabric_->plan().chunk_begin(position_);
  const int self = fabric_->device(position_);
  bool have_qkv_event = false;
  cudaEvent_t qkv_done = nullptr;
  for (size_t i = 0; i < transfers.size(); ++i) {
    const KvTransfer& t = transfers[i];
    if (t.from != position_) continue;
    if (!have_qkv_event) {  // this layer's own K/V rows are written once compute gets here
      KVR_RETURN_IF_ERROR(CudaOk(cudaEventCreateWithFlags(&qkv_done, cudaEventDisableTiming), "cudaEventCreate"));
      KVR_RETURN_IF_ERROR(CudaOk(cudaEventRecord(qkv_done, compute), "cudaEventRecord"));
      have_qkv_event = true;
    }
    cudaStream_t copy = fabric_->copy_stream(position_, t.to);
    absl::Status st = CudaOk(cudaStreamWaitEvent(copy, qkv_done, 0), "cudaStreamWaitEvent");
    if (st.ok() && t.begin < own_begin) {  // forwards rows received from the predecessor: after they land
      st = fabric_->AwaitRecorded(layer, incoming);
      for (size_t j = 0; st.ok() && j < incoming.size(); ++j) {
        st = CudaOk(cudaStreamWaitEvent(copy, fabric_->done(layer, incoming[j]), 0), "cudaStreamWaitEvent");
      }
    }
    const KvLayerView dst = fabric_->cache(t.to).layer(layer);
    const int peer = fabric_->device(t.to);
    const size_t offset = static_cast<size_t>(t.begin) * src.bytes_per_token;
    const size_t bytes = static_cast<size_t>(t.end - t.begin) * src.bytes_per_token;
    if (st.ok()) st = CudaOk(cudaMemcpyPeerAsync(dst.k + offset, peer, src.k + offset, self, bytes, copy), "copy K");
    if (st.ok()) st = CudaOk(cudaMemcpyPeerAsync(dst.v + offset, peer, src.v + offset, self, bytes, copy), "copy V");
    if (st.ok()) st = CudaOk(cudaEventRecord(fabric_->done(layer, i), copy), "cudaEventRecord");
    if (!st.ok()) {
      cudaEventDestroy(qkv_done);
      return st;
    }
    fabric_->MarkRecorded(layer, i);
    stats_.bytes_sent += 2 * bytes;
  }
  // Destroying an event that is still pending is allowed: it is released once it completes.
  if (have_qkv_event) cudaEventDestroy(qkv_done);
  return absl::OkStatus();
}

absl::Status PeerEndpoint::WaitPrefix(int layer) {
  const std::vector<KvTransfer>& transfers = fabric_->transfers();
  std::vector<size_t> incoming;
  for (size_t i = 0; i < transfers.size(); ++i) {
    if (transfers[i].to == position_) incoming.push_back(i);
  }
  KVR_RETURN_IF_ERROR(fabric_->AwaitRecorded(layer, incoming));
  cudaStream_t compute = static_cast<cudaStream_t>(fabric_->runner(position_).compute_stream());
  KVR_RETURN_IF_ERROR(stall_.Begin(layer, compute));
  const KvLayerView view = fabric_->cache(position_).layer(layer);
  for (size_t i : incoming) {
    KVR_RETURN_IF_ERROR(CudaOk(cudaStreamWaitEvent(compute, fabric_->done(layer, i), 0), "cudaStreamWaitEvent"));
    stats_.bytes_received += 2 * static_cast<size_t>(transfers[i].end - transfers[i].begin) * view.bytes_per_token;
  }
  return stall_.End(layer, compute);
}

absl::Status PeerEndpoint::Finish() {
  cudaStream_t compute = static_cast<cudaStream_t>(fabric_->runner(position_).compute_stream());
  KVR_ASSIGN_OR_RETURN(stats_.wait_seconds, DrainAndTime(streams_used_, "waiting for K/V copies", compute, stall_));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChainFabric>> MakePeerCopyFabric(int num_devices) {
  auto fabric = std::make_unique<PeerCopyFabric>();
  KVR_RETURN_IF_ERROR(fabric->Init(num_devices));
  return std::unique_ptr<ChainFabric>(std::move(fabric));
}

}  // namespace kvr
