// Device helpers shared by the kernels in this folder (not a public header: included by .cu only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>

#include "kernels/cuda_check.h"

namespace kvr::kernels {

template <typename T>
__device__ __forceinline__ float ToF(T v);
template <>
__device__ __forceinline__ float ToF<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float ToF<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T FromF(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 FromF<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <>
__device__ __forceinline__ __half FromF<__half>(float v) { return __float2half(v); }

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of up to 1024 threads (blockDim.x a multiple of 32). `scratch` holds 32 floats.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.f;
  return WarpSum(v);
}

// Programmatic dependent launch (Hopper). A kernel launched by LaunchPdl may start while the
// kernel before it on the stream is still running, once that kernel's blocks have all called
// PdlTrigger (or exited). Contract for every kernel launched that way: before PdlWait it reads
// only immutable data (weights) and writes nothing; PdlWait returns when the previous kernel has
// completed and its writes are visible. Both are no-ops when the kernel was launched normally.
// Every kernel here calls PdlTrigger only after PdlWait: triggering first (so that the kernel
// after could start while this one still waits) made a decode step 10-13% slower on an H200
// (docs/benchmarks.md, session 7): the early blocks hold SM slots the running kernels need.
// Decode steps are chains of short kernels: this hides each launch and lets a GEMV start
// streaming its weights while the kernel before it finishes.
__device__ __forceinline__ void PdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void PdlTrigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Whether LaunchPdl asks for early launch: on unless the environment sets KVR_PDL=0 (for
// measuring what it buys; read once).
inline bool PdlEnabled() {
  static const bool on = [] {
    const char* e = std::getenv("KVR_PDL");
    return !(e != nullptr && e[0] == '0');
  }();
  return on;
}

// kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization allowed.
template <typename... KArgs, typename... Args>
cudaError_t LaunchPdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = PdlEnabled() ? 1 : 0;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}

// Calls f.template operator()<T>() with T the CUDA element type of `dt`.
#define KVR_DISPATCH_DTYPE(dt, T, ...)          \
  [&]() -> cudaError_t {                        \
    if ((dt) == ::kvr::kernels::DType::kBF16) { \
      using T = __nv_bfloat16;                  \
      return __VA_ARGS__();                     \
    } else {                                    \
      using T = __half;                         \
      return __VA_ARGS__();                     \
    }                                           \
  }()

}  // namespace kvr::kernels
