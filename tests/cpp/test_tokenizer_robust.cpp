// Robustness: truncated, corrupted and hostile tokenizer files must give an error Status (or a
// working tokenizer), never a crash, hang or sanitizer report. CI reruns these (names contain
// Robust/Fuzz) under ASan + UBSan. Whatever loads is also exercised: encode and decode must not
// misbehave on a vocabulary that went through corruption.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <functional>
#include <random>

#include "test_tokenizer_util.h"
#include "tokenizer/tokenizer_models.h"

namespace nb {
namespace {

using json = nlohmann::json;

// Uses a tokenizer that loaded from damaged input: every call must return normally.
void exercise(const Tokenizer& tok, std::mt19937& rng) {
  for (const char* text : {"Hello world", "  x\t\n9 \xE2\x82\xAC<|endoftext|><s>", "\xFF\xC3", ""}) {
    const std::vector<int32_t> ids = tok.encode(text, true, true);
    for (int32_t id : ids) ASSERT_TRUE(tok.is_valid_id(id));
    EXPECT_TRUE(utf8::is_valid(tok.decode(ids, false)));
  }
  std::vector<int32_t> ids(16);
  std::uniform_int_distribution<int32_t> any(-2, tok.vocab_size() + 1);
  for (int32_t& id : ids) id = any(rng);
  EXPECT_TRUE(utf8::is_valid(tok.decode(ids, false)));
}

struct Outcome {
  int num_ok = 0, num_errors = 0;
};

template <typename Parse>
Outcome run_variant(const std::string& bytes, Parse parse, std::mt19937& rng) {
  Outcome o;
  auto r = parse(bytes);
  if (r.ok()) {
    ++o.num_ok;
    exercise(**r, rng);
  } else {
    ++o.num_errors;
    EXPECT_FALSE(r.status().message().empty());
  }
  return o;
}

// Truncations at `num_cuts` points spread over the file plus `num_flips` copies with 1..8 bytes
// overwritten by random values.
template <typename Parse>
Outcome fuzz_file(const std::string& original, Parse parse, int num_cuts, int num_flips, uint32_t seed) {
  std::mt19937 rng(seed);
  Outcome total;
  const auto add = [&](const Outcome& o) {
    total.num_ok += o.num_ok;
    total.num_errors += o.num_errors;
  };
  for (int k = 0; k < num_cuts; ++k) {
    const size_t cut = original.size() * static_cast<size_t>(k) / static_cast<size_t>(num_cuts);
    add(run_variant(original.substr(0, cut), parse, rng));
  }
  std::uniform_int_distribution<size_t> where(0, original.size() - 1);
  for (int k = 0; k < num_flips; ++k) {
    std::string s = original;
    const int n = 1 + static_cast<int>(rng() % 8);
    for (int j = 0; j < n; ++j) s[where(rng)] = static_cast<char>(rng());
    add(run_variant(s, parse, rng));
  }
  return total;
}

TEST(TokenizerRobust, SentencePieceModelTruncatedOrCorrupted) {
  const std::string path = test::shared_data("stories260K/tok512.model");
  if (!test::exists(path)) GTEST_SKIP() << path << " missing";
  const std::string original = test::read_bytes(path);
  ASSERT_TRUE(parse_sentencepiece_model(original).ok());
  const Outcome o = fuzz_file(original, parse_sentencepiece_model, 200, 300, 1);
  EXPECT_GE(o.num_errors, 190);  // nearly every truncation cuts a field in half
  std::printf("[ tok512.model ] 500 variants: %d loaded, %d errors\n", o.num_ok, o.num_errors);
}

TEST(TokenizerRobust, Llama2ModelTruncated) {
  const std::string path = test::shared_data("llama2-tokenizer.model");
  if (!test::exists(path)) GTEST_SKIP() << path << " missing";
  const std::string original = test::read_bytes(path);
  fuzz_file(original, parse_sentencepiece_model, 30, 20, 2);
}

// Protobuf writer for hand-made hostile models.
std::string varint(uint64_t v) {
  std::string s;
  do {
    s.push_back(static_cast<char>((v & 0x7F) | (v > 0x7F ? 0x80 : 0)));
    v >>= 7;
  } while (v != 0);
  return s;
}
std::string field_len(uint32_t field, const std::string& payload) {
  return varint((field << 3) | 2) + varint(payload.size()) + payload;
}
std::string field_varint(uint32_t field, uint64_t v) { return varint(field << 3) + varint(v); }
std::string piece(const std::string& text, uint64_t type) {
  const float score = -1.0f;
  std::string s = field_len(1, text) + varint((2 << 3) | 5);
  s.append(reinterpret_cast<const char*>(&score), 4);
  return s + field_varint(3, type);
}
std::string bpe_trainer() { return field_len(2, field_varint(3, 2)); }

TEST(TokenizerRobust, SentencePieceHostileFields) {
  const std::string ok_pieces = field_len(1, piece("<unk>", 2)) + field_len(1, piece("<s>", 3)) +
                                field_len(1, piece("</s>", 3)) + field_len(1, piece("a", 1));
  ASSERT_TRUE(parse_sentencepiece_model(ok_pieces + bpe_trainer()).ok());
  const std::vector<std::string> hostile = {
      "",                                                          // no pieces
      ok_pieces,                                                   // model type defaults to unigram
      ok_pieces + field_len(2, field_varint(3, 1)),                // unigram
      varint((1 << 3) | 2) + varint(uint64_t{1} << 62),            // length far past the end
      std::string(11, '\xFF'),                                     // an 11-byte varint
      varint((1 << 3) | 3) + ok_pieces,                            // group wire type
      varint(0) + ok_pieces,                                       // field number 0
      ok_pieces + field_len(1, piece("a", 1)) + bpe_trainer(),     // duplicate piece
      ok_pieces + field_len(1, piece("", 1)) + bpe_trainer(),      // empty piece
      ok_pieces + field_len(1, piece("b", 9)) + bpe_trainer(),     // unknown type
      ok_pieces + field_len(2, field_varint(3, 2) + field_varint(40, 3)),                       // unk id on "a"
      ok_pieces + field_len(2, field_varint(3, 2) + field_varint(40, uint64_t(-5))),            // negative unk id
      ok_pieces + bpe_trainer() + field_len(3, field_len(2, "\x01\x02\x03\x04")),               // NFKC charsmap
      ok_pieces + field_len(1, piece("<0xZZ>", 6)) + bpe_trainer(),                             // bad byte piece
      ok_pieces + field_len(1, field_len(1, "x") + varint((2 << 3) | 5) + "\x00\x00\xC0\x7F") + bpe_trainer(),  // NaN
      ok_pieces + field_len(1, field_varint(1, 7)) + bpe_trainer(),                              // piece text as varint
  };
  for (size_t i = 0; i < hostile.size(); ++i) {
    const auto r = parse_sentencepiece_model(hostile[i]);
    EXPECT_FALSE(r.ok()) << "variant " << i;
  }
}

TEST(TokenizerRobust, Llama2cTokenizerTruncatedOrCorrupted) {
  const std::string path = test::shared_data("stories260K/tok512.bin");
  if (!test::exists(path)) GTEST_SKIP() << path << " missing";
  const std::string original = test::read_bytes(path);
  ASSERT_TRUE(parse_llama2c_tokenizer(original).ok());
  const Outcome o = fuzz_file(original, parse_llama2c_tokenizer, 300, 300, 3);
  EXPECT_GE(o.num_errors, 295);  // every cut but the one at offset 0 .. well, all but a few
  // Hostile headers: negative and huge lengths.
  std::string bad = original;
  const int32_t neg = -7, huge = 1 << 30;
  std::memcpy(bad.data() + 8, &neg, 4);  // first token's length
  EXPECT_FALSE(parse_llama2c_tokenizer(bad).ok());
  std::memcpy(bad.data(), &huge, 4);  // max_token_length
  EXPECT_FALSE(parse_llama2c_tokenizer(bad).ok());
}

// A small but complete byte-level tokenizer.json: the 256 byte characters, a few merges, an added
// special and a non-special token, SmolLM2's pre-tokenizer.
json small_tokenizer_json() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[gpt2_byte_to_unicode()[b]] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"\xC4\xA0", "t"}, {"h", "e"}, {"\xC4\xA0t", "he"}, {"i", "n"}, {"\xC4\xA0", "c"}, {"a", "t"}, {"\xC4\xA0" "c", "at"}};
  json merge_list = json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    vocab[a + b] = next++;
    merge_list.push_back(a + " " + b);
  }
  json j;
  j["version"] = "1.0";
  j["added_tokens"] = json::array({{{"id", next}, {"content", "<|endoftext|>"}, {"special", true}},
                                   {{"id", next + 1}, {"content", "<|x|>"}, {"special", false}}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", json::array({{{"type", "Digits"}, {"individual_digits", true}},
                                                       {{"type", "ByteLevel"}, {"add_prefix_space", false},
                                                        {"trim_offsets", true}, {"use_regex", true}}})}};
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"byte_fallback", false},
                {"vocab", vocab}, {"merges", merge_list}};
  return j;
}

Result<std::unique_ptr<Tokenizer>> parse_json_only(const std::string& text) { return parse_hf_tokenizer_json(text, ""); }

TEST(TokenizerRobust, TokenizerJsonSmallIsUsable) {
  const json j = small_tokenizer_json();
  auto r = parse_hf_tokenizer_json(j.dump(), R"({"eos_token": "<|endoftext|>"})");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const Tokenizer& t = **r;
  const int32_t the = t.find_token("\xC4\xA0the"), cat = t.find_token("\xC4\xA0" "cat");
  ASSERT_GE(the, 0);
  ASSERT_GE(cat, 0);
  EXPECT_EQ(t.encode(" the cat<|endoftext|>", false, true), (std::vector<int32_t>{the, cat, t.eos_id()}));
  EXPECT_EQ(t.encode("<|x|>", false, false), std::vector<int32_t>{t.find_token("<|x|>")});  // non-special: always
  EXPECT_EQ(t.decode(t.encode(" the cat 12\xE2\x82\xAC", false, true), false), " the cat 12\xE2\x82\xAC");
}

TEST(TokenizerRobust, TokenizerJsonTemplateProcessingAddsBos) {
  json j = small_tokenizer_json();
  j["post_processor"] = {
      {"type", "Sequence"},
      {"processors", json::array({{{"type", "ByteLevel"}},
                                  {{"type", "TemplateProcessing"},
                                   {"single", json::array({{{"SpecialToken", {{"id", "<|endoftext|>"}, {"type_id", 0}}}},
                                                           {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}}})}};
  auto r = parse_json_only(j.dump());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ((*r)->bos_id(), (*r)->find_token("<|endoftext|>"));
  EXPECT_TRUE((*r)->add_bos_by_default());
  r = parse_hf_tokenizer_json(j.dump(), R"({"add_bos_token": false})");
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE((*r)->add_bos_by_default());
}

TEST(TokenizerRobust, TokenizerJsonTruncatedOrCorrupted) {
  const std::string original = small_tokenizer_json().dump(1);
  const Outcome o = fuzz_file(original, parse_json_only, 200, 300, 4);
  EXPECT_GE(o.num_errors, 199);
  std::printf("[ tokenizer.json ] 500 variants: %d loaded, %d errors\n", o.num_ok, o.num_errors);
}

TEST(TokenizerRobust, TokenizerJsonHostileStructure) {
  const json base = small_tokenizer_json();
  std::vector<std::function<void(json&)>> edits = {
      [](json& j) { j["model"]["vocab"] = json::array(); },
      [](json& j) { j["model"]["vocab"]["!"] = "one"; },
      [](json& j) { j["model"]["vocab"]["!"] = -1; },
      [](json& j) { j["model"]["vocab"]["!"] = int64_t{1} << 40; },
      [](json& j) { j["model"]["merges"] = "a b"; },
      [](json& j) { j["model"]["merges"].push_back(17); },
      [](json& j) { j["model"]["merges"].push_back("nospace"); },
      [](json& j) { j["model"]["merges"].push_back(json::array({"a"})); },
      [](json& j) { j["model"]["type"] = "WordPiece"; },
      [](json& j) { j["model"]["byte_fallback"] = true; },
      [](json& j) { j["model"]["dropout"] = 0.1; },
      [](json& j) { j["model"]["continuing_subword_prefix"] = "##"; },
      [](json& j) { j.erase("model"); },
      [](json& j) { j["model"] = 3; },
      [](json& j) { j["normalizer"] = {{"type", "NFKC"}}; },
      [](json& j) { j["decoder"] = {{"type", "Metaspace"}}; },
      [](json& j) { j.erase("decoder"); },
      [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; },
      [](json& j) { j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}}; },
      [](json& j) { j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "x"}}}, {"behavior", "Removed"}}; },
      [](json& j) { j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", 5}}; },
      [](json& j) {
        json deep = {{"type", "ByteLevel"}};
        for (int i = 0; i < 50; ++i) deep = {{"type", "Sequence"}, {"pretokenizers", json::array({deep})}};
        j["pre_tokenizer"] = deep;
      },
      [](json& j) { j["added_tokens"] = json::array({{{"id", "x"}, {"content", "y"}}}); },
      [](json& j) { j["added_tokens"] = json::array({{{"id", -3}, {"content", "y"}}}); },
      [](json& j) { j["added_tokens"] = json::array({{{"id", int64_t{1} << 31}, {"content", "y"}}}); },
      [](json& j) { j["added_tokens"] = {{"id", 1}}; },
  };
  for (size_t i = 0; i < edits.size(); ++i) {
    json j = base;
    edits[i](j);
    const auto r = parse_json_only(j.dump());
    EXPECT_FALSE(r.ok()) << "edit " << i;
  }
  EXPECT_FALSE(parse_hf_tokenizer_json(base.dump(), "[not an object").ok());
}

}  // namespace
}  // namespace nb
