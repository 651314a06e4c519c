// cuda::decode_step (the persistent kernel running a whole decode step) against its CPU reference
// (cpu::ref::decode_step: ref::fused_linear, ref::rope_kv_write, ref::batch_attention in turn, f32
// throughout) with the same DecodeStepParams, fresh random weights, norms and a pre-filled paged
// KV cache (shuffled block table), rounded to the activation dtype.
//
// Checked: the residual stream x after all layers, and every layer's cache slot of the new token
// (k roped, v), written by the kernel. Configs cover MHA and GQA, head_dim 64 and 128, rows of one to
// four chunks a warp, one split
// and several splits per head (merged by the last split to finish), and a context long enough
// that each attention warp takes several split units; f16 and bf16; each step is run twice in a
// row (the grid barrier and the merge counters must come back to 0 between launches).
//
// Tolerance: the kernel stores q, k, v, att, hb and x in the activation dtype after every stage
// (as the fused ops do) while the reference keeps f32, so each stage adds a relative error of one
// rounding (f16 2^-11, bf16 2^-8) to O(1) values. Weights are N(0, 0.5/K) so activations stay O(1)
// through the layers and the residual stream grows by O(1) a layer. Over 2 layers x 5 stages the
// rounding errors add up to ~1e-2 (f16) / 8e-2 (bf16) relative in norm; elementwise we allow
// 3x that plus an absolute term of the same size. A wrong row, key, split or RoPE pair moves
// values by O(1) (norm ratio ~1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "../cpp/w4_test_util.h"
#include "backend/cuda/cuda_ops.h"
#include "gpu_test_util.h"

namespace nb {
namespace {

using gpu_test::all_close;
using gpu_test::random_normal;

struct Config {
  int64_t layers, dim, hidden, heads, kv_heads, hd, start_pos;
  RopeStyle style;
};

// 4-bit weights (group size in inputs, -1 one group a row; symmetric or with zero points), or none.
struct W4 {
  bool on = false;
  int64_t group = 128;
  bool sym = false;
};

class CudaDecodeStep : public gpu_test::CudaTest {
 protected:
  void check(const Config& c, DType t, uint32_t seed, W4 w4 = {}) {
    const std::string what = "layers " + std::to_string(c.layers) + " dim " + std::to_string(c.dim) + " heads " +
                             std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " hd " + std::to_string(c.hd) +
                             " pos " + std::to_string(c.start_pos) + " " + std::string(dtype_name(t)) +
                             (w4.on ? " w4 group " + std::to_string(w4.group) + (w4.sym ? " sym" : " asym") : "");
    const int64_t q_dim = c.heads * c.hd, kv_dim = c.kv_heads * c.hd, nqkv = q_dim + 2 * kv_dim;
    const int64_t block = 16, ctx_len = c.start_pos + 1;
    const int64_t nblocks = (ctx_len + block - 1) / block + 3;  // a few unused blocks in the pool
    // Block table: a shuffled pool.
    std::vector<int32_t> table(static_cast<size_t>(nblocks));
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(seed));
    const int64_t slot = int64_t{table[static_cast<size_t>(c.start_pos / block)]} * block + c.start_pos % block;
    const size_t cache_elems = static_cast<size_t>(nblocks * block * kv_dim);

    // Weights: wqkv (q rows only with W4), wo, wg, wu, wd, then with W4 wk, wv; host tensors for the
    // reference (f32 rounded to the act dtype, or kQGroup) and their device copies.
    struct HostLayer {
      std::vector<Tensor> w;
      std::vector<float> an, fn, kc, vc;
    };
    std::vector<HostLayer> hl(static_cast<size_t>(c.layers));
    uint32_t s = seed;
    auto weights = [&](int64_t n, int64_t k) -> Tensor {
      // N(0, 0.5 / K), or 4-bit codes whose (q - z) s has about that spread (|q - z| ~ 6.5 asym, 4.6 sym).
      const float sd = std::sqrt(0.5f / static_cast<float>(k));
      if (w4.on) {
        auto q = w4_test::random_w4(n, k, w4.group, w4.sym, gpu_test::seed(s++), sd / (w4.sym ? 4.6f : 6.5f));
        EXPECT_TRUE(q.ok()) << q.status().to_string();
        return q.ok() ? std::move(*q) : Tensor();
      }
      const int64_t shape[2] = {n, k};
      Tensor w = Tensor::empty(shape, 2, DType::kF32);
      std::vector<float> v = random_normal(static_cast<size_t>(n * k), s++, sd);
      gpu_test::round_all(v, t);
      std::copy(v.begin(), v.end(), w.ptr<float>());
      return w;
    };
    for (HostLayer& h : hl) {
      h.w.push_back(weights(w4.on ? q_dim : nqkv, c.dim));
      h.w.push_back(weights(c.dim, q_dim));
      h.w.push_back(weights(c.hidden, c.dim));
      h.w.push_back(weights(c.hidden, c.dim));
      h.w.push_back(weights(c.dim, c.hidden));
      if (w4.on) {
        h.w.push_back(weights(kv_dim, c.dim));
        h.w.push_back(weights(kv_dim, c.dim));
      }
      if (HasFailure()) return;
      h.an = random_normal(static_cast<size_t>(c.dim), s++, 0.3f);
      h.fn = random_normal(static_cast<size_t>(c.dim), s++, 0.3f);
      for (float& v : h.an) v += 1.f;
      for (float& v : h.fn) v += 1.f;
      h.kc = random_normal(cache_elems, s++);
      h.vc = random_normal(cache_elems, s++);
      gpu_test::round_all(h.kc, t);
      gpu_test::round_all(h.vc, t);
    }
    std::vector<float> x0 = random_normal(static_cast<size_t>(c.dim), s++);
    gpu_test::round_all(x0, t);
    std::vector<float> inv(static_cast<size_t>(c.hd / 2));
    for (int64_t i = 0; i < c.hd / 2; ++i) inv[static_cast<size_t>(i)] = std::pow(10000.f, -2.f * i / c.hd);
    const int32_t pos = static_cast<int32_t>(c.start_pos);

    // Reference.
    std::vector<float> x = x0, q(q_dim), k(kv_dim), v(kv_dim), att(q_dim), hb(c.hidden);
    DecodeStepParams hp;
    std::vector<HostLayer> ref = hl;
    for (HostLayer& h : ref) {
      hp.layers.push_back({h.w[0], h.w[1], h.w[2], h.w[3], h.w[4], h.an.data(), h.fn.data(), h.kc.data(), h.vc.data(), {}, {}});
      if (w4.on) {
        hp.layers.back().wk = h.w[5];
        hp.layers.back().wv = h.w[6];
      }
    }
    hp.x = x.data();
    hp.q = q.data();
    hp.k = k.data();
    hp.v = v.data();
    hp.att = att.data();
    hp.hb = hb.data();
    hp.block_table = table.data();
    hp.start_pos = &pos;
    hp.position = &pos;
    hp.slot = &slot;
    hp.inv_freq = inv.data();
    hp.block_size = block;
    hp.num_heads = c.heads;
    hp.num_kv_heads = c.kv_heads;
    hp.head_dim = c.hd;
    hp.max_context_len = ctx_len + 100;  // a graph plans for a longer context
    hp.norm_eps = 1e-5f;
    hp.scale = 1.f / std::sqrt(static_cast<float>(c.hd));
    hp.rope_style = c.style;
    cpu::ref::decode_step(hp);

    // Device.
    std::vector<cuda::DeviceBuffer> keep;
    auto dev = [&](const Tensor& w) -> Tensor {
      if (w4.on) {
        auto d = cuda::upload_w4(w, ctx());
        EXPECT_TRUE(d.ok()) << d.status().to_string();
        return d.ok() ? std::move(*d) : Tensor();
      }
      keep.push_back(upload_act(std::vector<float>(w.ptr<float>(), w.ptr<float>() + w.numel()), t));
      const int64_t shape[2] = {w.dim(0), w.dim(1)};
      return Tensor::view(keep.back().data(), shape, 2, t, nullptr, Device::kCUDA);
    };
    auto devf = [&](const std::vector<float>& w) {
      keep.push_back(upload(w));
      return keep.back().as<float>();
    };
    std::vector<cuda::DeviceBuffer> kcs, vcs;
    DecodeStepParams p = hp;
    p.layers.clear();
    for (const HostLayer& h : hl) {
      kcs.push_back(upload_act(h.kc, t));
      vcs.push_back(upload_act(h.vc, t));
      p.layers.push_back({dev(h.w[0]), dev(h.w[1]), dev(h.w[2]), dev(h.w[3]), dev(h.w[4]), devf(h.an), devf(h.fn),
                          kcs.back().as<float>(), vcs.back().as<float>(), {}, {}});
      if (w4.on) {
        p.layers.back().wk = dev(h.w[5]);
        p.layers.back().wv = dev(h.w[6]);
      }
    }
    if (HasFailure()) return;
    cuda::DeviceBuffer d_x = upload_act(x0, t), d_q = poisoned(q_dim * 2), d_k = poisoned(kv_dim * 2),
                       d_v = poisoned(kv_dim * 2), d_att = poisoned(q_dim * 2), d_hb = poisoned(c.hidden * 2);
    cuda::DeviceBuffer d_table = upload(table), d_pos = upload(std::vector<int32_t>{pos}),
                       d_slot = upload(std::vector<int64_t>{slot}), d_inv = upload(inv);
    p.x = d_x.as<float>();
    p.q = d_q.as<float>();
    p.k = d_k.as<float>();
    p.v = d_v.as<float>();
    p.att = d_att.as<float>();
    p.hb = d_hb.as<float>();
    p.block_table = d_table.as<int32_t>();
    p.start_pos = d_pos.as<int32_t>();
    p.position = d_pos.as<int32_t>();
    p.slot = d_slot.as<int64_t>();
    p.inv_freq = d_inv.as<float>();
    p.act_dtype = t;
    ASSERT_TRUE(cuda::decode_step_applies(p, ctx())) << what;

    const double rel = t == DType::kF16 ? 1e-2 : 8e-2;
    const gpu_test::Tol tol{3 * rel, 3 * rel, rel};
    for (int run = 0; run < 2; ++run) {  // the second launch must find the barrier and counters at 0
      cuda::DeviceBuffer d_xr = upload_act(x0, t);
      p.x = d_xr.as<float>();
      NB_ASSERT_OK(cuda::decode_step(p, ctx()));
      EXPECT_TRUE(all_close(download_act(d_xr, x.size(), t), x, tol)) << what << " x, run " << run;
      for (size_t l = 0; l < hl.size(); ++l) {
        const std::vector<float> kc = download_act(kcs[l], cache_elems, t), vc = download_act(vcs[l], cache_elems, t);
        const auto at = [&](const std::vector<float>& cache) {
          return std::vector<float>(cache.begin() + slot * kv_dim, cache.begin() + (slot + 1) * kv_dim);
        };
        EXPECT_TRUE(all_close(at(kc), at(ref[l].kc), tol)) << what << " k cache, layer " << l;
        EXPECT_TRUE(all_close(at(vc), at(ref[l].vc), tol)) << what << " v cache, layer " << l;
        // Nothing else in the cache moved.
        size_t moved = 0;
        for (size_t i = 0; i < cache_elems; ++i) {
          if (i / kv_dim == static_cast<size_t>(slot)) continue;
          moved += kc[i] != hl[l].kc[i] || vc[i] != hl[l].vc[i];
        }
        EXPECT_EQ(moved, 0u) << what << " layer " << l;
      }
      if (HasFailure()) return;
    }
  }
};

TEST_F(CudaDecodeStep, MatchesReference) {
  const Config configs[] = {
      {2, 256, 512, 4, 2, 64, 37, RopeStyle::kHalf},          // GQA, 3 splits of 16 keys
      {2, 256, 384, 2, 2, 128, 5, RopeStyle::kInterleaved},   // MHA, one split
      {1, 512, 256, 4, 1, 128, 300, RopeStyle::kHalf},        // group 4, 38 splits
      {1, 2048, 512, 32, 8, 64, 2000, RopeStyle::kHalf},      // more (head, split) units than warps
      // Rows of several chunks: 2 (q|k|v), 3 (gate/up) and 4 (down) a row.
      {1, 2560, 6912, 20, 4, 128, 70, RopeStyle::kHalf},
  };
  uint32_t s = 11;
  for (DType t : {DType::kF16, DType::kBF16})
    for (const Config& c : configs) {
      check(c, t, s += 100);
      if (HasFatalFailure()) return;
    }
}

// The W4A16 stages (decode_step_w4.cuh): the same configs with 4-bit weights (K and every output a
// multiple of 64), groups of 128 with zero points (f16), 64 symmetric (bf16) and one group a row.
// Same tolerance: the kernel multiplies by weights rounded once to the act dtype and by the normed
// input rounded to it (the f16/bf16 step keeps that in f32), one more rounding a stage of the same
// size as those counted above. A wrong tile, chunk, group or split sum moves values by O(1).
TEST_F(CudaDecodeStep, W4MatchesReference) {
  if (ctx().info().major < 8) GTEST_SKIP() << "W4A16 needs mma.m16n8k16 (sm_80+)";
  const Config configs[] = {
      {2, 256, 512, 4, 2, 64, 37, RopeStyle::kHalf},
      {2, 256, 384, 2, 2, 128, 5, RopeStyle::kInterleaved},
      {1, 512, 256, 4, 1, 128, 300, RopeStyle::kHalf},
      {1, 2048, 512, 32, 8, 64, 2000, RopeStyle::kHalf},
      {1, 2560, 6912, 20, 4, 128, 70, RopeStyle::kHalf},  // tiles split between warps and blocks
  };
  uint32_t s = 17;
  for (const Config& c : configs) {
    check(c, DType::kF16, s += 100, {true, 128, false});
    if (HasFatalFailure() || HasFailure()) return;
    check(c, DType::kBF16, s += 100, {true, 64, true});
    if (HasFatalFailure() || HasFailure()) return;
  }
  check(configs[0], DType::kF16, s += 100, {true, -1, false});
}

TEST_F(CudaDecodeStep, DeclinesWhatItDoesNotTake) {
  DecodeStepParams p;
  EXPECT_FALSE(cuda::decode_step_applies(p, ctx()));  // no layers
  EXPECT_EQ(cuda::decode_step(p, ctx()).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nb
