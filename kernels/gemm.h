// Matrix products through cuBLASLt, for the linear layers: y = x W^T (+ beta * y).
//
// Legend: n = rows of x (tokens or sequences), in = input features, out = output features.
// Layouts (row-major, as torch.nn.Linear): x (n, in) T; W (out, in) T; y (n, out) in T, or in fp32
// when the product accumulates into the fp32 residual stream (beta = 1 fuses the residual add).
// fp32 accumulation always. One handle and one workspace per Gemm object; the descriptors and
// the algorithm of each shape are chosen once (cuBLASLt heuristic, best-ranked candidate that
// fits the workspace) and cached, so the per-call cost is one cublasLtMatmul, graph-capturable.
// Products of at most 4 rows (decode) go to the GEMV kernel of gemv.cuh instead.
// Not thread-safe: one Gemm per device worker. Host-only header; no engine headers.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "kernels/cuda_check.h"

namespace kvr::kernels {

enum class GemmOut { kSame, kF32 };  // y in the compute type T, or in fp32

class Gemm {
 public:
  Gemm() = default;
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  ~Gemm();

  // Creates the handle and a workspace of `workspace_bytes` on the current device.
  cublasStatus_t Init(size_t workspace_bytes = 64ull << 20);
  size_t workspace_bytes() const { return workspace_bytes_; }
  // Route products of at most kGemvMaxRows rows to the GEMV kernel (gemv.cuh); on by default.
  void set_use_gemv(bool on) { use_gemv_ = on; }

  // y (n, out) = x (n, in) W^T + beta * y.  x, W in T (dt); y in T or fp32 (yt).
  cublasStatus_t Linear(DType dt, const void* x, const void* w, int n, int in, int out, void* y,
                        GemmOut yt, float beta, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::tuple<int, int, int, int, int, int>;  // dt, yt, beta!=0, n, in, out
  cublasStatus_t MakePlan(const Key& key, Plan* plan);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  bool use_gemv_ = true;
  std::map<Key, Plan> plans_;
};

const char* CublasStatusName(cublasStatus_t s);

}  // namespace kvr::kernels
