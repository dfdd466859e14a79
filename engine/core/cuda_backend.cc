#include "engine/core/cuda_backend.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvr {
namespace {

std::string ExecutableDir() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "" : exe.parent_path().string();
}

std::vector<std::string> Candidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("KVR_CUDA_BACKEND"); env && *env) paths.push_back(env);
  const std::string dir = ExecutableDir();
  if (!dir.empty()) {
    paths.push_back(dir + "/../lib/kvr/libkvr_cuda_backend.so");
    paths.push_back(dir + "/libkvr_cuda_backend.so");
  }
#ifdef KVR_CUDA_BACKEND_BUILD_PATH
  paths.push_back(KVR_CUDA_BACKEND_BUILD_PATH);
#endif
  return paths;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Load() {
  // Without the driver library there is no GPU to use: say so without loading the module.
  void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (!driver) return absl::FailedPreconditionError("no NVIDIA driver (libcuda.so.1 cannot be loaded)");
  dlclose(driver);
  std::vector<std::string> tried;
  for (const std::string& path : Candidates()) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      tried.push_back(path + " (absent)");
      continue;
    }
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      tried.push_back(absl::StrCat(path, " (", dlerror(), ")"));
      continue;
    }
    using ApiFn = const CudaBackendApi* (*)();
    auto fn = reinterpret_cast<ApiFn>(dlsym(handle, kCudaBackendSymbol));
    if (!fn) {
      tried.push_back(path + " (no " + kCudaBackendSymbol + ")");
      dlclose(handle);
      continue;
    }
    auto backend = std::unique_ptr<CudaBackend>(new CudaBackend());
    backend->handle_ = handle;
    backend->api_ = fn();
    backend->path_ = path;
    return backend;
  }
  return absl::NotFoundError(absl::StrCat("the CUDA backend module was not found or did not load; tried: ",
                                          absl::StrJoin(tried, "; ")));
}

CudaBackend::~CudaBackend() = default;

}  // namespace kvr
