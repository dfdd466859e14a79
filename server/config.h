// ServerConfig: everything kvrd is configured with. Set from flags (server/main.cc), optionally
// from a JSON file with the same keys (--config); a flag given on the command line with a value
// other than its default wins over the file. The config in effect is logged at start.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "nlohmann/json_fwd.hpp"

namespace kvr {

struct ServerConfig {
  std::string model;                       // model folder
  std::string listen = "127.0.0.1:50051";  // gRPC address
  std::string metrics_listen = "127.0.0.1:9464";  // Prometheus /metrics address
  std::string backend = "auto";            // auto | cpu | cuda
  int workers = 0;                         // prefill workers; 0 = all GPUs, or 2 on the CPU
  std::string partition = "even";          // planner: even | cost | fixed:n1,n2,...
  std::string topology = "chain";          // chain | fan-out
  std::string transport = "auto";          // K/V between GPUs: auto | nccl | copy
  int tsp_below = 0;                       // prompts shorter than this: TSP (all-gather); 0 = never
  std::string attn_impl = "mma";           // CUDA prefill attention: mma | cudnn | auto
  int cpu_threads = 1;                     // matrix-product threads per CPU worker
  int max_queue = 64;                      // waiting requests before RESOURCE_EXHAUSTED
  int max_running = 32;                    // requests decoding at once
  int max_model_len = 0;                   // prompt + output limit; 0 = the model's
  int decode_steps_per_prefill = 1;        // starvation policy, see engine/serving/scheduler.h
  int shutdown_timeout_s = 30;             // SIGTERM: time given to running streams
  int testing_decode_delay_ms = 0;         // tests only: sleep in every decode step
  // Security (docs/api.md, "Security"): TLS for gRPC when both files are given; a bearer token
  // that every kvr.v1.Kvr call must carry when set (health and reflection stay open); limits
  // on a received message and on a text prompt, checked before tokenizing.
  std::string tls_cert;                    // PEM certificate chain file
  std::string tls_key;                     // PEM private key file
  std::string auth_token;                  // "authorization: Bearer <token>"; "" = off
  std::string auth_token_file;             // file holding the token (kept out of `ps`)
  int max_message_bytes = 8 << 20;         // largest gRPC message received
  int max_prompt_bytes = 4 << 20;          // largest text prompt (Generate, Tokenize)
  int unhealthy_after_failures = 3;        // backend failures in a row that turn health NOT_SERVING
  int prefill_timeout_s = 300;             // prefill watchdog: no progress this long fails it; 0 = off
  std::string config;                      // the JSON file these came from, if any

  // Every key of the JSON form, in order.
  nlohmann::json ToJson() const;
  // Checks ranges; InvalidArgument naming the key.
  absl::Status Validate() const;
};

// Applies the keys of a JSON object to `config`. InvalidArgument for an unknown key or a value
// of the wrong type; `keep(key)` true leaves that key as it is (a flag set on the command line).
absl::Status ApplyConfigJson(const nlohmann::json& j, ServerConfig* config,
                             const std::function<bool(const std::string&)>& keep);

// Reads a JSON config file and applies it as above.
absl::Status LoadConfigFile(const std::string& path, ServerConfig* config,
                            const std::function<bool(const std::string&)>& keep);

}  // namespace kvr
