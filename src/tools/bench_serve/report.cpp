#include "tools/bench_serve/report.h"

#include <cmath>
#include <cstdio>
#include <ctime>

namespace nb::bench_serve {

namespace {

using json = nlohmann::ordered_json;

constexpr const char* kRunningGauge = "nibble_num_requests_running";
constexpr const char* kKvUsedGauge = "nibble_kv_blocks_used";

json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

json summary_json(const Summary& s) {
  return {{"count", s.count},         {"mean", number_or_null(s.mean)}, {"std", number_or_null(s.stddev)},
          {"min", number_or_null(s.min)}, {"p50", number_or_null(s.p50)},  {"p90", number_or_null(s.p90)},
          {"p99", number_or_null(s.p99)}, {"max", number_or_null(s.max)}};
}

void line(std::string* out, const char* label, const std::string& value) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-42s %s\n", label, value.c_str());
  *out += buf;
}

std::string fmt(double v, const char* f = "%.2f") {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

void section(std::string* out, const char* title, const char* abbrev, const Summary& s) {
  char head[64];
  std::snprintf(head, sizeof head, "%s", title);
  std::string t = std::string(" ") + head + " ";
  const size_t w = 50;
  const size_t left = t.size() >= w ? 0 : (w - t.size()) / 2;
  *out += std::string(left, '-') + t + std::string(t.size() >= w ? 0 : w - left - t.size(), '-') + "\n";
  const std::string a(abbrev);
  line(out, ("Mean " + a + " (ms):").c_str(), fmt(s.mean));
  line(out, ("P50 " + a + " (ms):").c_str(), fmt(s.p50));
  line(out, ("P90 " + a + " (ms):").c_str(), fmt(s.p90));
  line(out, ("P99 " + a + " (ms):").c_str(), fmt(s.p99));
}

}  // namespace

BenchReport make_report(const RunResult& run) {
  BenchReport r;
  std::vector<double> ttft, tpot, itl, e2e;
  for (const RequestResult& q : run.requests) {
    if (!q.sent) continue;
    ++r.num_sent;
    if (!q.success) {
      ++r.failed;
      continue;
    }
    ++r.completed;
    r.num_stopped_by_client += q.stopped_by_client;
    r.total_output_tokens += q.output_tokens;
    r.total_input_tokens += q.prompt_tokens >= 0 ? q.prompt_tokens : std::max<int64_t>(q.prompt_len, 0);
    if (q.output_tokens < q.target_tokens) ++r.num_short_of_max_tokens;
    ttft.push_back(q.ttft_s * 1e3);
    e2e.push_back(q.e2e_s * 1e3);
    if (q.output_tokens > 1) tpot.push_back((q.e2e_s - q.ttft_s) * 1e3 / static_cast<double>(q.output_tokens - 1));
    for (double g : q.itl_s) itl.push_back(g * 1e3);
  }
  r.duration_s = run.duration_s;
  if (r.duration_s > 0) {
    r.request_throughput = static_cast<double>(r.completed) / r.duration_s;
    r.output_throughput = static_cast<double>(r.total_output_tokens) / r.duration_s;
    r.total_token_throughput = static_cast<double>(r.total_input_tokens + r.total_output_tokens) / r.duration_s;
  }
  r.ttft_ms = summarize(ttft);
  r.tpot_ms = summarize(tpot);
  r.itl_ms = summarize(itl);
  r.e2e_ms = summarize(e2e);
  r.peak_running = run.metrics.peak_of(kRunningGauge, "running");
  r.peak_kv_blocks_used = run.metrics.peak_of(kKvUsedGauge, "kv_blocks_used");
  r.mean_running = pick_series(run.metrics.means(), kRunningGauge, "running");
  r.kv_blocks_used_after = std::nan("");
  if (run.metrics_after_valid) {
    MetricPeaks after;
    after.observe(run.metrics_after);
    r.kv_blocks_used_after = after.last_of(kKvUsedGauge, "kv_blocks_used");
  }
  if (run.metrics_before_valid && run.metrics_after_valid) {
    std::map<std::string, double> before;
    for (const PromSample& s : run.metrics_before) before[series_key(s)] = s.value;
    for (const PromSample& s : run.metrics_after) {
      if (s.name.rfind("nibble_", 0) != 0 || s.name.size() < 6 || s.name.substr(s.name.size() - 6) != "_total") continue;
      const std::string key = series_key(s);
      const auto it = before.find(key);
      r.counter_deltas[key] = s.value - (it == before.end() ? 0.0 : it->second);
    }
  }
  return r;
}

std::string format_text(const ReportContext& ctx, const BenchReport& r, const RunResult& run) {
  std::string out = "============ Serving Benchmark Result ============\n";
  if (r.num_sent < static_cast<int64_t>(run.requests.size())) {
    line(&out, "Requests sent (before --duration-s):", std::to_string(r.num_sent));
  }
  line(&out, "Successful requests:", std::to_string(r.completed));
  line(&out, "Failed requests:", std::to_string(r.failed));
  line(&out, "Request rate (req/s):", std::isfinite(ctx.request_rate) ? fmt(ctx.request_rate) : "inf");
  line(&out, "Max concurrency:", ctx.max_concurrency > 0 ? std::to_string(ctx.max_concurrency) : "unbounded");
  line(&out, "Benchmark duration (s):", fmt(r.duration_s));
  line(&out, "Total input tokens:", std::to_string(r.total_input_tokens));
  line(&out, "Total generated tokens:", std::to_string(r.total_output_tokens));
  line(&out, "Request throughput (req/s):", fmt(r.request_throughput));
  line(&out, "Output token throughput (tok/s):", fmt(r.output_throughput));
  line(&out, "Total token throughput (tok/s):", fmt(r.total_token_throughput));
  line(&out, "Peak in-flight requests (client):", std::to_string(run.peak_in_flight));
  line(&out, "Peak running requests (server):", fmt(r.peak_running, "%.0f"));
  line(&out, "Peak KV blocks used (server):", fmt(r.peak_kv_blocks_used, "%.0f"));
  line(&out, "Mean running requests (server):", fmt(r.mean_running));
  line(&out, "KV blocks used after the run:", fmt(r.kv_blocks_used_after, "%.0f"));
  section(&out, "Time to First Token", "TTFT", r.ttft_ms);
  section(&out, "Time per Output Token (excl. 1st token)", "TPOT", r.tpot_ms);
  section(&out, "Inter-token Latency", "ITL", r.itl_ms);
  section(&out, "End-to-end Latency", "E2E", r.e2e_ms);
  if (!r.counter_deltas.empty()) {
    out += "------------- Server counters (delta) -------------\n";
    for (const auto& [key, delta] : r.counter_deltas) {
      if (delta != 0) line(&out, (key + ":").c_str(), fmt(delta, delta == std::floor(delta) ? "%.0f" : "%.3f"));
    }
  }
  out += "==================================================\n";
  if (ctx.ignore_eos && r.num_short_of_max_tokens > 0) {
    out += "note: " + std::to_string(r.num_short_of_max_tokens) +
           " successful requests stopped before max_tokens although ignore_eos was sent; the server may not support it\n";
  }
  if (!ctx.exact_prompt_lengths) out += "note: no tokenizer given (--tokenizer or -m): prompt lengths are approximate\n";
  if (run.metrics.num_scrapes() == 0 && !run.metrics_error.empty()) out += "note: /metrics not read: " + run.metrics_error + "\n";
  int shown = 0;
  if (r.num_stopped_by_client > 0) {
    out += "note: " + std::to_string(r.num_stopped_by_client) +
           " streams were closed by the client at their output length (--request-max-tokens)\n";
  }
  for (const RequestResult& q : run.requests) {
    if (!q.sent || q.success || shown >= 3) continue;
    out += "error: " + q.error + "\n";
    ++shown;
  }
  return out;
}

json to_json(const ReportContext& ctx, const BenchReport& r, const RunResult& run) {
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
  json j;
  j["date"] = date;
  j["url"] = ctx.url;
  j["endpoint"] = ctx.endpoint;
  j["model"] = ctx.model;
  j["num_prompts"] = ctx.num_prompts;
  j["request_rate"] = std::isfinite(ctx.request_rate) ? json(ctx.request_rate) : json("inf");
  j["max_concurrency"] = ctx.max_concurrency > 0 ? json(ctx.max_concurrency) : json(nullptr);
  j["seed"] = ctx.seed;
  j["ignore_eos"] = ctx.ignore_eos;
  j["exact_prompt_lengths"] = ctx.exact_prompt_lengths;
  j["input_len"] = ctx.input_lens;
  j["output_len"] = ctx.output_lens;
  j["shared_prefix_len"] = ctx.shared_prefix_len;
  j["num_sent"] = r.num_sent;
  j["completed"] = r.completed;
  j["failed"] = r.failed;
  j["duration_s"] = r.duration_s;
  j["total_input_tokens"] = r.total_input_tokens;
  j["total_output_tokens"] = r.total_output_tokens;
  j["request_throughput"] = r.request_throughput;
  j["output_throughput"] = r.output_throughput;
  j["total_token_throughput"] = r.total_token_throughput;
  j["ttft_ms"] = summary_json(r.ttft_ms);
  j["tpot_ms"] = summary_json(r.tpot_ms);
  j["itl_ms"] = summary_json(r.itl_ms);
  j["e2e_ms"] = summary_json(r.e2e_ms);
  j["num_short_of_max_tokens"] = r.num_short_of_max_tokens;
  j["num_stopped_by_client"] = r.num_stopped_by_client;
  j["peak_in_flight_client"] = run.peak_in_flight;
  j["peak_running_requests"] = number_or_null(r.peak_running);
  j["peak_kv_blocks_used"] = number_or_null(r.peak_kv_blocks_used);
  j["mean_running_requests"] = number_or_null(r.mean_running);
  j["kv_blocks_used_after"] = number_or_null(r.kv_blocks_used_after);
  j["metrics_scrapes"] = run.metrics.num_scrapes();
  j["metrics_error"] = run.metrics_error;
  json peaks = json::object();
  for (const auto& [k, v] : run.metrics.peaks()) peaks[k] = number_or_null(v);
  j["metrics_peaks"] = peaks;
  json means = json::object();
  for (const auto& [k, v] : run.metrics.means()) means[k] = number_or_null(v);
  j["metrics_means"] = means;
  json deltas = json::object();
  for (const auto& [k, v] : r.counter_deltas) deltas[k] = number_or_null(v);
  j["counter_deltas"] = deltas;
  json reqs = json::array();
  for (const RequestResult& q : run.requests) {
    if (!q.sent) continue;
    reqs.push_back({{"success", q.success},
                    {"error", q.error},
                    {"http_status", q.http_status},
                    {"prompt_len", q.prompt_len},
                    {"max_tokens", q.max_tokens},
                    {"target_tokens", q.target_tokens},
                    {"stopped_by_client", q.stopped_by_client},
                    {"prompt_tokens", q.prompt_tokens >= 0 ? json(q.prompt_tokens) : json(nullptr)},
                    {"output_tokens", q.output_tokens},
                    {"usage_reported", q.usage_reported},
                    {"num_content_chunks", q.num_content_chunks},
                    {"finish_reason", q.finish_reason},
                    {"start_s", q.start_s},
                    {"ttft_ms", q.ttft_s * 1e3},
                    {"e2e_ms", q.e2e_s * 1e3}});
  }
  j["requests"] = reqs;
  return j;
}

}  // namespace nb::bench_serve
