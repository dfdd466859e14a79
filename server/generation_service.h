// GenerationService: the kvr.v1.Kvr gRPC service (callback API). Generate validates and
// tokenizes on the reaction thread, submits to the scheduler, and streams the scheduler's
// output through one ServerWriteReactor per call: one write in flight, chunks that pile up
// behind a slow client are merged into one message, nothing in a reaction blocks.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/model/model_config.h"
#include "engine/serving/scheduler.h"
#include "kvr/v1/kvr.grpc.pb.h"
#include "server/metrics.h"
#include "server/validation.h"

namespace kvr {

class Tokenizer;

struct ServiceOptions {
  Scheduler* scheduler = nullptr;
  const Tokenizer* tokenizer = nullptr;  // null: token-id prompts only
  const ModelConfig* model = nullptr;
  ModelLimits limits;
  v1::ServerInfo server_info;            // static fields; counts are filled per call
  Metrics* metrics = nullptr;            // may be null
  // When set, every call must carry the metadata "authorization: Bearer <auth_token>", else it
  // ends with UNAUTHENTICATED before anything else is looked at.
  std::string auth_token;
  // Backend health: after this many requests in a row failed in the backend (INTERNAL: a worker
  // error; DEADLINE_EXCEEDED: the prefill watchdog gave up on a stuck worker; UNAVAILABLE: a
  // prefill refused while that worker is still stuck) with none served in between, set_serving(false) turns health NOT_SERVING; the next
  // request served turns it back (set_serving(true)). 0: off. set_serving may be null.
  int unhealthy_after_failures = 3;
  std::function<void(bool)> set_serving;
};

class GenerationService final : public v1::Kvr::CallbackService {
 public:
  explicit GenerationService(ServiceOptions options);

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const v1::AbortRequest* request,
                                  v1::AbortResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;

  const ServiceOptions& options() const { return options_; }
  // OK, or UNAUTHENTICATED when a token is required and the call does not carry it.
  absl::Status Authenticate(const grpc::CallbackServerContext* context) const;
  // For unary calls: null when the call may proceed, else a reactor already finished with
  // UNAUTHENTICATED (and the refusal counted).
  grpc::ServerUnaryReactor* RejectUnauthenticated(grpc::CallbackServerContext* context);
  // Tokenize / Detokenize without a tokenizer: a reactor finished with FAILED_PRECONDITION; else null.
  grpc::ServerUnaryReactor* RejectWithoutTokenizer(grpc::CallbackServerContext* context);
  std::string NextRequestId() { return "kvr-" + std::to_string(next_id_.fetch_add(1) + 1); }
  void CountRejected(const absl::Status& status);
  // A request ended: served (ok) or failed in the backend; drives ServiceOptions::set_serving.
  void OnBackendResult(bool ok);

  // Generate calls whose reactor is still alive (final message not yet delivered).
  int active_streams() const;
  // Waits until no Generate call is active; false on timeout.
  bool WaitStreamsDone(absl::Duration timeout);
  void StreamStarted();
  void StreamDone();

 private:
  ServiceOptions options_;
  std::atomic<uint64_t> next_id_{0};
  std::atomic<int> consecutive_failures_{0};
  mutable absl::Mutex mu_;
  int active_streams_ ABSL_GUARDED_BY(mu_) = 0;
};

// absl -> gRPC status; the codes are the same numbers.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace kvr
