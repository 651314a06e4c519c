// Server metrics in the Prometheus text exposition format 0.0.4 (what GET /metrics returns).
//
// Names follow Prometheus conventions: counters end in _total, durations are in seconds,
// histograms expose cumulative _bucket{le=...} series plus _sum and _count. Request-level figures
// (latencies, request outcomes, token counts per request) are recorded by the server; KV and queue
// gauges are read from the engine's stats when the page is rendered.
//
// Not thread-safe: the server touches it only from its event-loop thread.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace nb::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);  // sorted, finite; +Inf is implicit
  void observe(double v);
  // Appends the HELP/TYPE lines and every series of `name`.
  void render(const std::string& name, const std::string& help, std::string* out) const;
  int64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket, not cumulative; the last is (last bound, +Inf)
  int64_t count_ = 0;
  double sum_ = 0;
};

// How a completion request ended, for nibble_requests_total{status=...}.
enum class RequestStatus { kSuccess, kClientError, kServerError, kCancelled };

class ServerMetrics {
 public:
  ServerMetrics();

  void count_request(RequestStatus status);
  void add_prompt_tokens(int64_t n) { prompt_tokens_ += n; }
  void add_generation_tokens(int64_t n) { generation_tokens_ += n; }
  void observe_ttft(double s) { ttft_.observe(s); }
  void observe_tpot(double s) { tpot_.observe(s); }
  void observe_e2e(double s) { e2e_.observe(s); }

  std::string render(const EngineStats& engine) const;

 private:
  std::map<std::string, int64_t> requests_;  // by status label
  int64_t prompt_tokens_ = 0, generation_tokens_ = 0;
  Histogram ttft_, tpot_, e2e_;
};

}  // namespace nb::server
