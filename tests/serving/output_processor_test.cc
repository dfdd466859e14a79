#include "engine/serving/output_processor.h"

#include "gtest/gtest.h"
#include "tests/serving/fakes.h"

namespace kvr {
namespace {

using testing::LetterDecoder;

OutputProcessor Make(SamplingParams p, std::vector<int32_t> eos = {25}) {
  return OutputProcessor(p, std::move(eos), std::make_unique<LetterDecoder>());
}

TEST(OutputProcessorTest, StopsAtMaxTokens) {
  SamplingParams p;
  p.max_tokens = 3;
  auto out = Make(p);
  GenerationChunk c;
  EXPECT_FALSE(out.Add(0, &c));
  EXPECT_FALSE(out.Add(1, &c));
  EXPECT_TRUE(out.Add(2, &c));
  EXPECT_EQ(out.reason(), FinishReason::kLength);
  EXPECT_EQ(c.text, "abc");
  EXPECT_EQ(c.token_ids, (std::vector<int32_t>{0, 1, 2}));
}

TEST(OutputProcessorTest, EosStopsWithoutTextUnlessIgnored) {
  SamplingParams p;
  auto out = Make(p);
  GenerationChunk c;
  EXPECT_FALSE(out.Add(0, &c));
  EXPECT_TRUE(out.Add(25, &c));
  EXPECT_EQ(out.reason(), FinishReason::kStop);
  EXPECT_EQ(out.stop_reason(), "25");
  EXPECT_EQ(c.text, "a");
  EXPECT_EQ(out.completion_tokens(), 2);

  p.ignore_eos = true;
  p.stop_token_ids = {3};
  auto out2 = Make(p);
  GenerationChunk c2;
  EXPECT_FALSE(out2.Add(25, &c2));
  EXPECT_TRUE(out2.Add(3, &c2));  // stop_token_ids apply even with ignore_eos
  EXPECT_EQ(c2.text, "z");
}

TEST(OutputProcessorTest, StopStringAcrossTokensIsHeldBackAndCut) {
  SamplingParams p;
  p.stop = {"cde"};
  auto out = Make(p);
  GenerationChunk c1, c2, c3, c4;
  EXPECT_FALSE(out.Add(0, &c1));  // "a"
  EXPECT_EQ(c1.text, "a");
  EXPECT_FALSE(out.Add(1, &c2));  // "ab"
  EXPECT_EQ(c2.text, "b");
  EXPECT_FALSE(out.Add(2, &c3));  // "abc": "c" may start "cde", held back
  EXPECT_EQ(c3.text, "");
  EXPECT_FALSE(out.Add(3, &c3));  // "abcd": "cd" held back
  EXPECT_EQ(c3.text, "");
  EXPECT_TRUE(out.Add(4, &c4));   // "abcde": stop, text ends before the match
  EXPECT_EQ(c4.text, "");
  EXPECT_EQ(out.text(), "ab");
  EXPECT_EQ(out.reason(), FinishReason::kStop);
  EXPECT_EQ(out.stop_reason(), "cde");
}

TEST(OutputProcessorTest, HeldTextIsReleasedWhenItCannotMatch) {
  SamplingParams p;
  p.stop = {"cx"};
  p.max_tokens = 4;
  auto out = Make(p);
  GenerationChunk c;
  out.Add(2, &c);  // "c" held
  EXPECT_EQ(c.text, "");
  out.Add(3, &c);  // "cd": no longer a prefix of "cx"
  EXPECT_EQ(c.text, "cd");
  GenerationChunk c2;
  out.Add(2, &c2);  // "c" held again
  EXPECT_TRUE(out.Add(4, &c2));  // the 4th token: max_tokens
  EXPECT_EQ(out.reason(), FinishReason::kLength);
  EXPECT_EQ(c2.text, "ce");  // released at the end
}

TEST(OutputProcessorTest, AbortReleasesHeldText) {
  SamplingParams p;
  p.stop = {"bz"};
  auto out = Make(p);
  GenerationChunk c;
  out.Add(0, &c);
  out.Add(1, &c);
  EXPECT_EQ(c.text, "a");
  out.Finish(FinishReason::kAbort, &c);
  EXPECT_EQ(c.text, "ab");
  EXPECT_EQ(out.reason(), FinishReason::kAbort);
}

}  // namespace
}  // namespace kvr
