// ContiguousKvCache: K/V memory for a single sequence of up to `capacity` tokens, all layers, laid out
// as one block per layer so the block-table forward reads it unchanged. The paged block pool (kv/)
// replaces it for serving; generate/chat/bench on one sequence use this.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "model/config.h"
#include "model/llama.h"

namespace nb {

// K/V memory for all layers: pools of num_blocks blocks of block_size tokens, laid out as KvPools
// expects, allocated by the model (host memory, or device memory when it runs on a GPU). The paged
// engine holds one shared by all sequences; ContiguousKvCache one of a single block.
class KvStorage {
 public:
  static Result<KvStorage> create(LlamaModel& model, int64_t num_blocks, int64_t block_size);
  // Bytes one block takes over all layers (K and V) in the model's KV format (kv_block_format: the
  // --kv-cache-dtype on the CPU, scales included; the device dtype on a GPU).
  static int64_t block_bytes(const LlamaModel& model, int64_t block_size);
  const KvPools& pools() const { return pools_; }
  int64_t num_bytes() const { return num_bytes_; }
  // Bytes of one block of one layer's K (or V) pool, its scales included: what copying a block
  // (prefix-cache copy-on-write) copies per pool.
  int64_t pool_block_bytes() const { return pool_block_bytes_; }
  // Copies block src to block dst in every layer's K and V pool: whole blocks, scales included.
  Status copy_block(LlamaModel& model, int32_t src, int32_t dst) const;

 private:
  KvStorage() = default;
  std::shared_ptr<void> storage_;
  int64_t num_bytes_ = 0;
  int64_t pool_block_bytes_ = 0;
  KvPools pools_;
};

class ContiguousKvCache {
 public:
  static Result<ContiguousKvCache> create(LlamaModel& model, int64_t capacity);

  int64_t capacity() const { return capacity_; }
  const KvPools& pools() const { return storage_.pools(); }
  // The block table of the one sequence: a single block.
  std::span<const int32_t> block_table() const { return {&kBlockZero, 1}; }
  int64_t num_bytes() const { return storage_.num_bytes(); }

 private:
  ContiguousKvCache(int64_t capacity, KvStorage storage) : capacity_(capacity), storage_(std::move(storage)) {}
  static constexpr int32_t kBlockZero = 0;
  int64_t capacity_;
  KvStorage storage_;
};

}  // namespace nb
