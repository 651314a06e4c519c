// W8A8 on CUDA (backend/cuda/w8a8.h) against the CPU reference with the same MatmulParams:
// cuda::matmul_w8a8 on the repacked device weight vs cpu::ref::matmul on the host kQGroup weight.
//
// Tolerance: none — outputs must be EQUAL (f32 activations), or equal to the reference's f32 value
// rounded once to f16/bf16. Every step is the same arithmetic on both sides: the token's absmax is
// exact; d = amax / 127, 1 / d, x * (1 / d) and round-half-even are single IEEE operations; the
// int32 dot of int8 codes is exact (cuBLASLt's IMMA sums integers, in any order); the epilogue is
// float(iv) * scale then * d, two f32 roundings, as cpu::w8a8_output. A wrong code, a transposed
// operand or a misplaced scale changes outputs by far more than one ulp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/w8a8.h"
#include "core/group_quant.h"
#include "gpu_test_util.h"

namespace nb {
namespace {

using gpu_test::CudaTest;

constexpr DType kActs[] = {DType::kF32, DType::kF16, DType::kBF16};

// An 8-bit symmetric per-channel W8A8 weight: codes over the whole byte range (0 and 255 included),
// channel scales over a decade.
Tensor make_w8a8(int64_t n, int64_t k, uint32_t s) {
  std::mt19937 rng(gpu_test::seed(s));
  std::vector<uint8_t> codes(static_cast<size_t>(n * k));
  for (uint8_t& c : codes) c = static_cast<uint8_t>(rng() & 0xFF);
  codes[0] = 0;
  codes[1] = 255;
  GroupQuant q;
  q.bits = 8;
  q.group_size = -1;
  q.symmetric = true;
  q.act_int8 = true;
  q.num_groups = 1;
  std::uniform_real_distribution<float> u(-3.f, -2.f);
  for (int64_t r = 0; r < n; ++r) q.scales.push_back(std::pow(10.f, u(rng)));
  auto t = make_group_quant_tensor(std::move(codes), n, k, std::move(q), "w8a8 test weight");
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  return t.ok() ? std::move(t).value() : Tensor();
}

// Activation rows with per-row scales over three decades and an outlier; row 0 all zeros (d = 0).
std::vector<float> make_acts(int64_t m, int64_t k, uint32_t s, DType act) {
  std::vector<float> x = gpu_test::random_normal(static_cast<size_t>(m * k), s);
  std::mt19937 rng(gpu_test::seed(s + 1));
  std::uniform_real_distribution<float> u(-2.f, 1.f);
  for (int64_t t = 0; t < m; ++t) {
    const float scale = std::pow(10.f, u(rng));
    for (int64_t j = 0; j < k; ++j) x[static_cast<size_t>(t * k + j)] *= scale;
    x[static_cast<size_t>(t * k + (t * 7) % k)] *= 20.f;
  }
  std::fill(x.begin(), x.begin() + k, 0.f);
  gpu_test::round_all(x, act);
  return x;
}

::testing::AssertionResult all_equal(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  size_t bad = 0, first = 0;
  double max_err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(got[i] == want[i])) {
      if (bad++ == 0) first = i;
      max_err = std::max(max_err, std::fabs(static_cast<double>(got[i]) - want[i]));
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " outputs differ (max |err| " << max_err
                                       << "); first at " << first << ": got " << got[first] << " want " << want[first];
}

class CudaW8A8 : public CudaTest {
 protected:
  // An op's int8 codes and scales of its output (out_bytes, rows x cols in act) must be the bits
  // quantize_act_int8 makes from that output.
  void expect_quantizer_codes(const std::vector<uint8_t>& out_bytes, int64_t rows, int64_t cols, DType act,
                              const cuda::DeviceBuffer& d_q, const cuda::DeviceBuffer& d_d, const std::string& what) {
    const size_t n = static_cast<size_t>(rows * cols);
    cuda::DeviceBuffer d_o = upload(out_bytes), d_q2 = poisoned(n), d_d2 = poisoned(static_cast<size_t>(rows) * 4);
    NB_ASSERT_OK(cuda::quantize_act_int8(d_o.as<float>(), rows, cols, act, d_q2.as<int8_t>(), d_d2.as<float>(), ctx()));
    std::vector<int8_t> got_q(n), want_q(n);
    std::vector<float> got_d(static_cast<size_t>(rows)), want_d(static_cast<size_t>(rows));
    NB_ASSERT_OK(cuda::copy_to_host(got_q.data(), d_q.data(), n, ctx().stream()));
    NB_ASSERT_OK(cuda::copy_to_host(want_q.data(), d_q2.data(), n, ctx().stream()));
    NB_ASSERT_OK(cuda::copy_to_host(got_d.data(), d_d.data(), got_d.size() * 4, ctx().stream()));
    NB_ASSERT_OK(cuda::copy_to_host(want_d.data(), d_d2.data(), want_d.size() * 4, ctx().stream()));
    NB_ASSERT_OK(ctx().synchronize());
    EXPECT_TRUE(got_q == want_q) << what << ": codes differ";
    EXPECT_TRUE(got_d == want_d) << what << ": scales differ";
  }
  // One product on `c` (the fixture's Context unless given), checked against the reference.
  void check(int64_t m, int64_t n, int64_t k, DType act, uint32_t s, cuda::Context* c = nullptr,
             cuda::W8A8Path path = cuda::W8A8Path::kAuto, bool prequantized = false) {
    cuda::Context& cx = c != nullptr ? *c : ctx();
    const std::string what = "m " + std::to_string(m) + " n " + std::to_string(n) + " k " + std::to_string(k) +
                             " act " + std::string(dtype_name(act));
    const Tensor w = make_w8a8(n, k, s);
    const std::vector<float> x = make_acts(m, k, s + 2, act);
    std::vector<float> want(static_cast<size_t>(m * n));
    cpu::ref::matmul({w, x.data(), want.data(), m});
    gpu_test::round_all(want, act);

    auto packed = cuda::w8a8_repack(w);
    ASSERT_TRUE(packed.ok()) << what << ": " << packed.status().to_string();
    cuda::DeviceBuffer d_w = upload(*packed), d_x = upload_act(x, act);
    cuda::DeviceBuffer d_y = poisoned(static_cast<size_t>(m * n) * gpu_test::elem_bytes(act));
    const int64_t shape[2] = {n, k};
    Tensor dw = Tensor::view(d_w.data(), shape, 2, DType::kQGroup, nullptr, Device::kCUDA);
    dw.set_group_quant(std::make_shared<const GroupQuant>(*w.group_quant()));
    MatmulParams p{dw, d_x.as<float>(), d_y.as<float>(), m, act};
    Status st;
    if (prequantized) {  // quantize_act_int8, then the GEMM step on its codes
      cuda::DeviceBuffer d_q = poisoned(static_cast<size_t>(m * k)), d_d = poisoned(static_cast<size_t>(m) * 4);
      st = cuda::quantize_act_int8(d_x.as<float>(), m, k, act, d_q.as<int8_t>(), d_d.as<float>(), cx);
      if (st.ok()) st = cuda::matmul_w8a8_quantized(dw, d_q.as<int8_t>(), d_d.as<float>(), d_y.data(), m, act, cx);
      NB_ASSERT_OK(cx.synchronize());  // d_q and d_d go out of scope here
    } else {
      st = cuda::matmul_w8a8_path(p, cx, path);
    }
    ASSERT_TRUE(st.ok()) << what << ": " << st.to_string();
    std::vector<uint8_t> bytes(static_cast<size_t>(m * n) * gpu_test::elem_bytes(act));
    NB_ASSERT_OK(cuda::copy_to_host(bytes.data(), d_y.data(), bytes.size(), cx.stream()));
    NB_ASSERT_OK(cx.synchronize());
    EXPECT_TRUE(all_equal(gpu_test::decode(bytes, act), want)) << what;
  }
};

TEST_F(CudaW8A8, QuantizeActMatchesCpu) {
  uint32_t s = 12000;
  for (int64_t k : {4, 64, 576, 4096, 11008})
    for (DType act : kActs) {
      const int64_t m = 9;
      const std::vector<float> x = make_acts(m, k, s++, act);
      std::vector<int8_t> want_q(static_cast<size_t>(m * k));
      std::vector<float> want_d(static_cast<size_t>(m));
      for (int64_t t = 0; t < m; ++t) want_d[static_cast<size_t>(t)] = cpu::quantize_act_int8_row(x.data() + t * k, k, want_q.data() + t * k);
      cuda::DeviceBuffer d_x = upload_act(x, act), d_q = poisoned(want_q.size()), d_d = poisoned(want_d.size() * 4);
      NB_ASSERT_OK(cuda::quantize_act_int8(d_x.as<float>(), m, k, act, d_q.as<int8_t>(), d_d.as<float>(), ctx()));
      std::vector<int8_t> got_q(want_q.size());
      std::vector<float> got_d(want_d.size());
      NB_ASSERT_OK(cuda::copy_to_host(got_q.data(), d_q.data(), got_q.size(), ctx().stream()));
      NB_ASSERT_OK(cuda::copy_to_host(got_d.data(), d_d.data(), got_d.size() * 4, ctx().stream()));
      NB_ASSERT_OK(ctx().synchronize());
      EXPECT_TRUE(got_q == want_q) << "k " << k << " act " << dtype_name(act) << ": codes differ";
      EXPECT_TRUE(got_d == want_d) << "k " << k << " act " << dtype_name(act) << ": scales differ";
    }
}

TEST_F(CudaW8A8, MatchesReferenceExactly) {
  struct Case {
    int64_t m, n, k;
  };
  const Case cases[] = {{1, 64, 64}, {5, 96, 128}, {33, 256, 576}, {200, 1024, 768}, {16, 4096, 4096}, {3, 512, 11008}};
  uint32_t s = 12500;
  for (const Case& c : cases)
    for (DType act : kActs) {
      check(c.m, c.n, c.k, act, s);
      s += 3;
      if (HasFatalFailure()) return;
    }
}

// A workspace that holds only a few rows at a time: M is processed in chunks (including a short
// last one), with the same results.
TEST_F(CudaW8A8, ChunkedRowsMatchReference) {
  const int64_t n = 256, k = 512;
  const size_t per_row = static_cast<size_t>(k) + 4 + static_cast<size_t>(n) * 4;
  auto small = cuda::Context::create(0, (size_t{8} << 20) + 3 * 256 + 20 * per_row);
  ASSERT_TRUE(small.ok()) << small.status().to_string();
  check(45, n, k, DType::kF16, 13000, small->get());  // chunks of 16 rows: 16, 16, 13
  check(7, n, k, DType::kF32, 13003, small->get());
}

// The fused sm_90a kernel (CUTLASS GEMM with the scales in its epilogue) gives the reference's
// bits too: M in each of its four tile configurations, partial tiles, N not a multiple of the tile,
// K from one 128-deep step to many. Both paths are forced.
TEST_F(CudaW8A8, FusedSm90MatchesReferenceExactly) {
  if (!cuda::w8a8_fused_available(256, 256, 256, DType::kF16)) {
    GTEST_SKIP() << "the fused W8A8 GEMM needs an sm_90 device and a build with the CUTLASS headers";
  }
  struct Case {
    int64_t m, n, k;
  };
  // Every tile configuration (w8a8_sm90_gemm.cuh), with partial tiles: Tiny (M <= 32; its clusters of
  // 8 along N meet N = 64 and N = 1000, not multiples of 8 tiles), Small (M <= 128), Large (128 < M
  // <= 192 and M > 384), Medium (192 < M <= 384).
  const Case cases[] = {{1, 64, 128},     {20, 1000, 512},  {32, 11008, 256}, {77, 136, 256},
                        {128, 256, 4096}, {130, 264, 11008}, {200, 136, 256}, {300, 1024, 768},
                        {384, 520, 512},  {520, 2048, 1024}};
  uint32_t s = 14000;
  for (const Case& c : cases)
    for (DType act : {DType::kF16, DType::kBF16})
      for (cuda::W8A8Path path : {cuda::W8A8Path::kFused, cuda::W8A8Path::kCublasLt}) {
        check(c.m, c.n, c.k, act, s, nullptr, path);
        if (HasFatalFailure()) return;
      }
  // Chunked rows through the fused kernel: a workspace for 20 rows of the cuBLASLt path holds 100.
  const int64_t n = 256, k = 512;
  const size_t per_row = static_cast<size_t>(k) + 4 + static_cast<size_t>(n) * 4;
  auto small = cuda::Context::create(0, (size_t{8} << 20) + 3 * 256 + 20 * per_row);
  ASSERT_TRUE(small.ok()) << small.status().to_string();
  check(333, n, k, DType::kF16, 14100, small->get(), cuda::W8A8Path::kFused);
  // f32 activations have no fused kernel: forcing it is an error, not a silent fallback.
  EXPECT_FALSE(cuda::w8a8_fused_available(256, 256, 256, DType::kF32));
}

// Linears sharing an input quantize it once (the model's q, k, v and gate, up): the GEMM step on
// quantize_act_int8's codes gives the reference's bits too: through the fused kernel (f16, bf16 on
// sm_90a; both of its tile sizes) and the cuBLASLt path (f32), whose int32 products also go through
// a workspace that takes a few rows at a time.
TEST_F(CudaW8A8, PrequantizedInputMatchesReference) {
  uint32_t s = 15000;
  for (int64_t m : {int64_t{3}, int64_t{130}, int64_t{300}})
    for (DType act : kActs) {
      check(m, 264, 512, act, s += 3, nullptr, cuda::W8A8Path::kAuto, true);
      if (HasFatalFailure()) return;
    }
  auto small = cuda::Context::create(0, (size_t{8} << 20) + 256 + 20 * 264 * 4);
  ASSERT_TRUE(small.ok()) << small.status().to_string();
  check(45, 264, 512, DType::kF32, s += 3, small->get(), cuda::W8A8Path::kAuto, true);  // 20 rows at a time
}

// The norms that feed W8A8 linears write y's int8 codes too (RmsNormParams::y_codes): they must be
// the bits quantize_act_int8 makes from that y, and y must be what the norm writes without them.
// rms_norm is run in place (y = x) as well, where the third pass reads back what pass two wrote.
TEST_F(CudaW8A8, NormCodesMatchQuantizer) {
  uint32_t s = 16000;
  for (int64_t rows : {int64_t{1}, int64_t{7}, int64_t{130}})
    for (int64_t dim : {int64_t{64}, int64_t{576}, int64_t{4096}})
      for (DType act : kActs)
        for (int mode = 0; mode < 3; ++mode) {  // add_rms_norm, rms_norm, rms_norm in place
          const std::string what = "rows " + std::to_string(rows) + " dim " + std::to_string(dim) + " act " +
                                   std::string(dtype_name(act)) + " mode " + std::to_string(mode);
          const size_t n = static_cast<size_t>(rows * dim), eb = gpu_test::elem_bytes(act);
          const std::vector<float> x = make_acts(rows, dim, s++, act), r = make_acts(rows, dim, s++, act);
          const std::vector<float> w = gpu_test::random_normal(static_cast<size_t>(dim), s++);
          cuda::DeviceBuffer d_w = upload(w), d_r = upload_act(r, act);
          auto run = [&](int8_t* codes, float* scales, std::vector<uint8_t>* y_bytes) {
            cuda::DeviceBuffer d_x = upload_act(x, act), d_y = poisoned(n * eb);
            float* y = mode == 2 ? d_x.as<float>() : d_y.as<float>();
            if (mode == 0) {
              AddRmsNormParams p{d_x.as<float>(), d_r.as<float>(), d_w.as<float>(), y, rows, dim, 1e-5f, act};
              p.y_codes = codes;
              p.y_scales = scales;
              NB_ASSERT_OK(cuda::add_rms_norm(p, ctx()));
            } else {
              RmsNormParams p{d_x.as<float>(), d_w.as<float>(), y, rows, dim, 1e-5f, act};
              p.y_codes = codes;
              p.y_scales = scales;
              NB_ASSERT_OK(cuda::rms_norm(p, ctx()));
            }
            y_bytes->resize(n * eb);
            NB_ASSERT_OK(cuda::copy_to_host(y_bytes->data(), y, y_bytes->size(), ctx().stream()));
            NB_ASSERT_OK(ctx().synchronize());
          };
          std::vector<uint8_t> y_plain, y_coded;
          run(nullptr, nullptr, &y_plain);
          cuda::DeviceBuffer d_q = poisoned(n), d_d = poisoned(static_cast<size_t>(rows) * 4);
          run(d_q.as<int8_t>(), d_d.as<float>(), &y_coded);
          if (HasFatalFailure()) return;
          EXPECT_TRUE(y_coded == y_plain) << what << ": y changed when codes are made";
          expect_quantizer_codes(y_coded, rows, dim, act, d_q, d_d, what);  // the quantizer on the norm's output
        }
  // Codes without scales (or the reverse) is a caller's mistake, not a silent skip.
  cuda::DeviceBuffer d_x = upload(std::vector<float>(64, 1.f)), d_w = upload(std::vector<float>(64, 1.f));
  cuda::DeviceBuffer d_q = poisoned(64);
  RmsNormParams p{d_x.as<float>(), d_w.as<float>(), d_x.as<float>(), 1, 64, 1e-5f};
  p.y_codes = d_q.as<int8_t>();
  EXPECT_EQ(cuda::rms_norm(p, ctx()).code(), StatusCode::kInvalidArgument);
}

// SwiGLU feeding a W8A8 down_proj writes its output's codes too (SwigluParams::out_codes, one scale a
// row of `cols`): the bits quantize_act_int8 makes from that output, which must be what swiglu writes
// without codes. In place (out = gate) as well, as the model runs it.
TEST_F(CudaW8A8, SwigluCodesMatchQuantizer) {
  uint32_t s = 17000;
  for (int64_t rows : {int64_t{1}, int64_t{7}, int64_t{130}})
    for (int64_t cols : {int64_t{64}, int64_t{1000}, int64_t{11008}})
      for (DType act : kActs)
        for (bool in_place : {false, true}) {
          const std::string what = "rows " + std::to_string(rows) + " cols " + std::to_string(cols) + " act " +
                                   std::string(dtype_name(act)) + (in_place ? " in place" : "");
          const size_t n = static_cast<size_t>(rows * cols), eb = gpu_test::elem_bytes(act);
          const std::vector<float> g = make_acts(rows, cols, s++, act), u = make_acts(rows, cols, s++, act);
          cuda::DeviceBuffer d_u = upload_act(u, act);
          auto run = [&](int8_t* codes, float* scales, std::vector<uint8_t>* out_bytes) {
            cuda::DeviceBuffer d_g = upload_act(g, act), d_o = poisoned(n * eb);
            float* out = in_place ? d_g.as<float>() : d_o.as<float>();
            SwigluParams p{d_g.as<float>(), d_u.as<float>(), out, rows * cols, act};
            p.out_codes = codes;
            p.out_scales = scales;
            p.cols = cols;
            NB_ASSERT_OK(cuda::swiglu(p, ctx()));
            out_bytes->resize(n * eb);
            NB_ASSERT_OK(cuda::copy_to_host(out_bytes->data(), out, out_bytes->size(), ctx().stream()));
            NB_ASSERT_OK(ctx().synchronize());
          };
          std::vector<uint8_t> o_plain, o_coded;
          run(nullptr, nullptr, &o_plain);
          cuda::DeviceBuffer d_q = poisoned(n), d_d = poisoned(static_cast<size_t>(rows) * 4);
          run(d_q.as<int8_t>(), d_d.as<float>(), &o_coded);
          if (HasFatalFailure()) return;
          EXPECT_TRUE(o_coded == o_plain) << what << ": out changed when codes are made";
          expect_quantizer_codes(o_coded, rows, cols, act, d_q, d_d, what);
        }
  // Codes need their scales and rows that divide n.
  cuda::DeviceBuffer d_x = upload(std::vector<float>(64, 1.f)), d_q = poisoned(64), d_d = poisoned(16);
  SwigluParams p{d_x.as<float>(), d_x.as<float>(), d_x.as<float>(), 64};
  p.out_codes = d_q.as<int8_t>();
  p.cols = 64;
  EXPECT_EQ(cuda::swiglu(p, ctx()).code(), StatusCode::kInvalidArgument);
  p.out_scales = d_d.as<float>();
  p.cols = 48;
  EXPECT_EQ(cuda::swiglu(p, ctx()).code(), StatusCode::kInvalidArgument);
}

TEST_F(CudaW8A8, RejectsOtherWeights) {
  GroupQuant q;
  q.bits = 8;
  q.group_size = 64;  // grouped, not per channel
  q.symmetric = true;
  q.act_int8 = true;
  q.num_groups = 2;
  q.scales.assign(8, 0.01f);
  auto grouped = make_group_quant_tensor(std::vector<uint8_t>(4 * 128, 1), 4, 128, q, "grouped");
  ASSERT_TRUE(grouped.ok()) << grouped.status().to_string();
  EXPECT_EQ(cuda::w8a8_repack(*grouped).status().code(), StatusCode::kUnimplemented);
  q.group_size = -1;
  q.num_groups = 1;
  q.scales.assign(6, 0.01f);
  auto odd = make_group_quant_tensor(std::vector<uint8_t>(6 * 128, 1), 6, 128, q, "odd rows");
  ASSERT_TRUE(odd.ok()) << odd.status().to_string();
  EXPECT_EQ(cuda::w8a8_repack(*odd).status().code(), StatusCode::kUnimplemented);
  q.act_int8 = false;
  q.scales.assign(4, 0.01f);
  auto weight_only = make_group_quant_tensor(std::vector<uint8_t>(4 * 128, 1), 4, 128, q, "weight only");
  ASSERT_TRUE(weight_only.ok()) << weight_only.status().to_string();
  EXPECT_EQ(cuda::w8a8_repack(*weight_only).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nb
