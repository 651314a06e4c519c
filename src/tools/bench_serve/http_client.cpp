#include "tools/bench_serve/http_client.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "tools/bench_serve/sse_parser.h"

namespace nb::bench_serve {

namespace {

constexpr size_t kMaxHeadBytes = 64 << 10;

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  Socket(Socket&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Socket& operator=(Socket&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

// Milliseconds left until `deadline` for poll(), rounded up so a short wait is never 0 (a busy loop).
int ms_left(Clock::time_point deadline) {
  const double ms = std::chrono::duration<double, std::milli>(deadline - Clock::now()).count();
  if (ms <= 0) return 0;
  return static_cast<int>(std::min(std::ceil(ms), 1e9));
}

Status timed_out(const char* what, double timeout_s) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "timed out %s after %.1f s; raise --timeout-s or lower the load", what, timeout_s);
  return failed_precondition(buf);
}

// Waits until the socket is readable/writable; false on timeout.
Result<bool> wait_for(int fd, short events, Clock::time_point deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, ms_left(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return internal_error(std::string("poll failed: ") + std::strerror(errno));
  }
}

Result<Socket> connect_to(const Url& url, Clock::time_point deadline, double timeout_s) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(url.port);
  if (int rc = ::getaddrinfo(url.host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return failed_precondition("cannot resolve '" + url.host + "': " + gai_strerror(rc) + "; check --url");
  }
  std::string last_error = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    Socket s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (s.fd() < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    int rc = ::connect(s.fd(), a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      auto ready = wait_for(s.fd(), POLLOUT, deadline);
      if (!ready.ok()) {
        ::freeaddrinfo(res);
        return ready.status();
      }
      if (!*ready) {
        ::freeaddrinfo(res);
        return timed_out("connecting", timeout_s);
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      errno = err;
    }
    if (rc != 0) {
      last_error = std::strerror(errno);
      continue;
    }
    // Back to blocking; every read and write is preceded by a poll() bounded by the deadline.
    ::fcntl(s.fd(), F_SETFL, ::fcntl(s.fd(), F_GETFL) & ~O_NONBLOCK);
    const int one = 1;
    ::setsockopt(s.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::freeaddrinfo(res);
    return s;
  }
  ::freeaddrinfo(res);
  return failed_precondition("cannot connect to " + url.host + ":" + port + ": " + last_error +
                             "; is the server running there?");
}

Status send_all(int fd, std::string_view data, Clock::time_point deadline, double timeout_s) {
  while (!data.empty()) {
    NB_ASSIGN_OR_RETURN(bool ready, wait_for(fd, POLLOUT, deadline));
    if (!ready) return timed_out("sending the request", timeout_s);
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return failed_precondition(std::string("send failed: ") + std::strerror(errno) + "; did the server drop the connection?");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

// Reads what is available; 0 bytes means the peer closed the connection.
Result<size_t> recv_some(int fd, char* buf, size_t cap, Clock::time_point deadline, double timeout_s) {
  while (true) {
    NB_ASSIGN_OR_RETURN(bool ready, wait_for(fd, POLLIN, deadline));
    if (!ready) return timed_out("waiting for the response", timeout_s);
    const ssize_t n = ::recv(fd, buf, cap, 0);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno != EINTR && errno != EAGAIN) {
      return failed_precondition(std::string("recv failed: ") + std::strerror(errno) + "; the server dropped the connection");
    }
  }
}

Result<HttpResponseHead> parse_head(std::string_view head) {
  HttpResponseHead h;
  const size_t eol = head.find('\n');
  const std::string_view status_line = trim(head.substr(0, eol));
  // "HTTP/1.1 200 OK": the version, a space, three digits.
  if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || status_line[8] != ' ' ||
      !std::isdigit(static_cast<unsigned char>(status_line[9])) ||
      !std::isdigit(static_cast<unsigned char>(status_line[10])) ||
      !std::isdigit(static_cast<unsigned char>(status_line[11]))) {
    return data_loss("not an HTTP/1.x status line: '" + std::string(status_line.substr(0, 80)) +
                     "'; is --url pointing at an HTTP server?");
  }
  h.status = (status_line[9] - '0') * 100 + (status_line[10] - '0') * 10 + (status_line[11] - '0');
  size_t pos = eol == std::string_view::npos ? head.size() : eol + 1;
  while (pos < head.size()) {
    size_t end = head.find('\n', pos);
    if (end == std::string_view::npos) end = head.size();
    const std::string_view line = trim(head.substr(pos, end - pos));
    pos = end + 1;
    if (line.empty()) continue;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      return data_loss("malformed HTTP header line '" + std::string(line.substr(0, 80)) + "'");
    }
    h.headers.emplace_back(lower(trim(line.substr(0, colon))), std::string(trim(line.substr(colon + 1))));
  }
  return h;
}

}  // namespace

const std::string* HttpResponseHead::find(std::string_view lower_name) const {
  for (const auto& [k, v] : headers)
    if (k == lower_name) return &v;
  return nullptr;
}

Result<Url> parse_url(std::string_view text) {
  const std::string l = lower(text.substr(0, std::min<size_t>(text.size(), 8)));
  if (l.rfind("https://", 0) == 0) {
    return unimplemented("https is not supported by the load generator; use http:// (the server binds 127.0.0.1)");
  }
  if (l.rfind("http://", 0) != 0) return invalid_argument("--url must look like http://HOST:PORT; got '" + std::string(text) + "'");
  std::string_view rest = text.substr(7);
  Url url;
  size_t host_end;
  if (!rest.empty() && rest[0] == '[') {
    host_end = rest.find(']');
    if (host_end == std::string_view::npos) return invalid_argument("unterminated '[' in --url '" + std::string(text) + "'");
    url.host = std::string(rest.substr(1, host_end - 1));
    ++host_end;
  } else {
    host_end = std::min(rest.find(':'), rest.find('/'));
    if (host_end == std::string_view::npos) host_end = rest.size();
    url.host = std::string(rest.substr(0, host_end));
  }
  if (url.host.empty()) return invalid_argument("no host in --url '" + std::string(text) + "'");
  rest.remove_prefix(host_end);
  if (!rest.empty() && rest[0] == ':') {
    rest.remove_prefix(1);
    size_t n = 0;
    long port = 0;
    while (n < rest.size() && std::isdigit(static_cast<unsigned char>(rest[n])) && port <= 65535) port = port * 10 + (rest[n++] - '0');
    if (n == 0 || port < 1 || port > 65535) return invalid_argument("bad port in --url '" + std::string(text) + "'; expected 1..65535");
    url.port = static_cast<int>(port);
    rest.remove_prefix(n);
  }
  if (!rest.empty() && rest[0] != '/') return invalid_argument("unexpected '" + std::string(rest) + "' in --url");
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  url.base_path = std::string(rest);
  return url;
}

Status http_fetch(const Url& url, const HttpRequest& request,
                  const std::function<void(const HttpResponseHead&)>& on_head, const BodyCallback& on_body) {
  const Clock::time_point deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(request.timeout_s));
  NB_ASSIGN_OR_RETURN(Socket sock, connect_to(url, deadline, request.timeout_s));
  const bool v6 = url.host.find(':') != std::string::npos;
  std::string msg = request.method + " " + request.path + " HTTP/1.1\r\nHost: " + (v6 ? "[" + url.host + "]" : url.host) +
                    ":" + std::to_string(url.port) + "\r\nConnection: close\r\nUser-Agent: nibble-bench-serve\r\n";
  for (const auto& [k, v] : request.headers) msg += k + ": " + v + "\r\n";
  if (!request.body.empty() || request.method == "POST") msg += "Content-Length: " + std::to_string(request.body.size()) + "\r\n";
  msg += "\r\n";
  msg += request.body;
  NB_RETURN_IF_ERROR(send_all(sock.fd(), msg, deadline, request.timeout_s));

  std::string buf;
  std::vector<char> chunk(64 << 10);
  size_t head_end = std::string::npos, sep = 0;
  Clock::time_point received;
  while (head_end == std::string::npos) {
    NB_ASSIGN_OR_RETURN(size_t n, recv_some(sock.fd(), chunk.data(), chunk.size(), deadline, request.timeout_s));
    received = Clock::now();
    if (n == 0) return data_loss("the server closed the connection before sending a complete response head");
    buf.append(chunk.data(), n);
    if (size_t p = buf.find("\r\n\r\n"); p != std::string::npos) head_end = p, sep = 4;
    else if (size_t q = buf.find("\n\n"); q != std::string::npos) head_end = q, sep = 2;
    if (head_end == std::string::npos && buf.size() > kMaxHeadBytes) return data_loss("HTTP response head over 64 KiB");
  }
  NB_ASSIGN_OR_RETURN(HttpResponseHead head, parse_head(std::string_view(buf).substr(0, head_end)));
  on_head(head);

  const std::string* te = head.find("transfer-encoding");
  const bool chunked = te != nullptr && lower(*te).find("chunked") != std::string::npos;
  int64_t remaining = -1;  // Content-Length left to read; -1: until the connection closes
  if (const std::string* cl = head.find("content-length"); cl != nullptr && !chunked) {
    char* end = nullptr;
    const long long v = std::strtoll(cl->c_str(), &end, 10);
    if (end == cl->c_str() || *end != '\0' || v < 0) return data_loss("bad Content-Length '" + *cl + "'");
    remaining = v;
  }
  const bool no_body = head.status == 204 || head.status == 304 || (head.status >= 100 && head.status < 200);
  if (no_body) return Status::Ok();
  ChunkedDecoder decoder;
  std::string decoded;
  // Hands over bytes read off the socket; false when the body is complete or the caller stops.
  auto deliver = [&](std::string_view raw, bool* keep_going) -> Status {
    *keep_going = true;
    if (chunked) {
      decoded.clear();
      NB_RETURN_IF_ERROR(decoder.feed(raw, &decoded));
      if (!decoded.empty() && !on_body(decoded, received)) *keep_going = false;
      if (decoder.done()) *keep_going = false;
      return Status::Ok();
    }
    if (remaining >= 0) {
      raw = raw.substr(0, static_cast<size_t>(std::min<int64_t>(remaining, static_cast<int64_t>(raw.size()))));
      remaining -= static_cast<int64_t>(raw.size());
    }
    if (!raw.empty() && !on_body(raw, received)) *keep_going = false;
    if (remaining == 0) *keep_going = false;
    return Status::Ok();
  };
  bool keep_going = true;
  NB_RETURN_IF_ERROR(deliver(std::string_view(buf).substr(head_end + sep), &keep_going));
  if (remaining == 0) keep_going = false;
  while (keep_going) {
    NB_ASSIGN_OR_RETURN(size_t n, recv_some(sock.fd(), chunk.data(), chunk.size(), deadline, request.timeout_s));
    received = Clock::now();
    if (n == 0) {
      if (chunked) return data_loss("the connection closed before the end of the chunked body");
      if (remaining > 0) return data_loss("the connection closed " + std::to_string(remaining) + " bytes short of Content-Length");
      break;
    }
    NB_RETURN_IF_ERROR(deliver(std::string_view(chunk.data(), n), &keep_going));
  }
  return Status::Ok();
}

Result<HttpSimpleResponse> http_get(const Url& url, const std::string& path, double timeout_s, size_t max_bytes,
                                    const std::vector<std::pair<std::string, std::string>>& headers) {
  HttpRequest req;
  req.method = "GET";
  req.path = url.base_path + path;
  req.timeout_s = timeout_s;
  req.headers = headers;
  HttpSimpleResponse out;
  bool truncated = false;
  NB_RETURN_IF_ERROR(http_fetch(
      url, req, [&](const HttpResponseHead& h) { out.status = h.status; },
      [&](std::string_view bytes, Clock::time_point) {
        const size_t room = max_bytes - out.body.size();
        out.body.append(bytes.substr(0, room));
        truncated = bytes.size() > room;
        return !truncated;
      }));
  if (truncated) return resource_exhausted("response to GET " + path + " is over " + std::to_string(max_bytes) + " bytes");
  return out;
}

}  // namespace nb::bench_serve
