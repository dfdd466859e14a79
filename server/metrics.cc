#include "server/metrics.h"

#include <exception>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/util/log.h"

namespace kvr {
namespace {

using prometheus::Histogram;

// Latency buckets: 1 ms up to about 43 minutes (vLLM's TTFT buckets, extended).
const Histogram::BucketBoundaries kLatencyBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5,   5.0,   7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
// Inter-token latency: 1 ms to 80 s.
const Histogram::BucketBoundaries kItlBuckets = {0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                                                 0.15,  0.2,   0.3,  0.4,   0.5,  0.75,  1.0,
                                                 2.5,   5.0,   7.5,  10.0,  20.0, 40.0,  80.0};
const Histogram::BucketBoundaries kTokenBuckets = {1,    2,    5,     10,    20,    50,    100,
                                                   200,  500,  1000,  2000,  5000,  10000, 20000,
                                                   50000, 100000, 200000, 500000, 1000000};

Histogram* MakeHistogram(prometheus::Registry& r, const std::string& name, const std::string& help,
                         const Histogram::BucketBoundaries& buckets) {
  return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}
prometheus::Gauge* MakeGauge(prometheus::Registry& r, const std::string& name,
                             const std::string& help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}
prometheus::Counter* MakeCounter(prometheus::Registry& r, const std::string& name,
                                 const std::string& help) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}
std::vector<prometheus::Counter*> PerWorker(prometheus::Registry& r, const std::string& name,
                                            const std::string& help, int workers) {
  auto& family = prometheus::BuildCounter().Name(name).Help(help).Register(r);
  std::vector<prometheus::Counter*> out;
  for (int w = 0; w < workers; ++w) out.push_back(&family.Add({{"worker", absl::StrCat(w)}}));
  return out;
}

std::vector<Histogram*> ByPromptBand(prometheus::Registry& r, const std::string& name,
                                    const std::string& help) {
  auto& family = prometheus::BuildHistogram().Name(name).Help(help).Register(r);
  std::vector<Histogram*> out;
  for (int b = 0; b < kNumPromptBands; ++b)
    out.push_back(&family.Add({{"prompt_band", PromptBandName(b)}}, kLatencyBuckets));
  return out;
}

}  // namespace

int PromptBand(int n) {
  if (n < 512) return 0;
  if (n < 2048) return 1;
  if (n < 8192) return 2;
  if (n < 32768) return 3;
  return 4;
}

const char* PromptBandName(int band) {
  static const char* const kNames[kNumPromptBands] = {"<512", "512-2K", "2K-8K", "8K-32K",
                                                      ">=32K"};
  return band >= 0 && band < kNumPromptBands ? kNames[band] : kNames[kNumPromptBands - 1];
}

Metrics::Metrics(int num_workers) : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  ttft_ = ByPromptBand(r, "kvr_time_to_first_token_seconds",
                       "Time from a request's arrival to its first token, by prompt length band.");
  itl_ = MakeHistogram(r, "kvr_inter_token_latency_seconds",
                       "Time between two consecutive tokens of one request.", kItlBuckets);
  e2e_ = MakeHistogram(r, "kvr_e2e_request_latency_seconds",
                       "Time from a request's arrival to its end.", kLatencyBuckets);
  queue_time_ = MakeHistogram(r, "kvr_request_queue_time_seconds",
                              "Time a request waited in the admission queue.", kLatencyBuckets);
  prefill_time_ = ByPromptBand(
      r, "kvr_request_prefill_time_seconds",
      "Wall time of a request's prefill across all workers, by prompt length band.");
  decode_time_ = MakeHistogram(r, "kvr_request_decode_time_seconds",
                               "Time from a request's first token to its end.", kLatencyBuckets);
  prompt_tokens_hist_ = MakeHistogram(r, "kvr_request_prompt_tokens",
                                      "Prompt tokens per prefilled request.", kTokenBuckets);
  generation_tokens_hist_ = MakeHistogram(r, "kvr_request_generation_tokens",
                                          "Tokens generated per finished request.", kTokenBuckets);
  running_ = MakeGauge(r, "kvr_num_requests_running", "Requests prefilling or decoding.");
  waiting_ = MakeGauge(r, "kvr_num_requests_waiting", "Requests in the admission queue.");
  kv_usage_ = MakeGauge(r, "kvr_kv_cache_usage_perc",
                        "Fraction of KV-cache memory in use, 0 to 1 (1 = 100%).");
  kv_bytes_ = MakeGauge(r, "kvr_kv_cache_usage_bytes", "Bytes held by running requests' KV-caches.");
  prompt_tokens_ = MakeCounter(r, "kvr_prompt_tokens_total", "Prompt tokens prefilled.");
  generation_tokens_ = MakeCounter(r, "kvr_generation_tokens_total", "Tokens generated.");
  success_ = &prometheus::BuildCounter()
                  .Name("kvr_request_success_total")
                  .Help("Requests that ended, by finished_reason: stop, length, abort, error.")
                  .Register(r);
  for (const char* reason : {"stop", "length", "abort", "error"})
    success_->Add({{"finished_reason", reason}});
  rejected_ = &prometheus::BuildCounter()
                   .Name("kvr_request_rejected_total")
                   .Help("Requests refused before admission, by gRPC status code name.")
                   .Register(r);
  worker_busy_ = PerWorker(r, "kvr_worker_prefill_busy_seconds_total",
                           "Seconds a prefill worker spent computing its chunks.", num_workers);
  worker_wait_ = PerWorker(r, "kvr_worker_prefill_wait_seconds_total",
                           "Seconds a prefill worker waited for the K/V of earlier chunks.",
                           num_workers);
  worker_sent_ = PerWorker(r, "kvr_kv_transfer_sent_bytes_total",
                           "K/V bytes a worker sent along the prefill chain.", num_workers);
  worker_received_ = PerWorker(r, "kvr_kv_transfer_received_bytes_total",
                               "K/V bytes a worker received along the prefill chain.", num_workers);
  worker_tokens_ = PerWorker(r, "kvr_worker_prefill_tokens_total",
                             "Prompt tokens a worker prefilled (its chunks).", num_workers);
}

Metrics::~Metrics() = default;

absl::StatusOr<int> Metrics::Serve(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  std::vector<int> ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports[0];
}

void Metrics::OnStats(const SchedulerStats& s) {
  running_->Set(s.running);
  waiting_->Set(s.waiting);
  kv_bytes_->Set(static_cast<double>(s.kv_bytes));
  kv_usage_->Set(s.kv_capacity_bytes > 0
                     ? static_cast<double>(s.kv_bytes) / static_cast<double>(s.kv_capacity_bytes)
                     : 0.0);
}

void Metrics::CountRejected(const std::string& code) { rejected_->Add({{"code", code}}).Increment(); }

void Metrics::OnRejected(const absl::Status& status) {
  CountRejected(absl::StatusCodeToString(status.code()));
}

void Metrics::OnPrefillDone(double queue_seconds, double prefill_seconds, int prompt_tokens,
                            const std::vector<WorkerPrefillTiming>& workers) {
  queue_time_->Observe(queue_seconds);
  prefill_time_[PromptBand(prompt_tokens)]->Observe(prefill_seconds);
  prompt_tokens_->Increment(prompt_tokens);
  prompt_tokens_hist_->Observe(prompt_tokens);
  for (const WorkerPrefillTiming& w : workers) {
    if (w.worker < 0 || w.worker >= static_cast<int>(worker_busy_.size())) continue;
    worker_busy_[w.worker]->Increment(w.busy_seconds);
    worker_wait_[w.worker]->Increment(w.wait_seconds);
    worker_sent_[w.worker]->Increment(static_cast<double>(w.kv_bytes_sent));
    worker_received_[w.worker]->Increment(static_cast<double>(w.kv_bytes_received));
    worker_tokens_[w.worker]->Increment(w.end - w.begin);
  }
}

void Metrics::OnFirstToken(double ttft_seconds, int prompt_tokens) {
  ttft_[PromptBand(prompt_tokens)]->Observe(ttft_seconds);
  generation_tokens_->Increment();
}

void Metrics::OnNextToken(double inter_token_seconds) {
  itl_->Observe(inter_token_seconds);
  generation_tokens_->Increment();
}

void Metrics::OnFinished(const GenerationResult& r) {
  success_->Add({{"finished_reason", FinishReasonName(r.reason)}}).Increment();
  e2e_->Observe(r.e2e_seconds);
  if (r.completion_tokens > 0) decode_time_->Observe(r.decode_seconds);
  generation_tokens_hist_->Observe(r.completion_tokens);
}

}  // namespace kvr
