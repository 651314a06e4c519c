// The benchmark's report: a text table in the layout of vLLM's benchmark_serving (so figures can be
// read side by side) and the same numbers, plus per-request detail, as JSON.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "tools/bench_serve/runner.h"
#include "tools/bench_serve/stats.h"

namespace nb::bench_serve {

// What the run was asked to do, echoed into the report.
struct ReportContext {
  std::string url, model, endpoint;
  int64_t num_prompts = 0;
  double request_rate = 0;        // +inf: all at once
  int64_t max_concurrency = 0;    // 0: unbounded (one client thread per request, at most 512)
  uint64_t seed = 0;
  bool ignore_eos = true;
  bool exact_prompt_lengths = false;
  std::string input_lens, output_lens;  // as given, e.g. "128" or "16:512"
  int64_t shared_prefix_len = 0;
};

struct BenchReport {
  int64_t num_sent = 0;  // requests sent (fewer than the prompts when --duration-s ran out)
  int64_t completed = 0, failed = 0;
  double duration_s = 0;
  int64_t total_input_tokens = 0, total_output_tokens = 0;
  double request_throughput = 0, output_throughput = 0, total_token_throughput = 0;
  Summary ttft_ms, tpot_ms, itl_ms, e2e_ms;
  int64_t num_short_of_max_tokens = 0;  // successful requests with fewer output tokens than asked for
  int64_t num_stopped_by_client = 0;    // streams the client closed at their output length
  double peak_running = 0, peak_kv_blocks_used = 0;  // NaN when /metrics had no such gauge
  double mean_running = 0;                           // time average over the scrapes; NaN likewise
  double kv_blocks_used_after = 0;                   // after the last request; NaN if unknown
  // Growth of the server's nibble_*_total counters from just before the first request to just
  // after the last (e.g. nibble_prompt_tokens_computed_total: the prefill work the run caused).
  std::map<std::string, double> counter_deltas;
};

// TTFT, E2E over successful requests; TPOT over successful requests with more than one output
// token, (e2e - ttft) / (output_tokens - 1); ITL over every gap between content chunks.
// Input tokens are the server's usage counts where given, else the built lengths.
BenchReport make_report(const RunResult& run);

std::string format_text(const ReportContext& ctx, const BenchReport& report, const RunResult& run);
nlohmann::ordered_json to_json(const ReportContext& ctx, const BenchReport& report, const RunResult& run);

}  // namespace nb::bench_serve
