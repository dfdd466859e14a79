// Metrics: kvrd's Prometheus metrics (prometheus-cpp), served on their own port at /metrics.
// Names follow vLLM's with the kvr_ prefix; every metric is documented in docs/metrics.md.
// The registry here is the daemon's one piece of shared mutable state; it implements the
// scheduler's observer hooks, which it turns into observations.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/serving/scheduler.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace kvr {

// Prompt length bands of the prompt_band label: "<512", "512-2K", "2K-8K", "8K-32K", ">=32K".
int PromptBand(int prompt_tokens);
const char* PromptBandName(int band);
inline constexpr int kNumPromptBands = 5;

class Metrics : public SchedulerObserver {
 public:
  // `num_workers` per-worker series are created up front (zero until used).
  explicit Metrics(int num_workers);
  ~Metrics() override;

  // Starts serving /metrics on `address` ("host:port"; port 0 picks one). Returns the port.
  absl::StatusOr<int> Serve(const std::string& address);

  // SchedulerObserver.
  void OnStats(const SchedulerStats& stats) override;
  void OnRejected(const absl::Status& status) override;
  void OnPrefillDone(double queue_seconds, double prefill_seconds, int prompt_tokens,
                     const std::vector<WorkerPrefillTiming>& workers) override;
  void OnFirstToken(double ttft_seconds, int prompt_tokens) override;
  void OnNextToken(double inter_token_seconds) override;
  void OnFinished(const GenerationResult& result) override;

  // Requests refused by the server before reaching the scheduler (bad arguments).
  void CountRejected(const std::string& code);
  prometheus::Registry& registry() { return *registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;

  // By prompt length band (label prompt_band), see PromptBand.
  std::vector<prometheus::Histogram*> ttft_;
  std::vector<prometheus::Histogram*> prefill_time_;
  prometheus::Histogram* itl_;
  prometheus::Histogram* e2e_;
  prometheus::Histogram* queue_time_;
  prometheus::Histogram* decode_time_;
  prometheus::Histogram* prompt_tokens_hist_;
  prometheus::Histogram* generation_tokens_hist_;
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* kv_usage_;
  prometheus::Gauge* kv_bytes_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Family<prometheus::Counter>* success_;
  prometheus::Family<prometheus::Counter>* rejected_;
  std::vector<prometheus::Counter*> worker_busy_;
  std::vector<prometheus::Counter*> worker_wait_;
  std::vector<prometheus::Counter*> worker_sent_;
  std::vector<prometheus::Counter*> worker_received_;
  std::vector<prometheus::Counter*> worker_tokens_;
};

}  // namespace kvr
