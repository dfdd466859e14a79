#include "engine/cpu/cpu_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

namespace kvr::cpu {
namespace {

// Dot product with 8 independent partial sums combined in a fixed order: vectorizable, and
// deterministic for a given n.
float Dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  }
  for (; i < n; ++i) acc[i & 7] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace

void Embed(absl::Span<const int32_t> tokens, const float* table, int C, float* out) {
  for (size_t t = 0; t < tokens.size(); ++t) {
    std::memcpy(out + t * C, table + static_cast<int64_t>(tokens[t]) * C, sizeof(float) * C);
  }
}

void RmsNorm(const float* x, const float* w, int T, int C, float eps, float* out) {
  for (int t = 0; t < T; ++t) {
    const float* xr = x + static_cast<int64_t>(t) * C;
    float* o = out + static_cast<int64_t>(t) * C;
    const float mean_sq = Dot(xr, xr, C) / static_cast<float>(C);
    const float inv = 1.0f / std::sqrt(mean_sq + eps);
    for (int c = 0; c < C; ++c) o[c] = w[c] * (xr[c] * inv);
  }
}

void LayerNorm(const float* x, const float* w, const float* b, int T, int C, float eps, float* out) {
  for (int t = 0; t < T; ++t) {
    const float* xr = x + static_cast<int64_t>(t) * C;
    float* o = out + static_cast<int64_t>(t) * C;
    float mean = 0;
    for (int c = 0; c < C; ++c) mean += xr[c];
    mean /= static_cast<float>(C);
    float var = 0;
    for (int c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= static_cast<float>(C);
    const float inv = 1.0f / std::sqrt(var + eps);
    for (int c = 0; c < C; ++c) o[c] = (xr[c] - mean) * inv * w[c] + (b ? b[c] : 0.0f);
  }
}

void Linear(const float* x, const float* W, const float* bias, int T, int I, int O, float* out,
            int threads) {
  auto rows = [&](int o_begin, int o_end) {
    for (int t = 0; t < T; ++t) {
      const float* xr = x + static_cast<int64_t>(t) * I;
      float* yr = out + static_cast<int64_t>(t) * O;
      for (int o = o_begin; o < o_end; ++o) {
        yr[o] = Dot(xr, W + static_cast<int64_t>(o) * I, I) + (bias ? bias[o] : 0.0f);
      }
    }
  };
  const int64_t work = static_cast<int64_t>(T) * I * O;
  const int n = std::min(threads, O);
  if (n <= 1 || work < (1 << 20)) {
    rows(0, O);
    return;
  }
  std::vector<std::thread> pool;
  for (int i = 0; i < n; ++i) pool.emplace_back(rows, O * i / n, O * (i + 1) / n);
  for (auto& th : pool) th.join();
}

void Rotary(float* x, int T, int H, int D, int start, const float* inv_freq) {
  const int half = D / 2;
  for (int t = 0; t < T; ++t) {
    const float pos = static_cast<float>(start + t);
    for (int h = 0; h < H; ++h) {
      float* v = x + (static_cast<int64_t>(t) * H + h) * D;
      for (int i = 0; i < half; ++i) {
        const float angle = pos * inv_freq[i];
        const float c = std::cos(angle), s = std::sin(angle);
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
}

void Attention(const float* q, const float* k, const float* v, int T, int start, int Hq, int Hkv,
               int D, int window, float* out) {
  const int group = Hq / Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<float> scores;
  for (int t = 0; t < T; ++t) {
    const int pos = start + t;
    const int first = window > 0 ? std::max(0, pos - window + 1) : 0;
    scores.resize(pos + 1);
    for (int h = 0; h < Hq; ++h) {
      const int kvh = h / group;
      const float* qr = q + (static_cast<int64_t>(t) * Hq + h) * D;
      float max_score = -INFINITY;
      for (int j = first; j <= pos; ++j) {
        scores[j] = Dot(qr, k + (static_cast<int64_t>(j) * Hkv + kvh) * D, D) * scale;
        max_score = std::max(max_score, scores[j]);
      }
      float denom = 0;
      for (int j = first; j <= pos; ++j) {
        scores[j] = std::exp(scores[j] - max_score);
        denom += scores[j];
      }
      float* o = out + (static_cast<int64_t>(t) * Hq + h) * D;
      std::fill(o, o + D, 0.0f);
      for (int j = first; j <= pos; ++j) {
        const float p = scores[j] / denom;
        const float* vr = v + (static_cast<int64_t>(j) * Hkv + kvh) * D;
        for (int d = 0; d < D; ++d) o[d] += p * vr[d];
      }
    }
  }
}

void SiluGate(const float* gu, int T, int F, float* out) {
  for (int t = 0; t < T; ++t) {
    const float* g = gu + static_cast<int64_t>(t) * 2 * F;
    const float* u = g + F;
    float* o = out + static_cast<int64_t>(t) * F;
    for (int f = 0; f < F; ++f) o[f] = g[f] / (1.0f + std::exp(-g[f])) * u[f];
  }
}

void GeluErf(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
}

void AddInPlace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace kvr::cpu
