// kvrd: the kvr serving daemon. Flags live here (the same keys work in a --config JSON file);
// everything else is in server/daemon.cc.
//
//   kvrd --model /models/llama3-8b --listen 0.0.0.0:50051 --metrics_listen 0.0.0.0:9464
#include <csignal>
#include <cstdio>
#include <functional>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "engine/util/log.h"
#include "server/config.h"
#include "server/daemon.h"

ABSL_FLAG(std::string, model, "", "model folder (config.json, *.safetensors, tokenizer.json)");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC address host:port");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464", "Prometheus /metrics address host:port");
ABSL_FLAG(std::string, backend, "auto", "auto (cuda when a GPU is present), cpu or cuda");
ABSL_FLAG(int, workers, 0, "prefill workers = devices; 0: every GPU, or 2 on the CPU");
ABSL_FLAG(std::string, partition, "even",
          "prefill split planner: even, cost (cost model), table:PATH (KVR-P split table, e.g. "
          "config/splits/h200.json; the cost model where it has no entry), fixed:n1,n2,...");
ABSL_FLAG(std::string, topology, "chain", "KV-Runahead transfer topology: chain or fan-out");
ABSL_FLAG(std::string, transport, "auto",
          "K/V between GPUs: copy (the GPUs' copy engines, peer access needed between every pair; "
          "no SM is taken from compute), nccl (NCCL point-to-point kernels), or auto (copy where "
          "every pair has peer access and NCCL_P2P_DISABLE is not 1, else nccl)");
ABSL_FLAG(int, tsp_below, 0,
          "prompts shorter than this many tokens are prefilled with TSP (even split, every GPU "
          "all-gathers each layer's K/V) instead of the KV-Runahead plan; 0 = never. On 4x H200 "
          "TSP won up to 4k tokens (Llama-2-7B) and 8k (GQA/MQA) with --transport nccl, and "
          "never with copy (docs/benchmarks.md)");
ABSL_FLAG(std::string, attn_impl, "mma",
          "CUDA prefill attention: mma (kvr's kernel), cudnn (cuDNN fused attention; our kernel where "
          "cuDNN cannot), auto");
ABSL_FLAG(int, cpu_threads, 1, "matrix-product threads per CPU worker");
ABSL_FLAG(int, max_queue, 64, "requests waiting for prefill; beyond it RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_running, 32, "requests decoding at once (continuous batching)");
ABSL_FLAG(int, max_model_len, 0, "longest prompt + max_tokens served; 0 = the model's context");
ABSL_FLAG(int, decode_steps_per_prefill, 1,
          "decode steps of the running requests between two prefills (starvation guard)");
ABSL_FLAG(int, shutdown_timeout_s, 30, "on SIGTERM, seconds given to running streams");
ABSL_FLAG(int, testing_decode_delay_ms, 0,
          "for tests only: sleep this long in every decode step (slows streams down)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, auth_token, "",
          "require \"authorization: Bearer <token>\" on every kvr.v1.Kvr call ('' = off)");
ABSL_FLAG(std::string, auth_token_file, "", "file whose first line is the bearer token");
ABSL_FLAG(int, max_message_bytes, 8 << 20, "largest gRPC message received");
ABSL_FLAG(int, max_prompt_bytes, 4 << 20,
          "largest text prompt in bytes, refused with INVALID_ARGUMENT before tokenizing");
ABSL_FLAG(int, unhealthy_after_failures, 3,
          "requests failing in the backend in a row that turn health NOT_SERVING (0 = off)");
ABSL_FLAG(int, prefill_timeout_s, 300,
          "a prefill whose worker makes no progress this long fails with DEADLINE_EXCEEDED naming "
          "the worker and layer (the transport is aborted); 0 = off");
ABSL_FLAG(std::string, config, "", "JSON file with any of these flags' keys");

namespace {

// A flag given on the command line with a non-default value wins over the config file.
bool FlagChanged(const std::string& name) {
  const absl::CommandLineFlag* f = absl::FindCommandLineFlag(name);
  return f != nullptr && f->CurrentValue() != f->DefaultValue();
}

kvr::ServerConfig FromFlags() {
  kvr::ServerConfig c;
  c.model = absl::GetFlag(FLAGS_model);
  c.listen = absl::GetFlag(FLAGS_listen);
  c.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  c.backend = absl::GetFlag(FLAGS_backend);
  c.workers = absl::GetFlag(FLAGS_workers);
  c.partition = absl::GetFlag(FLAGS_partition);
  c.topology = absl::GetFlag(FLAGS_topology);
  c.tsp_below = absl::GetFlag(FLAGS_tsp_below);
  c.transport = absl::GetFlag(FLAGS_transport);
  c.attn_impl = absl::GetFlag(FLAGS_attn_impl);
  c.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  c.max_queue = absl::GetFlag(FLAGS_max_queue);
  c.max_running = absl::GetFlag(FLAGS_max_running);
  c.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  c.decode_steps_per_prefill = absl::GetFlag(FLAGS_decode_steps_per_prefill);
  c.shutdown_timeout_s = absl::GetFlag(FLAGS_shutdown_timeout_s);
  c.testing_decode_delay_ms = absl::GetFlag(FLAGS_testing_decode_delay_ms);
  c.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  c.tls_key = absl::GetFlag(FLAGS_tls_key);
  c.auth_token = absl::GetFlag(FLAGS_auth_token);
  c.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  c.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  c.max_prompt_bytes = absl::GetFlag(FLAGS_max_prompt_bytes);
  c.unhealthy_after_failures = absl::GetFlag(FLAGS_unhealthy_after_failures);
  c.prefill_timeout_s = absl::GetFlag(FLAGS_prefill_timeout_s);
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kvrd: LLM serving daemon with KV-Runahead prefill.\n"
      "  kvrd --model DIR [--listen 127.0.0.1:50051] [--metrics_listen 127.0.0.1:9464]\n"
      "API: proto/kvr/v1/kvr.proto, docs/api.md. Metrics: docs/metrics.md.");
  absl::ParseCommandLine(argc, argv);

  // Termination signals are taken by sigwait in the main thread: block them before any thread
  // starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  kvr::ServerConfig config = FromFlags();
  const std::string config_file = absl::GetFlag(FLAGS_config);
  if (!config_file.empty()) {
    absl::Status s = kvr::LoadConfigFile(config_file, &config, FlagChanged);
    if (!s.ok()) {
      KVR_LOG(ERROR) << "bad config: " << s.message();
      return 2;
    }
  }
  if (absl::Status s = config.Validate(); !s.ok()) {
    KVR_LOG(ERROR) << "bad config: " << s.message();
    return 2;
  }
  return kvr::RunDaemon(config, signals);
}
