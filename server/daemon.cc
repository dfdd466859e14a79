#include "server/daemon.h"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/core/engine.h"
#include "engine/serving/coordinator_executor.h"
#include "engine/serving/scheduler.h"
#include "engine/util/clock.h"
#include "engine/util/log.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "nlohmann/json.hpp"
#include "server/generation_service.h"
#include "server/metrics.h"

#ifndef KVR_VERSION
#define KVR_VERSION "dev"
#endif

namespace kvr {
namespace {

const char kServiceName[] = "kvr.v1.Kvr";

absl::StatusOr<std::string> ReadSecretFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(flag, ": cannot read ", path));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Insecure credentials, or TLS from the PEM files of --tls_cert / --tls_key.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ListenCredentials(const ServerConfig& c) {
  if (c.tls_cert.empty()) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadSecretFile("tls_cert", c.tls_cert);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadSecretFile("tls_key", c.tls_key);
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(ssl);
}

// The bearer token: --auth_token, or the first line of --auth_token_file.
absl::StatusOr<std::string> AuthToken(const ServerConfig& c) {
  if (c.auth_token_file.empty()) return c.auth_token;
  absl::StatusOr<std::string> text = ReadSecretFile("auth_token_file", c.auth_token_file);
  if (!text.ok()) return text.status();
  std::string token = text->substr(0, text->find_first_of("\r\n"));
  if (token.empty())
    return absl::InvalidArgumentError(absl::StrCat("auth_token_file: ", c.auth_token_file,
                                                   " holds no token on its first line"));
  return token;
}

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// On the CPU the runners report no free memory: the host's available memory is the KV budget.
size_t HostAvailableBytes() {
  long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

class DaemonExecutor : public CoordinatorExecutor {
 public:
  DaemonExecutor(Engine* engine, int decode_delay_ms)
      : CoordinatorExecutor(&engine->coordinator(), &engine->planner()),
        decode_delay_ms_(decode_delay_ms) {
    fallback_ = CoordinatorExecutor::kv_capacity_bytes() == 0 ? HostAvailableBytes() : 0;
  }
  size_t kv_capacity_bytes() const override {
    return fallback_ > 0 ? fallback_ : CoordinatorExecutor::kv_capacity_bytes();
  }
  void Decode(absl::Span<DecodeGroup> groups) override {
    if (decode_delay_ms_ > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(decode_delay_ms_));
    CoordinatorExecutor::Decode(groups);
  }

 private:
  size_t fallback_ = 0;
  int decode_delay_ms_ = 0;
};

}  // namespace

int RunDaemon(const ServerConfig& c, const sigset_t& signals) {
  KVR_LOG(INFO) << "kvrd " << KVR_VERSION << " starting; config in effect: " << c.ToJson().dump();
  const auto t0 = SteadyClock::now();
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = ListenCredentials(c);
  absl::StatusOr<std::string> auth_token = AuthToken(c);
  for (const absl::Status& s : {credentials.status(), auth_token.status()}) {
    if (!s.ok()) {
      KVR_LOG(ERROR) << "bad config: " << s.message();
      return 2;
    }
  }

  EngineOptions eo;
  eo.model_dir = c.model;
  eo.backend = c.backend;
  eo.workers = c.workers;
  eo.partition = c.partition;
  eo.topology = c.topology;
  eo.tsp_below = c.tsp_below;
  eo.transport = c.transport;
  eo.attn_impl = c.attn_impl;
  eo.cpu_threads = c.cpu_threads;
  absl::StatusOr<std::unique_ptr<Engine>> loaded = Engine::Load(eo);
  if (!loaded.ok()) {
    KVR_LOG(ERROR) << "cannot load the model: " << loaded.status();
    return 1;
  }
  std::unique_ptr<Engine> engine = std::move(*loaded);
  const ModelConfig& model = engine->config();
  int max_model_len = model.max_position;
  if (c.max_model_len > 0) {
    if (model.max_position > 0 && c.max_model_len > model.max_position) {
      KVR_LOG(ERROR) << "max_model_len " << c.max_model_len << " exceeds the model's context of "
                     << model.max_position << " tokens";
      return 2;
    }
    max_model_len = c.max_model_len;
  }
  if (max_model_len <= 0) {
    KVR_LOG(ERROR) << "the model declares no context length: set --max_model_len";
    return 2;
  }

  engine->coordinator().set_prefill_timeout(absl::Seconds(c.prefill_timeout_s));
  DaemonExecutor executor(engine.get(), c.testing_decode_delay_ms);
  Metrics metrics(engine->num_workers());
  absl::StatusOr<int> metrics_port = metrics.Serve(c.metrics_listen);
  if (!metrics_port.ok()) {
    KVR_LOG(ERROR) << metrics_port.status();
    return 1;
  }

  SchedulerOptions so;
  so.max_queue = c.max_queue;
  so.max_running = c.max_running;
  so.max_model_len = max_model_len;
  so.decode_steps_per_prefill = c.decode_steps_per_prefill;
  Scheduler scheduler(&executor, so, &metrics);
  scheduler.Start();
  metrics.OnStats(scheduler.stats());

  ServiceOptions svc;
  svc.scheduler = &scheduler;
  svc.tokenizer = engine->tokenizer();
  svc.model = &model;
  svc.limits.name = BaseName(c.model);
  svc.limits.vocab_size = model.vocab_size;
  svc.limits.max_model_len = max_model_len;
  svc.limits.max_prompt_bytes = static_cast<size_t>(c.max_prompt_bytes);
  svc.auth_token = *auth_token;
  svc.unhealthy_after_failures = c.unhealthy_after_failures;
  // Health follows the backend (see ServiceOptions), never back to SERVING once draining.
  std::atomic<grpc::HealthCheckServiceInterface*> health_service{nullptr};
  std::atomic<bool> draining{false};
  svc.set_serving = [&health_service, &draining](bool serving) {
    grpc::HealthCheckServiceInterface* h = health_service.load();
    if (h == nullptr || (serving && draining.load())) return;
    h->SetServingStatus(serving);
    h->SetServingStatus(kServiceName, serving);
  };
  svc.metrics = &metrics;
  v1::ServerInfo& info = svc.server_info;
  info.set_version(KVR_VERSION);
  info.set_backend(engine->backend());
  for (int w = 0; w < engine->num_workers(); ++w) info.add_devices(engine->runner(w).device_name());
  info.set_num_workers(engine->num_workers());
  info.set_partition(engine->planner().name());
  info.set_max_queue(c.max_queue);
  info.set_max_running(c.max_running);
  info.set_max_model_len(max_model_len);
  info.set_decode_steps_per_prefill(c.decode_steps_per_prefill);
  GenerationService service(std::move(svc));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(c.listen, *credentials, &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(c.max_message_bytes);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    KVR_LOG(ERROR) << "cannot listen on " << c.listen;
    scheduler.Stop();
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(true);
  health->SetServingStatus(kServiceName, true);
  health_service = health;
  KVR_LOG(INFO) << "kvrd ready in " << SecondsSince(t0) << " s: gRPC on "
                << c.listen.substr(0, c.listen.rfind(':')) << ":" << port << ", metrics on "
                << c.metrics_listen.substr(0, c.metrics_listen.rfind(':')) << ":" << *metrics_port
                << "/metrics" << (c.tls_cert.empty() ? "" : "; TLS")
                << (auth_token->empty() ? "" : "; bearer token required") << "; model " << model.Summary() << ", max_model_len " << max_model_len
                << ", " << engine->num_workers() << " " << engine->backend() << " workers";

  int sig = 0;
  while (sigwait(&signals, &sig) != 0) {
  }
  KVR_LOG(INFO) << "received " << strsignal(sig) << ": not admitting new requests, giving running "
                << "streams up to " << c.shutdown_timeout_s << " s";
  draining = true;
  health->SetServingStatus(false);
  health->SetServingStatus(kServiceName, false);
  scheduler.StopAdmitting();

  // A second signal aborts what is left at once.
  std::atomic<bool> drained{false};
  std::thread second([&] {
    const timespec tick{0, 100 * 1000 * 1000};
    while (!drained.load()) {
      if (sigtimedwait(&signals, nullptr, &tick) > 0) {
        KVR_LOG(WARNING) << "second signal: aborting every request now";
        scheduler.AbortAll();
        return;
      }
    }
  });
  if (!scheduler.WaitIdle(absl::Seconds(c.shutdown_timeout_s))) {
    SchedulerStats s = scheduler.stats();
    KVR_LOG(WARNING) << "shutdown timeout: aborting " << s.running << " running and " << s.waiting
                     << " waiting requests";
    scheduler.AbortAll();
    scheduler.WaitIdle(absl::Seconds(10));
  }
  drained = true;
  second.join();
  // Every stream has its final message queued: give slow readers up to 5 s to take it, then
  // cancel what is left (idle client connections would otherwise hold Shutdown to its deadline).
  if (!service.WaitStreamsDone(absl::Seconds(5)))
    KVR_LOG(WARNING) << service.active_streams() << " streams did not take their last message";
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  server->Wait();
  scheduler.Stop();
  KVR_LOG(INFO) << "kvrd stopped";
  return 0;
}

}  // namespace kvr
