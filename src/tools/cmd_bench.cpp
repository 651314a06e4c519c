// nibble bench decode: prompt-processing and decode speed of one sequence, median of several runs.
// Token ids are drawn from a fixed-seed generator (speed does not depend on the text).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "engine/contiguous_kv.h"
#include "model/llama.h"
#include "tools/bench_commands.h"
#include "tools/bench_serve/bench_serve.h"
#include "tools/cli_args.h"
#include "tools/cli_model.h"
#include "tools/commands.h"

namespace nb::tools {

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

Result<std::vector<int64_t>> parse_sizes(const std::string& list, const std::string& opt, int64_t max_value) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < list.size();) {
    const size_t j = std::min(list.find(',', i), list.size());
    const std::string item = list.substr(i, j - i);
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || item.size() > 18 ||
        std::stoll(item) < 1 || std::stoll(item) > max_value) {
      return invalid_argument(opt + " takes comma-separated sizes in [1, " + std::to_string(max_value) +
                              "] like 1,2,4; got '" + list + "'");
    }
    out.push_back(std::stoll(item));
    i = j + 1;
  }
  if (out.empty()) return invalid_argument(opt + " is empty");
  return out;
}

namespace {

std::string join(const std::vector<double>& v) {
  std::string s;
  char buf[32];
  for (double x : v) {
    std::snprintf(buf, sizeof buf, "%s%.1f", s.empty() ? "" : " ", x);
    s += buf;
  }
  return s;
}

int run_bench_decode(int argc, char** argv) {
  CliArgs args("bench decode", "-m MODEL [-t THREADS] [-p PROMPT_TOKENS] [-n GEN_TOKENS] [-r RUNS]");
  args.option("-m,--model", "model file or directory");
  args.option("-t,--threads", "threads", "2");
  args.option("-p,--prompt-tokens", "prompt length for prompt processing", "128");
  args.option("-n,--gen-tokens", "tokens decoded per run", "64");
  args.option("-r,--runs", "repetitions (the median is reported)", "5");
  add_kv_cache_options(args);
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("bench decode", s);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  if (!args.has("-m")) return fail("bench decode", invalid_argument("-m MODEL is required"));
  auto threads = args.get_int("-t", 1, 256);
  auto num_prompt = args.get_int("-p", 1, 1 << 20);
  auto num_gen = args.get_int("-n", 1, 1 << 20);
  auto runs = args.get_int("-r", 1, 1000);
  for (const Status* s : {&threads.status(), &num_prompt.status(), &num_gen.status(), &runs.status()}) {
    if (!s->ok()) return fail("bench decode", *s);
  }
  auto loaded = load_model(args.get("-m"));
  if (!loaded.ok()) return fail("bench decode", loaded.status());
  const int64_t bytes = loaded->weights.num_bytes();
  const int64_t params = loaded->weights.num_params();
  auto model = LlamaModel::create(std::move(loaded->weights), static_cast<int>(*threads));
  if (!model.ok()) return fail("bench decode", model.status());
  LlamaModel& m = **model;
  if (Status s = apply_kv_cache_options(args, m); !s.ok()) return fail("bench decode", s);
  const ModelConfig& c = m.config();
  const int64_t total = *num_prompt + *num_gen;
  if (total > c.max_seq_len) {
    return fail("bench decode", invalid_argument("prompt + generated tokens (" + std::to_string(total) +
                                                     ") exceed the model's context (" +
                                                     std::to_string(c.max_seq_len) + "); lower -p or -n"));
  }
  auto kv_or = ContiguousKvCache::create(m, total);
  if (!kv_or.ok()) return fail("bench decode", kv_or.status());
  ContiguousKvCache& kv = *kv_or;
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.vocab_size - 1));
  std::vector<int32_t> ids(static_cast<size_t>(total));
  for (auto& id : ids) id = pick(rng);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));

  std::vector<double> pp, tg;
  for (int64_t r = 0; r <= *runs; ++r) {  // run 0 warms caches and page-faults the weights in
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t pos = 0; pos < *num_prompt; pos += LlamaModel::kMaxChunkTokens) {
      const int64_t n = std::min(LlamaModel::kMaxChunkTokens, *num_prompt - pos);
      const ForwardBatch b =
          ForwardBatch::single(std::span<const int32_t>(ids.data() + pos, static_cast<size_t>(n)), pos, kv.block_table());
      if (Status s = m.forward(b, kv.pools(), logits.data()); !s.ok()) return fail("bench decode", s);
    }
    auto t1 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < *num_gen; ++i) {
      const int64_t pos = *num_prompt + i;
      const ForwardBatch b = ForwardBatch::single(std::span<const int32_t>(ids.data() + pos, 1), pos, kv.block_table());
      if (Status s = m.forward(b, kv.pools(), logits.data()); !s.ok()) return fail("bench decode", s);
    }
    auto t2 = std::chrono::steady_clock::now();
    if (r == 0) continue;
    pp.push_back(static_cast<double>(*num_prompt) / std::chrono::duration<double>(t1 - t0).count());
    tg.push_back(static_cast<double>(*num_gen) / std::chrono::duration<double>(t2 - t1).count());
  }
  const double pp_med = median(pp), tg_med = median(tg);
  std::printf("model              %s\n", args.get("-m").c_str());
  std::printf("weights            %.1f M params, %.1f MiB, threads %lld, KV cache %s\n", params / 1e6,
              bytes / 1048576.0, static_cast<long long>(*threads), kv_cache_dtype_name(m.kv_cache_dtype()));
  std::printf("prompt processing  %lld tokens: median %.1f tokens/s  (runs: %s)\n",
              static_cast<long long>(*num_prompt), pp_med, join(pp).c_str());
  std::printf("decode             %lld tokens after the prompt: median %.1f tokens/s, %.2f ms/token  (runs: %s)\n",
              static_cast<long long>(*num_gen), tg_med, 1000.0 / tg_med, join(tg).c_str());
  std::printf("decode bandwidth   %.2f GB/s of weights read (weights bytes x tokens/s)\n", bytes * tg_med / 1e9);
  return 0;
}

int run_bench(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "decode") return run_bench_decode(argc - 1, argv + 1);
  if (argc >= 2 && std::string(argv[1]) == "serve") return run_bench_serve(argc - 1, argv + 1);
  if (argc >= 2 && std::string(argv[1]) == "batching") return run_bench_batching(argc - 1, argv + 1);
  if (argc >= 2 && std::string(argv[1]) == "spec") return run_bench_spec(argc - 1, argv + 1);
  if (argc >= 2 && std::string(argv[1]) == "gpu") return bench_gpu_main(argc - 1, argv + 1);
  if (argc >= 2 && std::string(argv[1]) == "gemm") return run_bench_gemm(argc - 1, argv + 1);
  if (argc >= 2 && std::string(argv[1]) == "kv") return run_bench_kv(argc - 1, argv + 1);
  if (argc >= 2 && std::string(argv[1]) == "w8a8") return run_bench_w8a8(argc - 1, argv + 1);
  std::fprintf(stderr,
               "usage: nibble bench decode -m MODEL [options]     prompt-processing and decode speed\n"
               "       nibble bench batching -m MODEL [options]   paged vs contiguous KV, continuous vs static batching\n"
               "       nibble bench spec -m MODEL --speculative M  speculative decoding: acceptance, tokens/step, speedup\n"
               "       nibble bench gpu -m MODEL --device cuda    GPU decode vs roofline, prefill GEMM rate, batch sweep\n"
               "       nibble bench gemm [--batches 1,2,4]        GPU W4A16 vs f16 GEMM on Llama-2-7B shapes, vs roofline\n"
               "       nibble bench kv [--context 4096]           GPU paged attention time, f16 vs int8 vs int4 KV cache\n"
               "       nibble bench w8a8 [--m 1024,2048,4096]     GPU W8A8 linears vs cuBLAS f16 on Llama-2-7B shapes\n");
  return 2;
}

}  // namespace
NB_REGISTER_COMMAND("bench", run_bench, "decode -m MODEL: prompt-processing and decode tokens/s (median of runs)");
}  // namespace nb::tools
