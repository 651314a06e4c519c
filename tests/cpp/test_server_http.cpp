// HTTP request parser and response framing (server/http.h).
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "server/http.h"

namespace nb::server {
namespace {

// Parses a whole buffer in one call.
ParseResult parse_all(std::string_view buf, HttpRequest* out, HttpLimits limits = {}) {
  HttpRequestParser p(limits);
  ParseResult r = p.parse(buf);
  if (r.state == ParseState::kComplete) *out = p.take();
  return r;
}

TEST(HttpParser, ParsesRequestLineHeadersAndBody) {
  const std::string raw =
      "POST /v1/completions?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
      "X-Mixed-Case:   padded value \t\r\nContent-Length: 11\r\n\r\n{\"a\": true}";
  HttpRequest req;
  const ParseResult r = parse_all(raw, &req);
  ASSERT_EQ(r.state, ParseState::kComplete) << r.error_message;
  EXPECT_EQ(r.consumed, raw.size());
  EXPECT_EQ(req.method, "POST");
  EXPECT_EQ(req.target, "/v1/completions?x=1");
  EXPECT_EQ(req.path, "/v1/completions");
  EXPECT_EQ(req.version_minor, 1);
  ASSERT_NE(req.header("x-mixed-case"), nullptr);
  EXPECT_EQ(*req.header("x-mixed-case"), "padded value");
  EXPECT_EQ(*req.header("content-type"), "application/json");
  EXPECT_EQ(req.header("Content-Type"), nullptr);  // lookups use lower-case names
  EXPECT_EQ(req.body, "{\"a\": true}");
  EXPECT_TRUE(req.keep_alive);
  EXPECT_FALSE(req.expect_continue);
}

TEST(HttpParser, KeepAliveRules) {
  HttpRequest req;
  ASSERT_EQ(parse_all("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n", &req).state,
            ParseState::kComplete);
  EXPECT_FALSE(req.keep_alive);
  ASSERT_EQ(parse_all("GET / HTTP/1.0\r\n\r\n", &req).state, ParseState::kComplete);  // 1.0 needs no Host
  EXPECT_FALSE(req.keep_alive);
  EXPECT_EQ(req.version_minor, 0);
  ASSERT_EQ(parse_all("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &req).state, ParseState::kComplete);
  EXPECT_TRUE(req.keep_alive);
}

TEST(HttpParser, BareLineFeedsAndLeadingEmptyLines) {
  HttpRequest req;
  const std::string raw = "\r\n\r\nPOST /x HTTP/1.1\nHost: a\nContent-Length: 2\n\nhi";
  const ParseResult r = parse_all(raw, &req);
  ASSERT_EQ(r.state, ParseState::kComplete) << r.error_message;
  EXPECT_EQ(r.consumed, raw.size());
  EXPECT_EQ(req.body, "hi");
}

TEST(HttpParser, ByteAtATimeEqualsWholeBuffer) {
  const std::string raw =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"
      "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  HttpRequestParser p;
  bool saw_head = false;
  size_t i = 1;
  ParseResult r;
  for (; i <= raw.size(); ++i) {
    r = p.parse(std::string_view(raw).substr(0, i));
    ASSERT_NE(r.state, ParseState::kError) << r.error_message;
    if (r.state == ParseState::kHeadComplete) {
      saw_head = true;
      EXPECT_TRUE(p.request().expect_continue);
    }
    if (r.state == ParseState::kComplete) break;
  }
  ASSERT_EQ(r.state, ParseState::kComplete);
  EXPECT_TRUE(saw_head);
  const HttpRequest first = p.take();
  EXPECT_EQ(first.body, "hello");
  EXPECT_EQ(r.consumed, i);
  // The pipelined second request parses from where the first ended.
  const ParseResult r2 = p.parse(std::string_view(raw).substr(r.consumed));
  ASSERT_EQ(r2.state, ParseState::kComplete);
  EXPECT_EQ(p.take().path, "/next");
}

struct BadCase {
  const char* name;
  std::string raw;
  int status;
};

TEST(HttpParser, RejectsMalformedRequestsWithTheRightStatus) {
  const std::vector<BadCase> cases = {
      {"no version", "GET /\r\n\r\n", 400},
      {"extra space", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"lower-case version", "GET / http/1.1\r\nHost: a\r\n\r\n", 400},
      {"HTTP/2", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
      {"absolute target", "GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"control in target", "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"bad method char", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"no host on 1.1", "GET / HTTP/1.1\r\n\r\n", 400},
      {"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},
      {"no colon", "GET / HTTP/1.1\r\nHost a\r\n\r\n", 400},
      {"folded header", "GET / HTTP/1.1\r\nHost: a\r\n  b\r\n\r\n", 400},
      {"nul in value", std::string("GET / HTTP/1.1\r\nHost: a") + '\0' + "b\r\n\r\n", 400},
      {"bad length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", 400},
      {"negative length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
      {"conflicting lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400},
      {"huge length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
      {"chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
      {"body too large", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n", 413},
  };
  for (const BadCase& c : cases) {
    HttpRequest req;
    const ParseResult r = parse_all(c.raw, &req);
    EXPECT_EQ(r.state, ParseState::kError) << c.name;
    EXPECT_EQ(r.error_status, c.status) << c.name << ": " << r.error_message;
    EXPECT_FALSE(r.error_message.empty()) << c.name;
  }
}

TEST(HttpParser, EqualDuplicateContentLengthIsAccepted) {
  HttpRequest req;
  const ParseResult r = parse_all("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok", &req);
  ASSERT_EQ(r.state, ParseState::kComplete) << r.error_message;
  EXPECT_EQ(req.body, "ok");
}

TEST(HttpParser, HeadLimitsGive431EvenWithoutTheBlankLine) {
  HttpLimits lim;
  lim.max_head_bytes = 256;
  lim.max_headers = 4;
  HttpRequest req;
  const std::string long_head = "GET / HTTP/1.1\r\nHost: a\r\nX: " + std::string(300, 'a');
  ParseResult r = parse_all(long_head, &req, lim);  // no end of head yet, already too long
  EXPECT_EQ(r.state, ParseState::kError);
  EXPECT_EQ(r.error_status, 431);
  std::string many = "GET / HTTP/1.1\r\nHost: a\r\n";
  for (int i = 0; i < 5; ++i) many += "X-" + std::to_string(i) + ": v\r\n";
  r = parse_all(many + "\r\n", &req, lim);
  EXPECT_EQ(r.state, ParseState::kError);
  EXPECT_EQ(r.error_status, 431);
  // Exactly at the header count limit is fine.
  std::string four = "GET / HTTP/1.1\r\nHost: a\r\n";
  for (int i = 0; i < 3; ++i) four += "X-" + std::to_string(i) + ": v\r\n";
  r = parse_all(four + "\r\n", &req, lim);
  EXPECT_EQ(r.state, ParseState::kComplete) << r.error_message;
}

TEST(HttpParser, OversizedBodyIsRejectedFromTheHeadAlone) {
  HttpLimits lim;
  lim.max_body_bytes = 10;
  HttpRequestParser p(lim);
  const ParseResult r = p.parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n");  // no body sent yet
  EXPECT_EQ(r.state, ParseState::kError);
  EXPECT_EQ(r.error_status, 413);
}

// Builds a request from random valid parts; the parser must give the parts back.
TEST(HttpParser, RoundTripsRandomValidRequests) {
  std::mt19937 rng(7);
  const std::string tchars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
  auto token = [&](size_t n) {
    std::string s;
    for (size_t i = 0; i < n; ++i) s += tchars[rng() % tchars.size()];
    return s;
  };
  for (int iter = 0; iter < 500; ++iter) {
    const std::string method = token(1 + rng() % 7);
    const std::string path = "/" + token(rng() % 20);
    std::vector<std::pair<std::string, std::string>> headers = {{"host", "h" + token(3)}};
    const int num_extra = static_cast<int>(rng() % 6);
    for (int i = 0; i < num_extra; ++i) {
      std::string value;
      for (size_t k = rng() % 30; k > 0; --k) value += static_cast<char>(0x21 + rng() % 0x5e);
      headers.emplace_back("x-" + std::to_string(i) + token(rng() % 5), value);
    }
    std::string body;
    for (size_t k = rng() % 200; k > 0; --k) body += static_cast<char>(rng() % 256);
    std::string raw = method + " " + path + " HTTP/1.1\r\n";
    for (auto& [n, v] : headers) raw += n + ": " + v + "\r\n";
    raw += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    HttpRequest req;
    const ParseResult r = parse_all(raw, &req);
    ASSERT_EQ(r.state, ParseState::kComplete) << r.error_message << "\n" << raw;
    EXPECT_EQ(req.method, method);
    EXPECT_EQ(req.path, path);
    EXPECT_EQ(req.body, body);
    ASSERT_EQ(req.headers.size(), headers.size() + 1);
    for (size_t i = 0; i < headers.size(); ++i) {
      std::string lower = headers[i].first;
      for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      EXPECT_EQ(req.headers[i].first, lower);
      EXPECT_EQ(req.headers[i].second, headers[i].second);
    }
  }
}

// Random bytes, truncations and single-byte mutations of valid requests: the parser must return
// one of its states (never crash or read out of bounds; ASan checks the latter), and a complete
// parse must never claim more bytes than it was given.
TEST(HttpParserFuzz, GarbageTruncationsAndMutationsNeverCrash) {
  std::mt19937 rng(11);
  const std::vector<std::string> seeds = {
      "POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody",
      "GET /health HTTP/1.0\r\n\r\n",
      "\r\nGET / HTTP/1.1\nHost: x\nExpect: 100-continue\nContent-Length: 0\n\n",
  };
  HttpLimits lim;
  lim.max_head_bytes = 512;
  lim.max_body_bytes = 64;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string buf;
    switch (iter % 3) {
      case 0:  // pure garbage, biased towards HTTP-ish bytes
        for (size_t k = rng() % 600; k > 0; --k) {
          const char pool[] = "GETPOST /:\r\n HTTP/1.1 Content-Length 0123456789\t\x00\xff";
          buf += pool[rng() % (sizeof(pool) - 1)];
        }
        break;
      case 1: {  // truncation
        const std::string& s = seeds[rng() % seeds.size()];
        buf = s.substr(0, rng() % (s.size() + 1));
        break;
      }
      default: {  // mutation
        buf = seeds[rng() % seeds.size()];
        for (int m = 1 + static_cast<int>(rng() % 3); m > 0; --m) buf[rng() % buf.size()] = static_cast<char>(rng() % 256);
        break;
      }
    }
    HttpRequestParser p(lim);
    // Feed in random-sized steps, as a socket would.
    size_t fed = 0;
    ParseResult r;
    while (fed < buf.size()) {
      fed = std::min(buf.size(), fed + 1 + rng() % 40);
      r = p.parse(std::string_view(buf).substr(0, fed));
      if (r.state == ParseState::kError || r.state == ParseState::kComplete) break;
    }
    if (r.state == ParseState::kComplete) {
      EXPECT_LE(r.consumed, fed);
      const HttpRequest req = p.take();
      EXPECT_LE(req.body.size(), lim.max_body_bytes);
    }
    if (r.state == ParseState::kError) {
      EXPECT_TRUE(r.error_status == 400 || r.error_status == 413 || r.error_status == 431 ||
                  r.error_status == 501 || r.error_status == 505)
          << r.error_status;
    }
  }
}

TEST(HttpResponse, FixedLengthResponseLayout) {
  const std::string r = http_response(404, "application/json", "{}", true, {"X-A: b"});
  EXPECT_EQ(r,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            "Connection: keep-alive\r\nX-A: b\r\n\r\n{}");
}

// Decodes a chunked body independently of the encoder: size line in hex, data, CRLF, until 0.
std::string dechunk(std::string_view s, bool* ok) {
  std::string out;
  *ok = false;
  for (;;) {
    const size_t eol = s.find("\r\n");
    if (eol == std::string_view::npos) return out;
    const size_t n = std::stoul(std::string(s.substr(0, eol)), nullptr, 16);
    s.remove_prefix(eol + 2);
    if (n == 0) {
      *ok = s == "\r\n";
      return out;
    }
    if (s.size() < n + 2 || s.substr(n, 2) != "\r\n") return out;
    out += s.substr(0, n);
    s.remove_prefix(n + 2);
  }
}

TEST(HttpResponse, ChunkedSseFramingDecodesToTheEvents) {
  std::string body;
  std::string expect;
  for (const char* data : {"{\"a\":1}", "{\"text\":\"\xc3\xa9\"}", "[DONE]"}) {
    const std::string ev = sse_event(data);
    EXPECT_EQ(ev, std::string("data: ") + data + "\n\n");
    expect += ev;
    body += http_chunk(ev);
  }
  EXPECT_EQ(http_chunk(""), "");  // an empty chunk would end the body early
  body += http_last_chunk();
  bool ok = false;
  EXPECT_EQ(dechunk(body, &ok), expect);
  EXPECT_TRUE(ok);
  const std::string head = http_stream_head(200, "text/event-stream", true, true);
  EXPECT_NE(head.find("Transfer-Encoding: chunked\r\n"), std::string::npos);
  EXPECT_EQ(head.find("Content-Length"), std::string::npos);
  EXPECT_EQ(head.substr(head.size() - 4), "\r\n\r\n");
}

}  // namespace
}  // namespace nb::server
