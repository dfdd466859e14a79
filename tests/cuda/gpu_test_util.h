// Helpers for the GPU tests: skip (exit 77) without a usable GPU, device buffers, host-side
// bf16/fp16 conversions, random fill and error norms.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda_check.h"

namespace kvr::testing {

using kernels::DType;

inline bool HaveGpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return false;
  }
  return true;
}

// CUDA GPUs present; 0 without a driver or a GPU.
inline int GpuCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// The GPU counts the multi-GPU tests run on: 2, then 4 when present, then all when more.
inline std::vector<int> MultiGpuCounts() {
  const int n = GpuCount();
  std::vector<int> counts = {2};
  if (n >= 4) counts.push_back(4);
  if (n > 4) counts.push_back(n);
  return counts;
}

// Relative L2 distance |a - b| / |b| in double; infinite for mismatched or empty inputs, NaN
// if either holds a non-finite value (so any `RelL2(...) < tol` check fails on both).
inline double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || b.empty()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return NAN;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

// main() for GPU test binaries: 77 (CTest: skipped) without a GPU.
#define KVR_GPU_TEST_MAIN()                                          \
  int main(int argc, char** argv) {                                  \
    if (!::kvr::testing::HaveGpu()) {                                \
      std::printf("no usable CUDA GPU: skipped\n");                  \
      return 77;                                                     \
    }                                                                \
    ::testing::InitGoogleTest(&argc, argv);                          \
    return RUN_ALL_TESTS();                                          \
  }

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << cudaGetErrorString(expr)

inline uint16_t HostFloatToHalf(DType dt, float f) {
  if (dt == DType::kBF16) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
  }
  // fp16 via the usual bit manipulation (round to nearest even), normals and subnormals.
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffffu;
  if (((x >> 23) & 0xff) == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0));
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exp <= 0) {
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const int shift = 14 - exp;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

inline float HostHalfToFloat(DType dt, uint16_t v) {
  if (dt == DType::kBF16) {
    uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const uint32_t sign = (v & 0x8000u) << 16;
  uint32_t exp = (v >> 10) & 0x1f, mant = v & 0x3ffu, u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {
      exp = 127 - 15 + 1;
      while (!(mant & 0x400u)) {
        mant <<= 1;
        --exp;
      }
      u = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Random values already rounded to the half type: `f` (fp32, for the reference) and `h` (bits).
struct HalfData {
  std::vector<float> f;
  std::vector<uint16_t> h;
};
inline HalfData RandomHalf(DType dt, size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, scale);
  HalfData d;
  d.f.resize(n);
  d.h.resize(n);
  for (size_t i = 0; i < n; ++i) {
    d.h[i] = HostFloatToHalf(dt, nd(rng));
    d.f[i] = HostHalfToFloat(dt, d.h[i]);
  }
  return d;
}

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (cudaMalloc(&p_, (n ? n : 1) * sizeof(T)) != cudaSuccess) p_ = nullptr;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  cudaError_t Upload(const std::vector<T>& v) {
    return cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> Download() const {
    std::vector<T> v(n_);
    cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }
  // Fills every byte with 0xff: NaN for fp32, bf16 and fp16, so unwritten outputs show.
  cudaError_t Poison() { return cudaMemset(p_, 0xff, (n_ ? n_ : 1) * sizeof(T)); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// ||a - ref|| / ||ref|| over all elements; NaN if any element of a is not finite.
inline double RelErr(const std::vector<float>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return NAN;
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

inline std::vector<float> ToFloat(DType dt, const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = HostHalfToFloat(dt, h[i]);
  return f;
}

}  // namespace kvr::testing
