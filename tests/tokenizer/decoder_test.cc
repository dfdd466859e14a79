// Streaming UTF-8 assembly and the decoders' start-of-text rules.
#include <string>

#include "engine/tokenizer/decoder.h"
#include "engine/tokenizer/tokenizer_json.h"
#include "gtest/gtest.h"

namespace kvr {
namespace {

TEST(Utf8StreamTest, NeverSplitsACharacter) {
  Utf8Stream s(0);
  std::string out;
  const std::string llama = "\xF0\x9F\xA6\x99";  // 🦙
  s.Push(llama.substr(0, 1), &out);
  EXPECT_EQ(out, "");
  s.Push(llama.substr(1, 2), &out);
  EXPECT_EQ(out, "");
  s.Push(llama.substr(3) + "x", &out);
  EXPECT_EQ(out, llama + "x");
}

TEST(Utf8StreamTest, BrokenSequencesBecomeReplacementCharacters) {
  Utf8Stream s(0);
  std::string out;
  s.Push("\xE4\xB8", &out);
  EXPECT_EQ(out, "");
  s.Push("a", &out);  // the pending character can no longer complete
  EXPECT_EQ(out, "\xEF\xBF\xBD" "a");
  s.Push("\xF0\x9F", &out);
  s.Flush(&out);
  EXPECT_EQ(out, "\xEF\xBF\xBD" "a\xEF\xBF\xBD");
}

TEST(Utf8StreamTest, StripsLeadingSpacesAcrossTokens) {
  Utf8Stream s(1);
  std::string out;
  s.Push(" ", &out);  // a lone "▁" token at the start
  s.Push(" Hello", &out);
  EXPECT_EQ(out, " Hello");
}

TEST(RenderTokenTest, Decoders) {
  DecoderConfig spm;
  spm.replace_metaspace = true;
  spm.byte_fallback = true;
  EXPECT_EQ(RenderToken(spm, "\xE2\x96\x81Hello", false), " Hello");
  EXPECT_EQ(RenderToken(spm, "<0x0A>", false), "\n");
  DecoderConfig meta = spm;
  meta.metaspace_drop_first = true;
  EXPECT_EQ(RenderToken(meta, "\xE2\x96\x81Hello", true), "Hello");
  DecoderConfig bl;
  bl.byte_level = true;
  EXPECT_EQ(RenderToken(bl, "\xC4\xA0world", false), " world");    // "Ġworld"
  EXPECT_EQ(RenderToken(bl, "<|eot_id|>", false), "<|eot_id|>");
  DecoderConfig empty = spm;  // an empty pattern matches nothing (and never loops)
  empty.metaspace.clear();
  EXPECT_EQ(RenderToken(empty, "a\xE2\x96\x81" "b", false), "a\xE2\x96\x81" "b");
}

// A Replace or Metaspace decoder with an empty pattern is refused at load with the reason (the
// fuzzer found that one hung the tokenizer's construction: the pattern matched at every position
// without advancing).
TEST(DecoderConfigTest, EmptyReplacePatternIsRefused) {
  const std::string head = R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}, "decoder": )";
  auto replace = ParseTokenizerSpec(head + R"({"type": "Replace", "pattern": {"String": ""}, "content": " "}})", "", "");
  ASSERT_FALSE(replace.ok());
  EXPECT_NE(replace.status().message().find("empty \"pattern\""), std::string::npos) << replace.status();
  auto meta = ParseTokenizerSpec(head + R"({"type": "Metaspace", "replacement": ""}})", "", "");
  ASSERT_FALSE(meta.ok());
  EXPECT_NE(meta.status().message().find("empty \"replacement\""), std::string::npos) << meta.status();
  auto ok = ParseTokenizerSpec(head + R"({"type": "Replace", "pattern": {"String": "_"}, "content": " "}})", "", "");
  EXPECT_TRUE(ok.ok()) << ok.status();
}

}  // namespace
}  // namespace kvr
