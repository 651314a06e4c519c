// Quantized weights at run time (kQGroup): the CPU matmul kernels (fast, portable, reference)
// against each other and against "dequantize, then f32 matmul"; the GPTQ / AutoAWQ / compressed-
// tensors packings; checkpoints written by save_quantized_model loading back with the same logits.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul_internal.h"
#include "core/group_quant.h"
#include "core/thread_pool.h"
#include "engine/contiguous_kv.h"
#include "format/quant_checkpoint.h"
#include "quant/checkpoint_writer.h"
#include "quant/qlinear.h"
#include "tiny_model.h"

namespace nb::quant {
namespace {

// Random codes, scales in [0.005, 0.02) (f16-exact when f16_scales), zero points anywhere in the
// code range; optional act-order g_idx (a random permutation of j / group_size).
QuantizedLinear random_linear(int64_t n, int64_t k, int bits, int64_t gs, bool sym, bool act_order, uint32_t seed,
                              bool f16_scales = false) {
  std::mt19937 rng(seed);
  QuantizedLinear l;
  l.bits = bits;
  l.group_size = gs;
  l.symmetric = sym;
  l.out_features = n;
  l.in_features = k;
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
  std::uniform_real_distribution<float> ud(0.005f, 0.02f);
  l.q.resize(static_cast<size_t>(n * k));
  for (auto& q : l.q) q = static_cast<uint8_t>(code(rng));
  l.scales.resize(static_cast<size_t>(n * l.num_groups()));
  for (auto& s : l.scales) s = f16_scales ? fp16_to_fp32(fp32_to_fp16(ud(rng))) : ud(rng);
  if (!sym) {
    l.zeros.resize(l.scales.size());
    for (auto& z : l.zeros) z = static_cast<float>(code(rng));
  }
  if (act_order) {
    l.g_idx.resize(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) l.g_idx[static_cast<size_t>(j)] = static_cast<int32_t>(j / gs);
    std::shuffle(l.g_idx.begin(), l.g_idx.end(), rng);
  }
  return l;
}

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

struct Case {
  int bits;
  int64_t gs;
  bool sym, act_order, act_int8;
  int64_t n, k;
};

class GroupMatmul : public ::testing::TestWithParam<Case> {};

// Weight-only: the fast kernel multiplies the bit-exact dequantized weights, so it differs from a
// double-precision dequantize-then-matmul only by f32 rounding of the sum: |dy| <= 2 k eps sum|w x|.
// W8A8: every kernel computes the same integer sums and the same f32 operations (bit-identical);
// against the f32 product on unquantized activations, each x_j moves by at most d_t / 2
// (d_t = absmax_t / 127), so |dy| <= (d_t / 2) sum_j |w_j| (+ f32 rounding).
TEST_P(GroupMatmul, FastPortableReferenceAndDequantized) {
  const Case c = GetParam();
  const QuantizedLinear l = random_linear(c.n, c.k, c.bits, c.gs, c.sym, c.act_order, 7u * static_cast<uint32_t>(c.k) + c.bits);
  ASSERT_TRUE(validate(l).ok());
  auto t = to_tensor(l, c.act_int8);
  ASSERT_TRUE(t.ok()) << t.status().message();
  const std::vector<float> w = dequantize(l);
  ThreadPool pool(2);
  for (int64_t m : {1, 3, 4, 9, 33}) {
    const std::vector<float> x = randn(static_cast<size_t>(m * c.k), static_cast<uint32_t>(m + c.k));
    std::vector<float> fast(static_cast<size_t>(m * c.n)), port(fast.size()), ref(fast.size());
    cpu::matmul({*t, x.data(), fast.data(), m}, pool);
    cpu::portable::matmul_group({*t, x.data(), port.data(), m}, pool);
    cpu::ref::matmul({*t, x.data(), ref.data(), m});
    // Batch invariance: each token's row is bit-identical to running that token alone.
    for (int64_t tok = 0; tok < m; tok += 2) {
      std::vector<float> one(static_cast<size_t>(c.n));
      cpu::matmul({*t, x.data() + tok * c.k, one.data(), 1}, pool);
      for (int64_t r = 0; r < c.n; ++r) ASSERT_EQ(one[static_cast<size_t>(r)], fast[static_cast<size_t>(tok * c.n + r)]) << "m=" << m;
    }
    for (int64_t tok = 0; tok < m; ++tok) {
      float amax = 0.f;
      for (int64_t j = 0; j < c.k; ++j) amax = std::max(amax, std::fabs(x[static_cast<size_t>(tok * c.k + j)]));
      for (int64_t r = 0; r < c.n; ++r) {
        double exact = 0.0, mag = 0.0, wabs = 0.0;
        for (int64_t j = 0; j < c.k; ++j) {
          const double wv = w[static_cast<size_t>(r * c.k + j)], xv = x[static_cast<size_t>(tok * c.k + j)];
          exact += wv * xv;
          mag += std::fabs(wv * xv);
          wabs += std::fabs(wv);
        }
        const size_t i = static_cast<size_t>(tok * c.n + r);
        const double round = 2.0 * static_cast<double>(c.k) * 1.2e-7 * mag + 1e-30;
        if (c.act_int8) {
          ASSERT_EQ(fast[i], ref[i]) << "m=" << m << " tok " << tok << " row " << r;
          ASSERT_EQ(port[i], ref[i]);
          const double bound = (amax / 127.0) / 2.0 * wabs * (1 + 1e-5) + round;
          ASSERT_LE(std::fabs(ref[i] - exact), bound) << "m=" << m << " tok " << tok << " row " << r;
        } else {
          ASSERT_NEAR(fast[i], exact, round) << "m=" << m << " tok " << tok << " row " << r;
          ASSERT_NEAR(port[i], exact, round);
          ASSERT_NEAR(ref[i], exact, round);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Kernels, GroupMatmul,
    ::testing::Values(Case{4, 32, false, false, false, 37, 128}, Case{4, 64, true, false, false, 16, 192},
                      Case{4, 64, false, true, false, 21, 128}, Case{3, 64, false, false, false, 19, 192},
                      Case{3, -1, true, false, false, 8, 96}, Case{8, -1, true, false, false, 24, 128},
                      Case{2, 16, false, false, false, 5, 48},
                      // W8A8: per channel (the VNNI path when k % 64 == 0), groups, asymmetric, odd k
                      Case{8, -1, true, false, true, 23, 192}, Case{8, -1, false, false, true, 17, 128},
                      Case{8, 32, true, false, true, 9, 96}, Case{8, -1, true, false, true, 7, 100},
                      Case{4, 64, false, true, true, 6, 128}));

// ---- packings ----

Tensor tensor_of(const qformat::PackedLinear& p, const std::string& suffix, std::vector<std::shared_ptr<void>>& keep) {
  for (const auto& a : p.arrays) {
    if (a.suffix != suffix) continue;
    auto bytes = std::make_shared<std::vector<uint8_t>>(a.bytes);
    keep.push_back(bytes);
    const DType dt = a.dtype == "I32" ? DType::kI32 : a.dtype == "I8" ? DType::kI8 : a.dtype == "F16" ? DType::kF16 : DType::kF32;
    return Tensor::view(bytes->data(), a.shape.data(), static_cast<int>(a.shape.size()), dt, bytes);
  }
  return Tensor();
}

// The unpacked weight equals the original exactly (scales are f16-exact where the layout stores f16).
void expect_same_linear(const Tensor& back, const QuantizedLinear& l) {
  auto b = from_tensor(back);
  ASSERT_TRUE(b.ok());
  const std::vector<float> w0 = dequantize(l), w1 = dequantize(*b);
  for (size_t i = 0; i < w0.size(); ++i) ASSERT_EQ(w1[i], w0[i]) << "element " << i;
  EXPECT_EQ(b->q, l.q);
}

// The norms that feed W8A8 linears can write y's int8 codes (RmsNormParams::y_codes): the
// reference and the fast rms_norm, and add_rms_norm, give exactly the row quantizer's codes and
// scales of the y each writes (row 0 all zero: d = 0, codes 0), and the same y as without them.
TEST(W8A8NormCodes, MatchTheRowQuantizerOfY) {
  const int64_t rows = 5, dim = 96;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 2.f);
  std::vector<float> x(static_cast<size_t>(rows * dim)), res(x.size()), w(static_cast<size_t>(dim));
  for (float& v : x) v = nd(rng);
  for (float& v : res) v = nd(rng);
  for (float& v : w) v = nd(rng);
  std::fill(x.begin(), x.begin() + dim, 0.f);
  std::fill(res.begin(), res.begin() + dim, 0.f);
  for (int op = 0; op < 3; ++op) {  // reference rms_norm, fast rms_norm, reference add_rms_norm
    std::vector<float> xa = x, xb = x, y0(x.size()), y1(x.size());
    std::vector<int8_t> codes(x.size(), 99);
    std::vector<float> scales(static_cast<size_t>(rows), -1.f);
    RmsNormParams p{xa.data(), w.data(), y0.data(), rows, dim, 1e-5f};
    AddRmsNormParams a{xa.data(), res.data(), w.data(), y0.data(), rows, dim, 1e-5f};
    if (op == 0) cpu::ref::rms_norm(p);
    if (op == 1) cpu::rms_norm(p);
    if (op == 2) cpu::ref::add_rms_norm(a);
    p.x = xb.data();
    p.y = a.y = y1.data();
    a.x = xb.data();
    p.y_codes = a.y_codes = codes.data();
    p.y_scales = a.y_scales = scales.data();
    if (op == 0) cpu::ref::rms_norm(p);
    if (op == 1) cpu::rms_norm(p);
    if (op == 2) cpu::ref::add_rms_norm(a);
    EXPECT_EQ(y0, y1) << "op " << op;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<int8_t> want(static_cast<size_t>(dim));
      const float d = cpu::quantize_act_int8_row(y1.data() + r * dim, dim, want.data());
      EXPECT_EQ(scales[static_cast<size_t>(r)], d) << "op " << op << " row " << r;
      EXPECT_TRUE(std::equal(want.begin(), want.end(), codes.begin() + r * dim)) << "op " << op << " row " << r;
    }
    EXPECT_EQ(scales[0], 0.f);
  }
}

// SwiGLU feeding a W8A8 down_proj writes its output's int8 codes too (SwigluParams::out_codes), one
// scale per row of `cols`: the row quantizer's codes of out as stored, with out itself unchanged.
TEST(W8A8SwigluCodes, MatchTheRowQuantizerOfOut) {
  const int64_t rows = 5, cols = 200;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<float> gate(static_cast<size_t>(rows * cols)), up(gate.size());
  for (float& v : gate) v = nd(rng);
  for (float& v : up) v = nd(rng);
  std::fill(up.begin() + cols, up.begin() + 2 * cols, 0.f);  // row 1 all zero: scale 0, codes 0
  for (int op = 0; op < 2; ++op) {  // reference, fast
    std::vector<float> out0(gate.size()), out1(gate.size());
    std::vector<int8_t> codes(gate.size(), 99);
    std::vector<float> scales(static_cast<size_t>(rows), -1.f);
    SwigluParams p{gate.data(), up.data(), out0.data(), rows * cols};
    op == 0 ? cpu::ref::swiglu(p) : cpu::swiglu(p);
    p.out = out1.data();
    p.out_codes = codes.data();
    p.out_scales = scales.data();
    p.cols = cols;
    op == 0 ? cpu::ref::swiglu(p) : cpu::swiglu(p);
    EXPECT_EQ(out0, out1) << "op " << op;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<int8_t> want(static_cast<size_t>(cols));
      const float d = cpu::quantize_act_int8_row(out1.data() + r * cols, cols, want.data());
      EXPECT_EQ(scales[static_cast<size_t>(r)], d) << "op " << op << " row " << r;
      EXPECT_TRUE(std::equal(want.begin(), want.end(), codes.begin() + r * cols)) << "op " << op << " row " << r;
    }
    EXPECT_EQ(scales[1], 0.f);
    EXPECT_GT(scales[0], 0.f);
  }
}

TEST(QuantFormats, BitStreamMatchesAutoGptqThreeBitLayout) {
  // AutoGPTQ's 3-bit pack: word0 = v0..v9 at 3i, v10's low 2 bits at 30..31; word1 = v10's bit 2 at
  // bit 0, v11..v20 at 3i+1, v21's bit 0 at 31; word2 = v21's bits 1..2 at 0..1, v22..v31 at 3i+2.
  std::vector<uint32_t> v(32);
  for (uint32_t i = 0; i < 32; ++i) v[i] = (i * 5 + 3) & 7;
  const std::vector<uint32_t> w = qformat::pack_bits(v, 3);
  ASSERT_EQ(w.size(), 3u);
  uint32_t w0 = 0, w1 = 0, w2 = 0;
  for (int i = 0; i < 10; ++i) w0 |= v[static_cast<size_t>(i)] << (3 * i);
  w0 |= v[10] << 30;
  w1 |= (v[10] >> 2) & 1;
  for (int i = 0; i < 10; ++i) w1 |= v[static_cast<size_t>(11 + i)] << (3 * i + 1);
  w1 |= v[21] << 31;
  w2 |= (v[21] >> 1) & 3;
  for (int i = 0; i < 10; ++i) w2 |= v[static_cast<size_t>(22 + i)] << (3 * i + 2);
  EXPECT_EQ(w[0], w0);
  EXPECT_EQ(w[1], w1);
  EXPECT_EQ(w[2], w2);
  for (int64_t i = 0; i < 32; ++i) EXPECT_EQ(qformat::unpack_bits(w.data(), i, 3), v[static_cast<size_t>(i)]);
}

TEST(QuantFormats, GptqAwqCompressedTensorsRoundTrip) {
  std::vector<std::shared_ptr<void>> keep;
  for (int bits : {2, 3, 4, 8}) {
    for (bool v2 : {false, true}) {
      QuantizedLinear l = random_linear(64, 128, bits, 32, false, bits == 4, 11u + static_cast<uint32_t>(bits), true);
      if (!v2) for (auto& z : l.zeros) z = std::max(z, 1.f);  // v1 stores zero - 1
      auto t = to_tensor(l, false);
      ASSERT_TRUE(t.ok());
      auto p = qformat::pack_gptq(*t, v2);
      ASSERT_TRUE(p.ok()) << p.status().message();
      qformat::GptqSpec spec{bits, 32, false, v2};
      auto back = qformat::gptq_to_runtime(tensor_of(*p, "qweight", keep), tensor_of(*p, "qzeros", keep),
                                           tensor_of(*p, "scales", keep), tensor_of(*p, "g_idx", keep), spec, 64, 128, "x");
      ASSERT_TRUE(back.ok()) << back.status().message();
      expect_same_linear(*back, l);
    }
  }
  {
    const QuantizedLinear l = random_linear(64, 128, 4, 64, false, false, 5, true);
    auto t = to_tensor(l, false);
    auto p = qformat::pack_awq(*t);
    ASSERT_TRUE(p.ok());
    auto back = qformat::awq_to_runtime(tensor_of(*p, "qweight", keep), tensor_of(*p, "qzeros", keep),
                                        tensor_of(*p, "scales", keep), 64, 64, 128, "x");
    ASSERT_TRUE(back.ok()) << back.status().message();
    expect_same_linear(*back, l);
  }
  for (bool sym : {true, false}) {
    const QuantizedLinear l = random_linear(32, 64, 8, -1, sym, false, 9, false);
    auto t = to_tensor(l, true);
    auto p = qformat::pack_ct_int8(*t);
    ASSERT_TRUE(p.ok());
    auto back = qformat::ct_int8_to_runtime(tensor_of(*p, "weight", keep), tensor_of(*p, "weight_scale", keep),
                                            tensor_of(*p, "weight_zero_point", keep), true, 32, 64, "x");
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_TRUE(back->group_quant()->act_int8);
    expect_same_linear(*back, l);
  }
}

TEST(QuantFormats, HostileInputsGiveClearErrors) {
  std::vector<std::shared_ptr<void>> keep;
  QuantizedLinear l = random_linear(64, 128, 4, 32, false, false, 3, true);
  for (auto& z : l.zeros) z = std::max(z, 1.f);
  auto p = qformat::pack_gptq(*to_tensor(l, false), false);
  ASSERT_TRUE(p.ok());
  qformat::GptqSpec spec{4, 32, false, false};
  // Shapes that disagree with the configuration.
  auto r = qformat::gptq_to_runtime(tensor_of(*p, "qweight", keep), tensor_of(*p, "qzeros", keep), tensor_of(*p, "scales", keep),
                                    Tensor(), spec, 64, 256, "layer");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("does not match"), std::string::npos) << r.status().message();
  spec.group_size = 48;  // does not divide 128
  r = qformat::gptq_to_runtime(tensor_of(*p, "qweight", keep), tensor_of(*p, "qzeros", keep), tensor_of(*p, "scales", keep),
                               Tensor(), spec, 64, 128, "layer");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("does not divide"), std::string::npos) << r.status().message();
  // Out-of-range g_idx.
  spec.group_size = 32;
  Tensor gi = tensor_of(*p, "g_idx", keep);
  gi.ptr<int32_t>()[5] = 99;
  r = qformat::gptq_to_runtime(tensor_of(*p, "qweight", keep), tensor_of(*p, "qzeros", keep), tensor_of(*p, "scales", keep), gi,
                               spec, 64, 128, "layer");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("g_idx"), std::string::npos);
  // NaN / Inf scales are reported.
  QuantizedLinear bad = l;
  bad.scales[3] = std::nanf("");
  Status s = validate(bad, "layer 0 q_proj");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("NaN/Inf"), std::string::npos) << s.message();
  bad.scales[3] = INFINITY;
  EXPECT_FALSE(validate(bad).ok());
  // Group size that does not divide in_features.
  QuantizedLinear odd = random_linear(8, 100, 4, 32, true, false, 1);
  s = validate(odd);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("does not divide"), std::string::npos);
}

// ---- checkpoints ----

// Round-to-nearest quantization written inline (not src/quant/rtn.cpp): enough to produce codes.
QuantizedLinear quantize_simple(const Tensor& w, int bits, int64_t gs, bool sym) {
  QuantizedLinear l;
  l.bits = bits;
  l.group_size = gs;
  l.symmetric = sym;
  l.out_features = w.dim(0);
  l.in_features = w.dim(1);
  const int64_t k = l.in_features, g = l.num_groups(), size = gs < 0 ? k : gs;
  const int qmax = (1 << bits) - 1;
  l.q.resize(static_cast<size_t>(l.out_features * k));
  for (int64_t n = 0; n < l.out_features; ++n) {
    const float* row = w.ptr<float>() + n * k;
    for (int64_t gi = 0; gi < g; ++gi) {
      float lo = 0.f, hi = 0.f;
      for (int64_t j = gi * size; j < (gi + 1) * size; ++j) { lo = std::min(lo, row[j]); hi = std::max(hi, row[j]); }
      float scale, zero;
      if (sym) {
        scale = std::max(std::fabs(lo), hi) / static_cast<float>(1 << (bits - 1));
        zero = static_cast<float>(1 << (bits - 1));
      } else {
        scale = (hi - lo) / static_cast<float>(qmax);
        zero = std::round(-lo / scale);
      }
      scale = fp16_to_fp32(fp32_to_fp16(scale));
      l.scales.push_back(scale);
      if (!sym) l.zeros.push_back(zero);
      for (int64_t j = gi * size; j < (gi + 1) * size; ++j) {
        l.q[static_cast<size_t>(n * k + j)] = static_cast<uint8_t>(std::clamp(std::round(row[j] / scale) + zero, 0.f, static_cast<float>(qmax)));
      }
    }
  }
  return l;
}

std::vector<float> all_logits(ModelWeights w, const std::vector<int32_t>& ids) {
  auto m = LlamaModel::create(std::move(w), 1);
  EXPECT_TRUE(m.ok());
  auto kv = ContiguousKvCache::create(**m, static_cast<int64_t>(ids.size()));
  const int64_t vocab = (*m)->config().vocab_size;
  std::vector<float> out(ids.size() * static_cast<size_t>(vocab));
  const ForwardBatch b = ForwardBatch::single(std::span<const int32_t>(ids), 0, kv->block_table(), true);
  EXPECT_TRUE((*m)->forward(b, kv->pools(), out.data()).ok());
  return out;
}

struct SaveCase {
  std::string method;
  int bits;
  int64_t gs;
  bool sym, act_int8;
};
class SaveLoad : public ::testing::TestWithParam<SaveCase> {};

// A model quantized in memory, written, and loaded back computes the same function. The loaded
// directory has HF rotate_half RoPE (the tiny model is interleaved, so q/k rows were permuted):
// the same products summed in a different order inside attention, hence a tolerance of f32 rounding.
TEST_P(SaveLoad, LoadsBackWithTheSameLogits) {
  const SaveCase c = GetParam();
  LoadedModel src;
  src.weights = testing::tiny_weights(3, 64);
  QuantizedModel qm;
  qm.weights = src.weights;
  qm.method = c.method;
  qm.act_int8 = c.act_int8;
  for (const LayerWeights& lw : src.weights.layers) {
    std::array<QuantizedLinear, kNumLinearKinds> layer;
    for (int k = 0; k < kNumLinearKinds; ++k) layer[static_cast<size_t>(k)] = quantize_simple(linear_of(lw, static_cast<LinearKind>(k)), c.bits, c.gs, c.sym);
    qm.layers.push_back(std::move(layer));
  }
  // Non-quantized tensors are stored as f16: round them first so both sides use the same values.
  auto round16 = [](Tensor& t) { for (int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = fp16_to_fp32(fp32_to_fp16(t.ptr<float>()[i])); };
  round16(qm.weights.tok_embeddings);
  round16(qm.weights.final_norm);
  for (LayerWeights& lw : qm.weights.layers) { round16(lw.attn_norm); round16(lw.ffn_norm); }
  char tmpl[] = "/tmp/nb_qsave_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  ASSERT_TRUE(save_quantized_model(qm, src, dir).ok());
  auto loaded = load_model(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  EXPECT_EQ(loaded->weights.layers[1].w_down.dtype(), DType::kQGroup);
  EXPECT_EQ(loaded->weights.layers[1].w_down.group_quant()->act_int8, c.act_int8);
  auto rw = runtime_weights(qm);
  ASSERT_TRUE(rw.ok());
  const std::vector<int32_t> ids = {1, 17, 300, 42, 5, 511, 256, 0, 99};
  const std::vector<float> a = all_logits(std::move(*rw), ids), b = all_logits(std::move(loaded->weights), ids);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 2e-3 + 1e-4 * std::fabs(a[i])) << i;
  std::system(("rm -rf " + dir).c_str());
}

INSTANTIATE_TEST_SUITE_P(Layouts, SaveLoad,
                         ::testing::Values(SaveCase{"gptq", 4, 32, false, false}, SaveCase{"rtn", 3, 32, true, false},
                                           SaveCase{"gptq", 4, -1, false, false}, SaveCase{"awq", 4, 32, false, false},
                                           SaveCase{"smoothquant", 8, -1, true, true}));

}  // namespace
}  // namespace nb::quant
