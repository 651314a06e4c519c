// Quantized models on the GPU against the CPU forward (LlamaModel with --exact): the int8 / int4 KV
// cache (backend/kv_format.h, with its Hadamard rotation of q, k, v and of the attention output) and
// W8A8 weights (backend/cuda/w8a8.h) through model/cuda's CudaLlama.
//
// Each case prefills some sequences one at a time (the unfused layer, prefill attention), then runs
// decode steps (one token a sequence, all sequences in one batch: CUDA graphs with padded rows that
// write no KV) on the same fixed tokens on both sides, and compares every step's logits by relative
// L2 error. Which layer a decode step takes:
//   stories260K (hidden 172, not a multiple of 8)  -> the unfused layer (rope, kv_write, batch_attention)
//   the random tiny model (every width % 8 == 0), f16, one sequence -> the fused decode layer, whose
//     glue for int8/int4 pools is the unfused one (rope_kv_write / decode_attention read act-dtype
//     caches only)
//   W8A8 weights -> never fused (fused_weights_ok); a fused launch would fail the forward.
//
// Tolerances (numbers measured on the CPU, stories260K, 3 sequences, 24 decode steps; the GPU runs
// print theirs).
//   f32 activations: the GPU computes the CPU's f32 arithmetic in another order (~1e-6 relative) and
//     writes the same quantized bytes for the same inputs (kv_quant.cu, w8a8.cu: bit-exact kernels).
//     Inputs ~1e-6 apart change a code only within ~1e-6 of a rounding boundary. Emulated on the CPU
//     by scaling the norm weights by 1 +- 1e-6 (random): the logits move by < 1e-6 with the int8
//     cache, < 7e-5 with int4 (a scale/zero choice can flip), vs 4.8e-3 (int8) and 5.3e-2 (int4)
//     between the quantized and the f32 cache. Bounds 2e-4 (int8) and 5e-4 (int4); each case first
//     checks on the CPU that the format is 10x that visible (what a GPU ignoring the format or its
//     rotation would show).
//   W8A8, f32: one int8 activation code flipping moves the logits by up to ~6e-3, as much as the
//     whole activation quantization does (W8A8 vs the same codes weight-only: 6.8e-3), and a flip in
//     a prompt reaches every later step through the KV cache: a logits bound cannot tell them apart.
//     So 64 independent one-token sequences: with inputs 1e-6 apart, 63 of 64 rows stay within
//     1e-4 (10x apart: still 49 of 64), none beyond 8.3e-3; without the activation quantization no
//     row is within 1e-4. Checked: at least half the rows within 1e-4, every row within 3e-2.
//   f16 activations: every activation rounded to 11 bits (5e-4). The same emulation at 4.9e-4 moves
//     the logits by up to 6.7e-3 (int8 cache), 4.8e-2 (int4), 1.1e-2 (W8A8) on top of the f16 error
//     itself (stories260K's f16 bound: 3e-2, test_cuda_model.cpp). Bounds 5e-2 (int8, W8A8) and
//     1e-1 (int4): loose against the formats' own effect, so the f16/bf16 cases check the routing
//     (pools, graphs, the fused decode layer, bf16 kernels) — a wrong pool or rotation gives O(1)
//     errors — and the f32 cases the arithmetic. bf16 (8 bits): 8x the f16 rounding, bound 2e-1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "../cpp/tiny_model.h"
#include "engine/contiguous_kv.h"
#include "gpu_test_util.h"
#include "model/forward_backend.h"
#include "model/llama.h"
#include "model/weights.h"
#include "quant/qlinear.h"
#include "quant/quantize_model.h"

namespace nb {
namespace {

using gpu_test::model_path;

// Every step's logits: [step][row * vocab + v], rows = the step's sequences in order.
using StepLogits = std::vector<std::vector<float>>;

struct Steps {
  int64_t num_seqs = 3;
  int64_t decode_steps = 24;
  int64_t block_size = 16;
};

// Prefills num_seqs sequences (5 + 7 s tokens) one by one, then decodes them together; the tokens
// are fixed (not sampled), so both sides see the same inputs whatever they compute.
Result<StepLogits> run_steps(LlamaModel& m, KvCacheDType t, const Steps& st) {
  NB_RETURN_IF_ERROR(m.set_kv_cache_dtype(t));
  const int64_t vocab = m.config().vocab_size;
  const int64_t seq_blocks = (5 + 7 * st.num_seqs + st.decode_steps + st.block_size) / st.block_size + 1;
  NB_ASSIGN_OR_RETURN(KvStorage kv, KvStorage::create(m, st.num_seqs * seq_blocks, st.block_size));
  if (kv.pools().dtype != t) return internal_error("KV storage made in the wrong format");
  std::vector<int32_t> tables(static_cast<size_t>(st.num_seqs * seq_blocks));
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(tables.size() - 1 - i);  // scattered
  auto table = [&](int64_t s) { return std::span<const int32_t>(tables.data() + s * seq_blocks, seq_blocks); };
  StepLogits out;
  std::vector<int64_t> pos(static_cast<size_t>(st.num_seqs));
  for (int64_t s = 0; s < st.num_seqs; ++s) {
    std::vector<int32_t> ids = {1};
    for (int64_t i = 1; i < 5 + 7 * s; ++i) ids.push_back(static_cast<int32_t>((s * 97 + i * 7919 + 13) % vocab));
    std::vector<float> lg(static_cast<size_t>(vocab));
    NB_RETURN_IF_ERROR(m.forward(ForwardBatch::single(ids, 0, table(s)), kv.pools(), lg.data()));
    out.push_back(std::move(lg));
    pos[static_cast<size_t>(s)] = static_cast<int64_t>(ids.size());
  }
  for (int64_t step = 0; step < st.decode_steps; ++step) {
    std::vector<int32_t> toks;
    ForwardBatch b;
    for (int64_t s = 0; s < st.num_seqs; ++s) {
      toks.push_back(static_cast<int32_t>((step * 37 + s * 11 + 5) % vocab));
      b.seqs.push_back({1, pos[static_cast<size_t>(s)]++, table(s), true});
    }
    b.tokens = toks;
    std::vector<float> lg(static_cast<size_t>(st.num_seqs * vocab), NAN);
    NB_RETURN_IF_ERROR(m.forward(b, kv.pools(), lg.data()));
    out.push_back(std::move(lg));
  }
  return out;
}

// One forward of num_seqs one-token sequences (token 7919 s + 13, position 0): [num_seqs * vocab].
Result<std::vector<float>> one_token_rows(LlamaModel& m, int64_t num_seqs) {
  NB_RETURN_IF_ERROR(m.set_kv_cache_dtype(KvCacheDType::kF32));
  const int64_t vocab = m.config().vocab_size;
  NB_ASSIGN_OR_RETURN(KvStorage kv, KvStorage::create(m, num_seqs, 16));
  std::vector<int32_t> tables(static_cast<size_t>(num_seqs)), toks(static_cast<size_t>(num_seqs));
  ForwardBatch b;
  for (int64_t s = 0; s < num_seqs; ++s) {
    tables[static_cast<size_t>(s)] = static_cast<int32_t>(num_seqs - 1 - s);
    toks[static_cast<size_t>(s)] = static_cast<int32_t>((s * 7919 + 13) % vocab);
  }
  for (int64_t s = 0; s < num_seqs; ++s) b.seqs.push_back({1, 0, std::span<const int32_t>(tables.data() + s, 1), true});
  b.tokens = toks;
  std::vector<float> out(static_cast<size_t>(num_seqs * vocab), NAN);
  NB_RETURN_IF_ERROR(m.forward(b, kv.pools(), out.data()));
  return out;
}

struct Distance {
  double worst_step = 0;  // max over steps of ||a - b|| / ||b||
  double overall = 0;     // over all steps together
  bool finite = true;
};

Distance distance(const StepLogits& a, const StepLogits& b) {
  Distance d;
  double num = 0, den = 0;
  for (size_t s = 0; s < b.size(); ++s) {
    double ns = 0, ds = 0;
    for (size_t i = 0; i < b[s].size(); ++i) {
      d.finite = d.finite && std::isfinite(a[s][i]);
      const double e = static_cast<double>(a[s][i]) - b[s][i];
      ns += e * e;
      ds += static_cast<double>(b[s][i]) * b[s][i];
    }
    num += ns;
    den += ds;
    d.worst_step = std::max(d.worst_step, std::sqrt(ns / std::max(ds, 1e-30)));
  }
  d.overall = std::sqrt(num / std::max(den, 1e-30));
  return d;
}

// A CPU model (exact f32 matmuls) of w.
Result<std::unique_ptr<LlamaModel>> cpu_model(ModelWeights w) {
  NB_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> m, LlamaModel::create(std::move(w), 4, 64));
  m->set_exact_matmul(true);
  return m;
}

// A model of w forwarded on the GPU in `dtype`.
Result<std::unique_ptr<LlamaModel>> gpu_model(ModelWeights w, const std::string& dtype) {
  NB_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> m, LlamaModel::create(std::move(w), 1, 64));
  CudaForwardOptions o;
  o.dtype = dtype;
  o.max_batch_tokens = 64;
  o.max_seqs = 64;
  NB_ASSIGN_OR_RETURN(std::unique_ptr<ForwardBackend> be, create_cuda_forward(m->weights(), o));
  m->set_backend(std::move(be));
  return m;
}

// W8A8 weights of w as `nibble quantize --method rtn --wbits 8 --group-size -1 --sym --act-int8`
// makes them (act_int8 false: the same codes run weight-only, with f32 activations).
Result<ModelWeights> w8a8_weights(ModelWeights w, bool act_int8) {
  quant::QuantizeOptions o;
  o.method = quant::QuantMethod::kRtn;
  o.spec = quant::QuantSpec{8, -1, true};
  o.act_int8 = true;
  NB_ASSIGN_OR_RETURN(quant::QuantizedModel qm, quant::quantize_model(std::move(w), nullptr, o, nullptr, nullptr));
  qm.act_int8 = act_int8;
  return quant::runtime_weights(qm);
}

Result<ModelWeights> load_weights(const std::string& file) {
  NB_ASSIGN_OR_RETURN(LoadedModel m, load_model(model_path(file)));
  return std::move(m.weights);
}

class CudaModelQuant : public gpu_test::CudaTest {};

struct Case {
  KvCacheDType kv = KvCacheDType::kInt8;
  std::string dtype = "f32";
  double bound = 1e-3;     // on the worst step's relative L2 error, GPU vs CPU in the same format
  double min_visible = 0;  // when > 0: the CPU's quantized-vs-unquantized distance must exceed it
  Steps steps;
};

// weights(true) makes the model under test, a fresh copy each call (models own their weights);
// for W8A8 models weights(false) is the twin whose codes run weight-only.
using MakeWeights = Result<ModelWeights> (*)(bool act_int8);

void check(const char* what, MakeWeights weights, const Case& c) {
  NB_ASSERT_OK_AND_ASSIGN(ModelWeights wc, weights(true));
  NB_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> cpu, cpu_model(std::move(wc)));
  NB_ASSERT_OK_AND_ASSIGN(StepLogits want, run_steps(*cpu, c.kv, c.steps));
  if (c.min_visible > 0) {  // the same model with the f32 cache
    NB_ASSERT_OK_AND_ASSIGN(StepLogits plain, run_steps(*cpu, KvCacheDType::kF32, c.steps));
    const Distance vis = distance(want, plain);
    std::printf("  %s: CPU quantized vs unquantized %.2e (worst step %.2e)\n", what, vis.overall, vis.worst_step);
    ASSERT_GT(vis.overall, c.min_visible) << what << ": the quantization is not visible enough for this test to fail";
  }
  NB_ASSERT_OK_AND_ASSIGN(ModelWeights wg, weights(true));
  NB_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> gpu, gpu_model(std::move(wg), c.dtype));
  NB_ASSERT_OK_AND_ASSIGN(StepLogits got, run_steps(*gpu, c.kv, c.steps));
  ASSERT_EQ(got.size(), want.size());
  const Distance d = distance(got, want);
  std::printf("  %s: GPU vs CPU worst step %.2e, overall %.2e (bound %.1e)\n", what, d.worst_step, d.overall, c.bound);
  ASSERT_TRUE(d.finite) << what;
  EXPECT_LT(d.worst_step, c.bound) << what;
}

// The models (MakeWeights): as loaded / made, or their W8A8 quantization.
Result<ModelWeights> stories(bool) { return load_weights("stories260K.bin"); }
Result<ModelWeights> stories_w8a8(bool act_int8) {
  NB_ASSIGN_OR_RETURN(ModelWeights w, load_weights("stories260K.bin"));
  return w8a8_weights(std::move(w), act_int8);
}
Result<ModelWeights> smollm2(bool) { return load_weights("SmolLM2-135M-Instruct.Q4_1.gguf"); }
// Random weights, every width a multiple of 8 (the fused decode layer takes them in f16/bf16).
Result<ModelWeights> tiny(bool) { return testing::tiny_weights(7, 256); }
Result<ModelWeights> tiny_w8a8(bool act_int8) { return w8a8_weights(testing::tiny_weights(7, 256), act_int8); }

#define NB_SKIP_WITHOUT(file)                                                                        \
  if (!std::filesystem::exists(model_path(file))) GTEST_SKIP() << model_path(file) << " not present"

// ---- KV cache int8 / int4 ----

TEST_F(CudaModelQuant, Stories260kKvInt8F32MatchesCpu) {
  NB_SKIP_WITHOUT("stories260K.bin");
  check("stories260K kv int8 f32", stories, {KvCacheDType::kInt8, "f32", 2e-4, 2e-3, {}});
}
TEST_F(CudaModelQuant, Stories260kKvInt4F32MatchesCpu) {
  NB_SKIP_WITHOUT("stories260K.bin");
  check("stories260K kv int4 f32", stories, {KvCacheDType::kInt4, "f32", 5e-4, 5e-3, {}});
}
TEST_F(CudaModelQuant, Stories260kKvInt8F16CloseToCpu) {
  NB_SKIP_WITHOUT("stories260K.bin");
  check("stories260K kv int8 f16", stories, {KvCacheDType::kInt8, "f16", 5e-2, 0, {}});
}
TEST_F(CudaModelQuant, Stories260kKvInt4F16CloseToCpu) {
  NB_SKIP_WITHOUT("stories260K.bin");
  check("stories260K kv int4 f16", stories, {KvCacheDType::kInt4, "f16", 1e-1, 0, {}});
}
TEST_F(CudaModelQuant, Stories260kKvInt8Bf16CloseToCpu) {
  NB_SKIP_WITHOUT("stories260K.bin");
  check("stories260K kv int8 bf16", stories, {KvCacheDType::kInt8, "bf16", 2e-1, 0, {}});
}
// One sequence in f16: the fused decode layer with the int8/int4 glue.
TEST_F(CudaModelQuant, TinyFusedDecodeKvInt8F16CloseToCpu) {
  check("tiny kv int8 f16 fused", tiny, {KvCacheDType::kInt8, "f16", 5e-2, 0, {1, 40, 16}});
}
TEST_F(CudaModelQuant, TinyFusedDecodeKvInt4F16CloseToCpu) {
  check("tiny kv int4 f16 fused", tiny, {KvCacheDType::kInt4, "f16", 1e-1, 0, {1, 40, 16}});
}
// Two sequences (still fused: up to two rows) with block size 1 (every token its own block).
TEST_F(CudaModelQuant, TinyFusedDecodeKvInt8TwoSeqsBlock1) {
  check("tiny kv int8 f16 fused x2 bs1", tiny, {KvCacheDType::kInt8, "f16", 5e-2, 0, {2, 24, 1}});
}
TEST_F(CudaModelQuant, SmolLM2KvInt8F16CloseToCpu) {
  NB_SKIP_WITHOUT("SmolLM2-135M-Instruct.Q4_1.gguf");
  check("SmolLM2 kv int8 f16", smollm2, {KvCacheDType::kInt8, "f16", 5e-2, 0, {1, 16, 16}});
}

// ---- W4A16 weights ----

// SmolLM2 as `nibble quantize --method rtn --wbits 4 --group-size 64` makes it: on the GPU in f16 the
// linears stay packed (upload_w4) and one-sequence decode steps run the persistent step's W4 stages
// (head_dim 64, every width a multiple of 64); prompts run the W4A16 matmul. The weights are the same
// codes on both sides; the GPU multiplies by them rounded once to f16 (2^-11), below the f16
// activations' own error (Tolerances).
Result<ModelWeights> smollm2_w4(bool) {
  NB_ASSIGN_OR_RETURN(ModelWeights w, load_weights("SmolLM2-135M-Instruct.Q4_1.gguf"));
  quant::QuantizeOptions o;
  o.method = quant::QuantMethod::kRtn;
  o.spec = quant::QuantSpec{4, 64, false};
  NB_ASSIGN_OR_RETURN(quant::QuantizedModel qm, quant::quantize_model(std::move(w), nullptr, o, nullptr, nullptr));
  return quant::runtime_weights(qm);
}
TEST_F(CudaModelQuant, SmolLM2W4F16DecodeStepCloseToCpu) {
  NB_SKIP_WITHOUT("SmolLM2-135M-Instruct.Q4_1.gguf");
  check("SmolLM2 W4 g64 f16", smollm2_w4, {KvCacheDType::kF32, "f16", 5e-2, 0, {1, 24, 16}});
}

// ---- W8A8 weights ----

// 64 one-token sequences in one decode-shaped batch (graph, W8A8 GEMMs of 64 rows): see Tolerances.
TEST_F(CudaModelQuant, Stories260kW8A8F32MatchesCpuRowByRow) {
  NB_SKIP_WITHOUT("stories260K.bin");
  const int64_t num_seqs = 64;
  NB_ASSERT_OK_AND_ASSIGN(ModelWeights wc, stories_w8a8(true));
  NB_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> cpu, cpu_model(std::move(wc)));
  NB_ASSERT_OK_AND_ASSIGN(std::vector<float> want, one_token_rows(*cpu, num_seqs));
  NB_ASSERT_OK_AND_ASSIGN(ModelWeights wt, stories_w8a8(false));
  NB_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> twin, cpu_model(std::move(wt)));
  NB_ASSERT_OK_AND_ASSIGN(std::vector<float> weight_only, one_token_rows(*twin, num_seqs));
  NB_ASSERT_OK_AND_ASSIGN(ModelWeights wg, stories_w8a8(true));
  NB_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> gpu, gpu_model(std::move(wg), "f32"));
  NB_ASSERT_OK_AND_ASSIGN(std::vector<float> got, one_token_rows(*gpu, num_seqs));
  const int64_t vocab = cpu->config().vocab_size;
  auto row_errors = [&](const std::vector<float>& a) {
    std::vector<double> e;
    for (int64_t s = 0; s < num_seqs; ++s) {
      const StepLogits ra = {std::vector<float>(a.begin() + s * vocab, a.begin() + (s + 1) * vocab)};
      const StepLogits rw = {std::vector<float>(want.begin() + s * vocab, want.begin() + (s + 1) * vocab)};
      const Distance d = distance(ra, rw);
      e.push_back(d.finite ? d.overall : INFINITY);
    }
    return e;
  };
  auto within = [](const std::vector<double>& e, double b) { return std::count_if(e.begin(), e.end(), [&](double x) { return x < b; }); };
  const std::vector<double> twin_e = row_errors(weight_only), gpu_e = row_errors(got);
  std::printf("  stories260K W8A8 f32: rows within 1e-4 of the CPU: GPU %td / %lld (weight-only twin %td), worst GPU row %.2e\n",
              within(gpu_e, 1e-4), static_cast<long long>(num_seqs), within(twin_e, 1e-4),
              *std::max_element(gpu_e.begin(), gpu_e.end()));
  ASSERT_LT(within(twin_e, 1e-4), num_seqs / 4) << "the activation quantization is not visible enough for this test to fail";
  EXPECT_GE(within(gpu_e, 1e-4), num_seqs / 2);
  EXPECT_EQ(within(gpu_e, 3e-2), num_seqs);
}
TEST_F(CudaModelQuant, Stories260kW8A8F16CloseToCpu) {
  NB_SKIP_WITHOUT("stories260K.bin");
  check("stories260K W8A8 f16", stories_w8a8, {KvCacheDType::kF32, "f16", 5e-2, 0, {}});
}
// W8A8 with an int8 cache, widths the fused layer would take: the unfused layer must run it.
TEST_F(CudaModelQuant, TinyW8A8KvInt8F16CloseToCpu) {
  check("tiny W8A8 kv int8 f16", tiny_w8a8, {KvCacheDType::kInt8, "f16", 5e-2, 0, {1, 24, 16}});
}

// A W8A8 weight the int8 GEMM cannot take (in features not a multiple of 4) is refused at upload
// with the constraint named, not dequantized (that would be another arithmetic than the CPU's).
TEST_F(CudaModelQuant, RejectsW8A8WeightsTheKernelCannotTake) {
  ModelWeights w = testing::tiny_weights(7, 64);
  w.config.hidden_dim = 130;  // in features of w_down: not a multiple of 4
  for (LayerWeights& l : w.layers) {
    std::mt19937 rng(3);
    l.w_gate = testing::random_tensor({130, w.config.dim}, rng, 0.15f);
    l.w_up = testing::random_tensor({130, w.config.dim}, rng, 0.15f);
    l.w_down = testing::random_tensor({w.config.dim, 130}, rng, 0.15f);
  }
  NB_ASSERT_OK_AND_ASSIGN(ModelWeights q, w8a8_weights(std::move(w), true));
  CudaForwardOptions o;
  o.dtype = "f16";
  Result<std::unique_ptr<ForwardBackend>> be = create_cuda_forward(q, o);
  ASSERT_FALSE(be.ok());
  EXPECT_NE(be.status().message().find("multiples of 4"), std::string::npos) << be.status().to_string();
}

// set_kv_cache_dtype on a GPU model: int8 / int4 accepted, f16 (a CPU format) refused with advice.
TEST_F(CudaModelQuant, KvCacheDtypeOnGpu) {
  NB_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> m, gpu_model(testing::tiny_weights(7, 64), "f16"));
  NB_ASSERT_OK(m->set_kv_cache_dtype(KvCacheDType::kInt8));
  EXPECT_EQ(m->kv_block_format(16).block_bytes(), 16 * 2 * (16 + 2));  // [16 tokens, 2 heads] x (16 codes + scale)
  NB_ASSERT_OK(m->set_kv_cache_dtype(KvCacheDType::kInt4));
  EXPECT_EQ(m->kv_block_format(16).block_bytes(), 16 * 2 * (8 + 2 + 2));
  NB_ASSERT_OK(m->set_kv_cache_dtype(KvCacheDType::kF32));
  EXPECT_EQ(m->kv_block_format(16).block_bytes(), 16 * 2 * 16 * 2);  // f16 elements
  const Status st = m->set_kv_cache_dtype(KvCacheDType::kF16);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("int8"), std::string::npos) << st.to_string();
}

}  // namespace
}  // namespace nb
