// nibble bench batching: the engine in-process, on one fixed workload, under the comparison switches:
//   layout:   paged vs contiguous KV (same KV memory, all requests queued at once): peak concurrency
//   batching: continuous vs static batching (same Poisson arrivals): throughput and latency
// Each request has a random prompt and max_tokens (default 2048), and the client stops it after a
// target length drawn uniformly from --output-len-range, as a stop sequence would: the contiguous
// layout must reserve max_tokens while the paged one grows block by block.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/contiguous_kv.h"
#include "engine/engine.h"
#include "model/llama.h"
#include "tools/bench_commands.h"
#include "tools/cli_args.h"
#include "tools/cli_device.h"
#include "tools/cli_model.h"

namespace nb::tools {
namespace {

struct Workload {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int64_t> target_len;
  std::vector<double> arrival_s;  // offsets from the start
};

struct RunResult {
  double seconds = 0;
  int64_t output_tokens = 0;
  int64_t peak_running = 0;
  int64_t preemptions = 0;
  int64_t padding_tokens = 0;
  double mean_latency_s = 0;
};

Result<RunResult> run_workload(LlamaModel& model, const EngineConfig& cfg, const Workload& w, int64_t max_tokens) {
  NB_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::create(model, cfg));
  const size_t n = w.prompts.size();
  std::mutex mu;
  std::vector<int64_t> got(n, 0);
  std::vector<bool> stopped(n, false), done(n, false);
  std::vector<double> latency(n, 0);
  std::vector<RequestId> ids(n, 0);
  std::atomic<size_t> num_done{0};
  const auto t0 = std::chrono::steady_clock::now();
  auto now_s = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  std::vector<double> submitted_at(n, 0);
  RunResult res;
  size_t next = 0;
  while (num_done.load() < n) {
    while (next < n && w.arrival_s[next] <= now_s()) {
      GenerationRequest r;
      r.prompt = w.prompts[next];
      r.max_tokens = max_tokens;
      r.sampling.temperature = 0;
      const size_t i = next;
      submitted_at[i] = now_s();
      Engine* e = engine.get();
      auto rid = engine->submit(std::move(r), [&, i, e](const RequestOutput& o) {
        std::lock_guard<std::mutex> lock(mu);
        got[i] += static_cast<int64_t>(o.tokens.size());
        if (!stopped[i] && got[i] >= w.target_len[i]) {
          stopped[i] = true;  // the client has what it wanted: stop, as a stop sequence would
          e->cancel(o.id);
        }
        if (o.finished && !done[i]) {
          done[i] = true;
          latency[i] = now_s() - submitted_at[i];
          num_done.fetch_add(1);
        }
      });
      if (!rid.ok()) return rid.status();
      ++next;
    }
    const EngineStats st = engine->stats();
    res.peak_running = std::max(res.peak_running, st.num_running);
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  res.seconds = now_s();
  const EngineStats st = engine->stats();
  res.output_tokens = st.num_generated_tokens;
  res.preemptions = st.num_preemptions;
  res.padding_tokens = st.num_padding_tokens;
  double sum = 0;
  for (double l : latency) sum += l;
  res.mean_latency_s = sum / static_cast<double>(n);
  return res;
}

void print_row(const char* name, const RunResult& r) {
  std::printf("  %-24s %8.1f s %10lld tok %9.1f tok/s %8lld peak running %6lld preempt %8.2f s mean latency\n", name,
              r.seconds, static_cast<long long>(r.output_tokens), r.output_tokens / r.seconds,
              static_cast<long long>(r.peak_running), static_cast<long long>(r.preemptions), r.mean_latency_s);
}

}  // namespace

int run_bench_batching(int argc, char** argv) {
  CliArgs args("bench batching", "-m MODEL [options]");
  args.option("-m,--model", "model file or directory");
  args.option("-t,--threads", "threads", "2");
  args.option("--num-requests", "requests in the workload", "64");
  args.option("--prompt-len", "prompt tokens per request", "64");
  args.option("--output-len-range", "target output lengths, uniform a:b", "16:512");
  args.option("--max-tokens", "max_tokens of every request", "2048");
  add_kv_memory_options(args, "512MiB");
  args.option("--request-rate", "Poisson arrivals for the batching comparison, requests/s", "4");
  args.option("--max-batched-tokens", "tokens per engine step", "512");
  args.option("--seed", "workload seed", "1");
  args.option("--compare", "layout, batching or all", "all");
  add_kv_cache_options(args);
  add_device_options(args);
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("bench batching", s);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  if (!args.has("-m")) return fail("bench batching", invalid_argument("-m MODEL is required"));
  auto threads = args.get_int("-t", 1, 256);
  auto num = args.get_int("--num-requests", 1, 100000);
  auto plen = args.get_int("--prompt-len", 1, 1 << 20);
  auto max_tokens = args.get_int("--max-tokens", 1, 1 << 20);
  auto rate = args.get_float("--request-rate", 1e-3, 1e6);
  auto budget = args.get_int("--max-batched-tokens", 1, 1 << 16);
  auto seed = args.get_int("--seed", 0, INT64_MAX);
  for (const Status* s : {&threads.status(), &num.status(), &plen.status(), &max_tokens.status(), &rate.status(),
                          &budget.status(), &seed.status()}) {
    if (!s->ok()) return fail("bench batching", *s);
  }
  int64_t lo = 0, hi = 0;
  if (std::sscanf(args.get("--output-len-range").c_str(), "%lld:%lld", reinterpret_cast<long long*>(&lo),
                  reinterpret_cast<long long*>(&hi)) != 2 || lo < 1 || hi < lo) {
    return fail("bench batching", invalid_argument("--output-len-range must be a:b with 1 <= a <= b"));
  }
  const std::string compare = args.get("--compare");

  auto loaded = load_model(args.get("-m"));
  if (!loaded.ok()) return fail("bench batching", loaded.status());
  auto model = LlamaModel::create(std::move(loaded->weights), static_cast<int>(*threads), *budget);
  if (!model.ok()) return fail("bench batching", model.status());
  LlamaModel& m = **model;
  if (Status s = attach_device(args, m, *budget); !s.ok()) return fail("bench batching", s);
  if (Status s = apply_kv_cache_options(args, m); !s.ok()) return fail("bench batching", s);
  auto kv_size = kv_cache_bytes_from(args, m, EngineConfig{}.block_size);  // each engine is gone before the next
  if (!kv_size.ok()) return fail("bench batching", kv_size.status());
  const int64_t kv_bytes = *kv_size;

  // The workload: fixed by the seed; uniform draws from raw generator bits.
  std::mt19937_64 rng(static_cast<uint64_t>(*seed));
  auto uniform = [&] { return static_cast<double>(rng() >> 11) * 0x1.0p-53; };
  Workload w;
  double t = 0;
  for (int64_t i = 0; i < *num; ++i) {
    std::vector<int32_t> p(static_cast<size_t>(*plen));
    for (auto& id : p) id = static_cast<int32_t>(rng() % static_cast<uint64_t>(m.config().vocab_size));
    w.prompts.push_back(std::move(p));
    w.target_len.push_back(lo + static_cast<int64_t>(uniform() * static_cast<double>(hi - lo + 1)));
    w.arrival_s.push_back(t);
    t += -std::log(1.0 - uniform()) / *rate;
  }
  std::printf("workload: %lld requests, prompt %lld tokens, output %lld..%lld tokens (max_tokens %lld), KV %lld MiB\n",
              static_cast<long long>(*num), static_cast<long long>(*plen), static_cast<long long>(lo),
              static_cast<long long>(hi), static_cast<long long>(*max_tokens), static_cast<long long>(kv_bytes >> 20));
  EngineConfig base;
  base.kv_cache_bytes = kv_bytes;
  base.max_batched_tokens = *budget;
  const int64_t block_bytes = KvStorage::block_bytes(m, base.block_size);
  std::printf("KV cache: %s, %lld bytes a block of %lld tokens -> %lld blocks, %lld tokens\n",
              kv_cache_dtype_name(m.kv_cache_dtype()), static_cast<long long>(block_bytes),
              static_cast<long long>(base.block_size), static_cast<long long>(kv_bytes / block_bytes),
              static_cast<long long>(kv_bytes / block_bytes * base.block_size));
  if (compare == "layout" || compare == "all") {
    Workload burst = w;
    std::fill(burst.arrival_s.begin(), burst.arrival_s.end(), 0.0);  // all queued at once
    EngineConfig paged = base, contiguous = base;
    contiguous.kv_layout = KvLayout::kContiguous;
    auto a = run_workload(m, paged, burst, *max_tokens);
    if (!a.ok()) return fail("bench batching", a.status());
    auto b = run_workload(m, contiguous, burst, *max_tokens);
    if (!b.ok()) return fail("bench batching", b.status());
    std::printf("paged vs contiguous KV (all requests queued at once, same KV memory):\n");
    print_row("paged", *a);
    print_row("contiguous", *b);
    std::printf("  peak concurrent sequences: paged / contiguous = %.2fx; throughput %.2fx\n",
                static_cast<double>(a->peak_running) / std::max<int64_t>(1, b->peak_running),
                (a->output_tokens / a->seconds) / (b->output_tokens / b->seconds));
  }
  if (compare == "batching" || compare == "all") {
    EngineConfig cont = base, stat = base;
    stat.batching = BatchingPolicy::kStatic;
    auto a = run_workload(m, cont, w, *max_tokens);
    if (!a.ok()) return fail("bench batching", a.status());
    auto b = run_workload(m, stat, w, *max_tokens);
    if (!b.ok()) return fail("bench batching", b.status());
    std::printf("continuous vs static batching (Poisson arrivals at %.2f req/s, paged KV):\n", *rate);
    print_row("continuous", *a);
    print_row("static", *b);
    std::printf("  throughput: continuous / static = %.2fx; mean latency static / continuous = %.2fx\n",
                (a->output_tokens / a->seconds) / (b->output_tokens / b->seconds),
                b->mean_latency_s / a->mean_latency_s);
    std::printf("  static batching computed %lld padding rows (slots of requests that finished before their batch)\n",
                static_cast<long long>(b->padding_tokens));
  }
  return 0;
}

}  // namespace nb::tools
