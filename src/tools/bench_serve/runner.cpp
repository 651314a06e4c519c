#include "tools/bench_serve/runner.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "tools/bench_serve/sse_parser.h"

namespace nb::bench_serve {

namespace {

using json = nlohmann::json;

constexpr size_t kMaxErrorBody = 4096;
constexpr int kSettleScrapes = 10;  // 50 ms apart

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string excerpt(std::string_view s, size_t n = 200) {
  std::string out(s.substr(0, n));
  for (char& c : out)
    if (c == '\n' || c == '\r') c = ' ';
  return s.size() > n ? out + "..." : out;
}

std::vector<std::pair<std::string, std::string>> auth_headers(const RunConfig& config) {
  if (config.api_key.empty()) return {};
  return {{"Authorization", "Bearer " + config.api_key}};
}

// The text a stream chunk carries: completions put it in choices[0].text, chat in
// choices[0].delta.content. Sets *has_choice when the chunk has a choice at all.
std::string chunk_text(const json& chunk, bool* has_choice, std::string* finish_reason) {
  *has_choice = false;
  const auto choices = chunk.find("choices");
  if (choices == chunk.end() || !choices->is_array() || choices->empty() || !(*choices)[0].is_object()) return "";
  const json& c = (*choices)[0];
  *has_choice = true;
  if (auto f = c.find("finish_reason"); f != c.end() && f->is_string()) *finish_reason = f->get<std::string>();
  if (auto t = c.find("text"); t != c.end() && t->is_string()) return t->get<std::string>();
  if (auto d = c.find("delta"); d != c.end() && d->is_object()) {
    if (auto t = d->find("content"); t != d->end() && t->is_string()) return t->get<std::string>();
  }
  return "";
}

}  // namespace

std::string completion_body(const RunConfig& config, const RequestSpec& spec) {
  json body = {{"prompt", spec.prompt},
               {"max_tokens", spec.max_tokens},
               {"temperature", config.temperature},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  if (!config.model.empty()) body["model"] = config.model;
  if (config.ignore_eos) body["ignore_eos"] = true;
  return body.dump();
}

RequestResult run_one_request(const RunConfig& config, const RequestSpec& spec, Clock::time_point t0) {
  RequestResult r;
  r.sent = true;
  r.prompt_len = spec.prompt_len;
  r.max_tokens = spec.max_tokens;
  r.target_tokens = spec.stop_after_chunks > 0 ? spec.stop_after_chunks : spec.max_tokens;
  HttpRequest req;
  req.method = "POST";
  req.path = config.url.base_path + config.endpoint;
  req.body = completion_body(config, spec);
  req.timeout_s = config.timeout_s;
  req.headers = {{"Content-Type", "application/json"}, {"Accept", "text/event-stream"}};
  for (auto& h : auth_headers(config)) req.headers.push_back(std::move(h));

  SseParser sse;
  std::vector<SseEvent> events;
  bool done = false;
  std::string error, error_body;
  Clock::time_point last_chunk, done_at;
  const Clock::time_point start = Clock::now();
  r.start_s = seconds(start - t0);

  auto on_event = [&](const SseEvent& ev, Clock::time_point t) -> bool {
    if (ev.data == "[DONE]") {
      done = true;
      done_at = t;
      return true;
    }
    const json chunk = json::parse(ev.data, nullptr, /*allow_exceptions=*/false);
    if (chunk.is_discarded() || !chunk.is_object()) {
      error = "malformed SSE data (not a JSON object): '" + excerpt(ev.data) + "'";
      return false;
    }
    if (auto e = chunk.find("error"); e != chunk.end() && !e->is_null()) {
      error = "error in the stream: " + excerpt(e->dump());
      return false;
    }
    if (auto u = chunk.find("usage"); u != chunk.end() && u->is_object()) {
      if (auto c = u->find("completion_tokens"); c != u->end() && c->is_number_integer()) {
        r.output_tokens = c->get<int64_t>();
        r.usage_reported = true;
      }
      if (auto p = u->find("prompt_tokens"); p != u->end() && p->is_number_integer()) r.prompt_tokens = p->get<int64_t>();
    }
    bool has_choice = false;
    const std::string text = chunk_text(chunk, &has_choice, &r.finish_reason);
    if (!text.empty()) {
      if (r.num_content_chunks == 0) r.ttft_s = seconds(t - start);
      else r.itl_s.push_back(seconds(t - last_chunk));
      last_chunk = t;
      ++r.num_content_chunks;
      if (spec.stop_after_chunks > 0 && r.num_content_chunks >= spec.stop_after_chunks) {
        r.stopped_by_client = true;  // measured like [DONE]; closing the connection cancels the request
        done = true;
        done_at = t;
      }
    }
    return true;
  };

  const Status s = http_fetch(
      config.url, req, [&](const HttpResponseHead& h) { r.http_status = h.status; },
      [&](std::string_view bytes, Clock::time_point t) {
        if (r.http_status != 200) {
          error_body.append(bytes.substr(0, kMaxErrorBody - std::min(kMaxErrorBody, error_body.size())));
          return error_body.size() < kMaxErrorBody;
        }
        events.clear();
        if (Status fs = sse.feed(bytes, &events); !fs.ok()) {
          error = fs.message();
          return false;
        }
        for (const SseEvent& ev : events) {
          if (!on_event(ev, t)) return false;
          if (done) return false;  // [DONE] ends the measurement; the rest is not read
        }
        return true;
      });
  r.e2e_s = seconds((done ? done_at : Clock::now()) - start);
  if (r.http_status != 0 && r.http_status != 200) {  // the status says more than a transport error after it
    r.error = "HTTP " + std::to_string(r.http_status) + ": " + excerpt(error_body);
  } else if (!s.ok()) {
    r.error = s.message();
  } else if (!error.empty()) {
    r.error = error;
  } else if (!done) {
    r.error = sse.has_partial_event() ? "the stream ended inside an event, without data: [DONE]"
                                      : "the stream ended without data: [DONE]";
  }
  r.success = r.error.empty();
  if (!r.usage_reported) r.output_tokens = r.num_content_chunks;
  if (r.num_content_chunks == 0) r.ttft_s = r.e2e_s;  // nothing visible arrived before the end
  return r;
}

RunResult run_benchmark(const RunConfig& config, const std::vector<RequestSpec>& specs) {
  RunResult out;
  const int64_t n = static_cast<int64_t>(specs.size());
  out.requests.resize(specs.size());
  int64_t num_workers = config.max_concurrency > 0 ? std::min(config.max_concurrency, n) : n;
  num_workers = std::clamp<int64_t>(num_workers, 1, kMaxClientThreads);

  std::mutex mu;
  std::condition_variable cv;
  std::deque<size_t> ready;
  bool all_dispatched = false, stop_metrics = false;
  std::atomic<int64_t> in_flight{0}, peak{0};
  Clock::time_point last_end;
  auto scrape = [&](std::vector<PromSample>* samples) -> Status {
    NB_ASSIGN_OR_RETURN(HttpSimpleResponse resp, http_get(config.url, "/metrics", 5.0, 8u << 20, auth_headers(config)));
    if (resp.status != 200) return not_found("GET /metrics answered HTTP " + std::to_string(resp.status));
    *samples = parse_prometheus_text(resp.body);
    return Status::Ok();
  };
  if (config.metrics_interval_s > 0) out.metrics_before_valid = scrape(&out.metrics_before).ok();
  const Clock::time_point t0 = Clock::now();
  const Clock::time_point stop_sending =
      config.duration_s > 0 ? t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(config.duration_s))
                            : Clock::time_point::max();
  std::thread metrics_thread;
  if (config.metrics_interval_s > 0) {
    metrics_thread = std::thread([&] {
      const auto interval = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(config.metrics_interval_s));
      std::unique_lock lock(mu);
      while (!stop_metrics) {
        lock.unlock();
        std::vector<PromSample> samples;
        const Status s = scrape(&samples);
        lock.lock();
        if (s.ok()) out.metrics.observe(samples);
        else if (out.metrics_error.empty()) out.metrics_error = s.message();
        cv.wait_for(lock, interval, [&] { return stop_metrics; });
      }
    });
  }

  std::vector<std::thread> workers;
  for (int64_t w = 0; w < num_workers; ++w) {
    workers.emplace_back([&] {
      while (true) {
        size_t i;
        {
          std::unique_lock lock(mu);
          cv.wait(lock, [&] { return !ready.empty() || all_dispatched; });
          if (ready.empty()) return;
          i = ready.front();
          ready.pop_front();
        }
        if (Clock::now() >= stop_sending) continue;  // stays unsent
        const int64_t now_in_flight = ++in_flight;
        for (int64_t p = peak.load(); now_in_flight > p && !peak.compare_exchange_weak(p, now_in_flight);) {}
        RequestResult r = run_one_request(config, specs[i], t0);
        --in_flight;
        std::lock_guard lock(mu);
        out.requests[i] = std::move(r);
        last_end = std::max(last_end, Clock::now());
      }
    });
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    if (t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(specs[i].arrival_s)) >= stop_sending) break;
    std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(specs[i].arrival_s)));
    std::lock_guard lock(mu);
    ready.push_back(i);
    cv.notify_all();
  }
  {
    std::lock_guard lock(mu);
    all_dispatched = true;
    cv.notify_all();
  }
  for (auto& t : workers) t.join();
  {
    std::lock_guard lock(mu);
    stop_metrics = true;
    cv.notify_all();
  }
  if (metrics_thread.joinable()) metrics_thread.join();
  out.duration_s = last_end > t0 ? seconds(last_end - t0) : 0.0;
  out.peak_in_flight = peak.load();
  if (config.metrics_interval_s > 0) {
    // The server's gauges may lag the last [DONE] a little (the stream can be written before the
    // engine's stats are refreshed), so let them settle: stop at zero KV blocks in use, or after
    // kSettleScrapes tries. A leak still shows as a non-zero value.
    for (int attempt = 0; attempt < kSettleScrapes; ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::vector<PromSample> samples;
      if (!scrape(&samples).ok()) continue;
      out.metrics_after = std::move(samples);
      out.metrics_after_valid = true;
      MetricPeaks now;
      now.observe(out.metrics_after);
      if (!(now.last_of("nibble_kv_blocks_used", "kv_blocks_used") > 0)) break;
    }
  }
  return out;
}

Result<std::string> first_served_model(const RunConfig& config) {
  NB_ASSIGN_OR_RETURN(HttpSimpleResponse resp, http_get(config.url, "/v1/models", 10.0, 1u << 20, auth_headers(config)));
  if (resp.status != 200) {
    return failed_precondition("GET /v1/models answered HTTP " + std::to_string(resp.status) + "; pass --model NAME");
  }
  const json j = json::parse(resp.body, nullptr, false);
  if (j.is_object()) {
    if (auto d = j.find("data"); d != j.end() && d->is_array() && !d->empty() && (*d)[0].is_object()) {
      if (auto id = (*d)[0].find("id"); id != (*d)[0].end() && id->is_string()) return id->get<std::string>();
    }
  }
  return data_loss("GET /v1/models did not list a model id; pass --model NAME");
}

}  // namespace nb::bench_serve
