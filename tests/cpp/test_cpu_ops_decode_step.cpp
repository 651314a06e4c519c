// cpu::ref::decode_step (the reference the CUDA persistent decode step is tested against) with q, k
// and v apart (DecodeStepLayer::wk/wv, how 4-bit weights come) against the same step with one
// concatenated q|k|v weight: every row's product is the same dot product either way, so the
// residual stream and the new token's cache slots must be equal bit for bit. Then 4-bit kQGroup
// weights against their own dequantized f32 copies (tests/cpp/w4_test_util.h), which must agree to
// f32 rounding: a reference that dropped wk/wv, or read a kQGroup weight wrongly, moves values by O(1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/group_quant.h"
#include "w4_test_util.h"

namespace nb {
namespace {

constexpr int64_t kLayers = 2, kDim = 128, kHidden = 256, kHeads = 4, kKvHeads = 2, kHd = 32;
constexpr int64_t kQDim = kHeads * kHd, kKvDim = kKvHeads * kHd, kBlock = 16, kPos = 20;
constexpr int64_t kBlocks = kPos / kBlock + 3;

Tensor f32_tensor(int64_t n, int64_t k, std::mt19937& rng) {
  const int64_t shape[2] = {n, k};
  Tensor t = Tensor::empty(shape, 2, DType::kF32);
  std::normal_distribution<float> nd(0.f, std::sqrt(0.5f / static_cast<float>(k)));
  for (int64_t i = 0; i < n * k; ++i) t.ptr<float>()[i] = nd(rng);
  return t;
}

Tensor dequantized(const Tensor& q) {
  const int64_t shape[2] = {q.dim(0), q.dim(1)};
  Tensor t = Tensor::empty(shape, 2, DType::kF32);
  for (int64_t r = 0; r < q.dim(0); ++r) dequantize_tensor_row(q, r, t.ptr<float>() + r * q.dim(1));
  return t;
}

Tensor concat_rows(const std::vector<const Tensor*>& parts) {
  int64_t n = 0;
  for (const Tensor* p : parts) n += p->dim(0);
  const int64_t shape[2] = {n, parts[0]->dim(1)};
  Tensor t = Tensor::empty(shape, 2, DType::kF32);
  float* dst = t.ptr<float>();
  for (const Tensor* p : parts) dst = std::copy(p->ptr<float>(), p->ptr<float>() + p->numel(), dst);
  return t;
}

// One layer's weights: q, k, v, o, gate, up, down.
using LayerW = std::vector<Tensor>;

struct StepOut {
  std::vector<float> x, k_slot, v_slot;  // after the step; the slot rows of every layer
};

// Runs the reference step; `apart`: q, k, v as three weights (wqkv = q rows), else concatenated.
StepOut run(const std::vector<LayerW>& w, bool apart) {
  std::mt19937 rng(7);  // the same norms, caches and input for every call
  std::normal_distribution<float> nd(0.f, 1.f);
  const size_t cache = static_cast<size_t>(kBlocks * kBlock * kKvDim);
  std::vector<std::vector<float>> an(kLayers), fn(kLayers), kc(kLayers), vc(kLayers);
  std::vector<int32_t> table(static_cast<size_t>(kBlocks));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  DecodeStepParams p;
  for (int64_t l = 0; l < kLayers; ++l) {
    for (auto* v : {&an[l], &fn[l]}) {
      v->resize(kDim);
      for (float& f : *v) f = 1.f + 0.3f * nd(rng);
    }
    for (auto* v : {&kc[l], &vc[l]}) {
      v->resize(cache);
      for (float& f : *v) f = nd(rng);
    }
    const LayerW& lw = w[static_cast<size_t>(l)];
    DecodeStepLayer d{apart ? lw[0] : concat_rows({&lw[0], &lw[1], &lw[2]}), lw[3], lw[4], lw[5], lw[6],
                      an[l].data(), fn[l].data(), kc[l].data(), vc[l].data(), {}, {}};
    if (apart) {
      d.wk = lw[1];
      d.wv = lw[2];
    }
    p.layers.push_back(d);
  }
  std::vector<float> x(kDim), q(kQDim), k(kKvDim), v(kKvDim), att(kQDim), hb(kHidden), inv(kHd / 2);
  for (float& f : x) f = nd(rng);
  for (int64_t i = 0; i < kHd / 2; ++i) inv[static_cast<size_t>(i)] = std::pow(10000.f, -2.f * i / kHd);
  const int32_t pos = kPos;
  const int64_t slot = int64_t{table[kPos / kBlock]} * kBlock + kPos % kBlock;
  p.x = x.data();
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.att = att.data();
  p.hb = hb.data();
  p.block_table = table.data();
  p.start_pos = &pos;
  p.position = &pos;
  p.slot = &slot;
  p.inv_freq = inv.data();
  p.block_size = kBlock;
  p.num_heads = kHeads;
  p.num_kv_heads = kKvHeads;
  p.head_dim = kHd;
  p.max_context_len = kPos + 1;
  p.norm_eps = 1e-5f;
  p.scale = 1.f / std::sqrt(static_cast<float>(kHd));
  cpu::ref::decode_step(p);
  StepOut r{x, {}, {}};
  for (int64_t l = 0; l < kLayers; ++l) {
    r.k_slot.insert(r.k_slot.end(), kc[l].begin() + slot * kKvDim, kc[l].begin() + (slot + 1) * kKvDim);
    r.v_slot.insert(r.v_slot.end(), vc[l].begin() + slot * kKvDim, vc[l].begin() + (slot + 1) * kKvDim);
  }
  return r;
}

const int64_t kShapes[7][2] = {{kQDim, kDim}, {kKvDim, kDim}, {kKvDim, kDim}, {kDim, kQDim},
                               {kHidden, kDim}, {kHidden, kDim}, {kDim, kHidden}};

TEST(CpuDecodeStepRef, QkvApartEqualsConcatenated) {
  std::mt19937 rng(3);
  std::vector<LayerW> w(kLayers);
  for (LayerW& lw : w)
    for (const auto& s : kShapes) lw.push_back(f32_tensor(s[0], s[1], rng));
  const StepOut a = run(w, true), c = run(w, false);
  EXPECT_EQ(a.x, c.x);
  EXPECT_EQ(a.k_slot, c.k_slot);
  EXPECT_EQ(a.v_slot, c.v_slot);
  // The comparison can see a wrong k weight: doubling it moves the cached keys and the output.
  for (float* f = w[0][1].ptr<float>(); f != w[0][1].ptr<float>() + w[0][1].numel(); ++f) *f *= 2.f;
  const StepOut d = run(w, true);
  EXPECT_NE(d.k_slot, a.k_slot);
  EXPECT_NE(d.x, a.x);
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

TEST(CpuDecodeStepRef, FourBitWeightsMatchTheirDequantizedCopies) {
  for (const auto& [group, sym] : {std::pair<int64_t, bool>{64, false}, {128, true}, {-1, false}}) {
    std::vector<LayerW> w4(kLayers), wf(kLayers);
    uint32_t seed = 100;
    for (int64_t l = 0; l < kLayers; ++l) {
      for (const auto& s : kShapes) {
        auto q = w4_test::random_w4(s[0], s[1], group, sym, seed++, std::sqrt(0.5f / static_cast<float>(s[1])) / 6.f);
        ASSERT_TRUE(q.ok()) << q.status().to_string();
        wf[static_cast<size_t>(l)].push_back(dequantized(*q));
        w4[static_cast<size_t>(l)].push_back(std::move(*q));
      }
    }
    const StepOut a = run(w4, true), b = run(wf, true);
    // Same weights, f32 sums in another order at most: 1e-5 of the norm (a wrong weight: ~1).
    EXPECT_LT(rel_diff(a.x, b.x), 1e-5) << "group " << group;
    EXPECT_LT(rel_diff(a.k_slot, b.k_slot), 1e-5) << "group " << group;
    EXPECT_LT(rel_diff(a.v_slot, b.v_slot), 1e-5) << "group " << group;
  }
}

}  // namespace
}  // namespace nb
