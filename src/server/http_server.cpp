#include "server/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <vector>

namespace nb::server {

struct WakeQueue {
  std::mutex mu;
  std::vector<uint64_t> ids;  // connections with news, in arrival order (may repeat)
  int event_fd = -1;
  ~WakeQueue() {
    if (event_fd >= 0) ::close(event_fd);
  }
  void signal() const {
    const uint64_t one = 1;
    // EAGAIN means the counter is already non-zero: the loop will wake anyway.
    [[maybe_unused]] ssize_t n = ::write(event_fd, &one, sizeof(one));
  }
};

void Waker::wake() const {
  if (!queue_) return;
  bool was_empty = false;
  {
    std::lock_guard<std::mutex> lock(queue_->mu);
    was_empty = queue_->ids.empty();
    queue_->ids.push_back(conn_id_);
  }
  // Only the first waker since the loop last drained needs the syscall; the loop takes the list
  // after resetting the eventfd, so a push it misses always comes with a fresh signal.
  if (was_empty) queue_->signal();
}

namespace {

constexpr uint64_t kListenId = 0;
constexpr uint64_t kWakeId = 1;
constexpr double kLingerSeconds = 2.0;  // after an error response, drain the client's body this long
constexpr size_t kReadChunk = 64 * 1024;
constexpr size_t kMaxReadPerEvent = 1u << 20;  // fairness between connections

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string default_error(int status, const std::string& message) {
  return http_response(status, "text/plain; charset=utf-8", message + "\n", false);
}

}  // namespace

struct HttpServer::Connection {
  uint64_t id = 0;
  int fd = -1;
  std::string in;
  std::string out;
  size_t out_off = 0;
  HttpRequestParser parser;
  std::unique_ptr<ResponseStream> stream;
  bool keep_alive = true;      // of the response in progress
  bool closing = false;        // no further requests: close once `out` is written
  bool lingering = false;      // output done, write side shut: discarding input until EOF or deadline
  bool sent_continue = false;  // "100 Continue" already sent for the current request
  uint32_t interest = 0;
  double last_activity = 0;    // last read or completed response
  double request_start = 0;    // first byte of the request being received
  double last_write_progress = 0;
  double linger_deadline = 0;

  size_t pending_out() const { return out.size() - out_off; }
};

Result<std::unique_ptr<HttpServer>> HttpServer::create(HttpServerOptions options, HttpHandler handler) {
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->opts_ = std::move(options);
  if (!s->opts_.error_responder) s->opts_.error_responder = default_error;
  s->handler_ = std::move(handler);
  const std::string where = s->opts_.host + ":" + std::to_string(s->opts_.port);
  if (s->opts_.port < 0 || s->opts_.port > 65535) return invalid_argument("port must be in [0, 65535]; got " + where);

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(s->opts_.port);
  if (int rc = ::getaddrinfo(s->opts_.host.c_str(), port_str.c_str(), &hints, &res); rc != 0) {
    return invalid_argument("cannot resolve listen address " + where + ": " + gai_strerror(rc));
  }
  std::string last_error = "no address";
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 1024) == 0) {
      s->listen_fd_ = fd;
      break;
    }
    last_error = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  if (s->listen_fd_ < 0) {
    return failed_precondition("cannot listen on " + where + ": " + last_error + "; pick another --port or --host");
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(s->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    s->port_ = addr.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                                          : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  }
  s->epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  s->wake_ = std::make_shared<WakeQueue>();
  s->wake_->event_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->epoll_fd_ < 0 || s->wake_->event_fd < 0) return internal_error(std::string("epoll/eventfd: ") + std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeId;
  ::epoll_ctl(s->epoll_fd_, EPOLL_CTL_ADD, s->wake_->event_fd, &ev);
  ev.data.u64 = kListenId;
  ::epoll_ctl(s->epoll_fd_, EPOLL_CTL_ADD, s->listen_fd_, &ev);
  s->accept_registered_ = true;
  return s;
}

HttpServer::~HttpServer() {
  for (auto& [id, c] : conns_) {
    if (c->stream) c->stream->on_disconnect();
    ::close(c->fd);
  }
  conns_.clear();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

void HttpServer::stop() {
  stop_.store(true);
  if (wake_) wake_->signal();  // write(2) is async-signal-safe
}

Status HttpServer::run() {
  std::vector<epoll_event> events(256);
  double next_timeout_check = now_s() + 0.5;
  while (!stop_.load()) {
    const int n = ::epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), 250);
    if (n < 0 && errno != EINTR) return internal_error(std::string("epoll_wait: ") + std::strerror(errno));
    for (int i = 0; i < n; ++i) {
      const uint64_t id = events[i].data.u64;
      const uint32_t ev = events[i].events;
      if (id == kListenId) {
        accept_all();
        continue;
      }
      if (id == kWakeId) {
        drain_wakes();
        continue;
      }
      auto it = conns_.find(id);
      if (it == conns_.end()) continue;  // closed earlier in this batch
      Connection& c = *it->second;
      if (ev & (EPOLLERR | EPOLLHUP)) {
        close_connection(id);
        continue;
      }
      if (ev & EPOLLOUT) {
        flush(c);
        if (conns_.find(id) == conns_.end()) continue;
      }
      if (ev & (EPOLLIN | EPOLLRDHUP)) on_readable(c);
    }
    const double t = now_s();
    if (t >= next_timeout_check) {
      check_timeouts();
      next_timeout_check = t + 0.5;
    }
  }
  std::vector<uint64_t> ids;
  for (const auto& [id, c] : conns_) ids.push_back(id);
  for (uint64_t id : ids) close_connection(id);
  return Status();
}

void HttpServer::accept_all() {
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: stop polling the listener for a moment instead of spinning on it.
        ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
        accept_registered_ = false;
        accept_paused_until_ = now_s() + 0.5;
      }
      return;
    }
    if (conns_.size() >= opts_.max_connections) {
      const std::string busy = opts_.error_responder(503, "too many connections; retry later");
      [[maybe_unused]] ssize_t w = ::send(fd, busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      ::close(fd);
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // SSE events must not wait for Nagle
    auto c = std::make_unique<Connection>();
    c->id = next_id_++;
    c->fd = fd;
    c->parser = HttpRequestParser(opts_.limits);
    c->last_activity = now_s();
    c->last_write_progress = c->last_activity;
    Connection& ref = *c;
    conns_.emplace(c->id, std::move(c));
    update_interest(ref);
  }
}

void HttpServer::update_interest(Connection& c) {
  uint32_t want = EPOLLIN | EPOLLRDHUP;
  if (c.pending_out() > 0) want |= EPOLLOUT;
  if (want == c.interest) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  ::epoll_ctl(epoll_fd_, c.interest == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c.fd, &ev);
  c.interest = want;
}

void HttpServer::close_connection(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  std::unique_ptr<Connection> c = std::move(it->second);
  conns_.erase(it);
  if (c->stream) {
    c->stream->on_disconnect();
    c->stream.reset();
  }
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  ::close(c->fd);
}

void HttpServer::begin_close(Connection& c) {
  c.closing = true;
  c.in.clear();
}

void HttpServer::on_readable(Connection& c) {
  const uint64_t id = c.id;
  char buf[kReadChunk];
  size_t total = 0;
  bool eof = false;
  while (total < kMaxReadPerEvent) {
    const ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      total += static_cast<size_t>(n);
      if (c.closing) continue;  // discarding: an error was answered, or lingering before close
      if (c.in.empty() && !c.stream) c.request_start = now_s();
      c.in.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) {
      eof = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    eof = true;  // ECONNRESET and friends
    break;
  }
  if (total > 0) c.last_activity = now_s();
  if (eof) {
    // The client is gone (or half-closed, which HTTP clients do not do mid-request): cancel its work.
    close_connection(id);
    return;
  }
  if (c.closing) return;
  const size_t max_buffered = opts_.limits.max_head_bytes + opts_.limits.max_body_bytes + kReadChunk;
  if (c.in.size() > max_buffered) {
    close_connection(id);  // pipelining far ahead of its responses: not a client we serve
    return;
  }
  if (!c.stream) process_input(c);
}

void HttpServer::process_input(Connection& c) {
  const uint64_t id = c.id;
  while (!c.stream && !c.closing && !c.in.empty() && c.pending_out() < opts_.max_pending_output) {
    const ParseResult r = c.parser.parse(c.in);
    if (r.state == ParseState::kIncomplete) break;
    if (r.state == ParseState::kHeadComplete) {
      if (c.parser.request().expect_continue && !c.sent_continue) {
        c.out += "HTTP/1.1 100 Continue\r\n\r\n";
        c.sent_continue = true;
      }
      break;
    }
    if (r.state == ParseState::kError) {
      c.out += opts_.error_responder(r.error_status, r.error_message);
      begin_close(c);
      break;
    }
    HttpRequest req = c.parser.take();
    c.in.erase(0, r.consumed);
    c.sent_continue = false;
    c.request_start = now_s();
    HandlerResult result;
    try {
      result = handler_(req, Waker(wake_, id));
    } catch (const std::exception& e) {
      result = HandlerResult{opts_.error_responder(500, std::string("internal error: ") + e.what()), nullptr, true};
    } catch (...) {
      result = HandlerResult{opts_.error_responder(500, "internal error"), nullptr, true};
    }
    c.out += result.response;
    c.keep_alive = req.keep_alive && !result.close;
    if (result.stream) {
      c.stream = std::move(result.stream);
      poll_stream(c);
      if (conns_.find(id) == conns_.end()) return;
    } else {
      c.last_activity = now_s();
      if (!c.keep_alive) begin_close(c);
    }
  }
  flush(c);
}

void HttpServer::poll_stream(Connection& c) {
  bool done = false;
  try {
    done = c.stream->poll(&c.out);
  } catch (...) {
    close_connection(c.id);  // a half-written response cannot be repaired; the client sees it cut
    return;
  }
  if (!done) return;
  c.stream.reset();
  c.last_activity = now_s();
  if (!c.keep_alive) begin_close(c);
  // The caller flushes; if this was a wake, pipelined requests are picked up by process_input.
}

void HttpServer::drain_wakes() {
  uint64_t count = 0;
  [[maybe_unused]] ssize_t n = ::read(wake_->event_fd, &count, sizeof(count));
  std::vector<uint64_t> ids;
  {
    std::lock_guard<std::mutex> lock(wake_->mu);
    ids.swap(wake_->ids);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (uint64_t id : ids) {
    auto it = conns_.find(id);
    if (it == conns_.end() || !it->second->stream) continue;  // gone, or finished meanwhile
    Connection& c = *it->second;
    poll_stream(c);
    if (conns_.find(id) == conns_.end()) continue;
    if (!c.stream && !c.closing) {
      process_input(c);  // flushes
    } else {
      flush(c);
    }
  }
}

void HttpServer::flush(Connection& c) {
  const uint64_t id = c.id;
  while (c.pending_out() > 0) {
    const ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.pending_out(), MSG_NOSIGNAL);
    if (n > 0) {
      c.out_off += static_cast<size_t>(n);
      c.last_write_progress = now_s();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    close_connection(id);  // EPIPE, ECONNRESET: the client is gone
    return;
  }
  if (c.out_off == c.out.size()) {
    c.out.clear();
    c.out_off = 0;
  } else if (c.out_off > (64u << 10)) {
    c.out.erase(0, c.out_off);
    c.out_off = 0;
  }
  if (c.pending_out() > opts_.max_pending_output) {
    close_connection(id);  // not reading its stream: stop generating for it
    return;
  }
  if (c.pending_out() == 0) c.last_write_progress = now_s();
  if (c.closing && !c.stream && c.pending_out() == 0 && !c.lingering) {
    // Closing with unread input in the socket would send RST and could destroy the response
    // before the client reads it: shut the write side and drain for a moment first.
    ::shutdown(c.fd, SHUT_WR);
    c.lingering = true;
    c.linger_deadline = now_s() + kLingerSeconds;
  }
  update_interest(c);
}

void HttpServer::check_timeouts() {
  const double t = now_s();
  if (!accept_registered_ && t >= accept_paused_until_) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenId;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) == 0) accept_registered_ = true;
  }
  std::vector<uint64_t> expired, slow;
  for (const auto& [id, cp] : conns_) {
    const Connection& c = *cp;
    if (c.lingering) {
      if (t > c.linger_deadline) expired.push_back(id);
    } else if (c.pending_out() > 0) {
      if (t - c.last_write_progress > opts_.write_timeout_s) expired.push_back(id);
    } else if (c.stream) {
      // Generating: no client-side deadline (long generations are legitimate).
    } else if (!c.in.empty()) {
      if (t - c.request_start > opts_.request_timeout_s) slow.push_back(id);
    } else if (t - c.last_activity > opts_.idle_timeout_s) {
      expired.push_back(id);
    }
  }
  for (uint64_t id : expired) close_connection(id);
  for (uint64_t id : slow) {
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;
    Connection& c = *it->second;
    c.out += opts_.error_responder(408, "the request was not received in time");
    begin_close(c);
    flush(c);
  }
}

}  // namespace nb::server
