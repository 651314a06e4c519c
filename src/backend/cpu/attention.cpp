// Causal GQA attention over a paged f32 KV cache (block table).
// Work item = (token, kv head, key chunk): the item serves every query head of the kv head's group,
// so each K and V row is loaded once per group, not once per head. Within an item: scores for the
// chunk's keys, their max m and sum l of e^(s - m), and the unnormalised sum of e^(s - m) V.
// Decode has too few (token, kv head) pairs to keep the threads busy, so long key ranges are split
// into chunks whose (m, l, o) partials are merged afterwards (the flash-decoding split).
// Threads take items round-robin: in a causal prefill later tokens see more keys, and contiguous
// chunks would hand one thread most of the work.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace nb::cpu {

namespace {

constexpr int kMaxGroup = 4;           // query heads per item (larger GQA groups are split)
constexpr int64_t kMinChunkKeys = 128;  // below this a split costs more than it balances

struct KvView {
  const float* cache;
  const int32_t* block_table;
  int64_t block_size, kv_row, kv_off;
  // Calls fn(first key, number of keys, pointer to the first key's row) for each run of keys in
  // [jb, je) that is contiguous in memory (one block's slots).
  template <typename Fn>
  void for_each_run(int64_t jb, int64_t je, Fn fn) const {
    for (int64_t j = jb; j < je;) {
      const int64_t off = j % block_size;
      const int64_t len = std::min(block_size - off, je - j);
      fn(j, len, cache + (block_table[j / block_size] * block_size + off) * kv_row + kv_off);
      j += len;
    }
  }
};

struct Item {
  int64_t t, first_head, num_heads_here, jb, je;
  int64_t partial;  // index of this item's (m, l, o) partial slots, or -1: write the output directly
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
    k.for_each_run(jb, je, [&](int64_t j0, int64_t len, const float* rows) {
      for (int64_t j = 0; j < len; ++j) {
        float s = 0.f;
        for (int64_t i = 0; i < d; ++i) s += qh[i] * rows[j * k.kv_row + i];
        sh[j0 - jb + j] = s * scale;
      }
    });
    m[h] = *std::max_element(sh, sh + n);
    l[h] = exp_shift_sum(sh, n, m[h]);
    float* oh = o + h * d;
    std::fill(oh, oh + d, 0.f);
    v.for_each_run(jb, je, [&](int64_t j0, int64_t len, const float* rows) {
      for (int64_t j = 0; j < len; ++j) {
        const float p = sh[j0 - jb + j];
        for (int64_t i = 0; i < d; ++i) oh[i] += p * rows[j * v.kv_row + i];
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
  k.for_each_run(jb, je, [&](int64_t j0, int64_t len, const float* rows) {
    float* s0 = scores + (j0 - jb);
    int64_t j = 0;
    for (; j + 4 <= len; j += 4) {
      __m512 acc[kHeads][4];
      for (int h = 0; h < kHeads; ++h)
        for (int u = 0; u < 4; ++u) acc[h][u] = _mm512_setzero_ps();
      for (int c = 0; c < kChunks; ++c) {
        for (int u = 0; u < 4; ++u) {
          const __m512 kv = _mm512_loadu_ps(rows + (j + u) * k.kv_row + 16 * c);
          for (int h = 0; h < kHeads; ++h) acc[h][u] = _mm512_fmadd_ps(kv, _mm512_loadu_ps(qs + h * d + 16 * c), acc[h][u]);
        }
      }
      for (int h = 0; h < kHeads; ++h) _mm_storeu_ps(s0 + h * n + j, reduce4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]));
    }
    for (; j < len; ++j) {
      __m512 acc[kHeads];
      for (int h = 0; h < kHeads; ++h) acc[h] = _mm512_setzero_ps();
      for (int c = 0; c < kChunks; ++c) {
        const __m512 kv = _mm512_loadu_ps(rows + j * k.kv_row + 16 * c);
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
  v.for_each_run(jb, je, [&](int64_t j0, int64_t len, const float* rows) {
    const float* s0 = scores + (j0 - jb);
    for (int64_t j = 0; j < len; ++j) {
      __m512 p[kHeads];
      for (int h = 0; h < kHeads; ++h) p[h] = _mm512_set1_ps(s0[h * n + j]);
      for (int c = 0; c < kChunks; ++c) {
        const __m512 vv = _mm512_loadu_ps(rows + j * v.kv_row + 16 * c);
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
  int64_t t, first_head, num_heads, first_item, num_chunks;
};

}  // namespace

void attention(const AttentionParams& p, ThreadPool& pool) {
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t d = p.head_dim;
  const int64_t kv_row = p.num_kv_heads * d;  // floats per cache slot
  const int64_t per_item = std::min(group, max_heads_per_item(d));
  const int64_t subgroups = (group + per_item - 1) / per_item;

  // Split keys only when (token, head group) pairs alone cannot give every thread ~4 items.
  const int num_threads = pool.num_threads();
  const int64_t base_items = p.num_tokens * p.num_kv_heads * subgroups;
  const int64_t split = base_items >= 4 * num_threads ? 1 : (4 * num_threads + base_items - 1) / base_items;

  std::vector<ItemGroup> groups;
  std::vector<Item> items;
  int64_t partial_floats = 0;
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t num_keys = p.start_pos + t + 1;
    const int64_t chunk = std::max(kMinChunkKeys, (num_keys + split - 1) / split);
    const int64_t num_chunks = (num_keys + chunk - 1) / chunk;
    for (int64_t g = 0; g < p.num_kv_heads; ++g) {
      for (int64_t sg = 0; sg < subgroups; ++sg) {
        const int64_t h0 = g * group + sg * per_item;
        const int64_t nh = std::min(per_item, group - sg * per_item);
        groups.push_back({t, h0, nh, static_cast<int64_t>(items.size()), num_chunks});
        for (int64_t c = 0; c < num_chunks; ++c) {
          int64_t partial = -1;
          if (num_chunks > 1) {
            partial = partial_floats;
            partial_floats += nh * (d + 2);
          }
          items.push_back({t, h0, nh, c * chunk, std::min(num_keys, (c + 1) * chunk), partial});
        }
      }
    }
  }
  // Partial layout per item: m[nh], l[nh], o[nh][d].
  std::vector<float> partials(static_cast<size_t>(partial_floats));

  const int64_t max_keys = p.start_pos + p.num_tokens;
  pool.run([&](int tid, int nthreads) {
    std::vector<float> scores(static_cast<size_t>(per_item * max_keys));
    float m_local[kMaxGroup], l_local[kMaxGroup];
    for (size_t i = static_cast<size_t>(tid); i < items.size(); i += static_cast<size_t>(nthreads)) {
      const Item& it = items[i];
      const int64_t kv_head = it.first_head / group;
      const KvView k{p.k_cache, p.block_table, p.block_size, kv_row, kv_head * d};
      const KvView v{p.v_cache, p.block_table, p.block_size, kv_row, kv_head * d};
      const float* q = p.q + (it.t * p.num_heads + it.first_head) * d;
      float* m = m_local;
      float* l = l_local;
      float* o = p.out + (it.t * p.num_heads + it.first_head) * d;
      if (it.partial >= 0) {
        m = partials.data() + it.partial;
        l = m + it.num_heads_here;
        o = l + it.num_heads_here;
      }
#if defined(__AVX512F__)
      if (AttendFn fn = pick_kernel(d, it.num_heads_here)) {
        fn(q, k, v, it.jb, it.je, p.scale, scores.data(), m, l, o);
      } else
#endif
      {
        attend_generic(q, it.num_heads_here, d, k, v, it.jb, it.je, p.scale, scores.data(), m, l, o);
      }
      if (it.partial < 0) {
        for (int64_t h = 0; h < it.num_heads_here; ++h) {
          const float inv = 1.f / l[h];
          for (int64_t e = 0; e < d; ++e) o[h * d + e] *= inv;
        }
      }
    }
  });

  // Merge split chunks: m = max m_c, l = sum l_c e^(m_c - m), out = sum o_c e^(m_c - m) / l.
  for (const ItemGroup& g : groups) {
    if (g.num_chunks == 1) continue;
    for (int64_t h = 0; h < g.num_heads; ++h) {
      float mx = -INFINITY;
      for (int64_t c = 0; c < g.num_chunks; ++c) {
        mx = std::max(mx, partials[static_cast<size_t>(items[static_cast<size_t>(g.first_item + c)].partial + h)]);
      }
      float* out = p.out + (g.t * p.num_heads + g.first_head + h) * d;
      std::fill(out, out + d, 0.f);
      float total = 0.f;
      for (int64_t c = 0; c < g.num_chunks; ++c) {
        const float* part = partials.data() + items[static_cast<size_t>(g.first_item + c)].partial;
        const float w = std::exp(part[h] - mx);
        total += part[g.num_heads + h] * w;
        const float* o = part + 2 * g.num_heads + h * d;
        for (int64_t e = 0; e < d; ++e) out[e] += w * o[e];
      }
      const float inv = 1.f / total;
      for (int64_t e = 0; e < d; ++e) out[e] *= inv;
    }
  }
}

}  // namespace nb::cpu
