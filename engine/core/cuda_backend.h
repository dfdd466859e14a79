// CudaBackend: the CUDA backend as a module loaded at run time (dlopen).
//
// Why a module: cuBLASLt, NCCL and the CUDA runtime together reserve about 110 KB of static
// thread-local storage. Linked into kvrd, every thread of the process needs that much stack
// before its own, and libraries that start threads with small stacks fail: the metrics server
// (civetweb, 100 KB stacks) could not start at all. Loaded with dlopen, their TLS is dynamic and
// costs nothing until used. It also lets one kvrd binary run on machines without CUDA.
//
// The module (engine/cuda/module, libkvr_cuda_backend.so) exports one C symbol,
// kvr_cuda_backend_api, returning the table below. Same compiler, same build: C++ types cross.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/model_folder.h"
#include "engine/model/model_weights.h"
#include "engine/prefill/transport.h"
#include "engine/runtime/model_runner.h"

namespace kvr {

struct CudaBackendApi {
  int (*device_count)();  // 0, never an error, without a driver or a GPU
  // attn_impl: the prefill attention kernel, "mma", "cudnn" or "auto" (engine/cuda/cuda_runner.h).
  absl::StatusOr<std::unique_ptr<ModelRunner>> (*make_runner)(const ModelFolder& folder,
                                                              const ModelWeights& weights, int device,
                                                              const std::string& attn_impl);
  // transport: "nccl" (NCCL point-to-point), "copy" (copy engines, engine/cuda/peer) or "auto"
  // (copy where every pair of devices has peer access and NCCL_P2P_DISABLE is not 1, else nccl).
  // *chosen (if not null) receives "nccl" or "copy".
  absl::StatusOr<std::unique_ptr<ChainFabric>> (*make_fabric)(int devices, const std::string& transport,
                                                              std::string* chosen);
  void (*select_device)(int device);  // on a worker thread, before its first CUDA call
};

inline constexpr char kCudaBackendSymbol[] = "kvr_cuda_backend_api";

class CudaBackend {
 public:
  // Finds and loads the module: $KVR_CUDA_BACKEND if set, else beside the executable
  // (../lib/kvr/ and ./), else the build tree's copy. NotFound / FailedPrecondition say why
  // (no module built, no NVIDIA driver, a loader error).
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Load();
  ~CudaBackend();  // the module stays loaded for the life of the process: runners may outlive us

  const CudaBackendApi& api() const { return *api_; }
  const std::string& path() const { return path_; }

 private:
  CudaBackend() = default;
  void* handle_ = nullptr;
  const CudaBackendApi* api_ = nullptr;
  std::string path_;
};

}  // namespace kvr
