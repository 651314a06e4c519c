#include "engine/contiguous_kv.h"

namespace nb {

KvStorage::KvStorage(const ModelConfig& c, int64_t num_blocks, int64_t block_size) {
  const auto per_layer = static_cast<size_t>(num_blocks * block_size * c.num_kv_heads * c.head_dim);
  storage_.resize(per_layer * 2 * static_cast<size_t>(c.num_layers));
  pools_.num_blocks = num_blocks;
  pools_.block_size = block_size;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    pools_.k.push_back(storage_.data() + static_cast<size_t>(2 * l) * per_layer);
    pools_.v.push_back(storage_.data() + static_cast<size_t>(2 * l + 1) * per_layer);
  }
}

ContiguousKvCache::ContiguousKvCache(const ModelConfig& c, int64_t capacity)
    : capacity_(capacity), storage_(c, 1, capacity) {}

}  // namespace nb
