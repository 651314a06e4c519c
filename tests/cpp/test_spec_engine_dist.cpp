// Model-level check of speculative sampling through the engine: with a deliberately poor draft
// model (another random model), the generated tokens 2 and 3 of 100,000 seeded requests (token 1
// comes from the prefill step; the next step verifies a draft) must follow the target's warped
// distribution, computed exactly from the target's logits: chi-square p > 0.01, at temperature 1
// and with top-p 0.9. Vocabulary of 8 so that every cell is well populated.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>

#include "chi_square.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "engine/spec/drafter.h"
#include "tiny_model.h"

namespace nb {
namespace {

constexpr int kVocab = 8;

ModelWeights small_vocab_weights(uint32_t seed) {
  ModelWeights w = testing::tiny_weights(seed, 64);
  std::mt19937 rng(seed + 100);
  w.config.vocab_size = kVocab;
  w.tok_embeddings = testing::random_tensor({kVocab, w.config.dim}, rng, 0.2f);
  w.output = w.tok_embeddings;
  return w;
}

// The target's warped next-token distribution after `context`.
std::vector<float> target_dist(LlamaModel& m, const std::vector<int32_t>& context, const SamplingParams& sp) {
  SequenceRunner runner(m, 64);
  std::span<const float> logits = runner.evaluate(context).value();
  Sampler s = std::move(Sampler::create(sp).value());
  std::vector<float> p(kVocab);
  EXPECT_TRUE(s.distribution(logits, TokenHistory{context, context.size()}, p).ok());
  return p;
}

class SpecEngineDistribution : public ::testing::TestWithParam<float> {};

TEST_P(SpecEngineDistribution, TokensAfterTheFirstFollowTheTarget) {
  auto target = std::move(LlamaModel::create(small_vocab_weights(1), 1, 512).value());
  auto draft = std::move(LlamaModel::create(small_vocab_weights(2), 1, 512).value());
  SamplingParams sp;
  sp.temperature = 1.0f;
  sp.top_p = GetParam();
  const std::vector<int32_t> prompt = {1, 5, 2};

  // Exact probability of (t2, t3), marginalised over t1.
  std::vector<double> joint(kVocab * kVocab, 0.0);
  const std::vector<float> p1 = target_dist(*target, prompt, sp);
  for (int a = 0; a < kVocab; ++a) {
    if (p1[a] == 0.0f) continue;
    std::vector<int32_t> ctx = prompt;
    ctx.push_back(a);
    const std::vector<float> p2 = target_dist(*target, ctx, sp);
    for (int b = 0; b < kVocab; ++b) {
      if (p2[b] == 0.0f) continue;
      ctx.push_back(b);
      const std::vector<float> p3 = target_dist(*target, ctx, sp);
      ctx.pop_back();
      for (int c = 0; c < kVocab; ++c) joint[b * kVocab + c] += static_cast<double>(p1[a]) * p2[b] * p3[c];
    }
  }

  EngineConfig cfg;
  cfg.max_batched_tokens = 512;
  cfg.kv_cache_bytes = 64 << 20;
  cfg.num_speculative_tokens = 3;
  cfg.speculative_max_running = 1 << 20;
  cfg.drafter = std::move(spec::make_model_drafter(*draft, kVocab, {}).value());
  auto engine = std::move(Engine::create(*target, cfg).value());
  constexpr int kRequests = 100000;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int64_t> counts(kVocab * kVocab, 0);
  int finished = 0;
  std::atomic<int64_t> accepted{0};
  for (int i = 0; i < kRequests; ++i) {
    GenerationRequest r;
    r.prompt = prompt;
    r.max_tokens = 3;  // token 1 from prefill; one verification step with 1 draft emits 2 or 3
    r.sampling = sp;
    r.sampling.seed = static_cast<uint64_t>(i) + 1;
    auto tokens = std::make_shared<std::vector<int32_t>>();
    ASSERT_TRUE(engine->submit(r, [&, tokens](const RequestOutput& o) {
      tokens->insert(tokens->end(), o.tokens.begin(), o.tokens.end());
      if (!o.finished) return;
      accepted += o.num_accepted_tokens;
      std::lock_guard<std::mutex> lock(mu);
      if (tokens->size() == 3) ++counts[(*tokens)[1] * kVocab + (*tokens)[2]];
      ++finished;
      cv.notify_all();
    }).ok());
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(600), [&] { return finished == kRequests; }));
  }
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  EXPECT_EQ(n, kRequests);
  // Cells expected below 5 are merged into one, as the chi-square approximation needs.
  std::vector<int64_t> obs;
  std::vector<double> probs;
  int64_t small_obs = 0;
  double small_p = 0.0;
  for (int i = 0; i < kVocab * kVocab; ++i) {
    if (joint[i] * kRequests >= 5.0 || joint[i] == 0.0) {
      obs.push_back(counts[i]);
      probs.push_back(joint[i]);
    } else {
      small_obs += counts[i];
      small_p += joint[i];
    }
  }
  if (small_p > 0.0) {
    obs.push_back(small_obs);
    probs.push_back(small_p);
  }
  const testing::ChiSquare chi = testing::chi_square_test(obs, probs);
  EXPECT_FALSE(chi.impossible_seen);
  EXPECT_GT(chi.p_value, 0.01) << "chi2 " << chi.stat << " df " << chi.df;
  RecordProperty("p_value", std::to_string(chi.p_value));
  RecordProperty("accepted", std::to_string(accepted.load()));
  if (sp.top_p < 1.0f) {  // top-p must actually remove tokens, or it would test nothing
    EXPECT_GT(std::count(joint.begin(), joint.end(), 0.0), 0);
  }
  EXPECT_GT(accepted.load(), kRequests / 20) << "the poor draft was never accepted: verification untested";
  EXPECT_EQ(engine->stats().num_blocks_used, 0);
}

INSTANTIATE_TEST_SUITE_P(Spec, SpecEngineDistribution, ::testing::Values(1.0f, 0.9f),
                         [](const auto& info) { return info.param == 1.0f ? std::string("temp1") : std::string("top_p09"); });

}  // namespace
}  // namespace nb
