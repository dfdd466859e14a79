// kvr-load: a load generator for kvrd. Opens --streams concurrent Generate streams, each sending
// --requests_per_stream requests one after another, and reports what every request saw: time to
// first streamed token (client clock), tokens, the server's own timings and plan, and the gRPC
// status of any failure. Prints a summary and writes every request as JSON (--out).
//
//   kvr-load --target 127.0.0.1:50051 --streams 16 --prompt_tokens 8192 --max_tokens 16
//
// Prompts are random token ids in [100, vocab) (vocab from GetModelInfo), distinct per request,
// so no two requests share a prefix; or --text FILE sends the file's text (cut to its first
// --prompt_tokens tokens by the server's Tokenize) to every request.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "kvr/v1/kvr.grpc.pb.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "kvrd's gRPC address");
ABSL_FLAG(int, streams, 16, "concurrent client streams");
ABSL_FLAG(int, requests_per_stream, 1, "requests each stream sends, one after another");
ABSL_FLAG(int, prompt_tokens, 8192, "prompt length in tokens");
ABSL_FLAG(int, max_tokens, 16, "tokens to generate per request (ignore_eos is set)");
ABSL_FLAG(std::string, text, "", "file whose text is the prompt (else random token ids)");
ABSL_FLAG(std::string, auth_token, "", "bearer token, when kvrd was started with --auth_token");
ABSL_FLAG(int, deadline_s, 600, "per-request deadline");
ABSL_FLAG(std::string, out, "", "write every request's record as JSON here");

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

struct Prompt {
  std::vector<int32_t> ids;  // used when text is empty
  std::string text;
};

// One request on its own stream: returns its record.
nlohmann::json RunOne(kvr::v1::Kvr::Stub& stub, const std::string& id, const Prompt& prompt) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_deadline_s)));
  if (!absl::GetFlag(FLAGS_auth_token).empty())
    ctx.AddMetadata("authorization", "Bearer " + absl::GetFlag(FLAGS_auth_token));
  kvr::v1::GenerateRequest req;
  req.set_request_id(id);
  if (!prompt.text.empty()) {
    req.set_text(prompt.text);
  } else {
    for (int32_t t : prompt.ids) req.mutable_token_ids()->add_ids(t);
  }
  req.mutable_sampling()->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  req.mutable_sampling()->set_temperature(0.f);
  req.mutable_sampling()->set_ignore_eos(true);
  nlohmann::json rec = {{"request_id", id}};
  const auto t0 = Clock::now();
  auto reader = stub.Generate(&ctx, req);
  kvr::v1::GenerateResponse resp;
  int tokens = 0;
  bool first = true;
  while (reader->Read(&resp)) {
    if (resp.has_chunk()) {
      if (first && resp.chunk().token_ids_size() > 0) {
        rec["client_ttft_s"] = Seconds(t0, Clock::now());
        first = false;
      }
      tokens += resp.chunk().token_ids_size();
    } else if (resp.has_complete()) {
      const auto& c = resp.complete();
      rec["prompt_tokens"] = c.prompt_tokens();
      rec["completion_tokens"] = c.completion_tokens();
      rec["server_ttft_s"] = c.timings().ttft_seconds();
      rec["queue_s"] = c.timings().queue_seconds();
      rec["prefill_s"] = c.timings().prefill_seconds();
      rec["decode_s"] = c.timings().decode_seconds();
      rec["plan"] = c.plan();
      rec["decode_worker"] = c.decode_worker();
      for (const auto& w : c.workers())
        rec["workers"].push_back({{"worker", w.worker()}, {"begin", w.begin()}, {"end", w.end()},
                                  {"busy_s", w.busy_seconds()}, {"wait_s", w.wait_seconds()}});
    } else if (resp.has_error()) {
      rec["error"] = resp.error().message();
    }
  }
  const grpc::Status st = reader->Finish();
  rec["e2e_s"] = Seconds(t0, Clock::now());
  rec["tokens"] = tokens;
  rec["status"] = static_cast<int>(st.error_code());
  if (!st.ok()) rec["error"] = st.error_message();
  return rec;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("kvr-load --target HOST:PORT --streams N --prompt_tokens T --max_tokens M");
  absl::ParseCommandLine(argc, argv);
  const int streams = absl::GetFlag(FLAGS_streams), per = absl::GetFlag(FLAGS_requests_per_stream);
  const int T = absl::GetFlag(FLAGS_prompt_tokens);
  if (streams < 1 || per < 1 || T < 1 || absl::GetFlag(FLAGS_max_tokens) < 1) {
    std::fprintf(stderr, "kvr-load: --streams, --requests_per_stream, --prompt_tokens and --max_tokens must be >= 1\n");
    return 2;
  }
  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_target), grpc::InsecureChannelCredentials());
  auto stub = kvr::v1::Kvr::NewStub(channel);
  kvr::v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (!absl::GetFlag(FLAGS_auth_token).empty())
      ctx.AddMetadata("authorization", "Bearer " + absl::GetFlag(FLAGS_auth_token));
    const grpc::Status st = stub->GetModelInfo(&ctx, kvr::v1::GetModelInfoRequest(), &info);
    if (!st.ok()) {
      std::fprintf(stderr, "kvr-load: GetModelInfo on %s failed: %s\n", absl::GetFlag(FLAGS_target).c_str(),
                   st.error_message().c_str());
      return 1;
    }
  }
  std::string text;
  if (!absl::GetFlag(FLAGS_text).empty()) {
    std::ifstream f(absl::GetFlag(FLAGS_text));
    std::stringstream ss;
    ss << f.rdbuf();
    text = ss.str();
    if (!f || text.empty()) {
      std::fprintf(stderr, "kvr-load: cannot read --text %s\n", absl::GetFlag(FLAGS_text).c_str());
      return 2;
    }
  }
  const int vocab = static_cast<int>(info.vocab_size());
  std::printf("kvr-load: %s serves %s (vocab %d); %d streams x %d requests, %d-token prompts, %d new tokens\n",
              absl::GetFlag(FLAGS_target).c_str(), info.name().c_str(), vocab, streams, per, T,
              absl::GetFlag(FLAGS_max_tokens));
  if (text.empty() && vocab <= 100) {
    std::fprintf(stderr, "kvr-load: vocabulary of %d is too small for random prompts\n", vocab);
    return 1;
  }
  std::mutex mu;
  std::vector<nlohmann::json> records;
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int s = 0; s < streams; ++s) {
    threads.emplace_back([&, s] {
      std::mt19937 rng(1000 + s);
      for (int r = 0; r < per; ++r) {
        Prompt p;
        if (!text.empty()) {
          p.text = text;
        } else {
          p.ids.resize(T);
          for (auto& t : p.ids) t = std::uniform_int_distribution<int>(100, vocab - 1)(rng);
        }
        nlohmann::json rec = RunOne(*stub, "load-" + std::to_string(s) + "-" + std::to_string(r), p);
        rec["stream"] = s;
        std::lock_guard<std::mutex> lock(mu);
        const bool ok = rec["status"] == 0;
        std::printf("  %-14s %s  client TTFT %7.3f s  prefill %7.3f s  tokens %3d  %s\n",
                    rec["request_id"].get<std::string>().c_str(), ok ? "ok " : "ERR",
                    rec.value("client_ttft_s", 0.0), rec.value("prefill_s", 0.0), rec["tokens"].get<int>(),
                    ok ? rec.value("plan", std::string()).c_str() : rec.value("error", std::string()).c_str());
        std::fflush(stdout);
        records.push_back(std::move(rec));
      }
    });
  }
  for (auto& t : threads) t.join();
  const double wall = Seconds(t0, Clock::now());
  std::vector<double> ttft, prefill;
  int ok = 0, failed = 0, tokens = 0;
  for (const auto& r : records) {
    if (r["status"] == 0 && r.contains("client_ttft_s")) {
      ++ok;
      ttft.push_back(r["client_ttft_s"]);
      prefill.push_back(r.value("prefill_s", 0.0));
      tokens += r["tokens"].get<int>();
    } else {
      ++failed;
    }
  }
  nlohmann::json summary = {{"streams", streams}, {"requests", records.size()}, {"ok", ok}, {"failed", failed},
                            {"prompt_tokens", T}, {"wall_s", wall}, {"generated_tokens", tokens},
                            {"ttft_p50_s", Percentile(ttft, 0.5)}, {"ttft_p90_s", Percentile(ttft, 0.9)},
                            {"ttft_max_s", Percentile(ttft, 1.0)}, {"prefill_p50_s", Percentile(prefill, 0.5)}};
  std::printf("kvr-load: %d ok, %d failed in %.2f s; client TTFT p50 %.3f s, p90 %.3f s, max %.3f s; "
              "prefill p50 %.3f s\n", ok, failed, wall, Percentile(ttft, 0.5), Percentile(ttft, 0.9),
              Percentile(ttft, 1.0), Percentile(prefill, 0.5));
  if (!absl::GetFlag(FLAGS_out).empty()) {
    std::ofstream f(absl::GetFlag(FLAGS_out));
    f << nlohmann::json({{"summary", summary}, {"requests", records}}).dump(1) << "\n";
  }
  return failed == 0 ? 0 : 1;
}
