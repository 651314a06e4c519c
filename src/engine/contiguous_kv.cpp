#include "engine/contiguous_kv.h"

namespace nb {

int64_t KvStorage::block_bytes(const ModelConfig& c, int64_t block_size) {
  return 2 * c.num_layers * block_size * c.num_kv_heads * c.head_dim * static_cast<int64_t>(sizeof(float));
}

Result<KvStorage> KvStorage::create(LlamaModel& model, int64_t num_blocks, int64_t block_size) {
  const ModelConfig& c = model.config();
  if (num_blocks < 0 || block_size < 1) return invalid_argument("KV storage needs num_blocks >= 0, block_size >= 1");
  KvStorage s;
  s.num_bytes_ = num_blocks * block_bytes(c, block_size);
  NB_ASSIGN_OR_RETURN(s.storage_, model.allocate_kv(s.num_bytes_));
  const int64_t per_layer = num_blocks * block_size * c.num_kv_heads * c.head_dim;  // floats
  auto* base = static_cast<float*>(s.storage_.get());
  s.pools_.num_blocks = num_blocks;
  s.pools_.block_size = block_size;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    s.pools_.k.push_back(base + (2 * l) * per_layer);
    s.pools_.v.push_back(base + (2 * l + 1) * per_layer);
  }
  return s;
}

Result<ContiguousKvCache> ContiguousKvCache::create(LlamaModel& model, int64_t capacity) {
  NB_ASSIGN_OR_RETURN(KvStorage storage, KvStorage::create(model, 1, capacity));
  return ContiguousKvCache(capacity, std::move(storage));
}

}  // namespace nb
