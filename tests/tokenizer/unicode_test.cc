// UTF-8 validation and repair, character classes, GPT-2's byte alphabet.
#include <string>

#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/unicode.h"
#include "gtest/gtest.h"

namespace kvr {
namespace {

TEST(Utf8Test, ValidatesAndNamesTheOffset) {
  EXPECT_TRUE(ValidateUtf8("plain ascii, Größe, 日本語, 🦙").ok());
  struct Bad {
    std::string text;
    size_t offset;
  };
  const Bad bad[] = {{"ab\xFF", 2},           {"\xC0\x80", 0},          // overlong NUL
                     {"x\xED\xA0\x80", 1},    // surrogate
                     {"12345678\xE4\xB8", 8}, // truncated
                     {"\xF4\x90\x80\x80", 0}, // past U+10FFFF
                     {"\x80", 0}};
  for (const Bad& b : bad) {
    const absl::Status s = ValidateUtf8(b.text);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("offset " + std::to_string(b.offset)), std::string::npos) << s;
  }
}

TEST(Utf8Test, LossyReplacesMaximalInvalidSubsequences) {
  std::string out;
  AppendUtf8Lossy("a\xE4\xB8" "b\xFF\xF0\x9F\x98\x80", &out);
  EXPECT_EQ(out, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xF0\x9F\x98\x80");
}

TEST(UnicodeTest, Classes) {
  EXPECT_TRUE(ClassOf(U'a') & kClassLetter);
  EXPECT_TRUE(ClassOf(U'ж') & kClassLetter);
  EXPECT_TRUE(ClassOf(U'日') & kClassLetter);
  EXPECT_TRUE(ClassOf(U'٣') & kClassNumber);
  EXPECT_TRUE(ClassOf(U'½') & kClassNumber);
  EXPECT_TRUE(ClassOf(0x3000) & kClassWhitespace);
  EXPECT_TRUE(ClassOf(0x85) & kClassWhitespace);
  EXPECT_FALSE(ClassOf(0x200B) & kClassWhitespace);  // ZERO WIDTH SPACE is not White_Space
  EXPECT_TRUE(ClassOf(U'¿') & kClassPunct);
  EXPECT_FALSE(ClassOf(U'$') & kClassPunct);
  EXPECT_TRUE(ClassOf(U'$') & kClassAsciiPunct);
  EXPECT_EQ(ClassOf(0x1F600), 0);  // emoji: So
  EXPECT_EQ(CategoryOf(0x1F600), GeneralCategory::kSo);
  EXPECT_EQ(CategoryOf(0x10FFFF), GeneralCategory::kCn);
}

TEST(ByteLevelTest, AlphabetRoundTrips) {
  EXPECT_EQ(ByteToUnicode(' '), 0x120u);  // "Ġ"
  EXPECT_EQ(ByteToUnicode('\n'), 0x10Au);  // "Ċ"
  EXPECT_EQ(ByteToUnicode('A'), static_cast<char32_t>('A'));
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::string back;
  ASSERT_TRUE(ByteLevelToBytes(BytesToByteLevel(all), &back));
  EXPECT_EQ(back, all);
  EXPECT_FALSE(ByteLevelToBytes("\xE6\x97\xA5", &back));  // 日 is not in the alphabet
}

}  // namespace
}  // namespace kvr
