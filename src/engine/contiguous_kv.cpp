#include "engine/contiguous_kv.h"

namespace nb {

ContiguousKvCache::ContiguousKvCache(const ModelConfig& c, int64_t capacity) : capacity_(capacity) {
  const auto per_layer = static_cast<size_t>(capacity * c.num_kv_heads * c.head_dim);
  storage_.resize(per_layer * 2 * static_cast<size_t>(c.num_layers));
  pools_.num_blocks = 1;
  pools_.block_size = capacity;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    pools_.k.push_back(storage_.data() + (2 * l) * per_layer);
    pools_.v.push_back(storage_.data() + (2 * l + 1) * per_layer);
  }
}

}  // namespace nb
