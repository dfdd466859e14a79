// Sampler: picks the next token of one sequence from its logits. Shared by the daemon's scheduler
// and the offline CLI (kvr-generate) so that the same prompt, seed and SamplingParams give the
// same tokens in both, on one machine (the passes over the vocabulary are vectorized; a CPU
// without AVX2 may round their sums differently and so, rarely, draw another token).
//
//   Sampler sampler(params, prompt_ids);          // params.seed chosen by the caller
//   int32_t t0 = sampler.Sample(prefill_logits);  // step 0
//   int32_t t1 = sampler.Sample(decode_logits);   // step 1, ...
//
// What Sample does, in this order (V = vocab size):
//   1. logprobs (if asked) from the raw logits: log_softmax over V, before any processing
//   2. penalties: repetition (HF rule: x > 0 ? x / r : x * r) on every token of prompt + output;
//      frequency and presence (OpenAI rule: x -= f * count + p * [count > 0]) on output tokens
//   3. temperature == 0: argmax (ties: the lowest id), done
//   4. x /= temperature; probabilities by softmax (weights in float, 2e-7 relative to exp;
//      tokens below e^-40 of the most likely one weigh nothing)
//   5. top_k: keep the k most likely; top_p: keep the smallest most-likely-first prefix whose
//      mass (renormalized after top_k) reaches top_p; min_p: drop tokens with
//      p < min_p * p(most likely). Order of candidates: p descending, then id ascending when
//      top_k or top_p filtered them; ascending id otherwise.
//   6. draw u in [0, 1) from (seed, step) with SplitMix64 (no hidden state: step k of a sequence
//      always uses the same u), and walk the kept candidates' cumulative mass
// The chosen token is recorded as output (it counts for later penalties) and the step advances.
// Cost: a few vectorized passes over V, plus a sort of only the tokens that top_k / top_p can
// keep (docs/benchmarks.md, session 8: 0.15-0.86 ms a token for V = 128,256 and a trained
// model's shape of logits on the H200 machine's CPU). The scheduler samples the sequences of a
// decode step on several threads, after the GPU step: a Sampler is used by one thread at a time.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/types/span.h"
#include "engine/serving/sampling_params.h"

namespace kvr {

struct TopLogprob {
  int32_t token = 0;
  float logprob = 0;
};

// Log-probabilities of one sampled token under the model's raw distribution.
struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0;
  std::vector<TopLogprob> top;  // the n most likely, most likely first (n = params.logprobs)
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, absl::Span<const int32_t> prompt);

  // Picks the next token from (V) logits. Fills `logprobs` when params.logprobs >= 0 and it is
  // not null.
  int32_t Sample(absl::Span<const float> logits, TokenLogprobs* logprobs = nullptr);

  int steps() const { return step_; }  // tokens sampled so far
  const SamplingParams& params() const { return params_; }

  // The uniform draw of step `step` for `seed`, in [0, 1). Exposed for tests.
  static double Uniform(uint64_t seed, uint64_t step);

 private:
  void ApplyPenalties(std::vector<float>& x) const;

  struct Cand {  // a token and its unnormalized probability
    double p;
    int32_t id;
  };
  // Steps 4-5 for top_k / top_p: the kept candidates of the (V) weights into cand_, sorted.
  void TopCandidates(const std::vector<float>& w);
  // Step 6 straight from the (V) weights when neither top_k nor top_p is set.
  int32_t DrawInIdOrder(const std::vector<float>& w, double floor) const;

  SamplingParams params_;
  absl::flat_hash_set<int32_t> prompt_tokens_;
  absl::flat_hash_map<int32_t, int> output_counts_;
  int step_ = 0;
  std::vector<float> work_;  // (V) processed logits, reused between steps
  std::vector<Cand> cand_;   // (<= V) candidates of a sampled step, reused between steps
};

}  // namespace kvr
