// Prefill attention kernel (FlashAttention-2 style on mma.sync tensor cores). See
// attention_prefill.cuh for the contract.
//
// Block: kWarps warps, Br = 16 * kWarps query rows of one query head; each warp owns 16 rows.
// Keys in tiles of Bc = 64, double-buffered in shared memory through cp.async. Shared tiles are
// row-major with the 16-byte chunks of a row XOR-swizzled by (row & 7), so ldmatrix is
// conflict-free. S = Q K^T and O += P V run on m16n8k16 mma with fp32 accumulators; P is reused
// from the S accumulators in registers. Heaviest query blocks (latest positions) start first.
#include <cfloat>

#include "kernels/attention_prefill.cuh"
#include "kernels/common.cuh"
#include "kernels/mma.cuh"

namespace kvr::kernels {
namespace {

constexpr int kBc = 64;

// kMT = m-tiles (16 query rows each) per warp. kMT == 1: Q fragments stay in registers for the
// whole key loop. kMT == 2: each K/V fragment read from shared memory feeds two m-tiles (half the
// shared-memory traffic per product), and Q fragments are re-read from shared memory per tile to
// stay within 255 registers.
template <typename T, int D, int kWarps, int kMT>
__global__ void __launch_bounds__(kWarps * 32, 1) PrefillAttnKernel(PrefillAttnParams p) {
  constexpr int kBr = 16 * kMT * kWarps;
  constexpr int kThreads = kWarps * 32;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBr * D;        // [2][kBc][D]
  T* sV = sK + 2 * kBc * D;    // [2][kBc][D]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int m_block = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y;
  const int hk = h / (p.Hq / p.Hkv);
  const int m0 = m_block * kBr;
  const int rows = min(kBr, p.n - m0);
  const int q_stride = p.Hq * D, kv_stride = p.Hkv * D;
  const T* gq = static_cast<const T*>(p.q) + static_cast<size_t>(m0) * q_stride + h * D;
  const T* gk = static_cast<const T*>(p.k) + hk * D;
  const T* gv = static_cast<const T*>(p.v) + hk * D;

  // Keys visible to this block: [kbeg, kend).
  const int first_pos = p.s + m0, last_pos = p.s + m0 + rows - 1;
  const int kend = last_pos + 1;
  int kbeg = 0;
  if (p.window > 0) kbeg = max(0, first_pos - p.window + 1);
  kbeg = (kbeg / kBc) * kBc;
  const int ntiles = (kend - kbeg + kBc - 1) / kBc;

  // Q tile (rows past n are zero-filled).
  for (int c = tid; c < kBr * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool ok = r < rows;
    CpAsync16(sQ + Swz<D>(r, col), gq + (ok ? static_cast<size_t>(r) * q_stride + col : 0),
              ok ? 16 : 0);
  }
  auto load_kv = [&](int tile, int buf) {
    CpAsyncKvTiles<T, D, kBc, kThreads, D, true>(sK + buf * kBc * D, sV + buf * kBc * D, gk, gv,
                                                 kbeg + tile * kBc, kend, kv_stride);
  };
  load_kv(0, 0);
  CpAsyncCommit();

  const float scale_log2 = p.scale * 1.4426950408889634f;
  constexpr int kQRegs = kMT == 1 ? D / 16 : 1;
  uint32_t qf[kQRegs][4];
  float o[kMT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
  float m_run[kMT][2], l_run[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.f;
  }
  const int g = lane >> 2, t4 = lane & 3;
  const int wrow = warp * 16 * kMT;  // block-local first row of this warp

  for (int it = 0; it < ntiles; ++it) {
    const int buf = it & 1;
    if (it + 1 < ntiles) {
      load_kv(it + 1, buf ^ 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    if constexpr (kMT == 1) {
      if (it == 0) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          const int r = wrow + (lane & 15), col = kk * 16 + (lane >> 4) * 8;
          LdMatrixX4(qf[kk], sQ + Swz<D>(r, col));
        }
      }
    }
    const T* tk = sK + buf * kBc * D;
    const T* tv = sV + buf * kBc * D;
    const int j0 = kbeg + it * kBc;

    // S = Q K^T: (16 kMT) x 64 per warp.
    float sacc[kMT][kBc / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int i = 0; i < kBc / 8; ++i) sacc[mt][i][0] = sacc[mt][i][1] = sacc[mt][i][2] = sacc[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if constexpr (kMT == 1) {
#pragma unroll
          for (int e = 0; e < 4; ++e) qa[mt][e] = qf[kk][e];
        } else {
          const int r = wrow + mt * 16 + (lane & 15), col = kk * 16 + (lane >> 4) * 8;
          LdMatrixX4(qa[mt], sQ + Swz<D>(r, col));
        }
      }
#pragma unroll
      for (int nt = 0; nt < kBc / 8; nt += 2) {
        uint32_t b[4];
        const int r = nt * 8 + (lane & 7) + ((lane >> 4) << 3);
        const int col = kk * 16 + ((lane >> 3) & 1) * 8;
        LdMatrixX4(b, tk + Swz<D>(r, col));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Mma16816<T>(sacc[mt][nt], qa[mt], b[0], b[1]);
          Mma16816<T>(sacc[mt][nt + 1], qa[mt], b[2], b[3]);
        }
      }
    }

#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int row0 = wrow + mt * 16 + g;
      const int qpos0 = first_pos + row0, qpos1 = qpos0 + 8;
      const int wfirst = first_pos + wrow + mt * 16;  // first position of this m-tile
      // Mask (only tiles that cross the diagonal, the window edge or the end of the keys).
      const bool need_mask = (j0 + kBc - 1 > wfirst) ||
                             (p.window > 0 && j0 <= wfirst + 15 - p.window);
      if (need_mask) {
#pragma unroll
        for (int nt = 0; nt < kBc / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = j0 + nt * 8 + 2 * t4 + (e & 1);
            const int qp = (e < 2) ? qpos0 : qpos1;
            const bool vis = j <= qp && (p.window <= 0 || qp - j < p.window);
            if (!vis) sacc[mt][nt][e] = -INFINITY;
          }
        }
      }
      // Online softmax, rows g (e = 0, 1) and g + 8 (e = 2, 3).
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < kBc / 8; ++nt) {
        mx[0] = fmaxf(mx[0], fmaxf(sacc[mt][nt][0], sacc[mt][nt][1]));
        mx[1] = fmaxf(mx[1], fmaxf(sacc[mt][nt][2], sacc[mt][nt][3]));
      }
      float alpha[2], msub[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m_run[mt][r], mx[r] * scale_log2);
        msub[r] = (m_new == -INFINITY) ? 0.f : m_new;
        alpha[r] = FastExp2(m_run[mt][r] - msub[r]);
        m_run[mt][r] = m_new;
        l_run[mt][r] *= alpha[r];
      }
#pragma unroll
      for (int nt = 0; nt < kBc / 8; ++nt) {
        sacc[mt][nt][0] = FastExp2(sacc[mt][nt][0] * scale_log2 - msub[0]);
        sacc[mt][nt][1] = FastExp2(sacc[mt][nt][1] * scale_log2 - msub[0]);
        sacc[mt][nt][2] = FastExp2(sacc[mt][nt][2] * scale_log2 - msub[1]);
        sacc[mt][nt][3] = FastExp2(sacc[mt][nt][3] * scale_log2 - msub[1]);
        l_run[mt][0] += sacc[mt][nt][0] + sacc[mt][nt][1];
        l_run[mt][1] += sacc[mt][nt][2] + sacc[mt][nt][3];
      }
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[mt][i][0] *= alpha[0];
        o[mt][i][1] *= alpha[0];
        o[mt][i][2] *= alpha[1];
        o[mt][i][3] *= alpha[1];
      }
    }

    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        a[mt][0] = Pack2<T>(sacc[mt][2 * kk][0], sacc[mt][2 * kk][1]);
        a[mt][1] = Pack2<T>(sacc[mt][2 * kk][2], sacc[mt][2 * kk][3]);
        a[mt][2] = Pack2<T>(sacc[mt][2 * kk + 1][0], sacc[mt][2 * kk + 1][1]);
        a[mt][3] = Pack2<T>(sacc[mt][2 * kk + 1][2], sacc[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int nt = 0; nt < D / 8; nt += 2) {
        uint32_t b[4];
        const int r = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int col = nt * 8 + (lane >> 4) * 8;
        LdMatrixX4Trans(b, tv + Swz<D>(r, col));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Mma16816<T>(o[mt][nt], a[mt], b[0], b[1]);
          Mma16816<T>(o[mt][nt + 1], a[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the buffer is refilled by the next iteration's prefetch
  }

  // Normalise and store.
  T* gout = static_cast<T*>(p.out) + static_cast<size_t>(m0) * q_stride + h * D;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l_run[mt][r] += __shfl_xor_sync(0xffffffffu, l_run[mt][r], 1);
      l_run[mt][r] += __shfl_xor_sync(0xffffffffu, l_run[mt][r], 2);
    }
    const float inv0 = l_run[mt][0] > 0.f ? 1.f / l_run[mt][0] : 0.f;
    const float inv1 = l_run[mt][1] > 0.f ? 1.f / l_run[mt][1] : 0.f;
    const int row0 = wrow + mt * 16 + g;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
      const int col = nt * 8 + 2 * t4;
      if (row0 < rows) {
        *reinterpret_cast<uint32_t*>(gout + static_cast<size_t>(row0) * q_stride + col) =
            Pack2<T>(o[mt][nt][0] * inv0, o[mt][nt][1] * inv0);
      }
      if (row0 + 8 < rows) {
        *reinterpret_cast<uint32_t*>(gout + static_cast<size_t>(row0 + 8) * q_stride + col) =
            Pack2<T>(o[mt][nt][2] * inv1, o[mt][nt][3] * inv1);
      }
    }
  }
}

template <typename T, int D, int kWarps, int kMT = 1>
cudaError_t Launch(const PrefillAttnParams& p, cudaStream_t stream) {
  constexpr int kBr = 16 * kMT * kWarps;
  const size_t smem = (static_cast<size_t>(kBr) * D + 4 * kBc * D) * sizeof(T);
  auto kernel = PrefillAttnKernel<T, D, kWarps, kMT>;
  KVR_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  dim3 grid((p.n + kBr - 1) / kBr, p.Hq);
  kernel<<<grid, kWarps * 32, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t PrefillAttention(DType dt, const PrefillAttnParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  if (p.Hkv <= 0 || p.Hq % p.Hkv != 0 || (p.D != 64 && p.D != 128)) return cudaErrorInvalidValue;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    // variant 1: 8 warps x 16 rows (128 queries a block); 2: 4 warps x 16 rows (64 queries,
    // short chunks); 3: 4 warps x 32 rows (128 queries, K/V fragments shared by two m-tiles).
    // Default by measurement (H100, Llama-7B attention, causal, docs/benchmarks.md): for D = 128,
    // variant 3 ran 325 TFLOP/s at 32k and 311 at 16k against 289 / 280 for variant 1; D = 64 is
    // not measured yet and keeps variant 1 (no spills either way). Chunks of <= 64 queries: 2.
    int v = p.variant;
    if (v == 0) v = p.n <= 64 ? 2 : (p.D == 128 ? 3 : 1);
    if (p.D == 64) {
      if (v == 3) return Launch<T, 64, 4, 2>(p, stream);
      return v == 2 ? Launch<T, 64, 4>(p, stream) : Launch<T, 64, 8>(p, stream);
    }
    if (v == 3) return Launch<T, 128, 4, 2>(p, stream);
    return v == 2 ? Launch<T, 128, 4>(p, stream) : Launch<T, 128, 8>(p, stream);
  });
}

}  // namespace kvr::kernels
