// CUDA memory-bound ops against their CPU references (nb::cpu::ref::*) with the same Params struct:
// embedding, rms_norm, add_rms_norm, rope, swiglu, kv_write. Method and tolerances: gpu_test_util.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "gpu_test_util.h"
#include "model/config.h"

namespace nb {
namespace {

using gpu_test::all_close;
using gpu_test::CudaTest;
using gpu_test::random_normal;
using gpu_test::round_all;
using gpu_test::Tol;

constexpr DType kActs[] = {DType::kF32, DType::kF16, DType::kBF16};

class CudaElementwise : public CudaTest {};

// Rows of one table dtype, quantized from N(0,1) values with per-row scales over two decades.
std::vector<uint8_t> make_table(DType dt, int64_t vocab, int64_t dim, uint32_t s) {
  std::vector<float> v = random_normal(static_cast<size_t>(vocab * dim), s);
  for (int64_t r = 0; r < vocab; ++r)
    for (int64_t c = 0; c < dim; ++c) v[static_cast<size_t>(r * dim + c)] *= 0.1f * std::pow(10.f, (r % 7) / 3.f);
  const size_t rb = row_bytes(dt, dim);
  std::vector<uint8_t> bytes(rb * static_cast<size_t>(vocab));
  for (int64_t r = 0; r < vocab; ++r) quantize_row(dt, v.data() + r * dim, bytes.data() + rb * static_cast<size_t>(r), dim);
  return bytes;
}

// Embedding rows are dequantized exactly as dequantize_row does (a product of f16 scale and small
// int, plus for q4_1 one add), so f32 output matches to 1 ulp; f16/bf16 output adds one rounding.
TEST_F(CudaElementwise, EmbeddingMatchesReference) {
  const DType tables[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1};
  const int64_t dims[] = {64, 96, 576, 4096};
  uint32_t s = 100;
  for (DType td : tables)
    for (int64_t dim : dims)
      for (DType act : kActs) {
        const int64_t vocab = 37, tokens = 19;
        std::vector<uint8_t> table = make_table(td, vocab, dim, s++);
        std::mt19937 rng(gpu_test::seed(s++));
        std::vector<int32_t> ids(static_cast<size_t>(tokens));
        for (int32_t& id : ids) id = static_cast<int32_t>(rng() % vocab);
        ids[0] = 0;
        ids[1] = static_cast<int32_t>(vocab - 1);
        ids[2] = ids[3];  // a repeated id

        std::vector<float> want(static_cast<size_t>(tokens * dim));
        const Tensor host_table = Tensor::view(table.data(), {vocab, dim}, td);
        cpu::ref::embedding({host_table, ids.data(), want.data(), tokens});

        cuda::DeviceBuffer d_table = upload(table);
        cuda::DeviceBuffer d_ids = upload(ids);
        cuda::DeviceBuffer d_out = poisoned(want.size() * gpu_test::elem_bytes(act));
        EmbeddingParams p{Tensor::view(d_table.data(), {vocab, dim}, td, nullptr, Device::kCUDA),
                          d_ids.as<int32_t>(), d_out.as<float>(), tokens};
        p.act_dtype = act;
        NB_ASSERT_OK(cuda::embedding(p, ctx()));
        const std::vector<float> got = download_act(d_out, want.size(), act);
        // q4_1's d * q + m may be fused into one fma on either side: 1 ulp of the row's magnitude.
        std::vector<float> row_max(want.size());
        for (int64_t t = 0; t < tokens; ++t) {
          float mx = 0.f;
          for (int64_t i = 0; i < dim; ++i) mx = std::max(mx, std::fabs(want[static_cast<size_t>(t * dim + i)]));
          std::fill(row_max.begin() + t * dim, row_max.begin() + (t + 1) * dim, mx);
        }
        Tol tol = gpu_test::act_tol(act, 2e-7);
        if (act == DType::kF32) tol.rel = 2e-7;
        EXPECT_TRUE(all_close(got, want, tol, &row_max))
            << "table " << dtype_name(td) << " dim " << dim << " act " << dtype_name(act);
      }
}

TEST_F(CudaElementwise, EmbeddingRejectsHostTableAndOtherDtypes) {
  std::vector<float> table(64 * 4, 1.f);
  std::vector<int32_t> ids = {0};
  cuda::DeviceBuffer d_ids = upload(ids);
  cuda::DeviceBuffer d_out = poisoned(64 * 4);
  EmbeddingParams p{Tensor::view(table.data(), {4, 64}, DType::kF32), d_ids.as<int32_t>(), d_out.as<float>(), 1};
  EXPECT_EQ(cuda::embedding(p, ctx()).code(), StatusCode::kInvalidArgument);
  cuda::DeviceBuffer d_table = upload(table);
  p.table = Tensor::view(d_table.data(), {4, 64}, DType::kF32, nullptr, Device::kCUDA);
  p.act_dtype = DType::kQ8_0;
  EXPECT_EQ(cuda::embedding(p, ctx()).code(), StatusCode::kUnimplemented);
  p.act_dtype = DType::kF32;
  p.table = Tensor::view(d_table.data(), {4, 32}, DType::kI8, nullptr, Device::kCUDA);
  EXPECT_EQ(cuda::embedding(p, ctx()).code(), StatusCode::kUnimplemented);
}

struct NormCase {
  int64_t rows, dim;
};
constexpr NormCase kNormCases[] = {{1, 64}, {7, 576}, {3, 4097}, {33, 1000}, {2, 8192}, {5, 3}};

// Rows with scales over four decades; the reference normalizes in double. f32 differs by the f32
// sum of squares (<= dim * 2^-24 relative, ~5e-4 worst case at dim 8192, ~1e-6 in practice since
// partial sums are tree-reduced) and 2 roundings: rel 1e-5 per element.
TEST_F(CudaElementwise, RmsNormMatchesReference) {
  uint32_t s = 200;
  for (const NormCase& c : kNormCases)
    for (DType act : kActs)
      for (bool in_place : {false, true}) {
        const size_t n = static_cast<size_t>(c.rows * c.dim);
        std::vector<float> x = random_normal(n, s++);
        for (int64_t r = 0; r < c.rows; ++r)
          for (int64_t i = 0; i < c.dim; ++i) x[static_cast<size_t>(r * c.dim + i)] *= std::pow(10.f, (r % 5) - 2.f);
        round_all(x, act);
        std::vector<float> w = random_normal(static_cast<size_t>(c.dim), s++);
        std::vector<float> want(n);
        cpu::ref::rms_norm({x.data(), w.data(), want.data(), c.rows, c.dim, 1e-5f});

        cuda::DeviceBuffer d_x = upload_act(x, act);
        cuda::DeviceBuffer d_w = upload(w);
        cuda::DeviceBuffer d_y = poisoned(n * gpu_test::elem_bytes(act));
        float* y = in_place ? d_x.as<float>() : d_y.as<float>();
        RmsNormParams p{d_x.as<float>(), d_w.as<float>(), y, c.rows, c.dim, 1e-5f};
        p.act_dtype = act;
        NB_ASSERT_OK(cuda::rms_norm(p, ctx()));
        const std::vector<float> got = download_act(in_place ? d_x : d_y, n, act);
        EXPECT_TRUE(all_close(got, want, gpu_test::act_tol(act)))
            << "rows " << c.rows << " dim " << c.dim << " act " << dtype_name(act) << " in_place " << in_place;
      }
}

// x += r is one f32 add then one rounding to act dtype on both sides: bit-identical. y is then the
// reference norm of that stored x (same tolerance as RmsNorm).
TEST_F(CudaElementwise, AddRmsNormMatchesReference) {
  uint32_t s = 300;
  for (const NormCase& c : kNormCases)
    for (DType act : kActs) {
      const size_t n = static_cast<size_t>(c.rows * c.dim);
      std::vector<float> x = random_normal(n, s++, 3.f);
      std::vector<float> r = random_normal(n, s++, 0.5f);
      round_all(x, act);
      round_all(r, act);
      std::vector<float> w = random_normal(static_cast<size_t>(c.dim), s++);
      cuda::DeviceBuffer d_x = upload_act(x, act);
      cuda::DeviceBuffer d_r = upload_act(r, act);
      cuda::DeviceBuffer d_w = upload(w);
      cuda::DeviceBuffer d_y = poisoned(n * gpu_test::elem_bytes(act));

      std::vector<float> x_ref = x;
      for (size_t i = 0; i < n; ++i) x_ref[i] = gpu_test::round_to(act, x[i] + r[i]);
      std::vector<float> want(n);
      cpu::ref::rms_norm({x_ref.data(), w.data(), want.data(), c.rows, c.dim, 1e-6f});
      if (act == DType::kF32) {  // the reference op itself, for f32 where it applies as is
        std::vector<float> x_cpu = x, y_cpu(n);
        cpu::ref::add_rms_norm({x_cpu.data(), r.data(), w.data(), y_cpu.data(), c.rows, c.dim, 1e-6f});
        ASSERT_EQ(x_cpu, x_ref);
        ASSERT_EQ(y_cpu, want);
      }

      AddRmsNormParams p{d_x.as<float>(), d_r.as<float>(), d_w.as<float>(), d_y.as<float>(), c.rows, c.dim, 1e-6f};
      p.act_dtype = act;
      NB_ASSERT_OK(cuda::add_rms_norm(p, ctx()));
      const std::vector<float> got_x = download_act(d_x, n, act);
      const std::vector<float> got_y = download_act(d_y, n, act);
      EXPECT_EQ(got_x, x_ref) << "rows " << c.rows << " dim " << c.dim << " act " << dtype_name(act);
      EXPECT_TRUE(all_close(got_y, want, gpu_test::act_tol(act)))
          << "rows " << c.rows << " dim " << c.dim << " act " << dtype_name(act);
    }
}

// Angles in double on both sides; the GPU rotates in f32 with f32 cos/sin: error <= ~3 ulp of
// |x0| + |x1|, so the bound is rel * |want| + 1e-6 * (|x0| + |x1|) of the element's pair.
TEST_F(CudaElementwise, RopeMatchesReference) {
  struct Case {
    int64_t tokens, heads, kv_heads, head_dim;
    float theta;
  };
  const Case cases[] = {{1, 4, 4, 64, 10000.f},   {5, 9, 3, 64, 10000.f},  {37, 32, 8, 128, 500000.f},
                        {3, 8, 1, 8, 10000.f},    {17, 6, 2, 80, 1e6f},    {2, 4, 4, 256, 10000.f},
                        {64, 15, 5, 2, 10000.f}};
  uint32_t s = 400;
  for (const Case& c : cases)
    for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf})
      for (DType act : kActs) {
        ModelConfig cfg;
        cfg.head_dim = c.head_dim;
        cfg.rope_theta = c.theta;
        std::vector<float> inv_freq(static_cast<size_t>(c.head_dim / 2));
        rope_inv_freq(cfg, inv_freq.data());
        std::mt19937 rng(gpu_test::seed(s++));
        std::vector<int32_t> pos(static_cast<size_t>(c.tokens));
        for (auto& p : pos) p = static_cast<int32_t>(rng() % 9000);  // start_pos > 0, any order
        pos[0] = 0;
        std::vector<float> q = random_normal(static_cast<size_t>(c.tokens * c.heads * c.head_dim), s++);
        std::vector<float> k = random_normal(static_cast<size_t>(c.tokens * c.kv_heads * c.head_dim), s++);
        round_all(q, act);
        round_all(k, act);
        auto pair_scale = [&](const std::vector<float>& x) {
          std::vector<float> sc(x.size());
          const int64_t half = c.head_dim / 2;
          for (size_t h = 0; h < x.size() / static_cast<size_t>(c.head_dim); ++h)
            for (int64_t i = 0; i < half; ++i) {
              const size_t a = h * c.head_dim + (style == RopeStyle::kInterleaved ? 2 * i : i);
              const size_t b = h * c.head_dim + (style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half);
              sc[a] = sc[b] = std::fabs(x[a]) + std::fabs(x[b]);
            }
          return sc;
        };
        const std::vector<float> q_scale = pair_scale(q), k_scale = pair_scale(k);
        std::vector<float> q_want = q, k_want = k;
        cpu::ref::rope({q_want.data(), k_want.data(), pos.data(), inv_freq.data(), c.tokens, c.heads, c.kv_heads,
                        c.head_dim, style});

        cuda::DeviceBuffer d_q = upload_act(q, act), d_k = upload_act(k, act);
        cuda::DeviceBuffer d_pos = upload(pos), d_freq = upload(inv_freq);
        RopeParams p{d_q.as<float>(), d_k.as<float>(), d_pos.as<int32_t>(), d_freq.as<float>(), c.tokens, c.heads,
                     c.kv_heads, c.head_dim, style};
        p.act_dtype = act;
        NB_ASSERT_OK(cuda::rope(p, ctx()));
        const Tol tol = gpu_test::act_tol(act, 1e-6);
        EXPECT_TRUE(all_close(download_act(d_q, q.size(), act), q_want, tol, &q_scale))
            << "q: tokens " << c.tokens << " hd " << c.head_dim << " style " << int(style) << " act " << dtype_name(act);
        EXPECT_TRUE(all_close(download_act(d_k, k.size(), act), k_want, tol, &k_scale))
            << "k: tokens " << c.tokens << " hd " << c.head_dim << " style " << int(style) << " act " << dtype_name(act);
      }
}

// silu(g) * u: expf (2 ulp) and 3 roundings against double: rel 1e-5 for f32.
TEST_F(CudaElementwise, SwigluMatchesReference) {
  uint32_t s = 500;
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{(1 << 20) + 3}})
    for (DType act : kActs)
      for (bool alias : {false, true}) {
        std::vector<float> g = random_normal(static_cast<size_t>(n), s++, 4.f);
        std::vector<float> u = random_normal(static_cast<size_t>(n), s++);
        round_all(g, act);
        round_all(u, act);
        std::vector<float> want(static_cast<size_t>(n));
        cpu::ref::swiglu({g.data(), u.data(), want.data(), n});
        cuda::DeviceBuffer d_g = upload_act(g, act), d_u = upload_act(u, act);
        cuda::DeviceBuffer d_out = poisoned(static_cast<size_t>(n) * gpu_test::elem_bytes(act));
        SwigluParams p{d_g.as<float>(), d_u.as<float>(), alias ? d_g.as<float>() : d_out.as<float>(), n};
        p.act_dtype = act;
        NB_ASSERT_OK(cuda::swiglu(p, ctx()));
        const std::vector<float> got = download_act(alias ? d_g : d_out, static_cast<size_t>(n), act);
        EXPECT_TRUE(all_close(got, want, gpu_test::act_tol(act)))
            << "n " << n << " act " << dtype_name(act) << " alias " << alias;
      }
}

// A pure copy: the whole cache (written and untouched slots) must equal the reference bit for bit.
TEST_F(CudaElementwise, KvWriteMatchesReference) {
  struct Case {
    int64_t tokens, kv_heads, head_dim, num_slots;
  };
  const Case cases[] = {{1, 1, 64, 16}, {13, 4, 64, 40}, {64, 8, 128, 300}, {7, 3, 20, 9}, {1, 2, 256, 3}};
  uint32_t s = 600;
  for (const Case& c : cases)
    for (DType act : kActs) {
      const int64_t row = c.kv_heads * c.head_dim;
      std::vector<float> k = random_normal(static_cast<size_t>(c.tokens * row), s++);
      std::vector<float> v = random_normal(static_cast<size_t>(c.tokens * row), s++);
      std::vector<float> kc = random_normal(static_cast<size_t>(c.num_slots * row), s++);
      std::vector<float> vc = random_normal(static_cast<size_t>(c.num_slots * row), s++);
      for (auto* a : {&k, &v, &kc, &vc}) round_all(*a, act);
      // Distinct slots in shuffled order; every third token is padding (-1) when there are several.
      std::vector<int64_t> slots(static_cast<size_t>(c.num_slots));
      std::iota(slots.begin(), slots.end(), 0);
      std::mt19937 rng(gpu_test::seed(s++));
      std::shuffle(slots.begin(), slots.end(), rng);
      slots.resize(static_cast<size_t>(c.tokens));
      for (size_t t = 2; t < slots.size(); t += 3) slots[t] = -1;

      std::vector<float> kc_want = kc, vc_want = vc;
      cpu::ref::kv_write({k.data(), v.data(), kc_want.data(), vc_want.data(), slots.data(), c.tokens, c.kv_heads,
                          c.head_dim});
      cuda::DeviceBuffer d_k = upload_act(k, act), d_v = upload_act(v, act);
      cuda::DeviceBuffer d_kc = upload_act(kc, act), d_vc = upload_act(vc, act);
      cuda::DeviceBuffer d_slots = upload(slots);
      KvWriteParams p{d_k.as<float>(), d_v.as<float>(), d_kc.as<float>(), d_vc.as<float>(), d_slots.as<int64_t>(),
                      c.tokens, c.kv_heads, c.head_dim};
      p.act_dtype = act;
      NB_ASSERT_OK(cuda::kv_write(p, ctx()));
      EXPECT_EQ(download_act(d_kc, kc.size(), act), kc_want) << "tokens " << c.tokens << " act " << dtype_name(act);
      EXPECT_EQ(download_act(d_vc, vc.size(), act), vc_want) << "tokens " << c.tokens << " act " << dtype_name(act);
    }
}

}  // namespace
}  // namespace nb
