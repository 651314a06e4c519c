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

class ContiguousKvCache {
 public:
  ContiguousKvCache(const ModelConfig& config, int64_t capacity);

  int64_t capacity() const { return capacity_; }
  const KvPools& pools() const { return pools_; }
  // The block table of the one sequence: a single block.
  std::span<const int32_t> block_table() const { return {&kBlockZero, 1}; }
  int64_t num_bytes() const { return static_cast<int64_t>(storage_.size() * sizeof(float)); }

 private:
  static constexpr int32_t kBlockZero = 0;
  int64_t capacity_;
  std::vector<float> storage_;
  KvPools pools_;
};

}  // namespace nb
