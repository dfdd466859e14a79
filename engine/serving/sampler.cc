#include "engine/serving/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvr {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Candidate order: probability descending, then id ascending (a strict total order, so any
// sort gives the same sequence).
template <typename C>
bool Before(const C& a, const C& b) { return a.p > b.p || (a.p == b.p && a.id < b.id); }

// Tokens whose weight would be below e^-kMaxLogRatio of the most likely token's (4e-18 each, so
// under 1e-12 of the mass together for any vocabulary below 2^36) weigh 0: never candidates.
constexpr double kMaxLogRatio = 40;

// e^z for z in [-kMaxLogRatio, 0], to about 2e-7 relative; 0 for z below that and for NaN.
// Float arithmetic without branches or library calls, so that the loop over the vocabulary
// vectorizes (std::exp in double cost about 5 ns a token on the 2-core dev machine: 0.65 ms a
// token for a 128k vocabulary). z log2(e) = k + f with k an integer and |f| <= 1/2; 2^f by its
// Taylor polynomial of degree 6 (next term 1.2e-7 of the result); 2^k from the exponent bits.
inline float ExpNonPositive(float z) {
  constexpr float kLo = -static_cast<float>(kMaxLogRatio);
  const float t = std::max(kLo, z) * 1.44269504f;  // in [-57.71, 0] (kLo for NaN)
  const int k = -static_cast<int>(0.5f - t);          // round(t): 0.5 - t > 0, so int() floors
  const float f = t - static_cast<float>(k);
  const float p =
      1.f + f * (0.693147181f + f * (0.240226507f + f * (0.0555041087f + f * (0.00961812911f +
      f * (0.00133335581f + f * 0.000154035304f)))));
  const float scale = std::bit_cast<float>((k + 127) << 23);  // 2^k, k >= -58: a normal float
  return static_cast<float>(z >= kLo) * (p * scale);  // 0 below kLo and for NaN
}

// The passes over the whole vocabulary are built twice, for AVX2 and for the baseline x86-64
// (SSE2) that the rest is built for; the loader picks one by the CPU (GCC function multiversioning).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KVR_VOCAB_PASS __attribute__((target_clones("avx2", "default")))
#else
#define KVR_VOCAB_PASS
#endif

// The largest of p[0, n) (no NaN in it; -inf if n == 0), in one vectorized pass.
KVR_VOCAB_PASS float MaxOf(const float* p, int n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int i = 0; i < n; ++i) m = m > p[i] ? m : p[i];  // (this form vectorizes; std::max does not)
  return m;
}
float MaxOf(const std::vector<float>& x) { return MaxOf(x.data(), static_cast<int>(x.size())); }

// A weight as the draw counts it: w if it is nonzero and at least `floor` (min_p), else 0.
inline double KeptWeight(float w, float floor) { return w > 0 && w >= floor ? static_cast<double>(w) : 0.0; }

// The sum of KeptWeight over p[0, n), in one vectorized pass.
KVR_VOCAB_PASS double KeptSum(const float* p, int n, float floor) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < n; ++i) sum += KeptWeight(p[i], floor);
  return sum;
}

// w[i] = e^((w[i] - m) * inv_t), the logits replaced by their weights, in one vectorized pass.
KVR_VOCAB_PASS void WeightsInPlace(float* w, int n, float m, float inv_t) {
#pragma omp simd  // (-fopenmp-simd: vectorized whatever the optimization level's cost model says)
  for (int i = 0; i < n; ++i) w[i] = ExpNonPositive((w[i] - m) * inv_t);
}

// Weights in (0, 1] by binary exponent: bucket b holds [2^-b, 2^(1-b)); the last holds the rest.
constexpr int kBuckets = 64;
// (w >= e^-40 is a normal float: its exponent field is ilogb(w) + 127.)
int BucketOf(float w) {
  const int e = static_cast<int>((std::bit_cast<uint32_t>(w) >> 23) & 0xff);
  return std::min(kBuckets - 1, 127 - e);
}

float Clean(float x) { return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x; }

absl::Status Bad(const std::string& field, const std::string& value, const std::string& allowed) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value, " is not allowed: ", allowed));
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p, int vocab_size) {
  auto finite = [](float v) { return std::isfinite(v); };
  if (p.max_tokens < 1) return Bad("max_tokens", absl::StrCat(p.max_tokens), "must be >= 1");
  if (!finite(p.temperature) || p.temperature < 0)
    return Bad("temperature", absl::StrCat(p.temperature), "must be >= 0 (0 = greedy)");
  if (p.top_k < 0 || p.top_k > vocab_size)
    return Bad("top_k", absl::StrCat(p.top_k),
               absl::StrCat("must be in [0, ", vocab_size, "] (0 = all tokens)"));
  if (!finite(p.top_p) || p.top_p <= 0 || p.top_p > 1)
    return Bad("top_p", absl::StrCat(p.top_p), "must be in (0, 1]");
  if (!finite(p.min_p) || p.min_p < 0 || p.min_p > 1)
    return Bad("min_p", absl::StrCat(p.min_p), "must be in [0, 1]");
  if (!finite(p.repetition_penalty) || p.repetition_penalty <= 0)
    return Bad("repetition_penalty", absl::StrCat(p.repetition_penalty), "must be > 0 (1 = off)");
  if (!finite(p.presence_penalty) || p.presence_penalty < -2 || p.presence_penalty > 2)
    return Bad("presence_penalty", absl::StrCat(p.presence_penalty), "must be in [-2, 2]");
  if (!finite(p.frequency_penalty) || p.frequency_penalty < -2 || p.frequency_penalty > 2)
    return Bad("frequency_penalty", absl::StrCat(p.frequency_penalty), "must be in [-2, 2]");
  if (p.logprobs < -1 || p.logprobs > kMaxLogprobs)
    return Bad("logprobs", absl::StrCat(p.logprobs),
               absl::StrCat("must be in [0, ", kMaxLogprobs, "], or unset for none"));
  if (static_cast<int>(p.stop.size()) > kMaxStopStrings)
    return Bad("stop", absl::StrCat(p.stop.size(), " strings"),
               absl::StrCat("at most ", kMaxStopStrings));
  for (const std::string& s : p.stop) {
    if (s.empty()) return Bad("stop", "\"\"", "stop strings must be non-empty");
    if (static_cast<int>(s.size()) > kMaxStopStringBytes)
      return Bad("stop", absl::StrCat("a string of ", s.size(), " bytes"),
                 absl::StrCat("at most ", kMaxStopStringBytes, " bytes each"));
  }
  for (int32_t id : p.stop_token_ids) {
    if (id < 0 || id >= vocab_size)
      return Bad("stop_token_ids", absl::StrCat(id),
                 absl::StrCat("token ids must be in [0, ", vocab_size, ")"));
  }
  return absl::OkStatus();
}

double Sampler::Uniform(uint64_t seed, uint64_t step) {
  uint64_t bits = SplitMix64(seed ^ SplitMix64(step + 0x632BE59BD9B4E019ull));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

Sampler::Sampler(const SamplingParams& params, absl::Span<const int32_t> prompt)
    : params_(params) {
  if (params_.repetition_penalty != 1.0f) prompt_tokens_.insert(prompt.begin(), prompt.end());
}

void Sampler::ApplyPenalties(std::vector<float>& x) const {
  const int V = static_cast<int>(x.size());
  const float r = params_.repetition_penalty;
  if (r != 1.0f) {
    auto penalize = [&](int32_t t) {
      if (t < 0 || t >= V) return;
      x[t] = x[t] > 0 ? x[t] / r : x[t] * r;
    };
    for (int32_t t : prompt_tokens_) penalize(t);
    for (const auto& [t, n] : output_counts_) {
      if (!prompt_tokens_.contains(t)) penalize(t);
    }
  }
  if (params_.frequency_penalty != 0 || params_.presence_penalty != 0) {
    for (const auto& [t, n] : output_counts_) {
      if (t < 0 || t >= V) continue;
      x[t] -= params_.frequency_penalty * static_cast<float>(n) + params_.presence_penalty;
    }
  }
}

// Candidates for top_k / top_p (steps 4-5) from the weights w (V), into cand_, sorted in Before
// order: the top_k most likely (when top_k is below the number of tokens of nonzero weight), then
// of those the smallest prefix whose mass, summed in that order, reaches top_p of their total.
// Only a prefix of the full order can be kept, so one pass counts the tokens and sums the
// weights per binary-exponent bucket, and only the tokens of the first buckets that hold enough
// of them (k tokens, or a little more than the top_p mass) become candidates and are sorted: they
// are exactly the first tokens of the full order (a bucket is in or out whole, and every weight
// outside is smaller than every weight inside). If rounding leaves the top_p walk short of its
// mass, every token of nonzero weight is taken and sorted, as a full sort would. With top_k at
// or above that number and no top_p, nothing is filtered: every such token, in ascending id order.
void Sampler::TopCandidates(const std::vector<float>& w) {
  const int V = static_cast<int>(w.size());
  // Four interleaved histograms: most weights fall in a few buckets, and one running sum per
  // bucket would make each addition wait for the one before.
  constexpr int kLanes = 4;
  int lane_count[kLanes][kBuckets] = {};
  double lane_mass[kLanes][kBuckets] = {};
  for (int i = 0; i < V; ++i) {
    if (w[i] > 0) {
      const int b = BucketOf(w[i]);
      ++lane_count[i % kLanes][b];
      lane_mass[i % kLanes][b] += w[i];
    }
  }
  int count[kBuckets] = {}, nonzero = 0;
  double mass[kBuckets] = {}, total = 0;
  for (int b = 0; b < kBuckets; ++b) {
    for (int l = 0; l < kLanes; ++l) {
      count[b] += lane_count[l][b];
      mass[b] += lane_mass[l][b];
    }
    nonzero += count[b];
    total += mass[b];
  }
  std::vector<Cand>& cand = cand_;
  auto collect = [&](int last) {  // tokens of buckets 0..last (w >= 2^-last), in ascending id order
    const float lowest = std::bit_cast<float>((127 - last) << 23);  // 2^-last; every w > 0 if last = 63
    cand.clear();
    for (int i = 0; i < V; ++i)
      if (w[i] >= lowest) cand.push_back({w[i], i});
  };
  const bool top_k = params_.top_k > 0 && params_.top_k < nonzero;
  if (top_k) {
    int last = 0;
    for (int have = count[0]; have < params_.top_k;) have += count[++last];
    collect(last);
    std::partial_sort(cand.begin(), cand.begin() + params_.top_k, cand.end(), Before<Cand>);
    cand.resize(params_.top_k);
    if (params_.top_p >= 1.0f) return;
    total = 0;
    for (const Cand& c : cand) total += c.p;
  }
  if (!top_k && params_.top_p >= 1.0f) {  // top_k at least every token: all, in id order
    collect(kBuckets - 1);
    return;
  }
  const double target = params_.top_p * total;
  if (!top_k) {
    int last = 0;
    double acc = mass[0];
    while (last + 1 < kBuckets && !(acc >= target * (1 + 1e-9))) acc += mass[++last];
    collect(last);
    std::sort(cand.begin(), cand.end(), Before<Cand>);
  }
  for (int pass = 0; pass < 2; ++pass) {
    double cum = 0;
    size_t keep = 0;
    while (keep < cand.size() && cum < target) cum += cand[keep++].p;
    if (cum >= target || top_k || pass == 1) {
      cand.resize(std::max<size_t>(keep, 1));
      return;
    }
    collect(kBuckets - 1);  // rounding: fall back to every token, in the full order
    std::sort(cand.begin(), cand.end(), Before<Cand>);
  }
}

// Step 6 without top_k and top_p: the candidates are the tokens whose weight w is nonzero and at
// least `floor` (min_p), in ascending id order, so no list is built. The total is a vectorized
// sum; the walk adds blocks of 64 weights until the block that holds the draw, then goes one by
// one inside it.
int32_t Sampler::DrawInIdOrder(const std::vector<float>& w, double floor) const {
  const int V = static_cast<int>(w.size());
  const float* p = w.data();
  const float f = static_cast<float>(floor);  // the weights are floats: compare as floats
  const double total = KeptSum(p, V, f);
  const double u = Uniform(params_.seed, static_cast<uint64_t>(step_)) * total;
  constexpr int kBlock = 64;
  double cum = 0;
  int last = 0;  // the last kept token so far: rounding may leave u past the final sum
  for (int b0 = 0; b0 < V; b0 += kBlock) {
    const int b1 = std::min(V, b0 + kBlock);
    const double block = KeptSum(p + b0, b1 - b0, f);
    if (block == 0) continue;
    if (u < cum + block) {
      for (int i = b0; i < b1; ++i) {
        const double k = KeptWeight(p[i], f);
        if (k == 0) continue;
        cum += k;
        last = i;
        if (u < cum) return i;
      }
      continue;  // rounding: the block's sum in order fell short of u; go on
    }
    cum += block;
    for (int i = b1 - 1; i >= b0; --i)
      if (KeptWeight(p[i], f) != 0) {
        last = i;
        break;
      }
  }
  return last;
}

int32_t Sampler::Sample(absl::Span<const float> logits, TokenLogprobs* logprobs) {
  const int V = static_cast<int>(logits.size());
  work_.resize(V);
  const float* in = logits.data();
  float* out = work_.data();
#pragma omp simd
  for (int i = 0; i < V; ++i) out[i] = Clean(in[i]);
  std::vector<float>& x = work_;

  // 1. Raw log-probabilities: log_softmax(logits).
  double raw_lse = 0;
  const bool want_logprobs = logprobs != nullptr && params_.logprobs >= 0;
  if (want_logprobs) {
    const float m = MaxOf(x);
    double s = 0;
    for (float v : x) s += std::exp(static_cast<double>(v) - m);
    raw_lse = m + std::log(s);
    logprobs->top.clear();
    if (params_.logprobs > 0) {
      std::vector<Cand> c(V);
      for (int i = 0; i < V; ++i) c[i] = {static_cast<double>(x[i]), i};
      int n = std::min(params_.logprobs, V);
      std::partial_sort(c.begin(), c.begin() + n, c.end(), Before<Cand>);
      for (int i = 0; i < n; ++i)
        logprobs->top.push_back({c[i].id, static_cast<float>(c[i].p - raw_lse)});
    }
  }
  auto finish = [&](int32_t token) {
    if (want_logprobs) {
      logprobs->token = token;
      logprobs->logprob = static_cast<float>(static_cast<double>(Clean(logits[token])) - raw_lse);
    }
    ++output_counts_[token];
    ++step_;
    return token;
  };

  // 2. Penalties.
  ApplyPenalties(x);

  // 3. Greedy.
  if (params_.temperature == 0.0f || params_.top_k == 1) {
    const float m = MaxOf(x);  // the first token at the maximum: ties go to the lowest id
    return finish(static_cast<int32_t>(std::find(x.begin(), x.end(), m) - x.begin()));
  }

  // 4. Temperature and softmax (unnormalized weights, the most likely one 1; the total is
  // tracked instead): the weights replace the logits in x, in one vectorized pass. The most
  // likely token's weight is e^0 = 1 exactly (the largest, pmax); no token has any weight when
  // every logit was -inf or NaN, or some were +inf.
  const float inv_t = static_cast<float>(std::min(1.0 / params_.temperature, 1e30));  // finite
  const float m = MaxOf(x);
  if (!std::isfinite(m)) return finish(0);
  WeightsInPlace(x.data(), V, m, inv_t);
  constexpr double pmax = 1;
  if (params_.top_k == 0 && params_.top_p >= 1.0f) return finish(DrawInIdOrder(x, params_.min_p * pmax));

  // 5. Filters: top_k and top_p choose and sort the candidates, then min_p.
  TopCandidates(x);
  std::vector<Cand>& cand = cand_;
  if (params_.min_p > 0.0f) {
    const double floor = static_cast<float>(params_.min_p * pmax);  // as DrawInIdOrder
    std::erase_if(cand, [&](const Cand& c) { return c.p < floor; });
    if (cand.empty()) return finish(0);  // unreachable: the most likely token always passes
  }

  // 6. Draw.
  double total = 0;
  for (const Cand& c : cand) total += c.p;
  const double u = Uniform(params_.seed, static_cast<uint64_t>(step_)) * total;
  double cum = 0;
  for (const Cand& c : cand) {
    cum += c.p;
    if (u < cum) return finish(c.id);
  }
  return finish(cand.back().id);
}

}  // namespace kvr
