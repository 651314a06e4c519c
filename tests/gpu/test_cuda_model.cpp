// The whole model on the GPU against the CPU forward (model/cuda/llama_cuda.cpp vs LlamaModel on
// the CPU with --exact, i.e. f32 activations in every matmul).
//
// Models come from NIBBLE_GPU_MODELS (default gpu_carry/models under the source tree):
// stories260K.bin (llama2.c) and SmolLM2-135M-Instruct.Q4_1.gguf; a missing file skips its tests.
//
// Tolerances. f32 on the GPU computes the same f32 arithmetic as the CPU in another order (cuBLAS
// GEMM without TF32, f32 softmax): logits differ by ~1e-6 relative, so greedy decoding must give the
// same 256 tokens unless two logits tie within ~1e-5 (the test prints the margin if it fails), and
// every step's logits must agree to 1e-4 of their scale. f16 rounds every activation (2^-11
// relative) through each layer: logits agree to ~1e-2 relative (checked: relative L2 error < 3e-2);
// bf16 (2^-8) to ~5e-2 on SmolLM2's 30 layers (checked: < 1.2e-1, 8x the f16 bound's unit).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/contiguous_kv.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "engine/sampler.h"
#include "gpu_test_util.h"
#include "model/forward_backend.h"
#include "model/llama.h"
#include "model/weights.h"

namespace nb {
namespace {

using gpu_test::model_path;

struct Pair {
  std::unique_ptr<LlamaModel> cpu, gpu;
};

// Loads the model twice: once for the CPU (exact f32 matmuls), once forwarded on the GPU.
Result<Pair> load_pair(const std::string& path, const std::string& dtype, bool graphs = true,
                       int64_t max_batch_tokens = LlamaModel::kMaxChunkTokens) {
  Pair p;
  NB_ASSIGN_OR_RETURN(LoadedModel a, load_model(path));
  NB_ASSIGN_OR_RETURN(p.cpu, LlamaModel::create(std::move(a.weights), 4, max_batch_tokens));
  p.cpu->set_exact_matmul(true);
  NB_ASSIGN_OR_RETURN(LoadedModel b, load_model(path));
  NB_ASSIGN_OR_RETURN(p.gpu, LlamaModel::create(std::move(b.weights), 1, max_batch_tokens));
  CudaForwardOptions o;
  o.dtype = dtype;
  o.max_batch_tokens = max_batch_tokens;
  o.max_seqs = 64;
  o.cuda_graphs = graphs;
  NB_ASSIGN_OR_RETURN(std::unique_ptr<ForwardBackend> be, create_cuda_forward(p.gpu->weights(), o));
  p.gpu->set_backend(std::move(be));
  return p;
}

std::vector<int32_t> prompt_for(const LlamaModel& m) {
  std::vector<int32_t> ids = {1};
  const int32_t v = static_cast<int32_t>(m.config().vocab_size);
  for (int i = 0; i < 11; ++i) ids.push_back((i * 7919 + 13) % v);
  return ids;
}

class CudaModel : public gpu_test::CudaTest {};

// Greedy decoding of `steps` tokens on both; every step's logits compared.
void check_greedy(const std::string& file, int steps, const std::string& dtype, bool graphs) {
  const std::string path = model_path(file);
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present (see scripts/gpu.sh)";
  NB_ASSERT_OK_AND_ASSIGN(Pair p, load_pair(path, dtype, graphs));
  const int64_t cap = std::min<int64_t>(p.cpu->config().max_seq_len, 12 + steps + 1);
  SequenceRunner cpu(*p.cpu, cap), gpu(*p.gpu, cap);
  std::vector<int32_t> ctx = prompt_for(*p.cpu);
  const size_t vocab = static_cast<size_t>(p.cpu->config().vocab_size);
  double worst_rel = 0;
  for (int s = 0; s < steps; ++s) {
    NB_ASSERT_OK_AND_ASSIGN(std::span<const float> lc, cpu.evaluate(ctx));
    std::vector<float> want(lc.begin(), lc.end());
    NB_ASSERT_OK_AND_ASSIGN(std::span<const float> lg, gpu.evaluate(ctx));
    double num = 0, den = 0;
    for (size_t i = 0; i < vocab; ++i) {
      ASSERT_TRUE(std::isfinite(lg[i])) << "step " << s << " logit " << i;
      num += (lg[i] - want[i]) * (lg[i] - want[i]);
      den += want[i] * want[i];
    }
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    worst_rel = std::max(worst_rel, rel);
    const auto a_cpu = std::max_element(want.begin(), want.end()) - want.begin();
    const auto a_gpu = std::max_element(lg.begin(), lg.end()) - lg.begin();
    if (dtype == "f32") {
      ASSERT_LT(rel, 1e-4) << "step " << s;
      std::vector<float> sorted = want;
      std::nth_element(sorted.begin(), sorted.begin() + 1, sorted.end(), std::greater<>());
      ASSERT_EQ(a_cpu, a_gpu) << "greedy token differs at step " << s << " (CPU top-2 margin "
                              << sorted[0] - sorted[1] << ")";
    } else {
      // f16 keeps 11 significant bits, bf16 8: the same chain of roundings, 8x larger units for bf16.
      ASSERT_LT(rel, dtype == "bf16" ? 1.2e-1 : 3e-2) << "step " << s;
    }
    ctx.push_back(static_cast<int32_t>(a_cpu));  // both continue from the CPU's choice
  }
  std::printf("  %s %s graphs=%d: %d greedy steps identical, worst relative L2 logit error %.2e\n", file.c_str(),
              dtype.c_str(), graphs ? 1 : 0, steps, worst_rel);
}

TEST_F(CudaModel, Stories260kGreedy256MatchesCpuF32) { check_greedy("stories260K.bin", 256, "f32", true); }
TEST_F(CudaModel, Stories260kF16CloseToCpu) { check_greedy("stories260K.bin", 64, "f16", true); }
TEST_F(CudaModel, SmolLM2Greedy256MatchesCpuF32) {
  check_greedy("SmolLM2-135M-Instruct.Q4_1.gguf", 256, "f32", true);
}
TEST_F(CudaModel, SmolLM2Bf16CloseToCpu) { check_greedy("SmolLM2-135M-Instruct.Q4_1.gguf", 32, "bf16", false); }
// f16 decode with graphs: the fused decode path (fused linears, rope + KV write, decode attention,
// programmatic dependent launch inside the captured graph).
TEST_F(CudaModel, SmolLM2F16GraphsCloseToCpu) { check_greedy("SmolLM2-135M-Instruct.Q4_1.gguf", 64, "f16", true); }

// A speculative-verification shaped step (every sequence runs the same K + 1 tokens and wants all
// their logits) replays a CUDA graph with padded sequences; its logits match the CPU's, and a
// second step of the same shape (graph replay with new contents) too.
TEST_F(CudaModel, UniformMultiTokenStepsMatchCpu) {
  const std::string path = model_path("stories260K.bin");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  NB_ASSERT_OK_AND_ASSIGN(Pair p, load_pair(path, "f32", true, 64));
  const int64_t bs = 16, seq_blocks = 8, num_seqs = 3, q = 4;
  NB_ASSERT_OK_AND_ASSIGN(KvStorage kc, KvStorage::create(*p.cpu, num_seqs * seq_blocks, bs));
  NB_ASSERT_OK_AND_ASSIGN(KvStorage kg, KvStorage::create(*p.gpu, num_seqs * seq_blocks, bs));
  std::vector<int32_t> tables(static_cast<size_t>(num_seqs * seq_blocks));
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(tables.size() - 1 - i);  // scattered
  auto table = [&](int64_t s) { return std::span<const int32_t>(tables.data() + s * seq_blocks, seq_blocks); };
  const size_t vocab = static_cast<size_t>(p.cpu->config().vocab_size);
  std::vector<int64_t> pos(num_seqs);
  for (int64_t s = 0; s < num_seqs; ++s) {  // prefill each sequence alone (eager path)
    std::vector<int32_t> ids;
    for (int64_t i = 0; i < 5 + 7 * s; ++i) ids.push_back(static_cast<int32_t>((s * 97 + i * 13 + 1) % 512));
    std::vector<float> lc(vocab), lg(vocab);
    NB_ASSERT_OK(p.cpu->forward(ForwardBatch::single(ids, 0, table(s)), kc.pools(), lc.data()));
    NB_ASSERT_OK(p.gpu->forward(ForwardBatch::single(ids, 0, table(s)), kg.pools(), lg.data()));
    pos[static_cast<size_t>(s)] = static_cast<int64_t>(ids.size());
  }
  for (int round = 0; round < 2; ++round) {
    std::vector<int32_t> toks;
    ForwardBatch b;
    for (int64_t s = 0; s < num_seqs; ++s) {
      for (int64_t j = 0; j < q; ++j) toks.push_back(static_cast<int32_t>((round * 31 + s * 7 + j * 3 + 2) % 512));
      b.seqs.push_back({q, pos[static_cast<size_t>(s)], table(s), true, /*all_logits=*/true});
    }
    b.tokens = toks;
    std::vector<float> lc(static_cast<size_t>(num_seqs * q) * vocab), lg(lc.size(), NAN);
    NB_ASSERT_OK(p.cpu->forward(b, kc.pools(), lc.data()));
    NB_ASSERT_OK(p.gpu->forward(b, kg.pools(), lg.data()));
    double num = 0, den = 0;
    for (size_t i = 0; i < lc.size(); ++i) {
      ASSERT_TRUE(std::isfinite(lg[i])) << "round " << round << " element " << i;
      num += (lg[i] - lc[i]) * (lg[i] - lc[i]);
      den += lc[i] * lc[i];
    }
    EXPECT_LT(std::sqrt(num / den), 1e-4) << "round " << round;
    for (int64_t s = 0; s < num_seqs; ++s) pos[static_cast<size_t>(s)] += q;
  }
}

// The serving engine on the GPU (paged KV in device memory, batched decode through the captured
// graphs with padding, chunked prefill, prefix cache) gives each request the tokens the CPU's
// single-sequence greedy run gives.
TEST_F(CudaModel, EngineOnGpuMatchesCpuGreedy) {
  const std::string path = model_path("stories260K.bin");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  NB_ASSERT_OK_AND_ASSIGN(Pair p, load_pair(path, "f32", true, 64));
  EngineConfig ec;
  ec.kv_cache_bytes = 64ll << 20;
  ec.max_num_seqs = 24;
  ec.max_batched_tokens = 64;  // forces chunked prefill of the longer prompts
  NB_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::create(*p.gpu, ec));
  const int kRequests = 19;  // odd count: graph buckets get padded rows
  std::vector<std::vector<int32_t>> prompts, want(kRequests), got(kRequests);
  for (int r = 0; r < kRequests; ++r) {
    std::vector<int32_t> ids = {1};
    for (int i = 0; i < 5 + 9 * r; ++i) ids.push_back((r * 31 + i * 17 + 3) % 512);
    if (r % 3 == 2) ids = prompts[static_cast<size_t>(r - 1)];  // identical prompts: prefix-cache hits
    prompts.push_back(ids);
  }
  std::vector<int> done(kRequests, 0);
  std::mutex mu;
  std::condition_variable cv;
  for (int r = 0; r < kRequests; ++r) {
    GenerationRequest req;
    req.prompt = prompts[static_cast<size_t>(r)];
    req.sampling.temperature = 0;
    req.max_tokens = 24 + r;
    NB_ASSERT_OK_AND_ASSIGN(RequestId id, engine->submit(req, [&, r](const RequestOutput& o) {
      std::lock_guard<std::mutex> lock(mu);
      auto& v = got[static_cast<size_t>(r)];
      v.insert(v.end(), o.tokens.begin(), o.tokens.end());
      if (o.finished) {
        done[static_cast<size_t>(r)] = 1;
        cv.notify_all();
      }
    }));
    (void)id;
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(120), [&] {
      return std::count(done.begin(), done.end(), 1) == kRequests;
    }));
  }
  for (int r = 0; r < kRequests; ++r) {
    SequenceRunner cpu(*p.cpu, 512);
    NB_ASSERT_OK_AND_ASSIGN(Sampler greedy, Sampler::create([] {
      SamplingParams s;
      s.temperature = 0;
      return s;
    }()));
    GenerateOptions opts;
    opts.max_new_tokens = 24 + r;
    auto& w = want[static_cast<size_t>(r)];
    NB_ASSERT_OK_AND_ASSIGN(GenerateStats st, cpu.generate(prompts[static_cast<size_t>(r)], greedy, opts, [&](int32_t t) {
      w.push_back(t);
      return true;
    }));
    (void)st;
    EXPECT_EQ(got[static_cast<size_t>(r)], w) << "request " << r;
  }
}

}  // namespace
}  // namespace nb
