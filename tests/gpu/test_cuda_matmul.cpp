// CUDA matmul (cuBLAS, f32 accumulation) against cpu::ref::matmul (double accumulation) with the same
// MatmulParams, for f32/f16/bf16 weights and activations, over shapes from batch-1 GEMV to GEMM with
// odd sizes. Tolerance per element: rel * |want| + c * sum_k |x_k w_k| — the f32 accumulation error is
// bounded by a multiple of eps * sum |x w| (c = 1e-5 allows ~170 eps, several times the worst
// blocked/split-K summation over K <= 4096), and rel covers the f16/bf16 output rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "gpu_test_util.h"

namespace nb {
namespace {

using gpu_test::all_close;
using gpu_test::CudaTest;
using gpu_test::random_normal;

class CudaMatmul : public CudaTest {};

TEST_F(CudaMatmul, MatchesReference) {
  struct Case {
    int64_t m, n, k;
  };
  const Case cases[] = {{1, 576, 576},   {1, 1536, 576}, {7, 576, 1536}, {5, 257, 96},  {33, 100, 64},
                        {64, 1024, 4096}, {1, 4096, 4096}, {128, 512, 512}, {3, 8, 8}, {1, 49152, 64},
                        // M <= 2 with K % 8 == 0 takes the GEMV kernel for f16/bf16 (gemv.cu); the kernel handles up to 8
                        {2, 1000, 96}, {4, 333, 4104}, {8, 11008, 4096}, {6, 64, 11008}};
  uint32_t s = 3000;
  for (const Case& c : cases)
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
      std::vector<float> w = random_normal(static_cast<size_t>(c.n * c.k), s++, 0.05f);
      std::vector<float> x = random_normal(static_cast<size_t>(c.m * c.k), s++);
      gpu_test::round_all(w, dt);
      gpu_test::round_all(x, dt);
      std::vector<float> want(static_cast<size_t>(c.m * c.n)), mag(want.size());
      const Tensor host_w = Tensor::view(w.data(), {c.n, c.k}, DType::kF32);
      cpu::ref::matmul({host_w, x.data(), want.data(), c.m});
      for (int64_t t = 0; t < c.m; ++t)
        for (int64_t r = 0; r < c.n; ++r) {
          double a = 0;
          for (int64_t i = 0; i < c.k; ++i) a += std::fabs(static_cast<double>(x[t * c.k + i]) * w[r * c.k + i]);
          mag[static_cast<size_t>(t * c.n + r)] = static_cast<float>(a);
        }

      cuda::DeviceBuffer d_w = upload_act(w, dt), d_x = upload_act(x, dt);
      cuda::DeviceBuffer d_y = poisoned(want.size() * gpu_test::elem_bytes(dt));
      MatmulParams p{Tensor::view(d_w.data(), {c.n, c.k}, dt, nullptr, Device::kCUDA), d_x.as<float>(),
                     d_y.as<float>(), c.m};
      p.act_dtype = dt;
      NB_ASSERT_OK(cuda::matmul(p, ctx()));
      const std::vector<float> got = download_act(d_y, want.size(), dt);
      EXPECT_TRUE(all_close(got, want, gpu_test::act_tol(dt, 1e-5), &mag))
          << "m " << c.m << " n " << c.n << " k " << c.k << " dtype " << dtype_name(dt);
    }
}

// matmul_to_f32 (logits): f16/bf16 inputs, f32 output; GEMV (M <= 8) and cuBLAS (M > 8) paths.
TEST_F(CudaMatmul, ToF32MatchesReference) {
  uint32_t s = 3500;
  for (const int64_t m : {1, 5, 8, 9, 40})
    for (DType dt : {DType::kF16, DType::kBF16}) {
      const int64_t n = 3000, k = 576;
      std::vector<float> w = random_normal(static_cast<size_t>(n * k), s++, 0.05f);
      std::vector<float> x = random_normal(static_cast<size_t>(m * k), s++);
      gpu_test::round_all(w, dt);
      gpu_test::round_all(x, dt);
      std::vector<float> want(static_cast<size_t>(m * n)), mag(want.size());
      cpu::ref::matmul({Tensor::view(w.data(), {n, k}, DType::kF32), x.data(), want.data(), m});
      for (int64_t t = 0; t < m; ++t)
        for (int64_t r = 0; r < n; ++r) {
          double a = 0;
          for (int64_t i = 0; i < k; ++i) a += std::fabs(static_cast<double>(x[t * k + i]) * w[r * k + i]);
          mag[static_cast<size_t>(t * n + r)] = static_cast<float>(a);
        }
      cuda::DeviceBuffer d_w = upload_act(w, dt), d_x = upload_act(x, dt);
      cuda::DeviceBuffer d_y = poisoned(want.size() * 4);
      MatmulParams p{Tensor::view(d_w.data(), {n, k}, dt, nullptr, Device::kCUDA), d_x.as<float>(), d_y.as<float>(), m};
      p.act_dtype = dt;
      NB_ASSERT_OK(cuda::matmul_to_f32(p, ctx()));
      const std::vector<float> got = download_act(d_y, want.size(), DType::kF32);
      // f32 output: only the f32 accumulation error remains.
      EXPECT_TRUE(all_close(got, want, gpu_test::act_tol(DType::kF32, 1e-5), &mag)) << "m " << m << " " << dtype_name(dt);
    }
}

TEST_F(CudaMatmul, RejectsUnsupportedCombinations) {
  cuda::DeviceBuffer d_w = poisoned(64 * 64 * 4), d_x = poisoned(64 * 4), d_y = poisoned(64 * 4);
  MatmulParams p{Tensor::view(d_w.data(), {64, 64}, DType::kF16, nullptr, Device::kCUDA), d_x.as<float>(),
                 d_y.as<float>(), 1};
  EXPECT_EQ(cuda::matmul(p, ctx()).code(), StatusCode::kUnimplemented);  // f16 weights, f32 activations
  p.weight = Tensor::view(d_w.data(), {64, 64}, DType::kQ4_1, nullptr, Device::kCUDA);
  p.act_dtype = DType::kF16;
  EXPECT_EQ(cuda::matmul(p, ctx()).code(), StatusCode::kUnimplemented);
  std::vector<uint16_t> host(64 * 64);
  p.weight = Tensor::view(host.data(), {64, 64}, DType::kF16);  // host memory
  EXPECT_EQ(cuda::matmul(p, ctx()).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nb
