// The engine with a quantized KV cache (--kv-cache-dtype f16/int8/int4): continuous batching, the
// prefix cache and its copy-on-write block copies (which must carry the blocks' scales) leave greedy
// outputs equal to one sequence at a time on a cache of the same format; and the block budget a
// --kv-cache-memory buys in each format (INT4 >= 3.5x the tokens of FP16).
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <cstring>
#include <random>
#include <span>
#include <utility>

#include "engine/contiguous_kv.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "engine_test_util.h"
#include "tiny_model.h"

namespace nb {
namespace {

using testing::Collector;
using testing::greedy_alone;

const KvCacheDType kQuantized[] = {KvCacheDType::kF16, KvCacheDType::kInt8, KvCacheDType::kInt4};

// Requests sharing prefixes (prefix-cache hits; one prompt repeated whole after it finished, so its
// blocks come back from the cache), under a budget tight enough to preempt.
TEST(EngineKv, QuantizedCacheMatchesOneSequenceAtATime) {
  for (KvCacheDType t : kQuantized) {
    auto model = std::move(LlamaModel::create(testing::tiny_weights(), 2, 512).value());
    ASSERT_TRUE(model->set_kv_cache_dtype(t).ok());
    std::mt19937 rng(11);
    std::vector<std::vector<int32_t>> prompts;
    std::vector<int64_t> lens;
    for (int i = 0; i < 14; ++i) {
      std::vector<int32_t> p(static_cast<size_t>(5 + rng() % 90));
      for (auto& x : p) x = static_cast<int32_t>(rng() % 512);
      if (i % 3 == 1) std::copy(prompts[0].begin(), prompts[0].begin() + std::min(p.size(), prompts[0].size()), p.begin());
      prompts.push_back(p);
      lens.push_back(6 + static_cast<int64_t>(rng() % 30));
    }
    std::vector<int32_t> whole(48);  // three full blocks, cached whole by the first request
    for (auto& x : whole) x = static_cast<int32_t>(rng() % 512);
    EngineConfig cfg;
    cfg.max_batched_tokens = 64;
    cfg.kv_cache_bytes = 20 * KvStorage::block_bytes(*model, cfg.block_size);
    auto engine = std::move(Engine::create(*model, cfg).value());
    Collector col;
    auto submit = [&](const std::vector<int32_t>& p, int64_t n) {
      GenerationRequest r;
      r.prompt = p;
      r.max_tokens = n;
      r.sampling.temperature = 0;
      return engine->submit(r, col.callback()).value();
    };
    // The repeated prompt first alone, so its blocks are in the prefix cache when the repeat comes.
    const RequestId first = submit(whole, 5);
    ASSERT_TRUE(col.wait_all(1));
    std::vector<RequestId> ids;
    for (size_t i = 0; i < prompts.size(); ++i) ids.push_back(submit(prompts[i], lens[i]));
    const RequestId repeat = submit(whole, 5);
    ASSERT_TRUE(col.wait_all(ids.size() + 2));
    const auto want_whole = greedy_alone(*model, whole, 5);
    EXPECT_EQ(col.tokens[first], want_whole) << kv_cache_dtype_name(t);
    EXPECT_EQ(col.tokens[repeat], want_whole) << kv_cache_dtype_name(t);
    for (size_t i = 0; i < ids.size(); ++i) {
      EXPECT_EQ(col.tokens[ids[i]], greedy_alone(*model, prompts[i], lens[i])) << kv_cache_dtype_name(t) << " request " << i;
    }
    const EngineStats st = engine->stats();
    EXPECT_EQ(st.num_blocks_used, 0);
    EXPECT_GT(st.prefix_cache_hits, 0);
    EXPECT_GT(st.num_preemptions, 0) << "the budget must be tight enough to preempt";
  }
}

// Copy-on-write copies whole blocks: after KvStorage::copy_block, attending through the copy gives
// the same logits bit for bit, which needs the block's scales and zeros copied with its values.
TEST(EngineKv, BlockCopyCarriesScales) {
  for (KvCacheDType t : {KvCacheDType::kF32, KvCacheDType::kInt8, KvCacheDType::kInt4}) {
    auto model = std::move(LlamaModel::create(testing::tiny_weights(), 2, 64).value());
    ASSERT_TRUE(model->set_kv_cache_dtype(t).ok());
    KvStorage kv = std::move(KvStorage::create(*model, 4, 16).value());
    std::mt19937 rng(3);
    std::vector<int32_t> prompt(20);
    for (auto& x : prompt) x = static_cast<int32_t>(rng() % 512);
    const int32_t table_a[2] = {1, 3}, table_b[2] = {2, 3};
    const auto vocab = static_cast<size_t>(model->config().vocab_size);
    std::vector<float> scratch(vocab), want(vocab), got(vocab);
    // The prompt's first 16 tokens into block 1 (the rest into block 3), then block 1 -> block 2.
    ASSERT_TRUE(model->forward(ForwardBatch::single(prompt, 0, table_a), kv.pools(), scratch.data()).ok());
    ASSERT_TRUE(kv.copy_block(*model, 1, 2).ok());
    const int32_t next = 7;
    ASSERT_TRUE(model->forward(ForwardBatch::single({&next, 1}, 20, table_a), kv.pools(), want.data()).ok());
    ASSERT_TRUE(model->forward(ForwardBatch::single({&next, 1}, 20, table_b), kv.pools(), got.data()).ok());
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), vocab * sizeof(float))) << kv_cache_dtype_name(t);
    EXPECT_FALSE(kv.copy_block(*model, 1, 4).ok());
  }
}

// The model's whole path with a quantized cache (rotation of q/k/v, quantize on write, dequantize in
// attention, rotation of the output back) stays close to the f32 cache: relative L2 error of every
// position's logits, far below the ~100% a missing or doubled rotation gives.
TEST(EngineKv, QuantizedCacheLogitsStayCloseToF32) {
  auto model = std::move(LlamaModel::create(testing::tiny_weights(), 2, 64).value());
  std::mt19937 rng(9);
  std::vector<int32_t> prompt(48);
  for (auto& x : prompt) x = static_cast<int32_t>(rng() % 512);
  const auto vocab = static_cast<size_t>(model->config().vocab_size);
  auto logits_with = [&](KvCacheDType t) {
    EXPECT_TRUE(model->set_kv_cache_dtype(t).ok());
    ContiguousKvCache kv = std::move(ContiguousKvCache::create(*model, 64).value());
    std::vector<float> out(prompt.size() * vocab);
    // Two chunks, so the second attends over K/V the first wrote (read back through the format).
    const std::span<const int32_t> all(prompt);
    EXPECT_TRUE(model->forward(ForwardBatch::single(all.first(20), 0, kv.block_table(), true), kv.pools(), out.data()).ok());
    EXPECT_TRUE(model->forward(ForwardBatch::single(all.subspan(20), 20, kv.block_table(), true), kv.pools(),
                               out.data() + 20 * vocab).ok());
    return out;
  };
  const auto base = logits_with(KvCacheDType::kF32);
  for (auto [t, bound] : {std::pair{KvCacheDType::kF16, 1e-3}, {KvCacheDType::kInt8, 2e-2}, {KvCacheDType::kInt4, 0.2}}) {
    const auto got = logits_with(t);
    double err = 0, norm = 0;
    for (size_t i = 0; i < base.size(); ++i) {
      err += (double(got[i]) - base[i]) * (double(got[i]) - base[i]);
      norm += double(base[i]) * base[i];
    }
    const double rel = std::sqrt(err / norm);
    std::printf("%s KV: relative logits error vs f32 %.2e\n", kv_cache_dtype_name(t), rel);
    EXPECT_LT(rel, bound) << kv_cache_dtype_name(t);
    EXPECT_GT(rel, 0.0) << kv_cache_dtype_name(t) << " must differ from f32 at all (it is quantized)";
  }
}

// Tokens a KV budget holds, from the engine's own block math (Engine::create divides the budget by
// KvStorage::block_bytes), for a model with head_dim 64 like SmolLM2: per token and KV head f16
// stores 128 bytes, int8 64 + 2 (scale), int4 32 + 2 + 2 (scale, zero) => 3.56x f16's tokens.
TEST(EngineKv, Int4HoldsAtLeast3p5xTheTokensOfF16) {
  ModelWeights w = testing::tiny_weights();
  ModelConfig& c = w.config;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 64;
  std::mt19937 rng(5);
  for (LayerWeights& L : w.layers) {
    L.wq = testing::random_tensor({c.num_heads * c.head_dim, c.dim}, rng, 0.1f);
    L.wk = testing::random_tensor({c.num_kv_heads * c.head_dim, c.dim}, rng, 0.1f);
    L.wv = testing::random_tensor({c.num_kv_heads * c.head_dim, c.dim}, rng, 0.1f);
    L.wo = testing::random_tensor({c.dim, c.num_heads * c.head_dim}, rng, 0.1f);
  }
  auto model = std::move(LlamaModel::create(std::move(w), 1, 64).value());
  const int64_t budget = 64ll << 20;
  std::map<KvCacheDType, int64_t> tokens;
  for (KvCacheDType t : {KvCacheDType::kF32, KvCacheDType::kF16, KvCacheDType::kInt8, KvCacheDType::kInt4}) {
    ASSERT_TRUE(model->set_kv_cache_dtype(t).ok());
    EngineConfig cfg;
    cfg.kv_cache_bytes = budget;
    cfg.max_batched_tokens = 64;
    auto engine = std::move(Engine::create(*model, cfg).value());
    tokens[t] = engine->stats().num_blocks_total * cfg.block_size;
    // Bytes per token: 2 (K, V) x layers x KV heads x bytes per token-head.
    const int64_t per_token_head = t == KvCacheDType::kF32 ? 256 : t == KvCacheDType::kF16 ? 128 : t == KvCacheDType::kInt8 ? 66 : 36;
    EXPECT_EQ(tokens[t], budget / (2 * c.num_layers * c.num_kv_heads * per_token_head * cfg.block_size) * cfg.block_size)
        << kv_cache_dtype_name(t);
  }
  const double ratio = static_cast<double>(tokens[KvCacheDType::kInt4]) / static_cast<double>(tokens[KvCacheDType::kF16]);
  std::printf("tokens in 64 MiB: f32 %lld, f16 %lld, int8 %lld, int4 %lld (int4 / f16 = %.3fx)\n",
              static_cast<long long>(tokens[KvCacheDType::kF32]), static_cast<long long>(tokens[KvCacheDType::kF16]),
              static_cast<long long>(tokens[KvCacheDType::kInt8]), static_cast<long long>(tokens[KvCacheDType::kInt4]),
              ratio);
  EXPECT_GE(ratio, 3.5);
}

}  // namespace
}  // namespace nb
