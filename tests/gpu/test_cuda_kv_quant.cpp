// The quantized KV cache on CUDA against the CPU, with the same Params: kv_write into int8/int4
// pools (cuda::kv_write vs cpu::ref::kv_write), the Walsh-Hadamard rotation (cuda::hadamard vs
// cpu::hadamard and cpu::ref::hadamard), paged attention over int8/int4 pools (cuda::batch_attention
// vs cpu::ref::batch_attention, decode with and without the split, prefill with a cached prefix,
// GQA, shuffled block tables with holes), and the model's whole sequence (rotate q/k/v, write,
// attend, rotate back) on both sides.
//
// Tolerances.
//  - kv_write: bytes must be EQUAL. Both sides run the one rule of backend/kv_format.h on the same
//    f32 inputs (activations are rounded to act dtype first, then widened exactly): the int8 absmax
//    is exact in any order; every sum of the int4 rule (kv_int4_choose_scale_zero) runs in index
//    order on one lane with explicit fmaf/fma, as on the CPU (the warp computes the terms); x / s is
//    an IEEE division on both (nvcc without fast math) and rintf rounds half to even on both, so no
//    step differs.
//  - hadamard: EQUAL to cpu::hadamard (same butterflies in the same order, the same f32 norm, output
//    rounded once to act dtype), and within 1e-5 * ||x|| of the double-precision matrix product.
//  - attention: the kernel dequantizes to exactly the reference's floats (int8 q * s is exact in f32;
//    int4 fmaf(q, s, z) rounds once, as the reference's double q * s + z rounded to f32), so what
//    remains is the f32-vs-double attention error of test_cuda_attention.cpp: 3e-5 absolute on
//    outputs of magnitude ~1, plus one output rounding for f16/bf16 (rel 1e-3 / 8e-3).
//  - the rotated pipeline: f32 activations only; the GPU's f32 butterflies and the CPU fast path's
//    are identical, so the same 3e-5 plus the rotation's own f32 error (~1e-6) holds.
// Slots no sequence owns hold 0xFF bytes: the scale reads as f16 NaN, so any stray read poisons.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/kv_format.h"
#include "attention_check.h"
#include "gpu_test_util.h"
#include "paged_layout.h"

namespace nb {
namespace {

using gpu_test::all_close;
using gpu_test::CudaTest;
using gpu_test::random_normal;

constexpr DType kActs[] = {DType::kF32, DType::kF16, DType::kBF16};
constexpr KvCacheDType kQuant[] = {KvCacheDType::kInt8, KvCacheDType::kInt4};

// Rows of N(0,1) values with a per-vector scale over three decades and one outlier channel, so the
// scales span a wide range; vector 0 is all zeros and vector 1 constant (scale 0 for int4).
std::vector<float> make_rows(int64_t num_vectors, int64_t d, uint32_t s, DType act) {
  std::vector<float> x = random_normal(static_cast<size_t>(num_vectors * d), s);
  std::mt19937 rng(gpu_test::seed(s + 7));
  std::uniform_real_distribution<float> u(-2.f, 1.f);
  for (int64_t v = 0; v < num_vectors; ++v) {
    const float scale = std::pow(10.f, u(rng));
    for (int64_t i = 0; i < d; ++i) x[static_cast<size_t>(v * d + i)] *= scale;
    x[static_cast<size_t>(v * d + (v % d))] *= 8.f;
  }
  if (num_vectors > 0) std::fill(x.begin(), x.begin() + d, 0.f);
  if (num_vectors > 1) std::fill(x.begin() + d, x.begin() + 2 * d, 0.5f);
  gpu_test::round_all(x, act);
  return x;
}

class CudaKvQuant : public CudaTest {};

TEST_F(CudaKvQuant, KvWriteMatchesReferenceBytes) {
  struct Case {
    int64_t kv_heads, head_dim, block_size, tokens;
  };
  const Case cases[] = {{8, 128, 16, 37}, {2, 64, 7, 100}, {3, 80, 5, 20}, {1, 256, 32, 5}, {4, 6, 3, 9}, {3, 33, 5, 11}};  // odd head_dim: int8 only
  uint32_t s = 7000;
  for (KvCacheDType kvt : kQuant)
    for (const Case& c : cases)
      for (DType act : kActs) {
        const std::string what = std::string(kv_cache_dtype_name(kvt)) + " act " + std::string(dtype_name(act)) + " heads " +
                                 std::to_string(c.kv_heads) + " hd " + std::to_string(c.head_dim) + " bs " +
                                 std::to_string(c.block_size) + " tokens " + std::to_string(c.tokens);
        const KvBlockFormat f{kvt, c.block_size, c.kv_heads, c.head_dim};
        const int64_t num_blocks = (c.tokens + c.block_size - 1) / c.block_size + 3;
        const size_t pool_bytes = static_cast<size_t>(num_blocks * f.block_bytes());
        const std::vector<float> k = make_rows(c.tokens * c.kv_heads, c.head_dim, s++, act);
        const std::vector<float> v = make_rows(c.tokens * c.kv_heads, c.head_dim, s++, act);
        // Distinct random slots anywhere in the pool; every third row is padding (-1).
        std::vector<int64_t> slots(static_cast<size_t>(num_blocks * c.block_size));
        std::iota(slots.begin(), slots.end(), 0);
        std::mt19937 rng(gpu_test::seed(s++));
        std::shuffle(slots.begin(), slots.end(), rng);
        slots.resize(static_cast<size_t>(c.tokens));
        for (size_t t = 2; t < slots.size(); t += 3) slots[t] = -1;

        cuda::DeviceBuffer d_k = upload_act(k, act), d_v = upload_act(v, act), d_slots = upload(slots);
        cuda::DeviceBuffer d_kp = upload(std::vector<uint8_t>(pool_bytes, 0xA5));
        cuda::DeviceBuffer d_vp = upload(std::vector<uint8_t>(pool_bytes, 0x5A));
        KvWriteParams p{d_k.as<float>(), d_v.as<float>(), d_kp.as<float>(), d_vp.as<float>(), d_slots.as<int64_t>(),
                        c.tokens, c.kv_heads, c.head_dim};
        p.act_dtype = act;
        p.cache_dtype = kvt;
        p.cache_block_size = c.block_size;
        if (kvt == KvCacheDType::kInt4 && c.head_dim % 2 != 0) {  // the format has no odd int4 vectors
          EXPECT_EQ(cuda::kv_write(p, ctx()).code(), StatusCode::kInvalidArgument) << what;
          continue;
        }
        std::vector<uint8_t> k_want(pool_bytes, 0xA5), v_want(pool_bytes, 0x5A);
        KvWriteParams hp{k.data(), v.data(), reinterpret_cast<float*>(k_want.data()),
                         reinterpret_cast<float*>(v_want.data()), slots.data(), c.tokens, c.kv_heads, c.head_dim};
        hp.cache_dtype = kvt;
        hp.cache_block_size = c.block_size;
        cpu::ref::kv_write(hp);

        const Status st = cuda::kv_write(p, ctx());
        ASSERT_TRUE(st.ok()) << what << ": " << st.to_string();
        std::vector<uint8_t> k_got(pool_bytes), v_got(pool_bytes);
        NB_ASSERT_OK(cuda::copy_to_host(k_got.data(), d_kp.data(), pool_bytes, ctx().stream()));
        NB_ASSERT_OK(cuda::copy_to_host(v_got.data(), d_vp.data(), pool_bytes, ctx().stream()));
        NB_ASSERT_OK(ctx().synchronize());
        EXPECT_TRUE(k_got == k_want) << what << " (K pool bytes differ)";
        EXPECT_TRUE(v_got == v_want) << what << " (V pool bytes differ)";
        if (HasFailure()) return;
      }
}

TEST_F(CudaKvQuant, HadamardMatchesCpu) {
  uint32_t s = 7500;
  for (int64_t d : {1, 2, 8, 64, 128, 256, 1024})
    for (DType act : kActs) {
      const int64_t n = 37;
      std::vector<float> x = random_normal(static_cast<size_t>(n * d), s++);
      gpu_test::round_all(x, act);
      std::vector<float> want = x, exact = x;
      cpu::hadamard({want.data(), n, d});
      cpu::ref::hadamard({exact.data(), n, d});
      gpu_test::round_all(want, act);
      cuda::DeviceBuffer d_x = upload_act(x, act);
      HadamardParams p{d_x.as<float>(), n, d};
      p.act_dtype = act;
      NB_ASSERT_OK(cuda::hadamard(p, ctx()));
      const std::vector<float> got = download_act(d_x, x.size(), act);
      EXPECT_TRUE(got == want) << "dim " << d << " act " << dtype_name(act) << ": differs from cpu::hadamard";
      EXPECT_TRUE(all_close(got, exact, gpu_test::act_tol(act, 1e-5))) << "dim " << d << " act " << dtype_name(act);
    }
  HadamardParams bad{nullptr, 1, 96};
  EXPECT_EQ(cuda::hadamard(bad, ctx()).code(), StatusCode::kInvalidArgument);
}

using Shape = gpu_test::PagedShape;

// A batch of sequences whose K/V sit in one shuffled pool of the quantized format, written there by
// cpu::ref::kv_write (the same bytes cuda::kv_write writes, by the test above). Blocks no sequence
// owns, including holes between owned blocks and the tables' padding entries, stay 0xFF.
struct QuantBatch : gpu_test::PagedLayout {
  KvCacheDType kvt;
  std::vector<float> q;
  std::vector<uint8_t> k_pool, v_pool;
};

QuantBatch make_batch(const Shape& sh, KvCacheDType kvt, const std::vector<int64_t>& tokens,
                      const std::vector<int64_t>& start, DType act, uint32_t s) {
  QuantBatch b;
  static_cast<gpu_test::PagedLayout&>(b) = gpu_test::make_paged_layout(sh, tokens, start, s, /*spread=*/2);
  b.kvt = kvt;
  const KvBlockFormat f{kvt, sh.block_size, sh.kv_heads, sh.head_dim};
  b.k_pool.assign(static_cast<size_t>(b.pool_blocks * f.block_bytes()), 0xFF);
  b.v_pool = b.k_pool;
  std::vector<int64_t> slots;
  for (size_t i = 0; i < tokens.size(); ++i)
    for (int64_t pos = 0; pos < start[i] + tokens[i]; ++pos) slots.push_back(gpu_test::paged_slot(b, i, pos));
  const int64_t n = static_cast<int64_t>(slots.size());
  const std::vector<float> k = random_normal(static_cast<size_t>(n * sh.kv_heads * sh.head_dim), s + 1);
  const std::vector<float> v = random_normal(static_cast<size_t>(n * sh.kv_heads * sh.head_dim), s + 2);
  KvWriteParams w{k.data(), v.data(), reinterpret_cast<float*>(b.k_pool.data()), reinterpret_cast<float*>(b.v_pool.data()),
                  slots.data(), n, sh.kv_heads, sh.head_dim};
  w.cache_dtype = kvt;
  w.cache_block_size = sh.block_size;
  cpu::ref::kv_write(w);
  // q ~ N(0, 4): scores up to ~+-25, a sharp softmax, so the running max and rescaling matter.
  b.q = random_normal(static_cast<size_t>(b.total_tokens * sh.heads * sh.head_dim), s + 3, 2.f);
  gpu_test::round_all(b.q, act);
  return b;
}

BatchAttentionParams params_for(const QuantBatch& b) {
  BatchAttentionParams p = gpu_test::paged_params(b);
  p.cache_dtype = b.kvt;
  return p;
}

class CudaKvQuantAttention : public gpu_test::AttentionTest {
 protected:
  void check(const Shape& sh, KvCacheDType kvt, const std::vector<int64_t>& tokens, const std::vector<int64_t>& start,
             DType act, uint32_t s, int64_t split_keys) {
    const QuantBatch b = make_batch(sh, kvt, tokens, start, act, s);
    std::string what = std::string(kv_cache_dtype_name(kvt)) + " act " + std::string(dtype_name(act)) + " heads " +
                       std::to_string(sh.heads) + "/" + std::to_string(sh.kv_heads) + " hd " +
                       std::to_string(sh.head_dim) + " bs " + std::to_string(sh.block_size) + " split " +
                       std::to_string(split_keys) + " seqs (tokens@start):";
    for (size_t i = 0; i < tokens.size(); ++i) what += " " + std::to_string(tokens[i]) + "@" + std::to_string(start[i]);

    std::vector<float> want(b.q.size());
    BatchAttentionParams hp = params_for(b);
    hp.q = b.q.data();
    hp.out = want.data();
    hp.k_cache = reinterpret_cast<const float*>(b.k_pool.data());
    hp.v_cache = reinterpret_cast<const float*>(b.v_pool.data());
    hp.block_tables = b.tables.data();
    hp.query_start = b.query_start.data();
    hp.start_pos = b.start_pos32.data();
    cpu::ref::batch_attention(hp);

    cuda::DeviceBuffer d_q = upload_act(b.q, act), d_k = upload(b.k_pool), d_v = upload(b.v_pool);
    cuda::DeviceBuffer d_tables = upload(b.tables), d_qs = upload(b.query_start), d_sp = upload(b.start_pos32);
    cuda::DeviceBuffer d_out = poisoned(b.q.size() * gpu_test::elem_bytes(act));
    BatchAttentionParams p = params_for(b);
    p.q = d_q.as<float>();
    p.out = d_out.as<float>();
    p.k_cache = d_k.as<float>();
    p.v_cache = d_v.as<float>();
    p.block_tables = d_tables.as<int32_t>();
    p.query_start = d_qs.as<int32_t>();
    p.start_pos = d_sp.as<int32_t>();
    p.act_dtype = act;
    ctx().set_decode_split_keys(split_keys);
    const Status st = cuda::batch_attention(p, ctx());
    ASSERT_TRUE(st.ok()) << what << ": " << st.to_string();
    const std::vector<float> got = download_act(d_out, b.q.size(), act);
    EXPECT_TRUE(all_close(got, want, gpu_test::act_tol(act, 3e-5))) << what;
    check_decode_kernel(p, b.q.size(), act, want, what);  // the decode step's kernel too, where it applies
  }
};

TEST_F(CudaKvQuantAttention, DecodeMatchesReference) {
  struct Case {
    Shape shape;
    std::vector<int64_t> contexts;  // per sequence: start_pos + 1
  };
  const std::vector<Case> cases = {
      {{32, 8, 128, 16}, {4096, 1000, 33}},  // GQA 4, long context (7B-like with GQA)
      {{32, 32, 128, 16}, {4096}},           // MHA batch 1: split along the keys
      {{9, 3, 64, 7}, {1, 17, 300, 129}},    // GQA 3, odd block size, a one-key sequence
      {{4, 2, 256, 16}, {513, 2}},           // head_dim 256
      {{16, 1, 80, 1}, {100, 3}},            // MQA, head_dim 80, block size 1
  };
  uint32_t s = 8000;
  for (const Case& c : cases)
    for (KvCacheDType kvt : kQuant) {
      std::vector<int64_t> tokens(c.contexts.size(), 1), start;
      for (int64_t len : c.contexts) start.push_back(len - 1);
      for (DType act : kActs)
        for (int64_t split : {int64_t{0}, int64_t{37}}) {
          check(c.shape, kvt, tokens, start, act, s++, split);
          if (HasFatalFailure()) return;
        }
    }
  // f16/bf16, both splits: the two head_dim-128 cases with both caches, and the head_dim-64 one with
  // int4 only (its int8 blocks, 7 x 3 x 64 codes + 42 scale bytes, are not a multiple of 8 bytes).
  EXPECT_EQ(decode_checks_, 2 * 2 * 2 * 2 + 2 * 2);
}

TEST_F(CudaKvQuantAttention, PrefillMatchesReference) {
  struct Case {
    Shape shape;
    std::vector<int64_t> tokens, start;
  };
  const std::vector<Case> cases = {
      {{9, 3, 64, 16}, {17, 5, 1, 64}, {0, 7, 40, 100}},  // mixed batch incl. a decode row
      {{32, 8, 128, 16}, {200, 60}, {0, 300}},           // GQA 4, long prompt + cached prefix
      {{4, 4, 256, 7}, {20, 9}, {3, 0}},                 // head_dim 256, odd block size
      {{6, 2, 20, 8}, {3, 1, 12}, {29, 0, 12}},          // head_dim 20
      {{8, 8, 64, 16}, {40, 0, 9}, {0, 5, 3}},           // a sequence with no new tokens
  };
  uint32_t s = 9000;
  for (const Case& c : cases)
    for (KvCacheDType kvt : kQuant)
      for (DType act : kActs) {
        check(c.shape, kvt, c.tokens, c.start, act, s++, 0);
        if (HasFatalFailure()) return;
      }
}

TEST_F(CudaKvQuantAttention, RejectsUnsupportedCaches) {
  BatchAttentionParams p{};
  p.num_seqs = 1;
  p.num_tokens = 1;
  p.max_query_len = 1;
  p.max_context_len = 1;
  p.block_size = 16;
  p.num_heads = 4;
  p.num_kv_heads = 4;
  p.head_dim = 34;
  p.cache_dtype = KvCacheDType::kF16;
  p.act_dtype = DType::kBF16;
  EXPECT_EQ(cuda::batch_attention(p, ctx()).code(), StatusCode::kUnimplemented);
  p.cache_dtype = KvCacheDType::kInt4;
  p.head_dim = 33;
  EXPECT_EQ(cuda::batch_attention(p, ctx()).code(), StatusCode::kInvalidArgument);
}

// The model's sequence for an int8/int4 cache (model/llama.cpp): rotate q, k and v per head, write
// k and v, attend, rotate the output back; on the GPU with cuda ops, on the CPU with cpu::hadamard
// and the references. One prefill chunk after a cached prefix written by an earlier chunk.
TEST_F(CudaKvQuantAttention, RotatedPipelineMatchesCpu) {
  const Shape sh{8, 2, 128, 16};
  const int64_t prefix = 45, chunk = 30, ctx_len = prefix + chunk;
  for (KvCacheDType kvt : kQuant) {
    const KvBlockFormat f{kvt, sh.block_size, sh.kv_heads, sh.head_dim};
    const int64_t num_blocks = (ctx_len + sh.block_size - 1) / sh.block_size;
    std::vector<int32_t> table(static_cast<size_t>(num_blocks));
    for (int64_t j = 0; j < num_blocks; ++j) table[static_cast<size_t>(j)] = static_cast<int32_t>(2 * num_blocks - 1 - 2 * j);
    const int64_t pool_blocks = 2 * num_blocks;
    std::vector<uint8_t> k_pool(static_cast<size_t>(pool_blocks * f.block_bytes()), 0xFF), v_pool = k_pool;
    std::vector<float> q = random_normal(static_cast<size_t>(ctx_len * sh.heads * sh.head_dim), 9500, 2.f);
    std::vector<float> k = random_normal(static_cast<size_t>(ctx_len * sh.kv_heads * sh.head_dim), 9501);
    std::vector<float> v = random_normal(static_cast<size_t>(ctx_len * sh.kv_heads * sh.head_dim), 9502);
    for (int64_t t = 0; t < ctx_len; ++t) k[static_cast<size_t>((t * sh.kv_heads) * sh.head_dim + 3)] += 20.f;  // an outlier channel
    std::vector<int64_t> slots(static_cast<size_t>(ctx_len));
    for (int64_t pos = 0; pos < ctx_len; ++pos)
      slots[static_cast<size_t>(pos)] = table[static_cast<size_t>(pos / sh.block_size)] * sh.block_size + pos % sh.block_size;

    cuda::DeviceBuffer d_q = upload(q), d_k = upload(k), d_v = upload(v), d_slots = upload(slots);
    cuda::DeviceBuffer d_kp = upload(k_pool), d_vp = upload(v_pool), d_table = upload(table);
    cuda::DeviceBuffer d_out = poisoned(static_cast<size_t>(chunk * sh.heads * sh.head_dim) * sizeof(float));
    std::vector<float> want(static_cast<size_t>(chunk * sh.heads * sh.head_dim));
    const int64_t qrow = sh.heads * sh.head_dim, kvrow = sh.kv_heads * sh.head_dim;
    // Two chunks: [0, prefix) then [prefix, ctx_len); attention output of the second.
    for (int pass = 0; pass < 2; ++pass) {
      const int64_t t0 = pass == 0 ? 0 : prefix, n = pass == 0 ? prefix : chunk;
      // CPU
      cpu::hadamard({q.data() + t0 * qrow, n * sh.heads, sh.head_dim});
      cpu::hadamard({k.data() + t0 * kvrow, n * sh.kv_heads, sh.head_dim});
      cpu::hadamard({v.data() + t0 * kvrow, n * sh.kv_heads, sh.head_dim});
      KvWriteParams w{k.data() + t0 * kvrow, v.data() + t0 * kvrow, reinterpret_cast<float*>(k_pool.data()),
                      reinterpret_cast<float*>(v_pool.data()), slots.data() + t0, n, sh.kv_heads, sh.head_dim};
      w.cache_dtype = kvt;
      w.cache_block_size = sh.block_size;
      cpu::ref::kv_write(w);
      // GPU
      NB_ASSERT_OK(cuda::hadamard({d_q.as<float>() + t0 * qrow, n * sh.heads, sh.head_dim}, ctx()));
      NB_ASSERT_OK(cuda::hadamard({d_k.as<float>() + t0 * kvrow, n * sh.kv_heads, sh.head_dim}, ctx()));
      NB_ASSERT_OK(cuda::hadamard({d_v.as<float>() + t0 * kvrow, n * sh.kv_heads, sh.head_dim}, ctx()));
      KvWriteParams dw{d_k.as<float>() + t0 * kvrow, d_v.as<float>() + t0 * kvrow, d_kp.as<float>(), d_vp.as<float>(),
                       d_slots.as<int64_t>() + t0, n, sh.kv_heads, sh.head_dim};
      dw.cache_dtype = kvt;
      dw.cache_block_size = sh.block_size;
      NB_ASSERT_OK(cuda::kv_write(dw, ctx()));
    }
    const int32_t qs[2] = {0, static_cast<int32_t>(chunk)}, sp[1] = {static_cast<int32_t>(prefix)};
    BatchAttentionParams hp{};
    hp.q = q.data() + prefix * qrow;
    hp.out = want.data();
    hp.k_cache = reinterpret_cast<const float*>(k_pool.data());
    hp.v_cache = reinterpret_cast<const float*>(v_pool.data());
    hp.block_tables = table.data();
    hp.query_start = qs;
    hp.start_pos = sp;
    hp.block_table_stride = num_blocks;
    hp.num_seqs = 1;
    hp.num_tokens = chunk;
    hp.max_query_len = chunk;
    hp.max_context_len = ctx_len;
    hp.block_size = sh.block_size;
    hp.num_heads = sh.heads;
    hp.num_kv_heads = sh.kv_heads;
    hp.head_dim = sh.head_dim;
    hp.scale = 1.f / std::sqrt(static_cast<float>(sh.head_dim));
    hp.cache_dtype = kvt;
    cpu::ref::batch_attention(hp);
    cpu::hadamard({want.data(), chunk * sh.heads, sh.head_dim});

    cuda::DeviceBuffer d_qs = upload(std::vector<int32_t>(qs, qs + 2)), d_sp = upload(std::vector<int32_t>(sp, sp + 1));
    BatchAttentionParams p = hp;
    p.q = d_q.as<float>() + prefix * qrow;
    p.out = d_out.as<float>();
    p.k_cache = d_kp.as<float>();
    p.v_cache = d_vp.as<float>();
    p.block_tables = d_table.as<int32_t>();
    p.query_start = d_qs.as<int32_t>();
    p.start_pos = d_sp.as<int32_t>();
    NB_ASSERT_OK(cuda::batch_attention(p, ctx()));
    NB_ASSERT_OK(cuda::hadamard({d_out.as<float>(), chunk * sh.heads, sh.head_dim}, ctx()));
    // The pools the GPU wrote equal the CPU's byte for byte.
    std::vector<uint8_t> kp_got(k_pool.size()), vp_got(v_pool.size());
    NB_ASSERT_OK(cuda::copy_to_host(kp_got.data(), d_kp.data(), kp_got.size(), ctx().stream()));
    NB_ASSERT_OK(cuda::copy_to_host(vp_got.data(), d_vp.data(), vp_got.size(), ctx().stream()));
    const std::vector<float> got = download_act(d_out, want.size(), DType::kF32);
    EXPECT_TRUE(kp_got == k_pool) << kv_cache_dtype_name(kvt) << ": K pool bytes differ";
    EXPECT_TRUE(vp_got == v_pool) << kv_cache_dtype_name(kvt) << ": V pool bytes differ";
    EXPECT_TRUE(all_close(got, want, gpu_test::act_tol(DType::kF32, 3e-5))) << kv_cache_dtype_name(kvt);
  }
}

}  // namespace
}  // namespace nb
