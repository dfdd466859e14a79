#include "engine/cuda/nccl/nccl_fabric.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/util/status_macros.h"

namespace kvr {
namespace {

absl::Status CudaOk(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}
absl::Status NcclOk(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

// The link from device `self` to device `peer`.
// In both communicators of a direction the sender is rank 0 and the receiver rank 1.
struct Link {
  ncclComm_t send_comm = nullptr;  // self -> peer (self is rank 0)
  ncclComm_t recv_comm = nullptr;  // peer -> self (self is rank 1)
  cudaStream_t send = nullptr;     // self -> peer
  cudaStream_t recv = nullptr;     // peer -> self
};

class NcclFabric;

class NcclEndpoint : public ChainEndpoint {
 public:
  NcclEndpoint(NcclFabric* fabric, int position) : fabric_(fabric), position_(position) {}
  ~NcclEndpoint() override;
  absl::Status Post();  // posts every receive of the prefill
  absl::Status SendLayer(int layer) override;
  absl::Status WaitPrefix(int layer) override;
  absl::Status Finish() override;
  TransportStats stats() const override { return stats_; }

 private:
  cudaEvent_t NewEvent(bool timing);
  NcclFabric* fabric_;
  int position_;
  std::vector<cudaEvent_t> events_;                  // every event this endpoint made
  std::vector<std::vector<cudaEvent_t>> recv_done_;  // [layer][incoming transfer]
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> stall_;  // [layer]: around the compute wait
  std::vector<cudaStream_t> streams_used_;           // send and receive streams to drain
  TransportStats stats_;
};

class NcclFabric : public ChainFabric {
 public:
  absl::Status Init(int n) {
    n_ = n;
    links_.assign(n, std::vector<Link>(n));
    KVR_RETURN_IF_ERROR(InitComms());
    for (int i = 0; i < n; ++i) {
      KVR_RETURN_IF_ERROR(CudaOk(cudaSetDevice(i), "cudaSetDevice"));
      int lo = 0, hi = 0;
      cudaDeviceGetStreamPriorityRange(&lo, &hi);
      for (int j = 0; j < n; ++j) {
        if (i == j) continue;
        KVR_RETURN_IF_ERROR(CudaOk(cudaStreamCreateWithPriority(&links_[i][j].send, cudaStreamNonBlocking, hi), "stream"));
        KVR_RETURN_IF_ERROR(CudaOk(cudaStreamCreateWithPriority(&links_[i][j].recv, cudaStreamNonBlocking, hi), "stream"));
      }
    }
    return absl::OkStatus();
  }

  // Two two-rank communicators per pair of devices, one for each direction: NCCL runs the
  // operations of one communicator in the order they were issued, so a communicator that
  // carried both directions would queue a device's sends behind the receives it posted up front
  // (and its peer's likewise): a deadlock as soon as two positions send to each other.
  absl::Status InitComms() {
    for (int i = 0; i < n_; ++i) {
      for (int j = 0; j < n_; ++j) {
        if (i == j) continue;
        ncclComm_t comms[2];
        int devs[2] = {i, j};  // rank 0 = sender i, rank 1 = receiver j
        KVR_RETURN_IF_ERROR(NcclOk(ncclCommInitAll(comms, 2, devs), "ncclCommInitAll"));
        links_[i][j].send_comm = comms[0];
        links_[j][i].recv_comm = comms[1];
      }
    }
    return absl::OkStatus();
  }

  ~NcclFabric() override {
    for (int i = 0; i < n_; ++i) {
      cudaSetDevice(i);
      for (int j = 0; j < n_; ++j) {
        if (i == j) continue;
        if (links_[i][j].send_comm) ncclCommDestroy(links_[i][j].send_comm);
        if (links_[i][j].recv_comm) ncclCommDestroy(links_[i][j].recv_comm);
        if (links_[i][j].send) cudaStreamDestroy(links_[i][j].send);
        if (links_[i][j].recv) cudaStreamDestroy(links_[i][j].recv);
      }
    }
  }

  absl::Status Prepare(const PrefillPlan& plan, std::vector<KvCache*> caches,
                       std::vector<ModelRunner*> runners) override {
    {
      absl::MutexLock lock(&mu_);
      if (aborted_) {  // the last prefill failed and tore the communicators down
        KVR_RETURN_IF_ERROR(InitComms());
        aborted_ = false;
      }
    }
    plan_ = plan;
    caches_ = std::move(caches);
    runners_ = std::move(runners);
    transfers_ = TransfersOf(plan_);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<ChainEndpoint>> Connect(int position) override {
    auto ep = std::make_unique<NcclEndpoint>(this, position);
    KVR_RETURN_IF_ERROR(ep->Post());
    return ep;
  }

  void Abort(const absl::Status& why) override {
    // A failed position will never send: abort every communicator so that pending receives
    // return instead of hanging, and rebuild them before the next prefill.
    absl::MutexLock lock(&mu_);
    aborted_ = true;
    for (int i = 0; i < n_; ++i) {
      for (int j = 0; j < n_; ++j) {
        if (i == j) continue;
        for (ncclComm_t* c : {&links_[i][j].send_comm, &links_[i][j].recv_comm}) {
          if (*c) ncclCommAbort(*c);
          *c = nullptr;
        }
      }
    }
  }

  int device(int position) const { return plan_.order[position]; }
  Link& link(int from_pos, int to_pos) { return links_[device(from_pos)][device(to_pos)]; }
  const PrefillPlan& plan() const { return plan_; }
  const std::vector<KvTransfer>& transfers() const { return transfers_; }
  KvCache& cache(int position) { return *caches_[position]; }
  ModelRunner& runner(int position) { return *runners_[position]; }

 private:
  int n_ = 0;
  std::vector<std::vector<Link>> links_;  // [self][peer]
  PrefillPlan plan_;
  std::vector<KvCache*> caches_;
  std::vector<ModelRunner*> runners_;
  std::vector<KvTransfer> transfers_;
  absl::Mutex mu_;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
};

NcclEndpoint::~NcclEndpoint() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

cudaEvent_t NcclEndpoint::NewEvent(bool timing) {
  cudaEvent_t e = nullptr;
  cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming);
  events_.push_back(e);
  return e;
}

absl::Status NcclEndpoint::Post() {
  KvCache& cache = fabric_->cache(position_);
  const int layers = cache.num_layers();
  recv_done_.assign(layers, {});
  stall_.resize(layers);
  for (int l = 0; l < layers; ++l) stall_[l] = {NewEvent(true), NewEvent(true)};
  // Every incoming transfer of every layer, in layer order, on its link's receive stream,
  // landing directly in this position's cache rows; an event after each marks its arrival.
  for (int l = 0; l < layers; ++l) {
    const KvLayerView view = cache.layer(l);
    for (const KvTransfer& t : fabric_->transfers()) {
      if (t.to != position_) continue;
      Link& link = fabric_->link(position_, t.from);
      const size_t offset = static_cast<size_t>(t.begin) * view.bytes_per_token;
      const size_t bytes = static_cast<size_t>(t.end - t.begin) * view.bytes_per_token;
      KVR_RETURN_IF_ERROR(NcclOk(ncclGroupStart(), "ncclGroupStart"));
      KVR_RETURN_IF_ERROR(NcclOk(ncclRecv(view.k + offset, bytes, ncclInt8, 0, link.recv_comm, link.recv), "ncclRecv K"));
      KVR_RETURN_IF_ERROR(NcclOk(ncclRecv(view.v + offset, bytes, ncclInt8, 0, link.recv_comm, link.recv), "ncclRecv V"));
      KVR_RETURN_IF_ERROR(NcclOk(ncclGroupEnd(), "ncclGroupEnd"));
      cudaEvent_t done = NewEvent(false);
      KVR_RETURN_IF_ERROR(CudaOk(cudaEventRecord(done, link.recv), "cudaEventRecord"));
      recv_done_[l].push_back(done);
      stats_.bytes_received += 2 * bytes;
      if (l == 0) streams_used_.push_back(link.recv);
    }
  }
  for (const KvTransfer& t : fabric_->transfers()) {
    if (t.from == position_) streams_used_.push_back(fabric_->link(position_, t.to).send);
  }
  return absl::OkStatus();
}

absl::Status NcclEndpoint::SendLayer(int layer) {
  cudaStream_t compute = static_cast<cudaStream_t>(fabric_->runner(position_).compute_stream());
  cudaEvent_t qkv_done = NewEvent(false);
  KVR_RETURN_IF_ERROR(CudaOk(cudaEventRecord(qkv_done, compute), "cudaEventRecord"));
  const KvLayerView view = fabric_->cache(position_).layer(layer);
  const int own_begin = fabric_->plan().chunk_begin(position_);
  for (const KvTransfer& t : fabric_->transfers()) {
    if (t.from != position_) continue;
    Link& link = fabric_->link(position_, t.to);
    KVR_RETURN_IF_ERROR(CudaOk(cudaStreamWaitEvent(link.send, qkv_done, 0), "cudaStreamWaitEvent"));
    if (t.begin < own_begin) {  // forwards rows received from the predecessor: after they land
      for (cudaEvent_t e : recv_done_[layer]) {
        KVR_RETURN_IF_ERROR(CudaOk(cudaStreamWaitEvent(link.send, e, 0), "cudaStreamWaitEvent"));
      }
    }
    const size_t offset = static_cast<size_t>(t.begin) * view.bytes_per_token;
    const size_t bytes = static_cast<size_t>(t.end - t.begin) * view.bytes_per_token;
    KVR_RETURN_IF_ERROR(NcclOk(ncclGroupStart(), "ncclGroupStart"));
    KVR_RETURN_IF_ERROR(NcclOk(ncclSend(view.k + offset, bytes, ncclInt8, 1, link.send_comm, link.send), "ncclSend K"));
    KVR_RETURN_IF_ERROR(NcclOk(ncclSend(view.v + offset, bytes, ncclInt8, 1, link.send_comm, link.send), "ncclSend V"));
    KVR_RETURN_IF_ERROR(NcclOk(ncclGroupEnd(), "ncclGroupEnd"));
    stats_.bytes_sent += 2 * bytes;
  }
  return absl::OkStatus();
}

absl::Status NcclEndpoint::WaitPrefix(int layer) {
  cudaStream_t compute = static_cast<cudaStream_t>(fabric_->runner(position_).compute_stream());
  KVR_RETURN_IF_ERROR(CudaOk(cudaEventRecord(stall_[layer].first, compute), "cudaEventRecord"));
  for (cudaEvent_t e : recv_done_[layer]) {
    KVR_RETURN_IF_ERROR(CudaOk(cudaStreamWaitEvent(compute, e, 0), "cudaStreamWaitEvent"));
  }
  KVR_RETURN_IF_ERROR(CudaOk(cudaEventRecord(stall_[layer].second, compute), "cudaEventRecord"));
  return absl::OkStatus();
}

absl::Status NcclEndpoint::Finish() {
  for (cudaStream_t s : streams_used_) {
    KVR_RETURN_IF_ERROR(CudaOk(cudaStreamSynchronize(s), "waiting for K/V transfers"));
  }
  cudaStream_t compute = static_cast<cudaStream_t>(fabric_->runner(position_).compute_stream());
  KVR_RETURN_IF_ERROR(CudaOk(cudaStreamSynchronize(compute), "waiting for the compute stream"));
  double wait = 0;
  for (auto& [a, b] : stall_) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, a, b) == cudaSuccess) wait += ms * 1e-3;
  }
  stats_.wait_seconds = wait;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChainFabric>> MakeNcclFabric(int num_devices) {
  auto fabric = std::make_unique<NcclFabric>();
  KVR_RETURN_IF_ERROR(fabric->Init(num_devices));
  return std::unique_ptr<ChainFabric>(std::move(fabric));
}

void SelectCudaDevice(int device) { cudaSetDevice(device); }

}  // namespace kvr
