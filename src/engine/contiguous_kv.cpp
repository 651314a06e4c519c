#include "engine/contiguous_kv.h"

#include <string>

namespace nb {

int64_t KvStorage::block_bytes(const LlamaModel& model, int64_t block_size) {
  return 2 * model.config().num_layers * model.kv_block_format(block_size).block_bytes();
}

Result<KvStorage> KvStorage::create(LlamaModel& model, int64_t num_blocks, int64_t block_size) {
  const ModelConfig& c = model.config();
  if (num_blocks < 0 || block_size < 1) return invalid_argument("KV storage needs num_blocks >= 0, block_size >= 1");
  KvStorage s;
  s.num_bytes_ = num_blocks * block_bytes(model, block_size);
  NB_ASSIGN_OR_RETURN(s.storage_, model.allocate_kv(s.num_bytes_));
  // Each layer's K and V pool: num_blocks self-contained blocks in the model's KV format (f32 rows
  // on the CPU by default; f16/int8/int4 with their scales; the device dtype's elements on a GPU).
  // KvPools keeps float* for the f32 case; other formats are addressed in bytes by their readers.
  s.pool_block_bytes_ = model.kv_block_format(block_size).block_bytes();
  const int64_t per_layer = num_blocks * s.pool_block_bytes_;
  auto* base = static_cast<unsigned char*>(s.storage_.get());
  s.pools_.num_blocks = num_blocks;
  s.pools_.block_size = block_size;
  s.pools_.dtype = model.kv_cache_dtype();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    s.pools_.k.push_back(reinterpret_cast<float*>(base + (2 * l) * per_layer));
    s.pools_.v.push_back(reinterpret_cast<float*>(base + (2 * l + 1) * per_layer));
  }
  return s;
}

Status KvStorage::copy_block(LlamaModel& model, int32_t src, int32_t dst) const {
  if (src < 0 || dst < 0 || src >= pools_.num_blocks || dst >= pools_.num_blocks) {
    return internal_error("KV block copy " + std::to_string(src) + " -> " + std::to_string(dst) + " outside the pool of " +
                          std::to_string(pools_.num_blocks) + " blocks");
  }
  const int64_t bytes = pool_block_bytes_;
  auto at = [&](float* pool, int32_t block) { return reinterpret_cast<unsigned char*>(pool) + block * bytes; };
  for (size_t l = 0; l < pools_.k.size(); ++l) {
    NB_RETURN_IF_ERROR(model.copy_kv(at(pools_.k[l], dst), at(pools_.k[l], src), bytes));
    NB_RETURN_IF_ERROR(model.copy_kv(at(pools_.v[l], dst), at(pools_.v[l], src), bytes));
  }
  return Status::Ok();
}

Result<ContiguousKvCache> ContiguousKvCache::create(LlamaModel& model, int64_t capacity) {
  NB_ASSIGN_OR_RETURN(KvStorage storage, KvStorage::create(model, 1, capacity));
  return ContiguousKvCache(capacity, std::move(storage));
}

}  // namespace nb
