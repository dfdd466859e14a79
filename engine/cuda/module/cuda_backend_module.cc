// libkvr_cuda_backend.so: the CUDA backend's entry points for engine/core/cuda_backend.h.
#include <cstdlib>
#include <string>

#include "engine/core/cuda_backend.h"
#include "engine/cuda/cuda_runner.h"
#include "engine/cuda/nccl/nccl_fabric.h"
#include "engine/cuda/peer/peer_fabric.h"
#include "engine/util/log.h"

namespace {

const kvr::CudaBackendApi kApi = {
    /*device_count=*/[] { return kvr::CudaDeviceCount(); },
    /*make_runner=*/
    [](const kvr::ModelFolder& folder, const kvr::ModelWeights& weights, int device, const std::string& attn_impl) {
      kvr::CudaRunnerOptions options;
      options.attn_impl = attn_impl;
      return kvr::MakeCudaRunner(folder, weights, device, options);
    },
    /*make_fabric=*/
    [](int devices, const std::string& transport, std::string* chosen) {
      std::string pick = transport;
      if (transport == "auto") {
        // Copy engines where they can reach every peer (measured faster: docs/benchmarks.md,
        // "Four GPUs, session 5"); NCCL when P2P is switched off for NCCL or a pair lacks access.
        const char* p2p_off = std::getenv("NCCL_P2P_DISABLE");
        const absl::Status peer = p2p_off != nullptr && std::string(p2p_off) == "1"
                                      ? absl::FailedPreconditionError("NCCL_P2P_DISABLE=1")
                                      : kvr::PeerCopyStatus(devices);
        const bool copy = peer.ok();
        if (!copy && devices > 1) KVR_LOG(INFO) << "transport auto: NCCL, not the copy engines (" << peer.message() << ")";
        pick = copy ? "copy" : "nccl";
      }
      if (chosen != nullptr) *chosen = pick;
      return pick == "copy" ? kvr::MakePeerCopyFabric(devices) : kvr::MakeNcclFabric(devices);
    },
    /*select_device=*/[](int device) { kvr::SelectCudaDevice(device); },
};

}  // namespace

extern "C" __attribute__((visibility("default"))) const kvr::CudaBackendApi* kvr_cuda_backend_api() {
  return &kApi;
}
