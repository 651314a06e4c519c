#include "server/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace nb::server {
namespace {

std::string fmt(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

void header(std::string* out, const std::string& name, const std::string& help, const char* type) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void scalar(std::string* out, const std::string& name, const std::string& help, const char* type, double v) {
  header(out, name, help, type);
  *out += name + " " + fmt(v) + "\n";
}

// Latency buckets in seconds: TTFT and end-to-end span milliseconds (cached, short) to minutes
// (long prompts queued on a CPU); TPOT spans sub-millisecond (GPU) to a second (CPU under load).
std::vector<double> latency_buckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0};
}
std::vector<double> tpot_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5};
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {
  std::sort(bounds_.begin(), bounds_.end());
}

void Histogram::observe(double v) {
  if (std::isnan(v)) return;
  // Prometheus buckets are inclusive upper bounds: v lands in the first bucket with v <= le.
  const size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  ++counts_[i];
  ++count_;
  sum_ += v;
}

void Histogram::render(const std::string& name, const std::string& help, std::string* out) const {
  header(out, name, help, "histogram");
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    *out += name + "_bucket{le=\"" + fmt(bounds_[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  *out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  *out += name + "_sum " + fmt(sum_) + "\n";
  *out += name + "_count " + std::to_string(count_) + "\n";
}

ServerMetrics::ServerMetrics() : ttft_(latency_buckets()), tpot_(tpot_buckets()), e2e_(latency_buckets()) {
  for (const char* s : {"success", "client_error", "server_error", "cancelled"}) requests_[s] = 0;
}

void ServerMetrics::count_request(RequestStatus status) {
  switch (status) {
    case RequestStatus::kSuccess: ++requests_["success"]; break;
    case RequestStatus::kClientError: ++requests_["client_error"]; break;
    case RequestStatus::kServerError: ++requests_["server_error"]; break;
    case RequestStatus::kCancelled: ++requests_["cancelled"]; break;
  }
}

std::string ServerMetrics::render(const EngineStats& st) const {
  std::string out;
  header(&out, "nibble_requests_total", "Completion and chat requests by outcome.", "counter");
  for (const auto& [label, n] : requests_) {
    out += "nibble_requests_total{status=\"" + label + "\"} " + std::to_string(n) + "\n";
  }
  scalar(&out, "nibble_prompt_tokens_total", "Prompt tokens of accepted requests (each choice counted once).",
         "counter", static_cast<double>(prompt_tokens_));
  scalar(&out, "nibble_generation_tokens_total", "Tokens generated for requests, all choices.", "counter",
         static_cast<double>(generation_tokens_));
  scalar(&out, "nibble_prompt_tokens_computed_total",
         "Prompt tokens the engine ran through the model (prefix-cache hits excluded, recomputation included).",
         "counter", static_cast<double>(st.num_prompt_tokens_computed));
  scalar(&out, "nibble_engine_generated_tokens_total", "Tokens sampled by the engine.", "counter",
         static_cast<double>(st.num_generated_tokens));
  scalar(&out, "nibble_engine_steps_total", "Engine steps run.", "counter", static_cast<double>(st.num_steps));
  scalar(&out, "nibble_engine_prefill_steps_total", "Engine steps that ran prompt tokens.", "counter",
         static_cast<double>(st.num_prefill_steps));
  scalar(&out, "nibble_engine_prefill_forward_seconds_total",
         "Wall time of the model's forward in steps that ran prompt tokens.", "counter", st.prefill_forward_seconds);
  scalar(&out, "nibble_engine_decode_forward_seconds_total",
         "Wall time of the model's forward in steps that ran no prompt token.", "counter", st.decode_forward_seconds);
  scalar(&out, "nibble_engine_step_host_seconds_total",
         "Wall time of engine steps outside the forward (scheduling, batch assembly, host sampling, outputs).",
         "counter", st.step_host_seconds);
  ttft_.render("nibble_time_to_first_token_seconds", "From request arrival to its first generated token.", &out);
  tpot_.render("nibble_time_per_output_token_seconds", "Mean time between output tokens of a choice, after the first.",
               &out);
  e2e_.render("nibble_e2e_request_latency_seconds", "From request arrival to the last byte of its response.", &out);
  scalar(&out, "nibble_kv_blocks_total", "KV-cache blocks in the pool.", "gauge", static_cast<double>(st.num_blocks_total));
  scalar(&out, "nibble_kv_blocks_used", "KV-cache blocks referenced by sequences.", "gauge",
         static_cast<double>(st.num_blocks_used));
  scalar(&out, "nibble_kv_blocks_free", "KV-cache blocks allocatable now (free or evictable cached).", "gauge",
         static_cast<double>(st.num_blocks_free));
  scalar(&out, "nibble_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", "counter",
         static_cast<double>(st.prefix_cache_queries));
  scalar(&out, "nibble_prefix_cache_hits_total", "Prompt tokens served from the prefix cache.", "counter",
         static_cast<double>(st.prefix_cache_hits));
  const double rate = st.prefix_cache_queries > 0
                          ? static_cast<double>(st.prefix_cache_hits) / static_cast<double>(st.prefix_cache_queries)
                          : 0.0;
  scalar(&out, "nibble_prefix_cache_hit_rate", "Prefix-cache hits / queries, in tokens, since start.", "gauge", rate);
  scalar(&out, "nibble_preemptions_total", "Sequences preempted (KV freed, recomputed later).", "counter",
         static_cast<double>(st.num_preemptions));
  // Speculative decoding: per-draft acceptance rate accepted / (accepted + rejecting steps) (the
  // alpha of Leviathan et al.), and tokens per verification step (accepted drafts + 1, on average).
  scalar(&out, "nibble_spec_draft_tokens_total", "Draft tokens verified (speculative decoding).", "counter",
         static_cast<double>(st.num_draft_tokens));
  scalar(&out, "nibble_spec_accepted_tokens_total", "Draft tokens accepted by the target.", "counter",
         static_cast<double>(st.num_accepted_tokens));
  scalar(&out, "nibble_spec_verification_steps_total", "Sequence steps that verified drafts.", "counter",
         static_cast<double>(st.num_spec_steps));
  const double trials = static_cast<double>(st.num_accepted_tokens + st.num_spec_rejections);
  scalar(&out, "nibble_spec_acceptance_rate",
         "Per-draft acceptance rate since start: accepted / (accepted + verification steps that rejected one).",
         "gauge", trials > 0 ? static_cast<double>(st.num_accepted_tokens) / trials : 0.0);
  scalar(&out, "nibble_spec_mean_accepted_length",
         "Mean tokens emitted per verification step since start (accepted drafts + the target's token).", "gauge",
         st.num_spec_steps > 0 ? 1.0 + static_cast<double>(st.num_accepted_tokens) / static_cast<double>(st.num_spec_steps)
                               : 0.0);
  scalar(&out, "nibble_num_requests_waiting", "Sequences queued in the engine.", "gauge", static_cast<double>(st.num_waiting));
  scalar(&out, "nibble_num_requests_running", "Sequences being generated.", "gauge", static_cast<double>(st.num_running));
  return out;
}

}  // namespace nb::server
