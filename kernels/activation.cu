// Activation, bias and fill kernels. See activation.cuh.
#include "kernels/activation.cuh"
#include "kernels/common.cuh"

namespace kvr::kernels {
namespace {

constexpr int kThreads = 256;

inline int Blocks(size_t count) {
  size_t b = (count + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65536 * 8 ? b : 65536 * 8);
}

// grid (column blocks, rows); each thread handles 8 consecutive columns (16-byte accesses when
// F % 8 == 0, else element by element).
template <typename T>
__global__ void SiluGateKernel(const T* __restrict__ in, int n, int F, T* __restrict__ out) {
  PdlWait();
  PdlTrigger();
  const int j0 = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (j0 >= F) return;
  for (int r = blockIdx.y; r < n; r += gridDim.y) {
    const T* g = in + static_cast<size_t>(r) * 2 * F;
    const T* u = g + F;
    T* o = out + static_cast<size_t>(r) * F;
    if ((F & 7) == 0) {
      const uint4 gv = *reinterpret_cast<const uint4*>(g + j0);
      const uint4 uv = *reinterpret_cast<const uint4*>(u + j0);
      const T* ga = reinterpret_cast<const T*>(&gv);
      const T* ua = reinterpret_cast<const T*>(&uv);
      uint4 ov;
      T* oa = reinterpret_cast<T*>(&ov);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float x = ToF(ga[k]);
        oa[k] = FromF<T>(x / (1.f + __expf(-x)) * ToF(ua[k]));
      }
      *reinterpret_cast<uint4*>(o + j0) = ov;
    } else {
      for (int j = j0; j < min(F, j0 + 8); ++j) {
        const float x = ToF(g[j]);
        o[j] = FromF<T>(x / (1.f + __expf(-x)) * ToF(u[j]));
      }
    }
  }
}

template <typename T>
__global__ void GeluKernel(T* x, size_t total) {
  PdlWait();
  PdlTrigger();
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = ToF(x[i]);
    x[i] = FromF<T>(0.5f * v * (1.f + erff(v * 0.70710678118654752f)));
  }
}

template <typename T, typename O>
__global__ void AddBiasKernel(O* out, const T* __restrict__ bias, int n, int cols) {
  PdlWait();
  PdlTrigger();
  const size_t total = static_cast<size_t>(n) * cols;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = static_cast<float>(out[i]) + ToF(bias[i % cols]);
    if constexpr (std::is_same_v<O, float>) {
      out[i] = v;
    } else {
      out[i] = FromF<O>(v);
    }
  }
}

__device__ __forceinline__ uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename T>
__global__ void FillUniformKernel(T* p, size_t count, float scale, uint64_t seed, float center) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t r = Mix(seed * 0x9e3779b97f4a7c15ull + i);
    const float u = static_cast<float>(r >> 40) * (1.f / 16777216.f);  // [0, 1)
    p[i] = FromF<T>(center + (2.f * u - 1.f) * scale);
  }
}

template <typename T>
__global__ void FillConstKernel(T* p, size_t count, float value) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    p[i] = FromF<T>(value);
}

}  // namespace

cudaError_t SiluGate(DType dt, const void* in, int n, int F, void* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    const dim3 grid((F + kThreads * 8 - 1) / (kThreads * 8), n < 65535 ? n : 65535);
    return LaunchPdl(SiluGateKernel<T>, grid, dim3(kThreads), 0, stream, static_cast<const T*>(in),
                     n, F, static_cast<T*>(out));
  });
}

cudaError_t GeluInPlace(DType dt, void* x, int n, int F, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const size_t total = static_cast<size_t>(n) * F;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    return LaunchPdl(GeluKernel<T>, dim3(Blocks(total)), dim3(kThreads), 0, stream,
                     static_cast<T*>(x), total);
  });
}

cudaError_t AddBias(DType dt, void* out, const void* bias, int n, int cols, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    return LaunchPdl(AddBiasKernel<T, T>, dim3(Blocks(static_cast<size_t>(n) * cols)),
                     dim3(kThreads), 0, stream, static_cast<T*>(out), static_cast<const T*>(bias),
                     n, cols);
  });
}

cudaError_t AddBiasF32(DType dt, float* out, const void* bias, int n, int cols,
                       cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    return LaunchPdl(AddBiasKernel<T, float>, dim3(Blocks(static_cast<size_t>(n) * cols)),
                     dim3(kThreads), 0, stream, out, static_cast<const T*>(bias), n, cols);
  });
}

cudaError_t FillUniform(DType dt, void* p, size_t count, float scale, uint64_t seed,
                        cudaStream_t stream, float center) {
  if (count == 0) return cudaSuccess;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    FillUniformKernel<T><<<Blocks(count), kThreads, 0, stream>>>(static_cast<T*>(p), count, scale,
                                                                  seed, center);
    return cudaGetLastError();
  });
}

cudaError_t FillConst(DType dt, void* p, size_t count, float value, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  return KVR_DISPATCH_DTYPE(dt, T, [&] {
    FillConstKernel<T><<<Blocks(count), kThreads, 0, stream>>>(static_cast<T*>(p), count, value);
    return cudaGetLastError();
  });
}

}  // namespace kvr::kernels
