#include "server/http.h"

#include <cstdio>

namespace nb::server {
namespace {

// RFC 9110 tchar: the characters of a method or header name.
bool is_tchar(unsigned char c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-': case '.':
    case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

char to_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (to_lower(a[i]) != to_lower(b[i])) return false;
  }
  return true;
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Whether a comma-separated header value (Connection) lists `token`, case-insensitively.
bool list_has_token(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    const size_t comma = value.find(',');
    if (iequals(trim_ows(value.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

ParseResult error(int status, std::string message) {
  ParseResult r;
  r.state = ParseState::kError;
  r.error_status = status;
  r.error_message = std::move(message);
  return r;
}

}  // namespace

const std::string* HttpRequest::header(std::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return &value;
  }
  return nullptr;
}

void HttpRequestParser::reset() {
  req_ = HttpRequest{};
  scanned_ = 0;
  head_len_ = 0;
  content_length_ = 0;
}

HttpRequest HttpRequestParser::take() {
  HttpRequest out = std::move(req_);
  reset();
  return out;
}

ParseResult HttpRequestParser::parse(std::string_view buf) {
  if (head_len_ == 0) {
    // RFC 9112 2.2: ignore empty lines before the request line (some clients send a CRLF after a body).
    size_t start = 0;
    while (start < buf.size() && (buf[start] == '\r' || buf[start] == '\n')) ++start;
    if (start > limits_.max_head_bytes) return error(400, "too many empty lines before the request line");
    size_t end = 0;
    for (size_t i = std::max(start, scanned_); i < buf.size(); ++i) {
      if (buf[i] != '\n') continue;
      if (i + 1 < buf.size() && buf[i + 1] == '\n') { end = i + 2; break; }
      if (i + 2 < buf.size() && buf[i + 1] == '\r' && buf[i + 2] == '\n') { end = i + 3; break; }
    }
    if (end == 0) {
      // A "\n\r" at the very end may still become the blank line: rescan the last bytes next time.
      scanned_ = buf.size() >= 2 ? buf.size() - 2 : 0;
      if (buf.size() - start > limits_.max_head_bytes) {
        return error(431, "the request line and headers exceed " + std::to_string(limits_.max_head_bytes) + " bytes");
      }
      return {};
    }
    if (end - start > limits_.max_head_bytes) {
      return error(431, "the request line and headers exceed " + std::to_string(limits_.max_head_bytes) + " bytes");
    }
    ParseResult head = parse_head(buf.substr(start, end - start));
    if (head.state == ParseState::kError) return head;
    head_len_ = end;
  }
  if (buf.size() - head_len_ < content_length_) {
    ParseResult r;
    r.state = ParseState::kHeadComplete;
    return r;
  }
  req_.body.assign(buf.substr(head_len_, content_length_));
  ParseResult r;
  r.state = ParseState::kComplete;
  r.consumed = head_len_ + content_length_;
  return r;
}

ParseResult HttpRequestParser::parse_head(std::string_view head) {
  std::vector<std::string_view> lines;
  while (!head.empty()) {
    const size_t nl = head.find('\n');
    std::string_view line = head.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    for (char c : line) {
      if (c == '\r' || c == '\0') return error(400, "stray CR or NUL byte in the request head");
    }
    if (line.empty()) break;  // the blank line that ends the head
    lines.push_back(line);
    if (nl == std::string_view::npos) break;
    head.remove_prefix(nl + 1);
  }
  if (lines.empty()) return error(400, "missing request line");

  // Request line: METHOD SP target SP HTTP/1.x
  const std::string_view rl = lines[0];
  const size_t sp1 = rl.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : rl.find(' ', sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos || rl.find(' ', sp2 + 1) != std::string_view::npos) {
    return error(400, "malformed request line; expected 'METHOD /path HTTP/1.1'");
  }
  const std::string_view method = rl.substr(0, sp1);
  const std::string_view target = rl.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = rl.substr(sp2 + 1);
  if (method.empty()) return error(400, "empty method in the request line");
  for (unsigned char c : method) {
    if (!is_tchar(c)) return error(400, "invalid character in the method");
  }
  if (target.empty() || target[0] != '/') return error(400, "the request target must be a path starting with '/'");
  for (unsigned char c : target) {
    if (c <= 0x20 || c == 0x7f) return error(400, "invalid character in the request target");
  }
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' || version[5] < '0' ||
      version[5] > '9' || version[7] < '0' || version[7] > '9') {
    return error(400, "malformed HTTP version in the request line");
  }
  if (version[5] != '1') return error(505, "only HTTP/1.0 and HTTP/1.1 are supported");
  req_.method.assign(method);
  req_.target.assign(target);
  req_.path.assign(target.substr(0, target.find('?')));
  req_.version_minor = version[7] - '0';

  bool have_length = false;
  bool have_host = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string_view line = lines[i];
    if (line[0] == ' ' || line[0] == '\t') return error(400, "obsolete header line folding is not accepted");
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return error(400, "malformed header line (no 'name:')");
    std::string name;
    name.reserve(colon);
    for (size_t j = 0; j < colon; ++j) {
      const auto c = static_cast<unsigned char>(line[j]);
      if (!is_tchar(c)) return error(400, "invalid character in a header name (whitespace before ':'?)");
      name.push_back(to_lower(static_cast<char>(c)));
    }
    const std::string_view value = trim_ows(line.substr(colon + 1));
    for (unsigned char c : value) {
      if ((c < 0x20 && c != '\t') || c == 0x7f) return error(400, "control character in the value of header '" + name + "'");
    }
    if (req_.headers.size() >= limits_.max_headers) {
      return error(431, "more than " + std::to_string(limits_.max_headers) + " header fields");
    }
    if (name == "content-length") {
      if (value.empty() || value.size() > 18) return error(400, "invalid Content-Length");
      size_t n = 0;
      for (char c : value) {
        if (c < '0' || c > '9') return error(400, "invalid Content-Length (digits only)");
        n = n * 10 + static_cast<size_t>(c - '0');
      }
      if (have_length && n != content_length_) return error(400, "conflicting Content-Length headers");
      have_length = true;
      content_length_ = n;
    } else if (name == "transfer-encoding") {
      return error(501, "Transfer-Encoding is not supported; send the body with a Content-Length");
    } else if (name == "host") {
      have_host = true;
    } else if (name == "expect" && iequals(value, "100-continue")) {
      req_.expect_continue = true;
    }
    req_.headers.emplace_back(std::move(name), std::string(value));
  }
  if (req_.version_minor >= 1 && !have_host) return error(400, "HTTP/1.1 requests need a Host header");
  if (content_length_ > limits_.max_body_bytes) {
    return error(413, "the request body is " + std::to_string(content_length_) + " bytes; the limit is " +
                          std::to_string(limits_.max_body_bytes));
  }
  const std::string* conn = req_.header("connection");
  if (req_.version_minor == 0) {
    req_.keep_alive = conn != nullptr && list_has_token(*conn, "keep-alive");
  } else {
    req_.keep_alive = conn == nullptr || !list_has_token(*conn, "close");
  }
  return {};
}

const char* http_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

std::string http_response(int status, std::string_view content_type, std::string_view body, bool keep_alive,
                          const std::vector<std::string>& extra_headers) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + http_reason(status) + "\r\n";
  out += "Content-Type: ";
  out += content_type;
  out += "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  out += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  for (const std::string& h : extra_headers) out += h + "\r\n";
  out += "\r\n";
  out += body;
  return out;
}

std::string http_stream_head(int status, std::string_view content_type, bool chunked, bool keep_alive) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + http_reason(status) + "\r\n";
  out += "Content-Type: ";
  out += content_type;
  out += "\r\nCache-Control: no-cache\r\n";
  if (chunked) out += "Transfer-Encoding: chunked\r\n";
  out += (chunked && keep_alive) ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  out += "\r\n";
  return out;
}

std::string http_chunk(std::string_view data) {
  if (data.empty()) return {};
  char size[24];
  std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
  std::string out = size;
  out += data;
  out += "\r\n";
  return out;
}

std::string_view http_last_chunk() { return "0\r\n\r\n"; }

std::string sse_event(std::string_view data) {
  std::string out = "data: ";
  out += data;
  out += "\n\n";
  return out;
}

}  // namespace nb::server
