// nibble bench-ops: times nb::cpu::matmul on the SmolLM2-135M shapes and estimates the per-token
// matmul time of the whole model from them.
// Weights are "cold" by default: each shape gets enough distinct copies (>= 64 MiB, twice the L3)
// that every call streams its weights from DRAM, as decode does with a real model. --hot reuses
// one copy (cache resident), which flatters the small shapes.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/thread_pool.h"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

constexpr const char* kCmd = "bench-ops";

struct MatShape {
  int64_t n, k;
  int per_layer;  // how many matmuls of this shape one SmolLM2-135M layer runs (0: the output head)
};
// SmolLM2-135M: dim 576, 9 heads + 3 kv heads of 64, hidden 1536, vocab 49152, 30 layers.
const MatShape kShapes[] = {{576, 576, 2}, {192, 576, 2}, {1536, 576, 2}, {576, 1536, 1}, {49152, 576, 0}};
constexpr int kLayers = 30;

// A set of weight copies of one shape, cycled so that each call reads weights not in cache.
struct WeightSet {
  std::vector<std::vector<uint8_t>> copies;
  std::vector<Tensor> tensors;
};

WeightSet make_weights(DType dtype, int64_t n, int64_t k, bool hot, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.05f);
  std::vector<float> row(static_cast<size_t>(k));
  const size_t rb = row_bytes(dtype, k), bytes = rb * static_cast<size_t>(n);
  WeightSet ws;
  ws.copies.emplace_back(bytes);
  for (int64_t r = 0; r < n; ++r) {
    for (float& v : row) v = nd(rng);
    quantize_row(dtype, row.data(), ws.copies[0].data() + rb * static_cast<size_t>(r), k);
  }
  const size_t num = hot ? 1 : std::max<size_t>(2, (size_t{64} << 20) / bytes + 1);
  for (size_t i = 1; i < num; ++i) ws.copies.push_back(ws.copies[0]);
  for (auto& c : ws.copies) ws.tensors.push_back(Tensor::view(c.data(), {n, k}, dtype));
  return ws;
}

struct Timing {
  double median, min;  // seconds per call
};

// Seconds per call over `reps` repetitions of `inner` calls each (inner chosen so one repetition
// lasts >= ~2 ms, well above timer and dispatch noise). The median is the figure to report; the
// minimum shows what the kernel does when nothing else disturbs the machine.
Timing time_matmul(const WeightSet& ws, const float* x, float* y, int64_t m, ThreadPool& pool, int reps) {
  using clock = std::chrono::steady_clock;
  size_t next = 0;
  auto call = [&] {
    cpu::matmul({ws.tensors[next], x, y, m}, pool);
    next = (next + 1) % ws.tensors.size();
  };
  for (int i = 0; i < 3; ++i) call();
  const auto t0 = clock::now();
  call();
  const double once = std::chrono::duration<double>(clock::now() - t0).count();
  const int inner = static_cast<int>(std::clamp(2e-3 / std::max(once, 1e-7), 1.0, 2000.0));
  std::vector<double> per_call;
  for (int r = 0; r < reps; ++r) {
    const auto a = clock::now();
    for (int i = 0; i < inner; ++i) call();
    per_call.push_back(std::chrono::duration<double>(clock::now() - a).count() / inner);
  }
  std::sort(per_call.begin(), per_call.end());
  return {per_call[per_call.size() / 2], per_call[0]};
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

Result<DType> parse_dtype(const std::string& s) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
    if (s == dtype_name(t)) return t;
  }
  return invalid_argument("unknown dtype '" + s + "'; expected one of: f32, f16, bf16, q8_0, q4_0, q4_1");
}

Result<std::vector<int64_t>> parse_ints(const std::string& opt, const std::string& s, int64_t lo, int64_t hi) {
  std::vector<int64_t> out;
  for (const std::string& item : split_list(s)) {
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (end == nullptr || *end != '\0' || v < lo || v > hi) {
      return invalid_argument("option " + opt + " takes a comma-separated list of integers in [" +
                              std::to_string(lo) + ", " + std::to_string(hi) + "]; got '" + item + "'");
    }
    out.push_back(v);
  }
  if (out.empty()) return invalid_argument("option " + opt + " needs at least one value");
  return out;
}

// One forward's matmuls of SmolLM2-135M as stored in its Q4_1 GGUF: 30 layers with their own
// weights (q, k, v, o, gate, up, down; Q4_1) and the Q8_0 output head, in forward order. Measures
// what the per-shape table can only estimate: the whole sequence with the real memory footprint
// (96 MB, three times the L3) and no repetition of one shape.
struct SimModel {
  std::vector<WeightSet> layers;  // 7 per layer, one copy each
  WeightSet head;
};

SimModel make_sim_model() {
  SimModel sim;
  const MatShape order[] = {{576, 576, 0}, {192, 576, 0}, {192, 576, 0}, {576, 576, 0},
                            {1536, 576, 0}, {1536, 576, 0}, {576, 1536, 0}};
  std::vector<WeightSet> protos;
  for (const MatShape& s : order) protos.push_back(make_weights(DType::kQ4_1, s.n, s.k, true, 7));
  for (int l = 0; l < kLayers; ++l) {
    for (const WeightSet& proto : protos) {
      WeightSet ws;
      ws.copies.push_back(proto.copies[0]);
      ws.tensors.push_back(Tensor::view(ws.copies[0].data(), {proto.tensors[0].dim(0), proto.tensors[0].dim(1)},
                                        DType::kQ4_1));
      sim.layers.push_back(std::move(ws));
    }
  }
  sim.head = make_weights(DType::kQ8_0, 49152, 576, true, 8);
  return sim;
}

// Median seconds per token of the simulated forward at m rows (the head runs on one row, as the
// last prompt token's logits are all a prompt needs).
double time_sim(const SimModel& sim, const float* x, float* y, int64_t m, ThreadPool& pool, int reps) {
  auto pass = [&] {
    for (const WeightSet& ws : sim.layers) cpu::matmul({ws.tensors[0], x, y, m}, pool);
    cpu::matmul({sim.head.tensors[0], x, y, 1}, pool);
  };
  pass();
  std::vector<double> per_token;
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    pass();
    per_token.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count() /
                        static_cast<double>(m));
  }
  std::sort(per_token.begin(), per_token.end());
  return per_token[per_token.size() / 2];
}

int run_bench_ops(int argc, char** argv) {
  CliArgs args(kCmd, "[options]");
  args.option("--dtypes", "weight dtypes to time (f32, f16, bf16, q8_0, q4_0, q4_1)", "q4_1,q8_0,f16");
  args.option("--m", "activation rows (tokens) per call", "1,128");
  args.option("--threads", "thread counts", "1,2");
  args.option("--reps", "repetitions per measurement; the median is reported", "9");
  args.flag("--hot", "reuse one weight copy (cache resident) instead of streaming cold copies");
  args.flag("--no-sim", "skip the simulated whole-model pass");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail(kCmd, s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
  std::vector<DType> dtypes;
  for (const std::string& s : split_list(args.get("--dtypes"))) {
    Result<DType> t = parse_dtype(s);
    if (!t.ok()) return fail(kCmd, t.status());
    dtypes.push_back(*t);
  }
  Result<std::vector<int64_t>> ms = parse_ints("--m", args.get("--m"), 1, 4096);
  if (!ms.ok()) return fail(kCmd, ms.status());
  Result<std::vector<int64_t>> threads = parse_ints("--threads", args.get("--threads"), 1, 256);
  if (!threads.ok()) return fail(kCmd, threads.status());
  Result<int64_t> reps = args.get_int("--reps", 7, 1000);
  if (!reps.ok()) return fail(kCmd, reps.status());
  const bool hot = args.has("--hot");

  const int64_t max_m = *std::max_element(ms->begin(), ms->end());
  std::vector<float> x(static_cast<size_t>(max_m * 1536)), y(static_cast<size_t>(max_m * 49152));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (float& v : x) v = nd(rng);

  std::printf("matmul y[M,N] = x[M,K] W[N,K]^T, %s weights, median of %lld reps\n", hot ? "hot (cached)" : "cold",
              static_cast<long long>(*reps));
  std::printf("%-5s %4s %6s %5s %3s %10s %8s %9s %10s\n", "dtype", "M", "N", "K", "thr", "us/call", "GB/s", "GFLOP/s",
              "min us");
  // seconds[(dtype, m, threads, shape index)]
  std::map<std::tuple<int, int64_t, int64_t, int>, double> seconds;
  for (DType dtype : dtypes) {
    for (int si = 0; si < static_cast<int>(std::size(kShapes)); ++si) {
      const MatShape& s = kShapes[si];
      const WeightSet ws = make_weights(dtype, s.n, s.k, hot, static_cast<uint32_t>(si + 1));
      const double wbytes = static_cast<double>(row_bytes(dtype, s.k)) * static_cast<double>(s.n);
      for (int64_t m : *ms) {
        for (int64_t nt : *threads) {
          ThreadPool pool(static_cast<int>(nt));
          const Timing tm = time_matmul(ws, x.data(), y.data(), m, pool, static_cast<int>(*reps));
          const double sec = tm.median;
          seconds[{static_cast<int>(dtype), m, nt, si}] = sec;
          std::printf("%-5s %4lld %6lld %5lld %3lld %10.1f %8.2f %9.1f %10.1f\n", std::string(dtype_name(dtype)).c_str(),
                      static_cast<long long>(m), static_cast<long long>(s.n), static_cast<long long>(s.k),
                      static_cast<long long>(nt), sec * 1e6, wbytes / sec * 1e-9,
                      2.0 * static_cast<double>(m * s.n * s.k) / sec * 1e-9, tm.min * 1e6);
          std::fflush(stdout);
        }
      }
    }
  }

  // Per-token model estimate: 30 layers of (q, k, v, o, gate, up, down) plus the output head.
  // Prompt: the layers at M rows, divided by M, plus one M=1 head call per prompt (only the last
  // token's logits are needed) when M=1 was timed too. The SmolLM2-135M-Instruct Q4_1 GGUF stores
  // its (tied) output head token_embd as Q8_0, so that mix gets its own line when both were timed.
  auto time_of = [&](DType t, int64_t m, int64_t nt, int si) -> double {
    const auto it = seconds.find({static_cast<int>(t), m, nt, si});
    return it == seconds.end() ? -1.0 : it->second;
  };
  auto estimate = [&](const char* label, DType layer_t, DType head_t) {
    for (int64_t nt : *threads) {
      for (int64_t m : *ms) {
        double layer = 0;
        for (int si = 0; si + 1 < static_cast<int>(std::size(kShapes)); ++si) {
          layer += kShapes[si].per_layer * time_of(layer_t, m, nt, si);
        }
        const int head = static_cast<int>(std::size(kShapes)) - 1;
        const double head_m1 = time_of(head_t, 1, nt, head);
        const double head_s = head_m1 >= 0 ? head_m1 : time_of(head_t, m, nt, head) / static_cast<double>(m);
        const double per_token = (kLayers * layer + head_s) / static_cast<double>(m);
        std::printf("  %-23s threads=%lld M=%-4lld %8.3f ms/token  (%.0f tokens/s if matmuls were all)\n", label,
                    static_cast<long long>(nt), static_cast<long long>(m), per_token * 1e3, 1.0 / per_token);
      }
    }
  };
  std::printf("\nSmolLM2-135M matmul time per token (estimate from the table above):\n");
  for (DType dtype : dtypes) estimate(std::string(dtype_name(dtype)).c_str(), dtype, dtype);
  const bool have_q4_1 = std::find(dtypes.begin(), dtypes.end(), DType::kQ4_1) != dtypes.end();
  const bool have_q8_0 = std::find(dtypes.begin(), dtypes.end(), DType::kQ8_0) != dtypes.end();
  if (have_q4_1 && have_q8_0) estimate("q4_1 layers + q8_0 head", DType::kQ4_1, DType::kQ8_0);

  if (!args.has("--no-sim")) {
    std::printf("\nSimulated SmolLM2-135M forward, matmuls only (30 layers of distinct Q4_1 weights + Q8_0 head):\n");
    const SimModel sim = make_sim_model();
    for (int64_t nt : *threads) {
      ThreadPool pool(static_cast<int>(nt));
      for (int64_t m : *ms) {
        const double sec = time_sim(sim, x.data(), y.data(), m, pool, static_cast<int>(*reps));
        std::printf("  threads=%lld M=%-4lld %8.3f ms/token  (%.0f tokens/s if matmuls were all)\n",
                    static_cast<long long>(nt), static_cast<long long>(m), sec * 1e3, 1.0 / sec);
      }
    }
  }
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND("bench-ops", run_bench_ops, "time the CPU matmul kernels on SmolLM2-135M shapes");

}  // namespace nb::tools
