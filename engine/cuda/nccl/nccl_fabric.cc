// NCCL fabric. See nccl_fabric.h.
//
// Why all-gather (TSP) hung on 4 GPUs while chain and fan-out ran (kvr-bench, 4x H200, 16k;
// diagnosed from NCCL 2.28's source, not yet re-run on the device):
//
// 1. NCCL connects a point-to-point channel lazily, at the first ncclSend/ncclRecv on it, inside
//    ncclGroupEnd on the calling thread (src/enqueue.cc marks the unconnected channels; group.cc
//    runs ncclP2PPreconnectFunc -> ncclTransportP2pSetup, which blocks in bootstrapRecv until the
//    PEER rank also enters its own setup, i.e. until it issues its first matching operation).
//    The endpoints used to post every receive of the prefill up front in Post(), before the
//    worker's first SendLayer. With all-gather every position receives from every other one, so
//    on a link not yet used each worker's thread blocked in Post() on a peer that was itself
//    blocked in its own Post(): a cycle of host threads. In the hung call the chain runs before
//    TSP had connected 0->1, 1->2, 2->3 only; TSP then needed 1->0, 2->1, 0->2, 0->3 ...:
//    position 0 waited on 1 (link 1->0), 1 on 2 (2->1), 2 on 0 (0->2). On 2 GPUs the earlier
//    chain runs had connected 0->1, so position 1's Post() went through, its first send
//    connected 1->0 and position 0 was released: the reason 2 GPUs "worked". (Run TSP first in
//    a fresh process and it would have hung on 2 GPUs too.) Chain and fan-out only receive
//    from earlier positions, so their waits form no cycle.
//    Fix: every connection (each direction's communicator, and the all-gather communicator) is
//    made at Init, from one thread, in groups that hold both ends (ConnectAll), as
//    ncclCommInitAll does; no worker ever waits on NCCL's connection setup.
//
// 2. Device side, all-gather also broke the property that keeps chain and fan-out safe: there,
//    every transfer a GPU waits for depends only on earlier positions, so no serialization of
//    its streams (CUDA_DEVICE_MAX_CONNECTIONS = 8 hardware queues shared by ~20 streams per GPU
//    here, NCCL kernels spinning on resident SMs) can close a cycle. With all-gather, 3 x 32
//    blocking receive kernels queued up front per GPU could sit in a hardware queue ahead of the
//    send that their own peer needs first. So all-gather no longer uses the per-direction
//    links: one communicator over all GPUs, one stream per GPU, and per layer ONE group with the
//    layer's sends to and receives from every peer (one NCCL kernel per GPU per layer, issued
//    after the layer's K/V are written, the way an ncclAllGather is). Every operation then waits
//    only on work issued before it on its GPU and on the same layer's group on the peers, so it
//    cannot deadlock whatever NCCL or the hardware serialises.
#include "engine/cuda/nccl/nccl_fabric.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/cuda/transport_timing.h"
#include "engine/util/status_macros.h"

namespace kvr {
namespace {

absl::Status NcclOk(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

// Runs an NCCL group: start, `ops`, end (the end also when an op failed, so that this thread
// is never left inside a group).
template <typename Ops>
absl::Status NcclGroup(Ops&& ops) {
  KVR_RETURN_IF_ERROR(NcclOk(ncclGroupStart(), "ncclGroupStart"));
  absl::Status st = ops();
  const ncclResult_t end = ncclGroupEnd();
  KVR_RETURN_IF_ERROR(st);
  return NcclOk(end, "ncclGroupEnd");
}

// KVR_NCCL_MAX_CTAS (a knob for measuring, unset by default): the most CTAs, so SMs, that one
// NCCL kernel of the fabric may use (ncclConfig_t::maxCTAs). An NCCL receive kernel stays resident
// on the receiver's SMs until its data lands; docs/benchmarks.md ("Where the missing time goes")
// finds the receiving GPUs computing 12-24% slower than the cost model, and this is one way to
// test whether those SMs are why (the peer-copy fabric, engine/cuda/peer, is the other). 0 or
// unset: NCCL's own choice.
int MaxCtasFromEnv() {
  const char* e = std::getenv("KVR_NCCL_MAX_CTAS");
  return e != nullptr ? std::atoi(e) : 0;
}

// ncclCommInitAll(comms, n, devs), or, with KVR_NCCL_MAX_CTAS set, the same communicator made
// rank by rank with that limit in its config (one group, from this thread).
absl::Status MakeComms(ncclComm_t* comms, int n, const int* devs) {
  const int max_ctas = MaxCtasFromEnv();
  if (max_ctas <= 0) return NcclOk(ncclCommInitAll(comms, n, devs), "ncclCommInitAll");
  ncclUniqueId id;
  KVR_RETURN_IF_ERROR(NcclOk(ncclGetUniqueId(&id), "ncclGetUniqueId"));
  return NcclGroup([&]() -> absl::Status {
    for (int r = 0; r < n; ++r) {
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.minCTAs = 1;
      config.maxCTAs = max_ctas;
      KVR_RETURN_IF_ERROR(CudaOk(cudaSetDevice(devs[r]), "cudaSetDevice"));
      KVR_RETURN_IF_ERROR(NcclOk(ncclCommInitRankConfig(&comms[r], n, id, r, &config), "ncclCommInitRankConfig"));
    }
    return absl::OkStatus();
  });
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
  absl::Status Post();  // posts every receive of the prefill (chain, fan-out)
  absl::Status SendLayer(int layer) override;
  absl::Status WaitPrefix(int layer) override;
  absl::Status Finish() override;
  TransportStats stats() const override { return stats_; }

 private:
  cudaEvent_t NewEvent();  // untimed; destroyed with the endpoint
  absl::Status AllGatherLayer(int layer);  // SendLayer of the all-gather topology
  NcclFabric* fabric_;
  int position_;
  std::vector<cudaEvent_t> events_;                  // every event this endpoint made
  std::vector<std::vector<cudaEvent_t>> recv_done_;  // [layer][incoming transfer]
  StallClock stall_;                                 // the compute stream's waits, per layer
  std::vector<cudaStream_t> streams_used_;           // send and receive streams to drain
  TransportStats stats_;
};

class NcclFabric : public ChainFabric {
 public:
  absl::Status Init(int n) {
    n_ = n;
    links_.assign(n, std::vector<Link>(n));
    ag_comms_.assign(n, nullptr);
    ag_streams_.assign(n, nullptr);
    for (int i = 0; i < n; ++i) {
      KVR_RETURN_IF_ERROR(CudaOk(cudaSetDevice(i), "cudaSetDevice"));
      int lo = 0, hi = 0;
      cudaDeviceGetStreamPriorityRange(&lo, &hi);
      for (int j = 0; j < n; ++j) {
        if (i == j) continue;
        KVR_RETURN_IF_ERROR(CudaOk(cudaStreamCreateWithPriority(&links_[i][j].send, cudaStreamNonBlocking, hi), "stream"));
        KVR_RETURN_IF_ERROR(CudaOk(cudaStreamCreateWithPriority(&links_[i][j].recv, cudaStreamNonBlocking, hi), "stream"));
      }
      if (n > 1) {
        KVR_RETURN_IF_ERROR(CudaOk(cudaStreamCreateWithPriority(&ag_streams_[i], cudaStreamNonBlocking, hi), "stream"));
      }
    }
    return InitComms();
  }

  // Two two-rank communicators per pair of devices, one for each direction: NCCL runs the
  // operations of one communicator in the order they were issued, so a communicator that
  // carried both directions would queue a device's sends behind the receives it posted up front
  // (and its peer's likewise): a deadlock as soon as two positions send to each other.
  // Plus one communicator over all devices for the all-gather topology (rank = device).
  // Every connection is then made at once (ConnectAll): see the top of this file.
  absl::Status InitComms() {
    for (int i = 0; i < n_; ++i) {
      for (int j = 0; j < n_; ++j) {
        if (i == j) continue;
        ncclComm_t comms[2];
        int devs[2] = {i, j};  // rank 0 = sender i, rank 1 = receiver j
        KVR_RETURN_IF_ERROR(MakeComms(comms, 2, devs));
        links_[i][j].send_comm = comms[0];
        links_[j][i].recv_comm = comms[1];
      }
    }
    if (n_ > 1) {
      std::vector<int> devs(n_);
      for (int i = 0; i < n_; ++i) devs[i] = i;
      KVR_RETURN_IF_ERROR(MakeComms(ag_comms_.data(), n_, devs.data()));
    }
    return ConnectAll();
  }

  // Makes every NCCL point-to-point connection now, from this one thread: one byte over each
  // direction's communicator (both ranks in one group, so NCCL sets both ends up concurrently on
  // its own threads), then one byte between every pair of the all-gather communicator (all
  // ranks in one group), and waits for them. NCCL would otherwise connect each channel at its
  // first use, inside ncclGroupEnd on the worker's thread, blocking until the peer's thread
  // gets there too (see the top of this file).
  absl::Status ConnectAll() {
    if (n_ < 2) return absl::OkStatus();
    std::vector<std::byte*> buf(n_, nullptr);
    absl::Status st = [&]() -> absl::Status {
      for (int d = 0; d < n_; ++d) {
        KVR_RETURN_IF_ERROR(CudaOk(cudaSetDevice(d), "cudaSetDevice"));
        KVR_RETURN_IF_ERROR(CudaOk(cudaMalloc(&buf[d], 1 + n_), "cudaMalloc"));
      }
      auto sync = [&](int d, cudaStream_t s) {
        KVR_RETURN_IF_ERROR(CudaOk(cudaSetDevice(d), "cudaSetDevice"));
        return CudaOk(cudaStreamSynchronize(s), "connecting NCCL links");
      };
      for (int i = 0; i < n_; ++i) {
        for (int j = 0; j < n_; ++j) {
          if (i == j) continue;
          KVR_RETURN_IF_ERROR(NcclGroup([&]() -> absl::Status {
            KVR_RETURN_IF_ERROR(NcclOk(ncclSend(buf[i], 1, ncclInt8, 1, links_[i][j].send_comm, links_[i][j].send), "ncclSend"));
            return NcclOk(ncclRecv(buf[j] + 1 + i, 1, ncclInt8, 0, links_[j][i].recv_comm, links_[j][i].recv), "ncclRecv");
          }));
          KVR_RETURN_IF_ERROR(sync(i, links_[i][j].send));
          KVR_RETURN_IF_ERROR(sync(j, links_[j][i].recv));
        }
      }
      KVR_RETURN_IF_ERROR(NcclGroup([&]() -> absl::Status {
        for (int d = 0; d < n_; ++d) {
          for (int e = 0; e < n_; ++e) {
            if (d == e) continue;
            KVR_RETURN_IF_ERROR(NcclOk(ncclSend(buf[d], 1, ncclInt8, e, ag_comms_[d], ag_streams_[d]), "ncclSend"));
            KVR_RETURN_IF_ERROR(NcclOk(ncclRecv(buf[d] + 1 + e, 1, ncclInt8, e, ag_comms_[d], ag_streams_[d]), "ncclRecv"));
          }
        }
        return absl::OkStatus();
      }));
      for (int d = 0; d < n_; ++d) KVR_RETURN_IF_ERROR(sync(d, ag_streams_[d]));
      return absl::OkStatus();
    }();
    for (int d = 0; d < n_; ++d) {
      if (buf[d]) {
        cudaSetDevice(d);
        cudaFree(buf[d]);
      }
    }
    return st;
  }

  ~NcclFabric() override {
    for (int i = 0; i < n_; ++i) {
      cudaSetDevice(i);
      if (ag_comms_[i]) ncclCommDestroy(ag_comms_[i]);
      if (ag_streams_[i]) cudaStreamDestroy(ag_streams_[i]);
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
      if (ag_comms_[i]) ncclCommAbort(ag_comms_[i]);
      ag_comms_[i] = nullptr;
    }
  }

  int device(int position) const { return plan_.order[position]; }
  Link& link(int from_pos, int to_pos) { return links_[device(from_pos)][device(to_pos)]; }
  const PrefillPlan& plan() const { return plan_; }
  const std::vector<KvTransfer>& transfers() const { return transfers_; }
  KvCache& cache(int position) { return *caches_[position]; }
  ModelRunner& runner(int position) { return *runners_[position]; }
  // The all-gather communicator's handle on `position`'s device (its rank there is the device).
  ncclComm_t ag_comm(int position) { return ag_comms_[device(position)]; }
  cudaStream_t ag_stream(int position) { return ag_streams_[device(position)]; }

 private:
  int n_ = 0;
  std::vector<std::vector<Link>> links_;  // [self][peer]: chain and fan-out
  std::vector<ncclComm_t> ag_comms_;      // [device]: all-gather, one communicator over all devices
  std::vector<cudaStream_t> ag_streams_;  // [device]: its one communication stream
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

cudaEvent_t NcclEndpoint::NewEvent() {
  cudaEvent_t e = nullptr;
  cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  events_.push_back(e);
  return e;
}

absl::Status NcclEndpoint::Post() {
  KvCache& cache = fabric_->cache(position_);
  const int layers = cache.num_layers();
  recv_done_.assign(layers, {});
  KVR_RETURN_IF_ERROR(stall_.Init(layers));
  if (fabric_->plan().topology == Topology::kAllGather) {
    // Nothing up front: each layer's receives go out with its sends, in one group (SendLayer).
    for (const KvTransfer& t : fabric_->transfers()) {
      if (t.to == position_ || t.from == position_) {
        streams_used_.push_back(fabric_->ag_stream(position_));
        break;
      }
    }
    return absl::OkStatus();
  }
  // Every incoming transfer of every layer, in layer order, on its link's receive stream,
  // landing directly in this position's cache rows; an event after each marks its arrival.
  for (int l = 0; l < layers; ++l) {
    const KvLayerView view = cache.layer(l);
    for (const KvTransfer& t : fabric_->transfers()) {
      if (t.to != position_) continue;
      Link& link = fabric_->link(position_, t.from);
      const size_t offset = static_cast<size_t>(t.begin) * view.bytes_per_token;
      const size_t bytes = static_cast<size_t>(t.end - t.begin) * view.bytes_per_token;
      KVR_RETURN_IF_ERROR(NcclGroup([&]() -> absl::Status {
        KVR_RETURN_IF_ERROR(NcclOk(ncclRecv(view.k + offset, bytes, ncclInt8, 0, link.recv_comm, link.recv), "ncclRecv K"));
        return NcclOk(ncclRecv(view.v + offset, bytes, ncclInt8, 0, link.recv_comm, link.recv), "ncclRecv V");
      }));
      cudaEvent_t done = NewEvent();
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
  if (fabric_->plan().topology == Topology::kAllGather) return AllGatherLayer(layer);
  cudaStream_t compute = static_cast<cudaStream_t>(fabric_->runner(position_).compute_stream());
  cudaEvent_t qkv_done = NewEvent();
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
    KVR_RETURN_IF_ERROR(NcclGroup([&]() -> absl::Status {
      KVR_RETURN_IF_ERROR(NcclOk(ncclSend(view.k + offset, bytes, ncclInt8, 1, link.send_comm, link.send), "ncclSend K"));
      return NcclOk(ncclSend(view.v + offset, bytes, ncclInt8, 1, link.send_comm, link.send), "ncclSend V");
    }));
    stats_.bytes_sent += 2 * bytes;
  }
  return absl::OkStatus();
}

// All-gather: once this position's K/V rows of the layer are written, one group on its device's
// all-gather stream sends them to every other position and receives every other position's rows
// straight into this cache; WaitPrefix(layer) waits for that group.
absl::Status NcclEndpoint::AllGatherLayer(int layer) {
  const std::vector<KvTransfer>& transfers = fabric_->transfers();
  bool any = false;
  for (const KvTransfer& t : transfers) any = any || t.from == position_ || t.to == position_;
  recv_done_[layer].clear();
  if (!any) return absl::OkStatus();  // a plan of one chunk
  cudaStream_t compute = static_cast<cudaStream_t>(fabric_->runner(position_).compute_stream());
  cudaStream_t stream = fabric_->ag_stream(position_);
  ncclComm_t comm = fabric_->ag_comm(position_);
  cudaEvent_t qkv_done = NewEvent();
  KVR_RETURN_IF_ERROR(CudaOk(cudaEventRecord(qkv_done, compute), "cudaEventRecord"));
  KVR_RETURN_IF_ERROR(CudaOk(cudaStreamWaitEvent(stream, qkv_done, 0), "cudaStreamWaitEvent"));
  const KvLayerView view = fabric_->cache(position_).layer(layer);
  KVR_RETURN_IF_ERROR(NcclGroup([&]() -> absl::Status {
    for (const KvTransfer& t : transfers) {
      const size_t offset = static_cast<size_t>(t.begin) * view.bytes_per_token;
      const size_t bytes = static_cast<size_t>(t.end - t.begin) * view.bytes_per_token;
      if (t.from == position_) {
        const int peer = fabric_->device(t.to);
        KVR_RETURN_IF_ERROR(NcclOk(ncclSend(view.k + offset, bytes, ncclInt8, peer, comm, stream), "ncclSend K"));
        KVR_RETURN_IF_ERROR(NcclOk(ncclSend(view.v + offset, bytes, ncclInt8, peer, comm, stream), "ncclSend V"));
        stats_.bytes_sent += 2 * bytes;
      } else if (t.to == position_) {
        const int peer = fabric_->device(t.from);
        KVR_RETURN_IF_ERROR(NcclOk(ncclRecv(view.k + offset, bytes, ncclInt8, peer, comm, stream), "ncclRecv K"));
        KVR_RETURN_IF_ERROR(NcclOk(ncclRecv(view.v + offset, bytes, ncclInt8, peer, comm, stream), "ncclRecv V"));
        stats_.bytes_received += 2 * bytes;
      }
    }
    return absl::OkStatus();
  }));
  cudaEvent_t done = NewEvent();
  KVR_RETURN_IF_ERROR(CudaOk(cudaEventRecord(done, stream), "cudaEventRecord"));
  recv_done_[layer].push_back(done);
  return absl::OkStatus();
}

absl::Status NcclEndpoint::WaitPrefix(int layer) {
  cudaStream_t compute = static_cast<cudaStream_t>(fabric_->runner(position_).compute_stream());
  KVR_RETURN_IF_ERROR(stall_.Begin(layer, compute));
  for (cudaEvent_t e : recv_done_[layer]) {
    KVR_RETURN_IF_ERROR(CudaOk(cudaStreamWaitEvent(compute, e, 0), "cudaStreamWaitEvent"));
  }
  return stall_.End(layer, compute);
}

absl::Status NcclEndpoint::Finish() {
  cudaStream_t compute = static_cast<cudaStream_t>(fabric_->runner(position_).compute_stream());
  KVR_ASSIGN_OR_RETURN(stats_.wait_seconds, DrainAndTime(streams_used_, "waiting for K/V transfers", compute, stall_));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChainFabric>> MakeNcclFabric(int num_devices) {
  // Point-to-point transfers need no NVLink multicast (NVLS); NCCL would otherwise set it up on
  // NVSwitch machines, where it can take shared GPUs out of service. An explicit setting wins.
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
  auto fabric = std::make_unique<NcclFabric>();
  KVR_RETURN_IF_ERROR(fabric->Init(num_devices));
  return std::unique_ptr<ChainFabric>(std::move(fabric));
}

void SelectCudaDevice(int device) { cudaSetDevice(device); }

}  // namespace kvr
