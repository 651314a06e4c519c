// Runs a serving benchmark: sends streamed completion requests at their scheduled arrival times
// (open loop, Poisson) through a bounded pool of client threads (closed loop when every request
// arrives at t = 0 and the pool is the concurrency), measures each stream, and scrapes the
// server's /metrics meanwhile. Failures are counted per request, never fatal to the run.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "tools/bench_serve/http_client.h"
#include "tools/bench_serve/prom_metrics.h"

namespace nb::bench_serve {

// Client threads, hence requests in flight, at most.
inline constexpr int64_t kMaxClientThreads = 512;

struct RequestSpec {
  std::string prompt;
  int64_t prompt_len = -1;  // tokens the prompt was built to have; -1 when unknown
  int64_t max_tokens = 16;   // sent to the server
  // > 0: the client closes the stream after this many content chunks (the server must cancel the
  // request and free its blocks). Lets outputs be short while max_tokens (what a contiguous KV
  // layout must reserve) stays large, as with requests that stop early on their own.
  int64_t stop_after_chunks = 0;
  double arrival_s = 0;     // offset from the start of the run
};

struct RunConfig {
  Url url;
  std::string endpoint = "/v1/completions";
  std::string model;          // "" leaves the field out
  std::string api_key;        // "" sends no Authorization header
  bool ignore_eos = true;     // ask the server to generate exactly max_tokens (vLLM's extension)
  double temperature = 0;
  int64_t max_concurrency = 0;  // client threads (in-flight requests) at most; 0 = one per request
  double timeout_s = 600;       // per request
  double metrics_interval_s = 0.1;  // <= 0: do not scrape /metrics
  double duration_s = 0;  // > 0: requests not started this long after the start are not sent
};

struct RequestResult {
  bool sent = false;           // false: skipped because --duration-s ran out first
  bool success = false;
  std::string error;           // why it failed
  int http_status = 0;
  int64_t prompt_len = -1;     // what was asked for
  int64_t max_tokens = 0;
  int64_t target_tokens = 0;   // stop_after_chunks when set, else max_tokens
  bool stopped_by_client = false;  // closed after stop_after_chunks content chunks
  int64_t prompt_tokens = -1;  // from usage; -1 when the server sent none
  int64_t output_tokens = 0;   // from usage when sent, else the number of content chunks
  bool usage_reported = false;
  int64_t num_content_chunks = 0;
  std::string finish_reason;
  double start_s = 0;          // when it was sent, from the start of the run
  double ttft_s = 0, e2e_s = 0;
  std::vector<double> itl_s;   // gaps between consecutive content chunks
};

struct RunResult {
  std::vector<RequestResult> requests;  // in the order of the specs
  double duration_s = 0;                // first send to last completion
  int64_t peak_in_flight = 0;           // client side
  MetricPeaks metrics;                  // server side, from /metrics
  std::string metrics_error;            // why scraping failed, if it never succeeded
  // One scrape before the first request and one after the last completed (counter deltas); the
  // latter repeated for up to 0.5 s until no KV block is in use (server gauges settle).
  bool metrics_before_valid = false, metrics_after_valid = false;
  std::vector<PromSample> metrics_before, metrics_after;
};

// The streamed request body for one spec (exposed for tests).
std::string completion_body(const RunConfig& config, const RequestSpec& spec);

// Sends one request and measures its stream; `t0` is the start of the run.
RequestResult run_one_request(const RunConfig& config, const RequestSpec& spec, Clock::time_point t0);

RunResult run_benchmark(const RunConfig& config, const std::vector<RequestSpec>& specs);

// Asks GET /v1/models for the first model id (when --model is not given).
Result<std::string> first_served_model(const RunConfig& config);

}  // namespace nb::bench_serve
