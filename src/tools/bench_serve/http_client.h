// A minimal blocking HTTP/1.1 client for the load generator: one connection per request
// ("Connection: close"), plain http only, the response body handed over as it arrives (decoded
// from chunked transfer coding when the server uses it) with the time each piece was received.
// Every wait is bounded by the request's deadline; every failure is a Status, never a crash.
#pragma once
#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace nb::bench_serve {

using Clock = std::chrono::steady_clock;

struct Url {
  std::string host;       // a name, an IPv4 address, or an IPv6 address without brackets
  int port = 80;
  std::string base_path;  // "" or "/prefix" (no trailing slash): endpoints are appended to it
};
// Parses "http://HOST[:PORT][/PATH]" ("[::1]" for IPv6 literals). https is refused with a hint.
Result<Url> parse_url(std::string_view text);

struct HttpRequest {
  std::string method = "GET";
  std::string path = "/";  // absolute path, sent as is
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers (Content-Type, auth)
  double timeout_s = 60;  // deadline for the whole exchange, connect included
};

struct HttpResponseHead {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  const std::string* find(std::string_view lower_name) const;
};

// Called with each decoded piece of the body and the time its bytes were read from the socket.
// Return false to stop reading (the connection is closed; http_fetch then returns OK).
using BodyCallback = std::function<bool(std::string_view bytes, Clock::time_point received)>;

// Sends `request` and streams the response: on_head once with the status line and headers,
// then on_body for the body. Errors: connect failures, timeouts, a malformed status line,
// headers or chunked framing, a body shorter than its Content-Length.
Status http_fetch(const Url& url, const HttpRequest& request,
                  const std::function<void(const HttpResponseHead&)>& on_head, const BodyCallback& on_body);

// Convenience for small responses (GET /metrics, /v1/models): the whole body, capped at max_bytes.
struct HttpSimpleResponse {
  int status = 0;
  std::string body;
};
Result<HttpSimpleResponse> http_get(const Url& url, const std::string& path, double timeout_s,
                                    size_t max_bytes = 8u << 20,
                                    const std::vector<std::pair<std::string, std::string>>& headers = {});

}  // namespace nb::bench_serve
