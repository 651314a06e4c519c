// The decode step's kernels besides the linears (gemv.cu), for f16/bf16 activations:
//   rope_kv_write     RoPE on q and k, and k, v into their cache slots, one block per (head, token);
//   decode_attention  paged attention for one query token per sequence (flash-decoding), over an
//                     act-dtype cache or an int8/int4 one (each lane dequantizes its 8 values of a
//                     vector as it loads them: 8 or 4 bytes of codes and the vector's f16 scale/zero).
//
// decode_attention. A block (4 warps) owns one (sequence, kv head, key split) and every query head
// of the kv head's group. A key's head vector (head_dim f16 = 128 or 256 bytes) is read by
// head_dim / 8 lanes with one 16-byte load each, so a warp reads 32 / (head_dim / 8) keys at once and
// the block 8 or 16; loads are issued kUnroll steps ahead. The split's block-table entries are read
// into shared memory first, so a step's kUnroll loads go out together (a global table lookup in front
// of each serialized them). Pass 1 writes the scaled scores of the
// split's keys to shared memory; each group row's max and sum of exponentials follow; pass 2
// accumulates p * V per lane (its 8 dimensions) and the block's key groups are summed in shared
// memory. A sequence whose keys fit in one split writes its output directly; otherwise each split
// writes its normalized partial output and (max, sum) to the workspace and the split that finishes
// last (a counter per (sequence, kv head) in Context::sync_counters) combines them — no second kernel. Split boundaries are fixed multiples of split_keys, so a
// plan (grid) made for the longest context (a captured CUDA graph) costs a short sequence only its
// empty splits, which exit at once.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"

namespace nb::cuda {

using detail::ceil_div;
using detail::from_f32;
using detail::to_f32;
using detail::pdl_launch_dependents;
using detail::pdl_wait;

namespace {

// ---- rope + kv write ----
constexpr int kMaxHalf = 256;
constexpr int kMaxGridY = 65535;

// One block per (head, token) of q and k (threads over the head's dimension pairs); the k blocks
// also write k and copy v into the cache. One memory round trip per thread: a single block per token
// walking every pair in turn was latency-bound (~11 us for a 7B layer's token).
template <typename T>
__global__ void rope_kv_write_kernel(T* q, T* k, const T* __restrict__ v, T* __restrict__ k_cache,
                                     T* __restrict__ v_cache, const int64_t* __restrict__ slots,
                                     const int32_t* __restrict__ positions, const float* __restrict__ inv_freq,
                                     int num_heads, int num_kv_heads, int head_dim, bool interleaved) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t t = blockIdx.y;
  const int h = blockIdx.x;
  const int half = head_dim / 2;
  const bool is_k = h >= num_heads;
  const int64_t kv_row = static_cast<int64_t>(num_kv_heads) * head_dim;
  T* x = is_k ? k + t * kv_row + static_cast<int64_t>(h - num_heads) * head_dim
              : q + (t * num_heads + h) * static_cast<int64_t>(head_dim);
  const int64_t slot = is_k ? slots[t] : -1;
  const int64_t off = slot * kv_row + static_cast<int64_t>(h - num_heads) * head_dim;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double sn, cs;
    sincos(static_cast<double>(positions[t]) * static_cast<double>(inv_freq[i]), &sn, &cs);  // as the rope kernel
    const float c = static_cast<float>(cs), sv = static_cast<float>(sn);
    const int a = interleaved ? 2 * i : i;
    const int b = interleaved ? 2 * i + 1 : i + half;
    const float x0 = to_f32(x[a]), x1 = to_f32(x[b]);
    const T r0 = from_f32<T>(x0 * c - x1 * sv);
    const T r1 = from_f32<T>(x0 * sv + x1 * c);
    x[a] = r0;
    x[b] = r1;
    if (slot >= 0) {
      k_cache[off + a] = r0;
      k_cache[off + b] = r1;
      const T* vr = v + t * kv_row + static_cast<int64_t>(h - num_heads) * head_dim;
      v_cache[off + a] = vr[a];
      v_cache[off + b] = vr[b];
    }
  }
}

// ---- decode attention ----
constexpr int kThreads = 128;
constexpr int kWarpsA = kThreads / 32;
constexpr int kUnroll = 4;
constexpr int kMaxSplitKeys = 512;

struct DecArgs {
  const void* q;
  void* out;
  const void* k_cache;
  const void* v_cache;
  const int32_t* block_tables;
  const int32_t* start_pos;
  int64_t table_stride;
  int block_size, num_heads, num_kv_heads, group, split_keys, max_splits;
  float scale;
  float* part_out;  // [num_seqs, num_heads, max_splits, HD]
  float* part_ml;   // [num_seqs, num_heads, max_splits, 2]
  int32_t* counters;  // [num_seqs * num_kv_heads] finished splits, 0 between launches
  // Quantized pools (backend/kv_format.h, KvBlockFormat, computed on the host): bytes of a block, and
  // where its scales and zeros start in it.
  int64_t block_bytes, scales_at, zeros_at;
};

// One lane's 8 values of a key's (or value's) head vector as loaded: the act-dtype cache's 16 bytes,
// or an int8 cache's 8 codes (w.x, w.y) / an int4 cache's 8 codes (w.x) with the vector's scale
// and zero (backend/kv_format.h).
struct Chunk {
  uint4 w;
  float s, z;
};

// Where a key's vector lies. Act-dtype cache: `at` is the element offset of the lane's 8 values.
// Quantized: `at` is the byte offset of the key's cache block and `row` the vector's index in it
// (slot in block * num_kv_heads + kv head), so no 64-bit division by the block size is needed here
// (KvBlockFormat::value_offset's arithmetic, with the slot already split by the block table).
struct KeyAt {
  int64_t at;
  int row;
};

template <typename T, int HD, KvCacheDType KV>
__device__ __forceinline__ Chunk load_chunk(const void* pool, KeyAt k, int dl, const DecArgs& a) {
  Chunk c{make_uint4(0u, 0u, 0u, 0u), 0.f, 0.f};
  if constexpr (KV == KvCacheDType::kF32) {
    c.w = static_cast<const uint4*>(pool)[k.at / 8];
  } else {
    const uint8_t* b = static_cast<const uint8_t*>(pool) + k.at;
    const int64_t at = static_cast<int64_t>(k.row) * (KV == KvCacheDType::kInt8 ? HD : HD / 2);  // head_bytes()
    if constexpr (KV == KvCacheDType::kInt8) {
      const uint2 v = *reinterpret_cast<const uint2*>(b + at + dl * 8);
      c.w.x = v.x;
      c.w.y = v.y;
    } else {
      c.w.x = *reinterpret_cast<const uint32_t*>(b + at + dl * 4);
    }
    c.s = kv_f16_field(b + a.scales_at + 2 * k.row);
    if constexpr (KV == KvCacheDType::kInt4) c.z = kv_f16_field(b + a.zeros_at + 2 * k.row);
  }
  return c;
}

// The chunk's 8 values: as stored, q * s (int8) or fmaf(q, s, z) (int4), the values
// cpu::ref::kv_dequantize_head produces (and attention.cu's kernel).
template <typename T, KvCacheDType KV>
__device__ __forceinline__ void chunk_values(const Chunk& c, float f[8]) {
  if constexpr (KV == KvCacheDType::kF32) {
    const T* h = reinterpret_cast<const T*>(&c.w);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = to_f32(h[i]);
  } else if constexpr (KV == KvCacheDType::kInt8) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t w = i < 4 ? c.w.x : c.w.y;
      f[i] = static_cast<float>(static_cast<int8_t>((w >> (8 * (i % 4))) & 0xFF)) * c.s;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = fmaf(static_cast<float>((c.w.x >> (4 * i)) & 15), c.s, c.z);
  }
}

template <typename T, int HD, int G, KvCacheDType KV>
__global__ void __launch_bounds__(kThreads) decode_attention_kernel(const DecArgs a) {
  constexpr int LPK = HD / 8;           // lanes per key
  constexpr int KPW = 32 / LPK;         // keys per warp per step
  constexpr int KPB = KPW * kWarpsA;    // keys per block per step
  __shared__ float s_s[G][kMaxSplitKeys];
  __shared__ float o_s[G][HD];
  __shared__ float m_s[G], l_s[G];
  __shared__ int32_t table_s[kMaxSplitKeys + 1];  // the split's block-table entries
  pdl_launch_dependents();
  pdl_wait();
  const int seq = blockIdx.y / a.num_kv_heads, kvh = blockIdx.y % a.num_kv_heads;
  const int num_keys = a.start_pos[seq] + 1;
  const int key_lo = blockIdx.x * a.split_keys;
  if (key_lo >= num_keys) return;
  const int nk = min(a.split_keys, num_keys - key_lo);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int sub = lane / LPK, dl = lane % LPK;  // key within the warp step, 8-dim chunk within the key
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.table_stride;
  const int head0 = kvh * a.group;
  const int blk0 = key_lo / a.block_size;
  for (int e = tid; e <= (key_lo + nk - 1) / a.block_size - blk0; e += kThreads) table_s[e] = table[blk0 + e];
  // This lane's 8 query dimensions for each group row, pre-scaled.
  float qf[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
#pragma unroll
    for (int j = 0; j < 8; ++j) qf[g][j] = 0.f;
    if (g < a.group) {
      const uint4 v = *reinterpret_cast<const uint4*>(static_cast<const T*>(a.q) +
                                                      (static_cast<int64_t>(seq) * a.num_heads + head0 + g) * HD + dl * 8);
      const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
      for (int j = 0; j < 8; ++j) qf[g][j] = to_f32(h[j]) * a.scale;
    }
  }
  for (int e = tid; e < G * HD; e += kThreads) o_s[e / HD][e % HD] = 0.f;
  __syncthreads();  // table_s
  // Key j's place for load_chunk (KeyAt).
  auto key_at = [&](int j) -> KeyAt {
    const int pos = key_lo + j;
    const int64_t blk = table_s[pos / a.block_size - blk0];
    if constexpr (KV == KvCacheDType::kF32) {
      return {(blk * a.block_size + pos % a.block_size) * (static_cast<int64_t>(a.num_kv_heads) * HD) +
                  static_cast<int64_t>(kvh) * HD + dl * 8,
              0};
    } else {
      return {blk * a.block_bytes, (pos % a.block_size) * a.num_kv_heads + kvh};
    }
  };
  // Pass 1: scores. The loop bound is uniform over the warp (the shuffles need every lane). A split
  // of at most KPB * kUnroll keys (the short splits of small batches) is one step: its V loads go
  // out with the K loads and stay in registers for pass 2 (one memory round trip in all). Keys past
  // the split's end load the last key instead (their results are dropped), so a step's loads carry no
  // conditions and go out together: with the table lookups in shared memory, one round trip a step.
  const bool one_step = nk <= KPB * kUnroll;
  Chunk vpre[kUnroll];
  for (int base = warp * KPW; base < nk; base += KPB * kUnroll) {
    const int j0 = base + sub;
    Chunk kv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * KPB;
      const KeyAt at = key_at(min(j, nk - 1));
      kv[u] = load_chunk<T, HD, KV>(a.k_cache, at, dl, a);
      if (one_step) vpre[u] = load_chunk<T, HD, KV>(a.v_cache, at, dl, a);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * KPB;
      float kf[8];
      chunk_values<T, KV>(kv[u], kf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = fmaf(qf[g][i], kf[i], s);
#pragma unroll
        for (int off = LPK / 2; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (dl == 0 && j < nk && g < a.group) s_s[g][j] = s;
      }
    }
  }
  __syncthreads();
  // Softmax statistics, one warp per group row.
  for (int g = warp; g < a.group; g += kWarpsA) {
    float mx = -INFINITY;
    for (int j = lane; j < nk; j += 32) mx = fmaxf(mx, s_s[g][j]);
    for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float sum = 0.f;
    for (int j = lane; j < nk; j += 32) {
      const float p = expf(s_s[g][j] - mx);
      s_s[g][j] = p;
      sum += p;
    }
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) {
      m_s[g] = mx;
      l_s[g] = sum;
    }
  }
  __syncthreads();
  // Pass 2: P . V.
  float acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
  for (int base = warp * KPW; base < nk; base += KPB * kUnroll) {
    const int j0 = base + sub;
    Chunk vv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * KPB;
      vv[u] = one_step ? vpre[u] : load_chunk<T, HD, KV>(a.v_cache, key_at(min(j, nk - 1)), dl, a);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * KPB;
      if (j >= nk) break;
      float vf[8];
      chunk_values<T, KV>(vv[u], vf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (g < a.group) {
          const float p = s_s[g][j];
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(p, vf[i], acc[g][i]);
        }
      }
    }
  }
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (g < a.group) {
#pragma unroll
      for (int i = 0; i < 8; ++i) atomicAdd(&o_s[g][dl * 8 + i], acc[g][i]);
    }
  }
  __syncthreads();
  const bool single = num_keys <= a.split_keys;
  for (int e = tid; e < a.group * HD; e += kThreads) {
    const int g = e / HD, d = e % HD;
    const float o = o_s[g][d] / l_s[g];
    const int64_t head = static_cast<int64_t>(seq) * a.num_heads + head0 + g;
    if (single) static_cast<T*>(a.out)[head * HD + d] = from_f32<T>(o);
    else a.part_out[(head * a.max_splits + blockIdx.x) * HD + d] = o;
  }
  if (single) return;
  if (tid < a.group) {
    const int64_t head = static_cast<int64_t>(seq) * a.num_heads + head0 + tid;
    a.part_ml[(head * a.max_splits + blockIdx.x) * 2] = m_s[tid];
    a.part_ml[(head * a.max_splits + blockIdx.x) * 2 + 1] = l_s[tid];
  }
  // The last split of this (sequence, kv head) to finish merges them all: out = sum_i w_i o_i / sum_i
  // w_i with w_i = l_i exp(m_i - max m). Partials are published with a fence before the count;
  // the last block reads them through L2 (__ldcg) and sets the counter back to 0 for the next launch.
  __shared__ bool last_s;
  const int num_splits = (num_keys + a.split_keys - 1) / a.split_keys;
  __threadfence();
  __syncthreads();
  if (tid == 0) last_s = atomicAdd(a.counters + blockIdx.y, 1) == num_splits - 1;
  __syncthreads();
  if (!last_s) return;
  __threadfence();
  for (int e = tid; e < a.group * HD; e += kThreads) {
    const int g = e / HD, d = e % HD;
    const int64_t head = static_cast<int64_t>(seq) * a.num_heads + head0 + g;
    const float* ml = a.part_ml + head * a.max_splits * 2;
    const float* po = a.part_out + head * a.max_splits * HD;
    float m_max = -INFINITY;
    for (int i = 0; i < num_splits; ++i) m_max = fmaxf(m_max, __ldcg(ml + 2 * i));
    float total = 0.f, v = 0.f;
    for (int i = 0; i < num_splits; ++i) {
      const float w = __ldcg(ml + 2 * i + 1) * expf(__ldcg(ml + 2 * i) - m_max);
      total += w;
      v += w * __ldcg(po + i * HD + d);
    }
    static_cast<T*>(a.out)[head * HD + d] = from_f32<T>(v / total);
  }
  if (tid == 0) a.counters[blockIdx.y] = 0;
}

template <typename T, int HD, int G, KvCacheDType KV>
Status launch_decode(const DecArgs& a, int64_t num_seqs, int splits, Context& ctx) {
  cudaStream_t s = detail::as_stream(ctx.stream());
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(num_seqs * a.num_kv_heads));
  NB_CUDA_RETURN_IF_ERROR(detail::launch_pdl(decode_attention_kernel<T, HD, G, KV>, grid, dim3(kThreads), s, ctx.pdl(), a));
  return Status::Ok();
}

template <typename T, int HD, KvCacheDType KV>
Status launch_group(const DecArgs& a, int64_t num_seqs, int splits, Context& ctx) {
  if (a.group == 1) return launch_decode<T, HD, 1, KV>(a, num_seqs, splits, ctx);
  if (a.group == 2) return launch_decode<T, HD, 2, KV>(a, num_seqs, splits, ctx);
  if (a.group <= 4) return launch_decode<T, HD, 4, KV>(a, num_seqs, splits, ctx);
  return launch_decode<T, HD, 8, KV>(a, num_seqs, splits, ctx);
}

template <typename T, KvCacheDType KV>
Status launch_dims(const DecArgs& a, int64_t head_dim, int64_t num_seqs, int splits, Context& ctx) {
  return head_dim == 64 ? launch_group<T, 64, KV>(a, num_seqs, splits, ctx) : launch_group<T, 128, KV>(a, num_seqs, splits, ctx);
}

template <typename T>
Status launch_cache(const DecArgs& a, KvCacheDType kv, int64_t head_dim, int64_t num_seqs, int splits, Context& ctx) {
  if (kv == KvCacheDType::kInt8) return launch_dims<T, KvCacheDType::kInt8>(a, head_dim, num_seqs, splits, ctx);
  if (kv == KvCacheDType::kInt4) return launch_dims<T, KvCacheDType::kInt4>(a, head_dim, num_seqs, splits, ctx);
  return launch_dims<T, KvCacheDType::kF32>(a, head_dim, num_seqs, splits, ctx);
}

}  // namespace

Status rope_kv_write(const RopeKvWriteParams& p, Context& ctx) {
  const RopeParams& r = p.rope;
  const KvWriteParams& kv = p.kv;
  if (r.num_tokens <= 0) return Status::Ok();
  if (r.head_dim <= 0 || r.head_dim % 2 != 0 || r.head_dim / 2 > kMaxHalf || r.num_tokens > kMaxGridY ||
      r.num_heads + r.num_kv_heads > INT_MAX) {
    return invalid_argument("rope_kv_write: head_dim must be even and <= 512, and at most 65535 tokens a launch");
  }
  if (kv.k != r.k || kv.num_tokens != r.num_tokens || kv.num_kv_heads != r.num_kv_heads || kv.head_dim != r.head_dim ||
      kv.act_dtype != r.act_dtype || kv.cache_dtype != KvCacheDType::kF32) {
    return invalid_argument("rope_kv_write: kv must describe rope's k (same shapes and dtype) with an act-dtype cache");
  }
  cudaStream_t s = detail::as_stream(ctx.stream());
  return detail::dispatch_act(r.act_dtype, "rope_kv_write", [&](auto tag) -> Status {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>(r.num_heads + r.num_kv_heads), static_cast<unsigned>(r.num_tokens));
    NB_CUDA_RETURN_IF_ERROR(detail::launch_pdl(
        rope_kv_write_kernel<T>, grid, dim3(static_cast<unsigned>(std::min<int64_t>(r.head_dim / 2, 256))), s, ctx.pdl(),
        reinterpret_cast<T*>(r.q), reinterpret_cast<T*>(r.k), reinterpret_cast<const T*>(kv.v),
        reinterpret_cast<T*>(kv.k_cache), reinterpret_cast<T*>(kv.v_cache), kv.slot_mapping, r.positions, r.inv_freq,
        static_cast<int>(r.num_heads), static_cast<int>(r.num_kv_heads), static_cast<int>(r.head_dim),
        r.style == RopeStyle::kInterleaved));
    return Status::Ok();
  });
}

bool decode_attention_applies(const BatchAttentionParams& p) {
  const int64_t group = p.num_kv_heads > 0 ? p.num_heads / p.num_kv_heads : 0;
  // Quantized pools: every (slot, kv head) vector starts 8-byte (int8) / 4-byte (int4) aligned.
  bool cache_ok = p.cache_dtype == KvCacheDType::kF32;
  if (p.cache_dtype == KvCacheDType::kInt8 || p.cache_dtype == KvCacheDType::kInt4) {
    const int64_t align = p.cache_dtype == KvCacheDType::kInt8 ? 8 : 4;
    const KvBlockFormat f{p.cache_dtype, p.block_size, p.num_kv_heads, p.head_dim};
    cache_ok = p.block_size > 0 && p.num_kv_heads > 0 && f.block_bytes() % align == 0 &&
               reinterpret_cast<uintptr_t>(p.k_cache) % align == 0 && reinterpret_cast<uintptr_t>(p.v_cache) % align == 0;
  }
  return p.max_query_len == 1 && p.num_tokens == p.num_seqs && (p.head_dim == 64 || p.head_dim == 128) &&
         (p.act_dtype == DType::kF16 || p.act_dtype == DType::kBF16) && cache_ok &&
         group >= 1 && group <= 8 && p.num_heads % p.num_kv_heads == 0 && p.block_size > 0 &&
         p.num_seqs * p.num_kv_heads <= 65535 && p.max_context_len <= INT_MAX / 2;
}

Status decode_attention(const BatchAttentionParams& p, Context& ctx) {
  if (p.num_seqs <= 0) return Status::Ok();
  if (!decode_attention_applies(p)) {
    return invalid_argument("decode_attention: needs one query token per sequence, head_dim 64 or 128, f16/bf16, an "
                            "act-dtype, int8 or int4 cache and group <= 8; use batch_attention otherwise");
  }
  DecArgs a{};
  a.q = p.q;
  a.out = p.out;
  a.k_cache = p.k_cache;
  a.v_cache = p.v_cache;
  a.block_tables = p.block_tables;
  a.start_pos = p.start_pos;
  a.table_stride = p.block_table_stride;
  a.block_size = static_cast<int>(p.block_size);
  a.num_heads = static_cast<int>(p.num_heads);
  a.num_kv_heads = static_cast<int>(p.num_kv_heads);
  a.group = static_cast<int>(p.num_heads / p.num_kv_heads);
  a.scale = p.scale;
  const KvBlockFormat kvf{p.cache_dtype, p.block_size, p.num_kv_heads, p.head_dim};
  a.block_bytes = kvf.block_bytes();
  a.scales_at = kvf.scales_offset();
  a.zeros_at = kvf.zeros_offset();
  // Small batches: short splits so that (sequence, kv head, split) blocks fill the GPU; large ones:
  // the longest split shared memory holds. The context forces a size in tests.
  // Small batches: splits of one load step (32 keys at head_dim 128, 64 at 64).
  int64_t split = ctx.decode_split_keys();
  const int64_t step_keys = (32 / (p.head_dim / 8)) * kWarpsA * kUnroll;
  if (split <= 0) split = p.num_seqs * p.num_kv_heads < 2 * int64_t{ctx.info().num_sms} ? step_keys : kMaxSplitKeys;
  split = std::min<int64_t>(split, kMaxSplitKeys);
  const int64_t splits = ceil_div(std::max<int64_t>(p.max_context_len, 1), split);
  if (splits > 65535) return invalid_argument("decode_attention: too many splits");
  const size_t need = attention_split_workspace_bytes(p.num_seqs, p.num_heads, p.head_dim, splits);
  if (splits > 1 && need > ctx.workspace_bytes()) {
    return resource_exhausted("decode_attention: needs " + std::to_string(need) + " workspace bytes; use batch_attention");
  }
  a.split_keys = static_cast<int>(split);
  a.max_splits = static_cast<int>(splits);
  a.part_out = static_cast<float*>(ctx.workspace());
  a.part_ml = a.part_out + p.num_seqs * p.num_heads * splits * p.head_dim;
  a.counters = ctx.sync_counters();
  const int sp = static_cast<int>(splits);
  if (p.act_dtype == DType::kF16) return launch_cache<__half>(a, p.cache_dtype, p.head_dim, p.num_seqs, sp, ctx);
  return launch_cache<__nv_bfloat16>(a, p.cache_dtype, p.head_dim, p.num_seqs, sp, ctx);
}

}  // namespace nb::cuda
