// Speculative decoding through the engine: greedy output must be token-identical to plain greedy
// decoding (one sequence at a time) for every drafter (n-gram, a separate draft model, the target's
// truncated self-draft), on random tiny models and on SmolLM2 / stories260K; stop tokens and
// max_tokens inside an accepted run truncate; preemption and cancellation leak no blocks.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>

#include "engine/engine.h"
#include "engine/generate.h"
#include "engine/spec/drafter.h"
#include "engine_test_util.h"
#include "tiny_model.h"

namespace nb {
namespace {

using Outputs = testing::Collector;
using testing::greedy_alone;

// Prompts that make copying worthwhile: a random stretch repeated, plus a random tail.
std::vector<std::vector<int32_t>> make_prompts(int n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> base(4 + rng() % 20);
    for (auto& t : base) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
    std::vector<int32_t> p = base;
    p.insert(p.end(), base.begin(), base.end());
    for (int j = 0; j < static_cast<int>(rng() % 6); ++j) p.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab)));
    prompts.push_back(p);
  }
  return prompts;
}

struct SpecRun {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<FinishReason> reasons;
  EngineStats stats;
};

SpecRun run_engine(LlamaModel& m, const EngineConfig& cfg, const std::vector<std::vector<int32_t>>& prompts,
                   int64_t max_tokens, const std::vector<int32_t>& stop_ids = {}) {
  auto engine = std::move(Engine::create(m, cfg).value());
  Outputs col;
  std::vector<RequestId> ids;
  for (const auto& p : prompts) {
    GenerationRequest r;
    r.prompt = p;
    r.max_tokens = max_tokens;
    r.sampling.temperature = 0;
    r.stop_ids = stop_ids;
    ids.push_back(engine->submit(r, col.callback()).value());
  }
  EXPECT_TRUE(col.wait_all(ids.size()));
  SpecRun out;
  for (RequestId id : ids) {
    out.tokens.push_back(col.tokens[id]);
    out.reasons.push_back(col.finished[id]);
  }
  out.stats = engine->stats();
  return out;
}

enum class Kind { kNgram, kDraftModel, kSelf };

struct DrafterCase {
  const char* name;
  Kind kind;
  int64_t k;
  int64_t kv_bytes;  // target's; small values force preemption
  int64_t budget;
  bool adaptive = false;
};

class SpecEngineGreedy : public ::testing::TestWithParam<DrafterCase> {};

TEST_P(SpecEngineGreedy, MatchesPlainGreedy) {
  const DrafterCase c = GetParam();
  auto target = std::move(LlamaModel::create(testing::tiny_weights(1), 2, 512).value());
  std::unique_ptr<LlamaModel> draft_model;
  EngineConfig cfg;
  cfg.kv_cache_bytes = c.kv_bytes;
  cfg.max_batched_tokens = c.budget;
  cfg.num_speculative_tokens = c.k;
  cfg.speculative_max_running = 1000;  // always on here
  cfg.adaptive_speculative_tokens = c.adaptive;
  if (c.kind == Kind::kNgram) {
    cfg.drafter = std::move(spec::make_ngram_drafter({}).value());
  } else {
    ModelWeights w = c.kind == Kind::kSelf ? spec::truncate_layers(target->weights(), 1).value() : testing::tiny_weights(2);
    draft_model = std::move(LlamaModel::create(std::move(w), 1, 512).value());
    cfg.drafter = std::move(spec::make_model_drafter(*draft_model, 512, {}).value());
  }
  const auto prompts = make_prompts(12, 512, 5);
  const int64_t max_tokens = 40;
  const SpecRun r = run_engine(*target, cfg, prompts, max_tokens);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(r.tokens[i], greedy_alone(*target, prompts[i], max_tokens)) << "request " << i;
    EXPECT_EQ(r.reasons[i], FinishReason::kLength);
  }
  EXPECT_GT(r.stats.num_spec_steps, 0);
  EXPECT_GT(r.stats.num_accepted_tokens, 0) << "no draft was accepted: the multi-token path went untested";
  EXPECT_LE(r.stats.num_accepted_tokens, r.stats.num_draft_tokens);
  if (c.adaptive) {  // rejections lowered K for some steps
    EXPECT_LT(r.stats.num_draft_tokens, c.k * r.stats.num_spec_steps);
  }
  EXPECT_EQ(r.stats.num_blocks_used, 0);
  if (std::string(c.name).find("tight") != std::string::npos) {
    EXPECT_GT(r.stats.num_preemptions, 0) << "the tight case must exercise preemption";
  }
}

// One block of the tiny model: 2 layers x 2 (K, V) x 16 tokens x 32 floats x 4 bytes = 8 KiB.
INSTANTIATE_TEST_SUITE_P(
    Spec, SpecEngineGreedy,
    ::testing::Values(DrafterCase{"ngram_k4", Kind::kNgram, 4, 64 << 20, 512},
                      DrafterCase{"ngram_k8_tight", Kind::kNgram, 8, 20 * 8192, 64},
                      DrafterCase{"draft_model_k3", Kind::kDraftModel, 3, 64 << 20, 512},
                      DrafterCase{"self_k5", Kind::kSelf, 5, 64 << 20, 512},
                      DrafterCase{"self_k4_tight", Kind::kSelf, 4, 20 * 8192, 48},
                      DrafterCase{"ngram_adaptive_k8", Kind::kNgram, 8, 64 << 20, 512, true},
                      DrafterCase{"draft_model_adaptive_k6_tight", Kind::kDraftModel, 6, 20 * 8192, 64, true}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(SpecEngine, StopAndMaxTokensInsideAcceptedRuns) {
  auto target = std::move(LlamaModel::create(testing::tiny_weights(1), 2, 512).value());
  EngineConfig cfg;
  cfg.num_speculative_tokens = 8;
  cfg.drafter = std::move(spec::make_ngram_drafter({}).value());
  const auto prompts = make_prompts(8, 512, 9);
  // max_tokens not a multiple of anything K-related: runs of accepted drafts cross it.
  for (int64_t max_tokens : {1, 2, 7, 13}) {
    const SpecRun r = run_engine(*target, cfg, prompts, max_tokens);
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(r.tokens[i], greedy_alone(*target, prompts[i], max_tokens)) << max_tokens << " request " << i;
    }
    EXPECT_EQ(r.stats.num_blocks_used, 0);
  }
  // A stop id taken from inside each greedy continuation (its 6th token): output stops before it.
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<int32_t> plain = greedy_alone(*target, prompts[i], 30);
    const std::vector<int32_t> stop = {plain[5]};
    const SpecRun r = run_engine(*target, cfg, {prompts[i]}, 30, stop);
    EXPECT_EQ(r.tokens[0], greedy_alone(*target, prompts[i], 30, stop)) << "request " << i;
    EXPECT_EQ(r.reasons[0], FinishReason::kStop);
    EXPECT_LE(r.tokens[0].size(), 5u);
  }
}

TEST(SpecEngine, CancelWithDraftsFreesBlocksInBothCaches) {
  auto target = std::move(LlamaModel::create(testing::tiny_weights(1), 2, 512).value());
  auto draft = std::move(LlamaModel::create(spec::truncate_layers(target->weights(), 1).value(), 1, 512).value());
  EngineConfig cfg;
  cfg.num_speculative_tokens = 6;
  cfg.drafter = std::move(spec::make_model_drafter(*draft, 512, {}).value());
  auto engine = std::move(Engine::create(*target, cfg).value());
  Outputs col;
  Engine* e = engine.get();
  OutputCallback collect = col.callback();
  int64_t seen = 0;
  GenerationRequest r;
  r.prompt = std::vector<int32_t>(60, 7);
  r.max_tokens = 2000;
  r.sampling.temperature = 0;
  const RequestId id = engine->submit(r, [&, e](const RequestOutput& o) {
    collect(o);
    seen += static_cast<int64_t>(o.tokens.size());
    if (seen >= 20 && !o.finished) e->cancel(o.id);
  }).value();
  ASSERT_TRUE(col.wait_all(1));
  EXPECT_EQ(col.finished[id], FinishReason::kCancelled);
  EXPECT_EQ(engine->stats().num_blocks_used, 0);
  // The draft's pool is released too: a new request can use the whole draft cache again, and the
  // greedy output is still the plain one.
  const auto prompts = make_prompts(3, 512, 21);
  Outputs col2;
  std::vector<RequestId> ids;
  for (const auto& p : prompts) {
    GenerationRequest q;
    q.prompt = p;
    q.max_tokens = 20;
    q.sampling.temperature = 0;
    ids.push_back(engine->submit(q, col2.callback()).value());
  }
  ASSERT_TRUE(col2.wait_all(ids.size()));
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(col2.tokens[ids[i]], greedy_alone(*target, prompts[i], 20));
  EXPECT_EQ(engine->stats().num_blocks_used, 0);
}

TEST(SpecEngine, PerRequestOffAndBatchThreshold) {
  auto target = std::move(LlamaModel::create(testing::tiny_weights(1), 2, 512).value());
  const auto prompts = make_prompts(6, 512, 3);
  EngineConfig cfg;
  cfg.drafter = std::move(spec::make_ngram_drafter({}).value());
  cfg.speculative_max_running = 0;  // more than 0 sequences always run: never speculates
  SpecRun r = run_engine(*target, cfg, prompts, 16);
  EXPECT_EQ(r.stats.num_spec_steps, 0);
  // Per request: off.
  cfg.speculative_max_running = 100;
  auto engine = std::move(Engine::create(*target, cfg).value());
  Outputs col;
  GenerationRequest q;
  q.prompt = prompts[0];
  q.max_tokens = 16;
  q.sampling.temperature = 0;
  q.speculative = false;
  const RequestId id = engine->submit(q, col.callback()).value();
  ASSERT_TRUE(col.wait_all(1));
  EXPECT_EQ(engine->stats().num_spec_steps, 0);
  EXPECT_EQ(col.last[id].num_draft_tokens, 0);
  EXPECT_EQ(col.tokens[id], greedy_alone(*target, prompts[0], 16));
}

TEST(SpecEngine, DraftModelVocabMustMatch) {
  auto draft = std::move(LlamaModel::create(testing::tiny_weights(2), 1, 64).value());
  Result<std::unique_ptr<spec::Drafter>> d = spec::make_model_drafter(*draft, 513, {});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("vocabulary"), std::string::npos);
  auto target = std::move(LlamaModel::create(testing::tiny_weights(1), 1, 64).value());
  EXPECT_FALSE(spec::truncate_layers(target->weights(), 0).ok());
  EXPECT_FALSE(spec::truncate_layers(target->weights(), 3).ok());
  ModelWeights self = spec::truncate_layers(target->weights(), 1).value();
  EXPECT_EQ(self.layers.size(), 1u);
  // Views, not copies: the same memory as the target's.
  EXPECT_EQ(self.layers[0].wq.data(), target->weights().layers[0].wq.data());
  EXPECT_EQ(self.output.data(), target->weights().output.data());
}

}  // namespace
}  // namespace nb
