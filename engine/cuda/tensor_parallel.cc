#include "engine/cuda/tensor_parallel.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "engine/util/clock.h"
#include "engine/util/log.h"
#include "engine/util/status_macros.h"

namespace kvr {

absl::StatusOr<TensorParallelShard> TensorParallelShardOf(const ModelConfig& config, int rank, int size) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel rank ", rank, " of ", size));
  }
  const int Hq = config.num_q_heads, Hkv = config.num_kv_heads, F = config.intermediate_size;
  const std::string model = config.model_type.empty() ? std::string("the model") : config.model_type;
  const std::string instead =
      " (TSP, the all-gather KV-Runahead topology, is the multi-GPU baseline for this model; "
      "KV-Runahead itself has no such constraint)";
  if (Hkv <= 0 || Hq % Hkv != 0) {
    return absl::InvalidArgumentError(absl::StrCat(model, ": ", Hq, " query heads are not a multiple of ",
                                                   Hkv, " key-value heads"));
  }
  if (Hq % size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor parallelism cannot split ", model, " over ", size, " GPUs: its ", Hq,
        " query heads are not a multiple of ", size, instead));
  }
  if (Hkv % size != 0 && size % Hkv != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor parallelism cannot split ", model, " over ", size, " GPUs: its ", Hkv,
        " key-value heads neither divide by ", size, " nor divide ", size, " (to be replicated)", instead));
  }
  if (F % size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor parallelism cannot split ", model, " over ", size, " GPUs: its intermediate size ", F,
        " is not a multiple of ", size, instead));
  }
  TensorParallelShard s;
  s.rank = rank;
  s.size = size;
  s.q_heads = Hq / size;
  s.q_head0 = rank * s.q_heads;
  if (Hkv % size == 0) {
    s.kv_heads = Hkv / size;
    s.kv_head0 = rank * s.kv_heads;
  } else {
    // Fewer K/V heads than ranks: each rank keeps the one its query heads read (query head h
    // reads K/V head h / (Hq / Hkv); a rank's Hq / size heads all fall in one group because
    // size is a multiple of Hkv).
    s.kv_heads = 1;
    s.kv_head0 = s.q_head0 / (Hq / Hkv);
  }
  s.ff = F / size;
  s.ff0 = rank * s.ff;
  s.local = config;
  s.local.num_q_heads = s.q_heads;
  s.local.num_kv_heads = s.kv_heads;
  s.local.intermediate_size = s.ff;
  return s;
}

namespace {

absl::Mutex abort_mu;  // serialises TensorParallelGroup::Abort across ranks' threads

}  // namespace

TensorParallelGroup::~TensorParallelGroup() {
  threads_.clear();  // joins (no job is pending once the last call returned)
  runners_.clear();  // before the communicator they all-reduce on
  for (void* c : comms_) {
    if (c) ncclCommDestroy(static_cast<ncclComm_t>(c));
  }
}

void TensorParallelGroup::Abort() {
  absl::MutexLock lock(&abort_mu);
  if (broken_) return;
  broken_ = true;
  // A rank that failed between all-reduces leaves the others waiting in one forever: aborting
  // the communicator makes their NCCL kernels return, so every thread comes back with an error.
  for (void*& c : comms_) {
    if (c) ncclCommAbort(static_cast<ncclComm_t>(c));
    c = nullptr;
  }
}

absl::Status TensorParallelGroup::RunOnRanks(const std::function<absl::Status(int)>& fn) {
  const int P = size();
  std::vector<absl::Status> results(P);
  absl::BlockingCounter done(P);
  for (int r = 0; r < P; ++r) {
    threads_[r]->Post([&, r] {
      results[r] = fn(r);
      if (!results[r].ok() && P > 1) Abort();
      done.DecrementCount();
    });
  }
  done.Wait();
  for (int r = 0; r < P; ++r) {
    if (!results[r].ok()) {
      return absl::Status(results[r].code(), absl::StrCat("tensor-parallel rank ", r, " (GPU ",
                                                          runners_[r]->device(), "): ", results[r].message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorParallelPrefill> TensorParallelGroup::Prefill(absl::Span<const int32_t> tokens,
                                                                   int cache_capacity) {
  if (broken_) {
    return absl::FailedPreconditionError("tensor-parallel group aborted after an earlier failure");
  }
  const int C = static_cast<int>(tokens.size());
  if (C == 0) return absl::InvalidArgumentError("empty prompt");
  if (cache_capacity < C) {
    return absl::InvalidArgumentError(absl::StrCat("cache capacity ", cache_capacity, " is smaller than the prompt (", C, ")"));
  }
  const int P = size();
  TensorParallelPrefill out;
  out.caches.resize(P);
  // Allocation first, and BeginChunk (validation, the chunk's workspace, the embedding) as a
  // step of its own: they fail, if at all, before any rank reaches an all-reduce, so a failure
  // there needs no abort. Phase errors are gathered here rather than through RunOnRanks.
  std::vector<std::unique_ptr<ChunkState>> chunks(P);
  auto each = [&](const std::function<absl::Status(int)>& fn) -> absl::Status {
    std::vector<absl::Status> results(P);
    absl::BlockingCounter done(P);
    for (int r = 0; r < P; ++r) {
      threads_[r]->Post([&, r] {
        results[r] = fn(r);
        done.DecrementCount();
      });
    }
    done.Wait();
    for (int r = 0; r < P; ++r) {
      if (!results[r].ok()) {
        return absl::Status(results[r].code(), absl::StrCat("tensor-parallel rank ", r, ": ", results[r].message()));
      }
    }
    return absl::OkStatus();
  };
  KVR_RETURN_IF_ERROR(each([&](int r) -> absl::Status {
    KVR_ASSIGN_OR_RETURN(out.caches[r], runners_[r]->NewKvCache(cache_capacity));
    return runners_[r]->Synchronize();
  }));
  const auto t0 = SteadyClock::now();
  absl::Status begun = each([&](int r) -> absl::Status {
    KVR_ASSIGN_OR_RETURN(chunks[r], runners_[r]->BeginChunk(tokens, 0, *out.caches[r]));
    return absl::OkStatus();
  });
  if (!begun.ok()) {
    KVR_RETURN_IF_ERROR(each([&](int r) { chunks[r].reset(); return absl::OkStatus(); }));
    return begun;
  }
  const int L = runners_[0]->config().num_layers;
  absl::Status ran = RunOnRanks([&](int r) -> absl::Status {
    ModelRunner& run = *runners_[r];
    for (int l = 0; l < L; ++l) {
      KVR_RETURN_IF_ERROR(run.LayerQkv(*chunks[r], l));
      KVR_RETURN_IF_ERROR(run.LayerAttnMlp(*chunks[r], l));
    }
    absl::Status st = r == 0 ? run.FinishChunk(*chunks[r], &out.logits) : run.Synchronize();
    chunks[r].reset();  // stream-ordered free on the rank's own thread
    return st;
  });
  out.seconds = SecondsSince(t0);
  if (!ran.ok()) {
    each([&](int r) { chunks[r].reset(); out.caches[r].reset(); return absl::OkStatus(); }).IgnoreError();
    return ran;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<TensorParallelGroup>> MakeTensorParallelGroup(
    const ModelConfig& config, const ModelWeights* weights, uint64_t seed, int num_gpus,
    const CudaRunnerOptions& options) {
  if (num_gpus < 1) return absl::InvalidArgumentError(absl::StrCat("tensor parallelism over ", num_gpus, " GPUs"));
  std::unique_ptr<TensorParallelGroup> group(new TensorParallelGroup());
  for (int r = 0; r < num_gpus; ++r) {  // first: a model that cannot be split is refused as such
    KVR_ASSIGN_OR_RETURN(TensorParallelShard s, TensorParallelShardOf(config, r, num_gpus));
    group->shards_.push_back(std::move(s));
  }
  const int have = CudaDeviceCount();
  if (num_gpus > have) {
    return absl::FailedPreconditionError(absl::StrCat("tensor parallelism over ", num_gpus, " GPUs: ", have,
                                                      " present"));
  }
  group->comms_.assign(num_gpus, nullptr);
  if (num_gpus > 1) {
    // No NVLink multicast (NVLS) for the all-reduces: it can take shared GPUs out of service
    // (the device machines run with it off). An explicit setting wins.
    setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
    std::vector<ncclComm_t> comms(num_gpus);
    std::vector<int> devs(num_gpus);
    for (int r = 0; r < num_gpus; ++r) devs[r] = r;
    const ncclResult_t res = ncclCommInitAll(comms.data(), num_gpus, devs.data());
    if (res != ncclSuccess) {
      return absl::InternalError(absl::StrCat("ncclCommInitAll over ", num_gpus, " GPUs: ", ncclGetErrorString(res)));
    }
    for (int r = 0; r < num_gpus; ++r) group->comms_[r] = comms[r];
  }
  for (int r = 0; r < num_gpus; ++r) {
    group->threads_.push_back(std::make_unique<DeviceWorker>([r] { cudaSetDevice(r); }));
  }
  // Each rank uploads (or generates) its shard on its own thread, all at once.
  group->runners_.resize(num_gpus);
  std::vector<absl::Status> results(num_gpus);
  absl::BlockingCounter done(num_gpus);
  for (int r = 0; r < num_gpus; ++r) {
    group->threads_[r]->Post([&, r] {
      CudaRunnerOptions o = options;
      o.tp_rank = r;
      o.tp_size = num_gpus;
      o.tp_comm = group->comms_[r];
      auto made = weights ? MakeCudaRunner(config, *weights, r, o) : MakeRandomCudaRunner(config, r, o, seed);
      if (made.ok()) {
        group->runners_[r] = std::move(*made);
      } else {
        results[r] = made.status();
      }
      done.DecrementCount();
    });
  }
  done.Wait();
  for (int r = 0; r < num_gpus; ++r) {
    if (!results[r].ok()) {
      return absl::Status(results[r].code(), absl::StrCat("tensor-parallel rank ", r, ": ", results[r].message()));
    }
  }
  KVR_LOG(INFO) << "tensor parallelism: " << config.model_type << " over " << num_gpus << " GPUs, "
                << group->shards_[0].q_heads << " query heads, " << group->shards_[0].kv_heads
                << " key-value heads and " << group->shards_[0].ff << " intermediate features per GPU";
  return group;
}

absl::StatusOr<std::unique_ptr<TensorParallelGroup>> MakeTensorParallelCudaRunners(
    const ModelConfig& config, const ModelWeights& weights, int num_gpus, const CudaRunnerOptions& options) {
  return MakeTensorParallelGroup(config, &weights, 0, num_gpus, options);
}

absl::StatusOr<std::unique_ptr<TensorParallelGroup>> MakeRandomTensorParallelCudaRunners(
    const ModelConfig& config, int num_gpus, const CudaRunnerOptions& options, uint64_t seed) {
  return MakeTensorParallelGroup(config, nullptr, seed, num_gpus, options);
}

}  // namespace kvr
