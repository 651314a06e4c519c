// Causal GQA attention over a paged KV cache (block table); f32 rows are read in place, f16/int8/int4
// rows (backend/kv_format.h) dequantized a block run at a time into a small per-thread f32 tile.
// Work item = (token, kv head, key chunk): the item serves every query head of the kv head's group,
// so each K and V row is loaded once per group, not once per head. Within an item: scores for the
// chunk's keys, their max m and sum l of e^(s - m), and the unnormalised sum of e^(s - m) V.
// Decode has too few (token, kv head) pairs to keep the threads busy, so long key ranges are split
// into chunks whose (m, l, o) partials are merged afterwards (the flash-decoding split).
// A call covers a whole batch of sequences (one parallel region per layer, not one per sequence).
// Threads take items from a shared counter, longest first: in a causal prefill later tokens see
// more keys and decode contexts differ per sequence, so a fixed split would leave threads idle.
// Which thread runs an item does not change its result, and split chunks are merged in a fixed
// order by whichever thread finishes the group's last chunk.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kv_quant.h"
#include "backend/cpu/simd.h"

namespace nb::cpu {

namespace {

constexpr int kMaxGroup = 4;           // query heads per item (larger GQA groups are split)
constexpr int64_t kMinChunkKeys = 128;  // below this a split costs more than it balances

constexpr int64_t kTileKeys = 64;       // keys dequantized at a time from a quantized cache

// One kv head's K (or V) rows of a sequence, read through its block table. f32 rows are read in
// place; the other formats are dequantized, at most kTileKeys rows at a time, into `tile`
// (kTileKeys * head_dim floats, the calling thread's).
struct KvView {
  const uint8_t* pool;  // the layer's K or V pool, first byte
  const int32_t* block_table;
  KvBlockFormat format;
  int64_t kv_head;
  float* tile;
  // Calls fn(first key, number of keys, pointer to the first key's row, floats between rows) for
  // each run of keys in [jb, je) within one block.
  template <typename Fn>
  void for_each_run(int64_t jb, int64_t je, Fn fn) const {
    const int64_t bs = format.block_size;
    const bool f32 = format.dtype == KvCacheDType::kF32;
    for (int64_t j = jb; j < je;) {
      const int64_t off = j % bs;
      const int64_t len = std::min({bs - off, je - j, f32 ? je - j : kTileKeys});
      const int64_t slot = block_table[j / bs] * bs + off;
      if (f32) {
        fn(j, len, reinterpret_cast<const float*>(pool + format.value_offset(slot, kv_head)),
           format.num_kv_heads * format.head_dim);
      } else {
        kv_dequantize_rows(format, pool, slot, kv_head, len, tile);
        fn(j, len, static_cast<const float*>(tile), format.head_dim);
      }
      j += len;
    }
  }
};

// s[j] = e^(s[j] - mx); returns the sum.
float exp_shift_sum(float* s, int64_t n, float mx) {
  int64_t j = 0;
  float total = 0.f;
#if defined(__AVX512F__)
  const __m512 vmx = _mm512_set1_ps(mx);
  __m512 acc = _mm512_setzero_ps();
  for (; j < n; j += 16) {
    const __mmask16 m = simd::first_lanes(n - j);
    const __m512 e = simd::exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmx));
    _mm512_mask_storeu_ps(s + j, m, e);
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
  }
  total = _mm512_reduce_add_ps(acc);
#endif
  for (; j < n; ++j) {
    s[j] = std::exp(s[j] - mx);
    total += s[j];
  }
  return total;
}

// Per head of the item: scores[h][0, n) (already scaled), then m[h], l[h] and o[h][0, d)
// (unnormalised). Plain loops, any head_dim.
void attend_generic(const float* q, int64_t num_heads, int64_t d, const KvView& k, const KvView& v, int64_t jb,
                    int64_t je, float scale, float* scores, float* m, float* l, float* o) {
  const int64_t n = je - jb;
  for (int64_t h = 0; h < num_heads; ++h) {
    const float* qh = q + h * d;
    float* sh = scores + h * n;
    k.for_each_run(jb, je, [&](int64_t j0, int64_t len, const float* rows, int64_t stride) {
      for (int64_t j = 0; j < len; ++j) {
        float s = 0.f;
        for (int64_t i = 0; i < d; ++i) s += qh[i] * rows[j * stride + i];
        sh[j0 - jb + j] = s * scale;
      }
    });
    m[h] = *std::max_element(sh, sh + n);
    l[h] = exp_shift_sum(sh, n, m[h]);
    float* oh = o + h * d;
    std::fill(oh, oh + d, 0.f);
    v.for_each_run(jb, je, [&](int64_t j0, int64_t len, const float* rows, int64_t stride) {
      for (int64_t j = 0; j < len; ++j) {
        const float p = sh[j0 - jb + j];
        for (int64_t i = 0; i < d; ++i) oh[i] += p * rows[j * stride + i];
      }
    });
  }
}

#if defined(__AVX512F__)
// [sum(a), sum(b), sum(c), sum(d)]: one transpose-and-add tree for four 16-lane vectors.
inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));  // a0+a2 b0+b2 a1+a3 b1+b3
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));  // per 128-bit lane: a b c d
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm512_extractf32x8_ps(abcd, 1));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// The same for head_dim = 16 * kChunks and kHeads query heads: each K/V row is loaded into
// registers once and used by every head; four keys' scores share one horizontal reduction.
template <int kChunks, int kHeads>
void attend_avx512(const float* q, const KvView& k, const KvView& v, int64_t jb, int64_t je, float scale,
                   float* scores, float* m, float* l, float* o) {
  constexpr int64_t d = 16 * kChunks;
  const int64_t n = je - jb;
  float qs[kHeads * d];  // q * scale, so scores need no extra multiply
  for (int i = 0; i < kHeads * d; i += 16) _mm512_storeu_ps(qs + i, _mm512_mul_ps(_mm512_loadu_ps(q + i), _mm512_set1_ps(scale)));
  k.for_each_run(jb, je, [&](int64_t j0, int64_t len, const float* rows, int64_t stride) {
    float* s0 = scores + (j0 - jb);
    int64_t j = 0;
    for (; j + 4 <= len; j += 4) {
      __m512 acc[kHeads][4];
      for (int h = 0; h < kHeads; ++h)
        for (int u = 0; u < 4; ++u) acc[h][u] = _mm512_setzero_ps();
      for (int c = 0; c < kChunks; ++c) {
        for (int u = 0; u < 4; ++u) {
          const __m512 kv = _mm512_loadu_ps(rows + (j + u) * stride + 16 * c);
          for (int h = 0; h < kHeads; ++h) acc[h][u] = _mm512_fmadd_ps(kv, _mm512_loadu_ps(qs + h * d + 16 * c), acc[h][u]);
        }
      }
      for (int h = 0; h < kHeads; ++h) _mm_storeu_ps(s0 + h * n + j, reduce4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]));
    }
    for (; j < len; ++j) {
      __m512 acc[kHeads];
      for (int h = 0; h < kHeads; ++h) acc[h] = _mm512_setzero_ps();
      for (int c = 0; c < kChunks; ++c) {
        const __m512 kv = _mm512_loadu_ps(rows + j * stride + 16 * c);
        for (int h = 0; h < kHeads; ++h) acc[h] = _mm512_fmadd_ps(kv, _mm512_loadu_ps(qs + h * d + 16 * c), acc[h]);
      }
      for (int h = 0; h < kHeads; ++h) s0[h * n + j] = _mm512_reduce_add_ps(acc[h]);
    }
  });
  for (int h = 0; h < kHeads; ++h) {
    m[h] = *std::max_element(scores + h * n, scores + (h + 1) * n);
    l[h] = exp_shift_sum(scores + h * n, n, m[h]);
  }
  __m512 acc[kHeads][kChunks];
  for (int h = 0; h < kHeads; ++h)
    for (int c = 0; c < kChunks; ++c) acc[h][c] = _mm512_setzero_ps();
  v.for_each_run(jb, je, [&](int64_t j0, int64_t len, const float* rows, int64_t stride) {
    const float* s0 = scores + (j0 - jb);
    for (int64_t j = 0; j < len; ++j) {
      __m512 p[kHeads];
      for (int h = 0; h < kHeads; ++h) p[h] = _mm512_set1_ps(s0[h * n + j]);
      for (int c = 0; c < kChunks; ++c) {
        const __m512 vv = _mm512_loadu_ps(rows + j * stride + 16 * c);
        for (int h = 0; h < kHeads; ++h) acc[h][c] = _mm512_fmadd_ps(p[h], vv, acc[h][c]);
      }
    }
  });
  for (int h = 0; h < kHeads; ++h)
    for (int c = 0; c < kChunks; ++c) _mm512_storeu_ps(o + h * d + 16 * c, acc[h][c]);
}

using AttendFn = void (*)(const float*, const KvView&, const KvView&, int64_t, int64_t, float, float*, float*, float*,
                          float*);

// The accumulators (kHeads x kChunks vectors for o, kHeads x 4 for scores) stay within 16 registers.
AttendFn pick_kernel(int64_t head_dim, int64_t heads) {
  switch (head_dim * 8 + heads) {
    case 32 * 8 + 1: return &attend_avx512<2, 1>;
    case 32 * 8 + 2: return &attend_avx512<2, 2>;
    case 32 * 8 + 3: return &attend_avx512<2, 3>;
    case 32 * 8 + 4: return &attend_avx512<2, 4>;
    case 64 * 8 + 1: return &attend_avx512<4, 1>;
    case 64 * 8 + 2: return &attend_avx512<4, 2>;
    case 64 * 8 + 3: return &attend_avx512<4, 3>;
    case 64 * 8 + 4: return &attend_avx512<4, 4>;
    case 128 * 8 + 1: return &attend_avx512<8, 1>;
    case 128 * 8 + 2: return &attend_avx512<8, 2>;
    default: return nullptr;
  }
}
int64_t max_heads_per_item(int64_t head_dim) { return head_dim == 128 ? 2 : kMaxGroup; }
#else
int64_t max_heads_per_item(int64_t) { return kMaxGroup; }
#endif

// The query heads of one kv head served together, over all of a token's keys (split in chunks).
struct ItemGroup {
  int64_t row;                 // query row in the batch
  int64_t first_head, num_heads, first_item, num_chunks;
  const int32_t* block_table;  // the row's sequence's
};

struct Item {
  int64_t group;    // index of its ItemGroup
  int64_t jb, je;   // key range [jb, je)
  int64_t partial;  // index of this item's (m, l, o) partial slots, or -1: write the output directly
};

// The work of one call, rebuilt per call into buffers kept by the calling thread (no allocation in
// the steady state of decode).
struct Plan {
  std::vector<ItemGroup> groups;
  std::vector<Item> items;
  std::vector<int32_t> order;     // items, most keys first (threads take them in this order)
  std::vector<float> partials;    // per split item: m[nh], l[nh], o[nh][d]
  std::unique_ptr<std::atomic<int32_t>[]> remaining;  // per group: split items not yet finished
  size_t remaining_size = 0;
};

// Merges a split group's chunks: m = max m_c, l = sum l_c e^(m_c - m), out = sum o_c e^(m_c - m) / l.
// The order of the sum is fixed (chunk 0, 1, ...), whichever thread runs it.
void merge_group(const ItemGroup& g, const Plan& plan, int64_t num_heads, int64_t d, float* out_base) {
  for (int64_t h = 0; h < g.num_heads; ++h) {
    float mx = -INFINITY;
    for (int64_t c = 0; c < g.num_chunks; ++c) {
      mx = std::max(mx, plan.partials[static_cast<size_t>(plan.items[static_cast<size_t>(g.first_item + c)].partial + h)]);
    }
    float* out = out_base + (g.row * num_heads + g.first_head + h) * d;
    std::fill(out, out + d, 0.f);
    float total = 0.f;
    for (int64_t c = 0; c < g.num_chunks; ++c) {
      const float* part = plan.partials.data() + plan.items[static_cast<size_t>(g.first_item + c)].partial;
      const float w = std::exp(part[h] - mx);
      total += part[g.num_heads + h] * w;
      const float* o = part + 2 * g.num_heads + h * d;
      for (int64_t e = 0; e < d; ++e) out[e] += w * o[e];
    }
    const float inv = 1.f / total;
    for (int64_t e = 0; e < d; ++e) out[e] *= inv;
  }
}

// Fills `plan` for the batch. A sequence's items depend only on that sequence (its query count and
// context) and the thread count, never on the rest of the batch: a row's result is the same alone
// or batched (batch invariance).
void build_plan(const BatchAttentionParams& p, int num_threads, int64_t per_item, Plan& plan) {
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t subgroups = (group + per_item - 1) / per_item;
  const int64_t d = p.head_dim;
  plan.groups.clear();
  plan.items.clear();
  int64_t partial_floats = 0;
  for (int64_t s = 0; s < p.num_seqs; ++s) {
    const int64_t first = p.query_start[s];
    const int64_t count = p.query_start[s + 1] - first;
    if (count <= 0) continue;
    // Split keys only when the sequence's (token, head group) pairs alone cannot give every thread
    // ~4 items.
    const int64_t base_items = count * p.num_kv_heads * subgroups;
    const int64_t split = base_items >= 4 * num_threads ? 1 : (4 * num_threads + base_items - 1) / base_items;
    const int32_t* table = p.block_tables + s * p.block_table_stride;
    for (int64_t t = 0; t < count; ++t) {
      const int64_t num_keys = p.start_pos[s] + t + 1;
      const int64_t chunk = std::max(kMinChunkKeys, (num_keys + split - 1) / split);
      const int64_t num_chunks = (num_keys + chunk - 1) / chunk;
      for (int64_t g = 0; g < p.num_kv_heads; ++g) {
        for (int64_t sg = 0; sg < subgroups; ++sg) {
          const int64_t h0 = g * group + sg * per_item;
          const int64_t nh = std::min(per_item, group - sg * per_item);
          const auto gi = static_cast<int64_t>(plan.groups.size());
          plan.groups.push_back({first + t, h0, nh, static_cast<int64_t>(plan.items.size()), num_chunks, table});
          for (int64_t c = 0; c < num_chunks; ++c) {
            int64_t partial = -1;
            if (num_chunks > 1) {
              partial = partial_floats;
              partial_floats += nh * (d + 2);
            }
            plan.items.push_back({gi, c * chunk, std::min(num_keys, (c + 1) * chunk), partial});
          }
        }
      }
    }
  }
  if (plan.partials.size() < static_cast<size_t>(partial_floats)) plan.partials.resize(static_cast<size_t>(partial_floats));
  if (plan.remaining_size < plan.groups.size()) {
    plan.remaining_size = plan.groups.size() * 2;
    plan.remaining = std::make_unique<std::atomic<int32_t>[]>(plan.remaining_size);
  }
  for (size_t g = 0; g < plan.groups.size(); ++g) {
    plan.remaining[g].store(static_cast<int32_t>(plan.groups[g].num_chunks), std::memory_order_relaxed);
  }
  // Longest items first, so the last ones handed out are short and the threads finish together.
  plan.order.resize(plan.items.size());
  std::iota(plan.order.begin(), plan.order.end(), 0);
  std::stable_sort(plan.order.begin(), plan.order.end(), [&](int32_t a, int32_t b) {
    const Item& x = plan.items[static_cast<size_t>(a)];
    const Item& y = plan.items[static_cast<size_t>(b)];
    return (x.je - x.jb) * plan.groups[static_cast<size_t>(x.group)].num_heads >
           (y.je - y.jb) * plan.groups[static_cast<size_t>(y.group)].num_heads;
  });
}

}  // namespace

void batch_attention(const BatchAttentionParams& p, ThreadPool& pool) {
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t d = p.head_dim;
  const KvBlockFormat format{p.cache_dtype, p.block_size, p.num_kv_heads, d};
  const int64_t per_item = std::min(group, max_heads_per_item(d));
  thread_local Plan caller_plan;  // the caller's; the workers below see it through `plan`
  Plan& plan = caller_plan;
  build_plan(p, pool.num_threads(), per_item, plan);
  if (plan.items.empty()) return;

  std::atomic<size_t> next{0};
  pool.run([&](int, int) {
    thread_local std::vector<float> scores, k_tile, v_tile;
    if (p.cache_dtype != KvCacheDType::kF32 && k_tile.size() < static_cast<size_t>(kTileKeys * d)) {
      k_tile.resize(static_cast<size_t>(kTileKeys * d));
      v_tile.resize(static_cast<size_t>(kTileKeys * d));
    }
    float m_local[kMaxGroup], l_local[kMaxGroup];
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < plan.order.size();) {
      const Item& it = plan.items[static_cast<size_t>(plan.order[i])];
      const ItemGroup& g = plan.groups[static_cast<size_t>(it.group)];
      if (scores.size() < static_cast<size_t>(per_item * (it.je - it.jb))) {
        scores.resize(static_cast<size_t>(per_item * p.max_context_len));
      }
      const int64_t kv_head = g.first_head / group;
      const KvView k{reinterpret_cast<const uint8_t*>(p.k_cache), g.block_table, format, kv_head, k_tile.data()};
      const KvView v{reinterpret_cast<const uint8_t*>(p.v_cache), g.block_table, format, kv_head, v_tile.data()};
      const float* q = p.q + (g.row * p.num_heads + g.first_head) * d;
      float* m = m_local;
      float* l = l_local;
      float* o = p.out + (g.row * p.num_heads + g.first_head) * d;
      if (it.partial >= 0) {
        m = plan.partials.data() + it.partial;
        l = m + g.num_heads;
        o = l + g.num_heads;
      }
#if defined(__AVX512F__)
      if (AttendFn fn = pick_kernel(d, g.num_heads)) {
        fn(q, k, v, it.jb, it.je, p.scale, scores.data(), m, l, o);
      } else
#endif
      {
        attend_generic(q, g.num_heads, d, k, v, it.jb, it.je, p.scale, scores.data(), m, l, o);
      }
      if (it.partial < 0) {
        for (int64_t h = 0; h < g.num_heads; ++h) {
          const float inv = 1.f / l[h];
          for (int64_t e = 0; e < d; ++e) o[h * d + e] *= inv;
        }
      } else if (plan.remaining[static_cast<size_t>(it.group)].fetch_sub(1, std::memory_order_acq_rel) == 1) {
        merge_group(g, plan, p.num_heads, d, p.out);  // the group's last chunk finished here
      }
    }
  });
}

void attention(const AttentionParams& p, ThreadPool& pool) {
  const int32_t query_start[2] = {0, static_cast<int32_t>(p.num_tokens)};
  const int32_t start_pos = static_cast<int32_t>(p.start_pos);
  BatchAttentionParams b{};
  b.q = p.q;
  b.out = p.out;
  b.k_cache = p.k_cache;
  b.v_cache = p.v_cache;
  b.block_tables = p.block_table;
  b.query_start = query_start;
  b.start_pos = &start_pos;
  b.block_table_stride = 0;
  b.num_seqs = 1;
  b.num_tokens = p.num_tokens;
  b.max_query_len = p.num_tokens;
  b.max_context_len = p.start_pos + p.num_tokens;
  b.block_size = p.block_size;
  b.num_heads = p.num_heads;
  b.num_kv_heads = p.num_kv_heads;
  b.head_dim = p.head_dim;
  b.scale = p.scale;
  b.cache_dtype = p.cache_dtype;
  batch_attention(b, pool);
}

}  // namespace nb::cpu
