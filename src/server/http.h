// HTTP/1.1 message handling for the server: an incremental request parser with hard limits, and
// the byte layouts of responses (fixed-length, chunked, server-sent events).
//
// What the parser accepts (RFC 9112, the subset a JSON API needs): a request line
// "METHOD SP target SP HTTP/1.x", header fields "name: value", and a body delimited by
// Content-Length. It rejects what it does not implement rather than guessing: Transfer-Encoding
// (501), obsolete line folding, whitespace before the colon, conflicting Content-Length values
// (400). Lines may end in CRLF or a bare LF (clients in the wild send both). Limits: the request
// line plus headers (431), the header count (431), the body (413, reported as soon as the
// Content-Length header is read, before the body arrives).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace nb::server {

struct HttpLimits {
  size_t max_head_bytes = 16 * 1024;     // request line + headers
  size_t max_headers = 100;
  size_t max_body_bytes = 1024 * 1024;
};

struct HttpRequest {
  std::string method;   // as sent (methods are case-sensitive)
  std::string target;   // the request target, e.g. "/v1/models?x=1"
  std::string path;     // target without the query string
  int version_minor = 1;  // HTTP/1.<minor>
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased, values trimmed
  std::string body;
  bool keep_alive = true;       // from the version and the Connection header
  bool expect_continue = false;  // "Expect: 100-continue"

  // The first header with this (lower-case) name, or nullptr.
  const std::string* header(std::string_view lower_name) const;
};

enum class ParseState { kIncomplete, kHeadComplete, kComplete, kError };

struct ParseResult {
  ParseState state = ParseState::kIncomplete;
  size_t consumed = 0;       // kComplete: bytes of the buffer this request used
  int error_status = 0;      // kError: the HTTP status to answer with (400, 413, 431, 501, 505)
  std::string error_message; // kError: what was wrong, for the error body
};

// Parses one request from the front of a buffer that grows as bytes arrive. Call parse() again
// with the whole buffer (same start, more bytes) until it returns kComplete or kError; the parser
// remembers how far it has scanned, so a client trickling bytes costs O(n) overall. kHeadComplete
// means the head is parsed (request() shows it) and the body is still arriving (the server may
// answer "100 Continue"). After kComplete, take() the request; the parser is then reset for the
// next one, which starts `consumed` bytes into the buffer.
class HttpRequestParser {
 public:
  explicit HttpRequestParser(HttpLimits limits = {}) : limits_(limits) {}
  ParseResult parse(std::string_view buf);
  const HttpRequest& request() const { return req_; }
  HttpRequest take();  // moves the request out and resets the parser
  void reset();

 private:
  ParseResult parse_head(std::string_view head);

  HttpLimits limits_;
  HttpRequest req_;
  size_t scanned_ = 0;      // bytes already searched for the end of the head
  size_t head_len_ = 0;     // bytes of the head including the blank line; 0 until found
  size_t content_length_ = 0;
};

// Standard reason phrase ("OK", "Not Found"); "Unknown" for codes it does not list.
const char* http_reason(int status);

// A complete response with a Content-Length body. `extra_headers` are full lines without CRLF.
std::string http_response(int status, std::string_view content_type, std::string_view body, bool keep_alive,
                          const std::vector<std::string>& extra_headers = {});

// The head of a streamed response. With chunked = true (HTTP/1.1) the body must be written as
// http_chunk() pieces ending with http_last_chunk(); otherwise the body ends when the server
// closes the connection.
std::string http_stream_head(int status, std::string_view content_type, bool chunked, bool keep_alive);
std::string http_chunk(std::string_view data);  // empty data gives an empty string (not the last chunk)
std::string_view http_last_chunk();

// One server-sent event carrying `data` (which must not contain a newline; JSON from dump() does not).
std::string sse_event(std::string_view data);

}  // namespace nb::server
