// Paged batches for the CUDA attention tests (test_cuda_attention.cpp, test_cuda_kv_quant.cpp): the
// per-sequence fields and the block tables of a batch over one shuffled block pool, and the
// BatchAttentionParams that describe it. The tests fill the pool (f32 values or quantized blocks).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "backend/ops.h"
#include "gpu_test_util.h"

namespace nb::gpu_test {

struct PagedShape {
  int64_t heads, kv_heads, head_dim, block_size;
};

struct PagedLayout {
  PagedShape shape;
  std::vector<int64_t> num_tokens, start_pos;
  std::vector<int32_t> query_start, start_pos32, tables;
  int64_t stride = 0, total_tokens = 0, max_query = 0, max_context = 0;
  int64_t pool_blocks = 0;  // blocks in the pool (owned, holes and spares)
};

// Sequence i has tokens[i] new tokens after start[i] cached positions. Blocks come from a shuffled
// pool (seed s) taking every `spread`-th id (spread 2: a hole nobody owns after each owned block);
// each table row ends with padding entries pointing at a spare block nobody owns either.
inline PagedLayout make_paged_layout(const PagedShape& sh, const std::vector<int64_t>& tokens,
                                     const std::vector<int64_t>& start, uint32_t s, int spread = 1) {
  PagedLayout b;
  b.shape = sh;
  b.num_tokens = tokens;
  b.start_pos = start;
  const size_t num_seqs = tokens.size();
  std::vector<int64_t> blocks(num_seqs);
  int64_t total_blocks = 0;
  b.query_start.push_back(0);
  for (size_t i = 0; i < num_seqs; ++i) {
    const int64_t ctx_len = start[i] + tokens[i];
    blocks[i] = (ctx_len + sh.block_size - 1) / sh.block_size;
    total_blocks += blocks[i];
    b.stride = std::max(b.stride, blocks[i] + 2);  // padding entries past each table's end
    b.total_tokens += tokens[i];
    b.max_query = std::max(b.max_query, tokens[i]);
    b.max_context = std::max(b.max_context, ctx_len);
    b.query_start.push_back(static_cast<int32_t>(b.total_tokens));
    b.start_pos32.push_back(static_cast<int32_t>(start[i]));
  }
  b.pool_blocks = spread * total_blocks + 3;
  std::vector<int32_t> ids(static_cast<size_t>(b.pool_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(seed(s));
  std::shuffle(ids.begin(), ids.end(), rng);
  const int32_t spare = ids.back();  // never assigned: padding entries point at it
  b.tables.assign(num_seqs * static_cast<size_t>(b.stride), spare);
  size_t next = 0;
  for (size_t i = 0; i < num_seqs; ++i)
    for (int64_t j = 0; j < blocks[i]; ++j, next += static_cast<size_t>(spread)) {
      b.tables[i * static_cast<size_t>(b.stride) + static_cast<size_t>(j)] = ids[next];
    }
  return b;
}

// Slot of position pos of sequence i.
inline int64_t paged_slot(const PagedLayout& b, size_t i, int64_t pos) {
  const int64_t bs = b.shape.block_size;
  return b.tables[i * static_cast<size_t>(b.stride) + static_cast<size_t>(pos / bs)] * bs + pos % bs;
}

// The batch's shape fields (pointers, act_dtype and cache_dtype are the caller's).
inline BatchAttentionParams paged_params(const PagedLayout& b) {
  BatchAttentionParams p{};
  p.block_table_stride = b.stride;
  p.num_seqs = static_cast<int64_t>(b.num_tokens.size());
  p.num_tokens = b.total_tokens;
  p.max_query_len = b.max_query;
  p.max_context_len = b.max_context;
  p.block_size = b.shape.block_size;
  p.num_heads = b.shape.heads;
  p.num_kv_heads = b.shape.kv_heads;
  p.head_dim = b.shape.head_dim;
  p.scale = 1.f / std::sqrt(static_cast<float>(b.shape.head_dim));
  return p;
}

}  // namespace nb::gpu_test
