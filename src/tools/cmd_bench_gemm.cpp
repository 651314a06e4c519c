// nibble bench gemm: W4A16 (4-bit group-quantized weights, cuda::upload_w4) against f16 weights
// (cuda::matmul: the f16 GEMV for M <= 2, cuBLAS otherwise) on the same GPU in the same run, at the
// GEMM level, for the Llama-2-7B linear shapes and a sweep of M (tokens). W4 paths (w4_matmul.cu):
// M <= 64 the fused kernel (passes of 16 tokens), M > 64 dequantize to f16 + cuBLAS.
//   copy bandwidth  device-to-device cudaMemcpy of 1 GiB: (read + write bytes) / time
//   per (shape, M)  median over -r runs of the mean time of one call (CUDA events around a burst of
//                   calls); each call reads a different copy of the weights, >= 512 MiB of copies in
//                   all, so weights stream from HBM as in decode and never sit in L2
//   GB/s            weight bytes read / time (W4: packed codes + f16 scale and zero per row group;
//                   f16: N * K * 2), and its fraction of the copy bandwidth (the roofline fraction,
//                   activations and outputs left out: at M <= 16 they are < 1% of the bytes)
//   speedup         f16 time / W4 time
// The last block sums the shapes of one decoder layer (q/k/v fused, o, gate/up fused, down) plus the
// output head per M: the batch-1 figure is the per-token GEMM roofline fraction of a 7B decode.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/group_quant.h"
#include "tools/bench_commands.h"
#include "tools/bench_cuda.h"
#include "tools/cli_args.h"
#include "tools/commands.h"
#ifdef NIBBLE_HAVE_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device.h"
#endif

namespace nb::tools {
#ifdef NIBBLE_HAVE_CUDA
namespace {

struct GemmShape {
  const char* name;
  int64_t n, k;
};
// Llama-2-7B: dim 4096, hidden 11008, vocab 32000; q/k/v and gate/up as fused weights.
const GemmShape kShapes[] = {{"qkv", 12288, 4096},
                             {"o_proj", 4096, 4096},
                             {"gate_up", 22016, 4096},
                             {"down", 4096, 11008},
                             {"lm_head", 32000, 4096}};


// A 4-bit g`group` asymmetric weight [n, k] with pseudo-random codes, scales and zero points.
Result<Tensor> synthetic_w4(int64_t n, int64_t k, int64_t group, uint32_t seed) {
  GroupQuant q;
  q.bits = 4;
  q.group_size = group;
  q.num_groups = group_count(k, group);
  uint32_t s = seed * 2654435761u + 1;
  auto next = [&s] { return s = s * 1664525u + 1013904223u; };
  std::vector<uint8_t> codes(static_cast<size_t>(n * k));
  for (size_t i = 0; i < codes.size(); i += 4) {
    const uint32_t v = next();
    for (size_t j = 0; j < 4 && i + j < codes.size(); ++j) codes[i + j] = static_cast<uint8_t>((v >> (8 * j + 4)) & 15u);
  }
  q.scales.resize(static_cast<size_t>(n * q.num_groups));
  q.zeros.resize(q.scales.size());
  for (size_t i = 0; i < q.scales.size(); ++i) {
    const uint32_t v = next();
    q.scales[i] = 0.002f + 0.001f * static_cast<float>((v >> 8) & 255u) / 255.f;
    q.zeros[i] = static_cast<float>((v >> 20) & 15u);
  }
  return make_group_quant_tensor(std::move(codes), n, k, std::move(q), "bench gemm");
}

struct Row {
  double w4_s, f16_s;
  int64_t w4_bytes, f16_bytes;
};

Status run(const CliArgs& args) {
  NB_ASSIGN_OR_RETURN(const int64_t runs, args.get_int("-r", 1, 1000));
  NB_ASSIGN_OR_RETURN(const int64_t group, args.get_int("--group", -1, 4096));
  NB_ASSIGN_OR_RETURN(const std::vector<int64_t> ms, parse_sizes(args.get("--batches"), "--batches", 99999));
  const int64_t max_m = *std::max_element(ms.begin(), ms.end());

  if (cuda::device_count() == 0) return failed_precondition("bench gemm needs a CUDA device");
  NB_ASSIGN_OR_RETURN(std::unique_ptr<cuda::Context> ctx, cuda::Context::create(0, size_t{256} << 20));
  const size_t copy_bytes = size_t{1} << 30;
  double bw = 0;
  {
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer a, cuda::DeviceBuffer::allocate(copy_bytes));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer b, cuda::DeviceBuffer::allocate(copy_bytes));
    NB_ASSIGN_OR_RETURN(double t, time_gpu(*ctx, static_cast<int>(runs), 5, [&](int) {
      return cuda::copy_on_device(b.data(), a.data(), copy_bytes, ctx->stream());
    }));
    bw = 2.0 * static_cast<double>(copy_bytes) / t;
  }
  std::printf("device           %s (%d SMs)\n", ctx->info().name.c_str(), ctx->info().num_sms);
  std::printf("copy bandwidth   %.0f GB/s (device-to-device, read + write)\n", bw / 1e9);
  std::printf("W4A16 g%lld asymmetric vs f16, activations f16, f32 accumulation; median of %lld runs\n",
              static_cast<long long>(group), static_cast<long long>(runs));
  std::printf("W4 paths: M <= 64 fused kernel (tensor cores, passes of 16 tokens), M > 64 dequantize + cuBLAS; "
              "f16: GEMV for M <= 2, cuBLAS above\n");
  std::printf("%-8s %6s %6s %4s | %9s %7s %6s | %9s %7s %6s | %7s\n", "shape", "N", "K", "M", "W4 us", "GB/s",
              "%copy", "f16 us", "GB/s", "%copy", "speedup");

  const size_t kStream = size_t{512} << 20;  // bytes of weight copies cycled through per shape
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer x, cuda::DeviceBuffer::allocate(static_cast<size_t>(max_m * 11008) * 2));
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer y, cuda::DeviceBuffer::allocate(static_cast<size_t>(max_m * 32000) * 2));
  NB_RETURN_IF_ERROR(cuda::fill_bytes(x.data(), 0x2C, x.size(), ctx->stream()));  // f16 0.0645: finite sums
  std::vector<std::vector<Row>> rows(ms.size());
  uint32_t seed = 1;
  for (const GemmShape& sh : kShapes) {
    NB_ASSIGN_OR_RETURN(Tensor host_w, synthetic_w4(sh.n, sh.k, group, seed++));
    NB_ASSIGN_OR_RETURN(Tensor w4, cuda::upload_w4(host_w, *ctx));
    const int64_t w4_bytes = cuda::w4_device_bytes(host_w), f16_bytes = sh.n * sh.k * 2;
    host_w = Tensor();
    // Copies of each weight, so consecutive calls never find their weights in L2.
    const int w4_copies = static_cast<int>(std::max<size_t>(2, kStream / static_cast<size_t>(w4_bytes)));
    const int f16_copies = static_cast<int>(std::max<size_t>(2, kStream / static_cast<size_t>(f16_bytes)));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer w4_all, cuda::DeviceBuffer::allocate(static_cast<size_t>(w4_bytes) * w4_copies));
    std::vector<Tensor> w4s;
    for (int c = 0; c < w4_copies; ++c) {
      void* dst = static_cast<uint8_t*>(w4_all.data()) + static_cast<size_t>(c) * static_cast<size_t>(w4_bytes);
      NB_RETURN_IF_ERROR(cuda::copy_on_device(dst, w4.data(), static_cast<size_t>(w4_bytes), ctx->stream()));
      const int64_t shape[2] = {sh.n, sh.k};
      Tensor t = Tensor::view(dst, shape, 2, DType::kQGroup, nullptr, Device::kCUDA);
      t.set_group_quant(std::make_shared<const GroupQuant>(*w4.group_quant()));
      w4s.push_back(std::move(t));
    }
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer f16_all,
                        cuda::DeviceBuffer::allocate(static_cast<size_t>(f16_bytes) * f16_copies));
    NB_RETURN_IF_ERROR(cuda::fill_bytes(f16_all.data(), 0x1C, f16_all.size(), ctx->stream()));  // f16 0.0039
    for (size_t mi = 0; mi < ms.size(); ++mi) {
      const int64_t m = ms[mi];
      NB_ASSIGN_OR_RETURN(const double t4, time_gpu(*ctx, static_cast<int>(runs), 2 * w4_copies, [&](int i) {
        return cuda::matmul({w4s[static_cast<size_t>(i % w4_copies)], x.as<float>(), y.as<float>(), m, DType::kF16},
                            *ctx);
      }));
      NB_ASSIGN_OR_RETURN(const double t16, time_gpu(*ctx, static_cast<int>(runs), 2 * f16_copies, [&](int i) {
        const int64_t shape[2] = {sh.n, sh.k};
        void* w = static_cast<uint8_t*>(f16_all.data()) + static_cast<size_t>(i % f16_copies) * f16_bytes;
        return cuda::matmul({Tensor::view(w, shape, 2, DType::kF16, nullptr, Device::kCUDA), x.as<float>(),
                             y.as<float>(), m, DType::kF16},
                            *ctx);
      }));
      rows[mi].push_back({t4, t16, w4_bytes, f16_bytes});
      const double g4 = static_cast<double>(w4_bytes) / t4, g16 = static_cast<double>(f16_bytes) / t16;
      std::printf("%-8s %6lld %6lld %4lld | %9.2f %7.0f %5.1f%% | %9.2f %7.0f %5.1f%% | %6.2fx\n", sh.name,
                  static_cast<long long>(sh.n), static_cast<long long>(sh.k), static_cast<long long>(m), t4 * 1e6,
                  g4 / 1e9, 100 * g4 / bw, t16 * 1e6, g16 / 1e9, 100 * g16 / bw, t16 / t4);
    }
  }
  std::printf("7B layer + head (one of each shape):\n");
  for (size_t mi = 0; mi < ms.size(); ++mi) {
    double t4 = 0, t16 = 0, b4 = 0, b16 = 0;
    for (const Row& r : rows[mi]) {
      t4 += r.w4_s;
      t16 += r.f16_s;
      b4 += static_cast<double>(r.w4_bytes);
      b16 += static_cast<double>(r.f16_bytes);
    }
    std::printf("  M %4lld: W4 %8.2f us %5.1f%% of copy bw | f16 %8.2f us %5.1f%% | speedup %.2fx\n",
                static_cast<long long>(ms[mi]), t4 * 1e6, 100 * b4 / t4 / bw, t16 * 1e6, 100 * b16 / t16 / bw,
                t16 / t4);
  }
  return Status::Ok();
}

}  // namespace
#endif

int run_bench_gemm(int argc, char** argv) {
  CliArgs args("bench gemm", "[--batches 1,2,4,8,16,32,64,128,256] [--group 128] [-r 20]");
  args.option("--batches", "token counts M", "1,2,4,8,16,32,64,128,256");
  args.option("--group", "group size of the 4-bit weights (64, 128, ...; -1 per channel)", "128");
  args.option("-r,--runs", "timed bursts per case (median)", "20");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("bench gemm", s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
#ifdef NIBBLE_HAVE_CUDA
  if (Status s = run(args); !s.ok()) return fail("bench gemm", s);
  return 0;
#else
  return fail("bench gemm", unimplemented("this nibble was built without CUDA (NIBBLE_CUDA=OFF)"));
#endif
}

}  // namespace nb::tools
