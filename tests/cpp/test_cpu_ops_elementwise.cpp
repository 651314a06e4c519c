// CPU rms_norm, rope, swiglu, embedding: fast paths against nb::cpu::ref, and the references
// against mathematical properties (norms, relative positions, closed forms).
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "test_cpu_ops_util.h"

namespace nb {
namespace {

using test::random_normal;

// rms_norm: the fast path sums squares in f32 (16 lanes, then a tree), the reference in double.
// Relative error of the scale is then <= ~(dim/32 + 5) * 2^-24 ~ 3e-6 for dim 1000; each output
// adds two more roundings. 4e-6 relative per element (plus a tiny absolute floor) covers it.
TEST(CpuOps, RmsNormMatchesReference) {
  uint32_t seed = 1;
  for (int64_t dim : {1, 17, 64, 576, 1000}) {
    for (int64_t rows : {1, 3}) {
      const auto x = random_normal(static_cast<size_t>(rows * dim), seed++, 3.f);
      const auto w = random_normal(static_cast<size_t>(dim), seed++);
      std::vector<float> want(x.size()), got(x.size()), inplace = x;
      cpu::ref::rms_norm({x.data(), w.data(), want.data(), rows, dim, 1e-5f});
      cpu::rms_norm({x.data(), w.data(), got.data(), rows, dim, 1e-5f});
      cpu::rms_norm({inplace.data(), w.data(), inplace.data(), rows, dim, 1e-5f});  // y may alias x
      for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], 4e-6 * std::fabs(want[i]) + 1e-30) << "dim=" << dim << " i=" << i;
        ASSERT_EQ(inplace[i], got[i]);
      }
    }
  }
}

// With weight 1 the output has mean square ms / (ms + eps), ms = mean square of the input.
TEST(CpuOps, RefRmsNormHasUnitMeanSquare) {
  const int64_t dim = 333;
  const auto x = random_normal(dim, 5, 0.01f);
  const std::vector<float> ones(dim, 1.f);
  std::vector<float> y(dim);
  const float eps = 1e-5f;
  cpu::ref::rms_norm({x.data(), ones.data(), y.data(), 1, dim, eps});
  double ms_in = 0, ms_out = 0;
  for (int64_t i = 0; i < dim; ++i) {
    ms_in += static_cast<double>(x[i]) * x[i] / dim;
    ms_out += static_cast<double>(y[i]) * y[i] / dim;
  }
  EXPECT_NEAR(ms_out, ms_in / (ms_in + eps), 1e-6);
}

std::vector<float> llama_inv_freq(int64_t head_dim, double theta) {
  std::vector<float> f(static_cast<size_t>(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) f[static_cast<size_t>(i)] = static_cast<float>(std::pow(theta, -2.0 * i / head_dim));
  return f;
}

struct RopeData {
  std::vector<float> q, k;
  std::vector<int32_t> pos;
  std::vector<float> inv_freq;
  RopeParams params(RopeStyle style) {
    const auto t = static_cast<int64_t>(pos.size());
    const int64_t hd = static_cast<int64_t>(inv_freq.size()) * 2;
    return {q.data(), k.data(), pos.data(), inv_freq.data(), t, static_cast<int64_t>(q.size()) / (t * hd),
            static_cast<int64_t>(k.size()) / (t * hd), hd, style};
  }
};

RopeData make_rope(int64_t tokens, int64_t heads, int64_t kv_heads, int64_t hd, uint32_t seed) {
  RopeData d;
  d.q = random_normal(static_cast<size_t>(tokens * heads * hd), seed);
  d.k = random_normal(static_cast<size_t>(tokens * kv_heads * hd), seed + 1);
  const int32_t positions[] = {0, 1, 7, 100, 4095, 32767, 99999, 12345, 3};
  for (int64_t t = 0; t < tokens; ++t) d.pos.push_back(positions[t % 9]);
  d.inv_freq = llama_inv_freq(hd, 10000.0);
  return d;
}

// The fast rope uses the same double-precision angles as the reference; the rotation itself is
// two f32 products and a sum, so outputs agree to a few ulp of the element magnitudes involved.
TEST(CpuOps, RopeMatchesReferenceBothStyles) {
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    for (int64_t hd : {2, 6, 16, 64, 128}) {
      RopeData a = make_rope(9, 9, 3, hd, 11), b = a;
      cpu::ref::rope(a.params(style));
      cpu::rope(b.params(style));
      for (size_t i = 0; i < a.q.size(); ++i) ASSERT_NEAR(b.q[i], a.q[i], 1e-6 * (1 + std::fabs(a.q[i]))) << hd << " " << i;
      for (size_t i = 0; i < a.k.size(); ++i) ASSERT_NEAR(b.k[i], a.k[i], 1e-6 * (1 + std::fabs(a.k[i]))) << hd << " " << i;
    }
  }
}

double dot(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Rotations: norms are preserved, position 0 is the identity, and q.k after rotation depends only
// on the position difference (the property RoPE exists for) — also at positions near 1e5, which
// f32 angles would get wrong by ~1e-2.
TEST(CpuOps, RefRopeIsARelativeRotation) {
  const int64_t hd = 64;
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    for (auto rope : {&cpu::ref::rope, &cpu::rope}) {
      RopeData d = make_rope(9, 1, 1, hd, 21);
      const RopeData orig = d;
      rope(d.params(style));
      for (int64_t t = 0; t < 9; ++t) {
        const float* before = orig.q.data() + t * hd;
        const float* after = d.q.data() + t * hd;
        EXPECT_NEAR(dot(after, after, hd), dot(before, before, hd), 1e-5 * dot(before, before, hd));
        if (d.pos[static_cast<size_t>(t)] == 0) {
          for (int64_t i = 0; i < hd; ++i) EXPECT_EQ(after[i], before[i]);
        }
      }
      // Same q, k vectors at positions (p, p + 5) for several p: the rotated dot product is constant.
      const auto q = random_normal(hd, 31), k = random_normal(hd, 32);
      const int32_t bases[] = {0, 1000, 50000, 99990};
      double first = 0;
      for (int i = 0; i < 4; ++i) {
        RopeData pair;
        pair.q = q;
        pair.k = k;
        pair.pos = {bases[i]};
        pair.inv_freq = d.inv_freq;
        RopeData pair2 = pair;
        pair2.pos = {bases[i] + 5};
        rope(pair.params(style));   // q at p (k rotated too, unused)
        rope(pair2.params(style));  // k at p + 5
        const double qk = dot(pair.q.data(), pair2.k.data(), hd);
        if (i == 0) first = qk;
        EXPECT_NEAR(qk, first, 2e-5 * std::sqrt(dot(q.data(), q.data(), hd) * dot(k.data(), k.data(), hd)))
            << "base " << bases[i];
      }
    }
  }
}

// The two styles are the same rotation up to a fixed permutation of the head dimensions:
// half-style element i pairs with i + d/2, interleaved element 2i with 2i + 1.
TEST(CpuOps, RopeStylesAgreeUnderPermutation) {
  const int64_t hd = 16;
  for (auto rope : {&cpu::ref::rope, &cpu::rope}) {
    RopeData half = make_rope(4, 2, 1, hd, 41);
    RopeData inter = half;
    auto to_interleaved = [&](std::vector<float>& v) {
      std::vector<float> out(v.size());
      for (size_t h = 0; h < v.size() / hd; ++h)
        for (int64_t i = 0; i < hd / 2; ++i) {
          out[h * hd + 2 * i] = v[h * hd + i];
          out[h * hd + 2 * i + 1] = v[h * hd + i + hd / 2];
        }
      v = out;
    };
    to_interleaved(inter.q);
    to_interleaved(inter.k);
    rope(half.params(RopeStyle::kHalf));
    rope(inter.params(RopeStyle::kInterleaved));
    to_interleaved(half.q);
    to_interleaved(half.k);
    for (size_t i = 0; i < half.q.size(); ++i) EXPECT_NEAR(half.q[i], inter.q[i], 1e-6) << i;
    for (size_t i = 0; i < half.k.size(); ++i) EXPECT_NEAR(half.k[i], inter.k[i], 1e-6) << i;
  }
}

// swiglu: the fast e^x has <= 2 ulp relative error, then 1 + e^x, a division and a product:
// <= ~6 ulp (3.6e-7) relative overall. 1e-6 relative is a safe bound, far below any wrong formula.
TEST(CpuOps, SwigluMatchesReference) {
  for (int64_t n : {1, 15, 16, 17, 1536, 4099}) {
    auto gate = random_normal(static_cast<size_t>(n), static_cast<uint32_t>(n), 4.f);
    const auto up = random_normal(static_cast<size_t>(n), static_cast<uint32_t>(n) + 1);
    // Extremes: e^-g overflows (g << 0) or vanishes (g >> 0).
    const float extremes[] = {-200.f, -100.f, -88.f, -20.f, 0.f, 20.f, 88.f, 100.f, 200.f, -0.f};
    for (size_t i = 0; i < std::min<size_t>(10, gate.size()); ++i) gate[i] = extremes[i];
    std::vector<float> want(static_cast<size_t>(n)), got(static_cast<size_t>(n)), inplace = gate;
    cpu::ref::swiglu({gate.data(), up.data(), want.data(), n});
    cpu::swiglu({gate.data(), up.data(), got.data(), n});
    cpu::swiglu({inplace.data(), up.data(), inplace.data(), n});  // out may alias gate
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-6 * std::fabs(want[i]) + 1e-37) << "n=" << n << " gate=" << gate[i];
      ASSERT_EQ(inplace[i], got[i]);
    }
  }
}

// silu(g) = g * sigmoid(g): closed-form values.
TEST(CpuOps, RefSwigluClosedForm) {
  const float gate[] = {0.f, 1.f, -1.f, 30.f, -30.f};
  const float up[] = {5.f, 2.f, 2.f, 1.f, 1.f};
  float out[5];
  cpu::ref::swiglu({gate, up, out, 5});
  EXPECT_EQ(out[0], 0.f);
  EXPECT_NEAR(out[1], 2.0 / (1.0 + std::exp(-1.0)), 1e-7);
  EXPECT_NEAR(out[2], -2.0 / (1.0 + std::exp(1.0)), 1e-7);
  EXPECT_NEAR(out[3], 30.f, 1e-5);
  EXPECT_NEAR(out[4], -30.0 * std::exp(-30.0), 1e-15);
}

TEST(CpuOps, EmbeddingGathersDequantizedRows) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
    const auto table = test::make_weight(dtype, 50, 64, 9);
    const std::vector<float> full = test::dequantized(table.tensor);
    const int32_t ids[] = {3, 49, 0, 3};
    std::vector<float> got(4 * 64), want(4 * 64);
    cpu::embedding({table.tensor, ids, got.data(), 4});
    cpu::ref::embedding({table.tensor, ids, want.data(), 4});
    for (int t = 0; t < 4; ++t)
      for (int i = 0; i < 64; ++i) {
        EXPECT_EQ(got[static_cast<size_t>(t * 64 + i)], full[static_cast<size_t>(ids[t] * 64 + i)]) << dtype_name(dtype);
        EXPECT_EQ(want[static_cast<size_t>(t * 64 + i)], full[static_cast<size_t>(ids[t] * 64 + i)]) << dtype_name(dtype);
      }
  }
}

}  // namespace
}  // namespace nb
