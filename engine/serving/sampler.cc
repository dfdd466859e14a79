#include "engine/serving/sampler.h"

#include <algorithm>
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
struct Cand {
  double p;
  int32_t id;
};
bool Before(const Cand& a, const Cand& b) { return a.p > b.p || (a.p == b.p && a.id < b.id); }

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

int32_t Sampler::Sample(absl::Span<const float> logits, TokenLogprobs* logprobs) {
  const int V = static_cast<int>(logits.size());
  work_.resize(V);
  for (int i = 0; i < V; ++i) work_[i] = Clean(logits[i]);
  std::vector<float>& x = work_;

  // 1. Raw log-probabilities: log_softmax(logits).
  double raw_lse = 0;
  const bool want_logprobs = logprobs != nullptr && params_.logprobs >= 0;
  if (want_logprobs) {
    float m = *std::max_element(x.begin(), x.end());
    double s = 0;
    for (float v : x) s += std::exp(static_cast<double>(v) - m);
    raw_lse = m + std::log(s);
    logprobs->top.clear();
    if (params_.logprobs > 0) {
      std::vector<Cand> c(V);
      for (int i = 0; i < V; ++i) c[i] = {static_cast<double>(x[i]), i};
      int n = std::min(params_.logprobs, V);
      std::partial_sort(c.begin(), c.begin() + n, c.end(), Before);
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
    int best = 0;
    for (int i = 1; i < V; ++i)
      if (x[i] > x[best]) best = i;
    return finish(best);
  }

  // 4. Temperature and softmax (unnormalized weights; the total is tracked instead).
  const double inv_t = 1.0 / params_.temperature;
  float m = *std::max_element(x.begin(), x.end());
  std::vector<Cand> cand;
  cand.reserve(V);
  double pmax = 0;
  for (int i = 0; i < V; ++i) {
    double w = std::exp((static_cast<double>(x[i]) - m) * inv_t);
    if (w > 0) cand.push_back({w, i});
    pmax = std::max(pmax, w);
  }
  if (cand.empty()) return finish(0);  // every logit was -inf or NaN

  // 5. Filters.
  bool sorted = false;
  if (params_.top_k > 0 && params_.top_k < static_cast<int>(cand.size())) {
    std::partial_sort(cand.begin(), cand.begin() + params_.top_k, cand.end(), Before);
    cand.resize(params_.top_k);
    sorted = true;
  }
  if (params_.top_p < 1.0f) {
    double total = 0;
    for (const Cand& c : cand) total += c.p;
    const double target = params_.top_p * total;
    size_t n = cand.size();
    size_t m_sorted = sorted ? n : std::min<size_t>(n, 64);
    while (true) {
      if (!sorted) std::partial_sort(cand.begin(), cand.begin() + m_sorted, cand.end(), Before);
      double cum = 0;
      size_t keep = 0;
      while (keep < m_sorted && cum < target) cum += cand[keep++].p;
      if (cum >= target || m_sorted == n) {
        cand.resize(std::max<size_t>(keep, 1));
        sorted = true;
        break;
      }
      m_sorted = std::min(n, m_sorted * 4);
    }
  }
  if (params_.min_p > 0.0f) {
    const double floor = params_.min_p * pmax;
    std::erase_if(cand, [&](const Cand& c) { return c.p < floor; });
    if (cand.empty()) return finish(0);  // unreachable: the most likely token always passes
  }
  // Unsorted candidates are in ascending id order: canonical as well.

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
