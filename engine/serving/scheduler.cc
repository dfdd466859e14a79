#include "engine/serving/scheduler.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/serving/output_processor.h"
#include "engine/serving/sampler.h"
#include "engine/util/clock.h"
#include "engine/util/log.h"

namespace kvr {

struct Scheduler::Sequence {
  enum class State { kWaiting, kPrefilling, kRunning, kRetiring };

  Sequence(GenerationRequest& r)
      : id(std::move(r.id)),
        prompt(std::move(r.prompt)),
        params(r.sampling),
        sink(std::move(r.sink)),
        sampler(params, prompt),
        out(params, std::move(r.eos_ids), std::move(r.decoder)) {
    if (r.arrival != SteadyClock::time_point{}) arrival = r.arrival;
  }

  // lp when the request asked for log-probabilities (params.logprobs >= 0), else null: where the
  // sampler writes them and HandleToken reads them.
  TokenLogprobs* Logprobs(TokenLogprobs* lp) const { return params.logprobs >= 0 ? lp : nullptr; }

  const std::string id;
  const std::vector<int32_t> prompt;
  const SamplingParams params;
  const std::shared_ptr<RequestSink> sink;
  Sampler sampler;
  OutputProcessor out;

  State state = State::kWaiting;  // guarded by the scheduler's mu_
  bool abort = false;             // guarded by the scheduler's mu_

  // Owned by the stepping thread once the sequence left the waiting queue.
  std::unique_ptr<KvCache> cache;
  size_t cache_bytes = 0;
  int capacity = 0;   // tokens the cache holds at most
  int owner = -1;     // worker that holds the cache
  int pos = 0;        // tokens in the cache
  int32_t last_token = 0;  // sampled, not yet in the cache
  SteadyClock::time_point arrival = SteadyClock::now();
  SteadyClock::time_point prefill_start, first_token, last_token_time;
  bool prefilled = false, has_first = false;
  GenerationResult result;
};

namespace {
double Between(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
bool NonEmpty(const GenerationChunk& c) { return !c.token_ids.empty() || !c.text.empty(); }

// Helper threads for sampling: options.sampling_threads - 1, or (0) up to 7 more than the
// stepping thread on a machine with that many hardware threads.
int SamplingHelpers(int threads) {
  if (threads <= 0) threads = std::min(8, static_cast<int>(std::thread::hardware_concurrency()));
  return std::max(0, threads - 1);
}

}  // namespace

Scheduler::Scheduler(Executor* executor, SchedulerOptions options, SchedulerObserver* observer)
    : executor_(executor),
      options_(options),
      observer_(observer),
      sampling_pool_(SamplingHelpers(options.sampling_threads)) {}

Scheduler::~Scheduler() { Stop(); }

absl::Status Scheduler::Submit(GenerationRequest request) {
  auto reject = [&](absl::Status s) {
    if (observer_ != nullptr) observer_->OnRejected(s);
    return s;
  };
  if (request.sink == nullptr) return reject(absl::InvalidArgumentError("request has no sink"));
  if (request.prompt.empty())
    return reject(absl::InvalidArgumentError(
        "the prompt is empty: give a non-empty text or at least one token id"));
  const int V = executor_->vocab_size();
  for (int32_t t : request.prompt) {
    if (t < 0 || t >= V)
      return reject(absl::InvalidArgumentError(
          absl::StrCat("prompt token id ", t, " is out of range: ids must be in [0, ", V, ")")));
  }
  if (absl::Status s = ValidateSamplingParams(request.sampling, V); !s.ok()) return reject(s);
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.sampling.max_tokens;
  if (total > options_.max_model_len)
    return reject(absl::InvalidArgumentError(absl::StrCat(
        "prompt (", request.prompt.size(), " tokens) + max_tokens (", request.sampling.max_tokens,
        ") = ", total, " exceeds the maximum context length of ", options_.max_model_len,
        " tokens")));
  {
    absl::MutexLock lock(&mu_);
    if (!admitting_)
      return reject(absl::UnavailableError("the server is shutting down: not admitting requests"));
    if (live_.contains(request.id))
      return reject(absl::AlreadyExistsError(
          absl::StrCat("request id \"", request.id, "\" is already in use by a live request")));
    if (static_cast<int>(waiting_.size()) >= options_.max_queue)
      return reject(absl::ResourceExhaustedError(absl::StrCat(
          "the admission queue is full (", waiting_.size(), " requests waiting, max_queue = ",
          options_.max_queue, "); retry later")));
    if (!request.has_seed) request.sampling.seed = absl::Uniform<uint64_t>(bitgen_);
    auto seq = std::make_unique<Sequence>(request);
    seq->capacity = static_cast<int>(total);
    waiting_.push_back(seq.get());
    const std::string id = seq->id;
    live_.emplace(id, std::move(seq));
    cv_.SignalAll();
  }
  PublishStats();
  return absl::OkStatus();
}

absl::Status Scheduler::Abort(const std::string& id) {
  Sequence* waiting = nullptr;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it == live_.end())
      return absl::NotFoundError(absl::StrCat("no live request with id \"", id, "\""));
    Sequence* seq = it->second.get();
    if (seq->state == Sequence::State::kWaiting) {
      waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq));
      seq->state = Sequence::State::kRetiring;  // out of the queue; nobody else touches it
      waiting = seq;
    } else if (seq->state == Sequence::State::kRunning && !decode_in_flight_) {
      // Not part of a step being executed (the step, if any, is another request's prefill):
      // free its cache now rather than after that prefill.
      std::erase(running_, seq);
      seq->state = Sequence::State::kRetiring;
      waiting = seq;
    } else {
      seq->abort = true;
      abort_pending_ = true;
      cv_.SignalAll();
    }
  }
  if (waiting != nullptr) {
    GenerationChunk chunk;
    waiting->out.Finish(FinishReason::kAbort, &chunk);
    Retire(waiting, std::move(chunk), absl::OkStatus());
  }
  return absl::OkStatus();
}

void Scheduler::AbortAll() {
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, seq] : live_) ids.push_back(id);
  }
  for (const std::string& id : ids) Abort(id).IgnoreError();  // may have finished meanwhile
}

void Scheduler::StopAdmitting() {
  {
    absl::MutexLock lock(&mu_);
    admitting_ = false;
  }
  PublishStats();
}

bool Scheduler::WaitIdle(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  while (!live_.empty()) {
    if (cv_.WaitWithDeadline(&mu_, deadline)) break;
  }
  return live_.empty();
}

void Scheduler::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void Scheduler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    admitting_ = false;
    stopping_ = true;
  }
  AbortAll();
  if (thread_.joinable()) {
    {
      absl::MutexLock lock(&mu_);
      cv_.SignalAll();
    }
    thread_.join();
  } else {
    while (Step()) {
    }
  }
}

void Scheduler::Loop() {
  while (true) {
    if (Step()) continue;
    absl::MutexLock lock(&mu_);
    if (stopping_ && live_.empty()) break;
    while (!stopping_ && !abort_pending_ && running_.empty() &&
           (waiting_.empty() || memory_blocked_)) {
      cv_.Wait(&mu_);
    }
    if (stopping_ && live_.empty()) break;
  }
}

SchedulerStats Scheduler::StatsLocked() const {
  SchedulerStats s;
  s.waiting = static_cast<int>(waiting_.size());
  s.running = static_cast<int>(running_.size()) + (prefilling_ != nullptr ? 1 : 0);
  s.kv_bytes = kv_bytes_;
  s.kv_capacity_bytes = executor_->kv_capacity_bytes();
  s.prefills = prefills_;
  s.decode_steps = decode_steps_;
  s.admitting = admitting_;
  return s;
}

SchedulerStats Scheduler::stats() const {
  absl::MutexLock lock(&mu_);
  return StatsLocked();
}

void Scheduler::PublishStats() {
  if (observer_ == nullptr) return;
  observer_->OnStats(stats());
}

int Scheduler::PickLastWorker() const {
  // The worker with the fewest decoding requests ends the chain (and decodes); ties rotate.
  const int p = std::max(1, executor_->num_workers());
  std::vector<int> load(p, 0);
  for (const Sequence* s : running_) {
    if (s->owner >= 0 && s->owner < p) ++load[s->owner];
  }
  int best = static_cast<int>(prefills_ % p);
  for (int k = 0; k < p; ++k) {
    int w = static_cast<int>((prefills_ + k) % p);
    if (load[w] < load[best]) best = w;
  }
  return best;
}

bool Scheduler::Step() {
  ScheduledStep step = Schedule();
  if (step.kind == StepKind::kIdle) return step.retired_any;
  Execute(step);
  Update(step);
  return true;
}

Scheduler::ScheduledStep Scheduler::Schedule() {
  ScheduledStep step;
  std::vector<Sequence*> aborted;
  {
    absl::MutexLock lock(&mu_);
    if (abort_pending_) {
      abort_pending_ = false;
      for (Sequence* s : running_) {
        if (s->abort) aborted.push_back(s);
      }
      std::erase_if(running_, [](Sequence* s) { return s->abort; });
    }
    if (running_.empty()) memory_blocked_ = false;
    const bool decode_due = !running_.empty() &&
                            decode_steps_since_prefill_ < options_.decode_steps_per_prefill;
    const bool can_prefill = !waiting_.empty() &&
                             static_cast<int>(running_.size()) < options_.max_running &&
                             !memory_blocked_ && !decode_due;
    if (can_prefill) {
      Sequence* seq = waiting_.front();
      waiting_.pop_front();
      seq->state = Sequence::State::kPrefilling;
      prefilling_ = seq;
      step.kind = StepKind::kPrefill;
      step.prefill = seq;
      step.last_worker = PickLastWorker();
    } else if (!running_.empty()) {
      step.kind = StepKind::kDecode;
      decode_in_flight_ = true;
      std::vector<int> group_of(std::max(1, executor_->num_workers()), -1);
      for (Sequence* s : running_) {
        int& g = group_of[s->owner];
        if (g < 0) {
          g = static_cast<int>(step.groups.size());
          step.groups.emplace_back();
          step.groups.back().worker = s->owner;
          step.group_seqs.emplace_back();
        }
        step.groups[g].slots.push_back(DecodeSlot{s->cache.get(), s->last_token, s->pos});
        step.group_seqs[g].push_back(s);
      }
    }
  }
  for (Sequence* s : aborted) {
    GenerationChunk chunk;
    s->out.Finish(FinishReason::kAbort, &chunk);
    Retire(s, std::move(chunk), absl::OkStatus());
  }
  step.retired_any = !aborted.empty();
  return step;
}

void Scheduler::Execute(ScheduledStep& step) {
  if (step.kind == StepKind::kPrefill) {
    Sequence& seq = *step.prefill;
    seq.prefill_start = SteadyClock::now();
    step.prefill_out = executor_->Prefill(seq.prompt, seq.capacity, step.last_worker);
  } else if (step.kind == StepKind::kDecode) {
    executor_->Decode(absl::MakeSpan(step.groups));
  }
}

bool Scheduler::HandleToken(Sequence& seq, int32_t token, TokenLogprobs* lp,
                            GenerationChunk* chunk) {
  const auto now = SteadyClock::now();
  if (!seq.has_first) {
    seq.has_first = true;
    seq.first_token = now;
    if (observer_ != nullptr)
      observer_->OnFirstToken(Between(seq.arrival, now), static_cast<int>(seq.prompt.size()));
  } else if (observer_ != nullptr) {
    observer_->OnNextToken(Between(seq.last_token_time, now));
  }
  seq.last_token_time = now;
  seq.last_token = token;
  if (lp != nullptr) chunk->logprobs.push_back(std::move(*lp));
  return seq.out.Add(token, chunk);
}

void Scheduler::Update(ScheduledStep& step) {
  if (step.kind == StepKind::kPrefill) {
    Sequence* seq = step.prefill;
    bool aborted;
    {
      absl::MutexLock lock(&mu_);
      prefilling_ = nullptr;
      aborted = seq->abort;
      ++prefills_;
      decode_steps_since_prefill_ = 0;
    }
    absl::StatusOr<PrefillOutcome>& out = step.prefill_out;
    if (!out.ok()) {
      if (absl::IsResourceExhausted(out.status()) && !aborted) {
        absl::MutexLock lock(&mu_);
        if (!running_.empty()) {
          // No memory for its cache now: retry once a running request has finished.
          KVR_LOG(WARNING) << "request " << seq->id << " waits for KV-cache memory: "
                           << out.status().message();
          seq->state = Sequence::State::kWaiting;
          waiting_.push_front(seq);
          memory_blocked_ = true;
          return;
        }
      }
      Retire(seq, GenerationChunk{}, out.status());
      return;
    }
    seq->prefilled = true;
    seq->cache = std::move(out->cache);
    seq->cache_bytes = seq->cache != nullptr ? seq->cache->bytes() : 0;
    seq->owner = out->owner;
    seq->pos = static_cast<int>(seq->prompt.size());
    seq->result.plan = out->plan;
    seq->result.workers = out->workers;
    seq->result.prefill_seconds = out->seconds;
    seq->result.decode_worker = out->owner;
    {
      absl::MutexLock lock(&mu_);
      kv_bytes_ += seq->cache_bytes;
    }
    if (observer_ != nullptr)
      observer_->OnPrefillDone(Between(seq->arrival, seq->prefill_start), out->seconds,
                               static_cast<int>(seq->prompt.size()), out->workers);
    GenerationChunk chunk;
    if (aborted) {
      seq->out.Finish(FinishReason::kAbort, &chunk);
      Retire(seq, std::move(chunk), absl::OkStatus());
      return;
    }
    TokenLogprobs lp;
    int32_t token = seq->sampler.Sample(out->logits, seq->Logprobs(&lp));
    if (HandleToken(*seq, token, seq->Logprobs(&lp), &chunk)) {
      Retire(seq, std::move(chunk), absl::OkStatus());
      return;
    }
    seq->sink->OnChunk(std::move(chunk));
    {
      absl::MutexLock lock(&mu_);
      seq->state = Sequence::State::kRunning;
      running_.push_back(seq);
    }
    PublishStats();
    return;
  }

  // Decode.
  {
    absl::MutexLock lock(&mu_);
    ++decode_steps_;
    ++decode_steps_since_prefill_;
  }
  const int V = executor_->vocab_size();
  // Sample every sequence's next token first, on the sampling threads (each sequence has its own
  // sampler and reads only its own row of logits); then hand the tokens out in order, here.
  struct Draw {
    Sequence* seq;
    const float* row;
    int32_t token = 0;
    TokenLogprobs lp;
  };
  std::vector<Draw> draws;
  for (size_t g = 0; g < step.groups.size(); ++g) {
    DecodeGroup& group = step.groups[g];
    const std::vector<Sequence*>& seqs = step.group_seqs[g];
    if (group.status.ok() && group.logits.size() != seqs.size() * static_cast<size_t>(V)) {
      group.status = absl::InternalError(absl::StrCat(
          "decode on worker ", group.worker, " returned ", group.logits.size(),
          " logits for a batch of ", seqs.size(), " x ", V));
    }
    if (!group.status.ok()) continue;
    for (size_t i = 0; i < seqs.size(); ++i) draws.push_back(Draw{seqs[i], group.logits.data() + i * V, 0, {}});
  }
  sampling_pool_.Run(static_cast<int>(draws.size()), [&](int j) {
    Draw& d = draws[j];
    d.token = d.seq->sampler.Sample(absl::Span<const float>(d.row, V), d.seq->Logprobs(&d.lp));
  });
  size_t next_draw = 0;
  for (size_t g = 0; g < step.groups.size(); ++g) {
    const DecodeGroup& group = step.groups[g];
    const std::vector<Sequence*>& seqs = step.group_seqs[g];
    for (size_t i = 0; i < seqs.size(); ++i) {
      Sequence* seq = seqs[i];
      if (!group.status.ok()) {
        Retire(seq, GenerationChunk{}, group.status);
        continue;
      }
      Draw& d = draws[next_draw++];
      seq->pos += 1;
      GenerationChunk chunk;
      bool done = HandleToken(*seq, d.token, seq->Logprobs(&d.lp), &chunk);
      if (!done && seq->pos >= seq->capacity) {
        seq->out.Finish(FinishReason::kLength, &chunk);
        done = true;
      }
      if (done) {
        Retire(seq, std::move(chunk), absl::OkStatus());
      } else {
        seq->sink->OnChunk(std::move(chunk));
      }
    }
  }
  absl::MutexLock lock(&mu_);
  decode_in_flight_ = false;
}

void Scheduler::Retire(Sequence* seq, GenerationChunk chunk, absl::Status error) {
  const auto now = SteadyClock::now();
  GenerationResult r = std::move(seq->result);
  r.reason = error.ok() ? seq->out.reason() : FinishReason::kError;
  r.stop_reason = seq->out.stop_reason();
  r.prompt_tokens = static_cast<int>(seq->prompt.size());
  r.completion_tokens = seq->out.completion_tokens();
  r.queue_seconds = Between(seq->arrival, seq->prefilled ? seq->prefill_start : now);
  r.ttft_seconds = seq->has_first ? Between(seq->arrival, seq->first_token) : 0;
  r.decode_seconds = seq->has_first ? Between(seq->first_token, now) : 0;
  r.e2e_seconds = Between(seq->arrival, now);

  seq->cache.reset();  // frees the KV-cache now
  std::unique_ptr<Sequence> owned;
  {
    absl::MutexLock lock(&mu_);
    std::erase(running_, seq);
    kv_bytes_ -= seq->cache_bytes;
    if (seq->cache_bytes > 0) memory_blocked_ = false;
    auto it = live_.find(seq->id);
    owned = std::move(it->second);
    live_.erase(it);
    cv_.SignalAll();
  }
  PublishStats();
  if (NonEmpty(chunk)) owned->sink->OnChunk(std::move(chunk));
  if (observer_ != nullptr) observer_->OnFinished(r);
  if (error.ok()) {
    owned->sink->OnFinish(std::move(r));
  } else {
    KVR_LOG(WARNING) << "request " << owned->id << " failed: " << error;
    owned->sink->OnError(std::move(error));
  }
}

}  // namespace kvr
