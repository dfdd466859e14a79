// Split-K decode attention. See attention_decode.cuh.
//
// Kernel 1: block (split, kv head, sequence), 128 threads. Keys of its split in tiles of 64, in
// a ring of kScalarStages shared buffers filled by cp.async (rows padded by 16 bytes:
// conflict-free 16-byte reads along a row). For each tile: scores of the G queries (one (query,
// key) dot product per thread and step, or per thread pair when G = 1), online softmax per query
// in fp32, O += P V
// with fp32 accumulators kept in shared memory (thread-owned entries). Writes O / l and the
// log-sum-exp of its split. Groups of 2 or more queries per K/V head (GQA, MQA) run
// DecodeSplitMmaKernel instead: the same split blocks on mma.sync tensor cores, the G queries (up
// to 16 a block) as rows of one m-tile
// (the scalar loop's G dot products per key made the GQA kernel issue-bound, not memory-bound),
// its K/V tiles loaded by the copy engine (TMA) through tensor maps of the caches.
// Merge: with p.counters set, the last block to finish a (sequence, kv head) merges that head
// group's splits itself (a counter per group, reset by the merging block: graph replays start
// from zero again); otherwise kernel 2, block (query head, sequence), merges the splits.
// Both kernels go through LaunchPdl. Before PdlWait a split block reads nothing the kernels of
// this step write: it starts loading its first K/V tile when that tile holds keys of earlier
// steps alone (EarlyTiles), so that the load overlaps the end of the kernel before, and computes
// its rotary angle. After it, the split's next tiles are issued before the queries are rotated.
// Fused rotary (p.qkv set): every split block rotates its G queries itself (a few sincosf); the
// one block whose split holds the newest position (len - 1) rotates that key, writes it and the
// value to the cache, and only then loads its tiles (the other splits never read that row).
// DecodeStreamKernel (single queries, and groups on request) has no shared-memory tiles: each
// warp streams its keys' K/V rows through registers (see the comment at the kernel).
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

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

// K/V tiles per split block: a ring of kStages buffers, loads issued kStages - 1 tiles ahead.
// Measured on an H200 (docs/benchmarks.md, session 7), Llama-3-8B decode steps: the tensor-core
// kernel with 4 stages (one 128 KB block per SM) is 3-4% faster than with 3 (two blocks per SM)
// and that 1-2% faster than 2 (three); 5 as fast as 4, 6 slower. The scalar kernel, whose tiles
// cost more arithmetic, is fastest with 2 (three blocks per SM): 3, 4 and 6 were 1-27% slower.
constexpr int kScalarStages = 2;
constexpr int kMmaStages = 4;

// Dynamic shared memory of a scalar split block: the K/V tiles (kScalarStages buffers each) or,
// after the key loop, the merge's split weights and sums; then Q, O, P and the softmax state.
inline size_t TileSmemBytes(int D, size_t elem) {
  return 2 * kScalarStages * kTile * (D + 8) * elem;
}
inline size_t MergeSmemBytes(int G, int splits) { return (static_cast<size_t>(G) * splits + G) * sizeof(float); }
inline size_t StateSmemBytes(int G, int D) {
  return (2 * static_cast<size_t>(G) * D + G * kTile + 3 * G) * sizeof(float);
}

// The queries a split block attends for: n queries of K/V head hk starting at its query g0 (heads
// hk G + g0 ..), and the block's slot among its sequence's groups (its merge counter, and
// gridDim.y). The tensor-core kernel takes a head's G queries in slices of at most 16 (one
// m-tile), slot = hk * slices + slice; the other kernels take all G, slot = hk. Every slice block
// whose split holds the newest position appends that K/V row (the same values) before reading it.
struct QueryGroup {
  int hk, g0, n, slot;
};
__host__ __device__ __forceinline__ int QuerySlices(int G, bool mma) { return mma ? (G + 15) / 16 : 1; }
__device__ __forceinline__ QueryGroup GroupOf(const DecodeAttnParams& p, bool mma) {
  const int G = p.Hq / p.Hkv, slices = QuerySlices(G, mma), y = blockIdx.y;
  QueryGroup q;
  q.hk = y / slices;
  q.g0 = (y % slices) * 16;
  q.n = slices == 1 ? G : min(16, G - q.g0);
  q.slot = y;
  return q;
}

// Called by every thread of a split block after its O / lse are written. The block that finishes
// its group (sequence b, QueryGroup grp) last merges the group's splits into out and resets the
// group's counter. The parts of other blocks are read through L2 (__ldcg) after a fence. The
// merge is on the step's critical path, so its reads are issued together: each thread owns kVec
// consecutive outputs (4: one float4 of o_part per split, for the tensor-core kernel's groups;
// 1 for the scalar kernel's single queries, with fewer registers) and loads kMergeBatch splits of
// them at once, the first batch before the log-sum-exps are weighed.
constexpr int kMergeBatch = 16;
template <int kVec>
__device__ __forceinline__ void LoadPart(const float* src, float (&dst)[kVec]) {
  if constexpr (kVec == 4) {
    const float4 t = __ldcg(reinterpret_cast<const float4*>(src));
    dst[0] = t.x;
    dst[1] = t.y;
    dst[2] = t.z;
    dst[3] = t.w;
  } else {
    static_assert(kVec == 1, "kVec is 1 or 4");
    dst[0] = __ldcg(src);
  }
}

template <typename T, int D, int kVec>
__device__ void MergeIfLast(const DecodeAttnParams& p, int b, const QueryGroup& grp, unsigned char* smem_raw) {
  __shared__ int s_last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    const int done = atomicAdd(&p.counters[b * gridDim.y + grp.slot], 1);
    s_last = done == p.splits - 1;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  constexpr int kPerRow = D / kVec;
  const int G = grp.n, S = p.splits, items = G * kPerRow;
  const size_t head0 = static_cast<size_t>(b) * p.Hq + static_cast<size_t>(grp.hk) * (p.Hq / p.Hkv) + grp.g0;
  float* sW = reinterpret_cast<float*>(smem_raw);  // [G][S] lse, then weights
  float* sDen = sW + G * S;                        // [G]
  // Item q: head g = q / kPerRow, outputs kVec * (q % kPerRow) ..; split s's part at
  // o_part[((head0 + g) * S + s) * D + kVec * (q % kPerRow)].
  float v[kMergeBatch][kVec];
  auto load_batch = [&](int q, int s0) {
    const float* op = p.o_part + (head0 + q / kPerRow) * S * D + (q % kPerRow) * kVec;
#pragma unroll
    for (int u = 0; u < kMergeBatch; ++u)
      if (s0 + u < S) LoadPart<kVec>(op + static_cast<size_t>(s0 + u) * D, v[u]);
  };
  if (tid < items) load_batch(tid, 0);
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
  for (int q = tid; q < items; q += kThreads) {
    const int g = q / kPerRow;
    float num[kVec] = {};
    for (int s0 = 0; s0 < S; s0 += kMergeBatch) {
      if (q != tid || s0 != 0) load_batch(q, s0);
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {
        // Splits past S and empty ones (weight 0: their o_part was never written) add nothing.
        const float w = s0 + u < S ? sW[g * S + s0 + u] : 0.f;
        if (w != 0.f) {
#pragma unroll
          for (int c = 0; c < kVec; ++c) num[c] += w * v[u][c];
        }
      }
    }
    const float den = sDen[g];
    T* o = static_cast<T*>(p.out) + (head0 + g) * D + (q % kPerRow) * kVec;
#pragma unroll
    for (int c = 0; c < kVec; ++c) o[c] = FromF<T>(den > 0.f ? num[c] / den : 0.f);
  }
  if (tid == 0) p.counters[b * gridDim.y + grp.slot] = 0;
}

// The rotary angle of this thread's pair (i, i + D/2), i = threadIdx.x % (D/2): the same pair in
// every pass of RotateAndAppend (kThreads is a multiple of D/2), at position len - 1. Reads only
// the step's host-written lengths and inv_freq, so split blocks compute it before PdlWait.
struct RopeAngle {
  float sn = 0.f, cs = 1.f;
};
template <int D>
__device__ __forceinline__ RopeAngle RopeAngleOf(const DecodeAttnParams& p, int b) {
  static_assert(kThreads % (D / 2) == 0, "a thread's pair index is the same in every pass");
  RopeAngle r;
  sincosf(static_cast<float>(p.len[b] - 1) * p.inv_freq[threadIdx.x % (D / 2)], &r.sn, &r.cs);
  return r;
}

// Fused rotary: sQ[g][d] = the rotated query g0 + g of the group's kv head (g < n; rounded to T,
// as RopeAppend stores it); with `append`, also this head's rotated key and value at position
// len - 1 into the cache. Ends with a block barrier (after a proxy fence), so the block's tile
// loads, the copy engine's included, see the appended row. Pairs (i, i + D/2), angle
// pos * inv_freq[i] in fp32 (`ang`): RopeAppendKernel's arithmetic. A thread takes rows r0,
// r0 + kPer, ... (row n is the key); it loads up to 4 rows' pairs before it rotates any, so that
// their reads are in flight together.
template <typename T, int D>
__device__ void RotateAndAppend(const DecodeAttnParams& p, int b, const QueryGroup& grp, bool append,
                                RopeAngle ang, float* sQ) {
  constexpr int half = D / 2, kPer = kThreads / half;
  const int G = grp.n, hk = grp.hk, q0 = hk * (p.Hq / p.Hkv) + grp.g0, pos = p.len[b] - 1;
  const T* row = static_cast<const T*>(p.qkv) + static_cast<size_t>(b) * (p.Hq + 2 * p.Hkv) * D;
  const int rows = G + (append ? 1 : 0);
  const int i = threadIdx.x % half, r0 = threadIdx.x / half;
  for (int rb = r0; rb < rows; rb += 4 * kPer) {
    T x1[4], x2[4], v1 = T(), v2 = T();
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int g = rb + k * kPer;
      if (g >= rows) continue;
      const T* x = g < G ? row + (q0 + g) * D : row + (p.Hq + hk) * D;  // query g, or the key
      x1[k] = x[i];
      x2[k] = x[i + half];
      if (g == G) {
        const T* xv = row + (p.Hq + p.Hkv + hk) * D;
        v1 = xv[i];
        v2 = xv[i + half];
      }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int g = rb + k * kPer;
      if (g >= rows) continue;
      const float f1 = ToF(x1[k]), f2 = ToF(x2[k]);
      const T r1 = FromF<T>(f1 * ang.cs - f2 * ang.sn), r2 = FromF<T>(f2 * ang.cs + f1 * ang.sn);
      if (g < G) {
        sQ[g * D + i] = ToF(r1);
        sQ[g * D + i + half] = ToF(r2);
      } else {
        const size_t at = (static_cast<size_t>(pos) * p.Hkv + hk) * D;
        T* kc = static_cast<T*>(p.k_out[b]) + at;
        T* vc = static_cast<T*>(p.v_out[b]) + at;
        kc[i] = r1;
        kc[i + half] = r2;
        vc[i] = v1;
        vc[i + half] = v2;
      }
    }
  }
  if (append) FenceProxyAsyncGlobal();  // the copy engine may load this row after the barrier
  __syncthreads();
}

// The keys [a, e) of split sp of sequence b (its tiles spread evenly over the splits; only the
// last `window` keys when set), in `tiles` tiles of kTile (0: an empty split), and pidx: the
// index of (sequence b, the group's first query head hk*G + g0, split sp) in lse_part (its query
// g adds g * splits; o_part rows likewise, times D).
struct SplitKeys {
  int len, a, e, tiles;
  size_t pidx;
};
__device__ __forceinline__ SplitKeys SplitOf(const DecodeAttnParams& p, int b, const QueryGroup& grp, int sp) {
  SplitKeys s;
  s.len = p.len[b];
  const int lo = p.window > 0 ? max(0, s.len - p.window) : 0;
  const int tiles_all = (s.len - lo + kTile - 1) / kTile;
  const int tiles_per = (tiles_all + p.splits - 1) / p.splits;
  s.a = lo + sp * tiles_per * kTile;
  s.e = min(s.len, s.a + tiles_per * kTile);
  s.tiles = s.a < s.e ? (s.e - s.a + kTile - 1) / kTile : 0;
  s.pidx = (static_cast<size_t>(b) * p.Hq + grp.hk * (p.Hq / p.Hkv) + grp.g0) * p.splits + sp;
  return s;
}

// Where K/V head hk of sequence b starts in its cache: key j of the head at k + j * stride
// (token-major rows of Hkv * D elements), the value likewise.
template <typename T>
struct KvHead {
  const T *k, *v;
  size_t stride;
};
template <typename T, int D>
__device__ __forceinline__ KvHead<T> KvHeadOf(const DecodeAttnParams& p, int b, int hk) {
  return {static_cast<const T*>(p.k_table[b]) + hk * D, static_cast<const T*>(p.v_table[b]) + hk * D,
          static_cast<size_t>(p.Hkv) * D};
}

// How many of the split's first tiles are loaded before PdlWait: up to `most` (fewer than the
// kernel's stages) of those that hold only keys of earlier steps, written before this step began
// (the newest, at len - 1, is appended by this kernel or by the RopeAppend kernel just before
// it). The split's range and the K/V tables come from the step's host-written table. One tile:
// a decode step 0.7-2.5% faster on an H200; two, with two stages: no faster (docs/benchmarks.md,
// session 7).
constexpr int kScalarEarlyTiles = 1;
constexpr int kMmaEarlyTiles = 1;
static_assert(kScalarEarlyTiles <= kScalarStages - 1 && kMmaEarlyTiles <= kMmaStages - 1,
              "the loops load kStages - 1 tiles ahead");
__device__ __forceinline__ int EarlyTiles(const SplitKeys& s, int most) {
  int t = 0;
  while (t < most && s.a + t * kTile < s.e && min(s.e, s.a + (t + 1) * kTile) <= s.len - 1) ++t;
  return t;
}

// A split without keys: its log-sum-exps are -inf (it weighs nothing in the merge), and the
// merge runs if this block is its group's last.
template <typename T, int D, int kVec>
__device__ void FinishEmptySplit(const DecodeAttnParams& p, int b, const QueryGroup& grp, const SplitKeys& s,
                                 unsigned char* smem_raw) {
  for (int g = threadIdx.x; g < grp.n; g += kThreads) p.lse_part[s.pidx + static_cast<size_t>(g) * p.splits] = -INFINITY;
  if (p.counters != nullptr) MergeIfLast<T, D, kVec>(p, b, grp, smem_raw);
}

// sQ[g][d] (fp32) = the group's n queries: rotated from qkv (with `append`, the block
// whose split holds the newest position, also appending that K/V row, see RotateAndAppend), or
// read from q. Ends with a block barrier.
template <typename T, int D>
__device__ void LoadQueries(const DecodeAttnParams& p, int b, const QueryGroup& grp, bool append,
                            RopeAngle ang, float* sQ) {
  if (p.qkv != nullptr) {
    RotateAndAppend<T, D>(p, b, grp, append, ang, sQ);
    return;
  }
  const T* gq = static_cast<const T*>(p.q) + (static_cast<size_t>(b) * p.Hq + grp.hk * (p.Hq / p.Hkv) + grp.g0) * D;
  for (int i = threadIdx.x; i < grp.n * D; i += kThreads) sQ[i] = ToF(gq[i]);
  __syncthreads();
}

// The K/V tile rings of the split kernels. Issue(t) starts tile t of the split (keys
// [a + t kTile, ...)) into buffer t % kStages, nothing past the split's last tile; Wait(t) returns
// once tile t has landed and every thread may read it. A buffer is issued again only after a
// block barrier that follows the last reads of its previous tile.
// CpAsyncRing (the scalar and single-query kernels): every thread copies 16-byte pieces of the
// rows (CpAsyncKvTiles, rows padded to kRow, rows at or past e zero-filled), one commit group per
// tile number (empty past the last) so that the wait count is fixed, and Wait ends with a block
// barrier.
template <typename T, int D, int kRow, int kStages>
struct CpAsyncRing {
  T* sK;  // [kStages][kTile][kRow]
  T* sV;  // [kStages][kTile][kRow]
  KvHead<T> kv;
  int a, e, tiles;
  __device__ void Issue(int t) const {
    if (t < tiles) {
      const size_t off = static_cast<size_t>(t % kStages) * kTile * kRow;
      CpAsyncKvTiles<T, D, kTile, kThreads, kRow, false>(sK + off, sV + off, kv.k, kv.v, a + t * kTile, e, kv.stride);
    }
    CpAsyncCommit();
  }
  __device__ void Wait(int) const {
    CpAsyncWait<kStages - 1>();
    __syncthreads();
  }
};

// TmaRing (the tensor-core kernel): thread 0 has the copy engine load each tile as boxes of 64
// keys x 64 elements of K and of V through the caches' tensor maps (EncodeKvTensorMap), with the
// 128-byte swizzle: buffer [kStages][D / 64][kTile][64], element (r, c) of a tile at
// (c / 64) kTile 64 + Swz<64>(r, c % 64); its mbarrier full[buf] completes when both have landed.
// Keys past the cache's capacity arrive as zeros; keys in [e, capacity) arrive as they are (the
// kernel zeroes the values of those of its last tile). Cuts the split loop's instructions by
// a quarter and keeps the L2 from serving every K/V sector twice, as 16-byte cp.async pieces made
// it (docs/benchmarks.md, session 11).
template <typename T, int D, int kStages>
struct TmaRing {
  T* sK;           // 1024-byte aligned (the swizzle's period)
  T* sV;
  uint64_t* full;  // [kStages] mbarriers
  const CUtensorMap* km;
  const CUtensorMap* vm;
  int hk, a, tiles;
  // Thread 0 sets up the mbarriers and acquires the maps; a block barrier must follow before Issue.
  __device__ void Init() const {
    if (threadIdx.x != 0) return;
    for (int s = 0; s < kStages; ++s) MbarInit(&full[s], 1);
    FenceMbarInit();
    FenceTensorMap(km);
    FenceTensorMap(vm);
  }
  __device__ void Issue(int t) const {
    if (threadIdx.x != 0 || t >= tiles) return;
    const int buf = t % kStages, j0 = a + t * kTile;
    MbarArriveExpectTx(&full[buf], 2 * kTile * D * sizeof(T));
#pragma unroll
    for (int h = 0; h < D / 64; ++h) {
      const size_t off = static_cast<size_t>(buf * (D / 64) + h) * kTile * 64;
      TmaLoad3d(sK + off, km, h * 64, hk, j0, &full[buf]);
      TmaLoad3d(sV + off, vm, h * 64, hk, j0, &full[buf]);
    }
  }
  __device__ void Wait(int t) const { MbarWait(&full[t % kStages], (t / kStages) & 1); }
  // Element (r, c) of a tile, from its buffer's start.
  __device__ static int At(int r, int c) { return (c >> 6) * (kTile * 64) + Swz<64>(r, c & 63); }
  // Zeroes the values of buffer buf's keys [from, kTile): the split's last tile, whose keys past
  // the split arrive as the cache holds them (anything, NaN included, which P V would carry; their
  // scores are masked). Then a block barrier. Every thread calls it.
  __device__ void ZeroValuesFrom(int buf, int from) const {
    T* v = sV + buf * kTile * D;
    for (int c = threadIdx.x; c < (kTile - from) * (D / 8); c += kThreads) {
      const int r = from + c / (D / 8), h = (c % (D / 8)) / 8, k = c % 8;  // a row's 16-byte pieces
      *reinterpret_cast<uint4*>(v + h * (kTile * 64) + r * 64 + k * 8) = make_uint4(0, 0, 0, 0);
    }
    __syncthreads();
  }
};

// The start of a split block, shared by the kernels. Issues the split's early tiles
// (EarlyTiles, up to `most`) and computes its rotary angle, waits for the kernel before
// (PdlWait), finishes an empty split (false), issues the tiles up to kStages - 2 (the ring's
// prologue) and rotates and loads the queries into sQ. The prologue's tiles are issued before
// the rotation, so that their loads overlap it, except a tile holding the K/V row the rotation
// appends. kVec is the kernel's MergeIfLast width.
template <typename T, int D, int kStages, int kVec, typename Ring>
__device__ bool StartSplit(const DecodeAttnParams& p, int b, const QueryGroup& grp, const SplitKeys& split,
                           int most, const Ring& ring, float* sQ, unsigned char* smem_raw) {
  const int pre = EarlyTiles(split, most);
  for (int t = 0; t < pre; ++t) ring.Issue(t);
  const RopeAngle ang = p.qkv != nullptr ? RopeAngleOf<D>(p, b) : RopeAngle{};
  PdlWait();
  PdlTrigger();
  if (split.tiles == 0) {
    FinishEmptySplit<T, D, kVec>(p, b, grp, split, smem_raw);
    return false;
  }
  // The ring's prologue: the tiles that hold only keys before `newest` (the row this kernel may
  // append) go before the rotation; a tile that holds it (only ever the split's last) after.
  const int newest = p.qkv != nullptr ? split.len - 1 : split.len;
  const bool append = p.qkv != nullptr && split.a <= newest && newest < split.e;
  int t = pre;
  for (; t < kStages - 1 && (t >= split.tiles || min(split.e, split.a + (t + 1) * kTile) <= newest); ++t)
    ring.Issue(t);
  LoadQueries<T, D>(p, b, grp, append, ang, sQ);
  for (; t < kStages - 1; ++t) ring.Issue(t);
  return true;
}

// Iteration `it` of a split's tile loop: issues the tile kStages - 1 ahead (into the buffer read
// in iteration it - 1, free since that iteration's closing barrier) and waits for tile it.
template <int kStages, typename Ring>
__device__ __forceinline__ void NextTile(int it, const Ring& ring) {
  ring.Issue(it + kStages - 1);
  ring.Wait(it);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) DecodeSplitKernel(DecodeAttnParams p) {
  constexpr int kRow = D + 8;  // padded row (elements)
  const int sp = blockIdx.x, b = blockIdx.z;
  const QueryGroup grp = GroupOf(p, false);
  const int hk = grp.hk;
  const int G = p.Hq / p.Hkv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);          // [kScalarStages][kTile][kRow]
  T* sV = sK + kScalarStages * kTile * kRow;       // [kScalarStages][kTile][kRow]
  float* sQ = reinterpret_cast<float*>(sV + kScalarStages * kTile * kRow);  // [G][D]
  float* sO = sQ + G * D;                          // [G][D]
  float* sP = sO + G * D;                          // [G][kTile]
  float* sM = sP + G * kTile;                      // [G] running max
  float* sL = sM + G;                              // [G] running sum
  float* sA = sL + G;                              // [G] rescale of this tile

  const SplitKeys split = SplitOf(p, b, grp, sp);
  const int a = split.a, e = split.e;
  const size_t pidx = split.pidx;
  const KvHead<T> kv = KvHeadOf<T, D>(p, b, hk);
  const CpAsyncRing<T, D, kRow, kScalarStages> ring{sK, sV, kv, a, e, split.tiles};
  if (!StartSplit<T, D, kScalarStages, 1>(p, b, grp, split, kScalarEarlyTiles, ring, sQ, smem_raw))
    return;
  for (int i = tid; i < G * D; i += kThreads) sO[i] = 0.f;
  for (int g = tid; g < G; g += kThreads) {
    sM[g] = -INFINITY;
    sL[g] = 0.f;
  }
  const int ntiles = split.tiles;
  const float scale_log2 = p.scale * 1.4426950408889634f;
  for (int it = 0; it < ntiles; ++it) {
    const int buf = it % kScalarStages, j0 = a + it * kTile;
    NextTile<kScalarStages>(it, ring);
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
  if (p.counters != nullptr) MergeIfLast<T, D, 1>(p, b, grp, smem_raw);
}

// The end of a split in the kernels whose warps each keep their own online softmax over part of
// every tile (DecodeSingleKernel, DecodeSplitMmaKernel): the warps' states, in shared memory as
// max sMw and sum sLw [kWarps][kRows] and unnormalised O sOw [kWarps][kRows][D], merge into the
// split's partial output for query rows 0..rows-1 (row r: o_part row pidx + r * splits, and its
// lse). A warp whose keys all lay past the end (max -inf) adds nothing.
template <int D, int kWarps, int kRows>
__device__ void MergeWarpsToPart(const DecodeAttnParams& p, const float* sMw, const float* sLw,
                                 const float* sOw, int rows, size_t pidx) {
  for (int oi = threadIdx.x; oi < rows * D; oi += kThreads) {
    const int r = oi / D, d = oi % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sMw[w * kRows + r]);
    float num = 0.f, den = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float m = sMw[w * kRows + r];
      if (m == -INFINITY) continue;
      const float f = exp2f(m - M);
      num += f * sOw[(w * kRows + r) * D + d];
      den += f * sLw[w * kRows + r];
    }
    const size_t row = pidx + static_cast<size_t>(r) * p.splits;
    p.o_part[row * D + d] = num / den;
    if (d == 0) p.lse_part[row] = M + log2f(den);
  }
}

// Single queries (G = 1: Llama 2 and other multi-head models), DecodeKernel::kSingle. The scalar
// kernel above spends three block barriers and about 500 instructions a thread per tile; this
// one, one barrier (the buffer's) and about 330: warp w owns keys [16w, 16w + 16) of every tile
// with its own online softmax, and lane l its outputs [l D/32, (l + 1) D/32) of O in registers.
// Two lanes score a key, each over alternate 16-byte chunks of the row (its query chunks in
// registers), so that a quarter-warp's reads fall on distinct banks: rows are padded by 16
// elements (a row shifts the banks by 8). P stays in fp32, as in the scalar kernel. The warps'
// (max, sum, O) merge through shared memory at the end of the split. Same split ranges, fused
// rotary and outputs as DecodeSplitKernel. Four stages (three tiles in flight) leave one block
// per SM, so fewer, longer splits: on an H100, Llama-2-7B steps 1.3-1.7% faster at 2k-4k and
// 1.2-2.6% slower at 16k-32k than with the scalar kernel (two and three stages: less gain at 4k,
// the same loss at 32k). PlanDecodeAttention picks it for short caches only.
constexpr int kSingleStages = 4;
template <int D>
__host__ __device__ constexpr int SingleRow() { return D + 16; }
template <int D>
__host__ __device__ constexpr size_t SingleTileSmemBytes(size_t elem) {
  return 2 * static_cast<size_t>(kSingleStages) * kTile * SingleRow<D>() * elem;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) DecodeSingleKernel(DecodeAttnParams p) {
  constexpr int kRow = SingleRow<D>();
  constexpr int kChunks = D / 8;            // 16-byte chunks per row
  constexpr int kWarps = kThreads / 32;
  constexpr int kKeys = kTile / kWarps;     // keys per warp per tile
  constexpr int kOwn = kChunks / 2;         // chunks a lane scores: 2i + (lane & 1)
  constexpr int kDims = D / 32;             // outputs per lane
  static_assert(kKeys * 2 == 32, "two lanes per key");
  const int sp = blockIdx.x, b = blockIdx.z;
  const QueryGroup grp = GroupOf(p, false);
  const int hk = grp.hk;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, half = lane & 1;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);         // [kSingleStages][kTile][kRow]
  T* sV = sK + kSingleStages * kTile * kRow;      // [kSingleStages][kTile][kRow]
  float* sQ = reinterpret_cast<float*>(smem_raw + SingleTileSmemBytes<D>(sizeof(T)));  // [D]

  const SplitKeys split = SplitOf(p, b, grp, sp);
  const int a = split.a, e = split.e;
  const KvHead<T> kv = KvHeadOf<T, D>(p, b, hk);
  const CpAsyncRing<T, D, kRow, kSingleStages> ring{sK, sV, kv, a, e, split.tiles};
  if (!StartSplit<T, D, kSingleStages, 1>(p, b, grp, split, kScalarEarlyTiles, ring, sQ, smem_raw))
    return;
  float q[kOwn * 8];  // this lane's query chunks 2i + half
#pragma unroll
  for (int i = 0; i < kOwn; ++i)
#pragma unroll
    for (int u = 0; u < 8; ++u) q[i * 8 + u] = sQ[(2 * i + half) * 8 + u];
  float o[kDims];
#pragma unroll
  for (int c = 0; c < kDims; ++c) o[c] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;
  const float scale_log2 = p.scale * 1.4426950408889634f;
  const int ntiles = split.tiles;
  const int key = warp * kKeys + (lane >> 1);  // this lane pair's key in a tile
  for (int it = 0; it < ntiles; ++it) {
    const int buf = it % kSingleStages, j0 = a + it * kTile;
    NextTile<kSingleStages>(it, ring);
    const T* tk = sK + buf * kTile * kRow;
    const T* tv = sV + buf * kTile * kRow;
    float acc = 0.f;
    const T* kr = tk + key * kRow + half * 8;
#pragma unroll
    for (int i = 0; i < kOwn; ++i) {
      const uint4 raw = *reinterpret_cast<const uint4*>(kr + i * 16);
      const T* k8 = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int u = 0; u < 8; ++u) acc += q[i * 8 + u] * ToF(k8[u]);
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    const float sc = j0 + key < e ? acc * scale_log2 : -INFINITY;
    // Online softmax over the warp's keys (each on two lanes).
    const float m_new = fmaxf(m_run, WarpMax(sc));
    const float msub = m_new == -INFINITY ? 0.f : m_new;  // every key so far past the end
    const float pk = exp2f(sc - msub);
    const float alpha = exp2f(m_run - msub);
    l_run = l_run * alpha + WarpSum(half ? 0.f : pk);
    m_run = m_new;
#pragma unroll
    for (int c = 0; c < kDims; ++c) o[c] *= alpha;
    // O += P V over the warp's keys: lane l's dims of each value row.
#pragma unroll
    for (int k = 0; k < kKeys; ++k) {
      const float pj = __shfl_sync(0xffffffffu, pk, 2 * k);
      const T* vr = tv + (warp * kKeys + k) * kRow + lane * kDims;
      if constexpr (kDims == 4) {
        const uint2 raw = *reinterpret_cast<const uint2*>(vr);
        const T* v4 = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int c = 0; c < 4; ++c) o[c] += pj * ToF(v4[c]);
      } else {
        static_assert(kDims == 2, "D is 64 or 128");
        const uint32_t raw = *reinterpret_cast<const uint32_t*>(vr);
        const T* v2 = reinterpret_cast<const T*>(&raw);
        o[0] += pj * ToF(v2[0]);
        o[1] += pj * ToF(v2[1]);
      }
    }
    __syncthreads();  // the buffer is refilled by the next iteration's prefetch
  }
  // Merge the warps (over the now idle tiles): max, sum and unnormalised O of each.
  float* sMw = reinterpret_cast<float*>(smem_raw);  // [kWarps]
  float* sLw = sMw + kWarps;                         // [kWarps]
  float* sOw = sLw + kWarps;                         // [kWarps][D]
  if (lane == 0) {
    sMw[warp] = m_run;
    sLw[warp] = l_run;
  }
#pragma unroll
  for (int c = 0; c < kDims; ++c) sOw[warp * D + lane * kDims + c] = o[c];
  __syncthreads();
  MergeWarpsToPart<D, kWarps, 1>(p, sMw, sLw, sOw, 1, split.pidx);
  if (p.counters != nullptr) MergeIfLast<T, D, 1>(p, b, grp, smem_raw);
}

// Groups of G = 1, 2, 4 or 8 queries per K/V head streamed through registers,
// DecodeKernel::kStream: no shared-memory tiles, so that the kernel runs in the shared-memory
// configuration the GEMVs around it run in (the largest L1, which their loads need in flight).
// A kernel with 134-148 KB of tiles cannot start on an SM until that SM's GEMV blocks have
// drained and its L1/shared split has changed, and the GEMV after it cannot start until it has
// drained: Nsight Compute's PM sampling over a decode step shows the DRAM idle for about 6 us
// after every QKV product (H200, session 12).
// Warp w takes steps w, w + kWarps, ... of the split's keys, kStep keys a step: kLpk = D/8 lanes
// per key row (a 16-byte chunk each, slot sub = lane / kLpk picks the row of a load), kU row
// loads of K and of V per lane in flight. Scores: each lane's kU x G partial dot products (load
// u, query g at index u G + g) are summed over its row's lanes by a butterfly that leaves lane c
// with index i = c / kDup (kDup = kLpk / (kU G) lanes alike). Online softmax per query in fp32:
// the lanes of query g reduce over the lanes that differ only in u and sub. O += P V with lane
// (chunk c, slot sub) owning the 8 outputs of chunk c of every query for the keys of its slot;
// slots summed at the end of the split. The warps then merge in order through one shared
// (G, D) sum (deterministic), and the block writes its split's part. Loads of a warp's first
// step are issued before PdlWait when its keys all precede the newest.
// Measured on an H200 (docs/benchmarks.md, session 12): Llama-2-7B (G = 1) decode steps 2% faster
// at 2k and 4k and 5% at 32k than with the kernels above; at 4k the attention reads at about 98%
// of the DRAM's peak from the end of the QKV product on. Llama-3-8B's groups of 4 were 5% (4k)
// and 25% (32k) slower than the tensor-core kernel: G dot products and G broadcasts of P per key
// make it issue-bound, so groups are not planned on it.
// The 8 elements of a 16-byte load, in fp32.
template <typename T>
__device__ __forceinline__ void Unpack8(const uint4& raw, float (&f)[8]) {
  const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int d = 0; d < 8; ++d) f[d] = ToF(h[d]);
}

template <int D, int G>
__host__ __device__ constexpr int StreamLoads() { return D / 8 / G < 8 ? D / 8 / G : 8; }

template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads) DecodeStreamKernel(DecodeAttnParams p) {
  constexpr int kLpk = D / 8;                  // lanes per key row
  constexpr int kKpl = 32 / kLpk;              // key rows per warp load
  constexpr int kU = StreamLoads<D, G>();      // loads of K (and of V) per lane per step
  constexpr int kStep = kU * kKpl;             // keys per warp step
  constexpr int kDup = kLpk / (kU * G);        // lanes holding each score
  constexpr int kWarps = kThreads / 32;
  static_assert(kU >= 1 && kDup >= 1, "a lane ends the butterfly with one score");
  const int sp = blockIdx.x, b = blockIdx.z;
  const QueryGroup grp = GroupOf(p, false);
  const int hk = grp.hk;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int c = lane % kLpk, sub = lane / kLpk;
  const int my_u = c / kDup / G, my_g = c / kDup % G;  // the score this lane ends with
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* sQ = reinterpret_cast<float*>(smem_raw);  // [G][D]; then the warps' O sum [G][D]
  float* sM = sQ + G * D;                          // [kWarps][G] max
  float* sL = sM + kWarps * G;                     // [kWarps][G] sum

  const SplitKeys split = SplitOf(p, b, grp, sp);
  const KvHead<T> kv = KvHeadOf<T, D>(p, b, hk);
  const int steps = (split.e - split.a + kStep - 1) / kStep;
  uint4 kr[kU], vr[kU];
  auto issue = [&](int step) {
    const int j0 = split.a + step * kStep + sub;
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int j = j0 + u * kKpl;
      const size_t at = static_cast<size_t>(j) * kv.stride + c * 8;
      const bool ok = j < split.e;
      kr[u] = ok ? *reinterpret_cast<const uint4*>(kv.k + at) : make_uint4(0, 0, 0, 0);
      vr[u] = ok ? *reinterpret_cast<const uint4*>(kv.v + at) : make_uint4(0, 0, 0, 0);
    }
  };
  // The first step's keys all written before this step (the newest, len - 1, is appended after
  // PdlWait): load them while the kernel before finishes.
  const bool early = split.tiles > 0 && warp < steps && min(split.e, split.a + (warp + 1) * kStep) <= split.len - 1;
  if (early) issue(warp);
  const RopeAngle ang = p.qkv != nullptr ? RopeAngleOf<D>(p, b) : RopeAngle{};
  PdlWait();
  PdlTrigger();
  constexpr int kVec = G > 1 ? 4 : 1;  // MergeIfLast's outputs per thread
  if (split.tiles == 0) {
    FinishEmptySplit<T, D, kVec>(p, b, grp, split, smem_raw);
    return;
  }
  const int newest = p.qkv != nullptr ? split.len - 1 : split.len;
  LoadQueries<T, D>(p, b, grp, p.qkv != nullptr && split.a <= newest && newest < split.e, ang, sQ);
  float q[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int d = 0; d < 8; ++d) q[g][d] = sQ[g * D + c * 8 + d];
  float o[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int d = 0; d < 8; ++d) o[g][d] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;  // of query my_g
  const float scale_log2 = p.scale * 1.4426950408889634f;
  for (int s = warp; s < steps; s += kWarps) {
    if (s != warp || !early) issue(s);
    float v[kU * G];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      float kf[8];
      Unpack8<T>(kr[u], kf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float acc = 0.f;
#pragma unroll
        for (int d = 0; d < 8; ++d) acc += q[g][d] * kf[d];
        v[u * G + g] = acc;
      }
    }
    // Butterfly over the row's lanes: at offset `off` a lane keeps the upper half of its n values
    // when (c & off), adding its partner's copy of them.
#pragma unroll
    for (int lvl = 0; (kLpk >> (lvl + 1)) >= 1; ++lvl) {
      const int off = kLpk >> (lvl + 1);
      const int n = (kU * G) >> lvl;
      if (n > 1) {
        const bool upper = (c & off) != 0;
#pragma unroll
        for (int i = 0; i < n / 2; ++i) {
          const float send = upper ? v[i] : v[i + n / 2];
          const float keep = upper ? v[i + n / 2] : v[i];
          v[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
        }
      } else {
        v[0] += __shfl_xor_sync(0xffffffffu, v[0], off);
      }
    }
    const int key = split.a + s * kStep + my_u * kKpl + sub;
    const float sc = key < split.e ? v[0] * scale_log2 : -INFINITY;
    // Max and sum over the lanes of query my_g: offsets that change u (multiples of kDup G) or
    // the slot (multiples of kLpk), never a duplicate.
    float mx = sc;
#pragma unroll
    for (int off = kDup * G; off < kLpk; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
#pragma unroll
    for (int off = kLpk; off < 32; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    const float m_new = fmaxf(m_run, mx);  // finite: a step holds at least one key
    const float pk = exp2f(sc - m_new);
    const float alpha = exp2f(m_run - m_new);
    float sum = pk;
#pragma unroll
    for (int off = kDup * G; off < kLpk; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
#pragma unroll
    for (int off = kLpk; off < 32; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    l_run = l_run * alpha + sum;
    m_run = m_new;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float a_g = __shfl_sync(0xffffffffu, alpha, g * kDup);
#pragma unroll
      for (int d = 0; d < 8; ++d) o[g][d] *= a_g;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      float vf[8];
      Unpack8<T>(vr[u], vf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float pj = __shfl_sync(0xffffffffu, pk, sub * kLpk + (u * G + g) * kDup);
#pragma unroll
        for (int d = 0; d < 8; ++d) o[g][d] += pj * vf[d];
      }
    }
  }
  // The slots' outputs of chunk c summed; lanes of slot 0 hold the warp's O (unnormalised).
#pragma unroll
  for (int off = kLpk; off < 32; off <<= 1)
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int d = 0; d < 8; ++d) o[g][d] += __shfl_xor_sync(0xffffffffu, o[g][d], off);
  // The warps' states: each warp's max and sum per query, then the block's max per query; warp
  // by warp, O scaled to it is added to the shared sum (over sQ, read by every warp by now).
  if (lane < G * kDup && lane % kDup == 0) {
    sM[warp * G + my_g] = m_run;
    sL[warp * G + my_g] = l_run;
  }
  __syncthreads();
  float f[G];  // this warp's weight per query: 2^(m_w - M), 0 for a warp without keys
#pragma unroll
  for (int g = 0; g < G; ++g) {
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sM[w * G + g]);
    f[g] = sM[warp * G + g] == -INFINITY ? 0.f : exp2f(sM[warp * G + g] - M);
  }
  float* sO = sQ;  // [G][D]
  for (int w = 0; w < kWarps; ++w) {
    if (warp == w && sub == 0) {
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int d = 0; d < 8; ++d) {
          float* dst = sO + g * D + c * 8 + d;
          *dst = (w == 0 ? 0.f : *dst) + f[g] * o[g][d];
        }
    }
    __syncthreads();
  }
  // The split's part: O / l and the log-sum-exp per query, l = sum_w f_w l_w.
  for (int i = threadIdx.x; i < G * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float M = -INFINITY, den = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sM[w * G + g]);
#pragma unroll
    for (int w = 0; w < kWarps; ++w)
      if (sM[w * G + g] != -INFINITY) den += exp2f(sM[w * G + g] - M) * sL[w * G + g];
    const size_t row = split.pidx + static_cast<size_t>(g) * p.splits;
    p.o_part[row * D + d] = sO[i] / den;
    if (d == 0) p.lse_part[row] = M + log2f(den);
  }
  if (p.counters != nullptr) MergeIfLast<T, D, kVec>(p, b, grp, smem_raw);
}

// Grouped queries on tensor cores (G >= 2; more than 16 in slices of 16, a block each, see
// QueryGroup): a block's G queries of a K/V head are rows 0..G-1 of one 16-row m-tile (rows
// G..15 zero), so every K/V element read from shared memory serves all G queries through mma.sync
// instead of G scalar products. Same block, grid, split ranges, fused
// rotary and outputs (o_part / lse_part, then MergeIfLast) as DecodeSplitKernel. K/V tiles of 64
// keys in a ring of kMmaStages buffers filled by the copy engine (TmaRing: boxes of 64 keys x 64
// elements, 128-byte swizzle). Warp w owns keys [16w, 16w + 16) of every tile with its own online
// softmax (S = Q K^T: 16 x 16 per warp in fp32; P rounded to T for O += P V, as the prefill kernel
// does); at the end of the split the 4 warps' (max, sum, O) merge through shared memory.
template <int D>
__host__ __device__ constexpr size_t MmaTileSmemBytes(size_t elem) {
  return 2 * kMmaStages * static_cast<size_t>(kTile) * D * elem;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) DecodeSplitMmaKernel(DecodeAttnParams p) {
  constexpr int kWarps = kThreads / 32;
  static_assert(kTile == 16 * kWarps, "each warp owns 16 keys of a tile");
  const int sp = blockIdx.x, b = blockIdx.z;
  const QueryGroup grp = GroupOf(p, true);
  const int hk = grp.hk;
  const int G = grp.n;  // this block's queries: the group's slice g0 .. g0 + G - 1
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;  // mma fragment coordinates: rows g and g + 8
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // The tiles start at the first 1024-byte boundary (KernelFor's shared memory leaves room).
  unsigned char* tiles = smem_raw + ((1024 - (SmemAddr(smem_raw) & 1023)) & 1023);
  T* sK = reinterpret_cast<T*>(tiles);   // [kMmaStages][D / 64][kTile][64], TmaRing's layout
  T* sV = sK + kMmaStages * kTile * D;   // likewise
  float* sQ = reinterpret_cast<float*>(tiles + MmaTileSmemBytes<D>(sizeof(T)));  // [G][D], G <= 16

  const SplitKeys split = SplitOf(p, b, grp, sp);
  const int a = split.a, e = split.e;
  const size_t pidx = split.pidx;
  __shared__ uint64_t full[kMmaStages];
  using Ring = TmaRing<T, D, kMmaStages>;
  const Ring ring{sK, sV, full, p.k_maps + b, p.v_maps + b, hk, a, split.tiles};
  ring.Init();
  __syncthreads();
  if (!StartSplit<T, D, kMmaStages, 4>(p, b, grp, split, kMmaEarlyTiles, ring, sQ, smem_raw)) return;
  const int ntiles = split.tiles;

  // Q as A fragments (16 x D, rows >= G zero), values already rounded to T.
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int c = kk * 16 + 2 * t4;
    qf[kk][0] = g < G ? Pack2<T>(sQ[g * D + c], sQ[g * D + c + 1]) : 0u;
    qf[kk][1] = g + 8 < G ? Pack2<T>(sQ[(g + 8) * D + c], sQ[(g + 8) * D + c + 1]) : 0u;
    qf[kk][2] = g < G ? Pack2<T>(sQ[g * D + c + 8], sQ[g * D + c + 9]) : 0u;
    qf[kk][3] = g + 8 < G ? Pack2<T>(sQ[(g + 8) * D + c + 8], sQ[(g + 8) * D + c + 9]) : 0u;
  }
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  const float scale_log2 = p.scale * 1.4426950408889634f;

  for (int it = 0; it < ntiles; ++it) {
    const int buf = it % kMmaStages, j0 = a + it * kTile;
    NextTile<kMmaStages>(it, ring);
    const T* tk = sK + buf * kTile * D;
    const T* tv = sV + buf * kTile * D;
    if (j0 + kTile > e) ring.ZeroValuesFrom(buf, e - j0);  // scores masked below
    // S = Q K^T over this warp's 16 keys: two 8-key n-tiles.
    float sacc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t bk[4];
      const int r = warp * 16 + (lane & 7) + ((lane >> 4) << 3);
      const int col = kk * 16 + ((lane >> 3) & 1) * 8;
      LdMatrixX4(bk, tk + Ring::At(r, col));
      Mma16816<T>(sacc[0], qf[kk], bk[0], bk[1]);
      Mma16816<T>(sacc[1], qf[kk], bk[2], bk[3]);
    }
    // Keys past the split's end (zero-filled rows) are masked.
    if (j0 + kTile > e) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int q = 0; q < 4; ++q)
          if (j0 + warp * 16 + nt * 8 + 2 * t4 + (q & 1) >= e) sacc[nt][q] = -INFINITY;
    }
    // Online softmax for rows g (q = 0, 1) and g + 8 (q = 2, 3).
    float mx[2] = {fmaxf(fmaxf(sacc[0][0], sacc[0][1]), fmaxf(sacc[1][0], sacc[1][1])),
                   fmaxf(fmaxf(sacc[0][2], sacc[0][3]), fmaxf(sacc[1][2], sacc[1][3]))};
    float msub[2], alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r] * scale_log2);
      msub[r] = m_new == -INFINITY ? 0.f : m_new;
      alpha[r] = exp2f(m_run[r] - msub[r]);
      m_run[r] = m_new;
      l_run[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int q = 0; q < 4; ++q) sacc[nt][q] = exp2f(sacc[nt][q] * scale_log2 - msub[q >> 1]);
      l_run[0] += sacc[nt][0] + sacc[nt][1];
      l_run[1] += sacc[nt][2] + sacc[nt][3];
    }
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      o[i][0] *= alpha[0];
      o[i][1] *= alpha[0];
      o[i][2] *= alpha[1];
      o[i][3] *= alpha[1];
    }
    // O += P V: P (16 x 16 keys) from the score registers, V rows of this warp's keys.
    uint32_t pa[4];
    pa[0] = Pack2<T>(sacc[0][0], sacc[0][1]);
    pa[1] = Pack2<T>(sacc[0][2], sacc[0][3]);
    pa[2] = Pack2<T>(sacc[1][0], sacc[1][1]);
    pa[3] = Pack2<T>(sacc[1][2], sacc[1][3]);
#pragma unroll
    for (int nt = 0; nt < D / 8; nt += 2) {
      uint32_t bv[4];
      const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
      const int col = nt * 8 + (lane >> 4) * 8;
      LdMatrixX4Trans(bv, tv + Ring::At(r, col));
      Mma16816<T>(o[nt], pa, bv[0], bv[1]);
      Mma16816<T>(o[nt + 1], pa, bv[2], bv[3]);
    }
    __syncthreads();  // the buffer is refilled by the next iteration's prefetch
  }

  // Merge the warps: each writes its rows' max, sum and unnormalised O; then every (row, d).
  float* sMw = reinterpret_cast<float*>(smem_raw);  // [kWarps][16], over the (now idle) tiles
  float* sLw = sMw + kWarps * 16;                    // [kWarps][16]
  float* sOw = sLw + kWarps * 16;                    // [kWarps][16][D]
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
  }
  if (t4 == 0) {
    sMw[warp * 16 + g] = m_run[0];
    sMw[warp * 16 + g + 8] = m_run[1];
    sLw[warp * 16 + g] = l_run[0];
    sLw[warp * 16 + g + 8] = l_run[1];
  }
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    float* row0 = sOw + (warp * 16 + g) * D + nt * 8 + 2 * t4;
    row0[0] = o[nt][0];
    row0[1] = o[nt][1];
    row0[8 * D] = o[nt][2];
    row0[8 * D + 1] = o[nt][3];
  }
  __syncthreads();
  MergeWarpsToPart<D, kWarps, 16>(p, sMw, sLw, sOw, G, pidx);
  if (p.counters != nullptr) MergeIfLast<T, D, 4>(p, b, grp, smem_raw);
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

// Whether the streaming kernel takes groups of G queries of head size D.
bool StreamFits(int G, int D) { return (G == 1 || G == 2 || G == 4 || G == 8) && (D == 64 || D == 128); }

// The tensor-core kernel takes groups of 2 or more queries, more than 16 in slices of 16 over
// blocks of their own (Falcon-7B's 71: five, each loading the head's K/V tiles)
// (KVR_DECODE_MMA=0, a benchmark knob, keeps every group on the scalar kernel). Single queries do
// not run it: on an H100 the tensor-core
// kernel gave Llama-2-7B's decode steps no gain (docs/benchmarks.md, session 6); with four
// stages on an H200, 1.3% faster at 4k and 1.8% slower at 32k (session 7).
bool UseMma(int G) {
  static const bool allowed = [] {
    const char* env = std::getenv("KVR_DECODE_MMA");
    return env == nullptr || std::atoi(env) != 0;
  }();
  return allowed && G >= 2;
}

// The kernel that `kind` names (kAuto resolved by G) and its dynamic shared memory (splits: the
// merge's share).
DecodeKernel Resolve(DecodeKernel kind, int G) {
  if (kind != DecodeKernel::kAuto) return kind;
  return UseMma(G) ? DecodeKernel::kMma : DecodeKernel::kScalar;
}
template <typename T, int D>
void KernelFor(DecodeKernel kind, int G, int splits, void (**kernel)(DecodeAttnParams), size_t* smem) {
  switch (Resolve(kind, G)) {
    case DecodeKernel::kMma: {
      *kernel = DecodeSplitMmaKernel<T, D>;
      const size_t merge = (2 * 4 * 16 + 4 * 16 * static_cast<size_t>(D)) * sizeof(float);
      // + 1 KB: the tiles start at a 1024-byte boundary.
      const int rows = std::min(G, 16);  // a block's slice of the group
      *smem = std::max({MmaTileSmemBytes<D>(sizeof(T)) + 1024, merge, MergeSmemBytes(rows, splits)}) +
              static_cast<size_t>(rows) * D * sizeof(float);
      return;
    }
    case DecodeKernel::kStream:
      *kernel = G == 1 ? DecodeStreamKernel<T, D, 1>
                : G == 2 ? DecodeStreamKernel<T, D, 2>
                : G == 4 ? DecodeStreamKernel<T, D, 4>
                         : DecodeStreamKernel<T, D, 8>;
      *smem = std::max((static_cast<size_t>(G) * D + 2 * (kThreads / 32) * G) * sizeof(float), MergeSmemBytes(G, splits));
      return;
    case DecodeKernel::kSingle: {
      *kernel = DecodeSingleKernel<T, D>;
      const size_t merge = (2 * 4 + 4 * static_cast<size_t>(D)) * sizeof(float);
      *smem = std::max({SingleTileSmemBytes<D>(sizeof(T)), merge, MergeSmemBytes(G, splits)}) +
              static_cast<size_t>(D) * sizeof(float);
      return;
    }
    default:
      *kernel = DecodeSplitKernel<T, D>;
      *smem = std::max(TileSmemBytes(D, sizeof(T)), MergeSmemBytes(G, splits)) + StateSmemBytes(G, D);
  }
}

template <typename T, int D>
cudaError_t Launch(const DecodeAttnParams& p, cudaStream_t stream) {
  const int G = p.Hq / p.Hkv;
  void (*kernel)(DecodeAttnParams) = nullptr;
  size_t smem = 0;
  KernelFor<T, D>(p.kernel, G, p.splits, &kernel, &smem);
  KVR_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  const int slices = QuerySlices(G, Resolve(p.kernel, G) == DecodeKernel::kMma);
  KVR_CUDA_TRY(LaunchPdl(kernel, dim3(p.splits, p.Hkv * slices, p.B), dim3(kThreads), smem, stream, p));
  if (p.counters != nullptr) return cudaSuccess;
  return LaunchPdl(DecodeCombineKernel<T>, dim3(p.Hq, p.B), dim3(D), 0, stream, p);
}

}  // namespace

DecodeAttnPlan PlanDecodeAttention(DType dt, int B, int Hq, int Hkv, int D, int num_sms, int length_class) {
  static const int single = [] {  // -1: by length; 0: never; 1: at any length (KVR_DECODE_SINGLE)
    const char* env = std::getenv("KVR_DECODE_SINGLE");
    return env == nullptr ? -1 : std::atoi(env) != 0 ? 1 : 0;
  }();
  const int G = Hkv > 0 && Hq % Hkv == 0 ? Hq / Hkv : 0;
  static const bool stream = [] {  // KVR_DECODE_STREAM=0: single queries on the kernels before it
    const char* env = std::getenv("KVR_DECODE_STREAM");
    return env == nullptr || std::atoi(env) != 0;
  }();
  DecodeAttnPlan plan;
  plan.kernel = G == 1 && stream && StreamFits(G, D) ? DecodeKernel::kStream
                : G == 1 && B == 1 && (single == 1 || (single < 0 && length_class == 0))
                    ? DecodeKernel::kSingle
                    : Resolve(DecodeKernel::kAuto, G);
  // Blocks one SM holds at once (shared memory bounds it), unless a benchmark sets the number.
  int per_sm = 0;
  if (const char* env = std::getenv("KVR_DECODE_SPLITS_PER_SM"); env != nullptr) per_sm = std::atoi(env);
  if (per_sm <= 0 && G > 0 && (D == 64 || D == 128)) {
    KVR_DISPATCH_DTYPE(dt, T, [&] {
      void (*kernel)(DecodeAttnParams) = nullptr;
      size_t smem = 0;
      if (D == 64) KernelFor<T, 64>(plan.kernel, G, 1, &kernel, &smem);
      else KernelFor<T, 128>(plan.kernel, G, 1, &kernel, &smem);
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)) == cudaSuccess)
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
      return cudaSuccess;
    });
  }
  if (per_sm <= 0) per_sm = 2;
  // One full wave: as many splits per (sequence, kv head) as the resident blocks allow.
  const int s = per_sm * num_sms / (B * Hkv * QuerySlices(G, plan.kernel == DecodeKernel::kMma));
  plan.splits = s < 1 ? 1 : (s > 128 ? 128 : s);
  return plan;
}

cudaError_t EncodeKvTensorMap(DType dt, const void* base, int capacity, int Hkv, int D, CUtensorMap* map) {
  // cuTensorMapEncodeTiled is a driver function: taken through the runtime, so that nothing links
  // the driver library directly.
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr) return cudaErrorNotSupported;
  if (base == nullptr || capacity < 1 || Hkv < 1 || (D != 64 && D != 128)) return cudaErrorInvalidValue;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(Hkv),
                              static_cast<cuuint64_t>(capacity)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(D) * 2, static_cast<cuuint64_t>(Hkv) * D * 2};  // bytes
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(kTile)};
  const cuuint32_t step[3] = {1, 1, 1};
  const CUresult r = encode(map, dt == DType::kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                            3, const_cast<void*>(base), dims, strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t DecodeAttention(DType dt, const DecodeAttnParams& p, cudaStream_t stream) {
  if (p.B <= 0) return cudaSuccess;
  if (p.Hkv <= 0 || p.Hq % p.Hkv != 0 || (p.D != 64 && p.D != 128) || p.splits < 1 ||
      (p.Hq / p.Hkv) * p.D > 8192 || (p.kernel == DecodeKernel::kSingle && p.Hq != p.Hkv) ||
      (p.kernel == DecodeKernel::kStream && !StreamFits(p.Hq / p.Hkv, p.D)) ||
      (p.qkv != nullptr && (p.inv_freq == nullptr || p.k_out == nullptr || p.v_out == nullptr)) ||
      (Resolve(p.kernel, p.Hq / p.Hkv) == DecodeKernel::kMma && (p.k_maps == nullptr || p.v_maps == nullptr)))
    return cudaErrorInvalidValue;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    return p.D == 64 ? Launch<T, 64>(p, stream) : Launch<T, 128>(p, stream);
  });
}

}  // namespace kvr::kernels
