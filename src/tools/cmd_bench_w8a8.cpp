// nibble bench w8a8: W8A8 linears on the GPU (backend/cuda/w8a8.h) against cuBLAS f16 (cuda::matmul)
// on the Llama-2-7B linear shapes, at each M of --m (issue 6 acceptance: W8A8 GEMM at M >= 1024
// >= 1.6x cuBLAS FP16). Per shape and M, median times (f16 activations in, f16 out) of: cuBLAS f16;
// the cuBLASLt path (quantize + int8 GEMM to int32 + epilogue kernel); the fused path (quantize +
// the sm_90a CUTLASS GEMM with the scales in its epilogue); that GEMM alone on ready int8 codes; the
// quantization alone. Rates are 2 M N K / time. Then one decoder layer's seven linears together
// (q, k, v, o at 4096x4096, gate and up at 11008x4096, down at 4096x11008).
// Contents are constant bytes (finite values); GEMM time does not depend on them.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tools/bench_commands.h"
#include "tools/bench_cuda.h"
#include "tools/cli_args.h"
#include "tools/commands.h"
#ifdef NIBBLE_HAVE_CUDA
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device.h"
#include "backend/cuda/w8a8.h"
#include "backend/cuda/w8a8_sm90.h"
#include "core/group_quant.h"
#endif

namespace nb::tools {
namespace {

constexpr const char* kCmd = "bench w8a8";

#ifdef NIBBLE_HAVE_CUDA

struct Linear {
  const char* name;
  int64_t n, k;
  int per_layer;
};
const Linear kLinears[] = {{"q/k/v/o", 4096, 4096, 4}, {"gate/up", 11008, 4096, 2}, {"down", 4096, 11008, 1}};
// The same layer with q|k|v and gate|up each one matrix (--layout fused): fewer, larger GEMMs.
const Linear kFusedLinears[] = {{"q|k|v", 12288, 4096, 1}, {"o", 4096, 4096, 1}, {"gate|up", 22016, 4096, 1},
                                {"down", 4096, 11008, 1}};

// Times (seconds) of one shape, or of a layer's seven linears summed.
struct Times {
  double flops = 0, f16 = 0, lt = 0, fu = 0, g = 0, q = 0;
  void add(int times, double fl, double a, double b, double c, double e, double f) {
    flops += times * fl;
    f16 += times * a;
    lt += times * b;
    fu += times * c;
    g += times * e;
    q += times * f;
  }
};

// One row: times in microseconds, the rate of each path, and its speedup over cuBLAS f16 (a fused
// column is "-" where that kernel is not available).
void print_row(int64_t m, const char* name, const std::string& shape, double flops, double f16, double lt, double fu,
               double g, double q) {
  auto col = [&](double t) {
    char b[64];
    if (t <= 0) return std::string("        -      -      -");
    std::snprintf(b, sizeof b, " %8.1f %6.0f %5.2fx", t * 1e6, flops / t / 1e12, f16 / t);
    return std::string(b);
  };
  std::printf("  %5lld  %-8s %-11s %8.1f %6.0f |%s |%s |%s | %7.1f\n", static_cast<long long>(m), name, shape.c_str(),
              f16 * 1e6, flops / f16 / 1e12, col(lt).c_str(), col(fu).c_str(), col(g).c_str(), q * 1e6);
}

Status bench_m(cuda::Context& ctx, int64_t m, int runs, bool fused_layout, bool graph) {
  Times layer;
  const std::vector<Linear> linears = fused_layout ? std::vector<Linear>(std::begin(kFusedLinears), std::end(kFusedLinears))
                                                   : std::vector<Linear>(std::begin(kLinears), std::end(kLinears));
  for (const Linear& l : linears) {
    const size_t wf16 = static_cast<size_t>(l.n * l.k) * 2, w8 = cuda::w8a8_device_bytes(l.n, l.k);
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer w_f16, cuda::DeviceBuffer::allocate(wf16));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer w_q, cuda::DeviceBuffer::allocate(w8));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer x, cuda::DeviceBuffer::allocate(static_cast<size_t>(m * l.k) * 2));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer y, cuda::DeviceBuffer::allocate(static_cast<size_t>(m * l.n) * 2));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer xq, cuda::DeviceBuffer::allocate(static_cast<size_t>(m * l.k)));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer d, cuda::DeviceBuffer::allocate(static_cast<size_t>(m) * 4));
    NB_RETURN_IF_ERROR(cuda::fill_bytes(w_f16.data(), 0x1C, wf16, ctx.stream()));  // f16 0x1C1C = 0.0041
    NB_RETURN_IF_ERROR(cuda::fill_bytes(w_q.data(), 0x3C, w8, ctx.stream()));      // codes 60, scales 0.0115
    NB_RETURN_IF_ERROR(cuda::fill_bytes(x.data(), 0x3C, x.size(), ctx.stream()));  // f16 1.06
    const int64_t shape[2] = {l.n, l.k};
    const Tensor tf16 = Tensor::view(w_f16.data(), shape, 2, DType::kF16, nullptr, Device::kCUDA);
    Tensor tq = Tensor::view(w_q.data(), shape, 2, DType::kQGroup, nullptr, Device::kCUDA);
    auto gq = std::make_shared<GroupQuant>();
    gq->bits = 8;
    gq->group_size = -1;
    gq->symmetric = true;
    gq->act_int8 = true;
    gq->num_groups = 1;
    tq.set_group_quant(gq);
    NB_ASSIGN_OR_RETURN(double t_f16, time_gpu(ctx, runs, 0, [&](int) {
      return cuda::matmul({tf16, x.as<float>(), y.as<float>(), m, DType::kF16}, ctx);
    }, graph));
    const MatmulParams pw{tq, x.as<float>(), y.as<float>(), m, DType::kF16};
    NB_ASSIGN_OR_RETURN(double t_lt, time_gpu(ctx, runs, 0, [&](int) {
      return cuda::matmul_w8a8_path(pw, ctx, cuda::W8A8Path::kCublasLt);
    }, graph));
    NB_ASSIGN_OR_RETURN(double t_q, time_gpu(ctx, runs, 0, [&](int) {
      return cuda::quantize_act_int8(x.as<float>(), m, l.k, DType::kF16, xq.as<int8_t>(), d.as<float>(), ctx);
    }, graph));
    // The fused path (quantization kernel + CUTLASS GEMM with the scales in its epilogue), and its
    // GEMM alone on codes already made: what a layer pays once the quantization is fused into the
    // op that produces the activation.
    double t_fu = 0, t_g = 0;
#ifdef NIBBLE_HAVE_CUTLASS
    if (cuda::w8a8_fused_available(m, l.n, l.k, DType::kF16)) {
      NB_ASSIGN_OR_RETURN(t_fu, time_gpu(ctx, runs, 0, [&](int) {
        return cuda::matmul_w8a8_path(pw, ctx, cuda::W8A8Path::kFused);
      }, graph));
      const auto* wq = static_cast<const int8_t*>(w_q.data());
      const auto* sc = reinterpret_cast<const float*>(static_cast<const uint8_t*>(w_q.data()) +
                                                      cuda::w8a8_scales_offset(l.n, l.k));
      NB_ASSIGN_OR_RETURN(t_g, time_gpu(ctx, runs, 0, [&](int) {
        return cuda::w8a8_gemm_sm90(xq.as<int8_t>(), wq, sc, d.as<float>(), y.data(), DType::kF16, m, l.n, l.k,
                                    ctx.stream());
      }, graph));
    }
#endif
    const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(l.n) * static_cast<double>(l.k);
    print_row(m, l.name, std::to_string(l.n) + "x" + std::to_string(l.k), flops, t_f16, t_lt, t_fu, t_g, t_q);
    layer.add(l.per_layer, flops, t_f16, t_lt, t_fu, t_g, t_q);
  }
  print_row(m, "layer", fused_layout ? "4 linears" : "7 linears", layer.flops, layer.f16, layer.lt, layer.fu, layer.g, layer.q);
  return Status::Ok();
}
#endif

int run_bench_w8a8_impl(int argc, char** argv) {
  CliArgs args(kCmd, "[--m 1024,2048,4096] [-r 5]");
  args.option("--m", "token counts (GEMM M)", "1024,2048,4096");
  args.option("-r,--runs", "repetitions (medians reported)", "5");
  args.option("--layout", "separate (q, k, v, gate, up apart, as the model runs them) or fused (q|k|v, gate|up)",
              "separate");
  args.flag("--graph", "time each burst as one CUDA graph launch (no host launch cost, as the decode graphs)");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail(kCmd, s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
#ifdef NIBBLE_HAVE_CUDA
  auto run = [&]() -> Status {
    NB_ASSIGN_OR_RETURN(int64_t runs, args.get_int("-r", 1, 100));
    NB_ASSIGN_OR_RETURN(const std::vector<int64_t> ms, parse_sizes(args.get("--m"), "--m", 999999));
    const int64_t max_m = *std::max_element(ms.begin(), ms.end());
    NB_ASSIGN_OR_RETURN(cuda::DeviceInfo info, cuda::device_info(0));
    // Workspace for the largest M unchunked: cuBLASLt scratch + codes + scales + int32 products.
    const size_t ws = (size_t{16} << 20) + static_cast<size_t>(max_m) * (22016 + 4 + 22016 * 4);
    NB_ASSIGN_OR_RETURN(std::unique_ptr<cuda::Context> ctx, cuda::Context::create(0, ws));
    std::printf("device %s; f16 activations in and out; us, TFLOP/s (f16) or TOP/s (int8), speedup over f16\n",
                info.name.c_str());
    std::printf("  lt = quantize + cuBLASLt int8 GEMM (int32 out) + epilogue kernel; fused = quantize + sm_90a GEMM\n"
                "  with the scales in its epilogue; gemm = that GEMM alone on int8 codes; quant = quantize alone\n");
    std::printf("  %5s  %-8s %-11s %8s %6s | %24s | %24s | %24s | %7s\n", "M", "linear", "N x K", "f16 us", "TF/s",
                "lt: us TOP/s speedup", "fused: us TOP/s speedup", "gemm: us TOP/s speedup", "quant");
    const std::string layout = args.get("--layout");
    if (layout != "separate" && layout != "fused") return invalid_argument("--layout: separate or fused");
    for (int64_t m : ms) NB_RETURN_IF_ERROR(bench_m(*ctx, m, static_cast<int>(runs), layout == "fused", args.has("--graph")));
    return Status::Ok();
  };
  if (Status s = run(); !s.ok()) return fail(kCmd, s);
  return 0;
#else
  return fail(kCmd, failed_precondition("this nibble was built without CUDA; rebuild with -DNIBBLE_CUDA=ON"));
#endif
}

}  // namespace

int run_bench_w8a8(int argc, char** argv) { return run_bench_w8a8_impl(argc, argv); }

}  // namespace nb::tools
