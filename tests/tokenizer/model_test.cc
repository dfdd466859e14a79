// Real tokenizers (fetched test data): BOS/EOS rules, special tokens in text, streaming
// decode, pathological inputs in bounded time, invalid UTF-8.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_json.h"
#include "engine/tokenizer/unicode.h"
#include "gtest/gtest.h"
#include "tests/tokenizer/test_data.h"

namespace kvr {
namespace {

using Ids = std::vector<int32_t>;

std::unique_ptr<Tokenizer> Load(const std::string& name) {
  const std::string path = testing::TokenizerDataDir() + "/" + name;
  auto tok = name.ends_with(".gguf") ? Tokenizer::FromGguf(path) : Tokenizer::FromModelFolder(path);
  EXPECT_TRUE(tok.ok()) << tok.status() << " (run tests/tokenizer/fetch_test_data.sh)";
  return tok.ok() ? *std::move(tok) : nullptr;
}

Ids Enc(const Tokenizer& t, std::string_view s, bool special) {
  auto ids = t.Encode(s, special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : Ids{};
}

// Streams ids one at a time; checks every delta is valid UTF-8; returns the whole text.
std::string Stream(const Tokenizer& t, const Ids& prompt, const Ids& ids) {
  IncrementalDecoder d(t, prompt);
  std::string all;
  for (int32_t id : ids) {
    const std::string delta = d.Push(id);
    EXPECT_TRUE(ValidateUtf8(delta).ok()) << "delta splits a character";
    all += delta;
  }
  all += d.Flush();
  return all;
}

const char* kMixed[] = {
    "Hello world",
    "  leading spaces and trailing  ",
    "Größe, naïve café — “quotes” and ‘apostrophes’",
    "日本語のテキストと中文混合。한국어도 있습니다.",
    "Здравствуйте, мир! Ελληνικά κείμενα. עברית וערבית: مرحبا بالعالم",
    "emoji 🦙🔥 👩‍💻 🇫🇷 family 👨‍👩‍👧‍👦 and ✅",
    "code:\n\tfor (int i = 0; i < 10; ++i) { x += i * 3.14; }\n\n",
    "numbers 1234567 3.14159 ١٢٣ ½ ⅷ",
    "हिन्दी और தமிழ் ภาษาไทย ქართული",
};

TEST(Llama3Test, SpecialTokensAndRules) {
  auto t = Load("llama3");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), 128000);
  EXPECT_EQ(t->eos_id(), 128001);
  EXPECT_EQ(t->vocab_size(), 128256);
  EXPECT_EQ(t->IdToPiece(9906), "Hello");
  EXPECT_EQ(Enc(*t, "<|begin_of_text|>Hello<|eot_id|>", false), (Ids{128000, 9906, 128009}));
  // This tokenizer.json's post-processor is ByteLevel only, so HF adds no BOS either.
  EXPECT_EQ(Enc(*t, "Hello", true), (Ids{9906}));
  auto text = t->Decode(Ids{128000, 9906, 1917, 128009}, /*skip_special_tokens=*/true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "Hello world");
  text = t->Decode(Ids{128000, 9906}, /*skip_special_tokens=*/false);
  EXPECT_EQ(*text, "<|begin_of_text|>Hello");
}

TEST(Llama2Test, BosAndSpacing) {
  auto t = Load("llama2");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), 1);
  EXPECT_EQ(t->eos_id(), 2);
  EXPECT_EQ(Enc(*t, "Hello world", true), (Ids{1, 15043, 3186}));
  EXPECT_EQ(Enc(*t, "Hello world", false), (Ids{15043, 3186}));
  EXPECT_EQ(Enc(*t, "<s>Hello", false), (Ids{1, 15043}));
  EXPECT_EQ(Enc(*t, "", true), (Ids{1}));
  // Streaming: the first token's space is stripped only at the start of the text.
  EXPECT_EQ(Stream(*t, {}, Ids{3186}), "world");
  EXPECT_EQ(Stream(*t, Ids{1, 15043}, Ids{3186}), " world");
  EXPECT_EQ(Stream(*t, Ids{1}, Ids{15043, 3186}), "Hello world");
}

// Mistral-style files: no normalizer, a Metaspace pre-tokenizer (prepend_scheme "first") and a
// Metaspace + ByteFallback decoder. On the Llama 2 vocabulary this must agree with the Llama 2 vectors for
// texts that do not start with a space (Metaspace adds no second "▁" before one).
TEST(MetaspaceTest, AgreesWithSentencepieceStyle) {
  std::string json;
  ASSERT_TRUE(testing::ReadWholeFile(testing::TokenizerDataDir() + "/llama2/tokenizer.json", &json));
  const std::string norm = json.substr(json.find("\"normalizer\""));
  const size_t norm_end = norm.find("\"pre_tokenizer\":null");
  ASSERT_NE(norm_end, std::string::npos);
  const std::string dec_key = "\"decoder\":";
  const size_t dec = json.find(dec_key);
  const size_t dec_end = json.find(",\"model\":", dec);
  std::string mistral = json.substr(0, json.find("\"normalizer\"")) +
                        "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":"
                        "\"\u2581\",\"prepend_scheme\":\"first\",\"split\":false}" +
                        json.substr(json.find("\"normalizer\"") + norm_end + 20, dec - (json.find("\"normalizer\"") + norm_end + 20)) +
                        dec_key + "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Metaspace\",\"replacement\":"
                        "\"\u2581\",\"prepend_scheme\":\"first\",\"split\":false},{\"type\":\"ByteFallback\"},"
                        "{\"type\":\"Fuse\"}]}" +
                        json.substr(dec_end);
  auto spec = ParseTokenizerSpec(mistral, "", "");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto t = Tokenizer::FromSpec(*std::move(spec));
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<testing::Vector> vectors;
  ASSERT_TRUE(testing::ReadVectors(testing::TokenizerDataDir() + "/gguf/ggml-vocab-llama-spm.gguf", &vectors));
  int checked = 0;
  for (const testing::Vector& v : vectors) {
    if (v.text.empty() || v.text[0] == ' ') continue;
    EXPECT_EQ(Enc(**t, v.text, false), v.ids) << v.text;
    auto back = (*t)->Decode(v.ids, false);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, v.text);
    ++checked;
  }
  EXPECT_GE(checked, 30);
  EXPECT_EQ(Enc(**t, " Hello", false), (Ids{15043}));
}

TEST(StreamingTest, DeltasMatchFullDecode) {
  for (const char* name : {"llama2", "llama3", "gguf/ggml-vocab-falcon.gguf", "gguf/ggml-vocab-gpt-2.gguf"}) {
    auto t = Load(name);
    ASSERT_NE(t, nullptr);
    for (const char* text : kMixed) {
      const Ids ids = Enc(*t, text, false);
      auto full = t->Decode(ids, false);
      ASSERT_TRUE(full.ok());
      EXPECT_EQ(*full, text) << name;
      EXPECT_EQ(Stream(*t, {}, ids), *full) << name << ": " << text;
      // With the first half as the prompt, the deltas give the rest of the text.
      const Ids prompt(ids.begin(), ids.begin() + ids.size() / 2);
      const Ids rest(ids.begin() + ids.size() / 2, ids.end());
      auto head = t->Decode(prompt, false);
      ASSERT_TRUE(head.ok());
      const std::string tail = Stream(*t, prompt, rest);
      if (ValidateUtf8(*head).ok() && head->find("\xEF\xBF\xBD") == std::string::npos) {
        EXPECT_EQ(*head + tail, *full) << name << ": " << text;
      }
    }
  }
}

TEST(RobustnessTest, InvalidUtf8IsRejected) {
  auto t = Load("llama3");
  ASSERT_NE(t, nullptr);
  auto ids = t->Encode("ok \xE2\x28\xA1 bad", false);
  ASSERT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ids.status().message().find("offset 3"), std::string::npos) << ids.status();
}

TEST(RobustnessTest, PathologicalInputsRunInBoundedTime) {
  std::string word;
  for (int i = 0; i < 1000000; ++i) word.push_back(static_cast<char>('a' + (i * 7) % 26));
  std::string emoji, zwj;
  for (int i = 0; i < 250000; ++i) emoji += "\xF0\x9F\x98\x80";
  for (int i = 0; i < 100000; ++i) zwj += "\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB";
  const std::string inputs[] = {std::string(1000000, ' '), std::string(1000000, '\n'), word,
                                std::string(1000000, 'a'), emoji, zwj, std::string(1000000, '7')};
  for (const char* name : {"llama2", "llama3", "gguf/ggml-vocab-falcon.gguf"}) {
    auto t = Load(name);
    ASSERT_NE(t, nullptr);
    for (const std::string& s : inputs) {
      const auto t0 = std::chrono::steady_clock::now();
      auto ids = t->Encode(s, false);
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ASSERT_TRUE(ids.ok());
      EXPECT_FALSE(ids->empty());
      // Linear-time work is well under a second per megabyte; quadratic would take hours.
      EXPECT_LT(sec, 5.0) << name << " on " << s.substr(0, 8) << "...";
      auto back = t->Decode(*ids, false);
      ASSERT_TRUE(back.ok());
      EXPECT_EQ(*back, s) << name;
    }
  }
}

}  // namespace
}  // namespace kvr
