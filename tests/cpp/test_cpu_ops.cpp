// CPU matmul: every fast path (AVX-512, AVX2 and the portable fallback) against nb::cpu::ref::matmul, and
// ref::matmul itself against the GGUF block formulas written out by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "backend/cpu/act_quant.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul_internal.h"
#include "test_cpu_ops_util.h"

namespace nb {
namespace {

using test::make_weight;
using test::random_normal;

struct Shape {
  int64_t m, n, k;
};

// Shapes: odd M (1, 3, 17, 64), N not a multiple of the thread count or of the 4-row tile, K a
// multiple of 32 but not of 256 with every tail-group size (K/32 mod 4 = 0, 1, 2, 3).
const Shape kShapes[] = {{1, 37, 96}, {3, 64, 160}, {17, 101, 288}, {64, 130, 544}, {1, 5, 32},
                         {5, 9, 64},  {2, 3, 224},  {1, 576, 576},  {4, 7, 128}};

std::vector<float> run_ref(const Tensor& w, const float* x, int64_t m) {
  std::vector<float> y(static_cast<size_t>(m * w.dim(0)));
  cpu::ref::matmul({w, x, y.data(), m});
  return y;
}

// sum_k |W[n,k] x[t,k]| for every output: the scale f32 summation error is proportional to.
std::vector<double> abs_dot(const Tensor& w, const float* x, int64_t m) {
  const std::vector<float> wf = test::dequantized(w);
  const int64_t n = w.dim(0), k = w.dim(1);
  std::vector<double> out(static_cast<size_t>(m * n));
  for (int64_t t = 0; t < m; ++t)
    for (int64_t r = 0; r < n; ++r) {
      double s = 0;
      for (int64_t i = 0; i < k; ++i) s += std::fabs(static_cast<double>(wf[static_cast<size_t>(r * k + i)]) * x[t * k + i]);
      out[static_cast<size_t>(t * n + r)] = s;
    }
  return out;
}

// The activations exactly as the integer paths see them: quantized to 8-bit blocks and back.
std::vector<float> as_quantized(const std::vector<float>& x, int64_t m, int64_t k) {
  const cpu::ActQ8Layout l = cpu::act_q8_layout(k);
  std::vector<uint8_t> row(l.row_bytes);
  std::vector<float> out(x.size());
  for (int64_t t = 0; t < m; ++t) {
    cpu::quantize_act_row(x.data() + t * k, l, 0, row.data());
    cpu::dequantize_act_row(row.data(), l, out.data() + t * k);
  }
  return out;
}

using MatmulFn = void (*)(const MatmulParams&, ThreadPool&);
struct NamedMatmul {
  const char* name;
  MatmulFn fn;
};

// Every implementation this machine can run: the dispatcher's choice, the portable fallback, and
// the AVX2 kernels (what AVX2-only machines dispatch to) wherever the CPU has AVX2.
std::vector<NamedMatmul> quantized_impls() {
  std::vector<NamedMatmul> v = {{"dispatch", &cpu::matmul}, {"portable", &cpu::portable::matmul_quantized}};
  if (cpu::avx2::available()) v.push_back({"avx2", &cpu::avx2::matmul_quantized});
  // The prefill strip kernel at every M (the dispatcher only picks it for M >= 12).
  if (cpu::avx512::available()) v.push_back({"avx512_strips", &cpu::avx512::matmul_quantized_strips});
  return v;
}
std::vector<NamedMatmul> float_impls() {
  std::vector<NamedMatmul> v = {{"dispatch", &cpu::matmul}, {"portable", &cpu::portable::matmul_float}};
  if (cpu::avx2::available()) v.push_back({"avx2", &cpu::avx2::matmul_float});
  return v;
}

class QuantMatmul : public ::testing::TestWithParam<std::tuple<DType, int>> {};

// Against the reference on the SAME quantized activations the integer path is exact per block;
// what remains is f32 rounding: the product of the two block scales (1 ulp), one fma per block and
// the 16-lane tree sum (~log2(K/32) + 5 roundings). 1e-5 of sum |w x| covers K up to ~10^4 with
// a wide margin while still catching any wrong block, scale, min term or lane (errors >= 1e-3).
TEST_P(QuantMatmul, MatchesReferenceOnSameQuantizedActivations) {
  const auto [dtype, threads] = GetParam();
  ThreadPool pool(threads);
  uint32_t seed = 100;
  for (const Shape& s : kShapes) {
    const auto w = make_weight(dtype, s.n, s.k, seed++);
    const std::vector<float> x = random_normal(static_cast<size_t>(s.m * s.k), seed++);
    const std::vector<float> xq = as_quantized(x, s.m, s.k);
    const std::vector<float> want = run_ref(w.tensor, xq.data(), s.m);
    const std::vector<double> scale = abs_dot(w.tensor, xq.data(), s.m);
    for (const NamedMatmul& impl : quantized_impls()) {
      std::vector<float> y(want.size(), NAN);
      impl.fn({w.tensor, x.data(), y.data(), s.m}, pool);
      for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_NEAR(y[i], want[i], 1e-5 * scale[i] + 1e-30)
            << dtype_name(dtype) << " m=" << s.m << " n=" << s.n << " k=" << s.k << " i=" << i << " " << impl.name;
      }
    }
  }
}

// Against the f32 activations the only extra error is the 8-bit rounding of each activation:
// |x - xq| <= d/2 = amax(block)/254 per element, so |y - y_ref| <= sum_b amax_b/254 * sum_{k in b}
// |w_k| — a bound computed here per output, plus the f32 term above. Rigorous, not a guess.
TEST_P(QuantMatmul, WithinActivationRoundingBoundOfF32Reference) {
  const auto [dtype, threads] = GetParam();
  ThreadPool pool(threads);
  uint32_t seed = 200;
  for (const Shape& s : kShapes) {
    const auto w = make_weight(dtype, s.n, s.k, seed++);
    const std::vector<float> x = random_normal(static_cast<size_t>(s.m * s.k), seed++);
    const std::vector<float> want = run_ref(w.tensor, x.data(), s.m);
    const std::vector<float> wf = test::dequantized(w.tensor);
    const std::vector<double> scale = abs_dot(w.tensor, x.data(), s.m);
    std::vector<float> y(want.size(), NAN);
    cpu::matmul({w.tensor, x.data(), y.data(), s.m}, pool);
    double worst_ratio = 0;
    for (int64_t t = 0; t < s.m; ++t)
      for (int64_t r = 0; r < s.n; ++r) {
        double bound = 0;
        for (int64_t b = 0; b < s.k / 32; ++b) {
          double amax = 0, wsum = 0;
          for (int e = 0; e < 32; ++e) {
            amax = std::max(amax, static_cast<double>(std::fabs(x[static_cast<size_t>(t * s.k + b * 32 + e)])));
            wsum += std::fabs(wf[static_cast<size_t>(r * s.k + b * 32 + e)]);
          }
          bound += amax / 254.0 * wsum;
        }
        const size_t i = static_cast<size_t>(t * s.n + r);
        bound = bound * 1.001 + 1e-5 * scale[i];
        const double err = std::fabs(static_cast<double>(y[i]) - want[i]);
        ASSERT_LE(err, bound) << dtype_name(dtype) << " m=" << s.m << " n=" << s.n << " k=" << s.k << " t=" << t;
        worst_ratio = std::max(worst_ratio, err / bound);
      }
    // The bound is worst-case; typical errors are far below it (rounding errors cancel).
    EXPECT_LT(worst_ratio, 0.9) << dtype_name(dtype);
  }
}

INSTANTIATE_TEST_SUITE_P(CpuOps, QuantMatmul,
                         ::testing::Combine(::testing::Values(DType::kQ8_0, DType::kQ4_0, DType::kQ4_1),
                                            ::testing::Values(1, 2, 3)),
                         [](const auto& info) {
                           return std::string(dtype_name(std::get<0>(info.param))) + "_t" +
                                  std::to_string(std::get<1>(info.param));
                         });

class FloatMatmul : public ::testing::TestWithParam<std::tuple<DType, int>> {};

// F32/F16/BF16 weights meet f32 activations exactly (widening is exact); only the summation order
// differs from the double-accumulated reference: <= ~K/16 + 5 roundings of partial sums, each at
// most 2^-24 of sum |w x|. 1e-5 of sum |w x| is loose for K <= 600 yet far below any real bug.
TEST_P(FloatMatmul, MatchesReference) {
  const auto [dtype, threads] = GetParam();
  ThreadPool pool(threads);
  uint32_t seed = 300;
  // Float weights have no block constraint: also K not a multiple of 16 (masked tails).
  const Shape shapes[] = {{1, 37, 37}, {3, 64, 100}, {17, 101, 288}, {64, 66, 576}, {1, 5, 1}, {6, 11, 33}};
  for (const Shape& s : shapes) {
    const auto w = make_weight(dtype, s.n, s.k, seed++);
    const std::vector<float> x = random_normal(static_cast<size_t>(s.m * s.k), seed++);
    const std::vector<float> want = run_ref(w.tensor, x.data(), s.m);
    const std::vector<double> scale = abs_dot(w.tensor, x.data(), s.m);
    for (const NamedMatmul& impl : float_impls()) {
      std::vector<float> y(want.size(), NAN);
      impl.fn({w.tensor, x.data(), y.data(), s.m}, pool);
      for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_NEAR(y[i], want[i], 1e-5 * scale[i] + 1e-30)
            << dtype_name(dtype) << " m=" << s.m << " n=" << s.n << " k=" << s.k << " i=" << i << " " << impl.name;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(CpuOps, FloatMatmul,
                         ::testing::Combine(::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                                            ::testing::Values(1, 2, 3)),
                         [](const auto& info) {
                           return std::string(dtype_name(std::get<0>(info.param))) + "_t" +
                                  std::to_string(std::get<1>(info.param));
                         });

// The fallback quantizer (what non-AVX-512 machines run) writes the very same bytes.
TEST(CpuOps, ActivationQuantizerPortableIsBitIdentical) {
  for (int64_t k : {32, 64, 96, 128, 160, 576, 1536}) {
    const cpu::ActQ8Layout l = cpu::act_q8_layout(k);
    std::vector<float> x = random_normal(static_cast<size_t>(k), static_cast<uint32_t>(k), 3.f);
    x[0] = 0.f;  // and an all-zero block (d = 0 must give q = 0, not NaN)
    if (k >= 64) std::fill(x.begin() + 32, x.begin() + 64, 0.f);
    for (int bias : {0, 8, 128}) {
      std::vector<uint8_t> a(l.row_bytes, 0xAB), b(l.row_bytes, 0xCD);
      cpu::quantize_act_row(x.data(), l, bias, a.data());
      cpu::portable::quantize_act_row(x.data(), l, bias, b.data());
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), l.row_bytes)) << "k=" << k << " bias=" << bias;
    }
    // Round trip: every element within half a quantization step of the input.
    std::vector<uint8_t> row(l.row_bytes);
    std::vector<float> back(static_cast<size_t>(k));
    cpu::quantize_act_row(x.data(), l, 0, row.data());
    cpu::dequantize_act_row(row.data(), l, back.data());
    for (int64_t b0 = 0; b0 < k; b0 += 32) {
      float amax = 0;
      for (int e = 0; e < 32; ++e) amax = std::max(amax, std::fabs(x[static_cast<size_t>(b0 + e)]));
      for (int e = 0; e < 32; ++e) {
        const size_t i = static_cast<size_t>(b0 + e);
        ASSERT_LE(std::fabs(back[i] - x[i]), amax / 254.f * 1.0001f + 1e-30f) << "k=" << k << " i=" << i;
      }
    }
  }
}

// ref::matmul against the GGUF block definitions written out here (not via dequantize_row):
// Q8_0 x = d q, Q4_0 x = d (q - 8), Q4_1 x = d q + m, element j in the low nibble of qs[j] and
// element j + 16 in the high nibble. Small integers and power-of-two scales make every product
// and sum exact, so the comparison is exact.
TEST(CpuOps, RefMatmulMatchesHandWrittenBlockFormulas) {
  constexpr int kK = 64, kN = 3;
  std::vector<float> x(kK);
  for (int i = 0; i < kK; ++i) x[static_cast<size_t>(i)] = static_cast<float>((i * 7) % 11 - 5);
  std::vector<BlockQ8_0> q8(kN * 2);
  std::vector<BlockQ4_0> q40(kN * 2);
  std::vector<BlockQ4_1> q41(kN * 2);
  double want8[kN] = {}, want40[kN] = {}, want41[kN] = {};
  for (int r = 0; r < kN; ++r) {
    for (int b = 0; b < 2; ++b) {
      const size_t bi = static_cast<size_t>(r * 2 + b);
      const float d = std::ldexp(1.f, r - b - 1), m = -static_cast<float>(r + b);
      q8[bi].d = q40[bi].d = q41[bi].d = fp32_to_fp16(d);
      q41[bi].m = fp32_to_fp16(m);
      for (int j = 0; j < 32; ++j) {
        const int v8 = (j * 13 + r * 5 + b) % 255 - 127;
        q8[bi].qs[j] = static_cast<int8_t>(v8);
        want8[r] += static_cast<double>(d) * v8 * x[static_cast<size_t>(b * 32 + j)];
      }
      for (int j = 0; j < 16; ++j) {
        const int lo = (j * 3 + r + b) % 16, hi = (j * 5 + 2 * r + b) % 16;
        q40[bi].qs[j] = q41[bi].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
        const double xlo = x[static_cast<size_t>(b * 32 + j)], xhi = x[static_cast<size_t>(b * 32 + j + 16)];
        want40[r] += d * ((lo - 8) * xlo + (hi - 8) * xhi);
        want41[r] += (d * lo + m) * xlo + (d * hi + m) * xhi;
      }
    }
  }
  struct Case {
    DType t;
    void* data;
    const double* want;
  } cases[] = {{DType::kQ8_0, q8.data(), want8}, {DType::kQ4_0, q40.data(), want40}, {DType::kQ4_1, q41.data(), want41}};
  for (const Case& c : cases) {
    float y[kN];
    cpu::ref::matmul({Tensor::view(c.data, {kN, kK}, c.t), x.data(), y, 1});
    for (int r = 0; r < kN; ++r) EXPECT_EQ(y[r], c.want[r]) << dtype_name(c.t) << " row " << r;
  }
}

// Random shapes, every weight dtype, against the reference; rerun under ASan+UBSan in CI, where the
// exact-size weight buffers make any read past the last block an error.
TEST(CpuOpsFuzz, MatmulRandomShapesMatchReference) {
  std::mt19937 rng(7);
  ThreadPool pool(2);
  for (int iter = 0; iter < 60; ++iter) {
    const DType dtypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1};
    const DType dtype = dtypes[rng() % 6];
    const bool block = is_block_quantized(dtype);
    const int64_t m = 1 + rng() % 9, n = 1 + rng() % 23;
    const int64_t k = block ? 32 * (1 + rng() % 9) : 1 + rng() % 200;
    const auto w = make_weight(dtype, n, k, rng());
    const std::vector<float> x = random_normal(static_cast<size_t>(m * k), rng());
    const std::vector<float> xq = block ? as_quantized(x, m, k) : x;
    const std::vector<float> want = run_ref(w.tensor, xq.data(), m);
    const std::vector<double> scale = abs_dot(w.tensor, xq.data(), m);
    for (const NamedMatmul& impl : block ? quantized_impls() : float_impls()) {
      std::vector<float> y(want.size(), NAN);
      impl.fn({w.tensor, x.data(), y.data(), m}, pool);
      for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_NEAR(y[i], want[i], 1e-5 * scale[i] + 1e-30)
            << dtype_name(dtype) << " m=" << m << " n=" << n << " k=" << k << " " << impl.name;
      }
    }
  }
}

}  // namespace
}  // namespace nb
