// --gpu-memory-utilization on a real device: the KV pool the engine allocates for the CUDA model
// follows engine/kv/kv_budget.h's formula, and the device memory in use once the engine exists is
// utilization x total within one KV block (plus the driver's 2 MiB allocation granularity).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "engine/contiguous_kv.h"
#include "engine/engine.h"
#include "engine/kv/kv_budget.h"
#include "gpu_test_util.h"
#include "model/forward_backend.h"
#include "model/llama.h"
#include "model/weights.h"

namespace nb {
namespace {

using gpu_test::model_path;

class CudaKvBudget : public gpu_test::CudaTest {};

TEST_F(CudaKvBudget, EnginePoolFollowsUtilizationWithinOneBlock) {
  const std::string path = model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present (see scripts/gpu.sh)";
  NB_ASSERT_OK_AND_ASSIGN(LoadedModel loaded, load_model(path));
  NB_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> model, LlamaModel::create(std::move(loaded.weights), 1, 64));
  CudaForwardOptions o;
  o.max_batch_tokens = 64;
  o.max_seqs = 16;
  NB_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ForwardBackend> be, create_cuda_forward(model->weights(), o));
  model->set_backend(std::move(be));
  const ForwardBackend& dev = *model->backend();

  const int64_t total = dev.total_memory_bytes(), free = dev.free_memory_bytes();
  ASSERT_GT(total, 0);
  ASSERT_GT(free, int64_t{1} << 30) << "the test wants 1 GiB free";
  const int64_t used = total - free;
  // A fraction that leaves ~768 MiB for the KV cache (the default 0.9 would take most of the device).
  const double u = std::min(1.0, static_cast<double>(used + (768ll << 20)) / static_cast<double>(total));
  const int64_t block_size = 128;  // 128 tokens x 30 layers x 3 KV heads x 64 x f16 x K,V = 2.81 MiB a block
  const int64_t bb = KvStorage::block_bytes(*model, block_size);
  NB_ASSERT_OK_AND_ASSIGN(const int64_t kv, kv_cache_bytes_for_utilization(u, total, free, bb));
  const auto allowed = static_cast<int64_t>(u * static_cast<double>(total));
  EXPECT_EQ(kv, allowed - used - bb);

  EngineConfig ec;
  ec.kv_cache_bytes = kv;
  ec.block_size = block_size;
  ec.max_num_seqs = 16;
  ec.max_batched_tokens = 64;
  NB_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, Engine::create(*model, ec));
  const int64_t num_blocks = engine->stats().num_blocks_total;
  EXPECT_EQ(num_blocks, kv / bb);
  // The pool plus the engine's padding block: within the fraction, less than one block short of it.
  EXPECT_LE((num_blocks + 1) * bb, allowed - used);
  EXPECT_GT((num_blocks + 2) * bb, allowed - used);

  const int64_t used_after = total - dev.free_memory_bytes();
  const int64_t granularity = 2ll << 20;
  std::printf("  total %.3f GiB, used after load %.3f GiB, u %.4f: %lld blocks of %lld bytes; used after the engine "
              "%.3f GiB (target %.3f GiB)\n",
              static_cast<double>(total) / (1 << 30), static_cast<double>(used) / (1 << 30), u,
              static_cast<long long>(num_blocks), static_cast<long long>(bb), static_cast<double>(used_after) / (1 << 30),
              static_cast<double>(allowed) / (1 << 30));
  EXPECT_LE(used_after, allowed + granularity);
  EXPECT_GE(used_after, allowed - bb - granularity);
}

}  // namespace
}  // namespace nb
