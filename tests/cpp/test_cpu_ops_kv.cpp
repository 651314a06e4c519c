// The batched CPU attention (cpu::batch_attention: the whole batch in one parallel region) against
// cpu::ref::batch_attention on random batches, in every KV cache format, and its batch invariance: a
// sequence's rows are bit-identical whether it is attended alone or inside any batch. The KV cache
// formats (backend/kv_format.h): the reference quantizer against the format's definition and error
// bounds, the fast writer and dequantizer against the reference, and the capacity of each format.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kv_quant.h"
#include "core/dtype.h"
#include "test_cpu_ops_util.h"

namespace nb {
namespace {

// A random batch over a shared paged pool: sequence s has tokens[s] new query rows at positions
// start[s].., its blocks drawn from a shuffled pool with spare (NaN-filled) blocks, so reading any
// slot outside a sequence's own positions poisons the output.
struct PagedBatch {
  int64_t heads = 0, kv_heads = 0, hd = 0, bs = 0, stride = 0;
  std::vector<int64_t> tokens, start;
  std::vector<int32_t> query_start, start_pos, tables;
  std::vector<float> q, k, v;  // k, v: [pool_blocks, bs, kv_heads, hd]
  // The same K/V in a cache format other than f32 (quantize()); spare blocks hold 0x7E bytes, whose
  // f16 scales (and f16 values) are NaN, so reading them poisons the output as the NaN floats do.
  KvCacheDType dtype = KvCacheDType::kF32;
  std::vector<uint8_t> kq, vq;

  void quantize(KvCacheDType t) {
    dtype = t;
    const KvBlockFormat f{t, bs, kv_heads, hd};
    const int64_t pool_blocks = static_cast<int64_t>(k.size()) / (bs * kv_heads * hd);
    kq.assign(static_cast<size_t>(pool_blocks * f.block_bytes()), 0x7E);
    vq = kq;
    std::vector<int64_t> slots;
    for (size_t s = 0; s < tokens.size(); ++s)
      for (int64_t pos = 0; pos < start[s] + tokens[s]; ++pos)
        slots.push_back(tables[s * static_cast<size_t>(stride) + static_cast<size_t>(pos / bs)] * bs + pos % bs);
    // Gather the rows in slot order and write them through the reference writer.
    const int64_t row = kv_heads * hd;
    std::vector<float> kr, vr;
    for (int64_t sl : slots) {
      kr.insert(kr.end(), k.begin() + sl * row, k.begin() + (sl + 1) * row);
      vr.insert(vr.end(), v.begin() + sl * row, v.begin() + (sl + 1) * row);
    }
    KvWriteParams w{kr.data(), vr.data(), reinterpret_cast<float*>(kq.data()), reinterpret_cast<float*>(vq.data()),
                    slots.data(), static_cast<int64_t>(slots.size()), kv_heads, hd};
    w.cache_dtype = t;
    w.cache_block_size = bs;
    cpu::ref::kv_write(w);
  }

  BatchAttentionParams params(float* out) const {
    BatchAttentionParams p{};
    p.q = q.data();
    p.out = out;
    p.k_cache = dtype == KvCacheDType::kF32 ? k.data() : reinterpret_cast<const float*>(kq.data());
    p.v_cache = dtype == KvCacheDType::kF32 ? v.data() : reinterpret_cast<const float*>(vq.data());
    p.cache_dtype = dtype;
    p.block_tables = tables.data();
    p.query_start = query_start.data();
    p.start_pos = start_pos.data();
    p.block_table_stride = stride;
    p.num_seqs = static_cast<int64_t>(tokens.size());
    p.num_tokens = query_start.back();
    p.max_query_len = *std::max_element(tokens.begin(), tokens.end());
    p.max_context_len = 0;
    for (size_t s = 0; s < tokens.size(); ++s) p.max_context_len = std::max(p.max_context_len, start[s] + tokens[s]);
    p.block_size = bs;
    p.num_heads = heads;
    p.num_kv_heads = kv_heads;
    p.head_dim = hd;
    p.scale = 1.f / std::sqrt(static_cast<float>(hd));
    return p;
  }
};

PagedBatch make_batch(int64_t heads, int64_t kv_heads, int64_t hd, int64_t bs, std::vector<int64_t> tokens,
                      std::vector<int64_t> start, uint32_t seed) {
  PagedBatch b;
  b.heads = heads;
  b.kv_heads = kv_heads;
  b.hd = hd;
  b.bs = bs;
  b.tokens = std::move(tokens);
  b.start = std::move(start);
  std::mt19937 rng(seed);
  int64_t blocks = 0;
  for (size_t s = 0; s < b.tokens.size(); ++s) {
    const int64_t need = (b.start[s] + b.tokens[s] + bs - 1) / bs;
    b.stride = std::max(b.stride, need);
    blocks += need;
  }
  const int64_t pool = blocks + 5;
  std::vector<int32_t> ids(static_cast<size_t>(pool));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  b.tables.assign(b.tokens.size() * static_cast<size_t>(b.stride), -1);
  const int64_t row = kv_heads * hd;
  b.k.assign(static_cast<size_t>(pool * bs * row), NAN);
  b.v = b.k;
  std::normal_distribution<float> nd;
  b.query_start = {0};
  size_t next = 0;
  for (size_t s = 0; s < b.tokens.size(); ++s) {
    const int64_t len = b.start[s] + b.tokens[s];
    for (int64_t i = 0; i < (len + bs - 1) / bs; ++i) b.tables[s * static_cast<size_t>(b.stride) + static_cast<size_t>(i)] = ids[next++];
    for (int64_t pos = 0; pos < len; ++pos) {
      const int64_t slot = b.tables[s * static_cast<size_t>(b.stride) + static_cast<size_t>(pos / bs)] * bs + pos % bs;
      for (int64_t e = 0; e < row; ++e) {
        b.k[static_cast<size_t>(slot * row + e)] = nd(rng);
        b.v[static_cast<size_t>(slot * row + e)] = nd(rng);
      }
    }
    b.query_start.push_back(b.query_start.back() + static_cast<int32_t>(b.tokens[s]));
    b.start_pos.push_back(static_cast<int32_t>(b.start[s]));
  }
  b.q = test::random_normal(static_cast<size_t>(b.query_start.back() * heads * hd), seed + 1, 2.f);
  return b;
}

struct BatchCase {
  int64_t heads, kv_heads, hd, bs;
  std::vector<int64_t> tokens, start;
};
const BatchCase kCases[] = {
    // Decode batches (one row each) over short and long (split) contexts.
    {9, 3, 64, 16, {1, 1, 1, 1, 1, 1, 1}, {0, 5, 130, 700, 31, 256, 1000}},
    // Mixed: chunked prefills beside decodes, a sequence with zero new rows.
    {9, 3, 64, 16, {17, 1, 0, 5, 1}, {0, 300, 4, 40, 128}},
    {4, 2, 128, 7, {3, 1, 2}, {50, 400, 9}},
    {6, 2, 20, 8, {1, 4, 1}, {300, 0, 77}},
    {8, 1, 64, 64, {1, 2}, {1000, 63}},
};

// Fast vs reference, 1..3 threads. Tolerance as in the single-sequence attention test: f32 rounding
// of dots, the 2-ulp exp and the chunk merge stay far below 2e-5 on these N(0,1)-valued outputs.
// The same for every cache format: both read the same dequantized values (the fast path through its
// tile), so the tolerance is unchanged.
const KvCacheDType kAllKv[] = {KvCacheDType::kF32, KvCacheDType::kF16, KvCacheDType::kInt8, KvCacheDType::kInt4};

TEST(CpuKv, BatchAttentionMatchesReference) {
  uint32_t seed = 100;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (const BatchCase& c : kCases) {
      PagedBatch b = make_batch(c.heads, c.kv_heads, c.hd, c.bs, c.tokens, c.start, seed++);
      for (KvCacheDType t : kAllKv) {
        if (threads == 3 && t != KvCacheDType::kF32) continue;
        b.quantize(t);
        std::vector<float> want(b.q.size(), NAN), got(b.q.size(), NAN);
        cpu::ref::batch_attention(b.params(want.data()));
        cpu::batch_attention(b.params(got.data()), pool);
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_TRUE(std::isfinite(want[i]));
          ASSERT_NEAR(got[i], want[i], 2e-5)
              << kv_cache_dtype_name(t) << " threads=" << threads << " hd=" << c.hd << " i=" << i;
        }
      }
    }
  }
}

// Continuous batching relies on this: a sequence's output rows are the same bits alone (the
// single-sequence op) as inside a batch of other sequences, in any cache format.
TEST(CpuKv, BatchAttentionRowsAreIndependentOfTheBatch) {
  ThreadPool pool(2);
  uint32_t seed = 200;
  for (const BatchCase& c : kCases) {
    PagedBatch b = make_batch(c.heads, c.kv_heads, c.hd, c.bs, c.tokens, c.start, seed++);
    for (KvCacheDType t : {KvCacheDType::kF32, KvCacheDType::kInt4}) {
      b.quantize(t);
      std::vector<float> batched(b.q.size(), NAN);
      const BatchAttentionParams bp = b.params(batched.data());
      cpu::batch_attention(bp, pool);
      const int64_t row = c.heads * c.hd;
      for (size_t s = 0; s < c.tokens.size(); ++s) {
        if (c.tokens[s] == 0) continue;
        std::vector<float> alone(static_cast<size_t>(c.tokens[s] * row), NAN);
        AttentionParams a{};
        a.q = b.q.data() + b.query_start[s] * row;
        a.out = alone.data();
        a.k_cache = bp.k_cache;
        a.v_cache = bp.v_cache;
        a.cache_dtype = t;
        a.block_table = b.tables.data() + s * static_cast<size_t>(b.stride);
        a.block_size = c.bs;
        a.num_tokens = c.tokens[s];
        a.start_pos = c.start[s];
        a.num_heads = c.heads;
        a.num_kv_heads = c.kv_heads;
        a.head_dim = c.hd;
        a.scale = 1.f / std::sqrt(static_cast<float>(c.hd));
        cpu::attention(a, pool);
        ASSERT_EQ(0, std::memcmp(alone.data(), batched.data() + b.query_start[s] * row, alone.size() * sizeof(float)))
            << kv_cache_dtype_name(t) << " sequence " << s;
      }
    }
  }
}

// Head vectors that exercise the quantizers: N(0, sigma) over several decades, one large outlier,
// all equal, all zero, all negative, subnormal-scale.
std::vector<std::vector<float>> probe_vectors(int64_t d, uint32_t seed) {
  std::vector<std::vector<float>> out;
  for (float sigma : {1e-3f, 0.1f, 1.f, 30.f}) out.push_back(test::random_normal(static_cast<size_t>(d), seed++, sigma));
  auto outlier = test::random_normal(static_cast<size_t>(d), seed++);
  outlier[static_cast<size_t>(d / 3)] = 200.f;
  out.push_back(outlier);
  out.push_back(std::vector<float>(static_cast<size_t>(d), 0.75f));
  out.push_back(std::vector<float>(static_cast<size_t>(d), 0.f));
  auto neg = test::random_normal(static_cast<size_t>(d), seed++);
  for (float& x : neg) x = -std::fabs(x) - 2.f;
  out.push_back(neg);
  out.push_back(test::random_normal(static_cast<size_t>(d), seed++, 1e-9f));
  return out;
}

float f16_at(const std::vector<uint8_t>& pool, int64_t off) {
  uint16_t h;
  std::memcpy(&h, pool.data() + off, 2);
  return fp16_to_fp32(h);
}

// The reference quantizer against the definitions in kv_format.h, computed here: the stored int8
// scale is the f16 rounding of absmax / 127, the codes are the nearest grid points (so the round-trip
// error is at most half a step, plus the clamp at the edges of the f16-rounded grid); int4 codes are
// the nearest points of the stored grid and its error is at most min-max's; the bytes sit where the
// layout says.
TEST(CpuKv, ReferenceQuantizerFollowsTheFormat) {
  const int64_t d = 64, bs = 4, heads = 3, slot = 6, h = 2;  // block 1, offset 2
  for (KvCacheDType t : kAllKv) {
    const KvBlockFormat f{t, bs, heads, d};
    for (const auto& x : probe_vectors(d, 7)) {
      std::vector<uint8_t> pool(static_cast<size_t>(3 * f.block_bytes()), 0xA5);
      cpu::ref::kv_quantize_head(f, pool.data(), slot, h, x.data());
      std::vector<float> y(static_cast<size_t>(d));
      cpu::ref::kv_dequantize_head(f, pool.data(), slot, h, y.data());
      // Nothing outside this head's values, scale and zero changed.
      std::vector<bool> mine(pool.size(), false);
      for (int64_t b = 0; b < f.head_bytes(); ++b) mine[static_cast<size_t>(f.block_bytes() + ((2 * heads + h) * f.head_bytes()) + b)] = true;
      const int64_t meta = f.block_bytes() + f.values_bytes() + (2 * heads + h) * 2;
      if (f.has_scale()) mine[static_cast<size_t>(meta)] = mine[static_cast<size_t>(meta + 1)] = true;
      if (f.has_zero()) {
        mine[static_cast<size_t>(meta + 2 * bs * heads)] = mine[static_cast<size_t>(meta + 2 * bs * heads + 1)] = true;
      }
      for (size_t i = 0; i < pool.size(); ++i) {
        if (!mine[i]) ASSERT_EQ(pool[i], 0xA5) << kv_cache_dtype_name(t) << " byte " << i;
      }
      double amax = 0, lo = x[0], hi = x[0];
      for (float v : x) {
        amax = std::max(amax, std::fabs(static_cast<double>(v)));
        lo = std::min(lo, static_cast<double>(v));
        hi = std::max(hi, static_cast<double>(v));
      }
      for (int64_t i = 0; i < d; ++i) {
        const double xi = x[static_cast<size_t>(i)], yi = y[static_cast<size_t>(i)];
        switch (t) {
          case KvCacheDType::kF32: ASSERT_EQ(yi, xi); break;
          case KvCacheDType::kF16: ASSERT_EQ(yi, fp16_to_fp32(fp32_to_fp16(x[static_cast<size_t>(i)]))); break;
          case KvCacheDType::kInt8: {
            const double s = f16_at(pool, meta);
            ASSERT_EQ(s, fp16_to_fp32(fp32_to_fp16(static_cast<float>(amax) / 127.f)));
            const double q = yi / (s > 0 ? s : 1);
            ASSERT_EQ(q, std::round(q));  // a grid point
            ASSERT_LE(std::fabs(q), 127);
            // Half a step, or (only at +-absmax, when the f16 scale rounded down) the clamp's overshoot.
            ASSERT_LE(std::fabs(yi - xi), 0.5 * s + std::max(0.0, amax - 127 * s) + 1e-12) << "i=" << i;
            break;
          }
          case KvCacheDType::kInt4: {
            // Scale and zero come from the rule's search (checked against min-max below); the
            // codes are the nearest points of the stored grid z + q s, q = 0..15.
            const double s = f16_at(pool, meta), z = f16_at(pool, meta + 2 * bs * heads);
            const double q = s > 0 ? (yi - z) / s : 0;
            ASSERT_NEAR(q, std::round(q), 1e-3);
            ASSERT_GE(std::round(q), 0);
            ASSERT_LE(std::round(q), 15);
            if (s == 0) break;
            if (xi <= z) {
              ASSERT_EQ(std::round(q), 0) << "i=" << i;
            } else if (xi >= z + 15 * s) {
              ASSERT_EQ(std::round(q), 15) << "i=" << i;
            } else {
              ASSERT_LE(std::fabs(yi - xi), 0.5 * s * (1 + 1e-5) + 1e-12) << "i=" << i;
            }
            break;
          }
        }
      }
      if (t == KvCacheDType::kInt4) {
        // Never worse than min-max (zero = f16(min), scale = f16((max - zero) / 15), nearest codes),
        // the rule's first candidate, computed here.
        const double z0 = fp16_to_fp32(fp32_to_fp16(static_cast<float>(lo)));
        const double s0 = fp16_to_fp32(fp32_to_fp16(static_cast<float>((hi - z0) / 15)));
        double e_minmax = 0, e_got = 0;
        for (int64_t i = 0; i < d; ++i) {
          const double xi = x[static_cast<size_t>(i)];
          const double q0 = s0 > 0 ? std::clamp(std::nearbyint((xi - z0) / s0), 0.0, 15.0) : 0.0;
          e_minmax += (xi - (q0 * s0 + z0)) * (xi - (q0 * s0 + z0));
          e_got += (xi - y[static_cast<size_t>(i)]) * (xi - y[static_cast<size_t>(i)]);
        }
        ASSERT_LE(e_got, e_minmax * (1 + 1e-5) + 1e-30);
      }
    }
  }
}

// The int4 rule's search (clipped ranges, least-squares refits) beats min-max on the vectors the
// cache sees: Gaussian-like (Hadamard-rotated) ones and heavy-tailed ones, by a clear margin on
// average (min-max wastes levels on the tails), and it never loses.
TEST(CpuKv, Int4RuleLowersTheErrorOfMinMax) {
  const int64_t d = 64;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::exponential_distribution<float> ex(1.f);
  for (int kind = 0; kind < 2; ++kind) {  // 0: Gaussian, 1: Laplace
    double e_minmax = 0, e_rule = 0;
    for (int v = 0; v < 500; ++v) {
      std::vector<float> x(static_cast<size_t>(d));
      for (float& xi : x) xi = kind == 0 ? nd(rng) : (rng() % 2 ? 1.f : -1.f) * ex(rng);
      float lo = x[0], hi = x[0];
      for (float xi : x) {
        lo = std::min(lo, xi);
        hi = std::max(hi, xi);
      }
      const KvScaleZeroBits mm = kv_int4_scale_zero_bits(lo, hi);
      const KvScaleZeroBits r = kv_int4_choose_scale_zero(d, x.data());
      const float a = kv_int4_sq_error(d, x.data(), mm), b = kv_int4_sq_error(d, x.data(), r);
      ASSERT_LE(b, a);
      e_minmax += a;
      e_rule += b;
    }
    EXPECT_LT(e_rule, (kind == 0 ? 0.97 : 0.9) * e_minmax) << (kind == 0 ? "gaussian" : "laplace") << ": " << e_rule / e_minmax;
  }
}

// Int4 packing: element 2i in the low nibble of byte i, 2i + 1 in the high nibble (values chosen
// to land exactly on the grid 0, 1, ..., 15 with zero 0 and scale 1).
TEST(CpuKv, Int4PacksLowNibbleFirst) {
  const int64_t d = 32;
  const KvBlockFormat f{KvCacheDType::kInt4, 1, 1, d};
  std::vector<float> x(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) x[static_cast<size_t>(i)] = static_cast<float>((i * 7) % 16);
  x[1] = 0.f;
  x[2] = 15.f;  // min 0, max 15: scale exactly 1
  std::vector<uint8_t> want(static_cast<size_t>(f.block_bytes())), got(want.size());
  cpu::ref::kv_quantize_head(f, want.data(), 0, 0, x.data());
  for (int64_t i = 0; i < d / 2; ++i) {
    const int lo = static_cast<int>(x[static_cast<size_t>(2 * i)]), hi = static_cast<int>(x[static_cast<size_t>(2 * i + 1)]);
    ASSERT_EQ(want[static_cast<size_t>(i)], lo | hi << 4) << "byte " << i;
  }
  KvWriteParams w{x.data(), x.data(), reinterpret_cast<float*>(got.data()), reinterpret_cast<float*>(got.data()),
                  nullptr, 1, 1, d};
  const int64_t slot0 = 0;
  w.slot_mapping = &slot0;
  w.cache_dtype = KvCacheDType::kInt4;
  w.cache_block_size = 1;
  cpu::kv_write(w);
  ASSERT_EQ(want, got);
}

// The fast writer produces the reference's bytes (values, scales, zeros; untouched slots stay as
// they were), and the fast row dequantizer the reference's floats, for head sizes on and off the
// SIMD path.
TEST(CpuKv, FastWriteAndDequantizeMatchReference) {
  uint32_t seed = 300;
  for (KvCacheDType t : kAllKv) {
    for (int64_t hd : {64, 128, 16, 20}) {
      const int64_t heads = 3, bs = 8, blocks = 5, tokens = 13, row = heads * hd;
      const KvBlockFormat f{t, bs, heads, hd};
      std::vector<float> k = test::random_normal(static_cast<size_t>(tokens * row), seed++, 3.f);
      std::vector<float> v = test::random_normal(static_cast<size_t>(tokens * row), seed++, 0.2f);
      k[5] = 80.f;  // an outlier
      std::vector<int64_t> slots(static_cast<size_t>(tokens));
      std::vector<int64_t> perm(static_cast<size_t>(bs * blocks));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), std::mt19937(seed++));
      for (int64_t i = 0; i < tokens; ++i) slots[static_cast<size_t>(i)] = i % 4 == 3 ? -1 : perm[static_cast<size_t>(i)];
      const size_t nbytes = static_cast<size_t>(blocks * (t == KvCacheDType::kF32 ? bs * row * 4 : f.block_bytes()));
      std::vector<uint8_t> kr(nbytes, 0x3C), vr(nbytes, 0x3C), kf(nbytes, 0x3C), vf(nbytes, 0x3C);
      KvWriteParams w{k.data(), v.data(), reinterpret_cast<float*>(kr.data()), reinterpret_cast<float*>(vr.data()),
                      slots.data(), tokens, heads, hd};
      w.cache_dtype = t;
      w.cache_block_size = bs;
      cpu::ref::kv_write(w);
      w.k_cache = reinterpret_cast<float*>(kf.data());
      w.v_cache = reinterpret_cast<float*>(vf.data());
      cpu::kv_write(w);
      ASSERT_EQ(kr, kf) << kv_cache_dtype_name(t) << " hd=" << hd;
      ASSERT_EQ(vr, vf) << kv_cache_dtype_name(t) << " hd=" << hd;
      // Dequantize every block's rows of every head both ways.
      std::vector<float> want(static_cast<size_t>(bs * hd)), got(want.size());
      for (int64_t b = 0; b < blocks; ++b)
        for (int64_t h = 0; h < heads; ++h) {
          for (int64_t r = 0; r < bs; ++r) cpu::ref::kv_dequantize_head(f, kr.data(), b * bs + r, h, want.data() + r * hd);
          cpu::kv_dequantize_rows(f, kr.data(), b * bs, h, bs, got.data());
          ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)))
              << kv_cache_dtype_name(t) << " hd=" << hd << " block " << b << " head " << h;
        }
    }
  }
}

// The Walsh-Hadamard rotation the int8/int4 caches store K and V in: the butterflies against the
// explicit matrix, and the properties the model relies on (orthonormal and its own inverse, so dots
// and norms are kept and applying it twice gives the input back).
TEST(CpuKv, HadamardMatchesMatrixAndIsItsOwnInverse) {
  for (int64_t d : {1, 2, 4, 16, 64, 128}) {
    const int64_t n = 5;
    const auto x = test::random_normal(static_cast<size_t>(n * d), static_cast<uint32_t>(d), 2.f);
    auto want = x, got = x;
    cpu::ref::hadamard({want.data(), n, d});
    cpu::hadamard({got.data(), n, d});
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5) << "d=" << d << " i=" << i;
    for (int64_t v = 0; v < n; ++v) {
      double nx = 0, ny = 0, dot_x = 0, dot_y = 0;
      for (int64_t i = 0; i < d; ++i) {
        const size_t a = static_cast<size_t>(v * d + i), b = static_cast<size_t>(((v + 1) % n) * d + i);
        nx += double(x[a]) * x[a];
        ny += double(got[a]) * got[a];
        dot_x += double(x[a]) * x[b];
        dot_y += double(got[a]) * got[b];
      }
      EXPECT_NEAR(ny, nx, 1e-4 * nx) << "d=" << d;
      EXPECT_NEAR(dot_y, dot_x, 1e-4 * (nx + 1)) << "d=" << d;
    }
    cpu::hadamard({got.data(), n, d});
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(got[i], x[i], 1e-5) << "d=" << d << " i=" << i;
  }
  // A single outlier channel spreads evenly: |H e_k| = 1/sqrt(d) in every channel.
  std::vector<float> e(64, 0.f);
  e[9] = 8.f;
  cpu::hadamard({e.data(), 1, 64});
  for (float v : e) ASSERT_FLOAT_EQ(std::fabs(v), 1.f);
}

}  // namespace
}  // namespace nb
