// Stop strings over streamed text (server/stop_matcher.h), against a naive whole-text search.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "server/stop_matcher.h"
#include "tokenizer/utf8.h"

namespace nb::server {
namespace {

// Reference: the whole text cut before the earliest occurrence of any stop string.
std::string naive_truncate(const std::string& text, const std::vector<std::string>& stops, bool* found) {
  size_t best = std::string::npos;
  for (const std::string& s : stops) {
    if (s.empty()) continue;
    best = std::min(best, text.find(s));
  }
  *found = best != std::string::npos;
  return *found ? text.substr(0, best) : text;
}

// Reference for how much may be released while no stop has matched: everything before the
// earliest position j where text[j:] is still a proper prefix of some stop string.
size_t naive_releasable(const std::string& text, const std::vector<std::string>& stops) {
  for (size_t j = 0; j < text.size(); ++j) {
    const std::string tail = text.substr(j);
    for (const std::string& s : stops) {
      if (!s.empty() && s.size() > tail.size() && s.compare(0, tail.size(), tail) == 0) return j;
    }
  }
  return text.size();
}

TEST(StopMatcher, StopSplitAcrossPiecesIsCutAndNothingAfterIsReleased) {
  StopMatcher m({"\n\n", "END"});
  std::string out = m.push("Hello\n");
  EXPECT_EQ(out, "Hello");  // the "\n" could start "\n\n"
  out += m.push("\nWorld");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched(), "\n\n");
  EXPECT_EQ(out, "Hello");
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.finish(), "");
}

TEST(StopMatcher, PartialMatchIsReleasedWhenItFails) {
  StopMatcher m({"World!"});
  EXPECT_EQ(m.push("Hello Wor"), "Hello ");
  EXPECT_EQ(m.push("ld?"), "World?");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push(" Wo"), " ");
  EXPECT_EQ(m.finish(), "Wo");  // the stream ended inside a partial match: it is text
}

TEST(StopMatcher, EarliestStartWinsAmongSeveralStops) {
  StopMatcher m({"cde", "bcdx", "b"});
  EXPECT_EQ(m.push("abcdef"), "a");
  EXPECT_EQ(m.matched(), "b");
  StopMatcher none({"", ""});  // empty stop strings are ignored
  EXPECT_FALSE(none.has_stops());
  EXPECT_EQ(none.push("abc"), "abc");
}

TEST(StopMatcher, EarlierLongerStopWinsOverLaterShorterOne) {
  StopMatcher m({"abcd", "c"});
  EXPECT_EQ(m.push("xab"), "x");
  EXPECT_EQ(m.push("c"), "");  // "c" matched, but "abcd" starting earlier may still complete
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push("d"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched(), "abcd");
  StopMatcher n({"abcd", "c"});
  EXPECT_EQ(n.push("xabc"), "x");
  EXPECT_EQ(n.push("e"), "ab");  // "abcd" failed: the waiting "c" wins
  EXPECT_TRUE(n.stopped());
  EXPECT_EQ(n.matched(), "c");
  StopMatcher f({"abcd", "c"});
  EXPECT_EQ(f.push("abc"), "");
  EXPECT_EQ(f.finish(), "ab");  // the stream ended: the complete match stands
  EXPECT_TRUE(f.stopped());
}

TEST(StopMatcher, PropertyMatchesNaiveSearchOverRandomSplits) {
  std::mt19937 rng(3);
  const std::string alphabet = "abc\n";
  for (int iter = 0; iter < 4000; ++iter) {
    std::vector<std::string> stops(1 + rng() % 4);
    for (std::string& s : stops) {
      for (size_t k = 1 + rng() % 5; k > 0; --k) s += alphabet[rng() % alphabet.size()];
    }
    std::string text;
    for (size_t k = rng() % 40; k > 0; --k) text += alphabet[rng() % alphabet.size()];
    bool found = false;
    const std::string expect = naive_truncate(text, stops, &found);

    StopMatcher m(stops);
    std::string released, fed;
    size_t pos = 0;
    while (pos < text.size() && !m.stopped()) {
      const size_t len = std::min(text.size() - pos, static_cast<size_t>(rng() % 6));
      fed += text.substr(pos, len);
      released += m.push(std::string_view(text).substr(pos, len));
      pos += len;
      if (!m.stopped()) {
        // Minimal hold-back: exactly what could still become a match is withheld.
        ASSERT_EQ(released.size(), naive_releasable(fed, stops)) << "fed '" << fed << "'";
      }
    }
    released += m.finish();
    ASSERT_EQ(m.stopped(), found) << "text '" << text << "'";
    ASSERT_EQ(released, expect) << "text '" << text << "'";
  }
}

TEST(StopMatcher, ReleasedPiecesStayValidUtf8) {
  std::mt19937 rng(5);
  const std::vector<std::string> chars = {"a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", " "};
  for (int iter = 0; iter < 2000; ++iter) {
    std::vector<std::string> stops(1 + rng() % 3);
    for (std::string& s : stops) {
      for (size_t k = 1 + rng() % 3; k > 0; --k) s += chars[rng() % chars.size()];
    }
    StopMatcher m(stops);
    std::string text, released;
    for (size_t k = rng() % 30; k > 0 && !m.stopped(); --k) {
      std::string piece;
      for (size_t c = rng() % 3; c > 0; --c) piece += chars[rng() % chars.size()];
      text += piece;
      const std::string out = m.push(piece);
      ASSERT_TRUE(utf8::is_valid(out));
      released += out;
    }
    if (!m.stopped()) {
      const std::string rest = m.finish();
      ASSERT_TRUE(utf8::is_valid(rest));
      released += rest;
    }
    bool found = false;
    ASSERT_EQ(released, naive_truncate(text, stops, &found));
  }
}

}  // namespace
}  // namespace nb::server
