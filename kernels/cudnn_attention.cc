// cuDNN fused attention through the backend graph API. See cudnn_attention.h.
#include "kernels/cudnn_attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#if KVR_HAVE_CUDNN
#include <cudnn.h>
#endif

namespace kvr::kernels {

const char* AttnImplName(AttnImpl impl) {
  switch (impl) {
    case AttnImpl::kMma: return "mma";
    case AttnImpl::kCudnn: return "cudnn";
    case AttnImpl::kAuto: return "auto";
  }
  return "?";
}

bool ParseAttnImpl(const std::string& s, AttnImpl* impl) {
  if (s == "mma") *impl = AttnImpl::kMma;
  else if (s == "cudnn") *impl = AttnImpl::kCudnn;
  else if (s == "auto") *impl = AttnImpl::kAuto;
  else return false;
  return true;
}

namespace {

CudnnAttnStatus Fail(CudnnAttnStatus::Code code, std::string msg) {
  CudnnAttnStatus st;
  st.code = code;
  st.message = std::move(msg);
  return st;
}

// Shape-level checks that need no cuDNN: what the graph below expresses.
[[maybe_unused]] CudnnAttnStatus CheckShape(DType dt, const PrefillAttnParams& p) {
  using C = CudnnAttnStatus;
  if (dt != DType::kBF16 && dt != DType::kF16) return Fail(C::kUnsupported, "dtype not bf16/fp16");
  if (p.window > 0) return Fail(C::kUnsupported, "sliding window (window > 0) not expressed in the cuDNN graph");
  if (p.D != 64 && p.D != 128) return Fail(C::kUnsupported, "head size D must be 64 or 128");
  if (p.n <= 0 || p.s < 0 || p.Hq <= 0 || p.Hkv <= 0 || p.Hq % p.Hkv != 0)
    return Fail(C::kError, "invalid shape (n > 0, s >= 0, Hq % Hkv == 0 required)");
  auto misaligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) != 0; };
  if (misaligned(p.q) || misaligned(p.k) || misaligned(p.v) || misaligned(p.out))
    return Fail(C::kUnsupported, "q, k, v and out must be 16-byte aligned");
  return CudnnAttnStatus::Ok();
}

// x rounded up to a multiple of max(min_step, floorpow2(x) / 8).
int BucketUp(int x, int min_step) {
  if (x <= 0) return x;
  int pow2 = 1;
  while (pow2 <= x / 2) pow2 *= 2;  // floorpow2(x)
  const int64_t step = std::max(min_step, pow2 / 8);
  const int64_t up = (static_cast<int64_t>(x) + step - 1) / step * step;
  return up > std::numeric_limits<int>::max() ? x : static_cast<int>(up);
}

[[maybe_unused]] bool EnvIsOne(const char* name) {
  const char* e = std::getenv(name);
  return e != nullptr && e[0] == '1';
}

}  // namespace

int CudnnAttention::BucketQueries(int n) { return BucketUp(n, 64); }
int CudnnAttention::BucketKeys(int N) { return BucketUp(N, 128); }

std::vector<std::pair<int, int>> CudnnAttention::BucketGrid(int min_n, int max_n, int max_N) {
  std::vector<std::pair<int, int>> grid;
  max_n = std::min(max_n, max_N);
  if (min_n <= 0 || max_n <= 0 || max_N <= 0 || min_n > max_n) return grid;
  const int top_N = BucketKeys(max_N), top_n = BucketQueries(max_n);
  // Query buckets: n_b for the first n it serves (lo); its chunks have N >= lo keys.
  for (int lo = min_n; lo <= max_n;) {
    const int nb = BucketQueries(lo);
    for (int x = BucketKeys(lo); x <= top_N; x = BucketKeys(x + 1)) {
      grid.emplace_back(nb, x);
      if (x == std::numeric_limits<int>::max()) break;
    }
    if (nb >= top_n) break;
    lo = nb + 1;
  }
  return grid;
}

#if KVR_HAVE_CUDNN

bool CudnnAvailable() { return true; }
size_t CudnnRuntimeVersion() { return cudnnGetVersion(); }

namespace {

std::string StatusText(cudnnStatus_t st) {
  std::string s = cudnnGetErrorString(st);
  s += " (" + std::to_string(static_cast<int>(st)) + ")";
  char last[1024] = {0};
  cudnnGetLastErrorString(last, sizeof(last));
  if (last[0] != '\0') s += ": " + std::string(last);
  return s;
}

bool IsNotSupported(cudnnStatus_t st) {
  return CUDNN_STATUS_CATEGORY(st) == CUDNN_STATUS_NOT_SUPPORTED;
}

// Owns one backend descriptor.
struct Desc {
  cudnnBackendDescriptor_t d = nullptr;
  Desc() = default;
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  Desc(Desc&& o) noexcept : d(o.d) { o.d = nullptr; }
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d, o.d);
    return *this;
  }
  ~Desc() {
    if (d != nullptr) cudnnBackendDestroyDescriptor(d);
  }
};

// Builds descriptors, keeping every one alive in `keep`; the first failure is recorded (with
// the step named) and every later call does nothing, so a build reads as straight-line code.
class Builder {
 public:
  explicit Builder(std::vector<Desc>* keep) : keep_(keep) {}
  bool ok() const { return status_.ok(); }
  const CudnnAttnStatus& status() const { return status_; }

  cudnnBackendDescriptor_t Make(cudnnBackendDescriptorType_t type, const std::string& what) {
    if (!ok()) return nullptr;
    Desc d;
    const cudnnStatus_t st = cudnnBackendCreateDescriptor(type, &d.d);
    if (st != CUDNN_STATUS_SUCCESS) {
      Record(st, "create " + what);
      return nullptr;
    }
    keep_->push_back(std::move(d));
    return keep_->back().d;
  }
  void Set(cudnnBackendDescriptor_t desc, cudnnBackendAttributeName_t attr,
           cudnnBackendAttributeType_t type, int64_t count, const void* value,
           const std::string& what) {
    if (!ok()) return;
    const cudnnStatus_t st = cudnnBackendSetAttribute(desc, attr, type, count, value);
    if (st != CUDNN_STATUS_SUCCESS) Record(st, "set " + what);
  }
  void SetDesc(cudnnBackendDescriptor_t desc, cudnnBackendAttributeName_t attr,
               cudnnBackendDescriptor_t value, const std::string& what) {
    Set(desc, attr, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, what);
  }
  void Finalize(cudnnBackendDescriptor_t desc, const std::string& what) {
    if (!ok()) return;
    const cudnnStatus_t st = cudnnBackendFinalize(desc);
    if (st != CUDNN_STATUS_SUCCESS) Record(st, "finalize " + what);
  }

  // A 4-D tensor. by_value: a host scalar given in the variant pack at execution.
  cudnnBackendDescriptor_t Tensor(const char* name, int64_t uid, cudnnDataType_t dt,
                                  const int64_t (&dims)[4], const int64_t (&strides)[4],
                                  bool is_virtual, bool by_value = false) {
    const std::string w = std::string("tensor ") + name + " (uid " + std::to_string(uid) + ")";
    cudnnBackendDescriptor_t t = Make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, w);
    const int64_t align = 16;
    Set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, w + " DATA_TYPE");
    Set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims, w + " DIMENSIONS");
    Set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides, w + " STRIDES");
    Set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, w + " UNIQUE_ID");
    Set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, w + " BYTE_ALIGNMENT");
    if (is_virtual) {
      const bool v = true;
      Set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v, w + " IS_VIRTUAL");
    }
    if (by_value) {
      const bool v = true;
      Set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &v, w + " IS_BY_VALUE");
    }
    Finalize(t, w);
    return t;
  }

  // y = mode(x [, b] [, t]); axis >= 0 sets CUDNN_ATTR_POINTWISE_AXIS (GEN_INDEX only).
  cudnnBackendDescriptor_t Pointwise(const char* name, cudnnPointwiseMode_t mode,
                                     cudnnDataType_t prec, cudnnBackendDescriptor_t x,
                                     cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                                     cudnnBackendDescriptor_t y, int64_t axis = -1) {
    const std::string w = std::string("pointwise ") + name;
    cudnnBackendDescriptor_t pw = Make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, w + " descriptor");
    Set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, w + " MODE");
    Set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, w + " MATH_PREC");
    if (axis >= 0) Set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, w + " AXIS");
    Finalize(pw, w + " descriptor");
    cudnnBackendDescriptor_t op = Make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, w + " operation");
    SetDesc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, w + " PW_DESCRIPTOR");
    SetDesc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, w + " XDESC");
    if (b != nullptr) SetDesc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b, w + " BDESC");
    if (t != nullptr) SetDesc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t, w + " TDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, w + " YDESC");
    const float alpha = 1.f;
    Set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &alpha, w + " ALPHA1");
    if (b != nullptr) Set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &alpha, w + " ALPHA2");
    Finalize(op, w + " operation");
    ops_.push_back(op);
    return op;
  }

  cudnnBackendDescriptor_t Matmul(const char* name, cudnnBackendDescriptor_t a,
                                  cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c) {
    const std::string w = std::string("matmul ") + name;
    cudnnBackendDescriptor_t mm = Make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, w + " descriptor");
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    Set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, w + " COMP_TYPE");
    Finalize(mm, w + " descriptor");
    cudnnBackendDescriptor_t op = Make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, w + " operation");
    SetDesc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, w + " ADESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, w + " BDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, w + " CDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm, w + " DESC");
    Finalize(op, w + " operation");
    ops_.push_back(op);
    return op;
  }

  cudnnBackendDescriptor_t Reduction(const char* name, cudnnReduceTensorOp_t mode,
                                     cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    const std::string w = std::string("reduction ") + name;
    cudnnBackendDescriptor_t rd = Make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, w + " descriptor");
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    Set(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, w + " OPERATOR");
    Set(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, w + " COMP_TYPE");
    Finalize(rd, w + " descriptor");
    cudnnBackendDescriptor_t op = Make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, w + " operation");
    SetDesc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, w + " XDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, w + " YDESC");
    SetDesc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, rd, w + " DESC");
    Finalize(op, w + " operation");
    ops_.push_back(op);
    return op;
  }

  const std::vector<cudnnBackendDescriptor_t>& ops() const { return ops_; }

  void Record(cudnnStatus_t st, const std::string& what) {
    if (!ok()) return;
    status_ = Fail(IsNotSupported(st) ? CudnnAttnStatus::kUnsupported : CudnnAttnStatus::kError,
                   "cuDNN " + what + ": " + StatusText(st));
  }

 private:
  std::vector<Desc>* keep_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  CudnnAttnStatus status_;
};

// Unique ids of the graph's non-virtual tensors (the variant pack) and its virtual ones.
enum : int64_t {
  kUidQ = 1, kUidK = 2, kUidV = 3, kUidO = 4, kUidScale = 5, kUidSkv = 6, kUidSq = 7, kUidNegInf = 8,
  kUidSeqQ = 9, kUidSeqKv = 10,  // padding-mask variant: device int32 (1, 1, 1, 1) tensors
  kUidRowM = 120, kUidColM, kUidPad, kUidS1P,
  kUidS = 101, kUidS1, kUidRow, kUidCol, kUidRow1, kUidRow2, kUidMask, kUidS2, kUidMax, kUidSub,
  kUidExp, kUidSum, kUidLog, kUidStats, kUidP,
};
const int64_t kPackUids[] = {kUidQ, kUidK, kUidV, kUidO, kUidScale, kUidSkv, kUidSq, kUidNegInf};
const int64_t kPackUidsPad[] = {kUidQ, kUidK, kUidV, kUidO, kUidScale, kUidNegInf, kUidSeqQ, kUidSeqKv};

}  // namespace

struct CudnnAttention::Impl {
  using Key = std::tuple<int, int, int, int, int, int>;  // dt, Hq, Hkv, D, n, N
  struct Plan {
    std::vector<Desc> keep;  // every descriptor the plan was built from
    cudnnBackendDescriptor_t plan = nullptr;
    int64_t workspace = 0;
  };

  cudnnHandle_t handle = nullptr;
  int device = -1;
  size_t max_workspace = 0;
  void* workspace = nullptr;
  bool verbose = false;
  bool bucketing = EnvIsOne("KVR_CUDNN_BUCKETS");  // off by default: see the header
  // KVR_CUDNN_PADMASK=1 (experimental, for measurement): the graph adds cuDNN's padding mask
  // (row < seq_q and column < seq_kv, per-batch device int32 tensors) and takes the causal
  // offset from those tensors, as the frontend does for padded batches, so that an engine which
  // recognises it may skip padded tiles. Same soundness conditions as the default graph.
  bool padmask = EnvIsOne("KVR_CUDNN_PADMASK");
  int32_t* seq_dev = nullptr;  // padmask: seq_q at [0], seq_kv at [4] (16-byte slots), device
  Stats stats;
  std::map<Key, std::shared_ptr<Plan>> plans;
  std::map<Key, CudnnAttnStatus> failed;
  bool dynamic_ok_ = true;         // dynamic-shape plans with a kernel cache still worth trying
  int topology_ = -1;              // graph that worked: 1 with the stats branch, 0 without, -1 none yet
  Desc kcache_;                    // CUDNN_BACKEND_KERNEL_CACHE_DESCRIPTOR, once built
  std::shared_ptr<Plan> kcache_graph_;  // owns the operation graph kcache_ was built on

  ~Impl() {
    int cur = -1;
    cudaGetDevice(&cur);
    if (device >= 0 && cur != device) cudaSetDevice(device);
    if (handle != nullptr) cudaDeviceSynchronize();  // enqueued work may still use a plan
    plans.clear();
    kcache_ = Desc();
    kcache_graph_.reset();
    if (workspace != nullptr) cudaFree(workspace);
    if (seq_dev != nullptr) cudaFree(seq_dev);
    if (handle != nullptr) cudnnDestroy(handle);
    if (device >= 0 && cur >= 0 && cur != device) cudaSetDevice(cur);
  }

  // The operation graph for one exact shape; with_stats adds the (unused) log-sum-exp branch of
  // the frontend's inference softmax.
  CudnnAttnStatus BuildGraph(DType dt, const Key& key, bool with_stats, bool dynamic, Plan* plan,
                             cudnnBackendDescriptor_t* graph) {
    const auto [dt_i, Hq_i, Hkv_i, D_i, n_i, N_i] = key;
    (void)dt_i;
    const int64_t Hq = Hq_i, Hkv = Hkv_i, D = D_i, n = n_i, N = N_i;
    const cudnnDataType_t io = dt == DType::kBF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT, i32 = CUDNN_DATA_INT32, b8 = CUDNN_DATA_BOOLEAN;
    Builder b(&plan->keep);
    const int64_t one[4] = {1, 1, 1, 1};
    const int64_t q_dims[4] = {1, Hq, n, D}, q_str[4] = {n * Hq * D, D, Hq * D, 1};
    const int64_t kt_dims[4] = {1, Hkv, D, N}, kt_str[4] = {N * Hkv * D, D, 1, Hkv * D};
    const int64_t v_dims[4] = {1, Hkv, N, D}, v_str[4] = {N * Hkv * D, D, Hkv * D, 1};
    const int64_t s_dims[4] = {1, Hq, n, N}, s_str[4] = {Hq * n * N, n * N, N, 1};
    const int64_t r_dims[4] = {1, Hq, n, 1}, r_str[4] = {Hq * n, n, 1, 1};

    auto q = b.Tensor("Q", kUidQ, io, q_dims, q_str, false);
    auto kt = b.Tensor("K^T", kUidK, io, kt_dims, kt_str, false);
    auto v = b.Tensor("V", kUidV, io, v_dims, v_str, false);
    auto o = b.Tensor("O", kUidO, io, q_dims, q_str, false);
    auto scale = b.Tensor("scale", kUidScale, f32, one, one, false, true);
    cudnnBackendDescriptor_t skv = nullptr, sq = nullptr;
    if (!padmask) {
      skv = b.Tensor("s_kv", kUidSkv, i32, one, one, false, true);
      sq = b.Tensor("s_q", kUidSq, i32, one, one, false, true);
    }
    auto neg_inf = b.Tensor("-inf", kUidNegInf, f32, one, one, false, true);

    auto s = b.Tensor("S", kUidS, f32, s_dims, s_str, true);
    auto s1 = b.Tensor("S*scale", kUidS1, f32, s_dims, s_str, true);
    auto row = b.Tensor("row", kUidRow, i32, s_dims, s_str, true);
    auto col = b.Tensor("col", kUidCol, i32, s_dims, s_str, true);
    auto row1 = b.Tensor("row+s_kv", kUidRow1, i32, s_dims, s_str, true);
    auto row2 = b.Tensor("row+s_kv-s_q", kUidRow2, i32, s_dims, s_str, true);
    auto mask = b.Tensor("mask", kUidMask, b8, s_dims, s_str, true);
    auto s2 = b.Tensor("S masked", kUidS2, f32, s_dims, s_str, true);
    auto mx = b.Tensor("max", kUidMax, f32, r_dims, r_str, true);
    auto sub = b.Tensor("S-max", kUidSub, f32, s_dims, s_str, true);
    auto ex = b.Tensor("exp", kUidExp, f32, s_dims, s_str, true);
    auto sum = b.Tensor("sum", kUidSum, f32, r_dims, r_str, true);
    auto p = b.Tensor("P", kUidP, io, s_dims, s_str, true);

    b.Matmul("bmm1 Q K^T", q, kt, s);
    b.Pointwise("attn_scale MUL", CUDNN_POINTWISE_MUL, f32, s, scale, nullptr, s1);
    b.Pointwise("gen_row_index", CUDNN_POINTWISE_GEN_INDEX, f32, s1, nullptr, nullptr, row, 2);
    b.Pointwise("gen_col_index", CUDNN_POINTWISE_GEN_INDEX, f32, s1, nullptr, nullptr, col, 3);
    cudnnBackendDescriptor_t masked_in = s1;
    if (padmask) {
      // seq_q / seq_kv device tensors replace the by-value scalars (not in the graph then).
      sq = b.Tensor("seq_q", kUidSeqQ, i32, one, one, false);
      skv = b.Tensor("seq_kv", kUidSeqKv, i32, one, one, false);
      auto rowm = b.Tensor("row<seq_q", kUidRowM, b8, s_dims, s_str, true);
      auto colm = b.Tensor("col<seq_kv", kUidColM, b8, s_dims, s_str, true);
      auto pad = b.Tensor("padding mask", kUidPad, b8, s_dims, s_str, true);
      auto s1p = b.Tensor("S padded", kUidS1P, f32, s_dims, s_str, true);
      b.Pointwise("row<seq_q CMP_LT", CUDNN_POINTWISE_CMP_LT, b8, row, sq, nullptr, rowm);
      b.Pointwise("col<seq_kv CMP_LT", CUDNN_POINTWISE_CMP_LT, b8, col, skv, nullptr, colm);
      b.Pointwise("padding LOGICAL_AND", CUDNN_POINTWISE_LOGICAL_AND, b8, rowm, colm, nullptr, pad);
      b.Pointwise("padding BINARY_SELECT", CUDNN_POINTWISE_BINARY_SELECT, f32, s1, neg_inf, pad, s1p);
      masked_in = s1p;
    }
    b.Pointwise("row+s_kv ADD", CUDNN_POINTWISE_ADD, i32, row, skv, nullptr, row1);
    b.Pointwise("row-s_q SUB", CUDNN_POINTWISE_SUB, i32, row1, sq, nullptr, row2);
    b.Pointwise("row>=col CMP_GE", CUDNN_POINTWISE_CMP_GE, b8, row2, col, nullptr, mask);
    b.Pointwise("causal BINARY_SELECT", CUDNN_POINTWISE_BINARY_SELECT, f32, masked_in, neg_inf, mask, s2);
    b.Reduction("softmax max", CUDNN_REDUCE_TENSOR_MAX, s2, mx);
    b.Pointwise("softmax SUB", CUDNN_POINTWISE_SUB, f32, s2, mx, nullptr, sub);
    b.Pointwise("softmax EXP", CUDNN_POINTWISE_EXP, f32, sub, nullptr, nullptr, ex);
    b.Reduction("softmax sum", CUDNN_REDUCE_TENSOR_ADD, ex, sum);
    if (with_stats) {
      auto lg = b.Tensor("log(sum)", kUidLog, f32, r_dims, r_str, true);
      auto stats_t = b.Tensor("stats", kUidStats, f32, r_dims, r_str, true);
      b.Pointwise("softmax stats LOG", CUDNN_POINTWISE_LOG, f32, sum, nullptr, nullptr, lg);
      b.Pointwise("softmax stats ADD", CUDNN_POINTWISE_ADD, f32, mx, lg, nullptr, stats_t);
    }
    b.Pointwise("softmax DIV", CUDNN_POINTWISE_DIV, f32, ex, sum, nullptr, p);
    b.Matmul("bmm2 P V", p, v, o);

    cudnnBackendDescriptor_t g = b.Make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    const std::vector<cudnnBackendDescriptor_t> ops = b.ops();
    b.Set(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
          static_cast<int64_t>(ops.size()), ops.data(), "operation graph OPS");
    b.Set(g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "operation graph HANDLE");
    if (dynamic) {
      const bool on = true;
      b.Set(g, CUDNN_ATTR_OPERATIONGRAPH_IS_DYNAMIC_SHAPE_ENABLED, CUDNN_TYPE_BOOLEAN, 1, &on,
            "operation graph IS_DYNAMIC_SHAPE_ENABLED");
    }
    b.Finalize(g, "operation graph (" + std::to_string(ops.size()) + " operations)");
    *graph = g;
    return b.status();
  }

  // " engine <global index>[, runtime-compiled]" of an engine configuration, for the log.
  static std::string EngineNote(cudnnBackendDescriptor_t cfg) {
    Desc engine;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &engine.d) != CUDNN_STATUS_SUCCESS) return "";
    int64_t cnt = 0;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cnt,
                                 &engine.d) != CUDNN_STATUS_SUCCESS)
      return "";
    std::string note;
    int64_t index = -1;
    if (cudnnBackendGetAttribute(engine.d, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &cnt, &index) ==
        CUDNN_STATUS_SUCCESS)
      note += ", engine " + std::to_string(index);
    cudnnBackendBehaviorNote_t notes[16];
    int64_t nn = 0;
    if (cudnnBackendGetAttribute(engine.d, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE, 16, &nn,
                                 notes) == CUDNN_STATUS_SUCCESS) {
      for (int64_t j = 0; j < std::min<int64_t>(nn, 16); ++j)
        if (notes[j] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) note += ", runtime-compiled";
    }
    return note;
  }

  // Heuristics (mode A, then fallback), then the first engine configuration that finalizes
  // into a plan within the workspace limit.
  CudnnAttnStatus ChoosePlan(cudnnBackendDescriptor_t graph, cudnnBackendDescriptor_t kcache, Plan* plan,
                             std::string* engine_note) {
    std::string tried;
    auto note = [&tried](const std::string& m) {  // append, not "[" + m: GCC 12 -Wrestrict noise
      tried.append("[");
      tried.append(m);
      tried.append("] ");
    };
    int total = 0;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      const char* mode_name = mode == CUDNN_HEUR_MODE_A ? "heuristics mode A" : "heuristics fallback";
      Builder b(&plan->keep);
      cudnnBackendDescriptor_t heur = b.Make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, mode_name);
      b.SetDesc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, std::string(mode_name) + " OPERATION_GRAPH");
      b.Set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, std::string(mode_name) + " MODE");
      b.Finalize(heur, mode_name);
      if (!b.ok()) {
        note(b.status().message);
        continue;
      }
      int64_t count = 0;
      cudnnStatus_t st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                  CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
      if (st != CUDNN_STATUS_SUCCESS) {
        note(std::string(mode_name) + " RESULTS count: " + StatusText(st));
        continue;
      }
      if (count <= 0) {
        note(std::string(mode_name) + ": 0 engine configurations");
        continue;
      }
      std::vector<cudnnBackendDescriptor_t> cfgs(static_cast<size_t>(count));
      for (auto& c : cfgs) c = b.Make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine configuration");
      if (!b.ok()) return b.status();
      int64_t got = 0;
      st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                    count, &got, cfgs.data());
      if (st != CUDNN_STATUS_SUCCESS) {
        note(std::string(mode_name) + " RESULTS: " + StatusText(st));
        continue;
      }
      total += static_cast<int>(got);
      for (int64_t i = 0; i < got; ++i) {
        Builder pb(&plan->keep);
        const std::string w = std::string(mode_name) + " config " + std::to_string(i) + " of " + std::to_string(got);
        cudnnBackendDescriptor_t ep = pb.Make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan, " + w);
        pb.Set(ep, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "execution plan HANDLE, " + w);
        pb.SetDesc(ep, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfgs[static_cast<size_t>(i)],
                   "execution plan ENGINE_CONFIG, " + w);
        if (kcache != nullptr) pb.SetDesc(ep, CUDNN_ATTR_EXECUTION_PLAN_KERNEL_CACHE, kcache, "execution plan KERNEL_CACHE, " + w);
        pb.Finalize(ep, "execution plan, " + w);
        int64_t ws = 0;
        if (pb.ok()) {
          int64_t cnt = 0;
          st = cudnnBackendGetAttribute(ep, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &cnt, &ws);
          if (st != CUDNN_STATUS_SUCCESS) pb.Record(st, "execution plan WORKSPACE_SIZE, " + w);
        }
        if (!pb.ok()) {
          note(pb.status().message);
          continue;
        }
        if (ws > static_cast<int64_t>(max_workspace)) {
          note(w + ": workspace " + std::to_string(ws) + " bytes > limit");
          continue;
        }
        plan->plan = ep;
        plan->workspace = ws;
        *engine_note = w;
        if (verbose) *engine_note += EngineNote(cfgs[static_cast<size_t>(i)]);
        return CudnnAttnStatus::Ok();
      }
    }
    return Fail(CudnnAttnStatus::kUnsupported,
                "cuDNN: no engine configuration finalized (" + std::to_string(total) + " offered) " + tried);
  }

  // The kernel cache of dynamic-shape plans: built on the first dynamic operation graph (kept
  // alive here), then shared by every later plan, so that a new (n, N) reuses compiled kernels.
  CudnnAttnStatus KernelCacheFor(cudnnBackendDescriptor_t graph, cudnnBackendDescriptor_t* kcache) {
    if (kcache_.d == nullptr) {
      Desc kc;
      cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_KERNEL_CACHE_DESCRIPTOR, &kc.d);
      if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(kc.d, CUDNN_ATTR_KERNEL_CACHE_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                      &graph);
      if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(kc.d);
      if (st != CUDNN_STATUS_SUCCESS)
        return Fail(IsNotSupported(st) ? CudnnAttnStatus::kUnsupported : CudnnAttnStatus::kError,
                    "cuDNN kernel cache (create, OPERATION_GRAPH, finalize): " + StatusText(st));
      kcache_ = std::move(kc);
    }
    *kcache = kcache_.d;
    return CudnnAttnStatus::Ok();
  }

  // Tries, in order: dynamic shapes with the kernel cache (while that works), then a static
  // graph; the frontend's graph with the statistic branch, then without it (once one topology
  // has worked, only that one). Then grows the workspace if the plan needs more.
  CudnnAttnStatus Build(DType dt, const Key& key, std::shared_ptr<Plan>* out) {
    CudnnAttnStatus last;
    std::vector<std::pair<bool, bool>> attempts;  // (with_stats, dynamic)
    for (bool with_stats : {true, false}) {
      if (topology_ >= 0 && with_stats != (topology_ == 1)) continue;
      if (dynamic_ok_) attempts.emplace_back(with_stats, true);
      attempts.emplace_back(with_stats, false);
    }
    bool dynamic_failed = false;
    for (const auto& [with_stats, dynamic] : attempts) {
      auto plan = std::make_shared<Plan>();
      cudnnBackendDescriptor_t graph = nullptr, kcache = nullptr;
      CudnnAttnStatus st = BuildGraph(dt, key, with_stats, dynamic, plan.get(), &graph);
      const bool new_kcache = dynamic && kcache_.d == nullptr;
      if (st.ok() && dynamic) st = KernelCacheFor(graph, &kcache);
      std::string note;
      if (st.ok()) st = ChoosePlan(graph, kcache, plan.get(), &note);
      if (st.ok() && new_kcache) kcache_graph_ = plan;  // the kernel cache refers to this graph
      if (!st.ok() && new_kcache && kcache_.d != nullptr) {
        kcache_ = Desc();  // built on a graph that led nowhere: rebuild on the next one
      }
      if (st.ok()) {
        if (dynamic_failed) {
          dynamic_ok_ = false;
          std::fprintf(stderr, "cudnn attention: dynamic-shape plans failed (%s); building static plans from now on\n",
                       last.message.c_str());
        }
        topology_ = with_stats ? 1 : 0;
        if (plan->workspace > 0 && static_cast<size_t>(plan->workspace) > stats.workspace_bytes) {
          if (workspace != nullptr) {
            // The old workspace may be in use by enqueued work on this device.
            cudaDeviceSynchronize();
            cudaFree(workspace);
            workspace = nullptr;
            stats.workspace_bytes = 0;
          }
          const cudaError_t e = cudaMalloc(&workspace, static_cast<size_t>(plan->workspace));
          if (e != cudaSuccess) {
            workspace = nullptr;
            return Fail(CudnnAttnStatus::kError, "cudaMalloc of the cuDNN workspace (" +
                                                     std::to_string(plan->workspace) +
                                                     " bytes): " + cudaGetErrorString(e));
          }
          stats.workspace_bytes = static_cast<size_t>(plan->workspace);
        }
        if (verbose)
          std::fprintf(stderr, "cudnn attention: plan for %s Hq=%d Hkv=%d D=%d n=%d N=%d: %s graph, %s shapes%s, "
                       "workspace %lld bytes\n",
                       dt == DType::kBF16 ? "bf16" : "fp16", std::get<1>(key), std::get<2>(key),
                       std::get<3>(key), std::get<4>(key), std::get<5>(key),
                       with_stats ? "with-stats" : "no-stats", dynamic ? "dynamic (kernel cache)" : "static",
                       note.c_str(), static_cast<long long>(plan->workspace));
        *out = std::move(plan);
        return st;
      }
      if (dynamic) dynamic_failed = true;
      last.message += std::string(last.message.empty() ? "" : " | then ") + "[" +
                      (with_stats ? "with-stats" : "no-stats") + (dynamic ? ", dynamic" : ", static") + "] " +
                      st.message;
      last.code = (last.code == CudnnAttnStatus::kError || st.code == CudnnAttnStatus::kError)
                      ? CudnnAttnStatus::kError
                      : CudnnAttnStatus::kUnsupported;
    }
    return last;
  }

  std::pair<int, int> PlanDims(const PrefillAttnParams& p) const {
    const int N = p.s + p.n;
    int n_p = p.n, N_p = N;
    if (bucketing && p.n > 0) {
      const int nb = CudnnAttention::BucketQueries(p.n);
      if (p.q_rows >= nb) n_p = nb;
      const int Nb = CudnnAttention::BucketKeys(N);
      if (p.kv_tail_finite && p.kv_rows >= Nb) N_p = Nb;
    }
    return {n_p, N_p};
  }

  Key KeyOf(DType dt, const PrefillAttnParams& p) const {
    const auto [n_p, N_p] = PlanDims(p);
    return Key{static_cast<int>(dt), p.Hq, p.Hkv, p.D, n_p, N_p};
  }

  CudnnAttnStatus Get(DType dt, const PrefillAttnParams& p, Plan** plan, double* build_ms) {
    if (handle == nullptr) return Fail(CudnnAttnStatus::kError, "CudnnAttention not initialized");
    CudnnAttnStatus st = CheckShape(dt, p);
    if (!st.ok()) {
      if (build_ms != nullptr) *build_ms = 0;
      return st;
    }
    return GetKey(dt, KeyOf(dt, p), plan, build_ms, /*may_evict=*/true);
  }

  // The plan of `key`, built if missing. may_evict: a full cache is emptied first (else the build
  // is refused with kUnsupported).
  CudnnAttnStatus GetKey(DType dt, const Key& key, Plan** plan, double* build_ms, bool may_evict) {
    if (build_ms != nullptr) *build_ms = 0;
    CudnnAttnStatus st;
    if (auto it = plans.find(key); it != plans.end()) {
      *plan = it->second.get();
      return st;
    }
    if (auto it = failed.find(key); it != failed.end()) return it->second;
    if (plans.size() >= static_cast<size_t>(kMaxPlans)) {
      if (!may_evict) return Fail(CudnnAttnStatus::kUnsupported, "plan cache full");
      // Bound the cache (each plan may hold compiled code); wait for work that may use a plan.
      cudaDeviceSynchronize();
      plans.clear();
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::shared_ptr<Plan> built;
    st = Build(dt, key, &built);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    stats.build_ms_last = ms;
    stats.build_ms_total += ms;
    if (build_ms != nullptr) *build_ms = ms;
    if (!st.ok()) {
      ++stats.shapes_failed;
      if (verbose)
        std::fprintf(stderr, "cudnn attention: no plan for %s Hq=%d Hkv=%d D=%d n=%d N=%d after %.1f ms: %s\n",
                     dt == DType::kBF16 ? "bf16" : "fp16", std::get<1>(key), std::get<2>(key), std::get<3>(key),
                     std::get<4>(key), std::get<5>(key), ms, st.message.c_str());
      failed[key] = st;
      return st;
    }
    ++stats.plans_built;
    if (verbose)
      std::fprintf(stderr, "cudnn attention: built in %.1f ms (%d plans cached)\n", ms,
                   static_cast<int>(plans.size()) + 1);
    *plan = built.get();
    plans[key] = std::move(built);
    return st;
  }
};

CudnnAttention::CudnnAttention() : impl_(std::make_unique<Impl>()) {}
CudnnAttention::~CudnnAttention() = default;

CudnnAttnStatus CudnnAttention::Init(size_t max_workspace_bytes) {
  if (impl_->handle != nullptr) return CudnnAttnStatus::Ok();
  cudaGetDevice(&impl_->device);
  const cudnnStatus_t st = cudnnCreate(&impl_->handle);
  if (st != CUDNN_STATUS_SUCCESS) {
    impl_->handle = nullptr;
    return Fail(CudnnAttnStatus::kError, "cudnnCreate: " + StatusText(st));
  }
  impl_->max_workspace = max_workspace_bytes;
  // KVR_CUDNN_STATIC=1: exact static plans only (no dynamic shapes, no kernel cache).
  if (EnvIsOne("KVR_CUDNN_STATIC")) impl_->dynamic_ok_ = false;
  return CudnnAttnStatus::Ok();
}

bool CudnnAttention::initialized() const { return impl_->handle != nullptr; }

CudnnAttnStatus CudnnAttention::Prepare(DType dt, const PrefillAttnParams& p, double* build_ms) {
  Impl::Plan* plan = nullptr;
  return impl_->Get(dt, p, &plan, build_ms);
}

CudnnAttnStatus CudnnAttention::Prewarm(DType dt, int Hq, int Hkv, int D,
                                        const std::vector<std::pair<int, int>>& buckets,
                                        const PrewarmProgress& progress, PrewarmReport* report) {
  PrewarmReport rep;
  rep.requested = static_cast<int>(buckets.size());
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&t0] {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  CudnnAttnStatus first;
  if (impl_->handle == nullptr) {
    first = Fail(CudnnAttnStatus::kError, "CudnnAttention not initialized");
  } else if (!impl_->bucketing) {
    first = Fail(CudnnAttnStatus::kUnsupported, "bucketing is off: nothing to prewarm");
  } else {
    int done = 0;
    for (const auto& [n_b, N_b] : buckets) {
      PrefillAttnParams p;  // null pointers: only the shape matters for a plan
      p.n = n_b;
      p.s = N_b - n_b;
      p.Hq = Hq;
      p.Hkv = Hkv;
      p.D = D;
      CudnnAttnStatus st = p.s >= 0 ? CheckShape(dt, p)
                                    : Fail(CudnnAttnStatus::kError, "bucket with N_b < n_b");
      const Impl::Key key{static_cast<int>(dt), Hq, Hkv, D, n_b, N_b};
      const bool had = impl_->plans.count(key) > 0 || impl_->failed.count(key) > 0;
      if (st.ok()) {
        if (!had && impl_->plans.size() >= static_cast<size_t>(kMaxPlans)) {
          ++rep.skipped;
          st = Fail(CudnnAttnStatus::kUnsupported, "plan cache full");
        } else {
          Impl::Plan* plan = nullptr;
          double ms = 0;
          st = impl_->GetKey(dt, key, &plan, &ms, /*may_evict=*/false);
          if (had) ++rep.cached;
          else if (st.ok()) ++rep.built;
        }
      }
      if (!st.ok() && st.message != "plan cache full") ++rep.failed;
      if (!st.ok() && first.ok()) first = st;
      ++done;
      if (progress) progress(done, rep.requested, elapsed());
    }
  }
  rep.total_ms = elapsed();
  if (!first.ok()) rep.first_error = first.message;
  if (report != nullptr) *report = rep;
  return first;
}

bool CudnnAttention::HasPlan(DType dt, const PrefillAttnParams& p) const {
  if (impl_->handle == nullptr || !CheckShape(dt, p).ok()) return false;
  return impl_->plans.count(impl_->KeyOf(dt, p)) > 0;
}

std::pair<int, int> CudnnAttention::PlanDims(const PrefillAttnParams& p) const { return impl_->PlanDims(p); }
void CudnnAttention::set_bucketing(bool on) { impl_->bucketing = on; }
bool CudnnAttention::bucketing() const { return impl_->bucketing; }

CudnnAttnStatus CudnnAttention::Run(DType dt, const PrefillAttnParams& p, cudaStream_t stream) {
  Impl::Plan* plan = nullptr;
  CudnnAttnStatus st = impl_->Get(dt, p, &plan, nullptr);
  if (!st.ok()) return st;
  cudnnStatus_t cs = cudnnSetStream(impl_->handle, stream);
  if (cs != CUDNN_STATUS_SUCCESS) return Fail(CudnnAttnStatus::kError, "cudnnSetStream: " + StatusText(cs));
  // Pass-by-value scalars, read on the host at cudnnBackendExecute (16-byte aligned as declared).
  alignas(16) float scale = p.scale;
  alignas(16) int32_t s_kv = p.s + p.n;
  alignas(16) int32_t s_q = p.n;
  alignas(16) float neg_inf = -std::numeric_limits<float>::infinity();
  void* ptrs[] = {const_cast<void*>(p.q), const_cast<void*>(p.k), const_cast<void*>(p.v), p.out,
                  &scale, &s_kv, &s_q, &neg_inf};
  static_assert(sizeof(ptrs) / sizeof(ptrs[0]) == sizeof(kPackUids) / sizeof(kPackUids[0]));
  static_assert(sizeof(kPackUidsPad) == sizeof(kPackUids));
  const int64_t* uids = kPackUids;
  if (impl_->padmask) {
    // {seq_q, seq_kv} to the device, ordered on `stream` before the execution (a pageable
    // source: the copy has read it when cudaMemcpyAsync returns). One stream at a time.
    if (impl_->seq_dev == nullptr) {
      const cudaError_t e = cudaMalloc(&impl_->seq_dev, 32);
      if (e != cudaSuccess) {
        impl_->seq_dev = nullptr;
        return Fail(CudnnAttnStatus::kError, std::string("cudaMalloc of the sequence lengths: ") + cudaGetErrorString(e));
      }
    }
    const int32_t seq[8] = {s_q, 0, 0, 0, s_kv, 0, 0, 0};  // 16-byte aligned slots, as declared
    const cudaError_t e = cudaMemcpyAsync(impl_->seq_dev, seq, sizeof(seq), cudaMemcpyHostToDevice, stream);
    if (e != cudaSuccess)
      return Fail(CudnnAttnStatus::kError, std::string("cudnnBackendExecute (sequence lengths copy): ") + cudaGetErrorString(e));
    uids = kPackUidsPad;
    ptrs[5] = &neg_inf;
    ptrs[6] = impl_->seq_dev;
    ptrs[7] = impl_->seq_dev + 4;
  }
  std::vector<Desc> keep;
  Builder b(&keep);
  cudnnBackendDescriptor_t vp = b.Make(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
  b.Set(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 8, uids, "variant pack UNIQUE_IDS");
  b.Set(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 8, ptrs, "variant pack DATA_POINTERS");
  void* ws = impl_->workspace;
  b.Set(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws, "variant pack WORKSPACE");
  b.Finalize(vp, "variant pack");
  if (!b.ok()) return Fail(CudnnAttnStatus::kError, b.status().message);
  cs = cudnnBackendExecute(impl_->handle, plan->plan, vp);
  if (cs != CUDNN_STATUS_SUCCESS)
    return Fail(CudnnAttnStatus::kError, "cudnnBackendExecute: " + StatusText(cs));
  return st;
}

const CudnnAttention::Stats& CudnnAttention::stats() const { return impl_->stats; }
void CudnnAttention::set_verbose(bool on) { impl_->verbose = on; }
void CudnnAttention::ClearCache() {
  cudaDeviceSynchronize();  // enqueued work may still use a plan's kernels
  impl_->plans.clear();
  impl_->failed.clear();
}

#else  // !KVR_HAVE_CUDNN: every call answers kUnsupported; the selector falls back to ours.

bool CudnnAvailable() { return false; }
size_t CudnnRuntimeVersion() { return 0; }

struct CudnnAttention::Impl {
  Stats stats;
};
CudnnAttention::CudnnAttention() : impl_(std::make_unique<Impl>()) {}
CudnnAttention::~CudnnAttention() = default;
CudnnAttnStatus CudnnAttention::Init(size_t) {
  return Fail(CudnnAttnStatus::kUnsupported, "built without cuDNN");
}
bool CudnnAttention::initialized() const { return false; }
CudnnAttnStatus CudnnAttention::Prepare(DType, const PrefillAttnParams&, double* build_ms) {
  if (build_ms != nullptr) *build_ms = 0;
  return Fail(CudnnAttnStatus::kUnsupported, "built without cuDNN");
}
CudnnAttnStatus CudnnAttention::Run(DType, const PrefillAttnParams&, cudaStream_t) {
  return Fail(CudnnAttnStatus::kUnsupported, "built without cuDNN");
}
CudnnAttnStatus CudnnAttention::Prewarm(DType, int, int, int, const std::vector<std::pair<int, int>>& buckets,
                                        const PrewarmProgress&, PrewarmReport* report) {
  if (report != nullptr) {
    *report = PrewarmReport();
    report->requested = static_cast<int>(buckets.size());
    report->first_error = "built without cuDNN";
  }
  return Fail(CudnnAttnStatus::kUnsupported, "built without cuDNN");
}
bool CudnnAttention::HasPlan(DType, const PrefillAttnParams&) const { return false; }
std::pair<int, int> CudnnAttention::PlanDims(const PrefillAttnParams& p) const { return {p.n, p.s + p.n}; }
void CudnnAttention::set_bucketing(bool) {}
bool CudnnAttention::bucketing() const { return false; }
const CudnnAttention::Stats& CudnnAttention::stats() const { return impl_->stats; }
void CudnnAttention::set_verbose(bool) {}
void CudnnAttention::ClearCache() {}

#endif  // KVR_HAVE_CUDNN

cudaError_t PrefillAttentionWith(AttnImpl impl, CudnnAttention* cudnn, DType dt,
                                 const PrefillAttnParams& p, cudaStream_t stream, AttnImpl* used) {
  if (used != nullptr) *used = AttnImpl::kMma;
  if (impl == AttnImpl::kMma || p.n <= 0) return PrefillAttention(dt, p, stream);
  if (impl == AttnImpl::kAuto &&
      (p.n < kAutoMinQueries || cudnn == nullptr ||
       (p.n < kAutoBuildMinQueries && !cudnn->HasPlan(dt, p))))
    return PrefillAttention(dt, p, stream);
  CudnnAttnStatus st;
  if (cudnn == nullptr || !cudnn->initialized()) {
    st = Fail(CudnnAttnStatus::kUnsupported, "no initialized CudnnAttention");
  } else {
    st = cudnn->Run(dt, p, stream);
    if (st.ok()) {
      if (used != nullptr) *used = AttnImpl::kCudnn;
      return cudaSuccess;
    }
  }
  // An execution failure after a plan was built is an error, not a reason to fall back.
  if (st.code == CudnnAttnStatus::kError && st.message.rfind("cudnnBackendExecute", 0) == 0) {
    std::fprintf(stderr, "cudnn attention: %s\n", st.message.c_str());
    return cudaErrorLaunchFailure;
  }
  if (impl == AttnImpl::kCudnn || st.code == CudnnAttnStatus::kError) {
    // One line per distinct shape (failures are cached, so this stays rare). kAuto is silent
    // about shapes cuDNN does not support, never about errors.
    static std::mutex mu;
    static std::set<std::tuple<int, int, int, int, int, int, int>> reported;
    const auto k = std::make_tuple(static_cast<int>(dt), p.Hq, p.Hkv, p.D, p.n, p.s, p.window);
    std::lock_guard<std::mutex> lock(mu);
    if (reported.size() < 64 && reported.insert(k).second)
      std::fprintf(stderr, "cudnn attention: falling back to the mma kernel (n=%d s=%d Hq=%d Hkv=%d D=%d window=%d): %s\n",
                   p.n, p.s, p.Hq, p.Hkv, p.D, p.window, st.message.c_str());
  }
  return PrefillAttention(dt, p, stream);
}

}  // namespace kvr::kernels
