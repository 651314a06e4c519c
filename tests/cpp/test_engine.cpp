// Engine: continuous batching must not change greedy outputs (vs one sequence at a time), under
// memory pressure (preemption), static batching and the contiguous layout; cancellation frees
// blocks; a shared system prompt is stored and computed once.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "engine/engine.h"
#include "engine/generate.h"
#include "engine_test_util.h"
#include "tiny_model.h"

namespace nb {
namespace {

using testing::Collector;
using testing::greedy_alone;

struct Case {
  const char* name;
  int64_t kv_bytes;
  BatchingPolicy batching;
  KvLayout layout;
  int64_t budget;
};

class EngineGreedy : public ::testing::TestWithParam<Case> {};

TEST_P(EngineGreedy, MatchesOneSequenceAtATime) {
  const Case c = GetParam();
  auto model = std::move(LlamaModel::create(testing::tiny_weights(), 2, 512).value());
  std::mt19937 rng(7);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int64_t> lens;
  for (int i = 0; i < 33; ++i) {
    std::vector<int32_t> p(5 + rng() % 120);
    for (auto& t : p) t = static_cast<int32_t>(rng() % 512);
    if (i % 3 == 0 && i > 0) std::copy(prompts[0].begin(), prompts[0].begin() + std::min<size_t>(p.size(), prompts[0].size()), p.begin());
    prompts.push_back(p);
    lens.push_back(8 + static_cast<int64_t>(rng() % 40));
  }
  EngineConfig cfg;
  cfg.kv_cache_bytes = c.kv_bytes;
  cfg.batching = c.batching;
  cfg.kv_layout = c.layout;
  cfg.max_batched_tokens = c.budget;
  auto engine = std::move(Engine::create(*model, cfg).value());
  Collector col;
  std::vector<RequestId> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest r;
    r.prompt = prompts[i];
    r.max_tokens = lens[i];
    r.sampling.temperature = 0;
    ids.push_back(engine->submit(r, col.callback()).value());
  }
  ASSERT_TRUE(col.wait_all(ids.size()));
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(col.finished[ids[i]], FinishReason::kLength);
    EXPECT_EQ(col.tokens[ids[i]], greedy_alone(*model, prompts[i], lens[i])) << "request " << i;
  }
  const EngineStats st = engine->stats();
  EXPECT_EQ(st.num_blocks_used, 0);
  EXPECT_EQ(st.num_running + st.num_waiting, 0);
  if (std::string(c.name) == "tight") {
    EXPECT_GT(st.num_preemptions, 0) << "the tight case must exercise preemption";
  }
}

// One block of the tiny model: 2 layers x 2 (K, V) x 16 tokens x 32 floats x 4 bytes = 8 KiB.
INSTANTIATE_TEST_SUITE_P(Engine, EngineGreedy,
                         ::testing::Values(Case{"roomy", 64 << 20, BatchingPolicy::kContinuous, KvLayout::kPaged, 512},
                                           Case{"tight", 24 * 8192, BatchingPolicy::kContinuous, KvLayout::kPaged, 64},
                                           Case{"static", 64 << 20, BatchingPolicy::kStatic, KvLayout::kPaged, 512},
                                           Case{"contiguous", 64 << 20, BatchingPolicy::kContinuous,
                                                KvLayout::kContiguous, 128}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Engine, CancelFreesBlocks) {
  auto model = std::move(LlamaModel::create(testing::tiny_weights(), 2, 512).value());
  auto engine = std::move(Engine::create(*model, EngineConfig{}).value());
  Collector col;
  GenerationRequest r;
  r.prompt = std::vector<int32_t>(100, 5);
  r.max_tokens = 3000;
  // Cancel from the output callback once 5 tokens have arrived: deterministic however the machine is loaded.
  Engine* e = engine.get();
  int64_t seen = 0;
  OutputCallback collect = col.callback();
  const RequestId id = engine->submit(r, [&, e](const RequestOutput& o) {
    collect(o);
    seen += static_cast<int64_t>(o.tokens.size());
    if (seen == 5) e->cancel(o.id);
  }).value();
  ASSERT_TRUE(col.wait_all(1));
  EXPECT_EQ(col.finished[id], FinishReason::kCancelled);
  // The cancel is applied at the start of the next step: at most one more token.
  EXPECT_GE(col.tokens[id].size(), 5u);
  EXPECT_LE(col.tokens[id].size(), 6u);
  EXPECT_EQ(engine->stats().num_blocks_used, 0);
}

// The step counters split prefill from decode: one 100-token prompt under a 32-token budget runs
// ceil(100 / 32) = 4 steps with prompt tokens (the last of them samples the first token), then
// max_tokens - 1 decode-only steps; each kind's forward time is positive only when it ran. The
// counts are settled before the final output reaches the callback, so they can be read at once.
TEST(Engine, StepCountersSplitPrefillFromDecode) {
  auto model = std::move(LlamaModel::create(testing::tiny_weights(), 2, 512).value());
  EngineConfig cfg;
  cfg.max_batched_tokens = 32;
  auto engine = std::move(Engine::create(*model, cfg).value());
  Collector col;
  GenerationRequest r;
  r.prompt = std::vector<int32_t>(100, 7);
  r.max_tokens = 6;
  r.sampling.temperature = 0;
  engine->submit(r, col.callback()).value();
  ASSERT_TRUE(col.wait_all(1));
  const EngineStats st = engine->stats();
  EXPECT_EQ(st.num_prefill_steps, 4);
  EXPECT_EQ(st.num_steps, 4 + 5);
  EXPECT_GT(st.prefill_forward_seconds, 0.0);
  EXPECT_GT(st.decode_forward_seconds, 0.0);
  EXPECT_GE(st.step_host_seconds, 0.0);
}

TEST(Engine, RejectsRequestsThatCanNeverRun) {
  auto model = std::move(LlamaModel::create(testing::tiny_weights(1, 256), 2, 512).value());
  auto engine = std::move(Engine::create(*model, EngineConfig{}).value());
  GenerationRequest r;
  EXPECT_EQ(engine->submit(r, nullptr).status().code(), StatusCode::kInvalidArgument);  // empty prompt
  r.prompt = std::vector<int32_t>(200, 1);
  r.max_tokens = 100;  // 300 > context 256
  EXPECT_EQ(engine->submit(r, nullptr).status().code(), StatusCode::kOutOfRange);
  r.prompt = {1, 2, 9999};
  r.max_tokens = 1;
  EXPECT_EQ(engine->submit(r, nullptr).status().code(), StatusCode::kInvalidArgument);
}

// 16 requests sharing a 512-token system prompt, arriving together: KV blocks claimed and prefill
// tokens computed <= 1/8 of the same requests without sharing. The per-step token budget (512)
// makes the first request's prefix land in the cache before the others are admitted.
void check_shared_system_prompt(LlamaModel* model_ptr) {
  auto& model = model_ptr;
  std::mt19937 rng(3);
  std::vector<int32_t> system(512);
  const auto vocab = static_cast<uint32_t>(model->config().vocab_size);
  for (auto& t : system) t = static_cast<int32_t>(rng() % vocab);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 16; ++i) {
    prompts.push_back(system);
    for (int j = 0; j < 16; ++j) prompts.back().push_back(static_cast<int32_t>(rng() % vocab));
  }
  int64_t blocks[2] = {0, 0}, prefill[2] = {0, 0};
  std::vector<int32_t> outputs[2];
  for (int sharing = 0; sharing < 2; ++sharing) {
    EngineConfig cfg;
    cfg.enable_prefix_cache = sharing == 1;
    cfg.max_batched_tokens = 512;
    auto engine = std::move(Engine::create(*model, cfg).value());
    Collector col;
    std::vector<RequestId> ids;
    for (const auto& p : prompts) {
      GenerationRequest r;
      r.prompt = p;
      r.max_tokens = 4;
      r.sampling.temperature = 0;
      ids.push_back(engine->submit(r, col.callback()).value());
    }
    ASSERT_TRUE(col.wait_all(16, std::chrono::seconds(300)));
    for (RequestId id : ids) outputs[sharing].insert(outputs[sharing].end(), col.tokens[id].begin(), col.tokens[id].end());
    const EngineStats st = engine->stats();
    blocks[sharing] = st.num_blocks_allocated;
    prefill[sharing] = st.num_prompt_tokens_computed;
  }
  EXPECT_EQ(prefill[0], 16 * 528);
  EXPECT_EQ(outputs[0], outputs[1]) << "sharing must not change what is generated";
  EXPECT_LE(prefill[1] * 8, prefill[0]) << prefill[1] << " vs " << prefill[0];
  EXPECT_LE(blocks[1] * 8, blocks[0]) << blocks[1] << " vs " << blocks[0];
  std::printf("shared 512-token system prompt, 16 requests: KV blocks %lld vs %lld without sharing, "
              "prefill tokens %lld vs %lld\n",
              static_cast<long long>(blocks[1]), static_cast<long long>(blocks[0]),
              static_cast<long long>(prefill[1]), static_cast<long long>(prefill[0]));
}

TEST(Engine, SharedSystemPromptIsStoredAndComputedOnce) {
  auto model = std::move(LlamaModel::create(testing::tiny_weights(), 2, 512).value());
  check_shared_system_prompt(model.get());
}

// The same on the real SmolLM2-135M-Instruct (the model).
TEST(Engine, SharedSystemPromptSmolLM2) {
  auto loaded = load_model(std::string(NIBBLE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string() << " (run scripts/setup.sh)";
  auto model = std::move(LlamaModel::create(std::move(loaded->weights), 2, 512).value());
  check_shared_system_prompt(model.get());
}

}  // namespace
}  // namespace nb
