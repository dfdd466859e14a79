// cuBLASLt wrapper. See gemm.h.
#include "kernels/gemm.h"

#include <cstdint>

#include "kernels/gemv.cuh"

namespace kvr::kernels {

#define KVR_CUBLAS_TRY(expr)                                      \
  do {                                                            \
    cublasStatus_t kvr_blas_st_ = (expr);                         \
    if (kvr_blas_st_ != CUBLAS_STATUS_SUCCESS) return kvr_blas_st_; \
  } while (0)

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

cublasStatus_t Gemm::Init(size_t workspace_bytes) {
  KVR_CUBLAS_TRY(cublasLtCreate(&handle_));
  if (cudaMalloc(&workspace_, workspace_bytes) != cudaSuccess) return CUBLAS_STATUS_ALLOC_FAILED;
  workspace_bytes_ = workspace_bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t Gemm::MakePlan(const Key& key, Plan* plan) {
  const auto [dt_i, yt_i, beta_nz, n, in, out] = key;
  const cudaDataType_t t = static_cast<DType>(dt_i) == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
  const cudaDataType_t ty = static_cast<GemmOut>(yt_i) == GemmOut::kF32 ? CUDA_R_32F : t;
  // Column-major view: y^T (out x n) = op(A) (out x in) * B (in x n), with A = W stored as
  // (in x out) column-major and transposed, B = x^T stored as (in x n) column-major.
  KVR_CUBLAS_TRY(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
  KVR_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT,
                                                sizeof(opT)));
  KVR_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN,
                                                sizeof(opN)));
  KVR_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&plan->a, t, in, out, in));
  KVR_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&plan->b, t, in, n, in));
  KVR_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&plan->c, ty, out, n, out));
  cublasLtMatmulPreference_t pref = nullptr;
  KVR_CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_bytes_;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                       sizeof(ws));
  cublasLtMatmulHeuristicResult_t res[1];
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, plan->desc, plan->a, plan->b,
                                                           plan->c, plan->c, pref, 1, res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  (void)beta_nz;
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  if (found == 0) return CUBLAS_STATUS_NOT_SUPPORTED;
  plan->algo = res[0].algo;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t Gemm::Linear(DType dt, const void* x, const void* w, int n, int in, int out,
                            void* y, GemmOut yt, float beta, cudaStream_t stream) {
  if (n <= 0) return CUBLAS_STATUS_SUCCESS;
  // Few rows (decode): the memory-bound GEMV kernel, when the shapes and alignment allow it.
  if (use_gemv_ && n <= kGemvMaxRows && in % 8 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
      (reinterpret_cast<uintptr_t>(w) & 15) == 0) {
    return Gemv(dt, x, w, n, in, out, y, yt == GemmOut::kF32, beta, stream) == cudaSuccess
               ? CUBLAS_STATUS_SUCCESS
               : CUBLAS_STATUS_EXECUTION_FAILED;
  }
  const Key key{static_cast<int>(dt), static_cast<int>(yt), beta != 0.f ? 1 : 0, n, in, out};
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    Plan plan;
    const cublasStatus_t st = MakePlan(key, &plan);
    if (st != CUBLAS_STATUS_SUCCESS) {
      if (plan.a) cublasLtMatrixLayoutDestroy(plan.a);
      if (plan.b) cublasLtMatrixLayoutDestroy(plan.b);
      if (plan.c) cublasLtMatrixLayoutDestroy(plan.c);
      if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
      return st;
    }
    it = plans_.emplace(key, plan).first;
  }
  const Plan& p = it->second;
  const float alpha = 1.f;
  return cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo,
                        workspace_, workspace_bytes_, stream);
}

const char* CublasStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_(other)";
  }
}

}  // namespace kvr::kernels
