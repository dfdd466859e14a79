// Split-K decode attention. See attention_decode.cuh.
//
// Kernel 1: block (split, kv head, sequence), 128 threads. Keys of its split in tiles of 64,
// double-buffered in shared memory by cp.async (rows padded by 16 bytes: conflict-free 16-byte
// reads along a row). For each tile: scores of the G queries (one (query, key) dot product per
// thread and step, or per thread pair when G = 1), online softmax per query in fp32, O += P V
// with fp32 accumulators kept in shared memory (thread-owned entries). Writes O / l and the
// log-sum-exp of its split.
// Merge: with p.counters set, the last block to finish a (sequence, kv head) merges that head
// group's splits itself (a counter per group, reset by the merging block: graph replays start
// from zero again); otherwise kernel 2, block (query head, sequence), merges the splits.
// Both kernels go through LaunchPdl and wait (PdlWait) before reading anything.
// Fused rotary (p.qkv set): every split block rotates its G queries itself (a few sincosf); the
// one block whose split holds the newest position (len - 1) rotates that key, writes it and the
// value to the cache, and only then loads its tiles (the other splits never read that row).
#include <algorithm>
#include <cfloat>
#include <cstdlib>

#include "kernels/attention_decode.cuh"
#include "kernels/common.cuh"
#include "kernels/mma.cuh"

namespace kvr::kernels {
namespace {

constexpr int kTile = 64;
constexpr int kThreads = 128;

// Dynamic shared memory of a split block: the K/V tiles (two buffers each) or, after the key
// loop, the merge's split weights and sums; then Q, O, P and the softmax state.
inline size_t TileSmemBytes(int D, size_t elem) { return 4 * kTile * (D + 8) * elem; }
inline size_t MergeSmemBytes(int G, int splits) { return (static_cast<size_t>(G) * splits + G) * sizeof(float); }
inline size_t StateSmemBytes(int G, int D) {
  return (2 * static_cast<size_t>(G) * D + G * kTile + 3 * G) * sizeof(float);
}

// Called by every thread of a split block after its O / lse are written. The block that finishes
// its group (sequence b, kv head hk) last merges the G heads' splits into out and resets the
// group's counter. The parts of other blocks are read through L2 (__ldcg) after a fence.
template <typename T, int D>
__device__ void MergeIfLast(const DecodeAttnParams& p, int b, int hk, unsigned char* smem_raw) {
  __shared__ int s_last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    const int done = atomicAdd(&p.counters[b * p.Hkv + hk], 1);
    s_last = done == p.splits - 1;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const int G = p.Hq / p.Hkv, S = p.splits;
  const size_t head0 = static_cast<size_t>(b) * p.Hq + static_cast<size_t>(hk) * G;
  float* sW = reinterpret_cast<float*>(smem_raw);  // [G][S] lse, then weights
  float* sDen = sW + G * S;                        // [G]
  for (int i = tid; i < G * S; i += kThreads) sW[i] = __ldcg(p.lse_part + head0 * S + i);
  __syncthreads();
  for (int g = warp; g < G; g += kThreads / 32) {
    float mx = -INFINITY;
    for (int s = lane; s < S; s += 32) mx = fmaxf(mx, sW[g * S + s]);
    mx = WarpMax(mx);
    float den = 0.f;
    for (int s = lane; s < S; s += 32) {
      const float l = sW[g * S + s];
      const float w = l == -INFINITY ? 0.f : exp2f(l - mx);
      sW[g * S + s] = w;
      den += w;
    }
    den = WarpSum(den);
    if (lane == 0) sDen[g] = den;
  }
  __syncthreads();
  for (int oi = tid; oi < G * D; oi += kThreads) {
    const int g = oi / D, d = oi % D;
    const float* op = p.o_part + (head0 + g) * S * D + d;
    float num = 0.f;
    for (int s = 0; s < S; ++s) {
      const float w = sW[g * S + s];
      if (w != 0.f) num += w * __ldcg(op + static_cast<size_t>(s) * D);
    }
    const float den = sDen[g];
    static_cast<T*>(p.out)[(head0 + g) * D + d] = FromF<T>(den > 0.f ? num / den : 0.f);
  }
  if (tid == 0) p.counters[b * p.Hkv + hk] = 0;
}

// Fused rotary: sQ[g][d] = the rotated query g of kv head hk (rounded to T, as RopeAppend
// stores it); with `append`, also this head's rotated key and value at position len - 1 into the
// cache. Ends with a block barrier, so the block's tile loads see the appended row. Pairs
// (i, i + D/2), angle pos * inv_freq[i] in fp32: RopeAppendKernel's arithmetic.
template <typename T, int D>
__device__ void RotateAndAppend(const DecodeAttnParams& p, int b, int hk, bool append, float* sQ) {
  constexpr int half = D / 2;
  const int G = p.Hq / p.Hkv, pos = p.len[b] - 1;
  const T* row = static_cast<const T*>(p.qkv) + static_cast<size_t>(b) * (p.Hq + 2 * p.Hkv) * D;
  const int n = (G + (append ? 1 : 0)) * half;
  for (int t = threadIdx.x; t < n; t += kThreads) {
    const int g = t / half, i = t % half;
    float sn, cs;
    sincosf(static_cast<float>(pos) * p.inv_freq[i], &sn, &cs);
    const T* x = g < G ? row + (hk * G + g) * D : row + (p.Hq + hk) * D;  // query g, or the key
    const float x1 = ToF(x[i]), x2 = ToF(x[i + half]);
    const T r1 = FromF<T>(x1 * cs - x2 * sn), r2 = FromF<T>(x2 * cs + x1 * sn);
    if (g < G) {
      sQ[g * D + i] = ToF(r1);
      sQ[g * D + i + half] = ToF(r2);
    } else {
      const size_t at = (static_cast<size_t>(pos) * p.Hkv + hk) * D;
      T* k = static_cast<T*>(p.k_out[b]) + at;
      T* v = static_cast<T*>(p.v_out[b]) + at;
      const T* xv = row + (p.Hq + p.Hkv + hk) * D;
      k[i] = r1;
      k[i + half] = r2;
      v[i] = xv[i];
      v[i + half] = xv[i + half];
    }
  }
  __syncthreads();
}

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

  PdlWait();
  PdlTrigger();
  const int len = p.len[b];
  const int lo = p.window > 0 ? max(0, len - p.window) : 0;
  const int tiles_all = (len - lo + kTile - 1) / kTile;
  const int tiles_per = (tiles_all + p.splits - 1) / p.splits;
  const int a = lo + sp * tiles_per * kTile;
  const int e = min(len, a + tiles_per * kTile);
  const size_t pidx = (static_cast<size_t>(b) * p.Hq + hk * G) * p.splits + sp;  // head hk*G
  if (a >= e) {
    for (int g = tid; g < G; g += kThreads) p.lse_part[pidx + static_cast<size_t>(g) * p.splits] = -INFINITY;
    if (p.counters != nullptr) MergeIfLast<T, D>(p, b, hk, smem_raw);
    return;
  }
  const T* gk = static_cast<const T*>(p.k_table[b]) + hk * D;
  const T* gv = static_cast<const T*>(p.v_table[b]) + hk * D;
  const size_t stride = static_cast<size_t>(p.Hkv) * D;
  if (p.qkv != nullptr) {
    RotateAndAppend<T, D>(p, b, hk, a <= len - 1 && len - 1 < e, sQ);
  } else {
    const T* gq = static_cast<const T*>(p.q) + (static_cast<size_t>(b) * p.Hq + hk * G) * D;
    for (int i = tid; i < G * D; i += kThreads) sQ[i] = ToF(gq[i]);
  }
  for (int i = tid; i < G * D; i += kThreads) sO[i] = 0.f;
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
    // Scores: pair (g, j) -> sP[g][j] (scaled, log2 units; -inf past the end). With one query
    // per K/V head, two threads share a key: each takes half of D, then one shuffle.
    if (G * kTile * 2 == kThreads) {
      const int j = tid >> 1, h0 = (tid & 1) * (D / 2);
      float acc = 0.f;
      const T* kr = tk + j * kRow + h0;
#pragma unroll
      for (int d = 0; d < D / 2; d += 8) {
        const uint4 raw = *reinterpret_cast<const uint4*>(kr + d);
        const T* kv = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int u = 0; u < 8; ++u) acc += sQ[h0 + d + u] * ToF(kv[u]);
      }
      acc += __shfl_xor_sync(0xffffffffu, acc, 1);
      if ((tid & 1) == 0) sP[j] = (j0 + j < e) ? acc * scale_log2 : -INFINITY;
    } else {
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
  if (p.counters != nullptr) MergeIfLast<T, D>(p, b, hk, smem_raw);
}

// Block (head, sequence), D threads: out = sum_s w_s o_s / sum_s w_s, w_s = 2^(lse_s - max).
template <typename T>
__global__ void DecodeCombineKernel(DecodeAttnParams p) {
  PdlWait();
  PdlTrigger();
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
  const size_t smem = std::max(TileSmemBytes(D, sizeof(T)), MergeSmemBytes(G, p.splits)) +
                      StateSmemBytes(G, D);
  auto kernel = DecodeSplitKernel<T, D>;
  KVR_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  KVR_CUDA_TRY(LaunchPdl(kernel, dim3(p.splits, p.Hkv, p.B), dim3(kThreads), smem, stream, p));
  if (p.counters != nullptr) return cudaSuccess;
  return LaunchPdl(DecodeCombineKernel<T>, dim3(p.Hq, p.B), dim3(D), 0, stream, p);
}

}  // namespace

int DecodeAttentionSplits(DType dt, int B, int Hq, int Hkv, int D, int num_sms) {
  // Blocks one SM holds at once (shared memory bounds it), unless a benchmark sets the number.
  int per_sm = 0;
  if (const char* env = std::getenv("KVR_DECODE_SPLITS_PER_SM"); env != nullptr) per_sm = std::atoi(env);
  if (per_sm <= 0 && Hkv > 0 && Hq % Hkv == 0 && (D == 64 || D == 128)) {
    KVR_DISPATCH_DTYPE(dt, T, [&] {
      auto kernel = D == 64 ? DecodeSplitKernel<T, 64> : DecodeSplitKernel<T, 128>;
      const size_t smem = TileSmemBytes(D, sizeof(T)) + StateSmemBytes(Hq / Hkv, D);
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)) == cudaSuccess)
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
      return cudaSuccess;
    });
  }
  if (per_sm <= 0) per_sm = 2;
  // One full wave: as many splits per (sequence, kv head) as the resident blocks allow.
  const int s = per_sm * num_sms / (B * Hkv);
  return s < 1 ? 1 : (s > 128 ? 128 : s);
}

cudaError_t DecodeAttention(DType dt, const DecodeAttnParams& p, cudaStream_t stream) {
  if (p.B <= 0) return cudaSuccess;
  if (p.Hkv <= 0 || p.Hq % p.Hkv != 0 || (p.D != 64 && p.D != 128) || p.splits < 1 ||
      (p.Hq / p.Hkv) * p.D > 8192 ||
      (p.qkv != nullptr && (p.inv_freq == nullptr || p.k_out == nullptr || p.v_out == nullptr)))
    return cudaErrorInvalidValue;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    return p.D == 64 ? Launch<T, 64>(p, stream) : Launch<T, 128>(p, stream);
  });
}

}  // namespace kvr::kernels
