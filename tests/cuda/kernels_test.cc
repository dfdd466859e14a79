// Each CUDA kernel against a straightforward CPU loop (double accumulation) on fresh random
// inputs, with poisoned (NaN) outputs and odd sizes. Label gpu: exits 77 without a GPU.
//
// Legend: n rows (tokens), C hidden, F intermediate, Hq / Hkv heads, D head size, s prefix.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/activation.cuh"
#include "kernels/attention_decode.cuh"
#include "kernels/attention_prefill.cuh"
#include "kernels/cudnn_attention.h"
#include "kernels/embedding.cuh"
#include "kernels/gemm.h"
#include "kernels/gemv.cuh"
#include "kernels/norm.cuh"
#include "kernels/rotary.cuh"
#include "tests/cuda/gpu_test_util.h"

namespace kvr::testing {
namespace {

using namespace kvr::kernels;

const DType kTypes[] = {DType::kBF16, DType::kF16};
// Relative L2 error allowed for outputs rounded to bf16 / fp16 once (or through a bf16 product).
double Tol(DType dt) { return dt == DType::kBF16 ? 8e-3 : 2e-3; }

TEST(Kernels, EmbeddingLookup) {
  std::mt19937 rng(1);
  for (DType dt : kTypes) {
    const int V = 1003, C = 129, n = 37;
    auto table = RandomHalf(dt, static_cast<size_t>(V) * C, 1.f, rng);
    std::vector<int32_t> ids(n);
    for (auto& i : ids) i = std::uniform_int_distribution<int>(0, V - 1)(rng);
    DeviceBuffer<uint16_t> dtab(table.h.size());
    DeviceBuffer<int32_t> dids(n);
    DeviceBuffer<float> dout(static_cast<size_t>(n) * C);
    CUDA_OK(dtab.Upload(table.h));
    CUDA_OK(dids.Upload(ids));
    CUDA_OK(dout.Poison());
    CUDA_OK(EmbeddingLookup(dt, dtab.get(), dids.get(), n, C, V, dout.get(), nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    auto out = dout.Download();
    for (int r = 0; r < n; ++r)
      for (int c = 0; c < C; ++c)
        ASSERT_EQ(out[r * C + c], table.f[static_cast<size_t>(ids[r]) * C + c]);
  }
}

TEST(Kernels, RmsNormAndLayerNorm) {
  std::mt19937 rng(2);
  for (DType dt : kTypes) {
    for (int C : {64, 1000, 4544}) {
      const int n = 7;
      std::vector<float> x(static_cast<size_t>(n) * C);
      std::normal_distribution<float> nd(0.3f, 2.f);
      for (auto& v : x) v = nd(rng);
      auto w = RandomHalf(dt, C, 1.f, rng), b = RandomHalf(dt, C, 1.f, rng);
      DeviceBuffer<float> dx(x.size());
      DeviceBuffer<uint16_t> dw(C), db(C), dout(x.size());
      CUDA_OK(dx.Upload(x));
      CUDA_OK(dw.Upload(w.h));
      CUDA_OK(db.Upload(b.h));
      for (int layer = 0; layer < 2; ++layer) {
        CUDA_OK(dout.Poison());
        if (layer)
          CUDA_OK(LayerNorm(dt, dx.get(), dw.get(), db.get(), 1e-5f, n, C, dout.get(), nullptr));
        else
          CUDA_OK(RmsNorm(dt, dx.get(), dw.get(), 1e-6f, n, C, dout.get(), nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        auto out = ToFloat(dt, dout.Download());
        std::vector<double> ref(x.size());
        for (int r = 0; r < n; ++r) {
          double mean = 0, var = 0;
          if (layer) {
            for (int c = 0; c < C; ++c) mean += x[r * C + c];
            mean /= C;
          }
          for (int c = 0; c < C; ++c) var += (x[r * C + c] - mean) * (x[r * C + c] - mean);
          const double inv = 1.0 / std::sqrt(var / C + (layer ? 1e-5 : 1e-6));
          for (int c = 0; c < C; ++c)
            ref[r * C + c] = (x[r * C + c] - mean) * inv * w.f[c] + (layer ? b.f[c] : 0.0);
        }
        EXPECT_LT(RelErr(out, ref), Tol(dt)) << "C=" << C << " layernorm=" << layer;
      }
    }
  }
}

TEST(Kernels, RopeAppendPrefillAndDecode) {
  std::mt19937 rng(3);
  for (DType dt : kTypes) {
    struct Case { int n, Hq, Hkv, D, pos0; bool table; };
    for (Case cs : {Case{13, 8, 2, 128, 77, false}, Case{1, 71, 1, 64, 4095, false},
                    Case{3, 4, 4, 64, 0, true}, Case{40, 32, 8, 128, 1000, false}}) {
      const int E = (cs.Hq + 2 * cs.Hkv) * cs.D, cap = 4200;
      auto qkv = RandomHalf(dt, static_cast<size_t>(cs.n) * E, 1.f, rng);
      std::vector<float> inv(cs.D / 2);
      for (int i = 0; i < cs.D / 2; ++i) inv[i] = std::pow(500000.f, -2.f * i / cs.D) * (i > 20 ? 0.125f : 1.f);
      std::vector<int32_t> pos(cs.n);
      for (int i = 0; i < cs.n; ++i) pos[i] = cs.table ? 1000 * i + 5 : cs.pos0 + i;
      DeviceBuffer<uint16_t> dqkv(qkv.h.size()), dq(static_cast<size_t>(cs.n) * cs.Hq * cs.D);
      DeviceBuffer<uint16_t> dk(static_cast<size_t>(cap) * cs.Hkv * cs.D), dv(dk.size());
      DeviceBuffer<float> dinv(inv.size());
      DeviceBuffer<int32_t> dpos(cs.n);
      DeviceBuffer<void*> dkt(cs.n), dvt(cs.n);
      CUDA_OK(dqkv.Upload(qkv.h));
      CUDA_OK(dinv.Upload(inv));
      CUDA_OK(dpos.Upload(pos));
      CUDA_OK(dq.Poison());
      CUDA_OK(dk.Poison());
      CUDA_OK(dv.Poison());
      std::vector<void*> kt(cs.n, dk.get()), vt(cs.n, dv.get());
      CUDA_OK(dkt.Upload(kt));
      CUDA_OK(dvt.Upload(vt));
      RopeAppendParams p;
      p.qkv = dqkv.get();
      p.n = cs.n; p.Hq = cs.Hq; p.Hkv = cs.Hkv; p.D = cs.D;
      p.q_out = dq.get();
      p.inv_freq = dinv.get();
      if (cs.table) {
        p.pos = dpos.get();
        p.k_table = dkt.get();
        p.v_table = dvt.get();
      } else {
        p.pos0 = cs.pos0;
        p.k_cache = dk.get();
        p.v_cache = dv.get();
      }
      CUDA_OK(RopeAppend(dt, p, nullptr));
      CUDA_OK(cudaDeviceSynchronize());
      auto q = ToFloat(dt, dq.Download()), k = ToFloat(dt, dk.Download()), v = ToFloat(dt, dv.Download());
      std::vector<float> got;
      std::vector<double> ref;
      const int half = cs.D / 2;
      for (int r = 0; r < cs.n; ++r) {
        for (int h = 0; h < cs.Hq + cs.Hkv; ++h) {
          const float* x = qkv.f.data() + static_cast<size_t>(r) * E + h * cs.D;
          const float* y = h < cs.Hq ? q.data() + (static_cast<size_t>(r) * cs.Hq + h) * cs.D
                                     : k.data() + (static_cast<size_t>(pos[r]) * cs.Hkv + h - cs.Hq) * cs.D;
          for (int i = 0; i < half; ++i) {
            const double ang = static_cast<double>(pos[r]) * static_cast<double>(inv[i]);
            ref.push_back(x[i] * std::cos(ang) - x[i + half] * std::sin(ang));
            ref.push_back(x[i + half] * std::cos(ang) + x[i] * std::sin(ang));
            got.push_back(y[i]);
            got.push_back(y[i + half]);
          }
        }
        for (int t = 0; t < cs.Hkv * cs.D; ++t) {
          ref.push_back(qkv.f[static_cast<size_t>(r) * E + (cs.Hq + cs.Hkv) * cs.D + t]);
          got.push_back(v[static_cast<size_t>(pos[r]) * cs.Hkv * cs.D + t]);
        }
      }
      // fp32 angles at positions up to 4k lose ~1e-4 rad: allow a little over one rounding.
      EXPECT_LT(RelErr(got, ref), 1.5 * Tol(dt)) << "n=" << cs.n << " Hq=" << cs.Hq;
    }
  }
}

TEST(Kernels, SiluGateGeluBias) {
  std::mt19937 rng(4);
  for (DType dt : kTypes) {
    const int n = 5, F = 333;
    auto in = RandomHalf(dt, static_cast<size_t>(n) * 2 * F, 2.f, rng);
    auto bias = RandomHalf(dt, F, 1.f, rng);
    DeviceBuffer<uint16_t> din(in.h.size()), dout(static_cast<size_t>(n) * F), db(F);
    CUDA_OK(din.Upload(in.h));
    CUDA_OK(db.Upload(bias.h));
    CUDA_OK(dout.Poison());
    CUDA_OK(SiluGate(dt, din.get(), n, F, dout.get(), nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    auto out = ToFloat(dt, dout.Download());
    std::vector<double> ref(out.size());
    for (int r = 0; r < n; ++r)
      for (int j = 0; j < F; ++j) {
        const double g = in.f[r * 2 * F + j], u = in.f[r * 2 * F + F + j];
        ref[r * F + j] = g / (1 + std::exp(-g)) * u;
      }
    EXPECT_LT(RelErr(out, ref), Tol(dt)) << "silu";
    // GELU in place on the first n*F values of `in`, then a bias add.
    CUDA_OK(GeluInPlace(dt, din.get(), n, F, nullptr));
    CUDA_OK(AddBias(dt, din.get(), db.get(), n, F, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    auto g = ToFloat(dt, din.Download());
    g.resize(static_cast<size_t>(n) * F);
    for (size_t i = 0; i < ref.size(); ++i) {
      const double x = in.f[i];
      ref[i] = 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))) + bias.f[i % F];
    }
    EXPECT_LT(RelErr(g, ref), 2 * Tol(dt)) << "gelu+bias";
  }
}

TEST(Kernels, GemmLinear) {
  std::mt19937 rng(5);
  Gemm gemm;
  ASSERT_EQ(gemm.Init(32 << 20), CUBLAS_STATUS_SUCCESS);
  for (int use_gemv = 0; use_gemv < 2; ++use_gemv)
  for (DType dt : kTypes) {
    gemm.set_use_gemv(use_gemv != 0);
    struct Case { int n, in, out; };
    // GEMV rows per warp split: 4 (narrow), 2, 1 (wide), with odd chunk counts.
    for (Case cs : {Case{1, 4096, 1000}, Case{3, 520, 264}, Case{4, 4544, 71}, Case{2, 11008, 33},
                    Case{1, 264, 17000}, Case{4, 2056, 7001}, Case{37, 520, 264}, Case{300, 128, 72}}) {
      auto x = RandomHalf(dt, static_cast<size_t>(cs.n) * cs.in, 1.f, rng);
      auto w = RandomHalf(dt, static_cast<size_t>(cs.out) * cs.in, 0.05f, rng);
      std::vector<float> y0(static_cast<size_t>(cs.n) * cs.out);
      std::normal_distribution<float> nd(0.f, 1.f);
      for (auto& v : y0) v = nd(rng);
      DeviceBuffer<uint16_t> dx(x.h.size()), dw(w.h.size()), dyh(y0.size());
      DeviceBuffer<float> dyf(y0.size());
      CUDA_OK(dx.Upload(x.h));
      CUDA_OK(dw.Upload(w.h));
      CUDA_OK(dyf.Upload(y0));
      CUDA_OK(dyh.Poison());
      ASSERT_EQ(gemm.Linear(dt, dx.get(), dw.get(), cs.n, cs.in, cs.out, dyh.get(), GemmOut::kSame,
                            0.f, nullptr), CUBLAS_STATUS_SUCCESS);
      ASSERT_EQ(gemm.Linear(dt, dx.get(), dw.get(), cs.n, cs.in, cs.out, dyf.get(), GemmOut::kF32,
                            1.f, nullptr), CUBLAS_STATUS_SUCCESS);
      CUDA_OK(cudaDeviceSynchronize());
      std::vector<double> ref(y0.size()), ref_acc(y0.size());
      for (int r = 0; r < cs.n; ++r)
        for (int o = 0; o < cs.out; ++o) {
          double acc = 0;
          for (int i = 0; i < cs.in; ++i)
            acc += static_cast<double>(x.f[static_cast<size_t>(r) * cs.in + i]) * w.f[static_cast<size_t>(o) * cs.in + i];
          ref[r * cs.out + o] = acc;
          ref_acc[r * cs.out + o] = acc + y0[r * cs.out + o];
        }
      EXPECT_LT(RelErr(ToFloat(dt, dyh.Download()), ref), Tol(dt))
          << cs.n << "x" << cs.in << "x" << cs.out << " gemv " << use_gemv;
      EXPECT_LT(RelErr(dyf.Download(), ref_acc), 1e-4) << "fp32 accumulate " << cs.n;
    }
  }
}

// Every GEMV variant (the benchmarks compare them) against the CPU, n = 1..4 rows, T and fp32
// outputs; shapes with padded chunk shares (11008 = 43 chunks over 4 warps), outputs not a
// multiple of the rows per block, and enough rows that the grid-stride variant's blocks walk
// several row groups.
TEST(Kernels, GemvVariants) {
  std::mt19937 rng(6);
  struct Case { int in, out; };
  for (DType dt : kTypes) {
    for (Case cs : {Case{4096, 1000}, Case{11008, 333}, Case{520, 40001}, Case{264, 7}}) {
      auto w = RandomHalf(dt, static_cast<size_t>(cs.out) * cs.in, 0.05f, rng);
      DeviceBuffer<uint16_t> dw(w.h.size());
      CUDA_OK(dw.Upload(w.h));
      for (int n = 1; n <= kGemvMaxRows; ++n) {
        auto x = RandomHalf(dt, static_cast<size_t>(n) * cs.in, 1.f, rng);
        DeviceBuffer<uint16_t> dx(x.h.size()), dy(static_cast<size_t>(n) * cs.out);
        DeviceBuffer<float> dyf(static_cast<size_t>(n) * cs.out);
        CUDA_OK(dx.Upload(x.h));
        std::vector<double> ref(static_cast<size_t>(n) * cs.out);
        for (int r = 0; r < n; ++r)
          for (int o = 0; o < cs.out; ++o) {
            double acc = 0;
            for (int i = 0; i < cs.in; ++i)
              acc += static_cast<double>(x.f[static_cast<size_t>(r) * cs.in + i]) * w.f[static_cast<size_t>(o) * cs.in + i];
            ref[static_cast<size_t>(r) * cs.out + o] = acc;
          }
        for (int v = 0; v < kGemvVariants; ++v) {
          CUDA_OK(dy.Poison());
          CUDA_OK(dyf.Poison());
          CUDA_OK(GemvVariant(v, dt, dx.get(), dw.get(), n, cs.in, cs.out, dy.get(), false, 0.f, nullptr));
          CUDA_OK(GemvVariant(v, dt, dx.get(), dw.get(), n, cs.in, cs.out, dyf.get(), true, 0.f, nullptr));
          CUDA_OK(cudaDeviceSynchronize());
          EXPECT_LT(RelErr(ToFloat(dt, dy.Download()), ref), Tol(dt)) << "variant " << v << " n=" << n << " " << cs.in << "x" << cs.out;
          EXPECT_LT(RelErr(dyf.Download(), ref), 1e-4) << "variant " << v << " fp32 n=" << n << " " << cs.in << "x" << cs.out;
        }
      }
    }
  }
}

// CPU reference attention: queries at positions s + i over keys [0, s + i] (window).
std::vector<double> RefAttention(const std::vector<float>& q, const std::vector<float>& k,
                                 const std::vector<float>& v, int n, int s, int Hq, int Hkv, int D,
                                 int window, const std::vector<int>* qpos = nullptr) {
  std::vector<double> out(static_cast<size_t>(n) * Hq * D);
  const int G = Hq / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> sc;
  for (int i = 0; i < n; ++i) {
    const int p = qpos ? (*qpos)[i] : s + i;
    const int lo = window > 0 ? std::max(0, p - window + 1) : 0;
    for (int h = 0; h < Hq; ++h) {
      const int hk = h / G;
      sc.assign(p + 1 - lo, 0.0);
      double mx = -1e300;
      for (int j = lo; j <= p; ++j) {
        double acc = 0;
        for (int d = 0; d < D; ++d)
          acc += static_cast<double>(q[(static_cast<size_t>(i) * Hq + h) * D + d]) *
                 k[(static_cast<size_t>(j) * Hkv + hk) * D + d];
        sc[j - lo] = acc * scale;
        mx = std::max(mx, sc[j - lo]);
      }
      double sum = 0;
      for (auto& x : sc) sum += (x = std::exp(x - mx));
      for (int d = 0; d < D; ++d) {
        double acc = 0;
        for (int j = lo; j <= p; ++j) acc += sc[j - lo] * v[(static_cast<size_t>(j) * Hkv + hk) * D + d];
        out[(static_cast<size_t>(i) * Hq + h) * D + d] = acc / sum;
      }
    }
  }
  return out;
}

struct AttnCase { int n, s, Hq, Hkv, D, window; };

TEST(Kernels, PrefillAttention) {
  std::mt19937 rng(6);
  const AttnCase cases[] = {
      {1, 0, 4, 4, 128, 0},       // one token, no prefix
      {1, 777, 8, 2, 128, 0},     // one-token chunk at an offset
      {37, 0, 4, 1, 64, 0},       // odd length, MQA
      {200, 333, 8, 2, 128, 0},   // GQA, prefix not a tile multiple
      {129, 1000, 4, 4, 128, 0},  // one past a query tile
      {70, 50, 71, 1, 64, 0},     // Falcon-like 71 heads sharing one K/V head
      {300, 100, 4, 2, 64, 0},    // D=64 several tiles
      {150, 200, 4, 2, 128, 97},  // sliding window
      {256, 0, 2, 2, 128, 64},    // window of exactly one key tile
  };
  for (DType dt : kTypes) {
    for (const AttnCase& c : cases) {
      const int N = c.s + c.n, cap = N + 13;
      auto q = RandomHalf(dt, static_cast<size_t>(c.n) * c.Hq * c.D, 1.f, rng);
      auto k = RandomHalf(dt, static_cast<size_t>(cap) * c.Hkv * c.D, 1.f, rng);
      auto v = RandomHalf(dt, static_cast<size_t>(cap) * c.Hkv * c.D, 1.f, rng);
      // Rows past the visible keys are NaN: a kernel that reads them fails.
      for (size_t i = static_cast<size_t>(N) * c.Hkv * c.D; i < k.h.size(); ++i) k.h[i] = v.h[i] = 0xffff;
      DeviceBuffer<uint16_t> dq(q.h.size()), dk(k.h.size()), dv(v.h.size()), dout(q.h.size());
      CUDA_OK(dq.Upload(q.h));
      CUDA_OK(dk.Upload(k.h));
      CUDA_OK(dv.Upload(v.h));
      CUDA_OK(dout.Poison());
      PrefillAttnParams p;
      p.q = dq.get(); p.k = dk.get(); p.v = dv.get(); p.out = dout.get();
      p.n = c.n; p.s = c.s; p.Hq = c.Hq; p.Hkv = c.Hkv; p.D = c.D; p.window = c.window;
      p.scale = 1.f / std::sqrt(static_cast<float>(c.D));
      auto ref = RefAttention(q.f, k.f, v.f, c.n, c.s, c.Hq, c.Hkv, c.D, c.window);
      for (int variant : {1, 2, 3}) {
        CUDA_OK(dout.Poison());
        p.variant = variant;
        CUDA_OK(PrefillAttention(dt, p, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        auto out = ToFloat(dt, dout.Download());
        EXPECT_LT(RelErr(out, ref), 2 * Tol(dt))
            << (dt == DType::kBF16 ? "bf16" : "fp16") << " n=" << c.n << " s=" << c.s << " Hq=" << c.Hq
            << " Hkv=" << c.Hkv << " D=" << c.D << " W=" << c.window << " variant=" << variant;
      }
    }
  }
}

// cuDNN fused attention (cudnn_attention.h) against the same CPU reference, and the selector's
// fallback. A shape cuDNN reports unsupported is printed ("[cuDNN UNSUPPORTED]") and must then
// run, correctly, on our kernel through PrefillAttentionWith(kCudnn); the realistic GQA case must
// run on cuDNN.
struct CudnnAttnCase { int n, s, Hq, Hkv, D, window; const char* what; };

TEST(Kernels, CudnnPrefillAttention) {
  std::printf("cuDNN runtime version %zu, %s\n", CudnnRuntimeVersion(), CudnnAvailable() ? "linked" : "NOT built in");
  CudnnAttention cudnn;
  const CudnnAttnStatus init = cudnn.Init();
  ASSERT_TRUE(init.ok()) << "CudnnAttention::Init: " << init.message;
  cudnn.set_verbose(true);
  std::mt19937 rng(16);
  const CudnnAttnCase cases[] = {
      {1, 0, 4, 4, 128, 0, "one token, no prefix"},
      {1, 777, 8, 2, 128, 0, "one-token chunk at an offset, GQA"},
      {37, 0, 4, 1, 64, 0, "odd length, MQA, D=64"},
      {200, 333, 8, 2, 128, 0, "GQA, prefix not a tile multiple"},
      {129, 1000, 4, 4, 128, 0, "one past a 128 tile, long prefix"},
      {97, 211, 32, 8, 128, 0, "GQA 32/8, odd n and s"},
      {70, 50, 71, 1, 64, 0, "MQA 71/1 (Falcon), D=64"},
      {1, 64, 71, 1, 64, 0, "MQA 71/1 one-token chunk"},
      {300, 100, 4, 2, 64, 0, "D=64 several tiles"},
      {150, 200, 4, 2, 128, 97, "sliding window: must fall back"},
  };
  int on_cudnn = 0, unsupported = 0;
  for (DType dt : kTypes) {
    const char* tn = dt == DType::kBF16 ? "bf16" : "fp16";
    for (const CudnnAttnCase& c : cases) {
      const int N = c.s + c.n, cap = N + 13;
      auto q = RandomHalf(dt, static_cast<size_t>(c.n) * c.Hq * c.D, 1.f, rng);
      auto k = RandomHalf(dt, static_cast<size_t>(cap) * c.Hkv * c.D, 1.f, rng);
      auto v = RandomHalf(dt, static_cast<size_t>(cap) * c.Hkv * c.D, 1.f, rng);
      // Rows past the visible keys are NaN: an implementation that reads them fails.
      for (size_t i = static_cast<size_t>(N) * c.Hkv * c.D; i < k.h.size(); ++i) k.h[i] = v.h[i] = 0xffff;
      DeviceBuffer<uint16_t> dq(q.h.size()), dk(k.h.size()), dv(v.h.size()), dout(q.h.size());
      CUDA_OK(dq.Upload(q.h));
      CUDA_OK(dk.Upload(k.h));
      CUDA_OK(dv.Upload(v.h));
      PrefillAttnParams p;
      p.q = dq.get(); p.k = dk.get(); p.v = dv.get(); p.out = dout.get();
      p.n = c.n; p.s = c.s; p.Hq = c.Hq; p.Hkv = c.Hkv; p.D = c.D; p.window = c.window;
      p.scale = 1.f / std::sqrt(static_cast<float>(c.D));
      auto ref = RefAttention(q.f, k.f, v.f, c.n, c.s, c.Hq, c.Hkv, c.D, c.window);
      const std::string label = std::string(tn) + " n=" + std::to_string(c.n) + " s=" + std::to_string(c.s) +
                                " Hq=" + std::to_string(c.Hq) + " Hkv=" + std::to_string(c.Hkv) +
                                " D=" + std::to_string(c.D) + " W=" + std::to_string(c.window) + " (" + c.what + ")";
      // Direct call.
      CUDA_OK(dout.Poison());
      double build_ms = 0;
      CudnnAttnStatus st = cudnn.Prepare(dt, p, &build_ms);
      if (st.ok()) st = cudnn.Run(dt, p, nullptr);
      if (st.ok()) {
        CUDA_OK(cudaDeviceSynchronize());
        const double err = RelErr(ToFloat(dt, dout.Download()), ref);
        std::printf("[cuDNN ran] %s: rel err %.2e, plan build %.1f ms\n", label.c_str(), err, build_ms);
        EXPECT_LT(err, 2 * Tol(dt)) << "cuDNN " << label;
        EXPECT_EQ(c.window, 0) << "cuDNN accepted a sliding window it does not express: " << label;
        ++on_cudnn;
      } else if (st.code == CudnnAttnStatus::kUnsupported) {
        std::printf("[cuDNN UNSUPPORTED] %s: %s\n", label.c_str(), st.message.c_str());
        if (c.window == 0) ++unsupported;
      } else {
        ADD_FAILURE() << "cuDNN error (not 'unsupported') for " << label << ": " << st.message;
        continue;
      }
      // Through the selector: cuDNN when it ran above, our kernel otherwise; correct either way.
      CUDA_OK(dout.Poison());
      AttnImpl used = AttnImpl::kAuto;
      CUDA_OK(PrefillAttentionWith(AttnImpl::kCudnn, &cudnn, dt, p, nullptr, &used));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(used, st.ok() ? AttnImpl::kCudnn : AttnImpl::kMma) << "selector for " << label;
      EXPECT_LT(RelErr(ToFloat(dt, dout.Download()), ref), 2 * Tol(dt)) << "selector (" << AttnImplName(used)
                                                                         << ") " << label;
      // kMma always runs ours.
      CUDA_OK(dout.Poison());
      CUDA_OK(PrefillAttentionWith(AttnImpl::kMma, &cudnn, dt, p, nullptr, &used));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(used, AttnImpl::kMma);
      EXPECT_LT(RelErr(ToFloat(dt, dout.Download()), ref), 2 * Tol(dt)) << "mma via selector " << label;
    }
  }
  // Without a CudnnAttention the selector must fall back too.
  {
    const int n = 5, Hq = 2, D = 64;
    auto q = RandomHalf(DType::kBF16, static_cast<size_t>(n) * Hq * D, 1.f, rng);
    auto k = RandomHalf(DType::kBF16, static_cast<size_t>(n) * Hq * D, 1.f, rng);
    auto v = RandomHalf(DType::kBF16, static_cast<size_t>(n) * Hq * D, 1.f, rng);
    DeviceBuffer<uint16_t> dq(q.h.size()), dk(k.h.size()), dv(v.h.size()), dout(q.h.size());
    CUDA_OK(dq.Upload(q.h));
    CUDA_OK(dk.Upload(k.h));
    CUDA_OK(dv.Upload(v.h));
    CUDA_OK(dout.Poison());
    PrefillAttnParams p;
    p.q = dq.get(); p.k = dk.get(); p.v = dv.get(); p.out = dout.get();
    p.n = n; p.Hq = Hq; p.Hkv = Hq; p.D = D; p.scale = 0.125f;
    AttnImpl used = AttnImpl::kCudnn;
    CUDA_OK(PrefillAttentionWith(AttnImpl::kAuto, nullptr, DType::kBF16, p, nullptr, &used));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(used, AttnImpl::kMma);
    EXPECT_LT(RelErr(ToFloat(DType::kBF16, dout.Download()), RefAttention(q.f, k.f, v.f, n, 0, Hq, Hq, D, 0)),
              2 * Tol(DType::kBF16));
  }
  const auto& stt = cudnn.stats();
  std::printf("cuDNN summary: %d cases ran on cuDNN, %d unsupported (no window), %d plans built, %d shapes "
              "failed, plan build total %.1f ms, workspace %zu bytes\n",
              on_cudnn, unsupported, stt.plans_built, stt.shapes_failed, stt.build_ms_total, stt.workspace_bytes);
  EXPECT_GT(on_cudnn, 0) << "cuDNN ran no case at all: the graph is likely wrong (see the messages above)";
}

// The bucket rule (no GPU work): buckets cover x, waste < max(min step, x / 8), 8 per octave,
// and BucketGrid holds the bucket of every chunk it is meant for.
TEST(Kernels, CudnnBuckets) {
  EXPECT_EQ(CudnnAttention::BucketQueries(1), 64);
  EXPECT_EQ(CudnnAttention::BucketQueries(64), 64);
  EXPECT_EQ(CudnnAttention::BucketQueries(65), 128);
  EXPECT_EQ(CudnnAttention::BucketQueries(512), 512);
  EXPECT_EQ(CudnnAttention::BucketQueries(513), 576);
  EXPECT_EQ(CudnnAttention::BucketQueries(2047), 2048);
  EXPECT_EQ(CudnnAttention::BucketKeys(1), 128);
  EXPECT_EQ(CudnnAttention::BucketKeys(1025), 1152);
  EXPECT_EQ(CudnnAttention::BucketKeys(16384), 16384);
  EXPECT_EQ(CudnnAttention::BucketKeys(16385), 18432);
  for (int x = 1; x <= 300000; x += (x < 5000 ? 1 : 37)) {
    for (int m : {64, 128}) {
      const int b = m == 64 ? CudnnAttention::BucketQueries(x) : CudnnAttention::BucketKeys(x);
      ASSERT_GE(b, x);
      ASSERT_LT(b - x, std::max(m, x / 8)) << "x=" << x << " bucket " << b;
      ASSERT_EQ(m == 64 ? CudnnAttention::BucketQueries(b) : CudnnAttention::BucketKeys(b), b) << "x=" << x;
    }
  }
  for (const auto& [mn, mx, mN] : {std::tuple{512, 2048, 16384}, std::tuple{512, 4096, 32768},
                                   std::tuple{512, 8192, 131072}, std::tuple{1, 512, 4096}}) {
    const auto grid = CudnnAttention::BucketGrid(mn, mx, mN);
    std::printf("BucketGrid(min_n=%d, max_n=%d, max_N=%d): %zu plans\n", mn, mx, mN, grid.size());
    std::mt19937 rng(3);
    for (int t = 0; t < 2000; ++t) {
      const int n = std::uniform_int_distribution<int>(mn, mx)(rng);
      const int N = std::uniform_int_distribution<int>(n, mN)(rng);
      const std::pair<int, int> b{CudnnAttention::BucketQueries(n), CudnnAttention::BucketKeys(N)};
      ASSERT_TRUE(std::binary_search(grid.begin(), grid.end(), b)) << "n=" << n << " N=" << N;
    }
  }
  EXPECT_TRUE(CudnnAttention::BucketGrid(600, 500, 1000).empty());
}

// Bucketed plans: a plan of dims (n_b, N_b) > (n, N) against the CPU reference, with the cache
// rows past N holding NaN before the zeroing the runner does at allocation (so a wrong mask or a
// read past the allocation shows), query rows [n, n_b) NaN, one plan serving several chunks, the
// fallbacks to exact dims (bucket past the cache capacity, past the query buffer, tail not
// declared finite), Prewarm and the kAuto policy.
TEST(Kernels, CudnnBucketedPrefillAttention) {
  if (std::getenv("KVR_CUDNN_BUCKETS") == nullptr || std::string(std::getenv("KVR_CUDNN_BUCKETS")) != "1") {
    GTEST_SKIP() << "bucketed cuDNN plans are off (measured wrong on cuDNN 9.14, see cudnn_attention.h); "
                    "KVR_CUDNN_BUCKETS=1 runs this test";
  }
  CudnnAttention cudnn;
  const CudnnAttnStatus init = cudnn.Init();
  ASSERT_TRUE(init.ok()) << "CudnnAttention::Init: " << init.message;
  cudnn.set_verbose(true);
  cudnn.set_bucketing(true);
  std::mt19937 rng(26);
  struct Case {
    int n, s, Hq, Hkv, D;
    int cap_extra;     // cache rows past the bucket (< 0: the bucket does not fit the cache)
    int q_extra;       // query-buffer rows past the bucket (< 0: it does not fit)
    bool tail_finite;  // declared (and made so by zeroing)
    bool expect_n_bucket, expect_N_bucket;
    const char* what;
  };
  const Case cases[] = {
      {600, 1234, 4, 2, 128, 5, 0, true, true, true, "bucket (640, 1920) for (600, 1834)"},
      {597, 1240, 4, 2, 128, 0, 3, true, true, true, "same bucket, another chunk: plan reused"},
      {97, 211, 32, 8, 128, 1, 0, true, true, true, "GQA 32/8 odd n and s"},
      {70, 50, 71, 1, 64, 0, 0, true, true, true, "MQA 71/1 D=64"},
      {1, 777, 8, 2, 128, 0, 0, true, true, true, "one-token chunk"},
      {600, 1234, 4, 2, 128, -3, 0, true, true, false, "N_b past the cache capacity: exact keys"},
      {600, 1234, 4, 2, 128, 5, -1, true, false, true, "n_b past the query buffer: exact queries"},
      {600, 1234, 4, 2, 128, 5, 0, false, true, false, "tail not declared finite: exact keys"},
  };
  for (DType dt : kTypes) {
    const char* tn = dt == DType::kBF16 ? "bf16" : "fp16";
    for (const Case& c : cases) {
      const int N = c.s + c.n;
      const int nb = CudnnAttention::BucketQueries(c.n), Nb = CudnnAttention::BucketKeys(N);
      ASSERT_GT(nb, c.n) << "the case must pad queries";
      ASSERT_GT(Nb, N) << "the case must pad keys";
      const int cap = c.cap_extra >= 0 ? Nb + c.cap_extra : std::max(N, Nb + c.cap_extra);
      const int q_rows = c.q_extra >= 0 ? nb + c.q_extra : nb + c.q_extra;  // >= n
      const size_t kv_row = static_cast<size_t>(c.Hkv) * c.D, q_row = static_cast<size_t>(c.Hq) * c.D;
      auto q = RandomHalf(dt, c.n * q_row, 1.f, rng);
      auto k = RandomHalf(dt, N * kv_row, 1.f, rng);
      auto v = RandomHalf(dt, N * kv_row, 1.f, rng);
      DeviceBuffer<uint16_t> dq(q_rows * q_row), dk(cap * kv_row), dv(cap * kv_row), dout(q_rows * q_row);
      // The runner's sequence: the allocation holds NaN (poison), is zeroed when declared
      // finite, then the sequence's rows [0, N) are written.
      CUDA_OK(dk.Poison());
      CUDA_OK(dv.Poison());
      if (c.tail_finite) {
        CUDA_OK(cudaMemset(dk.get(), 0, dk.size() * 2));
        CUDA_OK(cudaMemset(dv.get(), 0, dv.size() * 2));
      }
      CUDA_OK(cudaMemcpy(dk.get(), k.h.data(), k.h.size() * 2, cudaMemcpyHostToDevice));
      CUDA_OK(cudaMemcpy(dv.get(), v.h.data(), v.h.size() * 2, cudaMemcpyHostToDevice));
      CUDA_OK(dq.Poison());  // query rows [n, q_rows) stay NaN
      CUDA_OK(cudaMemcpy(dq.get(), q.h.data(), q.h.size() * 2, cudaMemcpyHostToDevice));
      CUDA_OK(dout.Poison());
      PrefillAttnParams p;
      p.q = dq.get(); p.k = dk.get(); p.v = dv.get(); p.out = dout.get();
      p.n = c.n; p.s = c.s; p.Hq = c.Hq; p.Hkv = c.Hkv; p.D = c.D;
      p.scale = 1.f / std::sqrt(static_cast<float>(c.D));
      p.q_rows = q_rows;
      p.kv_rows = cap;
      p.kv_tail_finite = c.tail_finite;
      const auto [n_p, N_p] = cudnn.PlanDims(p);
      const std::string label = std::string(tn) + " n=" + std::to_string(c.n) + " s=" + std::to_string(c.s) +
                                " Hq=" + std::to_string(c.Hq) + " Hkv=" + std::to_string(c.Hkv) + " D=" +
                                std::to_string(c.D) + " cap=" + std::to_string(cap) + " plan (" +
                                std::to_string(n_p) + ", " + std::to_string(N_p) + ") (" + c.what + ")";
      EXPECT_EQ(n_p, c.expect_n_bucket ? nb : c.n) << label;
      EXPECT_EQ(N_p, c.expect_N_bucket ? Nb : N) << label;
      const bool had = cudnn.HasPlan(dt, p);
      const int built0 = cudnn.stats().plans_built;
      double build_ms = 0;
      CudnnAttnStatus st = cudnn.Prepare(dt, p, &build_ms);
      if (st.ok()) st = cudnn.Run(dt, p, nullptr);
      ASSERT_TRUE(st.ok()) << "cuDNN " << label << ": " << st.message;
      CUDA_OK(cudaDeviceSynchronize());
      auto out = ToFloat(dt, dout.Download());
      out.resize(c.n * q_row);  // the real rows; rows [n, q_rows) are the bucket's garbage
      const auto ref = RefAttention(q.f, k.f, v.f, c.n, c.s, c.Hq, c.Hkv, c.D, 0);
      const double err = RelErr(out, ref);
      std::printf("[cuDNN bucketed] %s: rel err %.2e, plan %s (%.1f ms)\n", label.c_str(), err,
                  had ? "reused" : "built", build_ms);
      EXPECT_LT(err, 2 * Tol(dt)) << label;
      if (had) {
        EXPECT_EQ(cudnn.stats().plans_built, built0) << "a cached plan was rebuilt: " << label;
      }
      if (std::string(c.what).find("reused") != std::string::npos) {
        EXPECT_TRUE(had) << "the previous chunk's bucket should serve " << label;
      }
    }
  }

  // Prewarm a small grid, then a chunk inside it finds its plan; kAuto picks cuDNN for it, our
  // kernel for a chunk under kAutoMinQueries and for a head config without a plan.
  const auto grid = CudnnAttention::BucketGrid(kAutoMinQueries, 640, 1300);
  int calls = 0;
  CudnnAttention::PrewarmReport rep;
  const CudnnAttnStatus pst = cudnn.Prewarm(DType::kBF16, 8, 2, 128, grid,
                                            [&calls](int, int, double) { ++calls; }, &rep);
  std::printf("Prewarm of %zu buckets: built %d, cached %d, failed %d, skipped %d, %.1f ms%s%s\n", grid.size(),
              rep.built, rep.cached, rep.failed, rep.skipped, rep.total_ms, pst.ok() ? "" : ": ",
              pst.message.c_str());
  ASSERT_TRUE(pst.ok()) << pst.message;
  EXPECT_EQ(calls, static_cast<int>(grid.size()));
  EXPECT_EQ(rep.built + rep.cached, static_cast<int>(grid.size()));
  {
    const int n = 600, s = 500, Hq = 8, Hkv = 2, D = 128, cap = 1400;
    const DType dt = DType::kBF16;
    const size_t kv_row = static_cast<size_t>(Hkv) * D, q_row = static_cast<size_t>(Hq) * D;
    auto q = RandomHalf(dt, n * q_row, 1.f, rng);
    auto k = RandomHalf(dt, (n + s) * kv_row, 1.f, rng);
    auto v = RandomHalf(dt, (n + s) * kv_row, 1.f, rng);
    const int q_rows = CudnnAttention::BucketQueries(n);
    DeviceBuffer<uint16_t> dq(q_rows * q_row), dk(cap * kv_row), dv(cap * kv_row), dout(q_rows * q_row);
    CUDA_OK(cudaMemset(dk.get(), 0, dk.size() * 2));
    CUDA_OK(cudaMemset(dv.get(), 0, dv.size() * 2));
    CUDA_OK(cudaMemcpy(dk.get(), k.h.data(), k.h.size() * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dv.get(), v.h.data(), v.h.size() * 2, cudaMemcpyHostToDevice));
    CUDA_OK(dq.Poison());
    CUDA_OK(cudaMemcpy(dq.get(), q.h.data(), q.h.size() * 2, cudaMemcpyHostToDevice));
    PrefillAttnParams p;
    p.q = dq.get(); p.k = dk.get(); p.v = dv.get(); p.out = dout.get();
    p.n = n; p.s = s; p.Hq = Hq; p.Hkv = Hkv; p.D = D;
    p.scale = 1.f / std::sqrt(static_cast<float>(D));
    p.q_rows = q_rows; p.kv_rows = cap; p.kv_tail_finite = true;
    EXPECT_TRUE(cudnn.HasPlan(dt, p)) << "prewarmed bucket missing";
    const int built0 = cudnn.stats().plans_built;
    AttnImpl used = AttnImpl::kMma;
    CUDA_OK(dout.Poison());
    CUDA_OK(PrefillAttentionWith(AttnImpl::kAuto, &cudnn, dt, p, nullptr, &used));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(used, AttnImpl::kCudnn) << "kAuto with a prewarmed plan";
    EXPECT_EQ(cudnn.stats().plans_built, built0) << "kAuto built a plan Prewarm had built";
    auto out = ToFloat(dt, dout.Download());
    out.resize(n * q_row);
    const auto ref = RefAttention(q.f, k.f, v.f, n, s, Hq, Hkv, D, 0);
    EXPECT_LT(RelErr(out, ref), 2 * Tol(dt)) << "kAuto on the prewarmed plan";
    // Under kAutoMinQueries: ours, and no plan built.
    PrefillAttnParams small = p;
    small.n = 100;
    small.s = 1000;
    CUDA_OK(PrefillAttentionWith(AttnImpl::kAuto, &cudnn, dt, small, nullptr, &used));
    EXPECT_EQ(used, AttnImpl::kMma) << "kAuto below kAutoMinQueries";
    // A head config without a plan and n < kAutoBuildMinQueries: ours, nothing built.
    PrefillAttnParams other = p;
    other.Hq = 4;
    CUDA_OK(PrefillAttentionWith(AttnImpl::kAuto, &cudnn, dt, other, nullptr, &used));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(used, AttnImpl::kMma) << "kAuto without a plan";
    EXPECT_EQ(cudnn.stats().plans_built, built0) << "kAuto built a plan for a small chunk";
  }
  const auto& stt = cudnn.stats();
  std::printf("cuDNN bucketed summary: %d plans built, %d shapes failed, plan build total %.1f ms\n",
              stt.plans_built, stt.shapes_failed, stt.build_ms_total);
}

// cuDNN against our kernel at a realistic chunk (n = 2048 after s = 1024, GQA 32/8, D = 128),
// and both against the CPU reference on a sample of query rows.
TEST(Kernels, CudnnVsMmaPrefillAttention) {
  CudnnAttention cudnn;
  const CudnnAttnStatus init = cudnn.Init();
  ASSERT_TRUE(init.ok()) << "CudnnAttention::Init: " << init.message;
  cudnn.set_verbose(true);
  std::mt19937 rng(17);
  const int n = 2048, s = 1024, Hq = 32, Hkv = 8, D = 128, N = s + n, cap = N + 64;
  for (DType dt : kTypes) {
    const char* tn = dt == DType::kBF16 ? "bf16" : "fp16";
    auto q = RandomHalf(dt, static_cast<size_t>(n) * Hq * D, 1.f, rng);
    auto k = RandomHalf(dt, static_cast<size_t>(cap) * Hkv * D, 1.f, rng);
    auto v = RandomHalf(dt, static_cast<size_t>(cap) * Hkv * D, 1.f, rng);
    for (size_t i = static_cast<size_t>(N) * Hkv * D; i < k.h.size(); ++i) k.h[i] = v.h[i] = 0xffff;
    DeviceBuffer<uint16_t> dq(q.h.size()), dk(k.h.size()), dv(v.h.size()), d_mma(q.h.size()), d_cudnn(q.h.size());
    CUDA_OK(dq.Upload(q.h));
    CUDA_OK(dk.Upload(k.h));
    CUDA_OK(dv.Upload(v.h));
    CUDA_OK(d_mma.Poison());
    CUDA_OK(d_cudnn.Poison());
    PrefillAttnParams p;
    p.q = dq.get(); p.k = dk.get(); p.v = dv.get();
    p.n = n; p.s = s; p.Hq = Hq; p.Hkv = Hkv; p.D = D;
    p.scale = 1.f / std::sqrt(static_cast<float>(D));
    p.out = d_mma.get();
    CUDA_OK(PrefillAttention(dt, p, nullptr));
    p.out = d_cudnn.get();
    double build_ms = 0;
    CudnnAttnStatus st = cudnn.Prepare(dt, p, &build_ms);
    if (st.ok()) st = cudnn.Run(dt, p, nullptr);
    ASSERT_TRUE(st.ok()) << tn << " n=2048 s=1024 GQA 32/8 D=128: cuDNN must run this shape; "
                         << (st.code == CudnnAttnStatus::kUnsupported ? "UNSUPPORTED: " : "ERROR: ") << st.message;
    CUDA_OK(cudaDeviceSynchronize());
    const auto mma = ToFloat(dt, d_mma.Download()), cud = ToFloat(dt, d_cudnn.Download());
    const double cross = RelErr(cud, std::vector<double>(mma.begin(), mma.end()));
    // The CPU reference on sampled rows (first, second, across the prefix boundary, last).
    const int rows[] = {0, 1, 127, 128, 1023, 1024, 2047};
    std::vector<float> qs;
    std::vector<int> pos;
    std::vector<float> mma_s, cud_s;
    for (int r : rows) {
      const size_t off = static_cast<size_t>(r) * Hq * D;
      qs.insert(qs.end(), q.f.begin() + off, q.f.begin() + off + Hq * D);
      mma_s.insert(mma_s.end(), mma.begin() + off, mma.begin() + off + Hq * D);
      cud_s.insert(cud_s.end(), cud.begin() + off, cud.begin() + off + Hq * D);
      pos.push_back(s + r);
    }
    const int nr = static_cast<int>(pos.size());
    const auto ref = RefAttention(qs, k.f, v.f, nr, s, Hq, Hkv, D, 0, &pos);
    const double e_cud = RelErr(cud_s, ref), e_mma = RelErr(mma_s, ref);
    std::printf("%s n=%d s=%d Hq=%d Hkv=%d D=%d: cuDNN vs mma rel %.2e; sampled rows vs CPU: cuDNN %.2e, mma %.2e; "
                "plan build %.1f ms\n", tn, n, s, Hq, Hkv, D, cross, e_cud, e_mma, build_ms);
    EXPECT_LT(cross, 2 * Tol(dt)) << tn << " cuDNN vs mma";
    EXPECT_LT(e_cud, 2 * Tol(dt)) << tn << " cuDNN vs CPU (sampled rows)";
    EXPECT_LT(e_mma, 2 * Tol(dt)) << tn << " mma vs CPU (sampled rows)";
  }
}

// A decode-attention case: cache lengths of the batch, heads, head size, window, key splits.
struct DecodeCase {
  std::vector<int> lens;
  int Hq, Hkv, D, window, splits;
};

// The split kernels a group of G queries per K/V head can run: the default (kAuto: tensor cores
// for 2 or more, the streaming kernel for 1) and the others (the scalar kernel for groups, the
// single-query kernel for G = 1; the streaming kernel for 1, 2, 4 and 8).
std::vector<DecodeKernel> KernelsFor(int G) {
  if (G == 1) return {DecodeKernel::kAuto, DecodeKernel::kSingle, DecodeKernel::kStream};
  if (G == 2 || G == 4 || G == 8) return {DecodeKernel::kAuto, DecodeKernel::kScalar, DecodeKernel::kStream};
  return {DecodeKernel::kAuto, DecodeKernel::kScalar};
}
const char* KernelName(DecodeKernel k) {
  switch (k) {
    case DecodeKernel::kAuto: return "auto";
    case DecodeKernel::kScalar: return "scalar";
    case DecodeKernel::kSingle: return "single";
    case DecodeKernel::kStream: return "stream";
    default: return "mma";
  }
}

// Tensor maps (EncodeKvTensorMap) of the caches at ptrs[b], caps[b] tokens each, in device
// memory: what the tensor-core kernel reads its tiles through.
std::unique_ptr<DeviceBuffer<CUtensorMap>> KvMaps(DType dt, const std::vector<const void*>& ptrs,
                                                  const std::vector<int>& caps, int Hkv, int D) {
  std::vector<CUtensorMap> maps(ptrs.size());
  for (size_t b = 0; b < ptrs.size(); ++b)
    EXPECT_EQ(EncodeKvTensorMap(dt, ptrs[b], caps[b], Hkv, D, &maps[b]), cudaSuccess);
  auto d = std::make_unique<DeviceBuffer<CUtensorMap>>(maps.size());
  EXPECT_EQ(d->Upload(maps), cudaSuccess);
  return d;
}

TEST(Kernels, DecodeAttention) {
  std::mt19937 rng(7);
  const DecodeCase cases[] = {
      {{1, 300, 5000}, 8, 2, 128, 0, 16},
      {{4097}, 32, 32, 128, 0, 4},
      {{63, 64, 65}, 71, 1, 64, 0, 128},
      {{3000, 10}, 4, 4, 64, 500, 8},
      {{129}, 8, 8, 128, 0, 1},
      {{1, 2, 65}, 8, 8, 64, 0, 3},  // single queries over one, two and 65 keys (empty splits)
      // Groups for the tensor-core kernel: odd G, G = 8 with a window, G = 16 (a full m-tile).
      {{7, 1000}, 12, 4, 64, 0, 5},
      {{777, 64}, 64, 8, 128, 100, 4},
      {{2048}, 16, 1, 128, 0, 7},
      // Groups for the streaming kernel: G = 2 at D = 64, G = 4 with a window.
      {{1500, 33}, 8, 4, 64, 0, 6},
      {{2500}, 16, 4, 128, 200, 9},
  };
  for (DType dt : kTypes) {
    for (const DecodeCase& c : cases) {
      const int B = static_cast<int>(c.lens.size());
      auto q = RandomHalf(dt, static_cast<size_t>(B) * c.Hq * c.D, 1.f, rng);
      std::vector<HalfData> ks, vs;
      std::vector<DeviceBuffer<uint16_t>*> bufs;
      std::vector<const void*> kt, vt;
      std::vector<int> caps;
      for (int b = 0; b < B; ++b) {
        const int cap = c.lens[b] + 7;
        caps.push_back(cap);
        ks.push_back(RandomHalf(dt, static_cast<size_t>(cap) * c.Hkv * c.D, 1.f, rng));
        vs.push_back(RandomHalf(dt, static_cast<size_t>(cap) * c.Hkv * c.D, 1.f, rng));
        for (size_t i = static_cast<size_t>(c.lens[b]) * c.Hkv * c.D; i < ks[b].h.size(); ++i)
          ks[b].h[i] = vs[b].h[i] = 0xffff;
        auto* kb = new DeviceBuffer<uint16_t>(ks[b].h.size());
        auto* vb = new DeviceBuffer<uint16_t>(vs[b].h.size());
        CUDA_OK(kb->Upload(ks[b].h));
        CUDA_OK(vb->Upload(vs[b].h));
        bufs.push_back(kb);
        bufs.push_back(vb);
        kt.push_back(kb->get());
        vt.push_back(vb->get());
      }
      DeviceBuffer<uint16_t> dq(q.h.size()), dout(q.h.size());
      DeviceBuffer<const void*> dkt(B), dvt(B);
      DeviceBuffer<int32_t> dlen(B);
      DeviceBuffer<float> opart(static_cast<size_t>(B) * c.Hq * c.splits * c.D),
          lpart(static_cast<size_t>(B) * c.Hq * c.splits);
      CUDA_OK(dq.Upload(q.h));
      CUDA_OK(dkt.Upload(kt));
      CUDA_OK(dvt.Upload(vt));
      auto kmaps = KvMaps(dt, kt, caps, c.Hkv, c.D), vmaps = KvMaps(dt, vt, caps, c.Hkv, c.D);
      std::vector<int32_t> lens(c.lens.begin(), c.lens.end());
      CUDA_OK(dlen.Upload(lens));
      // Both merges: a second kernel, and the last split block (counters); the in-kernel merge
      // runs twice on the same counters, as graph replays do, to check they are reset.
      DeviceBuffer<int> counters(static_cast<size_t>(B) * c.Hq);
      CUDA_OK(cudaMemset(counters.get(), 0, sizeof(int) * B * c.Hq));
      for (DecodeKernel kind : KernelsFor(c.Hq / c.Hkv))
      for (int merge = 0; merge < 3; ++merge) {
        CUDA_OK(dout.Poison());
        CUDA_OK(opart.Poison());
        CUDA_OK(lpart.Poison());
        DecodeAttnParams p;
        p.q = dq.get(); p.k_table = dkt.get(); p.v_table = dvt.get(); p.len = dlen.get();
        p.k_maps = kmaps->get(); p.v_maps = vmaps->get();
        p.out = dout.get(); p.o_part = opart.get(); p.lse_part = lpart.get();
        p.B = B; p.Hq = c.Hq; p.Hkv = c.Hkv; p.D = c.D; p.splits = c.splits; p.window = c.window;
        p.scale = 1.f / std::sqrt(static_cast<float>(c.D));
        p.counters = merge == 0 ? nullptr : counters.get();
        p.kernel = kind;
        CUDA_OK(DecodeAttention(dt, p, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        auto out = ToFloat(dt, dout.Download());
        std::vector<float> got;
        std::vector<double> ref;
        for (int b = 0; b < B; ++b) {
          std::vector<float> qb(q.f.begin() + static_cast<size_t>(b) * c.Hq * c.D,
                                q.f.begin() + static_cast<size_t>(b + 1) * c.Hq * c.D);
          std::vector<int> qpos = {c.lens[b] - 1};
          auto r = RefAttention(qb, ks[b].f, vs[b].f, 1, 0, c.Hq, c.Hkv, c.D, c.window, &qpos);
          ref.insert(ref.end(), r.begin(), r.end());
          got.insert(got.end(), out.begin() + static_cast<size_t>(b) * c.Hq * c.D,
                     out.begin() + static_cast<size_t>(b + 1) * c.Hq * c.D);
        }
        EXPECT_LT(RelErr(got, ref), 2 * Tol(dt)) << "B=" << B << " Hq=" << c.Hq << " D=" << c.D
                                                  << " splits=" << c.splits << " merge=" << merge
                                                  << " kernel=" << KernelName(kind);
        if (merge > 0) {
          std::vector<int> left(static_cast<size_t>(B) * c.Hq, -1);
          CUDA_OK(cudaMemcpy(left.data(), counters.get(), left.size() * sizeof(int), cudaMemcpyDeviceToHost));
          EXPECT_EQ(std::count(left.begin(), left.end(), 0), static_cast<long>(left.size())) << "counters not reset";
        }
      }
      for (auto* bf : bufs) delete bf;
    }
  }
}

// Decode attention with the rotary embedding and the cache append fused in (p.qkv): the newest
// position's rotated key and value land in the cache, the output matches the CPU on the rotated
// queries and keys, and it equals RopeAppend followed by the plain kernel bit for bit.
TEST(Kernels, DecodeAttentionFusedRotary) {
  std::mt19937 rng(9);
  const DecodeCase cases[] = {
      {{1, 300, 5000}, 8, 2, 128, 0, 16},
      {{4097}, 32, 32, 128, 0, 12},
      {{63, 65}, 71, 1, 64, 0, 3},
      {{3000, 10}, 4, 4, 64, 500, 8},
      {{1000, 2}, 16, 1, 128, 0, 5},
  };
  for (DType dt : kTypes) {
    for (const DecodeCase& c : cases) {
      const int B = static_cast<int>(c.lens.size()), D = c.D, half = D / 2;
      const int E = (c.Hq + 2 * c.Hkv) * D;
      auto qkv = RandomHalf(dt, static_cast<size_t>(B) * E, 1.f, rng);
      std::vector<float> inv(half);
      for (int i = 0; i < half; ++i) inv[i] = std::pow(10000.f, -2.f * i / D);
      // Per sequence: a cache with rows [0, len - 1) random and the rest poisoned, twice (fused,
      // and RopeAppend + plain kernel).
      std::vector<HalfData> ks, vs;
      std::vector<std::unique_ptr<DeviceBuffer<uint16_t>>> bufs;
      std::vector<void*> kt[2], vt[2];
      std::vector<int> caps;
      for (int b = 0; b < B; ++b) {
        caps.push_back(c.lens[b] + 7);
        const size_t cap = static_cast<size_t>(c.lens[b] + 7) * c.Hkv * D;
        ks.push_back(RandomHalf(dt, cap, 1.f, rng));
        vs.push_back(RandomHalf(dt, cap, 1.f, rng));
        for (size_t i = static_cast<size_t>(c.lens[b] - 1) * c.Hkv * D; i < cap; ++i) ks[b].h[i] = vs[b].h[i] = 0xffff;
        for (int copy = 0; copy < 2; ++copy) {
          bufs.push_back(std::make_unique<DeviceBuffer<uint16_t>>(cap));
          CUDA_OK(bufs.back()->Upload(ks[b].h));
          kt[copy].push_back(bufs.back()->get());
          bufs.push_back(std::make_unique<DeviceBuffer<uint16_t>>(cap));
          CUDA_OK(bufs.back()->Upload(vs[b].h));
          vt[copy].push_back(bufs.back()->get());
        }
      }
      DeviceBuffer<uint16_t> dqkv(qkv.h.size()), dq(static_cast<size_t>(B) * c.Hq * D);
      DeviceBuffer<uint16_t> out0(dq.size()), out1(dq.size());
      DeviceBuffer<float> dinv(half);
      DeviceBuffer<int32_t> dlen(B), dpos(B);
      DeviceBuffer<void*> dkt0(B), dvt0(B), dkt1(B), dvt1(B);
      DeviceBuffer<float> opart(static_cast<size_t>(B) * c.Hq * c.splits * D), lpart(static_cast<size_t>(B) * c.Hq * c.splits);
      DeviceBuffer<int> counters(static_cast<size_t>(B) * c.Hq);
      std::vector<int32_t> lens(c.lens.begin(), c.lens.end()), pos(B);
      for (int b = 0; b < B; ++b) pos[b] = lens[b] - 1;
      CUDA_OK(dqkv.Upload(qkv.h));
      CUDA_OK(dinv.Upload(inv));
      CUDA_OK(dlen.Upload(lens));
      CUDA_OK(dpos.Upload(pos));
      CUDA_OK(dkt0.Upload(kt[0]));
      CUDA_OK(dvt0.Upload(vt[0]));
      CUDA_OK(dkt1.Upload(kt[1]));
      CUDA_OK(dvt1.Upload(vt[1]));
      CUDA_OK(cudaMemset(counters.get(), 0, sizeof(int) * B * c.Hq));
      std::unique_ptr<DeviceBuffer<CUtensorMap>> kmaps[2], vmaps[2];
      for (int copy = 0; copy < 2; ++copy) {
        kmaps[copy] = KvMaps(dt, {kt[copy].begin(), kt[copy].end()}, caps, c.Hkv, D);
        vmaps[copy] = KvMaps(dt, {vt[copy].begin(), vt[copy].end()}, caps, c.Hkv, D);
      }
      CUDA_OK(out0.Poison());
      CUDA_OK(out1.Poison());
      DecodeAttnParams p;
      p.len = dlen.get(); p.o_part = opart.get(); p.lse_part = lpart.get(); p.counters = counters.get();
      p.B = B; p.Hq = c.Hq; p.Hkv = c.Hkv; p.D = D; p.splits = c.splits; p.window = c.window;
      p.scale = 1.f / std::sqrt(static_cast<float>(D));
      // The first type runs the other kernel (KernelsFor), the second the default.
      p.kernel = KernelsFor(c.Hq / c.Hkv)[dt == kTypes[0] ? 1 : 0];
      // Fused, into copy 0.
      DecodeAttnParams pf = p;
      pf.k_table = reinterpret_cast<const void* const*>(dkt0.get());
      pf.v_table = reinterpret_cast<const void* const*>(dvt0.get());
      pf.qkv = dqkv.get(); pf.inv_freq = dinv.get(); pf.k_out = dkt0.get(); pf.v_out = dvt0.get();
      pf.out = out0.get();
      pf.k_maps = kmaps[0]->get(); pf.v_maps = vmaps[0]->get();
      CUDA_OK(DecodeAttention(dt, pf, nullptr));
      // RopeAppend, then the plain kernel, into copy 1.
      RopeAppendParams rp;
      rp.qkv = dqkv.get(); rp.n = B; rp.Hq = c.Hq; rp.Hkv = c.Hkv; rp.D = D; rp.q_out = dq.get();
      rp.inv_freq = dinv.get(); rp.pos = dpos.get(); rp.k_table = dkt1.get(); rp.v_table = dvt1.get();
      CUDA_OK(RopeAppend(dt, rp, nullptr));
      DecodeAttnParams pu = p;
      pu.q = dq.get();
      pu.k_table = reinterpret_cast<const void* const*>(dkt1.get());
      pu.v_table = reinterpret_cast<const void* const*>(dvt1.get());
      pu.out = out1.get();
      pu.k_maps = kmaps[1]->get(); pu.v_maps = vmaps[1]->get();
      CUDA_OK(DecodeAttention(dt, pu, nullptr));
      CUDA_OK(cudaDeviceSynchronize());
      const std::string tag = "B=" + std::to_string(B) + " Hq=" + std::to_string(c.Hq) + " D=" + std::to_string(D) +
                              " kernel=" + KernelName(p.kernel);
      EXPECT_EQ(out0.Download(), out1.Download()) << "fused != RopeAppend + kernel, " << tag;
      // Against the CPU: rotate q and the newest k in double, attend over the rest of the cache.
      auto got = ToFloat(dt, out0.Download());
      std::vector<float> got_kv;
      std::vector<double> ref, ref_kv;
      for (int b = 0; b < B; ++b) {
        const float* row = qkv.f.data() + static_cast<size_t>(b) * E;
        auto rot = [&](const float* x, int i) {
          const double ang = static_cast<double>(pos[b]) * inv[i];
          return std::make_pair(x[i] * std::cos(ang) - x[i + half] * std::sin(ang),
                                x[i + half] * std::cos(ang) + x[i] * std::sin(ang));
        };
        std::vector<float> qb(static_cast<size_t>(c.Hq) * D), kb = ks[b].f, vb = vs[b].f;
        for (int h = 0; h < c.Hq; ++h)
          for (int i = 0; i < half; ++i) {
            auto [r1, r2] = rot(row + h * D, i);
            qb[h * D + i] = static_cast<float>(r1);
            qb[h * D + i + half] = static_cast<float>(r2);
          }
        auto kc = ToFloat(dt, bufs[4 * b]->Download()), vc = ToFloat(dt, bufs[4 * b + 1]->Download());
        for (int h = 0; h < c.Hkv; ++h) {
          const size_t at = (static_cast<size_t>(pos[b]) * c.Hkv + h) * D;
          for (int i = 0; i < half; ++i) {
            auto [r1, r2] = rot(row + (c.Hq + h) * D, i);
            kb[at + i] = static_cast<float>(r1);
            kb[at + i + half] = static_cast<float>(r2);
            ref_kv.push_back(r1);
            ref_kv.push_back(r2);
            got_kv.push_back(kc[at + i]);
            got_kv.push_back(kc[at + i + half]);
          }
          for (int d = 0; d < D; ++d) {
            vb[at + d] = row[(c.Hq + c.Hkv + h) * D + d];
            ref_kv.push_back(vb[at + d]);
            got_kv.push_back(vc[at + d]);
          }
        }
        std::vector<int> qpos = {pos[b]};
        auto r = RefAttention(qb, kb, vb, 1, 0, c.Hq, c.Hkv, D, c.window, &qpos);
        ref.insert(ref.end(), r.begin(), r.end());
      }
      EXPECT_LT(RelErr(got_kv, ref_kv), 1.5 * Tol(dt)) << "appended row, " << tag;
      EXPECT_LT(RelErr(got, ref), 2 * Tol(dt)) << "output, " << tag;
    }
  }
}

}  // namespace
}  // namespace kvr::testing

KVR_GPU_TEST_MAIN()
