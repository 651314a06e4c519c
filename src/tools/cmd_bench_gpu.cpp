// nibble bench gpu: the model on one GPU against the card's own limits, measured in the same run.
//   copy bandwidth   device-to-device cudaMemcpy of 1 GiB: (read + write bytes) / time
//   dense GEMM rate  cuBLAS 8192^3 in the model's dtype (f16/bf16 tensor cores)
//   prefill          one forward of P tokens; its GEMMs (every linear at M = P) timed alone and their
//                    FLOP rate compared with the dense rate
//   decode (batch 1) ms/token after a P-token prompt; roofline = bytes read per token / copy
//                    bandwidth, bytes = every linear weight + the output head + one embedding row
//                    + the K/V read by attention at that position
//   batch sweep      decode steps of B sequences at context C (KV contents do not matter for time),
//                    greedy: each step ends with the argmax ids on the host, as in serving
// --parts picks some of them (e.g. only the sweep, under a profiler); the copy bandwidth is always measured.
// Medians of -r runs (kernel timings: tools/bench_cuda.h); CUDA graphs as the engine uses them.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/group_quant.h"
#include "engine/contiguous_kv.h"
#include "model/forward_backend.h"
#include "model/llama.h"
#include "tools/bench_commands.h"
#include "tools/bench_cuda.h"
#include "tools/cli_args.h"
#include "tools/cli_device.h"
#include "tools/commands.h"
#ifdef NIBBLE_HAVE_CUDA
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device.h"
#endif

namespace nb::tools {
namespace {

#ifdef NIBBLE_HAVE_CUDA
struct Shape {
  int64_t n, k;
};

Result<double> gemm_seconds(cuda::Context& ctx, DType dt, int64_t m, const std::vector<Shape>& shapes, int runs) {
  int64_t max_w = 0, max_x = 0, max_y = 0;
  for (const Shape& s : shapes) {
    max_w = std::max(max_w, s.n * s.k);
    max_x = std::max(max_x, m * s.k);
    max_y = std::max(max_y, m * s.n);
  }
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer w, cuda::DeviceBuffer::allocate(static_cast<size_t>(max_w) * 2));
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer x, cuda::DeviceBuffer::allocate(static_cast<size_t>(max_x) * 2));
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer y, cuda::DeviceBuffer::allocate(static_cast<size_t>(max_y) * 2));
  // 0x3C3C is 1.06 in f16 and 0.0115 in bf16: finite values, no denormals.
  NB_RETURN_IF_ERROR(cuda::fill_bytes(w.data(), 0x3C, w.size(), ctx.stream()));
  NB_RETURN_IF_ERROR(cuda::fill_bytes(x.data(), 0x3C, x.size(), ctx.stream()));
  double total = 0;
  for (const Shape& s : shapes) {
    const int64_t shape[2] = {s.n, s.k};
    const Tensor wt = Tensor::view(w.data(), shape, 2, dt, nullptr, Device::kCUDA);
    NB_ASSIGN_OR_RETURN(double t, time_gpu(ctx, runs, 10, [&](int) {
      return cuda::matmul({wt, x.as<float>(), y.as<float>(), m, dt}, ctx);
    }));
    total += t;
  }
  return total;
}

// The decode linears alone (one activation row, fused_linear as the fused decode step runs them):
// weight GB/s of each layer shape. Weights rotate over copies totalling >= 1 GiB, so no repetition
// finds its matrix in L2; back-to-back launches overlap as in the step (programmatic launch).
Status print_linear_rates(cuda::Context& ctx, DType dt, const ModelConfig& c, int runs, double copy_bw) {
  if (dt != DType::kF16 && dt != DType::kBF16) return Status::Ok();
  const int64_t qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
  struct Case {
    const char* name;
    int64_t n, k;
    LinearEpilogue e;
    bool norm;
  };
  const Case cases[] = {{"norm+qkv", qkv, c.dim, LinearEpilogue::kSplit, true},
                        {"o_proj+add", c.dim, c.num_heads * c.head_dim, LinearEpilogue::kAddInto, false},
                        {"norm+gate/up+swiglu", c.hidden_dim, c.dim, LinearEpilogue::kSwiglu, true},
                        {"down_proj+add", c.dim, c.hidden_dim, LinearEpilogue::kAddInto, false}};
  std::printf("decode linears (M=1): shape            us   GB/s  %% of copy bandwidth\n");
  for (const Case& cs : cases) {
    const int mats = cs.e == LinearEpilogue::kSwiglu ? 2 : 1;
    const size_t bytes = static_cast<size_t>(cs.n * cs.k) * 2;
    const int copies = static_cast<int>(std::max<size_t>(2, (size_t{1} << 30) / (bytes * mats) + 1));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer w, cuda::DeviceBuffer::allocate(bytes * mats * copies));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer x, cuda::DeviceBuffer::allocate(static_cast<size_t>(std::max(cs.k, c.dim)) * 2));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer y, cuda::DeviceBuffer::allocate(static_cast<size_t>(cs.n) * 2 + 64));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer nw, cuda::DeviceBuffer::allocate(static_cast<size_t>(cs.k) * 4));
    NB_RETURN_IF_ERROR(cuda::fill_bytes(w.data(), 0x1C, w.size(), ctx.stream()));  // small finite values
    NB_RETURN_IF_ERROR(cuda::fill_bytes(x.data(), 0x3C, x.size(), ctx.stream()));
    NB_RETURN_IF_ERROR(cuda::fill_bytes(y.data(), 0, y.size(), ctx.stream()));
    NB_RETURN_IF_ERROR(cuda::fill_bytes(nw.data(), 0, nw.size(), ctx.stream()));
    int next = 0;
    NB_ASSIGN_OR_RETURN(double t, time_gpu(ctx, runs, 2 * copies, [&](int) -> Status {
      auto* base = static_cast<uint8_t*>(w.data()) + static_cast<size_t>(next) * bytes * mats;
      next = (next + 1) % copies;
      const int64_t shape[2] = {cs.n, cs.k};
      FusedLinearParams f{};
      f.weight = Tensor::view(base, shape, 2, dt, nullptr, Device::kCUDA);
      if (mats == 2) f.weight2 = Tensor::view(base + bytes, shape, 2, dt, nullptr, Device::kCUDA);
      f.x = x.as<float>();
      f.norm_weight = cs.norm ? nw.as<float>() : nullptr;
      f.norm_eps = 1e-5f;
      f.y = y.as<float>();
      f.y1 = f.y2 = y.as<float>();  // kSplit: the benchmark does not read its outputs
      f.n0 = cs.n / 3;
      f.n1 = cs.n / 3;
      f.m = 1;
      f.epilogue = cs.e;
      f.act_dtype = dt;
      return cuda::fused_linear(f, ctx);
    }));
    const double gbs = static_cast<double>(bytes * mats) / t / 1e9;
    std::printf("  %-20s %6lldx%-6lld %7.1f %6.0f  %5.1f%%\n", cs.name, static_cast<long long>(cs.n * mats),
                static_cast<long long>(cs.k), t * 1e6, gbs, 100.0 * gbs * 1e9 / copy_bw);
  }
  return Status::Ok();
}


int run_bench_gpu(int argc, char** argv) {
  CliArgs args("bench gpu", "-m MODEL --device cuda [--dtype f16] [-p 512] [-n 64] [-r 5]");
  args.option("-m,--model", "model file or directory (e.g. from nibble synth)");
  args.option("-p,--prompt-tokens", "prompt / prefill length", "512");
  args.option("-n,--gen-tokens", "decode steps timed per run", "64");
  args.option("-r,--runs", "repetitions (medians reported)", "5");
  args.option("--batches", "batch sizes of the decode sweep", "1,2,4,8,16,32,64,128,256");
  args.option("--sweep-context", "context of every sequence in the batch sweep", "128");
  args.option("--parts", "what to measure, of: linears,gemm,forward (prefill + batch-1 decode),sweep",
              "linears,gemm,forward,sweep");
  add_device_options(args);
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("bench gpu", s);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  auto run = [&]() -> Status {
    if (!args.has("-m")) return invalid_argument("-m MODEL is required");
    NB_ASSIGN_OR_RETURN(int64_t p, args.get_int("-p", 1, 1 << 16));
    NB_ASSIGN_OR_RETURN(int64_t n, args.get_int("-n", 1, 1 << 16));
    NB_ASSIGN_OR_RETURN(int64_t runs64, args.get_int("-r", 1, 100));
    NB_ASSIGN_OR_RETURN(int64_t sweep_ctx, args.get_int("--sweep-context", 1, 1 << 16));
    const int runs = static_cast<int>(runs64);
    NB_ASSIGN_OR_RETURN(const std::vector<int64_t> batches, parse_sizes(args.get("--batches"), "--batches", 999999));
    const int64_t max_b = *std::max_element(batches.begin(), batches.end());
    std::vector<std::string> parts;
    for (size_t i = 0, j; i <= args.get("--parts").size(); i = j + 1) {
      j = args.get("--parts").find(',', i);
      if (j == std::string::npos) j = args.get("--parts").size();
      parts.push_back(args.get("--parts").substr(i, j - i));
      if (parts.back() != "linears" && parts.back() != "gemm" && parts.back() != "forward" && parts.back() != "sweep") {
        return invalid_argument("--parts: unknown part '" + parts.back() + "' (linears, gemm, forward, sweep)");
      }
    }
    const auto has = [&](const char* part) { return std::find(parts.begin(), parts.end(), part) != parts.end(); };

    const auto t_load = std::chrono::steady_clock::now();
    NB_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(args.get("-m")));
    const ModelConfig c = loaded.weights.config;
    NB_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model,
                        LlamaModel::create(std::move(loaded.weights), 1, std::max<int64_t>(p, max_b)));
    NB_RETURN_IF_ERROR(attach_device(args, *model, std::max<int64_t>(p, max_b), std::max<int64_t>(max_b, 1)));
    if (model->backend() == nullptr) return invalid_argument("bench gpu needs --device cuda");
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
    const std::string dts = args.get("--dtype");
    const DType dt = dts == "bf16" ? DType::kBF16 : dts == "f32" ? DType::kF32 : DType::kF16;
    const double ab = dt == DType::kF32 ? 4 : 2;

    NB_ASSIGN_OR_RETURN(std::unique_ptr<cuda::Context> ctx, cuda::Context::create(0));
    // Copy bandwidth.
    const size_t copy_bytes = size_t{1} << 30;
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer a, cuda::DeviceBuffer::allocate(copy_bytes));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer b, cuda::DeviceBuffer::allocate(copy_bytes));
    NB_ASSIGN_OR_RETURN(double t_copy, time_gpu(*ctx, runs, 10, [&](int) {
      return cuda::copy_on_device(b.data(), a.data(), copy_bytes, ctx->stream());
    }));
    const double bw = 2.0 * static_cast<double>(copy_bytes) / t_copy;
    a = cuda::DeviceBuffer();
    b = cuda::DeviceBuffer();
    if (has("linears")) NB_RETURN_IF_ERROR(print_linear_rates(*ctx, dt, c, runs, bw));
    const int64_t qd = c.num_heads * c.head_dim, kvd = c.num_kv_heads * c.head_dim;
    double peak = 0, prefill_gemm_rate = 0;
    if (has("gemm")) {
      // Dense GEMM rate.
      const int64_t g = 8192;
      NB_ASSIGN_OR_RETURN(double t_peak, gemm_seconds(*ctx, dt, g, {{g, g}}, runs));
      peak = 2.0 * g * g * g / t_peak;
      // The prefill's GEMMs alone.
      const std::vector<Shape> layer = {{qd, c.dim}, {kvd, c.dim}, {kvd, c.dim}, {c.dim, qd},
                                        {c.hidden_dim, c.dim}, {c.hidden_dim, c.dim}, {c.dim, c.hidden_dim}};
      NB_ASSIGN_OR_RETURN(double t_layer, gemm_seconds(*ctx, dt, p, layer, runs));
      double layer_params = 0;
      for (const Shape& s : layer) layer_params += static_cast<double>(s.n * s.k);
      prefill_gemm_rate = 2.0 * static_cast<double>(p) * layer_params / t_layer;
    }
    ctx.reset();

    // Model prefill and batch-1 decode on a paged pool.
    // KV for one sequence of p + n tokens (forward) and for the sweep's batches at their context.
    const int64_t bs = 16, fwd_blocks = (p + n + bs - 1) / bs, seq_blocks = (sweep_ctx + n + 2 + bs - 1) / bs;
    const int64_t pool_blocks = std::max(has("forward") ? fwd_blocks : 1,
                                         has("sweep") ? seq_blocks * std::max<int64_t>(max_b, 1) : 1);
    NB_ASSIGN_OR_RETURN(KvStorage kv, KvStorage::create(*model, pool_blocks, bs));
    std::vector<int32_t> table(static_cast<size_t>(pool_blocks));
    for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
    std::vector<int32_t> ids(static_cast<size_t>(p + n));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919 + 1) % static_cast<size_t>(c.vocab_size));
    std::vector<float> logits(static_cast<size_t>(std::max<int64_t>(max_b, 1) * c.vocab_size));
    const std::span<const int32_t> t0(table.data(), static_cast<size_t>(has("forward") ? fwd_blocks : 1));
    std::vector<double> pre, dec;
    for (int r = 0; r <= runs && has("forward"); ++r) {
      const auto s0 = std::chrono::steady_clock::now();
      NB_RETURN_IF_ERROR(model->forward(ForwardBatch::single(std::span<const int32_t>(ids.data(), static_cast<size_t>(p)), 0, t0),
                                        kv.pools(), logits.data()));
      const auto s1 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < n; ++i) {
        NB_RETURN_IF_ERROR(model->forward(ForwardBatch::single(std::span<const int32_t>(&ids[static_cast<size_t>(p + i)], 1), p + i, t0),
                                          kv.pools(), logits.data()));
      }
      const auto s2 = std::chrono::steady_clock::now();
      if (r == 0) continue;  // warm-up: graph capture, cuBLAS heuristics
      pre.push_back(std::chrono::duration<double>(s1 - s0).count());
      dec.push_back(std::chrono::duration<double>(s2 - s1).count() / static_cast<double>(n));
    }
    const double t_pre = has("forward") ? median(pre) : 0, t_tok = has("forward") ? median(dec) : 0;
    // Linear weights as the device holds them: 4-bit kQGroup packed by upload_w4 (codes + f16
    // scale/zero), everything else in the activation dtype.
    double linear_bytes = 0;
    for (const LayerWeights& lw : model->weights().layers) {
      for (const Tensor* t : {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.w_gate, &lw.w_up, &lw.w_down}) {
        const GroupQuant* g = t->dtype() == DType::kQGroup ? t->group_quant() : nullptr;
        linear_bytes += g != nullptr && g->bits == 4 && !g->act_int8 && dt != DType::kF32
                            ? static_cast<double>(cuda::w4_device_bytes(*t))
                            : static_cast<double>(t->rows() * t->cols()) * ab;
      }
    }
    double weight_bytes = linear_bytes + static_cast<double>(c.vocab_size * c.dim) * ab;
    weight_bytes += static_cast<double>(c.dim) * ab;  // one embedding row
    const double kv_bytes = 2.0 * static_cast<double>(c.num_layers * kvd) * ab * (static_cast<double>(p) + n / 2.0);
    const double roof = (weight_bytes + kv_bytes) / bw;

    std::printf("model                %s  (%s, %s)\n", args.get("-m").c_str(), model->backend()->describe().c_str(),
                dts.c_str());
    std::printf("load to device       %.2f s\n", load_s);
    std::printf("copy bandwidth       %.0f GB/s (device-to-device, read+write)\n", bw / 1e9);
    if (has("gemm")) {
      std::printf("dense GEMM rate      %.0f TFLOP/s (%s, 8192^3)\n", peak / 1e12, dts.c_str());
      std::printf("prefill GEMMs        %.0f TFLOP/s at M=%lld = %.1f%% of the dense rate\n", prefill_gemm_rate / 1e12,
                  static_cast<long long>(p), 100.0 * prefill_gemm_rate / peak);
    }
    if (has("forward")) {
      std::printf("prefill              %lld tokens in %.2f ms = %.0f tokens/s (whole forward)\n",
                  static_cast<long long>(p), t_pre * 1e3, static_cast<double>(p) / t_pre);
      std::printf("decode batch 1       %.3f ms/token = %.1f tokens/s; roofline %.3f ms (%.2f GB/token) -> %.1f%% of roofline\n",
                  t_tok * 1e3, 1.0 / t_tok, roof * 1e3, (weight_bytes + kv_bytes) / 1e9, 100.0 * roof / t_tok);
    }

    // Batch sweep.
    if (has("sweep")) {
      std::printf("batch sweep (context %lld): batch  ms/step  tokens/s\n", static_cast<long long>(sweep_ctx));
    }
    for (int64_t bsz : batches) {
      if (!has("sweep")) break;
      std::vector<int32_t> toks(static_cast<size_t>(bsz), 1), next(static_cast<size_t>(bsz));
      std::vector<double> steps;
      for (int64_t i = 0; i < n + 2; ++i) {
        ForwardBatch fb;
        fb.tokens = toks;
        // As the engine's greedy decode: the argmax ids come back, not bsz x vocab logits (16 MB
        // at batch 128 for a 32k vocabulary, a host copy the engine does not make).
        fb.greedy_tokens = next.data();
        for (int64_t s = 0; s < bsz; ++s) {
          fb.seqs.push_back({1, sweep_ctx + i, std::span<const int32_t>(table.data() + s * seq_blocks, static_cast<size_t>(seq_blocks)), true});
        }
        const auto s0 = std::chrono::steady_clock::now();
        NB_RETURN_IF_ERROR(model->forward(fb, kv.pools(), logits.data()));
        if (i >= 2) steps.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count());
      }
      const double t = median(steps);
      std::printf("                     %5lld  %7.3f  %9.0f\n", static_cast<long long>(bsz), t * 1e3,
                  static_cast<double>(bsz) / t);
    }
    return Status::Ok();
  };
  if (Status s = run(); !s.ok()) return fail("bench gpu", s);
  return 0;
}
#else
int run_bench_gpu(int, char**) {
  return fail("bench gpu", failed_precondition("this nibble was built without CUDA; rebuild with -DNIBBLE_CUDA=ON"));
}
#endif

}  // namespace

int bench_gpu_main(int argc, char** argv) { return run_bench_gpu(argc, argv); }

}  // namespace nb::tools
