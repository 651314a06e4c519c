// HttpServer: one event-loop thread (epoll) owns every connection: non-blocking accept, reads and
// writes, HTTP/1.1 keep-alive and pipelining (one request at a time per connection), limits and
// timeouts for slow or idle clients. No thread per connection and nothing on the loop blocks.
//
// Responses that take time (generation) are ResponseStreams: the handler returns one, other threads
// (the engine's callbacks) queue data in it and call Waker::wake(); the loop then polls the stream
// for bytes. A client that disconnects (read of 0, EPOLLHUP/EPOLLRDHUP, EPIPE/ECONNRESET on write,
// a stalled write) gets its stream's on_disconnect() at once, which cancels its work.
//
// Threading: run() is the loop; the handler and every ResponseStream method run on it. stop() and
// Waker::wake() may be called from any thread (stop() also from a signal handler).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "core/status.h"
#include "server/http.h"

namespace nb::server {

// A response produced over time. Owned by its connection; all calls on the loop thread.
class ResponseStream {
 public:
  virtual ~ResponseStream() = default;
  // Appends the bytes that are ready to *out; returns true once the response is complete.
  virtual bool poll(std::string* out) = 0;
  // The client went away (or the server is stopping) before poll() returned true. The stream is
  // destroyed right after.
  virtual void on_disconnect() = 0;
};

struct WakeQueue;  // shared between the loop and wakers; outlives both as long as a waker exists

// Tells the loop that one connection's stream has news. Cheap to copy; thread-safe; harmless after
// the connection (or the whole server) is gone.
class Waker {
 public:
  Waker() = default;
  Waker(std::shared_ptr<WakeQueue> queue, uint64_t conn_id) : queue_(std::move(queue)), conn_id_(conn_id) {}
  void wake() const;

 private:
  std::shared_ptr<WakeQueue> queue_;
  uint64_t conn_id_ = 0;
};

struct HandlerResult {
  std::string response;                    // bytes to send now: a whole response, or a stream's head
  std::unique_ptr<ResponseStream> stream;  // polled after `response` (null: the response is complete)
  bool close = false;                      // close the connection once the response is sent
};

using HttpHandler = std::function<HandlerResult(const HttpRequest&, const Waker&)>;
// Builds the complete response for an error the server itself detects (malformed request, limits).
using ErrorResponder = std::function<std::string(int status, const std::string& message)>;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                // 0: any free port (see HttpServer::port())
  HttpLimits limits;
  double idle_timeout_s = 60;     // keep-alive connection with no request in progress
  double request_timeout_s = 30;  // from a request's first byte to its last
  double write_timeout_s = 60;    // pending output that makes no progress
  size_t max_connections = 4096;
  size_t max_pending_output = 16u << 20;  // a client this far behind on reading is dropped
  ErrorResponder error_responder;  // default: text/plain
};

class HttpServer {
 public:
  // Binds and listens; errors name the address and the reason (e.g. the port is in use).
  static Result<std::unique_ptr<HttpServer>> create(HttpServerOptions options, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }  // the bound port (useful with port 0)
  // Serves until stop(); returns after every connection is closed (their streams disconnected).
  Status run();
  void stop();

 private:
  struct Connection;
  HttpServer() = default;

  void accept_all();
  void on_readable(Connection& c);
  void process_input(Connection& c);
  void poll_stream(Connection& c);
  void flush(Connection& c);
  void close_connection(uint64_t id);
  void begin_close(Connection& c);  // stop reading requests; close once the output is written
  void update_interest(Connection& c);
  void check_timeouts();
  void drain_wakes();

  HttpServerOptions opts_;
  HttpHandler handler_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int port_ = 0;
  std::shared_ptr<WakeQueue> wake_;
  std::atomic<bool> stop_{false};
  uint64_t next_id_ = 2;  // 0 = the listening socket, 1 = the wake eventfd
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> conns_;
  double accept_paused_until_ = 0;  // out of file descriptors: retry accepting later
  bool accept_registered_ = false;
};

}  // namespace nb::server
