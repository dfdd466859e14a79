// Fakes for scheduler tests: an Executor whose "model" predicts token (t + 1) % V after t, a
// KV-cache that only counts bytes, a letter-per-token detokenizer and a recording sink.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/serving/executor.h"
#include "engine/serving/request.h"

namespace kvr::testing {

class FakeKvCache : public KvCache {
 public:
  FakeKvCache(int capacity, int device, size_t bytes_per_token)
      : capacity_(capacity), device_(device), bytes_(capacity * bytes_per_token) {}
  int capacity() const override { return capacity_; }
  int num_layers() const override { return 1; }
  KvLayerView layer(int) override { return {}; }
  int device() const override { return device_; }
  size_t bytes() const override { return bytes_; }

 private:
  int capacity_, device_;
  size_t bytes_;
};

class FakeExecutor : public Executor {
 public:
  static constexpr size_t kBytesPerToken = 64;

  FakeExecutor(int vocab = 32, int workers = 2, size_t capacity_bytes = 1 << 30)
      : vocab_(vocab), workers_(workers), capacity_bytes_(capacity_bytes) {}

  int num_workers() const override { return workers_; }
  int vocab_size() const override { return vocab_; }
  size_t kv_capacity_bytes() const override { return capacity_bytes_; }

  absl::StatusOr<PrefillOutcome> Prefill(absl::Span<const int32_t> prompt, int cache_capacity,
                                         int last_worker) override {
    if (prefill_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(prefill_delay_ms));
    absl::MutexLock lock(&mu_);
    events_.push_back("P");
    if (fail_prefill) return absl::InternalError("injected prefill failure");
    const size_t need = cache_capacity * kBytesPerToken;
    if (allocated_ + need > capacity_bytes_)
      return absl::ResourceExhaustedError(absl::StrCat("fake: no room for ", need, " bytes"));
    allocated_ += need;
    PrefillOutcome out;
    out.logits = OneHot(prompt.back());
    out.cache = std::make_unique<TrackedCache>(this, cache_capacity, last_worker);
    out.owner = last_worker;
    out.plan = absl::StrCat("fake C=", prompt.size());
    out.seconds = 0.001;
    for (int w = 0; w < workers_; ++w)
      out.workers.push_back({w, 0, 0, 0.001, 0.0005, 100, 100});
    return out;
  }

  void Decode(absl::Span<DecodeGroup> groups) override {
    if (decode_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(decode_delay_ms));
    absl::MutexLock lock(&mu_);
    events_.push_back(absl::StrCat("D", groups.size()));
    for (DecodeGroup& g : groups) {
      // Each worker's logits live here until its next decode, as a runner's do.
      std::vector<float>& logits = decode_logits_[g.worker];
      logits.clear();
      g.logits = {};
      for (const DecodeSlot& s : g.slots) {
        if (s.cache->device() != g.worker) {
          g.status = absl::InternalError("slot's cache is on another worker");
          return;
        }
        if (s.pos >= s.cache->capacity()) {
          g.status = absl::InternalError("decode past the cache's capacity");
          return;
        }
        std::vector<float> row = OneHot(s.token);
        logits.insert(logits.end(), row.begin(), row.end());
      }
      g.logits = logits;
      g.status = fail_decode ? absl::InternalError("injected decode failure") : absl::OkStatus();
    }
  }

  std::vector<std::string> events() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  size_t allocated() const {
    absl::MutexLock lock(&mu_);
    return allocated_;
  }

  int prefill_delay_ms = 0;
  int decode_delay_ms = 0;
  bool fail_prefill = false;
  bool fail_decode = false;

 private:
  class TrackedCache : public FakeKvCache {
   public:
    TrackedCache(FakeExecutor* e, int capacity, int device)
        : FakeKvCache(capacity, device, kBytesPerToken), e_(e) {}
    ~TrackedCache() override {
      absl::MutexLock lock(&e_->mu_);
      e_->allocated_ -= bytes();
    }

   private:
    FakeExecutor* e_;
  };

  std::vector<float> OneHot(int32_t t) const {
    std::vector<float> v(vocab_, 0.0f);
    v[(t + 1) % vocab_] = 5.0f;
    return v;
  }

  int vocab_, workers_;
  size_t capacity_bytes_;
  mutable absl::Mutex mu_;
  size_t allocated_ = 0;
  std::vector<std::string> events_;
  std::map<int, std::vector<float>> decode_logits_;  // per worker: its last decode's (slots, V)
};

// Token t -> one letter 'a' + t % 26.
class LetterDecoder : public TextDecoder {
 public:
  std::string Push(int32_t t) override { return std::string(1, static_cast<char>('a' + t % 26)); }
  std::string Flush() override { return ""; }
};

class RecordingSink : public RequestSink {
 public:
  void OnChunk(GenerationChunk c) override {
    absl::MutexLock lock(&mu_);
    ++events_;
    if (done_) ++after_done_;
    chunks_.push_back(std::move(c));
  }
  void OnFinish(GenerationResult r) override {
    absl::MutexLock lock(&mu_);
    ++events_;
    if (done_) ++after_done_;
    done_ = true;
    result_ = std::move(r);
  }
  void OnError(absl::Status s) override {
    absl::MutexLock lock(&mu_);
    ++events_;
    if (done_) ++after_done_;
    done_ = true;
    error_ = std::move(s);
  }
  bool WaitDone(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&done_), timeout);
  }
  bool done() const { absl::MutexLock l(&mu_); return done_; }
  int after_done() const { absl::MutexLock l(&mu_); return after_done_; }
  GenerationResult result() const { absl::MutexLock l(&mu_); return result_; }
  absl::Status error() const { absl::MutexLock l(&mu_); return error_; }
  std::vector<int32_t> tokens() const {
    absl::MutexLock l(&mu_);
    std::vector<int32_t> t;
    for (const auto& c : chunks_) t.insert(t.end(), c.token_ids.begin(), c.token_ids.end());
    return t;
  }
  std::string text() const {
    absl::MutexLock l(&mu_);
    std::string s;
    for (const auto& c : chunks_) s += c.text;
    return s;
  }
  std::vector<GenerationChunk> chunks() const { absl::MutexLock l(&mu_); return chunks_; }

 private:
  mutable absl::Mutex mu_;
  bool done_ = false;
  int events_ = 0, after_done_ = 0;
  std::vector<GenerationChunk> chunks_;
  GenerationResult result_;
  absl::Status error_;
};

}  // namespace kvr::testing
