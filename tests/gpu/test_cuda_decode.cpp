// The decode-step fusions (cuda::fused_linear, rope_kv_write, decode_attention) against their CPU
// references (cpu::ref::fused_linear = norm, ref::matmul, epilogue; ref::rope then ref::kv_write;
// ref::batch_attention) with the same Params, fresh random inputs rounded to the activation dtype,
// outputs pre-filled with NaN — with programmatic dependent launch on and off.
//
// Tolerances (gpu_test_util.h's method). fused_linear: W ~ N(0, 1/K), x ~ N(0, 1), so outputs are
// O(1); the kernel sums K products in f32 (error ~ sqrt(K) * 6e-8 relative to the terms, < 1e-5
// for K <= 4096) against a double reference; on top comes one rounding of the output to the dtype
// (rel 1e-3 f16, 8e-3 bf16) and, for kAddInto, the rounding of y (same unit). abs 1e-4 covers the
// f32 sums and the normed input kept in f32 (the reference rounds nothing either). An indexing bug
// moves outputs by O(1). decode_attention: as tests/gpu/test_cuda_attention.cpp (abs 3e-5 + rel).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "gpu_test_util.h"
#include "paged_layout.h"

namespace nb {
namespace {

using gpu_test::all_close;
using gpu_test::random_normal;

constexpr DType kHalfActs[] = {DType::kF16, DType::kBF16};

class CudaDecode : public gpu_test::CudaTest {
 protected:
  Tensor device_weight(const std::vector<float>& w, int64_t n, int64_t k, DType t, cuda::DeviceBuffer& keep) {
    keep = upload_act(w, t);
    const int64_t shape[2] = {n, k};
    return Tensor::view(keep.data(), shape, 2, t, nullptr, Device::kCUDA);
  }
  static Tensor host_weight(std::vector<float>& w, int64_t n, int64_t k) {
    const int64_t shape[2] = {n, k};
    return Tensor::view(w.data(), shape, 2, DType::kF32, nullptr, Device::kCPU);
  }

  // One fused_linear case: GPU vs reference, every output checked.
  void check_linear(int64_t n, int64_t k, int64_t m, LinearEpilogue e, bool norm, DType t, uint32_t s) {
    const std::string what = "n " + std::to_string(n) + " k " + std::to_string(k) + " m " + std::to_string(m) +
                             " epilogue " + std::to_string(static_cast<int>(e)) + " norm " + std::to_string(norm) +
                             " " + std::string(dtype_name(t)) + " pdl " + std::to_string(ctx().pdl());
    const float ws = 1.f / std::sqrt(static_cast<float>(k));
    std::vector<float> w = random_normal(static_cast<size_t>(n * k), s, ws), w2 = random_normal(w.size(), s + 1, ws);
    std::vector<float> x = random_normal(static_cast<size_t>(m * k), s + 2);
    std::vector<float> nw = random_normal(static_cast<size_t>(k), s + 3, 0.5f);
    std::vector<float> y0 = random_normal(static_cast<size_t>(m * n), s + 4);
    gpu_test::round_all(w, t);
    gpu_test::round_all(w2, t);
    gpu_test::round_all(x, t);
    gpu_test::round_all(y0, t);
    const int64_t n0 = n / 2, n1 = n / 4, n2 = n - n0 - n1;

    std::vector<float> want = y0, want1(static_cast<size_t>(m * n1)), want2(static_cast<size_t>(m * n2));
    FusedLinearParams hp{};
    hp.weight = host_weight(w, n, k);
    hp.weight2 = host_weight(w2, n, k);
    hp.x = x.data();
    hp.norm_weight = norm ? nw.data() : nullptr;
    hp.norm_eps = 1e-5f;
    hp.y = want.data();
    hp.y1 = want1.data();
    hp.y2 = want2.data();
    hp.n0 = n0;
    hp.n1 = n1;
    hp.m = m;
    hp.epilogue = e;
    cpu::ref::fused_linear(hp);
    if (e == LinearEpilogue::kSplit) want.resize(static_cast<size_t>(m * n0));

    cuda::DeviceBuffer kw, kw2;
    FusedLinearParams p = hp;
    p.weight = device_weight(w, n, k, t, kw);
    p.weight2 = device_weight(w2, n, k, t, kw2);
    cuda::DeviceBuffer d_x = upload_act(x, t), d_nw = upload(nw);
    cuda::DeviceBuffer d_y = e == LinearEpilogue::kAddInto ? upload_act(y0, t) : poisoned(y0.size() * 2);
    cuda::DeviceBuffer d_y1 = poisoned(want1.size() * 2 + 16), d_y2 = poisoned(want2.size() * 2 + 16);
    p.x = d_x.as<float>();
    p.norm_weight = norm ? d_nw.as<float>() : nullptr;
    p.y = d_y.as<float>();
    p.y1 = d_y1.as<float>();
    p.y2 = d_y2.as<float>();
    p.act_dtype = t;
    ASSERT_TRUE(cuda::fused_linear_applies(p)) << what;
    const Status st = cuda::fused_linear(p, ctx());
    ASSERT_TRUE(st.ok()) << what << ": " << st.to_string();
    EXPECT_TRUE(all_close(download_act(d_y, want.size(), t), want, gpu_test::act_tol(t, 1e-4))) << what;
    if (e == LinearEpilogue::kSplit) {
      EXPECT_TRUE(all_close(download_act(d_y1, want1.size(), t), want1, gpu_test::act_tol(t, 1e-4))) << what << " (y1)";
      EXPECT_TRUE(all_close(download_act(d_y2, want2.size(), t), want2, gpu_test::act_tol(t, 1e-4))) << what << " (y2)";
    }
  }
};

TEST_F(CudaDecode, FusedLinearMatchesReference) {
  const LinearEpilogue epilogues[] = {LinearEpilogue::kStore, LinearEpilogue::kAddInto, LinearEpilogue::kSwiglu,
                                      LinearEpilogue::kSplit};
  struct Shape {
    int64_t n, k;
  };
  const Shape shapes[] = {{37, 64}, {300, 576}, {1029, 4096}, {64, 1536}};
  uint32_t s = 100;
  for (bool pdl : {true, false}) {
    ctx().set_pdl(pdl);
    for (DType t : kHalfActs)
      for (const Shape& sh : shapes)
        for (int64_t m = 1; m <= 2; ++m)
          for (LinearEpilogue e : epilogues)
            for (bool norm : {false, true}) {
              check_linear(sh.n, sh.k, m, e, norm, t, s += 10);
              if (HasFatalFailure()) return;
            }
  }
}

// A chain of 48 dependent launches, tmp = W x then x += W tmp, 24 times: with PDL a kernel that read
// its input before its predecessor finished writing it would diverge from the sequential reference.
TEST_F(CudaDecode, DependentChainMatchesSequentialReference) {
  const int64_t n = 2048, k = 2048;
  for (bool pdl : {true, false}) {
    ctx().set_pdl(pdl);
    const DType t = DType::kF16;
    std::vector<float> w = random_normal(static_cast<size_t>(n * k), 7, 0.25f / std::sqrt(static_cast<float>(k)));
    std::vector<float> x = random_normal(static_cast<size_t>(k), 8);
    gpu_test::round_all(w, t);
    gpu_test::round_all(x, t);
    cuda::DeviceBuffer kw;
    const Tensor dw = device_weight(w, n, k, t, kw);
    cuda::DeviceBuffer d_x = upload_act(x, t), d_tmp = poisoned(static_cast<size_t>(k) * 2);
    std::vector<float> want = x;
    for (int i = 0; i < 24; ++i) {
      FusedLinearParams p{};
      p.weight = dw;
      p.x = d_x.as<float>();
      p.y = d_tmp.as<float>();
      p.m = 1;
      p.act_dtype = t;
      NB_ASSERT_OK(cuda::fused_linear(p, ctx()));  // tmp = W x
      p.x = d_tmp.as<float>();
      p.y = d_x.as<float>();
      p.epilogue = LinearEpilogue::kAddInto;
      NB_ASSERT_OK(cuda::fused_linear(p, ctx()));  // x += W tmp
      std::vector<float> tmp(static_cast<size_t>(n));
      cpu::ref::matmul({host_weight(w, n, k), want.data(), tmp.data(), 1});
      gpu_test::round_all(tmp, t);
      std::vector<float> add(static_cast<size_t>(n));
      cpu::ref::matmul({host_weight(w, n, k), tmp.data(), add.data(), 1});
      for (int64_t j = 0; j < n; ++j) want[static_cast<size_t>(j)] = gpu_test::round_to(t, want[static_cast<size_t>(j)] + add[static_cast<size_t>(j)]);
    }
    // 48 dependent f16 roundings: compare in norm (2e-2) and per element loosely; a race (a kernel
    // reading a stale or half-written x) gives O(1) errors.
    gpu_test::Tol tol{3e-2, 3e-2, 2e-2};
    EXPECT_TRUE(all_close(download_act(d_x, want.size(), t), want, tol)) << "pdl " << pdl;
  }
}

TEST_F(CudaDecode, RopeKvWriteMatchesReference) {
  const int64_t tokens = 5, heads = 9, kv_heads = 3, hd = 64, slots = 40;
  uint32_t s = 500;
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16})
    for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved}) {
      std::vector<float> q = random_normal(static_cast<size_t>(tokens * heads * hd), s++);
      std::vector<float> k = random_normal(static_cast<size_t>(tokens * kv_heads * hd), s++);
      std::vector<float> v = random_normal(k.size(), s++);
      gpu_test::round_all(q, t);
      gpu_test::round_all(k, t);
      gpu_test::round_all(v, t);
      std::vector<float> kc(static_cast<size_t>(slots * kv_heads * hd), 3.f), vc = kc;
      std::vector<int32_t> pos = {0, 7, 100, 4095, 31};
      std::vector<int64_t> slot = {3, 11, -1, 39, 0};  // -1: a padding row writes nothing
      std::vector<float> inv(static_cast<size_t>(hd / 2));
      for (int64_t i = 0; i < hd / 2; ++i) inv[static_cast<size_t>(i)] = std::pow(10000.f, -2.f * i / hd);
      std::vector<float> wq = q, wk = k, wkc = kc, wvc = vc;
      cpu::ref::rope_kv_write({{wq.data(), wk.data(), pos.data(), inv.data(), tokens, heads, kv_heads, hd, style},
                               {wk.data(), v.data(), wkc.data(), wvc.data(), slot.data(), tokens, kv_heads, hd}});
      cuda::DeviceBuffer d_q = upload_act(q, t), d_k = upload_act(k, t), d_v = upload_act(v, t);
      cuda::DeviceBuffer d_kc = upload_act(kc, t), d_vc = upload_act(vc, t);
      cuda::DeviceBuffer d_pos = upload(pos), d_slot = upload(slot), d_inv = upload(inv);
      const RopeParams rp{d_q.as<float>(), d_k.as<float>(), d_pos.as<int32_t>(), d_inv.as<float>(), tokens, heads,
                          kv_heads, hd, style, t};
      const KvWriteParams kp{d_k.as<float>(), d_v.as<float>(), d_kc.as<float>(), d_vc.as<float>(),
                             d_slot.as<int64_t>(), tokens, kv_heads, hd, t};
      NB_ASSERT_OK(cuda::rope_kv_write({rp, kp}, ctx()));
      // RoPE angles as the rope kernel (double), outputs rounded once: the dtype's relative unit,
      // abs 1e-6 for f32 (sin/cos in f32 of a double angle).
      const auto tol = gpu_test::act_tol(t, 1e-6);
      const std::string what = std::string(dtype_name(t)) + (style == RopeStyle::kHalf ? " neox" : " interleaved");
      EXPECT_TRUE(all_close(download_act(d_q, q.size(), t), wq, tol)) << what << " q";
      EXPECT_TRUE(all_close(download_act(d_k, k.size(), t), wk, tol)) << what << " k";
      EXPECT_TRUE(all_close(download_act(d_kc, kc.size(), t), wkc, tol)) << what << " k cache";
      EXPECT_TRUE(all_close(download_act(d_vc, vc.size(), t), wvc, tol)) << what << " v cache";
    }
}

// Decode batches over a shuffled block pool whose unused slots are NaN (reading any wrong slot
// poisons the output), for every split choice, against ref::batch_attention.
TEST_F(CudaDecode, DecodeAttentionMatchesReference) {
  struct Case {
    int64_t heads, kv_heads, hd, block_size;
    std::vector<int64_t> contexts;
  };
  const std::vector<Case> cases = {
      {32, 32, 128, 16, {1, 577, 4096}},  // Llama-2-7B: MHA, long context
      {9, 3, 64, 16, {}},                 // SmolLM2: group 3, 13 random contexts
      {32, 8, 128, 16, {1000, 33, 2}},    // group 4
      {32, 4, 128, 32, {2500}},           // group 8, batch 1
      {12, 4, 64, 1, {129, 5}},           // block size 1
  };
  uint32_t s = 900;
  for (const Case& c0 : cases) {
    Case c = c0;
    std::mt19937 rng(gpu_test::seed(s++));
    if (c.contexts.empty())
      for (int i = 0; i < 13; ++i) c.contexts.push_back(1 + static_cast<int64_t>(rng() % 900));
    const int64_t seqs = static_cast<int64_t>(c.contexts.size()), row = c.kv_heads * c.hd;
    std::vector<int64_t> ones(c.contexts.size(), 1), start;
    for (int64_t len : c.contexts) start.push_back(len - 1);
    const gpu_test::PagedLayout layout =
        gpu_test::make_paged_layout({c.heads, c.kv_heads, c.hd, c.block_size}, ones, start, s++);
    const std::vector<int32_t>& tables = layout.tables;
    const std::vector<int32_t>& qs = layout.query_start;
    const std::vector<int32_t>& sp = layout.start_pos32;
    const int64_t max_ctx = layout.max_context;
    std::vector<float> kc(static_cast<size_t>(layout.pool_blocks * c.block_size * row), NAN), vc = kc;
    std::normal_distribution<float> nd;
    for (size_t i = 0; i < c.contexts.size(); ++i)
      for (int64_t pos = 0; pos < c.contexts[i]; ++pos) {
        const int64_t slot = gpu_test::paged_slot(layout, i, pos);
        for (int64_t e = 0; e < row; ++e) {
          kc[static_cast<size_t>(slot * row + e)] = nd(rng);
          vc[static_cast<size_t>(slot * row + e)] = nd(rng);
        }
      }
    for (DType t : kHalfActs) {
      std::vector<float> q = random_normal(static_cast<size_t>(seqs * c.heads * c.hd), s++, 2.f);
      std::vector<float> kr = kc, vr = vc;
      gpu_test::round_all(q, t);
      gpu_test::round_all(kr, t);
      gpu_test::round_all(vr, t);
      BatchAttentionParams p = gpu_test::paged_params(layout);
      std::vector<float> want(q.size());
      BatchAttentionParams hp = p;
      hp.q = q.data();
      hp.out = want.data();
      hp.k_cache = kr.data();
      hp.v_cache = vr.data();
      hp.block_tables = tables.data();
      hp.query_start = qs.data();
      hp.start_pos = sp.data();
      cpu::ref::batch_attention(hp);
      cuda::DeviceBuffer d_q = upload_act(q, t), d_k = upload_act(kr, t), d_v = upload_act(vr, t);
      cuda::DeviceBuffer d_t = upload(tables), d_qs = upload(qs), d_sp = upload(sp);
      for (int64_t split : {int64_t{0}, int64_t{32}, int64_t{100}, int64_t{512}})
        for (int64_t extra : {int64_t{0}, int64_t{3000}}) {  // a graph plans for a longer context
          cuda::DeviceBuffer d_out = poisoned(q.size() * 2);
          p.q = d_q.as<float>();
          p.out = d_out.as<float>();
          p.k_cache = d_k.as<float>();
          p.v_cache = d_v.as<float>();
          p.block_tables = d_t.as<int32_t>();
          p.query_start = d_qs.as<int32_t>();
          p.start_pos = d_sp.as<int32_t>();
          p.max_context_len = max_ctx + extra;
          p.act_dtype = t;
          ctx().set_decode_split_keys(split);
          const std::string what = "heads " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " hd " +
                                   std::to_string(c.hd) + " " + std::string(dtype_name(t)) + " split " + std::to_string(split) +
                                   " extra " + std::to_string(extra);
          ASSERT_TRUE(cuda::decode_attention_applies(p)) << what;
          NB_ASSERT_OK(cuda::decode_attention(p, ctx()));
          EXPECT_TRUE(all_close(download_act(d_out, want.size(), t), want, gpu_test::act_tol(t, 3e-5))) << what;
          if (HasFailure()) return;
        }
    }
  }
}

TEST_F(CudaDecode, RejectsWhatItDoesNotTake) {
  BatchAttentionParams p{};
  p.num_seqs = 2;
  p.num_tokens = 3;  // a prefill row
  p.max_query_len = 2;
  p.max_context_len = 8;
  p.block_size = 16;
  p.num_heads = 4;
  p.num_kv_heads = 4;
  p.head_dim = 64;
  p.act_dtype = DType::kF16;
  EXPECT_FALSE(cuda::decode_attention_applies(p));
  EXPECT_EQ(cuda::decode_attention(p, ctx()).code(), StatusCode::kInvalidArgument);
  FusedLinearParams f{};
  f.m = 3;  // more rows than the kernel takes
  f.act_dtype = DType::kF16;
  EXPECT_FALSE(cuda::fused_linear_applies(f));
  EXPECT_EQ(cuda::fused_linear(f, ctx()).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nb
