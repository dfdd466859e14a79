// Tensor-core and async-copy primitives (PTX) shared by the attention kernels. Internal header.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace kvr::kernels {

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Element offset of (row, col) in a row-major (rows, D) tile of 16-bit elements whose 16-byte
// chunks are XOR-swizzled by (row & 7) within each group of 8 chunks, so that ldmatrix over 8
// consecutive rows at one column is free of bank conflicts.
template <int D>
__device__ __forceinline__ int Swz(int row, int col) {
  return row * D + ((((col >> 3) ^ row) & 7) | ((col >> 3) & ~7)) * 8 + (col & 7);
}

// 16-byte async copy global -> shared; bytes beyond src_bytes (0 or 16) are zero-filled. The
// L2::128B hint has the L2 fetch the whole 128-byte line on a miss: the decode-attention kernels
// stream their K/V rows 1-2% faster with it (docs/benchmarks.md, session 11).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(smem)),
               "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }

// Key/value rows [j0, j0 + kRows) (row stride `stride` elements in global memory) into two
// shared (kRows, kSmemRow) tiles by cp.async; rows at or past `end` are zero-filled. kSwizzle:
// the rows are Swz-swizzled (kSmemRow == D); otherwise padded past D to kSmemRow elements. Every
// thread of the kThreads-thread block takes part (16 bytes of K and of V a pass); the caller
// commits and waits. A pass covers kPass rows and a thread's row advances by kPass, a multiple of
// 8 that keeps its swizzle, so its addresses are its first ones plus constants.
template <typename T, int D, int kRows, int kThreads, int kSmemRow, bool kSwizzle>
__device__ __forceinline__ void CpAsyncKvTiles(T* dk, T* dv, const T* gk, const T* gv, int j0,
                                               int end, size_t stride) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kPass = kThreads / kChunks;
  static_assert(kThreads % kChunks == 0 && kPass % 8 == 0 && kRows % kPass == 0, "whole passes");
  static_assert(!kSwizzle || kSmemRow == D, "swizzled rows are not padded");
  const int r0 = threadIdx.x / kChunks, col = (threadIdx.x % kChunks) * 8;
  const int s0 = kSwizzle ? Swz<D>(r0, col) : r0 * kSmemRow + col;
  const size_t g0 = static_cast<size_t>(j0 + r0) * stride + col;
#pragma unroll
  for (int i = 0; i < kRows / kPass; ++i) {
    const bool ok = j0 + r0 + i * kPass < end;
    const size_t g = ok ? g0 + static_cast<size_t>(i) * kPass * stride : 0;
    CpAsync16(dk + s0 + i * kPass * kSmemRow, gk + g, ok ? 16 : 0);
    CpAsync16(dv + s0 + i * kPass * kSmemRow, gv + g, ok ? 16 : 0);
  }
}

// The copy engine (TMA): tensor tiles into shared memory, completing on an mbarrier. An
// mbarrier is a 64-bit shared word; one with an arrival count of 1 completes a phase when its
// arrival (MbarArriveExpectTx, which also announces the bytes to come) has happened and those
// bytes have landed. Phases alternate parity 0, 1, 0, ...; MbarWait(bar, parity) returns once the
// phase of that parity has completed.
__device__ __forceinline__ void MbarInit(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SmemAddr(bar)), "r"(count) : "memory");
}
// After MbarInit, before a block barrier: the initialised mbarriers are seen by the copy engine.
__device__ __forceinline__ void FenceMbarInit() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void MbarArriveExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(SmemAddr(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void MbarWait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(SmemAddr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}
// A tensor map in global memory (written by a host copy) is read through the tensor-map proxy:
// this orders it after the copy for the copy engine's later use of the map.
__device__ __forceinline__ void FenceTensorMap(const void* map) {
  asm volatile("fence.proxy.tensormap::generic.acquire.gpu [%0], 128;\n" ::"l"(map) : "memory");
}
// The box of `map` at coordinates (c0, c1, c2) (innermost first) into shared memory at smem
// (1024-byte aligned for the 128-byte swizzle), completing its bytes on bar. Elements outside
// the tensor are zero-filled.
__device__ __forceinline__ void TmaLoad3d(void* smem, const void* map, int c0, int c1, int c2, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(SmemAddr(smem)),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(SmemAddr(bar))
      : "memory");
}
// Orders this thread's earlier global writes (generic proxy) before later copy-engine reads of
// them (async proxy), once a block barrier separates the two.
__device__ __forceinline__ void FenceProxyAsyncGlobal() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(smem)));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(smem)));
}

// d (16x8 fp32) += a (16x16) * b (16x8), a row-major, b column-major.
template <typename T>
__device__ __forceinline__ void Mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1);
template <>
__device__ __forceinline__ void Mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void Mma16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                 uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit (ex2.approx, flush-to-zero); 2^-inf = 0.
__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats -> one register of two T (lo in the low half).
template <typename T>
__device__ __forceinline__ uint32_t Pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t Pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t Pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

}  // namespace kvr::kernels
