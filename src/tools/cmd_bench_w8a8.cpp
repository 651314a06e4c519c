// nibble bench w8a8: W8A8 linears on the GPU (backend/cuda/w8a8.h: per-token int8 quantization +
// cuBLASLt int8 GEMM + scale epilogue) against cuBLAS f16 (cuda::matmul) on the Llama-2-7B linear
// shapes, at each M of --m (issue 6 acceptance: W8A8 GEMM at M >= 1024 >= 1.6x cuBLAS FP16).
// Per shape and M: median time of each path (f16 activations in, f16 out), the W8A8 path's
// quantization step alone, rates as 2 M N K / time, and the speedup; then one decoder layer's seven
// linears together (q, k, v, o at 4096x4096, gate and up at 11008x4096, down at 4096x11008).
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

Status bench_m(cuda::Context& ctx, int64_t m, int runs) {
  double layer_f16 = 0, layer_w8 = 0, layer_flops = 0;
  for (const Linear& l : kLinears) {
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
    }));
    NB_ASSIGN_OR_RETURN(double t_w8, time_gpu(ctx, runs, 0, [&](int) {
      return cuda::matmul_w8a8({tq, x.as<float>(), y.as<float>(), m, DType::kF16}, ctx);
    }));
    NB_ASSIGN_OR_RETURN(double t_q, time_gpu(ctx, runs, 0, [&](int) {
      return cuda::quantize_act_int8(x.as<float>(), m, l.k, DType::kF16, xq.as<int8_t>(), d.as<float>(), ctx);
    }));
    const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(l.n) * static_cast<double>(l.k);
    std::printf("  %5lld  %-8s %6lldx%-6lld %9.1f %7.0f %9.1f %7.0f %8.1f %7.2fx\n", static_cast<long long>(m), l.name,
                static_cast<long long>(l.n), static_cast<long long>(l.k), t_f16 * 1e6, flops / t_f16 / 1e12, t_w8 * 1e6,
                flops / t_w8 / 1e12, t_q * 1e6, t_f16 / t_w8);
    layer_f16 += l.per_layer * t_f16;
    layer_w8 += l.per_layer * t_w8;
    layer_flops += l.per_layer * flops;
  }
  std::printf("  %5lld  %-8s %13s %9.1f %7.0f %9.1f %7.0f %8s %7.2fx\n", static_cast<long long>(m), "layer", "7 linears",
              layer_f16 * 1e6, layer_flops / layer_f16 / 1e12, layer_w8 * 1e6, layer_flops / layer_w8 / 1e12, "",
              layer_f16 / layer_w8);
  return Status::Ok();
}
#endif

int run_bench_w8a8_impl(int argc, char** argv) {
  CliArgs args(kCmd, "[--m 1024,2048,4096] [-r 5]");
  args.option("--m", "token counts (GEMM M)", "1024,2048,4096");
  args.option("-r,--runs", "repetitions (medians reported)", "5");
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
    const size_t ws = (size_t{16} << 20) + static_cast<size_t>(max_m) * (11008 + 4 + 11008 * 4);
    NB_ASSIGN_OR_RETURN(std::unique_ptr<cuda::Context> ctx, cuda::Context::create(0, ws));
    std::printf("device %s; f16 activations in and out; rates in TFLOP/s (f16) and TOP/s (int8)\n", info.name.c_str());
    std::printf("  %5s  %-8s %13s %9s %7s %9s %7s %8s %8s\n", "M", "linear", "N x K", "f16 us", "TFLOPs", "w8a8 us",
                "TOPs", "quant us", "speedup");
    for (int64_t m : ms) NB_RETURN_IF_ERROR(bench_m(*ctx, m, static_cast<int>(runs)));
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
