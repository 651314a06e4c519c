// nibble bench serve: a load generator for OpenAI-compatible servers (streamed /v1/completions),
// reporting throughput and TTFT / TPOT / ITL / end-to-end latency percentiles like vLLM's
// benchmark_serving, plus the server's peak running requests and KV blocks from /metrics.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "tools/bench_serve/bench_serve.h"
#include "tools/bench_serve/prompts.h"
#include "tools/bench_serve/report.h"
#include "tools/bench_serve/runner.h"
#include "tools/bench_serve/stats.h"
#include "tools/cli_args.h"

namespace nb::tools {
namespace {

using namespace nb::bench_serve;

constexpr const char* kCmd = "bench serve";
constexpr int64_t kMaxLen = 1 << 20;

struct LengthRange {
  int64_t lo = 0, hi = 0;
  std::string text;  // as given, for the report
};

// "--x-len L" or "--x-len-range a:b" (not both).
Result<LengthRange> length_range(const CliArgs& args, const std::string& fixed, const std::string& range, int64_t min) {
  if (args.has(fixed) && args.has(range)) return invalid_argument("give " + fixed + " or " + range + ", not both");
  LengthRange r;
  if (!args.has(range)) {
    NB_ASSIGN_OR_RETURN(r.lo, args.get_int(fixed, min, kMaxLen));
    r.hi = r.lo;
    r.text = std::to_string(r.lo);
    return r;
  }
  const std::string v = args.get(range);
  long long a = 0, b = 0;
  int consumed = 0;
  if (std::sscanf(v.c_str(), "%lld:%lld%n", &a, &b, &consumed) != 2 || consumed != static_cast<int>(v.size()) ||
      a < min || b < a || b > kMaxLen) {
    return invalid_argument(range + " must be A:B with " + std::to_string(min) + " <= A <= B <= " + std::to_string(kMaxLen) +
                            "; got '" + v + "'");
  }
  r.lo = a;
  r.hi = b;
  r.text = v;
  return r;
}

// Independent streams per purpose, so changing e.g. the rate keeps the same prompts.
uint64_t stream_seed(uint64_t seed, uint64_t purpose) { return Rng(seed ^ (purpose * 0xD1B54A32D192ED03ull)).next_u64(); }

Result<std::unique_ptr<Tokenizer>> load_prompt_tokenizer(const CliArgs& args) {
  if (args.has("--tokenizer") && args.has("-m")) return invalid_argument("give --tokenizer or -m, not both");
  const std::string path = args.has("--tokenizer") ? args.get("--tokenizer") : args.get("-m");
  if (path.empty()) return std::unique_ptr<Tokenizer>();
  NB_ASSIGN_OR_RETURN(TokenizerSource source, detect_tokenizer_source(path));
  return load_tokenizer(source);
}

struct Workload {
  std::vector<RequestSpec> specs;
  bool exact = false;
};

// request_max_tokens > 0: every request asks for that many tokens and the client closes the
// stream at the drawn output length.
Result<Workload> make_workload(const Tokenizer* tokenizer, int64_t num_prompts, double rate, uint64_t seed,
                               const LengthRange& in, const LengthRange& out, int64_t prefix_len,
                               int64_t request_max_tokens) {
  NB_ASSIGN_OR_RETURN(PromptBuilder builder, PromptBuilder::create(tokenizer));
  Workload w;
  w.exact = builder.exact();
  Rng prompt_rng(stream_seed(seed, 3)), len_rng(stream_seed(seed, 2));
  std::string prefix;
  if (prefix_len > 0) {
    NB_ASSIGN_OR_RETURN(prefix, builder.build(prefix_len, prompt_rng));
  }
  const std::vector<double> arrivals = poisson_arrivals(num_prompts, rate, stream_seed(seed, 1));
  for (int64_t i = 0; i < num_prompts; ++i) {
    RequestSpec s;
    const int64_t input_len = len_rng.next_int(in.lo, in.hi);
    const int64_t output_len = len_rng.next_int(out.lo, out.hi);
    s.max_tokens = request_max_tokens > 0 ? request_max_tokens : output_len;
    s.stop_after_chunks = request_max_tokens > 0 ? output_len : 0;
    NB_ASSIGN_OR_RETURN(std::string body, builder.build(input_len, prompt_rng, prefix, prefix_len));
    s.prompt = prefix + body;
    s.prompt_len = w.exact ? prefix_len + input_len : -1;
    s.arrival_s = arrivals[static_cast<size_t>(i)];
    w.specs.push_back(std::move(s));
  }
  return w;
}

int run(int argc, char** argv) {
  CliArgs args(kCmd, "[--url URL] [--num-prompts N] [--request-rate R] [--max-concurrency C] [options]");
  args.option("--url", "server base URL", "http://127.0.0.1:8080");
  args.option("--endpoint", "completions endpoint", "/v1/completions");
  args.option("--model", "model name sent in requests (default: the first id from GET /v1/models)");
  args.option("--num-prompts", "requests to send", "100");
  args.option("--request-rate", "Poisson arrival rate in requests/s; inf sends all at once", "inf");
  args.option("--max-concurrency", "in-flight requests at most (client threads, capped at 512); 0 = no limit", "0");
  args.option("--input-len", "prompt tokens (after the shared prefix)", "128");
  args.option("--input-len-range", "prompt tokens drawn uniformly from A:B (instead of --input-len)");
  args.option("--output-len", "max_tokens of each request", "64");
  args.option("--output-len-range", "max_tokens drawn uniformly from A:B (instead of --output-len)");
  args.option("--request-max-tokens",
              "send this max_tokens; the client closes each stream at its drawn output length");
  args.option("--duration-s", "stop sending new requests after this many seconds; 0 = send all", "0");
  args.option("--shared-prefix-len", "tokens of a common system prefix before every prompt", "0");
  args.option("--seed", "seed for arrivals, lengths and prompts", "0");
  args.option("--tokenizer", "tokenizer file for exact prompt lengths (.gguf, tokenizer.json, tokenizer.model)");
  args.option("-m", "model file or directory whose tokenizer gives exact prompt lengths");
  args.option("--temperature", "sampling temperature sent with each request", "0");
  args.flag("--no-ignore-eos", "do not send ignore_eos (requests may stop early at EOS)");
  args.option("--api-key", "sent as 'Authorization: Bearer KEY'");
  args.option("--timeout-s", "deadline per request in seconds", "600");
  args.option("--metrics-interval-ms", "how often to scrape GET /metrics; 0 = never", "100");
  args.option("--json", "also write the results (with per-request detail) to this JSON file");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail(kCmd, s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
  if (!args.positional().empty()) return fail(kCmd, invalid_argument("unexpected argument '" + args.positional()[0] + "'"));
  const double inf = std::numeric_limits<double>::infinity();
  auto num_prompts = args.get_int("--num-prompts", 1, 1 << 24);
  auto rate = args.get_float("--request-rate", 1e-9, inf);
  auto max_conc = args.get_int("--max-concurrency", 0, 1 << 24);
  auto prefix_len = args.get_int("--shared-prefix-len", 0, kMaxLen);
  auto seed = args.get_int("--seed", 0, std::numeric_limits<int64_t>::max());
  auto temperature = args.get_float("--temperature", 0, 100);
  auto timeout = args.get_float("--timeout-s", 0.001, 1e7);
  auto interval_ms = args.get_float("--metrics-interval-ms", 0, 1e7);
  auto duration = args.get_float("--duration-s", 0, 1e9);
  auto request_max = args.has("--request-max-tokens") ? args.get_int("--request-max-tokens", 1, kMaxLen) : Result<int64_t>(0);
  auto in = length_range(args, "--input-len", "--input-len-range", 1);
  auto out = length_range(args, "--output-len", "--output-len-range", 1);
  auto url = parse_url(args.get("--url"));
  for (const Status* s : {&num_prompts.status(), &rate.status(), &max_conc.status(), &prefix_len.status(), &seed.status(),
                          &temperature.status(), &timeout.status(), &interval_ms.status(), &in.status(), &out.status(),
                          &url.status(), &duration.status(), &request_max.status()}) {
    if (!s->ok()) return fail(kCmd, *s);
  }
  if (*request_max > 0 && out->hi > *request_max) {
    return fail(kCmd, invalid_argument("output lengths up to " + std::to_string(out->hi) + " exceed --request-max-tokens " +
                                           std::to_string(*request_max) + "; lower the output length or raise it"));
  }
  auto tokenizer = load_prompt_tokenizer(args);
  if (!tokenizer.ok()) return fail(kCmd, tokenizer.status());
  auto workload = make_workload(tokenizer->get(), *num_prompts, *rate, static_cast<uint64_t>(*seed), *in, *out,
                                *prefix_len, *request_max);
  if (!workload.ok()) return fail(kCmd, workload.status());

  RunConfig config;
  config.url = *url;
  config.endpoint = args.get("--endpoint");
  config.api_key = args.get("--api-key");
  config.ignore_eos = !args.has("--no-ignore-eos");
  config.temperature = *temperature;
  config.max_concurrency = *max_conc;
  if (*max_conc == 0 || *max_conc > kMaxClientThreads) {
    if (*num_prompts > kMaxClientThreads) {
      std::fprintf(stderr, "nibble bench serve: note: at most %lld requests are in flight at once (client threads)\n",
                   static_cast<long long>(kMaxClientThreads));
    }
  }
  config.timeout_s = *timeout;
  config.metrics_interval_s = *interval_ms / 1e3;
  config.duration_s = *duration;
  if (args.has("--model")) {
    config.model = args.get("--model");
  } else {
    auto model = first_served_model(config);
    if (!model.ok()) return fail(kCmd, model.status());
    config.model = *model;
  }
  std::fprintf(stderr, "nibble bench serve: %lld requests to %s (model %s), rate %s req/s, max concurrency %s\n",
               static_cast<long long>(*num_prompts), args.get("--url").c_str(), config.model.c_str(),
               std::isfinite(*rate) ? std::to_string(*rate).c_str() : "inf",
               *max_conc > 0 ? std::to_string(*max_conc).c_str() : "unbounded");
  const RunResult result = run_benchmark(config, workload->specs);
  const BenchReport report = make_report(result);

  ReportContext ctx;
  ctx.url = args.get("--url");
  ctx.model = config.model;
  ctx.endpoint = config.endpoint;
  ctx.num_prompts = *num_prompts;
  ctx.request_rate = *rate;
  ctx.max_concurrency = *max_conc;
  ctx.seed = static_cast<uint64_t>(*seed);
  ctx.ignore_eos = config.ignore_eos;
  ctx.exact_prompt_lengths = workload->exact;
  ctx.input_lens = in->text;
  ctx.output_lens = out->text;
  ctx.shared_prefix_len = *prefix_len;
  std::fputs(format_text(ctx, report, result).c_str(), stdout);
  if (args.has("--json")) {
    std::ofstream f(args.get("--json"));
    f << to_json(ctx, report, result).dump(2) << "\n";
    if (!f) return fail(kCmd, failed_precondition("cannot write '" + args.get("--json") + "'"));
  }
  return report.failed == 0 ? 0 : 1;
}

}  // namespace

int run_bench_serve(int argc, char** argv) { return run(argc, argv); }

}  // namespace nb::tools
