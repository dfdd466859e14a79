// kvr-generate: offline generation from a model folder, without the daemon.
//
//   kvr-generate --model tests/fixtures/llama3 --prompt_ids 1,5,9 --max_tokens 8 --workers 3
//   kvr-generate --model DIR --prompt "Once upon a time" --workers 2 --split 40,20 --temperature 0
//
// Loads the folder, runs the prompt's prefill with KV-Runahead over --workers workers and the
// planned or given split, then decodes on the worker that ends the chain, sampling with the same
// sampler as kvrd. Prints the token ids, the text (when the folder has a tokenizer) and timings;
// --json prints one JSON object instead.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/core/engine.h"
#include "engine/serving/sampler.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/clock.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, model, "", "Hugging Face model folder (config.json + *.safetensors)");
ABSL_FLAG(std::string, prompt, "", "prompt text (needs tokenizer.json in the folder)");
ABSL_FLAG(std::string, prompt_ids, "", "prompt as comma-separated token ids");
ABSL_FLAG(int, max_tokens, 16, "tokens to generate");
ABSL_FLAG(int, workers, 0, "prefill workers (0: every GPU, or 2 on the CPU)");
ABSL_FLAG(std::string, backend, "auto", "auto, cpu or cuda");
ABSL_FLAG(std::string, partition, "even", "even, cost, cost-cpu, table:PATH (KVR-P split table) or fixed:n1,n2,...");
ABSL_FLAG(std::string, attn_impl, "mma", "CUDA prefill attention: mma, cudnn or auto");
ABSL_FLAG(std::string, split, "", "chunk sizes n1,n2,... (same as --partition=fixed:n1,n2,...)");
ABSL_FLAG(std::string, topology, "chain", "chain or fan-out");
ABSL_FLAG(int, threads, 1, "matrix-product threads per CPU worker");
ABSL_FLAG(float, temperature, 0.0f, "sampling temperature; 0 = greedy");
ABSL_FLAG(int, top_k, 0, "top-k (0 = off)");
ABSL_FLAG(float, top_p, 1.0f, "top-p");
ABSL_FLAG(float, min_p, 0.0f, "min-p");
ABSL_FLAG(float, repetition_penalty, 1.0f, "repetition penalty (1 = off)");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past end-of-sequence tokens");
ABSL_FLAG(bool, json, false, "print one JSON object");

namespace kvr {
namespace {

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& s) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) return absl::InvalidArgumentError(absl::StrCat("bad token id \"", part, "\""));
    ids.push_back(id);
  }
  return ids;
}

absl::Status Run() {
  EngineOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  if (options.model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  options.backend = absl::GetFlag(FLAGS_backend);
  options.workers = absl::GetFlag(FLAGS_workers);
  options.partition = absl::GetFlag(FLAGS_split).empty() ? absl::GetFlag(FLAGS_partition)
                                                         : "fixed:" + absl::GetFlag(FLAGS_split);
  options.topology = absl::GetFlag(FLAGS_topology);
  options.attn_impl = absl::GetFlag(FLAGS_attn_impl);
  options.cpu_threads = absl::GetFlag(FLAGS_threads);
  KVR_ASSIGN_OR_RETURN(auto engine, Engine::Load(options));
  const ModelConfig& config = engine->config();
  const Tokenizer* tokenizer = engine->tokenizer();

  std::vector<int32_t> prompt;
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    KVR_ASSIGN_OR_RETURN(prompt, ParseIds(absl::GetFlag(FLAGS_prompt_ids)));
  } else {
    if (!tokenizer) return absl::FailedPreconditionError("--prompt needs tokenizer.json in the model folder; use --prompt_ids");
    KVR_ASSIGN_OR_RETURN(prompt, tokenizer->Encode(absl::GetFlag(FLAGS_prompt), true));
  }
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");

  SamplingParams params;
  params.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  params.temperature = absl::GetFlag(FLAGS_temperature);
  params.top_k = absl::GetFlag(FLAGS_top_k);
  params.top_p = absl::GetFlag(FLAGS_top_p);
  params.min_p = absl::GetFlag(FLAGS_min_p);
  params.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  params.seed = absl::GetFlag(FLAGS_seed);
  params.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  KVR_RETURN_IF_ERROR(ValidateSamplingParams(params, config.vocab_size));
  const int C = static_cast<int>(prompt.size());
  const int capacity = C + params.max_tokens;
  if (config.max_position > 0 && capacity > config.max_position) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", C, ") + max_tokens (", params.max_tokens,
                                                   ") exceeds the model's context of ", config.max_position));
  }

  std::vector<int32_t> eos = tokenizer ? tokenizer->eos_ids() : std::vector<int32_t>{};
  if (eos.empty()) eos = config.eos_token_ids;
  const auto t0 = SteadyClock::now();
  KVR_ASSIGN_OR_RETURN(PrefillResult prefill, engine->Prefill(prompt, capacity));
  const double ttft = SecondsSince(t0);

  Sampler sampler(params, prompt);
  std::vector<int32_t> out;
  std::string text;
  std::unique_ptr<IncrementalDecoder> detok;
  if (tokenizer) detok = std::make_unique<IncrementalDecoder>(*tokenizer, prompt);
  std::vector<float> logits = prefill.logits;
  std::string finish = "length";
  const auto t1 = SteadyClock::now();
  while (static_cast<int>(out.size()) < params.max_tokens) {
    const int32_t token = sampler.Sample(logits);
    out.push_back(token);
    if (detok) text += detok->Push(token);
    const bool is_eos = std::find(eos.begin(), eos.end(), token) != eos.end();
    if (is_eos && !params.ignore_eos) { finish = "stop"; break; }
    if (static_cast<int>(out.size()) == params.max_tokens) break;
    DecodeSlot slot{prefill.cache.get(), token, C + static_cast<int>(out.size()) - 1};
    absl::Span<const float> step_logits;
    KVR_RETURN_IF_ERROR(engine->Decode(prefill.owner, absl::MakeConstSpan(&slot, 1), &step_logits));
    logits.assign(step_logits.begin(), step_logits.end());
  }
  if (detok) text += detok->Flush();
  const double decode_s = SecondsSince(t1);

  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json j;
    j["prompt_ids"] = prompt;
    j["output_ids"] = out;
    j["text"] = text;
    j["finish_reason"] = finish;
    j["ttft_s"] = ttft;
    j["decode_s"] = decode_s;
    j["plan"] = prefill.plan.ToString();
    j["owner"] = prefill.owner;
    for (const WorkerTiming& w : prefill.workers) {
      j["workers"].push_back({{"worker", w.worker}, {"begin", w.begin}, {"end", w.end},
                              {"busy_s", w.busy_seconds}, {"wait_s", w.wait_seconds},
                              {"kv_bytes_sent", w.kv_bytes_sent}});
    }
    std::cout << j.dump() << std::endl;
    return absl::OkStatus();
  }
  std::cout << "prompt ids (" << C << "): " << absl::StrJoin(prompt, ",") << "\n";
  std::cout << "output ids (" << out.size() << "): " << absl::StrJoin(out, ",") << "\n";
  if (tokenizer) std::cout << "text: " << text << "\n";
  std::printf("finish: %s\nTTFT: %.2f ms, split: %s\n", finish.c_str(), ttft * 1e3, prefill.plan.ToString().c_str());
  for (const WorkerTiming& w : prefill.workers) {
    std::printf("  worker %d [%d,%d): busy %.2f ms, waiting %.2f ms, sent %zu K/V bytes\n", w.worker, w.begin,
                w.end, w.busy_seconds * 1e3, w.wait_seconds * 1e3, w.kv_bytes_sent);
  }
  if (out.size() > 1) {
    std::printf("decode: %.2f ms/token on worker %d\n", decode_s * 1e3 / (out.size() - 1), prefill.owner);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvr

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Offline generation with KV-Runahead prefill. See the header of tools/kvr_generate.cc.");
  absl::ParseCommandLine(argc, argv);
  absl::Status s = kvr::Run();
  if (!s.ok()) {
    std::cerr << "kvr-generate: " << s << std::endl;
    return 1;
  }
  return 0;
}
