// Unit tests of kvrd's pieces that need no running daemon: the config file, request
// validation, status mapping.
#include <fstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/config.h"
#include "server/generation_service.h"
#include "server/validation.h"

namespace kvr {
namespace {

TEST(ServerConfigTest, JsonKeysAreTheFlagNames) {
  ServerConfig c;
  nlohmann::json j = {{"model", "/m"}, {"max_queue", 5}, {"listen", "0.0.0.0:1"}, {"workers", 3}};
  ASSERT_TRUE(ApplyConfigJson(j, &c, nullptr).ok());
  EXPECT_EQ(c.model, "/m");
  EXPECT_EQ(c.max_queue, 5);
  EXPECT_EQ(c.listen, "0.0.0.0:1");
  EXPECT_EQ(c.workers, 3);
  // Every key ToJson prints is accepted back.
  ServerConfig d;
  nlohmann::json all = c.ToJson();
  ASSERT_TRUE(ApplyConfigJson(all, &d, nullptr).ok());
  EXPECT_EQ(d.ToJson(), all);
}

TEST(ServerConfigTest, FlagsOnTheCommandLineWin) {
  ServerConfig c;
  c.max_queue = 7;  // as if --max_queue=7 was given
  ASSERT_TRUE(ApplyConfigJson({{"max_queue", 99}, {"max_running", 3}}, &c,
                              [](const std::string& k) { return k == "max_queue"; })
                  .ok());
  EXPECT_EQ(c.max_queue, 7);
  EXPECT_EQ(c.max_running, 3);
}

TEST(ServerConfigTest, RefusesUnknownKeysAndWrongTypes) {
  ServerConfig c;
  absl::Status s = ApplyConfigJson({{"max_qeueu", 1}}, &c, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("max_queue"), std::string::npos) << s;  // lists allowed keys
  EXPECT_FALSE(ApplyConfigJson({{"max_queue", "many"}}, &c, nullptr).ok());
  EXPECT_FALSE(ApplyConfigJson({{"model", 3}}, &c, nullptr).ok());
  EXPECT_FALSE(ApplyConfigJson(nlohmann::json::array(), &c, nullptr).ok());
}

TEST(ServerConfigTest, LoadsAFileAndValidates) {
  const std::string path = ::testing::TempDir() + "/kvrd.json";
  std::ofstream(path) << R"({"model": "/models/x", "max_running": 4, "backend": "cpu"})";
  ServerConfig c;
  ASSERT_TRUE(LoadConfigFile(path, &c, nullptr).ok());
  EXPECT_EQ(c.max_running, 4);
  EXPECT_EQ(c.config, path);
  EXPECT_TRUE(c.Validate().ok());
  c.backend = "tpu";
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
  std::ofstream(path) << "{not json";
  EXPECT_EQ(LoadConfigFile(path, &c, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadConfigFile(path + ".missing", &c, nullptr).code(), absl::StatusCode::kNotFound);
  ServerConfig none;
  EXPECT_EQ(none.Validate().code(), absl::StatusCode::kInvalidArgument);  // no model
}

ModelLimits Limits() { return ModelLimits{"tiny", 256, 512}; }

TEST(ValidationTest, SamplingDefaults) {
  absl::StatusOr<SamplingParams> s = ToSamplingParams(v1::SamplingParams(), Limits());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->max_tokens, kDefaultMaxTokens);
  EXPECT_EQ(s->temperature, 1.0f);
  EXPECT_EQ(s->top_p, 1.0f);
  EXPECT_EQ(s->logprobs, -1);
  v1::SamplingParams p;
  p.set_temperature(0);  // explicit 0 is greedy, not "unset"
  p.set_logprobs(0);
  s = ToSamplingParams(p, Limits());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->temperature, 0.0f);
  EXPECT_EQ(s->logprobs, 0);
}

TEST(ValidationTest, BadSamplingNamesTheField) {
  v1::SamplingParams p;
  p.set_top_p(2);
  absl::Status s = ToSamplingParams(p, Limits()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("sampling.top_p"), std::string::npos) << s;
  v1::SamplingParams q;
  q.set_max_tokens(513);
  EXPECT_EQ(ToSamplingParams(q, Limits()).status().code(), absl::StatusCode::kInvalidArgument);
  v1::SamplingParams r;
  r.set_logprobs(-2);
  EXPECT_EQ(ToSamplingParams(r, Limits()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidationTest, Requests) {
  v1::GenerateRequest r;
  EXPECT_EQ(CheckGenerateRequest(r, Limits()).code(), absl::StatusCode::kInvalidArgument);
  r.set_text("hello");
  EXPECT_TRUE(CheckGenerateRequest(r, Limits()).ok());
  r.set_model("tiny");
  EXPECT_TRUE(CheckGenerateRequest(r, Limits()).ok());
  r.set_model("other");
  EXPECT_EQ(CheckGenerateRequest(r, Limits()).code(), absl::StatusCode::kInvalidArgument);
  r.set_model("");
  r.mutable_sampling()->GetReflection()->MutableUnknownFields(r.mutable_sampling())->AddVarint(77, 1);
  absl::Status s = CheckGenerateRequest(r, Limits());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("sampling#77"), std::string::npos) << s;
}

TEST(ValidationTest, PromptLength) {
  EXPECT_TRUE(CheckPromptLength({1, 2, 3}, 509, Limits()).ok());
  EXPECT_EQ(CheckPromptLength({1, 2, 3}, 510, Limits()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckPromptLength({}, 1, Limits()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckPromptLength(std::vector<int32_t>(512, 1), 1, Limits()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckPromptLength({256}, 1, Limits()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckPromptLength({-1}, 1, Limits()).code(), absl::StatusCode::kInvalidArgument);
}

TEST(StatusMappingTest, CodesMapOneToOne) {
  for (int c = 0; c <= 16; ++c) {
    absl::Status s(static_cast<absl::StatusCode>(c), c == 0 ? "" : "why");
    grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), c);
    if (c != 0) {
      EXPECT_EQ(g.error_message(), "why");
    }
  }
}

}  // namespace
}  // namespace kvr
