// UTF-8 helpers against independent references: a bit-pattern decoder written from RFC 3629
// (checked exhaustively on all 1-3 byte strings), the Unicode standard's worked example of
// "maximal subpart" replacement, and outputs of Python's bytes.decode('utf-8', 'replace').
#include <gtest/gtest.h>

#include <string>

#include "tokenizer/utf8.h"

namespace nb {
namespace {

// RFC 3629 by bit patterns: length from the lead byte's high bits, continuation bytes 10xxxxxx,
// then reject overlong forms, surrogates and values above U+10FFFF. Returns the length of the
// valid character at the start, or 0.
size_t reference_char_len(const std::string& s) {
  if (s.empty()) return 0;
  const auto b0 = static_cast<uint8_t>(s[0]);
  size_t len;
  uint32_t cp;
  if ((b0 & 0x80) == 0) return 1;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2;
    cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
    cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4;
    cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (s.size() < len) return 0;
  for (size_t i = 1; i < len; ++i) {
    const auto b = static_cast<uint8_t>(s[i]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

bool reference_valid(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = reference_char_len(s.substr(i));
    if (n == 0) return false;
    i += n;
  }
  return true;
}

TEST(TokenizerUtf8, ValidityMatchesRfc3629OnAllShortStrings) {
  std::string s;
  for (uint32_t len = 1; len <= 3; ++len) {
    s.resize(len);
    for (uint32_t v = 0; v < (1u << (8 * len)); ++v) {
      for (uint32_t k = 0; k < len; ++k) s[k] = static_cast<char>(v >> (8 * k));
      ASSERT_EQ(utf8::valid_char_len(s), reference_char_len(s)) << std::hex << v;
      ASSERT_EQ(utf8::is_valid(s), reference_valid(s)) << std::hex << v;
    }
  }
  // Four-byte strings: every lead byte from F0 with continuation bytes at the range edges.
  const uint8_t edges[] = {0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF};
  s.resize(4);
  for (uint32_t b0 = 0xF0; b0 <= 0xFF; ++b0)
    for (uint8_t b1 : edges)
      for (uint8_t b2 : edges)
        for (uint8_t b3 : edges) {
          s = {static_cast<char>(b0), static_cast<char>(b1), static_cast<char>(b2), static_cast<char>(b3)};
          ASSERT_EQ(utf8::valid_char_len(s), reference_char_len(s));
        }
}

TEST(TokenizerUtf8, AppendCodepointRoundTripsEveryScalarValue) {
  for (uint32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    std::string s;
    utf8::append_codepoint(&s, cp);
    uint32_t back = 0;
    ASSERT_EQ(utf8::valid_char_len(s, &back), s.size());
    ASSERT_EQ(back, cp);
    ASSERT_EQ(s.size(), cp < 0x80 ? 1u : cp < 0x800 ? 2u : cp < 0x10000 ? 3u : 4u);
  }
}

std::string fffd(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += "\xEF\xBF\xBD";
  return s;
}

// Unicode 15.0 §3.9, Table 3-8 ("U+FFFD for Non-Shortest Form Sequences" practice), and Python's
// bytes.decode('utf-8', errors='replace') on the same and more bytes.
TEST(TokenizerUtf8, MaximalSubpartMatchesUnicodeExampleAndPython) {
  const auto repl = [](const std::string& s) { return utf8::repaired(s, utf8::Repair::kMaximalSubpart); };
  EXPECT_EQ(repl("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a" + fffd(3) + "b" + fffd(1) + "c" + fffd(2) + "d");
  EXPECT_EQ(repl("\xE2\x82 x"), fffd(1) + " x");
  EXPECT_EQ(repl("\xF0\x9F\x98"), fffd(1));
  EXPECT_EQ(repl("\xED\xA0\x80"), fffd(3));
  EXPECT_EQ(repl("\xC0\xAF"), fffd(2));
  EXPECT_EQ(repl("\xF4\x90\x80\x80"), fffd(4));
  EXPECT_EQ(repl("\xE6\x97\xA5\xE6\x9C"), "\xE6\x97\xA5" + fffd(1));
  EXPECT_EQ(repl("\xF0\x80\x80\x80"), fffd(4));
}

// sentencepiece replaces each byte that does not start a valid character (its normalizer and
// decoder consume one byte per U+FFFD); the Python tests check this against sentencepiece itself.
TEST(TokenizerUtf8, PerByteReplacesEveryBadByte) {
  const auto repl = [](const std::string& s) { return utf8::repaired(s, utf8::Repair::kPerByte); };
  EXPECT_EQ(repl("\xE2\x82 x"), fffd(2) + " x");
  EXPECT_EQ(repl("\xF0\x9F\x98"), fffd(3));
  EXPECT_EQ(repl("a\xF1\x80\x80\xE1\x80\xC2" "b"), "a" + fffd(6) + "b");
  EXPECT_EQ(repl("ok \xE2\x82\xAC"), "ok \xE2\x82\xAC");
}

// Streaming: an incomplete prefix waits for more bytes unless the input is final.
TEST(TokenizerUtf8, NextStepHoldsBackIncompletePrefixes) {
  for (utf8::Repair r : {utf8::Repair::kPerByte, utf8::Repair::kMaximalSubpart}) {
    EXPECT_EQ(utf8::next_step("\xF0\x9F\x98", r, false).kind, utf8::Step::kIncomplete);
    EXPECT_EQ(utf8::next_step("\xF0\x9F\x98", r, true).kind, utf8::Step::kInvalid);
    EXPECT_EQ(utf8::next_step("\xF0\x9F\x98\x80", r, false).kind, utf8::Step::kChar);
    EXPECT_EQ(utf8::next_step("\xF0\x41", r, false).kind, utf8::Step::kInvalid);  // decided without more input
  }
}

}  // namespace
}  // namespace nb
