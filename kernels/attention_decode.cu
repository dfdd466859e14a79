// Split-K decode attention. See attention_decode.cuh.
//
// Kernel 1: block (split, kv head, sequence), 128 threads. Keys of its split in tiles of 64,
// double-buffered in shared memory by cp.async (rows padded by 16 bytes: conflict-free 16-byte
// reads along a row). For each tile: scores of the G queries (one (query, key) dot product per
// thread and step), online softmax per query in fp32, O += P V with fp32 accumulators kept in
// shared memory (thread-owned entries). Writes O / l and the log-sum-exp of its split.
// Kernel 2: block (query head, sequence), merges the splits.
#include <cfloat>

#include "kernels/attention_decode.cuh"
#include "kernels/common.cuh"
#include "kernels/mma.cuh"

namespace kvr::kernels {
namespace {

constexpr int kTile = 64;
constexpr int kThreads = 128;

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) DecodeSplitKernel(DecodeAttnParams p) {
  constexpr int kRow = D + 8;  // padded row (elements)
  constexpr int kChunks = D / 8;
  const int sp = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int G = p.Hq / p.Hkv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);          // [2][kTile][kRow]
  T* sV = sK + 2 * kTile * kRow;                   // [2][kTile][kRow]
  float* sQ = reinterpret_cast<float*>(sV + 2 * kTile * kRow);  // [G][D]
  float* sO = sQ + G * D;                          // [G][D]
  float* sP = sO + G * D;                          // [G][kTile]
  float* sM = sP + G * kTile;                      // [G] running max
  float* sL = sM + G;                              // [G] running sum
  float* sA = sL + G;                              // [G] rescale of this tile

  const int len = p.len[b];
  const int lo = p.window > 0 ? max(0, len - p.window) : 0;
  const int tiles_all = (len - lo + kTile - 1) / kTile;
  const int tiles_per = (tiles_all + p.splits - 1) / p.splits;
  const int a = lo + sp * tiles_per * kTile;
  const int e = min(len, a + tiles_per * kTile);
  const size_t pidx = (static_cast<size_t>(b) * p.Hq + hk * G) * p.splits + sp;  // head hk*G
  if (a >= e) {
    for (int g = tid; g < G; g += kThreads) p.lse_part[pidx + static_cast<size_t>(g) * p.splits] = -INFINITY;
    return;
  }
  const T* gk = static_cast<const T*>(p.k_table[b]) + hk * D;
  const T* gv = static_cast<const T*>(p.v_table[b]) + hk * D;
  const size_t stride = static_cast<size_t>(p.Hkv) * D;
  const T* gq = static_cast<const T*>(p.q) + (static_cast<size_t>(b) * p.Hq + hk * G) * D;
  for (int i = tid; i < G * D; i += kThreads) {
    sQ[i] = ToF(gq[i]);
    sO[i] = 0.f;
  }
  for (int g = tid; g < G; g += kThreads) {
    sM[g] = -INFINITY;
    sL[g] = 0.f;
  }
  auto load = [&](int j0, int buf) {
    T* dk = sK + buf * kTile * kRow;
    T* dv = sV + buf * kTile * kRow;
    for (int c = tid; c < kTile * kChunks; c += kThreads) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const int j = j0 + r;
      const bool ok = j < e;
      const size_t off = ok ? static_cast<size_t>(j) * stride + col : 0;
      CpAsync16(dk + r * kRow + col, gk + off, ok ? 16 : 0);
      CpAsync16(dv + r * kRow + col, gv + off, ok ? 16 : 0);
    }
  };
  const int ntiles = (e - a + kTile - 1) / kTile;
  load(a, 0);
  CpAsyncCommit();
  const float scale_log2 = p.scale * 1.4426950408889634f;
  for (int it = 0; it < ntiles; ++it) {
    const int buf = it & 1, j0 = a + it * kTile;
    if (it + 1 < ntiles) {
      load(j0 + kTile, buf ^ 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const T* tk = sK + buf * kTile * kRow;
    const T* tv = sV + buf * kTile * kRow;
    // Scores: pair (g, j) -> sP[g][j] (scaled, log2 units; -inf past the end).
    for (int pr = tid; pr < G * kTile; pr += kThreads) {
      const int g = pr / kTile, j = pr % kTile;
      float acc = 0.f;
      const float* qg = sQ + g * D;
      const T* kr = tk + j * kRow;
#pragma unroll
      for (int d = 0; d < D; d += 8) {
        const uint4 raw = *reinterpret_cast<const uint4*>(kr + d);
        const T* kv = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int u = 0; u < 8; ++u) acc += qg[d + u] * ToF(kv[u]);
      }
      sP[pr] = (j0 + j < e) ? acc * scale_log2 : -INFINITY;
    }
    __syncthreads();
    // Online softmax: warp w handles queries w, w + 4, ...
    for (int g = warp; g < G; g += kThreads / 32) {
      float* pg = sP + g * kTile;
      const float s0 = pg[lane], s1 = pg[lane + 32];
      const float mx = WarpMax(fmaxf(s0, s1));
      const float m_old = sM[g];
      const float m_new = fmaxf(m_old, mx);  // finite: every tile holds at least one key
      const float p0 = exp2f(s0 - m_new), p1 = exp2f(s1 - m_new);
      pg[lane] = p0;
      pg[lane + 32] = p1;
      const float sum = WarpSum(p0 + p1);
      __syncwarp();
      if (lane == 0) {
        const float alpha = exp2f(m_old - m_new);
        sA[g] = alpha;
        sM[g] = m_new;
        sL[g] = sL[g] * alpha + sum;
      }
    }
    __syncthreads();
    // O = O * alpha + P V: thread owns outputs tid, tid + 128, ...
    for (int oi = tid; oi < G * D; oi += kThreads) {
      const int g = oi / D, d = oi % D;
      const float* pg = sP + g * kTile;
      float acc = 0.f;
#pragma unroll 8
      for (int j = 0; j < kTile; ++j) acc += pg[j] * ToF(tv[j * kRow + d]);
      sO[oi] = sO[oi] * sA[g] + acc;
    }
    __syncthreads();
  }
  for (int oi = tid; oi < G * D; oi += kThreads) {
    const int g = oi / D, d = oi % D;
    p.o_part[(pidx + static_cast<size_t>(g) * p.splits) * D + d] = sO[oi] / sL[g];
  }
  for (int g = tid; g < G; g += kThreads) {
    p.lse_part[pidx + static_cast<size_t>(g) * p.splits] = sM[g] + log2f(sL[g]);
  }
}

// Block (head, sequence), D threads: out = sum_s w_s o_s / sum_s w_s, w_s = 2^(lse_s - max).
template <typename T>
__global__ void DecodeCombineKernel(DecodeAttnParams p) {
  const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
  const size_t base = (static_cast<size_t>(b) * p.Hq + h) * p.splits;
  float mx = -INFINITY;
  for (int s = 0; s < p.splits; ++s) mx = fmaxf(mx, p.lse_part[base + s]);
  float num = 0.f, den = 0.f;
  for (int s = 0; s < p.splits; ++s) {
    const float l = p.lse_part[base + s];
    if (l == -INFINITY) continue;
    const float w = exp2f(l - mx);
    num += w * p.o_part[(base + s) * p.D + d];
    den += w;
  }
  static_cast<T*>(p.out)[(static_cast<size_t>(b) * p.Hq + h) * p.D + d] =
      FromF<T>(den > 0.f ? num / den : 0.f);
}

template <typename T, int D>
cudaError_t Launch(const DecodeAttnParams& p, cudaStream_t stream) {
  const int G = p.Hq / p.Hkv;
  const size_t smem = 4 * kTile * (D + 8) * sizeof(T) +
                      (2 * static_cast<size_t>(G) * D + G * kTile + 3 * G) * sizeof(float);
  auto kernel = DecodeSplitKernel<T, D>;
  KVR_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  kernel<<<dim3(p.splits, p.Hkv, p.B), kThreads, smem, stream>>>(p);
  KVR_CUDA_TRY(cudaGetLastError());
  DecodeCombineKernel<T><<<dim3(p.Hq, p.B), D, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int DecodeAttentionSplits(int B, int Hkv, int num_sms) {
  const int want = 4 * num_sms;
  int s = (want + B * Hkv - 1) / (B * Hkv);
  return s < 1 ? 1 : (s > 128 ? 128 : s);
}

cudaError_t DecodeAttention(DType dt, const DecodeAttnParams& p, cudaStream_t stream) {
  if (p.B <= 0) return cudaSuccess;
  if (p.Hkv <= 0 || p.Hq % p.Hkv != 0 || (p.D != 64 && p.D != 128) || p.splits < 1 ||
      (p.Hq / p.Hkv) * p.D > 8192)
    return cudaErrorInvalidValue;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    return p.D == 64 ? Launch<T, 64>(p, stream) : Launch<T, 128>(p, stream);
  });
}

}  // namespace kvr::kernels
