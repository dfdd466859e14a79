#include "server/generation_service.h"

#include <deque>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/clock.h"
#include "engine/util/log.h"

namespace kvr {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

// A failure of the backend after admission, which health counts (ServiceOptions): a worker
// error, or the prefill watchdog (a stuck worker, or one still stuck from an earlier prefill).
bool IsBackendFailure(const absl::Status& status) {
  return status.code() == absl::StatusCode::kInternal ||
         status.code() == absl::StatusCode::kDeadlineExceeded ||
         status.code() == absl::StatusCode::kUnavailable;
}

// The tokenizer's incremental decoder behind the scheduler's TextDecoder.
class TokenizerTextDecoder : public TextDecoder {
 public:
  TokenizerTextDecoder(const Tokenizer& tok, const std::vector<int32_t>& prompt, bool skip_special)
      : decoder_(tok, prompt, skip_special) {}
  std::string Push(int32_t token) override { return decoder_.Push(token); }
  std::string Flush() override { return decoder_.Flush(); }

 private:
  IncrementalDecoder decoder_;
};

v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kAbort: return v1::FINISH_REASON_ABORT;
    case FinishReason::kError: return v1::FINISH_REASON_UNSPECIFIED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void AppendChunk(const GenerationChunk& c, v1::Chunk* out) {
  for (int32_t t : c.token_ids) out->add_token_ids(t);
  out->mutable_text()->append(c.text);
  for (const TokenLogprobs& lp : c.logprobs) {
    v1::TokenLogprob* p = out->add_logprobs();
    p->set_token_id(lp.token);
    p->set_logprob(lp.logprob);
    for (const TopLogprob& t : lp.top) {
      v1::TopLogprob* q = p->add_top();
      q->set_token_id(t.token);
      q->set_logprob(t.logprob);
    }
  }
}

// One Generate call. The scheduler's thread feeds it through a StreamSink; gRPC's threads run
// the reactions. Everything both sides touch lives in a shared StreamState (the sink may outlive
// the reactor: a cancelled call finishes at once, the scheduler learns of it a step later).
// gRPC calls (StartWrite, Finish) are made outside the state's lock; the reactor is only used
// while a write is in flight or Finish has not been decided, and both are decided under the lock.
class GenerateReactor;

struct StreamState {
  absl::Mutex mu;
  GenerateReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;  // null after OnDone
  std::string id;
  std::deque<v1::GenerateResponse> pending ABSL_GUARDED_BY(mu);
  v1::GenerateResponse current;  // the message being written
  grpc::Status final_status ABSL_GUARDED_BY(mu);
  bool submitted ABSL_GUARDED_BY(mu) = false;
  bool write_in_flight ABSL_GUARDED_BY(mu) = false;
  bool terminal_queued ABSL_GUARDED_BY(mu) = false;
  bool terminal_written ABSL_GUARDED_BY(mu) = false;
  bool finish_called ABSL_GUARDED_BY(mu) = false;
  bool cancelled ABSL_GUARDED_BY(mu) = false;

  // Takes the next message(s) into `current`: consecutive chunks are merged into one.
  bool NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (pending.empty()) return false;
    current = std::move(pending.front());
    pending.pop_front();
    if (current.has_chunk()) {
      v1::Chunk* c = current.mutable_chunk();
      while (!pending.empty() && pending.front().has_chunk()) {
        v1::Chunk* next = pending.front().mutable_chunk();
        c->mutable_token_ids()->MergeFrom(next->token_ids());
        c->mutable_text()->append(next->text());  // MergeFrom would replace a string
        c->mutable_logprobs()->MergeFrom(next->logprobs());
        pending.pop_front();
      }
    }
    terminal_written = terminal_queued && pending.empty() && !current.has_chunk();
    write_in_flight = true;
    return true;
  }

  void Enqueue(v1::GenerateResponse msg, bool terminal, grpc::Status status);
};

class GenerateReactor : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(GenerationService* service, const v1::GenerateRequest* request,
                  absl::Status auth)
      : service_(service), state_(std::make_shared<StreamState>()) {
    service_->StreamStarted();
    {
      absl::MutexLock lock(&state_->mu);
      state_->reactor = this;
    }
    if (!auth.ok()) {
      FinishNow(auth);
      return;
    }
    Begin(*request);
  }

  void OnWriteDone(bool ok) override {
    bool write = false, finish = false;
    grpc::Status status;
    {
      absl::MutexLock lock(&state_->mu);
      state_->write_in_flight = false;
      if (!ok || state_->cancelled) {
        if (!state_->finish_called) {
          state_->finish_called = finish = true;
          status = grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled");
        }
      } else if (!state_->pending.empty()) {
        write = state_->NextLocked();
      } else if (state_->terminal_written && !state_->finish_called) {
        state_->finish_called = finish = true;
        status = state_->final_status;
      }
    }
    if (write) StartWrite(&state_->current);
    if (finish) Finish(status);
  }

  void OnCancel() override {
    bool finish = false, abort = false;
    {
      absl::MutexLock lock(&state_->mu);
      state_->cancelled = true;
      abort = state_->submitted && !state_->terminal_queued;
      if (!state_->write_in_flight && !state_->finish_called) state_->finish_called = finish = true;
    }
    // Frees the request's KV-cache at the scheduler's next step (at once if still waiting).
    if (abort) service_->options().scheduler->Abort(state_->id).IgnoreError();
    if (finish) Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled"));
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&state_->mu);
      state_->reactor = nullptr;
    }
    GenerationService* service = service_;
    delete this;
    service->StreamDone();
  }

 private:
  void FinishNow(const absl::Status& status) {
    service_->CountRejected(status);
    {
      absl::MutexLock lock(&state_->mu);
      state_->finish_called = true;
    }
    Finish(ToGrpcStatus(status));
  }

  void Begin(const v1::GenerateRequest& req);

  GenerationService* service_;
  std::shared_ptr<StreamState> state_;
};

void StreamState::Enqueue(v1::GenerateResponse msg, bool terminal, grpc::Status status) {
  GenerateReactor* r = nullptr;
  {
    absl::MutexLock lock(&mu);
    if (reactor == nullptr || finish_called || cancelled || terminal_queued) return;
    msg.set_request_id(id);
    pending.push_back(std::move(msg));
    if (terminal) {
      terminal_queued = true;
      final_status = std::move(status);
    }
    if (!write_in_flight && NextLocked()) r = reactor;
  }
  if (r != nullptr) r->StartWrite(&current);
}

class StreamSink : public RequestSink {
 public:
  StreamSink(std::shared_ptr<StreamState> state, GenerationService* service)
      : state_(std::move(state)), service_(service) {}
  void OnChunk(GenerationChunk chunk) override {
    v1::GenerateResponse msg;
    AppendChunk(chunk, msg.mutable_chunk());
    state_->Enqueue(std::move(msg), false, grpc::Status::OK);
  }
  void OnFinish(GenerationResult r) override {
    v1::GenerateResponse msg;
    v1::Completion* c = msg.mutable_complete();
    c->set_finish_reason(ToProto(r.reason));
    c->set_stop_reason(r.stop_reason);
    c->set_prompt_tokens(r.prompt_tokens);
    c->set_completion_tokens(r.completion_tokens);
    v1::Timings* t = c->mutable_timings();
    t->set_queue_seconds(r.queue_seconds);
    t->set_prefill_seconds(r.prefill_seconds);
    t->set_ttft_seconds(r.ttft_seconds);
    t->set_decode_seconds(r.decode_seconds);
    t->set_e2e_seconds(r.e2e_seconds);
    c->set_plan(r.plan);
    c->set_decode_worker(r.decode_worker);
    for (const WorkerPrefillTiming& w : r.workers) {
      v1::WorkerPrefill* p = c->add_workers();
      p->set_worker(w.worker);
      p->set_begin(w.begin);
      p->set_end(w.end);
      p->set_busy_seconds(w.busy_seconds);
      p->set_wait_seconds(w.wait_seconds);
      p->set_kv_bytes_sent(w.kv_bytes_sent);
      p->set_kv_bytes_received(w.kv_bytes_received);
    }
    if (r.reason != FinishReason::kAbort) service_->OnBackendResult(true);
    state_->Enqueue(std::move(msg), true, grpc::Status::OK);
  }
  void OnError(absl::Status status) override {
    if (IsBackendFailure(status)) service_->OnBackendResult(false);
    v1::GenerateResponse msg;
    msg.mutable_error()->set_code(static_cast<int>(status.code()));
    msg.mutable_error()->set_message(std::string(status.message()));
    state_->Enqueue(std::move(msg), true, ToGrpcStatus(status));
  }

 private:
  std::shared_ptr<StreamState> state_;
  GenerationService* service_;
};

void GenerateReactor::Begin(const v1::GenerateRequest& req) {
  const auto arrival = SteadyClock::now();  // TTFT and queue time include tokenization
  const ServiceOptions& o = service_->options();
  if (absl::Status s = CheckGenerateRequest(req, o.limits); !s.ok()) return FinishNow(s);
  absl::StatusOr<SamplingParams> sampling = ToSamplingParams(req.sampling(), o.limits);
  if (!sampling.ok()) return FinishNow(sampling.status());

  std::vector<int32_t> prompt;
  if (req.has_token_ids()) {
    prompt.assign(req.token_ids().ids().begin(), req.token_ids().ids().end());
  } else {
    if (o.tokenizer == nullptr)
      return FinishNow(absl::InvalidArgumentError(
          "this model folder has no tokenizer.json: give the prompt as token_ids"));
    auto ids = o.tokenizer->Encode(
        req.text(), req.has_add_special_tokens() ? req.add_special_tokens() : true);
    if (!ids.ok()) return FinishNow(absl::InvalidArgumentError(ids.status().message()));
    prompt = std::move(*ids);
  }
  if (absl::Status s = CheckPromptLength(prompt, sampling->max_tokens, o.limits); !s.ok())
    return FinishNow(s);

  state_->id = req.request_id().empty() ? service_->NextRequestId() : req.request_id();
  GenerationRequest g;
  g.id = state_->id;
  g.sampling = *sampling;
  g.has_seed = req.sampling().has_seed();
  if (o.tokenizer != nullptr) {
    g.eos_ids = o.tokenizer->eos_ids();
    const bool skip = req.has_skip_special_tokens() ? req.skip_special_tokens() : true;
    g.decoder = std::make_unique<TokenizerTextDecoder>(*o.tokenizer, prompt, skip);
  }
  if (g.eos_ids.empty()) g.eos_ids = o.model->eos_token_ids;
  g.prompt = std::move(prompt);
  g.sink = std::make_shared<StreamSink>(state_, service_);
  g.arrival = arrival;
  {
    absl::MutexLock lock(&state_->mu);
    state_->submitted = true;  // the scheduler may stream before Submit returns
  }
  absl::Status s = o.scheduler->Submit(std::move(g));  // refusals counted by the observer
  if (!s.ok()) {
    {
      absl::MutexLock lock(&state_->mu);
      state_->submitted = false;
      state_->finish_called = true;
    }
    Finish(ToGrpcStatus(s));
  }
}

}  // namespace

GenerationService::GenerationService(ServiceOptions options) : options_(std::move(options)) {}

void GenerationService::StreamStarted() {
  absl::MutexLock lock(&mu_);
  ++active_streams_;
}

void GenerationService::StreamDone() {
  absl::MutexLock lock(&mu_);
  --active_streams_;
}

int GenerationService::active_streams() const {
  absl::MutexLock lock(&mu_);
  return active_streams_;
}

bool GenerationService::WaitStreamsDone(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return active_streams_ == 0; };
  return mu_.AwaitWithTimeout(absl::Condition(&none), timeout);
}

void GenerationService::OnBackendResult(bool ok) {
  const int limit = options_.unhealthy_after_failures;
  if (limit <= 0) return;
  if (ok) {
    if (consecutive_failures_.exchange(0) >= limit) {
      KVR_LOG(INFO) << "a request was served again: health back to SERVING";
      if (options_.set_serving) options_.set_serving(true);
    }
    return;
  }
  if (consecutive_failures_.fetch_add(1) + 1 == limit) {
    KVR_LOG(ERROR) << limit << " requests in a row failed in the backend: health NOT_SERVING until "
                   << "one is served";
    if (options_.set_serving) options_.set_serving(false);
  }
}

void GenerationService::CountRejected(const absl::Status& status) {
  if (options_.metrics != nullptr) options_.metrics->OnRejected(status);
}

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new GenerateReactor(this, request, Authenticate(context));
}

grpc::ServerUnaryReactor* GenerationService::RejectUnauthenticated(grpc::CallbackServerContext* context) {
  absl::Status auth = Authenticate(context);
  if (auth.ok()) return nullptr;
  CountRejected(auth);
  grpc::ServerUnaryReactor* denied = context->DefaultReactor();
  denied->Finish(ToGrpcStatus(auth));
  return denied;
}

grpc::ServerUnaryReactor* GenerationService::RejectWithoutTokenizer(grpc::CallbackServerContext* context) {
  if (options_.tokenizer != nullptr) return nullptr;
  grpc::ServerUnaryReactor* denied = context->DefaultReactor();
  denied->Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this model folder has no tokenizer.json"));
  return denied;
}

absl::Status GenerationService::Authenticate(const grpc::CallbackServerContext* context) const {
  if (options_.auth_token.empty()) return absl::OkStatus();
  const std::string expected = "Bearer " + options_.auth_token;
  const auto& md = context->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end())
    return absl::UnauthenticatedError(
        "this server requires a bearer token: send the metadata \"authorization: Bearer <token>\"");
  // Compare in time independent of where the first difference is.
  const grpc::string_ref got = it->second;
  unsigned diff = got.size() == expected.size() ? 0u : 1u;
  for (size_t i = 0; i < expected.size(); ++i)
    diff |= static_cast<unsigned char>(expected[i]) ^
            static_cast<unsigned char>(i < got.size() ? got.data()[i] : 0);
  if (diff != 0) return absl::UnauthenticatedError("the bearer token is not valid");
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* GenerationService::Abort(grpc::CallbackServerContext* context,
                                                   const v1::AbortRequest* request,
                                                   v1::AbortResponse* response) {
  if (grpc::ServerUnaryReactor* denied = RejectUnauthenticated(context)) return denied;
  auto* reactor = context->DefaultReactor();
  if (request->request_id().empty()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "request_id is empty: name the request to abort"));
    return reactor;
  }
  reactor->Finish(ToGrpcStatus(options_.scheduler->Abort(request->request_id())));
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                      const v1::TokenizeRequest* request,
                                                      v1::TokenizeResponse* response) {
  if (grpc::ServerUnaryReactor* denied = RejectUnauthenticated(context)) return denied;
  if (grpc::ServerUnaryReactor* denied = RejectWithoutTokenizer(context)) return denied;
  auto* reactor = context->DefaultReactor();
  if (absl::Status s = CheckPromptTextSize(request->text().size(), options_.limits); !s.ok()) {
    reactor->Finish(ToGrpcStatus(s));
    return reactor;
  }
  auto ids = options_.tokenizer->Encode(
      request->text(), request->has_add_special_tokens() ? request->add_special_tokens() : true);
  if (!ids.ok()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 std::string(ids.status().message())));
    return reactor;
  }
  for (int32_t id : *ids) {
    response->add_token_ids(id);
    response->add_tokens(options_.tokenizer->IdToPiece(id));
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Detokenize(grpc::CallbackServerContext* context,
                                                        const v1::DetokenizeRequest* request,
                                                        v1::DetokenizeResponse* response) {
  if (grpc::ServerUnaryReactor* denied = RejectUnauthenticated(context)) return denied;
  if (grpc::ServerUnaryReactor* denied = RejectWithoutTokenizer(context)) return denied;
  auto* reactor = context->DefaultReactor();
  const int V = options_.tokenizer->vocab_size();
  for (int32_t id : request->token_ids()) {
    if (id < 0 || id >= V) {
      reactor->Finish(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("token id ", id, " is out of range; allowed: [0, ", V, ")")));
      return reactor;
    }
  }
  std::vector<int32_t> ids(request->token_ids().begin(), request->token_ids().end());
  auto text = options_.tokenizer->Decode(
      ids, request->has_skip_special_tokens() ? request->skip_special_tokens() : true);
  if (!text.ok()) {
    reactor->Finish(ToGrpcStatus(text.status()));
    return reactor;
  }
  response->set_text(*text);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetModelInfoRequest* request,
                                                          v1::ModelInfo* response) {
  if (grpc::ServerUnaryReactor* denied = RejectUnauthenticated(context)) return denied;
  const ModelConfig& m = *options_.model;
  response->set_name(options_.limits.name);
  response->set_architecture(ArchitectureName(m.arch));
  response->set_model_type(m.model_type);
  response->set_context_length(options_.limits.max_model_len);
  response->set_max_position(m.max_position);
  response->set_dtype(std::string(DTypeName(m.dtype)));
  response->set_vocab_size(m.vocab_size);
  response->set_num_layers(m.num_layers);
  response->set_hidden_size(m.hidden_size);
  response->set_num_q_heads(m.num_q_heads);
  response->set_num_kv_heads(m.num_kv_heads);
  response->set_head_dim(m.head_dim);
  response->set_num_parameters(m.NumParameters());
  response->set_summary(m.Summary());
  v1::TokenizerInfo* t = response->mutable_tokenizer();
  if (options_.tokenizer != nullptr) {
    t->set_vocab_size(options_.tokenizer->vocab_size());
    t->set_bos_token_id(options_.tokenizer->bos_id());
    for (int32_t e : options_.tokenizer->eos_ids()) t->add_eos_token_ids(e);
  } else {
    t->set_vocab_size(0);
    t->set_bos_token_id(m.bos_token_id);
    for (int32_t e : m.eos_token_ids) t->add_eos_token_ids(e);
  }
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::GetServerInfo(grpc::CallbackServerContext* context,
                                                           const v1::GetServerInfoRequest* request,
                                                           v1::ServerInfo* response) {
  if (grpc::ServerUnaryReactor* denied = RejectUnauthenticated(context)) return denied;
  *response = options_.server_info;
  SchedulerStats s = options_.scheduler->stats();
  response->set_num_waiting(s.waiting);
  response->set_num_running(s.running);
  response->set_kv_cache_usage(s.kv_capacity_bytes > 0 ? static_cast<double>(s.kv_bytes) /
                                                             static_cast<double>(s.kv_capacity_bytes)
                                                       : 0.0);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace kvr
