// Tokenizer models on real vocabularies. Expected ids come from the reference packages
// (sentencepiece 0.2.x on the .model files; HF tokenizers 0.23 built from the SmolLM2 GGUF's
// vocab/merges, as tests/py/test_tokenizer_smollm2.py builds it), pasted here so the C++ suite
// checks them without Python. The bulk comparisons (1,200 WikiText lines + adversarial text) are in
// tests/py/test_tokenizer_{spm,smollm2}.py.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "test_tokenizer_util.h"
#include "tokenizer/tokenizer_models.h"

namespace nb {
namespace {

using test::load_or_die;
using Ids = std::vector<int32_t>;

std::string spm_byte_text(int b) {
  char h[8];
  std::snprintf(h, sizeof h, "<0x%02X>", b);
  return h;
}

class Llama2Tokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = test::shared_data("llama2-tokenizer.model");
    if (!test::exists(path)) GTEST_SKIP() << path << " missing";
    tok_ = load_or_die(path);
    ASSERT_NE(tok_, nullptr);
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(Llama2Tokenizer, MatchesSentencepieceGoldens) {
  const Tokenizer& t = *tok_;
  EXPECT_EQ(t.encode("Hello world", false, false), (Ids{15043, 3186}));
  EXPECT_EQ(t.encode(" leading space", false, false), (Ids{29871, 8236, 2913}));
  EXPECT_EQ(t.encode("Hello  world\n\ttab", false, false), (Ids{15043, 29871, 3186, 13, 12, 3891}));
  EXPECT_EQ(t.encode("日本語 😀", false, false), (Ids{29871, 30325, 30346, 30968, 29871, 243, 162, 155, 131}));
  EXPECT_EQ(t.encode("\xE2\x82\xAC" "100", false, false), (Ids{25540, 29896, 29900, 29900}));
  EXPECT_EQ(t.encode("<s>x</s>", false, false), (Ids{529, 29879, 29958, 29916, 829, 29879, 29958}));
  EXPECT_EQ(t.encode("", false, false), Ids{});
  // sentencepiece: decode([<0xE2>,<0x82>,<0xAC>,<0xE2>,<0x82>,▁,<0xFF>,<s>,<unk>,▁Hello])
  EXPECT_EQ(t.decode(Ids{3 + 0xE2, 3 + 0x82, 3 + 0xAC, 3 + 0xE2, 3 + 0x82, 29871, 3 + 0xFF, 1, 0, 13}, true),
            "\xE2\x82\xAC\xEF\xBF\xBD\xEF\xBF\xBD \xEF\xBF\xBD \xE2\x81\x87 \n");
}

TEST_F(Llama2Tokenizer, SpecialIdsBosAndParseSpecial) {
  const Tokenizer& t = *tok_;
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_EQ(t.eot_ids(), Ids{2});
  EXPECT_TRUE(t.add_bos_by_default());
  EXPECT_TRUE(t.is_special(1));
  EXPECT_FALSE(t.is_special(15043));
  EXPECT_EQ(t.find_token("\xE2\x96\x81Hello"), 15043);
  EXPECT_EQ(t.find_token("no such token"), -1);
  EXPECT_EQ(t.token_piece(15043), " Hello");
  EXPECT_EQ(t.token_piece(3 + 0x41), "A");
  EXPECT_EQ(t.token_type(3), TokenType::kByte);
  EXPECT_EQ(t.encode("Hi", true, false).front(), 1);
  // parse_special: "<s>" in text becomes BOS and the text after it gets the dummy prefix (llama.cpp).
  EXPECT_EQ(t.encode("<s>Hello", false, true), (Ids{1, 15043}));
  EXPECT_EQ(t.decode(Ids{1, 15043, 2}, false), "<s> Hello</s>");
  EXPECT_EQ(t.decode(Ids{1, 15043, 2}, true), "Hello");
  EXPECT_EQ(t.token_piece(-1), "");
  EXPECT_EQ(t.decode(Ids{15043, 99999}, true), "Hello\xEF\xBF\xBD");
}

TEST(Tok512Tokenizer, BinAndModelHoldTheSameVocabulary) {
  const std::string model = test::shared_data("stories260K/tok512.model");
  const std::string bin = test::shared_data("stories260K/tok512.bin");
  if (!test::exists(model) || !test::exists(bin)) GTEST_SKIP() << "stories260K tokenizer files missing";
  auto a = load_or_die(model);
  auto b = load_or_die(bin);
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->vocab_size(), 512);
  ASSERT_EQ(b->vocab_size(), 512);
  for (int32_t i = 0; i < 512; ++i) {
    EXPECT_EQ(a->token_text(i), b->token_text(i)) << i;
    EXPECT_EQ(a->token_type(i), b->token_type(i)) << i;
  }
  // sentencepiece goldens for tok512.model (which removes extra whitespace).
  EXPECT_EQ(a->encode("Once upon a time", false, false), (Ids{403, 407, 261, 378}));
  EXPECT_EQ(a->encode("  Lily   loved\tplay  ", false, false), (Ids{317, 401, 396, 12, 427, 421, 283}));
  EXPECT_EQ(a->encode("\xCE\xA9mega", false, false), (Ids{410, 209, 172, 423, 411, 428, 412}));
  EXPECT_EQ(b->encode("Once upon a time", true, false), (Ids{1, 403, 407, 261, 378}));
}

class SmolLm2Tokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::exists(test::smollm2_path())) GTEST_SKIP() << "SmolLM2 GGUF missing: run scripts/setup.sh";
    tok_ = load_or_die(test::smollm2_path());
    ASSERT_NE(tok_, nullptr);
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(SmolLm2Tokenizer, MatchesHfGoldens) {
  const Tokenizer& t = *tok_;
  EXPECT_EQ(t.model(), Tokenizer::Model::kByteLevelBpe);
  EXPECT_EQ(t.encode("Hello world! It's 2024.", false, true), (Ids{19556, 905, 17, 657, 506, 216, 34, 32, 34, 36, 30}));
  EXPECT_EQ(t.encode("  two  spaces\n\nnewlines\ttab", false, true),
            (Ids{216, 827, 216, 5600, 198, 198, 2241, 5110, 197, 15999}));
  EXPECT_EQ(t.encode("日本語 😀 naïve", false, true),
            (Ids{23274, 115, 40993, 179, 120, 248, 40303, 218, 15486, 46494}));
  EXPECT_EQ(t.encode("<|im_start|>user\nHi<|im_end|>\n", false, true), (Ids{1, 4093, 198, 26843, 2, 198}));
  EXPECT_EQ(t.encode("<|im_start|>user", false, false), (Ids{44, 108, 306, 79, 3738, 108, 46, 4093}));
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_FALSE(t.add_bos_by_default());
  EXPECT_TRUE(t.is_eot(2) && t.is_eot(0) && !t.is_eot(1));
  EXPECT_EQ(t.token_piece(905), " world");
  EXPECT_EQ(t.token_text(905), "\xC4\xA0world");  // "Ġworld"
}

TEST_F(SmolLm2Tokenizer, EncodesAThousandWikitextLinesFast) {
  const std::vector<std::string> lines = test::wikitext_lines(1000);
  ASSERT_EQ(lines.size(), 1000u);
  size_t num_tokens = 0, num_bytes = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const std::string& l : lines) {
    num_tokens += tok_->encode(l, false, true).size();
    num_bytes += l.size();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ SmolLM2 ] 1000 lines, %zu bytes -> %zu tokens in %.3f s (%.1f MB/s)\n", num_bytes, num_tokens,
              seconds, num_bytes / seconds / 1e6);
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "timing is meaningless under AddressSanitizer";
#endif
  // A guard against pathological (e.g. quadratic) encoding, not a benchmark: ~0.1 s on 2 cores when idle,
  // so 5 s leaves room for a loaded CI machine (a 0.5 s bound failed once there at 0.53 s).
  EXPECT_LT(seconds, 5.0);
}

TEST_F(SmolLm2Tokenizer, SameIdsFromSeveralThreads) {
  const std::vector<std::string> lines = test::wikitext_lines(200);
  std::vector<Ids> expected;
  for (const auto& l : lines) expected.push_back(tok_->encode(l, false, true));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (size_t i = 0; i < lines.size(); ++i) mismatches[k] += tok_->encode(lines[i], false, true) != expected[i];
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

// Round trip and streaming on random multilingual text for every tokenizer we have.
TEST(TokenizerDetokenizer, RandomMultilingualRoundTripAndValidChunks) {
  const std::vector<std::string> paths = {test::smollm2_path(), test::shared_data("llama2-tokenizer.model")};
  std::mt19937 rng(42);
  for (const std::string& path : paths) {
    if (!test::exists(path)) continue;
    auto tok = load_or_die(path);
    ASSERT_NE(tok, nullptr);
    for (int iter = 0; iter < 500; ++iter) {
      const std::string text = test::random_multilingual(rng, 40);
      const Ids ids = tok->encode(text, false, false);
      // Byte-level BPE gives back every byte; SentencePiece gives U+2581 back as ' '.
      std::string expected;
      for (size_t i = 0; i < text.size(); ++i) {
        if (tok->model() == Tokenizer::Model::kSentencePiece && text.compare(i, 3, "\xE2\x96\x81") == 0) {
          expected += ' ';
          i += 2;
        } else {
          expected += text[i];
        }
      }
      const std::string decoded = tok->decode(ids, true);
      ASSERT_EQ(decoded, expected) << path;
      IncrementalDetokenizer detok(*tok, true);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string chunk = detok.push(id);
        ASSERT_TRUE(utf8::is_valid(chunk)) << path;
        streamed += chunk;
      }
      streamed += detok.flush();
      ASSERT_EQ(streamed, decoded) << path;
    }
  }
}

// Random id sequences (mostly single-byte tokens, so characters break across tokens and invalid
// sequences appear): every chunk is valid UTF-8 and the chunks add up to decode().
TEST(TokenizerDetokenizer, RandomIdsStreamEqualsDecode) {
  const std::vector<std::string> paths = {test::smollm2_path(), test::shared_data("llama2-tokenizer.model"),
                                          test::shared_data("stories260K/tok512.model")};
  std::mt19937 rng(7);
  for (const std::string& path : paths) {
    if (!test::exists(path)) continue;
    auto tok = load_or_die(path);
    ASSERT_NE(tok, nullptr);
    std::vector<int32_t> byte_ids;
    for (int b = 0; b < 256; ++b) {
      const int32_t id = tok->model() == Tokenizer::Model::kSentencePiece ? tok->find_token(spm_byte_text(b))
                                                                          : tok->find_token(gpt2_byte_to_unicode()[b]);
      if (id >= 0) byte_ids.push_back(id);
    }
    ASSERT_GT(byte_ids.size(), 200u) << path;
    std::uniform_int_distribution<int32_t> any(0, tok->vocab_size() - 1);
    std::uniform_int_distribution<size_t> pick(0, byte_ids.size() - 1);
    std::uniform_real_distribution<double> coin(0, 1);
    for (int iter = 0; iter < 1000; ++iter) {
      Ids ids(rng() % 24);
      for (int32_t& id : ids) id = coin(rng) < 0.7 ? byte_ids[pick(rng)] : any(rng);
      for (bool skip : {false, true}) {
        IncrementalDetokenizer detok(*tok, skip);
        std::string streamed;
        for (int32_t id : ids) {
          const std::string chunk = detok.push(id);
          ASSERT_TRUE(utf8::is_valid(chunk));
          streamed += chunk;
        }
        const std::string last = detok.flush();
        ASSERT_TRUE(utf8::is_valid(last));
        ASSERT_EQ(streamed + last, tok->decode(ids, skip)) << path;
      }
    }
  }
}

// Streaming generated tokens after a prompt: decode(prompt) + stream(rest, starts_text=false) must
// equal decode(prompt + rest) wherever the split falls between whole characters.
TEST(TokenizerDetokenizer, ContinuationAfterPromptKeepsLeadingSpace) {
  const std::vector<std::string> paths = {test::smollm2_path(), test::shared_data("llama2-tokenizer.model")};
  const std::vector<std::string> lines = test::wikitext_lines(100);
  for (const std::string& path : paths) {
    if (!test::exists(path)) continue;
    auto tok = load_or_die(path);
    ASSERT_NE(tok, nullptr);
    int num_checked = 0;
    for (const std::string& line : lines) {
      const Ids ids = tok->encode(line + " \xE6\x97\xA5\xE6\x9C\xAC", false, false);
      std::string prefix_bytes;
      for (size_t k = 1; k < ids.size(); ++k) {
        prefix_bytes += tok->token_piece(ids[k - 1]);
        // Split only where the prompt's bytes end a character and no byte-token run spans the cut.
        if (!utf8::is_valid(prefix_bytes) || tok->token_type(ids[k]) == TokenType::kByte) continue;
        const Ids prompt(ids.begin(), ids.begin() + k), rest(ids.begin() + k, ids.end());
        IncrementalDetokenizer detok(*tok, true, /*starts_text=*/false);
        std::string streamed;
        for (int32_t id : rest) streamed += detok.push(id);
        streamed += detok.flush();
        ASSERT_EQ(tok->decode(prompt, true) + streamed, tok->decode(ids, true)) << path << " split " << k;
        ++num_checked;
      }
    }
    EXPECT_GT(num_checked, 1000) << path;
  }
}

TEST_F(Llama2Tokenizer, DetokenizerStartsTextOrContinuesIt) {
  IncrementalDetokenizer fresh(*tok_), continued(*tok_, true, /*starts_text=*/false);
  EXPECT_EQ(fresh.push(15043), "Hello");       // "▁Hello" at the start: the dummy prefix goes
  EXPECT_EQ(continued.push(15043), " Hello");  // after a prompt: it is a real space
}

TEST_F(Llama2Tokenizer, DetokenizerHoldsSplitCharacterUntilComplete) {
  IncrementalDetokenizer d(*tok_);
  EXPECT_EQ(d.push(15043), "Hello");        // "▁Hello": the dummy-prefix space is dropped
  EXPECT_EQ(d.push(3 + 0xE2), "");          // € = E2 82 AC arrives one byte token at a time
  EXPECT_EQ(d.push(3 + 0x82), "");
  EXPECT_EQ(d.push(3 + 0xAC), "\xE2\x82\xAC");
  EXPECT_EQ(d.push(3 + 0xE2), "");
  EXPECT_EQ(d.push(3131), "\xEF\xBF\xBD" + tok_->token_piece(3131));  // a non-byte token ends the run
  EXPECT_EQ(d.push(3 + 0xF0), "");
  EXPECT_EQ(d.flush(), "\xEF\xBF\xBD");
}

}  // namespace
}  // namespace nb
