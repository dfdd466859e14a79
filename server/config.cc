#include "server/config.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace kvr {
namespace {

// One table drives parsing, printing and the list of allowed keys.
struct Field {
  const char* key;
  std::string ServerConfig::*str = nullptr;
  int ServerConfig::*num = nullptr;
};
const Field kFields[] = {
    {"model", &ServerConfig::model},
    {"listen", &ServerConfig::listen},
    {"metrics_listen", &ServerConfig::metrics_listen},
    {"backend", &ServerConfig::backend},
    {"workers", nullptr, &ServerConfig::workers},
    {"partition", &ServerConfig::partition},
    {"topology", &ServerConfig::topology},
    {"tsp_below", nullptr, &ServerConfig::tsp_below},
    {"transport", &ServerConfig::transport},
    {"attn_impl", &ServerConfig::attn_impl},
    {"cpu_threads", nullptr, &ServerConfig::cpu_threads},
    {"max_queue", nullptr, &ServerConfig::max_queue},
    {"max_running", nullptr, &ServerConfig::max_running},
    {"max_model_len", nullptr, &ServerConfig::max_model_len},
    {"decode_steps_per_prefill", nullptr, &ServerConfig::decode_steps_per_prefill},
    {"shutdown_timeout_s", nullptr, &ServerConfig::shutdown_timeout_s},
    {"testing_decode_delay_ms", nullptr, &ServerConfig::testing_decode_delay_ms},
    {"tls_cert", &ServerConfig::tls_cert},
    {"tls_key", &ServerConfig::tls_key},
    {"auth_token", &ServerConfig::auth_token},
    {"auth_token_file", &ServerConfig::auth_token_file},
    {"max_message_bytes", nullptr, &ServerConfig::max_message_bytes},
    {"max_prompt_bytes", nullptr, &ServerConfig::max_prompt_bytes},
    {"unhealthy_after_failures", nullptr, &ServerConfig::unhealthy_after_failures},
    {"prefill_timeout_s", nullptr, &ServerConfig::prefill_timeout_s},
};

std::string AllowedKeys() {
  std::vector<std::string> keys;
  for (const Field& f : kFields) keys.push_back(f.key);
  return absl::StrJoin(keys, ", ");
}

}  // namespace

nlohmann::json ServerConfig::ToJson() const {
  nlohmann::json j = nlohmann::json::object();
  for (const Field& f : kFields) {
    if (f.str != nullptr) {
      // The token is a secret: the config in effect is logged.
      const bool secret = f.str == &ServerConfig::auth_token && !auth_token.empty();
      j[f.key] = secret ? std::string("(set)") : this->*f.str;
    } else {
      j[f.key] = this->*f.num;
    }
  }
  if (!config.empty()) j["config"] = config;
  return j;
}

absl::Status ServerConfig::Validate() const {
  auto bad = [](const std::string& key, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": ", what));
  };
  if (model.empty()) return bad("model", "a model folder is required (--model DIR)");
  if (backend != "auto" && backend != "cpu" && backend != "cuda")
    return bad("backend", absl::StrCat("\"", backend, "\" is not one of auto, cpu, cuda"));
  if (workers < 0) return bad("workers", "must be >= 0 (0 = all GPUs, or 2 on the CPU)");
  if (attn_impl != "mma" && attn_impl != "cudnn" && attn_impl != "auto")
    return bad("attn_impl", absl::StrCat("\"", attn_impl, "\" is not one of mma, cudnn, auto"));
  if (cpu_threads < 1) return bad("cpu_threads", "must be >= 1");
  if (transport != "auto" && transport != "nccl" && transport != "copy")
    return bad("transport", absl::StrCat("\"", transport, "\" is not one of auto, nccl, copy"));
  if (tsp_below < 0) return bad("tsp_below", "must be >= 0 (0 = every prompt takes the KV-Runahead plan)");
  if (max_queue < 1) return bad("max_queue", "must be >= 1");
  if (max_running < 1) return bad("max_running", "must be >= 1");
  if (max_model_len < 0) return bad("max_model_len", "must be >= 0 (0 = the model's)");
  if (decode_steps_per_prefill < 1) return bad("decode_steps_per_prefill", "must be >= 1");
  if (shutdown_timeout_s < 0) return bad("shutdown_timeout_s", "must be >= 0");
  if (testing_decode_delay_ms < 0 || testing_decode_delay_ms > 10000)
    return bad("testing_decode_delay_ms", "must be in [0, 10000]");
  if (listen.empty()) return bad("listen", "an address is required, e.g. 127.0.0.1:50051");
  if (tls_cert.empty() != tls_key.empty())
    return bad(tls_cert.empty() ? "tls_cert" : "tls_key",
               "TLS needs both a certificate (--tls_cert) and its private key (--tls_key)");
  if (!auth_token.empty() && !auth_token_file.empty())
    return bad("auth_token", "give the token once: --auth_token or --auth_token_file");
  if (max_message_bytes < 1024) return bad("max_message_bytes", "must be >= 1024");
  if (max_prompt_bytes < 1) return bad("max_prompt_bytes", "must be >= 1");
  if (unhealthy_after_failures < 0)
    return bad("unhealthy_after_failures", "must be >= 0 (0 = health ignores backend failures)");
  if (prefill_timeout_s < 0) return bad("prefill_timeout_s", "must be >= 0 (0 = no prefill watchdog)");
  return absl::OkStatus();
}

absl::Status ApplyConfigJson(const nlohmann::json& j, ServerConfig* config,
                             const std::function<bool(const std::string&)>& keep) {
  if (!j.is_object()) return absl::InvalidArgumentError("the config must be a JSON object");
  for (const auto& [key, value] : j.items()) {
    const Field* field = nullptr;
    for (const Field& f : kFields) {
      if (key == f.key) field = &f;
    }
    if (field == nullptr)
      return absl::InvalidArgumentError(
          absl::StrCat("unknown config key \"", key, "\"; allowed: ", AllowedKeys()));
    if (keep && keep(key)) continue;
    if (field->str != nullptr) {
      if (!value.is_string())
        return absl::InvalidArgumentError(absl::StrCat("config key \"", key, "\" must be a string"));
      config->*field->str = value.get<std::string>();
    } else {
      if (!value.is_number_integer())
        return absl::InvalidArgumentError(
            absl::StrCat("config key \"", key, "\" must be an integer"));
      config->*field->num = value.get<int>();
    }
  }
  return absl::OkStatus();
}

absl::Status LoadConfigFile(const std::string& path, ServerConfig* config,
                            const std::function<bool(const std::string&)>& keep) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open config file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return absl::InvalidArgumentError(absl::StrCat("config file ", path, " is not valid JSON"));
  absl::Status s = ApplyConfigJson(j, config, keep);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  config->config = path;
  return absl::OkStatus();
}

}  // namespace kvr
