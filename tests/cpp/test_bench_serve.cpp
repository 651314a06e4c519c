// Load generator pieces that need no network: the SSE parser and chunked decoder (against the
// WHATWG spec's own examples, against streams generated from known events, and split at every
// kind of byte boundary), percentiles (against a naive full sort), the Poisson arrival generator
// (moments and a Kolmogorov-Smirnov distance to the exponential CDF), and the Prometheus reader
// (against the exposition-format documentation's example).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "tools/bench_serve/http_client.h"
#include "tools/bench_serve/prom_metrics.h"
#include "tools/bench_serve/sse_parser.h"
#include "tools/bench_serve/stats.h"

namespace nb::bench_serve {
namespace {

// ---- SSE -------------------------------------------------------------------------------------

struct Parsed {
  std::vector<SseEvent> events;
  bool ok = true;
  bool partial = false;
};

Parsed parse_in_pieces(std::string_view s, const std::vector<size_t>& cuts, size_t limit = 16u << 20) {
  SseParser p(limit);
  Parsed out;
  size_t pos = 0;
  std::vector<size_t> all = cuts;
  all.push_back(s.size());
  for (size_t cut : all) {
    if (!p.feed(s.substr(pos, cut - pos), &out.events).ok()) out.ok = false;
    pos = cut;
  }
  out.partial = p.has_partial_event();
  return out;
}

Parsed parse_whole(std::string_view s) { return parse_in_pieces(s, {}); }

std::vector<size_t> random_cuts(size_t n, std::mt19937_64& rng) {
  std::vector<size_t> cuts;
  if (n == 0) return cuts;
  const int mode = static_cast<int>(rng() % 3);
  if (mode == 0) {  // every byte on its own
    for (size_t i = 1; i < n; ++i) cuts.push_back(i);
  } else {
    const size_t k = rng() % (mode == 1 ? 4 : 64);
    for (size_t i = 0; i < k; ++i) cuts.push_back(rng() % (n + 1));
    std::sort(cuts.begin(), cuts.end());
  }
  return cuts;
}

bool same_events(const std::vector<SseEvent>& a, const std::vector<SseEvent>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].data != b[i].data || a[i].type != b[i].type || a[i].id != b[i].id) return false;
  }
  return true;
}

TEST(BenchServeSse, SpecExampleStockTicker) {
  // WHATWG HTML, 9.2.6 "Authoring notes" / event stream examples.
  const Parsed p = parse_whole("data: YHOO\ndata: +2\ndata: 10\n\n");
  ASSERT_EQ(p.events.size(), 1u);
  EXPECT_EQ(p.events[0].data, "YHOO\n+2\n10");
  EXPECT_EQ(p.events[0].type, "");
}

TEST(BenchServeSse, SpecExampleCommentsAndIds) {
  const Parsed p = parse_whole(": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n");
  ASSERT_EQ(p.events.size(), 3u);
  EXPECT_EQ(p.events[0].data, "first event");
  EXPECT_EQ(p.events[0].id, "1");
  EXPECT_EQ(p.events[1].data, "second event");
  EXPECT_EQ(p.events[1].id, "");  // "id" alone resets the last event id
  EXPECT_EQ(p.events[2].data, " third event");  // only one leading space is removed
  EXPECT_FALSE(p.partial);
}

TEST(BenchServeSse, SpecExampleEmptyDataAndTrailingPartialEvent) {
  // "The first block fires events with the data set to the empty string, as would the last block
  // if it was followed by a blank line. The middle block fires an event with the data set to a
  // single newline character. The last block is discarded because it is not followed by a blank line."
  const Parsed p = parse_whole("data\n\ndata\ndata\n\ndata:");
  ASSERT_EQ(p.events.size(), 2u);
  EXPECT_EQ(p.events[0].data, "");
  EXPECT_EQ(p.events[1].data, "\n");
  EXPECT_TRUE(p.partial);
}

TEST(BenchServeSse, SpecExampleSpaceAfterColonIsOptional) {
  const Parsed p = parse_whole("data:test\n\ndata: test\n\n");
  ASSERT_EQ(p.events.size(), 2u);
  EXPECT_EQ(p.events[0].data, "test");
  EXPECT_EQ(p.events[1].data, "test");
}

TEST(BenchServeSse, LineEndingsCrLfCrAndLfAreEquivalent) {
  for (const char* eol : {"\n", "\r\n", "\r"}) {
    const std::string e(eol);
    const std::string s = "event: tick" + e + "data: a" + e + "data: b" + e + e + "data: [DONE]" + e + e;
    for (size_t cut = 0; cut <= s.size(); ++cut) {
      const Parsed p = parse_in_pieces(s, {cut});
      ASSERT_EQ(p.events.size(), 2u) << "eol " << (e == "\n" ? "LF" : e == "\r" ? "CR" : "CRLF") << " cut " << cut;
      EXPECT_EQ(p.events[0].type, "tick");
      EXPECT_EQ(p.events[0].data, "a\nb");
      EXPECT_EQ(p.events[1].type, "");  // the event type does not carry over
      EXPECT_EQ(p.events[1].data, "[DONE]");
    }
  }
}

TEST(BenchServeSse, ByteOrderMarkOnlyAtStreamStart) {
  EXPECT_EQ(parse_whole("\xEF\xBB\xBF" "data: x\n\n").events.at(0).data, "x");
  EXPECT_EQ(parse_in_pieces("\xEF\xBB\xBF" "data: x\n\n", {1, 2}).events.at(0).data, "x");
  // A BOM later is content (here: part of a field name, so the line is an unknown field).
  EXPECT_TRUE(parse_whole("data: x\n\n\xEF\xBB\xBF" "data: y\n\n").events.size() == 1);
  // A partial BOM followed by something else is content too.
  const Parsed p = parse_in_pieces("\xEF\xBB" "data: z\n\n", {1});
  EXPECT_TRUE(p.events.empty());
  EXPECT_FALSE(p.partial);
}

// Builds a stream from known events with random but valid framing: mixed line endings, comments,
// unknown fields, "retry", optional space after the colon, multi-line data.
struct GeneratedStream {
  std::string bytes;
  std::vector<SseEvent> expected;
};

GeneratedStream generate_stream(std::mt19937_64& rng) {
  GeneratedStream g;
  const char* eols[] = {"\n", "\r\n", "\r"};
  std::string last_id;
  bool prev_cr = false;
  auto emit_line = [&](const std::string& line) {
    std::string eol = eols[rng() % 3];
    // "\r" followed by an empty line ended by "\n" would read as one "\r\n": pick another end.
    if (prev_cr && line.empty() && eol == "\n") eol = "\r\n";
    g.bytes += line + eol;
    prev_cr = eol == "\r";
  };
  auto random_text = [&](bool allow_leading_space) {
    static const std::string alphabet = "abcXYZ019 {}\":,[]-_\t\xC3\xA9";
    std::string s;
    const size_t n = rng() % 12;
    for (size_t i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    if (!allow_leading_space && !s.empty() && s[0] == ' ') s[0] = 'q';
    return s;
  };
  const size_t num_events = rng() % 8;
  if (rng() % 4 == 0) g.bytes += "\xEF\xBB\xBF";
  for (size_t e = 0; e < num_events; ++e) {
    SseEvent ev;
    const size_t num_lines = 1 + rng() % 4;
    for (size_t l = 0; l < num_lines; ++l) {
      switch (rng() % 6) {
        case 0:
          emit_line(":" + random_text(true));
          break;
        case 1:
          emit_line("retry: " + std::to_string(rng() % 1000));
          break;
        case 2: {
          ev.type = random_text(false);
          emit_line("event:" + std::string(rng() % 2 ? " " : "") + ev.type);
          break;
        }
        case 3: {
          last_id = random_text(false);
          emit_line("id:" + std::string(rng() % 2 ? " " : "") + last_id);
          break;
        }
        case 4:
          emit_line("x-unknown: " + random_text(true));
          break;
        default:
          break;
      }
      const std::string value = random_text(false);
      ev.data += (l == 0 ? "" : "\n") + value;
      emit_line(value.empty() && rng() % 2 ? "data" : "data:" + std::string(rng() % 2 ? " " : "") + value);
    }
    emit_line("");
    ev.id = last_id;
    g.expected.push_back(ev);
  }
  return g;
}

TEST(BenchServeSse, GeneratedStreamsParseToTheirEventsAtAnySplit) {
  std::mt19937_64 rng(20240611);
  for (int iter = 0; iter < 2000; ++iter) {
    const GeneratedStream g = generate_stream(rng);
    const Parsed whole = parse_whole(g.bytes);
    ASSERT_TRUE(whole.ok);
    ASSERT_TRUE(same_events(whole.events, g.expected)) << "iteration " << iter;
    EXPECT_FALSE(whole.partial);
    const Parsed split = parse_in_pieces(g.bytes, random_cuts(g.bytes.size(), rng));
    ASSERT_TRUE(same_events(split.events, g.expected)) << "iteration " << iter;
  }
}

TEST(BenchServeSseFuzz, RandomBytesParseTheSameAtAnySplit) {
  std::mt19937_64 rng(7);
  const std::string alphabet = "data:event:id: \r\n\n\n:x[DONE]{}\xEF\xBB\xBF\0";
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s;
    const size_t n = rng() % 200;
    for (size_t i = 0; i < n; ++i) {
      s += rng() % 8 == 0 ? static_cast<char>(rng() & 0xFF) : alphabet[rng() % alphabet.size()];
    }
    const Parsed whole = parse_whole(s);
    const Parsed split = parse_in_pieces(s, random_cuts(s.size(), rng));
    ASSERT_TRUE(whole.ok && split.ok);
    ASSERT_TRUE(same_events(whole.events, split.events)) << "iteration " << iter;
    ASSERT_EQ(whole.partial, split.partial);
  }
}

TEST(BenchServeSseRobust, OverlongLineIsAnErrorThatSticks) {
  SseParser p(64);
  std::vector<SseEvent> events;
  EXPECT_TRUE(p.feed("data: short\n\n", &events).ok());
  EXPECT_EQ(events.size(), 1u);
  EXPECT_FALSE(p.feed(std::string(100, 'a'), &events).ok());
  EXPECT_FALSE(p.feed("\n\ndata: x\n\n", &events).ok());
  EXPECT_EQ(events.size(), 1u);
  // An event made of many short data lines is bounded too.
  SseParser q(64);
  Status last;
  for (int i = 0; i < 20 && last.ok(); ++i) last = q.feed("data: 0123456789\n", &events);
  EXPECT_FALSE(last.ok());
}

// ---- chunked transfer coding ------------------------------------------------------------------

std::string chunk_encode(const std::string& payload, std::mt19937_64& rng) {
  std::string out;
  size_t pos = 0;
  while (pos < payload.size()) {
    const size_t n = std::min(payload.size() - pos, 1 + rng() % 40);
    char hex[32];
    std::snprintf(hex, sizeof hex, rng() % 2 ? "%zx" : "%zX", n);
    out += hex;
    if (rng() % 4 == 0) out += ";ext=\"v\"";
    out += rng() % 5 == 0 ? "\n" : "\r\n";
    out += payload.substr(pos, n);
    out += "\r\n";
    pos += n;
  }
  out += "0\r\n";
  if (rng() % 3 == 0) out += "X-Trailer: yes\r\n";
  out += "\r\n";
  return out;
}

struct Decoded {
  std::string payload;
  bool ok = true, done = false;
};

Decoded decode_in_pieces(std::string_view s, const std::vector<size_t>& cuts) {
  ChunkedDecoder d;
  Decoded out;
  size_t pos = 0;
  std::vector<size_t> all = cuts;
  all.push_back(s.size());
  for (size_t cut : all) {
    if (!d.feed(s.substr(pos, cut - pos), &out.payload).ok()) out.ok = false;
    pos = cut;
  }
  out.done = d.done();
  return out;
}

TEST(BenchServeChunked, RfcExample) {
  // RFC 9112 7.1 style: "Wiki" "pedia" " in\r\n\r\nchunks." then the last chunk.
  const Decoded d = decode_in_pieces("4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n", {});
  EXPECT_TRUE(d.ok);
  EXPECT_TRUE(d.done);
  EXPECT_EQ(d.payload, "Wikipedia in\r\n\r\nchunks.");
}

TEST(BenchServeChunked, RandomPayloadsRoundTripAtAnySplit) {
  std::mt19937_64 rng(99);
  for (int iter = 0; iter < 1000; ++iter) {
    std::string payload(rng() % 300, '\0');
    for (char& c : payload) c = static_cast<char>(rng() & 0xFF);
    const std::string enc = chunk_encode(payload, rng);
    const Decoded d = decode_in_pieces(enc, random_cuts(enc.size(), rng));
    ASSERT_TRUE(d.ok) << iter;
    ASSERT_TRUE(d.done) << iter;
    ASSERT_EQ(d.payload, payload) << iter;
    // Without its last bytes the body is not done (the connection closed early).
    const Decoded cut = decode_in_pieces(std::string_view(enc).substr(0, enc.size() - 1), {});
    EXPECT_FALSE(cut.done);
  }
}

TEST(BenchServeChunkedRobust, MalformedFramingIsAnError) {
  for (const char* bad : {"zz\r\n", "\r\n", "5\r\nhelloX\r\n", "FFFFFFFFFFFFFFFFFFFF\r\n", ";ext\r\n"}) {
    const Decoded d = decode_in_pieces(bad, {});
    EXPECT_FALSE(d.ok) << bad;
  }
  std::string long_ext = "5;" + std::string(10000, 'e') + "\r\nhello\r\n0\r\n\r\n";
  EXPECT_FALSE(decode_in_pieces(long_ext, {}).ok);
}

TEST(BenchServeChunkedFuzz, RandomBytesDecodeTheSameAtAnySplit) {
  std::mt19937_64 rng(3);
  const std::string alphabet = "0123456789abcdefABCDEF;=\r\n\r\n xyz";
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s;
    const size_t n = rng() % 120;
    for (size_t i = 0; i < n; ++i) s += rng() % 10 == 0 ? static_cast<char>(rng() & 0xFF) : alphabet[rng() % alphabet.size()];
    const Decoded whole = decode_in_pieces(s, {});
    const Decoded split = decode_in_pieces(s, random_cuts(s.size(), rng));
    ASSERT_EQ(whole.ok, split.ok) << iter;
    ASSERT_EQ(whole.done, split.done) << iter;
    if (whole.ok) {
      ASSERT_EQ(whole.payload, split.payload) << iter;
    }
  }
}

// ---- percentiles and summaries ----------------------------------------------------------------

// The definition, written out: sort everything, rank = p/100 (n-1), interpolate linearly.
double naive_percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  if (lo + 1 >= v.size()) return v.back();
  return v[lo] + (v[lo + 1] - v[lo]) * (rank - static_cast<double>(lo));
}

TEST(BenchServeStats, PercentileKnownValues) {
  // numpy.percentile([1, 2, 3, 4], 50) == 2.5; numpy.percentile(range(1, 11), 90) == 9.1.
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 50), 2.5);
  EXPECT_NEAR(percentile({10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, 90), 9.1, 1e-12);
  EXPECT_DOUBLE_EQ(percentile({5}, 99), 5);
  EXPECT_DOUBLE_EQ(percentile({3, 1, 2}, 0), 1);
  EXPECT_DOUBLE_EQ(percentile({3, 1, 2}, 100), 3);
  EXPECT_TRUE(std::isnan(percentile({}, 50)));
}

TEST(BenchServeStats, PercentileMatchesNaiveSort) {
  std::mt19937_64 rng(11);
  for (int iter = 0; iter < 500; ++iter) {
    std::vector<double> v(1 + rng() % 300);
    const bool ties = iter % 3 == 0;
    for (double& x : v) x = ties ? static_cast<double>(rng() % 5) : std::ldexp(static_cast<double>(rng() >> 11), -40);
    for (double p : {0.0, 1.0, 10.0, 25.0, 50.0, 90.0, 99.0, 99.9, 100.0, static_cast<double>(rng() % 10001) / 100.0}) {
      const double ref = naive_percentile(v, p);
      ASSERT_NEAR(percentile(v, p), ref, 1e-12 * (1 + std::fabs(ref))) << "n " << v.size() << " p " << p;
    }
  }
}

TEST(BenchServeStats, SummaryMatchesDefinitions) {
  std::mt19937_64 rng(12);
  std::vector<double> v(1000);
  for (double& x : v) x = static_cast<double>(rng() % 100000) / 7.0;
  const Summary s = summarize(v);
  double sum = 0, sq = 0;
  for (double x : v) sum += x;
  const double mean = sum / v.size();
  for (double x : v) sq += (x - mean) * (x - mean);
  EXPECT_EQ(s.count, 1000);
  EXPECT_NEAR(s.mean, mean, 1e-9 * mean);
  EXPECT_NEAR(s.stddev, std::sqrt(sq / v.size()), 1e-9 * mean);
  EXPECT_EQ(s.min, *std::min_element(v.begin(), v.end()));
  EXPECT_EQ(s.max, *std::max_element(v.begin(), v.end()));
  EXPECT_DOUBLE_EQ(s.p50, naive_percentile(v, 50));
  EXPECT_DOUBLE_EQ(s.p90, naive_percentile(v, 90));
  EXPECT_DOUBLE_EQ(s.p99, naive_percentile(v, 99));
  EXPECT_LE(s.min, s.p50);
  EXPECT_LE(s.p50, s.p90);
  EXPECT_LE(s.p90, s.p99);
  EXPECT_LE(s.p99, s.max);
  const Summary empty = summarize({});
  EXPECT_EQ(empty.count, 0);
  EXPECT_TRUE(std::isnan(empty.p50) && std::isnan(empty.mean));
}

// ---- random numbers and arrivals --------------------------------------------------------------

TEST(BenchServeRng, UnitIntervalIsOpenAtZeroAndIntsStayInRange) {
  Rng rng(1);
  for (int i = 0; i < 100000; ++i) {
    const double u = rng.next_open_unit();
    ASSERT_GT(u, 0.0);
    ASSERT_LE(u, 1.0);
  }
  for (int i = 0; i < 100000; ++i) {
    const int64_t x = rng.next_int(-3, 5);
    ASSERT_GE(x, -3);
    ASSERT_LE(x, 5);
  }
  EXPECT_EQ(rng.next_int(7, 7), 7);
}

TEST(BenchServeRng, IntsAreUniform) {
  // Chi-square over 10 buckets, 100k draws: the 0.999 quantile with 9 dof is 27.88.
  Rng rng(2);
  std::vector<int> counts(10, 0);
  const int n = 100000;
  for (int i = 0; i < n; ++i) ++counts[static_cast<size_t>(rng.next_int(0, 9))];
  double chi2 = 0;
  for (int c : counts) chi2 += (c - n / 10.0) * (c - n / 10.0) / (n / 10.0);
  EXPECT_LT(chi2, 27.88);
}

TEST(BenchServeRng, SameSeedSameSequence) {
  Rng a(42), b(42), c(43);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.next_u64();
    EXPECT_EQ(x, b.next_u64());
    differs |= x != c.next_u64();
  }
  EXPECT_TRUE(differs);
}

TEST(BenchServePoisson, InterArrivalMomentsAndKsDistance) {
  const double rate = 4.0;
  const int64_t n = 200000;
  const std::vector<double> t = poisson_arrivals(n, rate, 12345);
  ASSERT_EQ(static_cast<int64_t>(t.size()), n);
  std::vector<double> gaps(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) gaps[static_cast<size_t>(i)] = t[static_cast<size_t>(i)] - (i ? t[static_cast<size_t>(i - 1)] : 0.0);
  for (double g : gaps) ASSERT_GT(g, 0.0);
  double sum = 0;
  for (double g : gaps) sum += g;
  const double mean = sum / n;
  double sq = 0;
  for (double g : gaps) sq += (g - mean) * (g - mean);
  const double var = sq / (n - 1);
  // Exponential(rate): mean 1/rate, variance 1/rate^2; the sample mean's standard error is
  // (1/rate)/sqrt(n), the sample variance's sqrt((mu4 - sigma^4)/n) = sqrt(8/n)/rate^2 (mu4 = 9/rate^4).
  EXPECT_NEAR(mean, 1 / rate, 5 * (1 / rate) / std::sqrt(static_cast<double>(n)));
  EXPECT_NEAR(var, 1 / (rate * rate), 5 * std::sqrt(8.0 / n) / (rate * rate));
  // Kolmogorov-Smirnov distance to F(x) = 1 - exp(-rate x); 1.95/sqrt(n) is the 0.001 critical value.
  std::sort(gaps.begin(), gaps.end());
  double d = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double f = 1 - std::exp(-rate * gaps[static_cast<size_t>(i)]);
    d = std::max({d, std::fabs(f - static_cast<double>(i) / n), std::fabs(static_cast<double>(i + 1) / n - f)});
  }
  EXPECT_LT(d, 1.95 / std::sqrt(static_cast<double>(n)));
}

TEST(BenchServePoisson, CountsPerIntervalHaveEqualMeanAndVariance) {
  // For a Poisson process the number of arrivals in unit windows is Poisson(rate): dispersion 1.
  const double rate = 10.0;
  const std::vector<double> t = poisson_arrivals(100000, rate, 777);
  const int windows = static_cast<int>(t.back()) - 1;
  std::vector<int> counts(static_cast<size_t>(windows), 0);
  for (double x : t)
    if (static_cast<int>(x) < windows) ++counts[static_cast<size_t>(x)];
  double sum = 0, sq = 0;
  for (int c : counts) sum += c;
  const double mean = sum / windows;
  for (int c : counts) sq += (c - mean) * (c - mean);
  const double var = sq / (windows - 1);
  EXPECT_NEAR(mean, rate, 5 * std::sqrt(rate / windows));
  EXPECT_NEAR(var / mean, 1.0, 0.1);  // dispersion index; its standard error is ~sqrt(2/windows) = 0.014
}

TEST(BenchServePoisson, InfiniteRateSendsAllAtOnceAndSeedsReproduce) {
  for (double r : {std::numeric_limits<double>::infinity(), 0.0, -1.0}) {
    const std::vector<double> t = poisson_arrivals(10, r, 1);
    ASSERT_EQ(t.size(), 10u);
    for (double x : t) EXPECT_EQ(x, 0.0);
  }
  EXPECT_EQ(poisson_arrivals(50, 2.0, 9), poisson_arrivals(50, 2.0, 9));
  EXPECT_NE(poisson_arrivals(50, 2.0, 9), poisson_arrivals(50, 2.0, 10));
  const std::vector<double> t = poisson_arrivals(1000, 3.0, 5);
  EXPECT_TRUE(std::is_sorted(t.begin(), t.end()));
  EXPECT_GT(t.front(), 0.0);
}

// ---- Prometheus text --------------------------------------------------------------------------

TEST(BenchServeProm, DocumentationExample) {
  // From https://prometheus.io/docs/instrumenting/exposition_formats/ (text format example).
  const std::string text =
      "# HELP http_requests_total The total number of HTTP requests.\n"
      "# TYPE http_requests_total counter\n"
      "http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n"
      "http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n"
      "\n"
      "# Escaping in label values:\n"
      "msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n"
      "\n"
      "# Minimalistic line:\n"
      "metric_without_timestamp_and_labels 12.47\n"
      "\n"
      "# A weird metric from before the epoch:\n"
      "something_weird{problem=\"division by zero\"} +Inf -3982045\n"
      "\n"
      "# A histogram, which has a pretty complex representation in the text format:\n"
      "# HELP http_request_duration_seconds A histogram of the request duration.\n"
      "# TYPE http_request_duration_seconds histogram\n"
      "http_request_duration_seconds_bucket{le=\"0.05\"} 24054\n"
      "http_request_duration_seconds_bucket{le=\"+Inf\"} 144320\n"
      "http_request_duration_seconds_sum 53423\n"
      "http_request_duration_seconds_count 144320\n";
  const std::vector<PromSample> s = parse_prometheus_text(text);
  ASSERT_EQ(s.size(), 9u);
  EXPECT_EQ(s[0].name, "http_requests_total");
  EXPECT_EQ(s[0].labels, "method=\"post\",code=\"200\"");
  EXPECT_EQ(s[0].value, 1027);
  EXPECT_EQ(s[1].value, 3);
  EXPECT_EQ(s[2].name, "msdos_file_access_time_seconds");
  EXPECT_EQ(s[2].value, 1.458255915e9);
  EXPECT_EQ(s[3].name, "metric_without_timestamp_and_labels");
  EXPECT_EQ(s[3].value, 12.47);
  EXPECT_TRUE(std::isinf(s[4].value));
  EXPECT_EQ(s[6].labels, "le=\"+Inf\"");
  EXPECT_EQ(s[8].value, 144320);
}

TEST(BenchServeProm, PeaksOfTrackedGaugesOnly) {
  MetricPeaks peaks;
  auto scrape = [&](int running, int used) {
    peaks.observe(parse_prometheus_text(
        "nibble_num_requests_running " + std::to_string(running) + "\n" +
        "nibble_kv_blocks_used{pool=\"gpu\"} " + std::to_string(used) + "\n" +
        "nibble_requests_running_total 999\n"        // a counter: not a gauge
        "nibble_ttft_seconds_bucket{le=\"1\"} 500\n"  // histogram series: skipped
        "other_running 77\n"));                        // not ours
  };
  scrape(3, 10);
  scrape(7, 4);
  scrape(2, 25);
  EXPECT_EQ(peaks.num_scrapes(), 3);
  EXPECT_EQ(peaks.peak_of("nibble_num_requests_running", "running"), 7);
  EXPECT_EQ(peaks.last_of("nibble_num_requests_running", "running"), 2);
  EXPECT_EQ(peaks.peak_of("nibble_kv_blocks_used", "kv_blocks_used"), 25);  // found with labels too
  EXPECT_EQ(peaks.peaks().size(), 2u);
  EXPECT_DOUBLE_EQ(pick_series(peaks.means(), "nibble_num_requests_running", "running"), 4.0);  // (3 + 7 + 2) / 3
  EXPECT_DOUBLE_EQ(pick_series(peaks.means(), "nibble_kv_blocks_used", "kv_blocks_used"), 13.0);
  EXPECT_TRUE(std::isnan(peaks.peak_of("nibble_missing", "missing")));
  // A server that names the gauge differently is still found by the pattern.
  MetricPeaks other;
  other.observe(parse_prometheus_text("nibble_running_requests 5\nnibble_scheduler_kv_blocks_used 9\n"));
  EXPECT_EQ(other.peak_of("nibble_num_requests_running", "running"), 5);
  EXPECT_EQ(other.peak_of("nibble_kv_blocks_used", "kv_blocks_used"), 9);
}

TEST(BenchServePromRobust, GarbageLinesAreSkipped) {
  std::mt19937_64 rng(5);
  const std::string alphabet = "nibble_running{}=\" \\\n0123.e+Inf#";
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s;
    for (size_t i = 0, n = rng() % 100; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    MetricPeaks p;
    p.observe(parse_prometheus_text(s));  // must not crash; values are whatever parsed
  }
  const std::vector<PromSample> s = parse_prometheus_text("a{x=\"}\" 1\nb 2 3 4\nc{y=\"1\"} nope\n{z} 1\nok 5\n");
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].name, "b");
  EXPECT_EQ(s[1].name, "ok");
}

// ---- URLs -------------------------------------------------------------------------------------

TEST(BenchServeUrl, ParsesHostPortAndPath) {
  auto u = parse_url("http://127.0.0.1:8080");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 8080);
  EXPECT_EQ(u->base_path, "");
  u = parse_url("http://localhost/api/");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->port, 80);
  EXPECT_EQ(u->base_path, "/api");
  u = parse_url("HTTP://[::1]:9000/x");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 9000);
  EXPECT_EQ(u->base_path, "/x");
  for (const char* bad : {"https://x", "ftp://x", "http://", "http://:80", "http://x:0", "http://x:65536", "http://x:12a",
                          "http://[::1", "127.0.0.1:8080"}) {
    EXPECT_FALSE(parse_url(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace nb::bench_serve
