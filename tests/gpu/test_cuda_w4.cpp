// CUDA W4A16 matmul (upload_w4 + matmul / matmul_to_f32, w4_matmul.cu) against the CPU kQGroup
// reference cpu::ref::matmul_group (dequantize to f32, double accumulation) with the same
// MatmulParams, on fresh random 4-bit weights (tests/cpp/w4_test_util.h: f16-exact scales) and
// activations rounded to the act dtype. Shapes: M over the fused kernel (1..16: one or two n8 mma
// tiles; 17, 40: passes of 16 tokens) and the dequantize + cuBLAS path (M > 64: Bf16AndF32Output,
// PrefillInSlabs); K 4096, 11008 (cluster split along K) and 576
// (9 chunks: no cluster); N a multiple of the 64-row block and not; groups 64/128 (per-channel where
// 128 does not divide K), symmetric and asymmetric.
//
// Tolerance per element: rel * |want| + (u_w + 1e-5) * sum_k |x_k w_k|.
//   u_w: the kernel multiplies by the weight rounded once to the mma operand type, round((q - z) s)
//        (q - z and the f16 scale are exact), so each product is off by at most u_w relative:
//        2^-11 for f16, 2^-8 for bf16 — a rigorous bound on that part of the error.
//   1e-5:  f32 accumulation (tensor-core and split-K order), as in test_cuda_matmul.cpp.
//   rel:   one rounding of the output to its dtype (gpu_test::dtype_rel; 1e-5 for f32 output).
// Norm bound: the weight roundings are independent, so ||err|| / ||want|| is about 0.6 u_w plus the
// output rounding (f16 ~4e-4, bf16 ~3.5e-3); bounds 2e-3 / 1.6e-2 leave 4x margin, while a wrong
// index, scale or zero point gives O(1).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "../cpp/w4_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/w4_layout.h"
#include "gpu_test_util.h"

namespace nb {
namespace {

using gpu_test::all_close;
using gpu_test::random_normal;

struct Case {
  int64_t m, n, k, group;
  bool sym;
};

std::string describe(const Case& c, DType act, DType out) {
  return "m " + std::to_string(c.m) + " n " + std::to_string(c.n) + " k " + std::to_string(c.k) + " group " +
         std::to_string(c.group) + (c.sym ? " sym" : " asym") + " act " + std::string(dtype_name(act)) + " out " +
         std::string(dtype_name(out));
}

class CudaW4 : public gpu_test::CudaTest {
 protected:
  // Runs one case on `c_ctx` (the fixture's Context when null) and compares with the reference.
  void check(const Case& c, DType act, DType out, uint32_t seed, cuda::Context* c_ctx = nullptr) {
    cuda::Context& cx = c_ctx != nullptr ? *c_ctx : ctx();
    auto host_w = w4_test::random_w4(c.n, c.k, c.group, c.sym, gpu_test::seed(seed));
    ASSERT_TRUE(host_w.ok()) << host_w.status().to_string();
    std::vector<float> x = random_normal(static_cast<size_t>(c.m * c.k), seed + 1);
    gpu_test::round_all(x, act);
    std::vector<float> want(static_cast<size_t>(c.m * c.n)), mag(want.size());
    cpu::ref::matmul_group({*host_w, x.data(), want.data(), c.m});
    std::vector<float> wrow(static_cast<size_t>(c.k));
    for (int64_t r = 0; r < c.n; ++r) {
      dequantize_tensor_row(*host_w, r, wrow.data());
      for (int64_t t = 0; t < c.m; ++t) {
        double a = 0;
        for (int64_t i = 0; i < c.k; ++i) a += std::fabs(static_cast<double>(x[t * c.k + i]) * wrow[i]);
        mag[static_cast<size_t>(t * c.n + r)] = static_cast<float>(a);
      }
    }

    NB_ASSERT_OK_AND_ASSIGN(const Tensor dev_w, cuda::upload_w4(*host_w, cx));
    ASSERT_EQ(dev_w.device(), Device::kCUDA);
    cuda::DeviceBuffer d_x = upload_act(x, act);
    cuda::DeviceBuffer d_y = poisoned(want.size() * gpu_test::elem_bytes(out));
    NB_ASSERT_OK(ctx().synchronize());  // the poison fill is on ctx()'s stream, the product may run on cx's
    MatmulParams p{dev_w, d_x.as<float>(), d_y.as<float>(), c.m};
    p.act_dtype = act;
    NB_ASSERT_OK(out == DType::kF32 ? cuda::matmul_to_f32(p, cx) : cuda::matmul(p, cx));
    NB_ASSERT_OK(cx.synchronize());
    const std::vector<float> got = download_act(d_y, want.size(), out);
    const double u_w = act == DType::kF16 ? 1.0 / 2048 : 1.0 / 256;
    gpu_test::Tol tol = gpu_test::act_tol(out, u_w + 1e-5);
    tol.norm = act == DType::kF16 ? 2e-3 : 1.6e-2;
    EXPECT_TRUE(all_close(got, want, tol, &mag)) << describe(c, act, out);
  }
};

// The brief's grid, f16 in and out: every M of both paths x K x N x group x symmetry.
TEST_F(CudaW4, MatchesReferenceF16) {
  uint32_t s = 6000;
  for (const int64_t k : {4096, 11008, 576})
    for (const int64_t n : {256, 200})
      for (const int64_t g : {64, 128})
        for (const bool sym : {false, true})
          for (const int64_t m : {1, 2, 3, 4, 5, 8, 13, 16, 17, 40}) {
            const int64_t group = k % g == 0 ? g : -1;  // 576: g64 and per-channel
            check({m, n, k, group, sym}, DType::kF16, DType::kF16, s += 2);
            if (HasFatalFailure()) return;
          }
}

// bf16 activations, and f32 output (logits) from f16 and bf16.
TEST_F(CudaW4, Bf16AndF32Output) {
  uint32_t s = 7000;
  for (const int64_t m : {1, 5, 9, 16, 17, 40, 64, 80})
    for (const auto& [act, out] : {std::pair{DType::kBF16, DType::kBF16}, std::pair{DType::kF16, DType::kF32},
                                   std::pair{DType::kBF16, DType::kF32}}) {
      check({m, 200, 4096, 128, false}, act, out, s += 2);
      check({m, 72, 576, 64, true}, act, out, s += 2);
      if (HasFatalFailure()) return;
    }
}

// Llama-2-7B shapes. On a 132-SM H100 (pick_cluster) they take clusters of 4 (4096 x 4096), 2
// (12288 x 4096), 8 (4096 x 11008) and 1 (32000 x 4096) blocks along K; the grid above covers 4
// (K 4096), 8 (K 11008) and 1 (K 576) as well.
TEST_F(CudaW4, LargeShapes) {
  uint32_t s = 8000;
  for (const int64_t m : {1, 8, 16}) {
    check({m, 4096, 4096, 128, false}, DType::kF16, DType::kF16, s += 2);
    check({m, 12288, 4096, 128, true}, DType::kF16, DType::kF16, s += 2);
    check({m, 4096, 11008, 128, false}, DType::kF16, DType::kF16, s += 2);
    if (HasFatalFailure()) return;
  }
  check({1, 32000, 4096, 128, false}, DType::kF16, DType::kF32, s += 2);
}

// The same products without thread-block clusters (NIBBLE_W4_MAX_CLUSTER=1: the 8 warps of one
// block split K alone) and with clusters capped at 2: the cluster reduction is not what makes them
// right, and each cap is checked on its own.
TEST_F(CudaW4, ClusterCaps) {
  uint32_t s = 8500;
  for (const char* cap : {"1", "2"}) {
    ASSERT_EQ(setenv("NIBBLE_W4_MAX_CLUSTER", cap, 1), 0);
    for (const int64_t m : {1, 16}) {
      check({m, 4096, 4096, 128, false}, DType::kF16, DType::kF16, s += 2);
      check({m, 256, 11008, 64, true}, DType::kBF16, DType::kF32, s += 2);
    }
    unsetenv("NIBBLE_W4_MAX_CLUSTER");
    if (HasFatalFailure()) return;
  }
}

// The ping-pong load schedule (NIBBLE_W4_PIPE=1) gives the same products: M 1, 5 and 16 (one and
// two n8 token tiles), chunk counts that leave warps an odd number of chunks or none (K 4160 = 65
// chunks, K 576 = 9), padded rows (N 200), with and without clusters. Small shapes: the CPU
// emulator (tests/gpu/emu/run_w4.sh) runs it too.
TEST_F(CudaW4, PipelinedSchedule) {
  uint32_t s = 8700;
  ASSERT_EQ(setenv("NIBBLE_W4_PIPE", "1", 1), 0);
  for (const char* cap : {"1", "8"}) {
    ASSERT_EQ(setenv("NIBBLE_W4_MAX_CLUSTER", cap, 1), 0);
    for (const int64_t m : {1, 5, 16}) {
      check({m, 200, 4096, 128, false}, DType::kF16, DType::kF16, s += 2);
      check({m, 192, 4160, 64, true}, DType::kBF16, DType::kF32, s += 2);
      check({m, 72, 576, 64, false}, DType::kF16, DType::kF32, s += 2);
    }
    unsetenv("NIBBLE_W4_MAX_CLUSTER");
    if (HasFatalFailure()) break;
  }
  unsetenv("NIBBLE_W4_PIPE");
}

// Decode steps are replayed from CUDA graphs: the cluster launch (4096 x 4096: 4 blocks along K)
// and a multi-pass launch (M 20) captured once and replayed on new activations give the reference.
TEST_F(CudaW4, GraphCaptureAndReplay) {
  const int64_t n = 4096, k = 4096;
  auto host_w = w4_test::random_w4(n, k, 128, false, gpu_test::seed(9100));
  ASSERT_TRUE(host_w.ok());
  NB_ASSERT_OK_AND_ASSIGN(const Tensor dev_w, cuda::upload_w4(*host_w, ctx()));
  for (const int64_t m : {1, 20}) {
    cuda::DeviceBuffer d_x = poisoned(static_cast<size_t>(m * k) * 2), d_y = poisoned(static_cast<size_t>(m * n) * 2);
    NB_ASSERT_OK(ctx().synchronize());
    MatmulParams p{dev_w, d_x.as<float>(), d_y.as<float>(), m};
    p.act_dtype = DType::kF16;
    const Status began = cuda::Graph::begin_capture(ctx().stream());
    if (began.code() == StatusCode::kUnimplemented) GTEST_SKIP() << began.to_string();  // the CPU emulator
    NB_ASSERT_OK(began);
    const Status launched = cuda::matmul(p, ctx());
    auto graph = cuda::Graph::end_capture(ctx().stream());
    NB_ASSERT_OK(launched);
    ASSERT_TRUE(graph.ok()) << graph.status().to_string();
    for (uint32_t rep = 0; rep < 2; ++rep) {  // new inputs each replay, as decode steps
      std::vector<float> x = random_normal(static_cast<size_t>(m * k), 9200 + 10 * static_cast<uint32_t>(m) + rep);
      gpu_test::round_all(x, DType::kF16);
      const std::vector<uint8_t> bytes = gpu_test::encode(x, DType::kF16);
      NB_ASSERT_OK(cuda::copy_to_device(d_x.data(), bytes.data(), bytes.size(), ctx().stream()));
      NB_ASSERT_OK(graph->launch(ctx().stream()));
      const std::vector<float> got = download_act(d_y, static_cast<size_t>(m * n), DType::kF16);
      std::vector<float> want(static_cast<size_t>(m * n)), mag(want.size());
      cpu::ref::matmul_group({*host_w, x.data(), want.data(), m});
      std::vector<float> wrow(static_cast<size_t>(k));
      for (int64_t r = 0; r < n; ++r) {
        dequantize_tensor_row(*host_w, r, wrow.data());
        for (int64_t t = 0; t < m; ++t) {
          double a = 0;
          for (int64_t i = 0; i < k; ++i) a += std::fabs(static_cast<double>(x[t * k + i]) * wrow[i]);
          mag[static_cast<size_t>(t * n + r)] = static_cast<float>(a);
        }
      }
      gpu_test::Tol tol = gpu_test::act_tol(DType::kF16, 1.0 / 2048 + 1e-5);  // as check() above
      tol.norm = 2e-3;
      EXPECT_TRUE(all_close(got, want, tol, &mag)) << "m " << m << " replay " << rep;
    }
  }
}

// M > 64 with a workspace that holds only 128 rows of f16 weights: several dequantize + GEMM slabs.
TEST_F(CudaW4, PrefillInSlabs) {
  auto small = cuda::Context::create(0, size_t{1} << 20);  // 1 MiB: 128 rows of K = 4096
  ASSERT_TRUE(small.ok()) << small.status().to_string();
  check({65, 300, 4096, 128, false}, DType::kF16, DType::kF16, 9001, small->get());
  check({100, 300, 4096, 64, true}, DType::kBF16, DType::kF32, 9003, small->get());
}

TEST_F(CudaW4, RejectsWhatItCannotRun) {
  auto host_w = w4_test::random_w4(64, 128, 64, false, 5);
  ASSERT_TRUE(host_w.ok());
  NB_ASSERT_OK_AND_ASSIGN(const Tensor dev_w, cuda::upload_w4(*host_w, ctx()));
  cuda::DeviceBuffer d_x = poisoned(128 * 4), d_y = poisoned(64 * 4);
  MatmulParams p{dev_w, d_x.as<float>(), d_y.as<float>(), 1};
  p.act_dtype = DType::kF32;
  EXPECT_EQ(cuda::matmul(p, ctx()).code(), StatusCode::kUnimplemented);
  p.weight = *host_w;  // host memory
  p.act_dtype = DType::kF16;
  EXPECT_EQ(cuda::matmul(p, ctx()).code(), StatusCode::kInvalidArgument);
  auto k96 = w4_test::random_w4(8, 96, 32, false, 6);
  ASSERT_TRUE(k96.ok());
  EXPECT_EQ(cuda::upload_w4(*k96, ctx()).status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(cuda::w4_device_bytes(*host_w), 64 * 128 / 2 + 64 * 2 * 4);
}

}  // namespace
}  // namespace nb
