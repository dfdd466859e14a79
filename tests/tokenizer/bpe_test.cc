// The BPE engine on small hand-made vocabularies: merge order, ties, the heap path for long
// pieces, byte fallback, and invalid input.
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace kvr {
namespace {

// Byte-level model over the alphabet {a, b, c} plus merges.
std::unique_ptr<Tokenizer> SmallByteLevel() {
  TokenizerSpec spec;
  spec.vocab = {"a", "b", "c", "ab", "abab", "bc", "Ġ", "Ġa"};
  spec.merges = {{"a", "b"}, {"ab", "ab"}, {"b", "c"}, {"Ġ", "a"}};
  spec.bpe.byte_level = true;
  PreTokenizerStep step;
  step.kind = PreTokenizerStep::Kind::kByteLevel;
  step.add_prefix_space = false;
  spec.pre_tokenizer = {step};
  spec.decoder.byte_level = true;
  auto tok = Tokenizer::FromSpec(std::move(spec));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return *std::move(tok);
}

std::vector<int32_t> Enc(const Tokenizer& t, const std::string& s) {
  auto ids = t.Encode(s, false);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

TEST(BpeTest, MergesByRankThenLeftmost) {
  auto t = SmallByteLevel();
  EXPECT_EQ(Enc(*t, "abc"), (std::vector<int32_t>{3, 2}));  // a+b (rank 0) before b+c
  EXPECT_EQ(Enc(*t, "abab"), (std::vector<int32_t>{4}));
  EXPECT_EQ(Enc(*t, "ababab"), (std::vector<int32_t>{4, 3}));  // leftmost pair merges first
  EXPECT_EQ(Enc(*t, "bc a"), (std::vector<int32_t>{5, 7}));
}

TEST(BpeTest, LongPiecesTakeTheHeapPathWithTheSameResult) {
  auto t = SmallByteLevel();
  std::string s;
  std::vector<int32_t> want;
  for (int i = 0; i < 501; ++i) s += "ab";  // 1002 bytes: heap path
  for (int i = 0; i < 250; ++i) want.push_back(4);
  want.push_back(3);
  EXPECT_EQ(Enc(*t, s), want);
}

TEST(BpeTest, ByteFallbackForUnknownCharacters) {
  TokenizerSpec spec;
  spec.vocab = {"<unk>", "h", "i", "hi"};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    spec.vocab.push_back(buf);
  }
  spec.merges = {{"h", "i"}};
  spec.bpe.byte_fallback = true;
  spec.bpe.unk_id = 0;
  spec.decoder.byte_fallback = true;
  auto tok = Tokenizer::FromSpec(std::move(spec));
  ASSERT_TRUE(tok.ok());
  // "é" = C3 A9 -> <0xC3> <0xA9> (ids 4 + byte).
  EXPECT_EQ(Enc(**tok, "hié"), (std::vector<int32_t>{3, 4 + 0xC3, 4 + 0xA9}));
  auto text = (*tok)->Decode(Enc(**tok, "hié"), false);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "hié");
}

TEST(BpeTest, InvalidUtf8IsAnError) {
  auto t = SmallByteLevel();
  auto ids = t->Encode("ab\xC3(", false);
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  auto bad = t->Decode(std::vector<int32_t>{999}, false);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BpeTest, AddedTokensSplitTheText) {
  TokenizerSpec spec;
  spec.vocab = {"a", "b", "ab"};
  spec.merges = {{"a", "b"}};
  spec.added_tokens = {{3, "<s>", true, false, false, false}, {4, "<sep>", false, false, true, false}};
  auto tok = Tokenizer::FromSpec(std::move(spec));
  ASSERT_TRUE(tok.ok());
  // Longest match wins ("<sep>" over "<s>"? they differ at byte 2); rstrip eats the space.
  EXPECT_EQ(Enc(**tok, "ab<s>ab<sep>  ab"), (std::vector<int32_t>{2, 3, 2, 4, 2}));
  auto text = (*tok)->Decode(std::vector<int32_t>{2, 3, 2}, /*skip_special_tokens=*/true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "abab");
}

}  // namespace
}  // namespace kvr
