// The epoll HTTP server (server/http_server.h) over real loopback sockets: keep-alive, pipelining,
// limits, timeouts, streamed responses woken from another thread, and disconnect detection.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>

#include "server/http_server.h"

namespace nb::server {
namespace {

using namespace std::chrono_literals;

// A stream that emits `total` chunks, one per wake from a producer thread, then completes.
class CountingStream : public ResponseStream {
 public:
  CountingStream(Waker waker, int total, std::atomic<int>* disconnects)
      : total_(total), disconnects_(disconnects), shared_(std::make_shared<Shared>()) {
    auto shared = shared_;
    producer_ = std::thread([shared, waker, total] {
      for (int i = 0; i < total && !shared->stop.load(); ++i) {
        std::this_thread::sleep_for(20ms);
        shared->produced.fetch_add(1);
        waker.wake();
      }
    });
  }
  ~CountingStream() override {
    shared_->stop.store(true);
    producer_.join();
  }
  bool poll(std::string* out) override {
    if (!started_) {
      *out += http_stream_head(200, "text/event-stream", true, true);
      started_ = true;
    }
    const int n = shared_->produced.load();
    for (; sent_ < n; ++sent_) *out += http_chunk(sse_event("{\"i\":" + std::to_string(sent_) + "}"));
    if (sent_ < total_) return false;
    *out += http_chunk(sse_event("[DONE]"));
    *out += http_last_chunk();
    return true;
  }
  void on_disconnect() override { disconnects_->fetch_add(1); }

 private:
  struct Shared {
    std::atomic<int> produced{0};
    std::atomic<bool> stop{false};
  };
  int total_;
  int sent_ = 0;
  bool started_ = false;
  std::atomic<int>* disconnects_;
  std::shared_ptr<Shared> shared_;
  std::thread producer_;
};

class ServerLoop : public ::testing::Test {
 protected:
  void start(HttpServerOptions opts = {}) {
    opts.port = 0;
    auto s = HttpServer::create(opts, [this](const HttpRequest& req, const Waker& w) {
      HandlerResult r;
      if (req.path == "/stream") {
        r.stream = std::make_unique<CountingStream>(w, 10, &disconnects_);
      } else {
        r.response = http_response(200, "text/plain", req.method + " " + req.target + " " + req.body, req.keep_alive);
      }
      return r;
    });
    ASSERT_TRUE(s.ok()) << s.status().message();
    server_ = std::move(*s);
    thread_ = std::thread([this] { (void)server_->run(); });
  }
  void TearDown() override {
    if (server_) {
      server_->stop();
      thread_.join();
    }
  }
  int connect_client(double timeout_s = 5.0) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(server_->port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{static_cast<time_t>(timeout_s), static_cast<suseconds_t>((timeout_s - static_cast<int>(timeout_s)) * 1e6)};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    return fd;
  }
  static void send_all(int fd, const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }
  // Reads until `until` appears or the peer closes / the timeout hits. *closed: the peer closed.
  static std::string read_until(int fd, const std::string& until, bool* closed = nullptr) {
    std::string got;
    char buf[4096];
    if (closed) *closed = false;
    while (until.empty() || got.find(until) == std::string::npos) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n == 0) {
        if (closed) *closed = true;
        break;
      }
      if (n < 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }

  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  std::atomic<int> disconnects_{0};
};

int count(const std::string& s, const std::string& sub) {
  int n = 0;
  for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + 1)) ++n;
  return n;
}

TEST_F(ServerLoop, KeepAliveAndPipelining) {
  start();
  const int fd = connect_client();
  send_all(fd, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string r = read_until(fd, " /a ");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  // Two requests in one write: both answered, in order, on the same connection.
  send_all(fd, "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\nHost: x\r\n\r\n");
  r = read_until(fd, "GET /c ");
  ASSERT_NE(r.find("POST /b xyz"), std::string::npos) << r;
  EXPECT_LT(r.find("POST /b xyz"), r.find("GET /c "));
  // Connection: close is honoured.
  send_all(fd, "GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  bool closed = false;
  r = read_until(fd, "", &closed);
  EXPECT_NE(r.find("GET /d"), std::string::npos);
  EXPECT_TRUE(closed);
  ::close(fd);
}

TEST_F(ServerLoop, ExpectContinueGets100BeforeTheBody) {
  start();
  const int fd = connect_client();
  send_all(fd, "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
  EXPECT_EQ(read_until(fd, "\r\n\r\n"), "HTTP/1.1 100 Continue\r\n\r\n");
  send_all(fd, "body");
  EXPECT_NE(read_until(fd, "POST /e body").find("POST /e body"), std::string::npos);
  ::close(fd);
}

TEST_F(ServerLoop, OversizedBodyGets413AndTheConnectionCloses) {
  HttpServerOptions o;
  o.limits.max_body_bytes = 1000;
  start(o);
  const int fd = connect_client();
  send_all(fd, "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'a'));
  bool closed = false;
  const std::string r = read_until(fd, "", &closed);
  EXPECT_EQ(r.rfind("HTTP/1.1 413 ", 0), 0u) << r;
  EXPECT_TRUE(closed);
  ::close(fd);
}

TEST_F(ServerLoop, SlowAndIdleClientsTimeOut) {
  HttpServerOptions o;
  o.request_timeout_s = 0.3;
  o.idle_timeout_s = 0.6;
  start(o);
  const int slow = connect_client();
  send_all(slow, "GET /slow HTTP/1.1\r\nHo");  // never finishes the head
  bool closed = false;
  std::string r = read_until(slow, "", &closed);
  EXPECT_EQ(r.rfind("HTTP/1.1 408 ", 0), 0u) << r;
  EXPECT_TRUE(closed);
  ::close(slow);
  const int idle = connect_client();
  const auto t0 = std::chrono::steady_clock::now();
  r = read_until(idle, "", &closed);
  EXPECT_TRUE(closed);
  EXPECT_TRUE(r.empty());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 500ms);
  ::close(idle);
}

TEST_F(ServerLoop, StreamIsWokenFromAnotherThreadAndCompletes) {
  start();
  const int fd = connect_client();
  send_all(fd, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
  const std::string r = read_until(fd, "0\r\n\r\n");
  EXPECT_EQ(count(r, "data: {\"i\":"), 10) << r;
  EXPECT_NE(r.find("data: [DONE]"), std::string::npos);
  // The connection is still usable afterwards.
  send_all(fd, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_NE(read_until(fd, "GET /after").find("GET /after"), std::string::npos);
  ::close(fd);
  EXPECT_EQ(disconnects_.load(), 0);
}

TEST_F(ServerLoop, ClientDisconnectMidStreamIsReported) {
  start();
  const int fd = connect_client();
  send_all(fd, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
  read_until(fd, "data: {\"i\":0}");
  ::close(fd);
  for (int i = 0; i < 100 && disconnects_.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(disconnects_.load(), 1);
}

TEST_F(ServerLoop, ManyConcurrentConnectionsAreServedByOneThread) {
  start();
  constexpr int kClients = 200;
  std::vector<int> fds;
  for (int i = 0; i < kClients; ++i) fds.push_back(connect_client());
  for (int i = 0; i < kClients; ++i) send_all(fds[i], "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
  int complete = 0;
  for (int fd : fds) {
    const std::string r = read_until(fd, "0\r\n\r\n");
    complete += count(r, "data: {\"i\":") == 10 ? 1 : 0;
    ::close(fd);
  }
  EXPECT_EQ(complete, kClients);
}

TEST_F(ServerLoop, RobustAgainstGarbageConnections) {
  start();
  std::mt19937 rng(17);
  for (int iter = 0; iter < 300; ++iter) {
    const int fd = connect_client(0.5);
    std::string junk;
    for (size_t k = rng() % 300; k > 0; --k) junk += static_cast<char>(rng() % 256);
    if (iter % 3 == 0) junk = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc";  // truncated body
    if (iter % 3 == 1) junk += "\r\n\r\n";  // a complete (garbage) head: answered at once
    send_all(fd, junk);
    if (iter % 3 == 1) read_until(fd, "\r\n\r\n");  // some read the answer, others hang up at once
    ::close(fd);
  }
  const int fd = connect_client();
  send_all(fd, "GET /alive HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_NE(read_until(fd, "GET /alive").find("GET /alive"), std::string::npos);
  ::close(fd);
}

}  // namespace
}  // namespace nb::server
