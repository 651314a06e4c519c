// ContiguousKvCache: K/V memory for a single sequence of up to `capacity` tokens, all layers, laid out
// as one block per layer so the block-table forward reads it unchanged. The paged block pool (kv/)
// replaces it for serving; generate/chat/bench on one sequence use this.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/llama.h"

namespace nb {

// f32 K/V memory for all layers: pools of num_blocks blocks of block_size tokens, laid out as KvPools
// expects. The paged engine holds one shared by all sequences; ContiguousKvCache one of a single block.
class KvStorage {
 public:
  KvStorage(const ModelConfig& config, int64_t num_blocks, int64_t block_size);
  const KvPools& pools() const { return pools_; }
  int64_t num_bytes() const { return static_cast<int64_t>(storage_.size() * sizeof(float)); }

 private:
  std::vector<float> storage_;
  KvPools pools_;
};

class ContiguousKvCache {
 public:
  ContiguousKvCache(const ModelConfig& config, int64_t capacity);

  int64_t capacity() const { return capacity_; }
  const KvPools& pools() const { return storage_.pools(); }
  // The block table of the one sequence: a single block.
  std::span<const int32_t> block_table() const { return {&kBlockZero, 1}; }
  int64_t num_bytes() const { return storage_.num_bytes(); }

 private:
  static constexpr int32_t kBlockZero = 0;
  int64_t capacity_;
  KvStorage storage_;
};

}  // namespace nb
