// Paged attention for a batch of sequences (BatchAttentionParams): one kernel for prefill and decode,
// flash-attention style (online softmax over key tiles held in shared memory), plus a merge kernel
// for decode batches split along the keys (flash-decoding). Prefill in f16/bf16 with head_dim 64 or
// 128 goes to the tensor-core kernel of attention_mma.cu instead; this one covers the rest (f32,
// quantized caches, other head sizes, decode).
//
// Work split. A block (128 threads) owns one (sequence, kv head, row tile, key split). Its "rows" are
// the (query token, query head of the kv head's group) pairs, flattened token-major: row r is token
// r / group, head kvh * group + r % group. So GQA heads that share a kv head share every K/V tile the
// block loads, and a decode step (one token) puts the whole group in one block.
// Per key tile the block: maps the tile's positions through the block table; loads K and V (as f32)
// into shared memory; computes the rows' scores (causal mask: row at position qpos sees keys <= qpos);
// updates each row's running max m and sum l (one warp per row); rescales and accumulates P.V in
// registers. Shapes are compile-time per DMAX (head_dim rounded up to 64/128/256; padding is zero).
//
// Quantized caches (cache_dtype int8/int4, backend/kv_format.h): the tile load reads codes (32 bits
// a thread when rows are aligned, else bytes) and the key's f16 scale (and zero) and writes
// dequantized f32 to shared memory, q * s (int8, exact in f32)
// or fmaf(q, s, z) (int4, one rounding), the values cpu::ref::kv_dequantize_head produces; the rest
// of the kernel is unchanged. The cache format is a template parameter (kF32 = "in act dtype T").
//
// Split-K (decode only, max_query_len == 1): with few (sequence, kv head) blocks, each sequence's keys
// are cut into ranges of split_keys (128 unless the Context forces another size); every range writes its normalized partial output and (m, l) to
// the workspace and attention_merge_kernel combines them. Shared memory stays under the 48 KB static
// limit for every DMAX (no opt-in attribute needed).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "backend/cuda/attention_mma.h"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"

namespace nb::cuda {

using detail::ceil_div;
using detail::from_f32;
using detail::to_f32;

namespace {

constexpr int kThreads = 128;
constexpr int64_t kDecodeSplitKeys = 128;
constexpr int kWarps = kThreads / 32;

template <int DMAX>
struct Tile {
  static constexpr int kRows = 2048 / DMAX;                  // 32 / 16 / 8 rows per block
  static constexpr int kKeys = DMAX <= 128 ? 32 : 16;        // keys per shared-memory tile (<= 32: one per lane)
  static constexpr int kAcc = kRows * DMAX / kThreads;       // 16 output elements per thread
  static_assert(kRows * DMAX % kThreads == 0, "rows x dims must split evenly over the threads");
};

struct AttnArgs {
  const void* q;
  void* out;
  const void* k_cache;
  const void* v_cache;
  const int32_t* block_tables;
  const int32_t* query_start;
  const int32_t* start_pos;
  int64_t block_table_stride;
  int block_size;
  int num_heads, num_kv_heads, head_dim, group;
  float scale;
  int split_keys;    // > 0: decode split-K; keys per split, blockIdx.z picks the split
  int max_splits;    // gridDim.z; partial buffers are [num_seqs, num_heads, max_splits, ...]
  float* part_out;   // [num_seqs, num_heads, max_splits, head_dim] normalized partial outputs
  float* part_ml;    // [num_seqs, num_heads, max_splits, 2] (running max, sum of exp) per split
  KvBlockFormat kvf; // the pools' format when quantized
  bool word_loads;   // quantized: head_dim % 8 == 0 and 4-byte aligned rows, so 32-bit code loads
};

template <typename T, int DMAX, KvCacheDType KV>
__global__ void __launch_bounds__(kThreads) attention_kernel(const AttnArgs a) {
  constexpr bool kQuant = KV == KvCacheDType::kInt8 || KV == KvCacheDType::kInt4;
  using Tl = Tile<DMAX>;
  constexpr int kRows = Tl::kRows, kKeys = Tl::kKeys, kAcc = Tl::kAcc;
  __shared__ float q_s[kRows][DMAX + 1];   // scaled queries; +1 pads rows apart in the banks
  __shared__ float k_s[kKeys][DMAX + 1];   // +1: lanes reading different keys at one d hit distinct banks
  __shared__ float v_s[kKeys][DMAX];
  __shared__ float p_s[kRows][kKeys];      // scores, then probabilities
  __shared__ float m_s[kRows], l_s[kRows], alpha_s[kRows];
  __shared__ int qpos_s[kRows];
  __shared__ int64_t slot_s[kKeys];        // element offset of key j's (slot, kv head) row in the cache
                                           // (quantized: byte offset of its values in the pools)
  __shared__ float ks_s[kKeys], kz_s[kKeys], vs_s[kKeys], vz_s[kKeys];  // quantized: scales and zeros

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int seq = blockIdx.y / a.num_kv_heads;
  const int kvh = blockIdx.y % a.num_kv_heads;
  const int q0 = a.query_start[seq];
  const int num_q = a.query_start[seq + 1] - q0;
  const int sp = a.start_pos[seq];
  const int rows_total = num_q * a.group;
  const int row_begin = blockIdx.x * kRows;
  if (row_begin >= rows_total) return;  // whole block: no barrier skipped by some threads only
  const int rows_valid = min(kRows, rows_total - row_begin);
  const int last_token = (row_begin + rows_valid - 1) / a.group;
  const int key_end = sp + last_token + 1;  // the tile's rows see at most keys [0, key_end)
  int key_lo = 0, key_hi = key_end;
  if (a.split_keys > 0) {
    key_lo = blockIdx.z * a.split_keys;
    key_hi = min(key_end, key_lo + a.split_keys);
    if (key_lo >= key_hi) return;  // this sequence is shorter than the split; the merge skips it
  }
  [[maybe_unused]] const int64_t kv_row = static_cast<int64_t>(a.num_kv_heads) * a.head_dim;
  const T* q = static_cast<const T*>(a.q);
  [[maybe_unused]] const T* kc = static_cast<const T*>(a.k_cache);
  [[maybe_unused]] const T* vc = static_cast<const T*>(a.v_cache);

  for (int e = tid; e < kRows * DMAX; e += kThreads) {
    const int r = e / DMAX, d = e % DMAX;
    float v = 0.f;
    if (r < rows_valid && d < a.head_dim) {
      const int row = row_begin + r;
      const int64_t token = q0 + row / a.group;
      const int head = kvh * a.group + row % a.group;
      v = to_f32(q[(token * a.num_heads + head) * a.head_dim + d]) * a.scale;
    }
    q_s[r][d] = v;
  }
  if (tid < kRows) {
    qpos_s[tid] = sp + (row_begin + tid) / a.group;
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.f;
  }
  float acc[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = 0.f;

  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.block_table_stride;
  for (int k0 = key_lo; k0 < key_hi; k0 += kKeys) {
    const int num_keys = min(kKeys, key_hi - k0);
    __syncthreads();  // the previous tile's k_s/v_s/p_s/slot_s reads are done
    if (tid < num_keys) {
      const int pos = k0 + tid;
      const int64_t block = table[pos / a.block_size];
      const int64_t slot = block * a.block_size + pos % a.block_size;
      if constexpr (kQuant) {
        const uint8_t* kp = static_cast<const uint8_t*>(a.k_cache);
        const uint8_t* vp = static_cast<const uint8_t*>(a.v_cache);
        slot_s[tid] = a.kvf.value_offset(slot, kvh);
        ks_s[tid] = kv_f16_field(kp + a.kvf.scale_offset(slot, kvh));
        vs_s[tid] = kv_f16_field(vp + a.kvf.scale_offset(slot, kvh));
        if constexpr (KV == KvCacheDType::kInt4) {
          kz_s[tid] = kv_f16_field(kp + a.kvf.zero_offset(slot, kvh));
          vz_s[tid] = kv_f16_field(vp + a.kvf.zero_offset(slot, kvh));
        }
      } else {
        slot_s[tid] = slot * kv_row + static_cast<int64_t>(kvh) * a.head_dim;
      }
    }
    __syncthreads();
    bool words = false;
    if constexpr (kQuant) words = a.word_loads;
    if constexpr (kQuant) {
      if (words) {
        // One 32-bit load a thread and step: 4 int8 codes or 8 int4 codes (element 2i in the low
        // nibble of byte i, so element i of the word in bits [4i, 4i + 4)); dequantized as below.
        constexpr int kPer = KV == KvCacheDType::kInt4 ? 8 : 4;
        const uint8_t* kp = static_cast<const uint8_t*>(a.k_cache);
        const uint8_t* vp = static_cast<const uint8_t*>(a.v_cache);
        for (int e = tid; e < kKeys * DMAX / kPer; e += kThreads) {
          const int j = e * kPer / DMAX, d = e * kPer % DMAX;
          float kv[kPer], vv[kPer];
#pragma unroll
          for (int i = 0; i < kPer; ++i) kv[i] = vv[i] = 0.f;
          if (j < num_keys && d < a.head_dim) {  // head_dim % 8 == 0: all kPer elements are in range
            const int64_t at = slot_s[j] + d / (kPer / 4);
            const uint32_t kw = *reinterpret_cast<const uint32_t*>(kp + at);
            const uint32_t vw = *reinterpret_cast<const uint32_t*>(vp + at);
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
              if constexpr (KV == KvCacheDType::kInt8) {
                kv[i] = static_cast<float>(static_cast<int8_t>((kw >> (8 * i)) & 0xFF)) * ks_s[j];
                vv[i] = static_cast<float>(static_cast<int8_t>((vw >> (8 * i)) & 0xFF)) * vs_s[j];
              } else {
                kv[i] = fmaf(static_cast<float>((kw >> (4 * i)) & 15), ks_s[j], kz_s[j]);
                vv[i] = fmaf(static_cast<float>((vw >> (4 * i)) & 15), vs_s[j], vz_s[j]);
              }
            }
          }
#pragma unroll
          for (int i = 0; i < kPer; ++i) {
            k_s[j][d + i] = kv[i];
            v_s[j][d + i] = vv[i];
          }
        }
      }
    }
    for (int e = words ? kKeys * DMAX : tid; e < kKeys * DMAX; e += kThreads) {  // element by element
      const int j = e / DMAX, d = e % DMAX;
      float kv = 0.f, vv = 0.f;
      // Keys past the range are never read: their slots may hold anything (NaN in the tests).
      if (j < num_keys && d < a.head_dim) {
        if constexpr (KV == KvCacheDType::kInt8) {
          const int8_t* kp = static_cast<const int8_t*>(a.k_cache);
          const int8_t* vp = static_cast<const int8_t*>(a.v_cache);
          kv = static_cast<float>(kp[slot_s[j] + d]) * ks_s[j];
          vv = static_cast<float>(vp[slot_s[j] + d]) * vs_s[j];
        } else if constexpr (KV == KvCacheDType::kInt4) {
          const uint8_t* kp = static_cast<const uint8_t*>(a.k_cache);
          const uint8_t* vp = static_cast<const uint8_t*>(a.v_cache);
          const int shift = (d & 1) * 4;  // element 2i in the low nibble of byte i
          kv = fmaf(static_cast<float>((kp[slot_s[j] + d / 2] >> shift) & 15), ks_s[j], kz_s[j]);
          vv = fmaf(static_cast<float>((vp[slot_s[j] + d / 2] >> shift) & 15), vs_s[j], vz_s[j]);
        } else {
          kv = to_f32(kc[slot_s[j] + d]);
          vv = to_f32(vc[slot_s[j] + d]);
        }
      }
      k_s[j][d] = kv;
      v_s[j][d] = vv;
    }
    __syncthreads();
    for (int pidx = tid; pidx < rows_valid * kKeys; pidx += kThreads) {
      const int r = pidx / kKeys, j = pidx % kKeys;
      float s = -INFINITY;
      if (j < num_keys && k0 + j <= qpos_s[r]) {
        s = 0.f;
#pragma unroll 16
        for (int d = 0; d < DMAX; ++d) s = fmaf(q_s[r][d], k_s[j][d], s);
      }
      p_s[r][j] = s;
    }
    __syncthreads();
    for (int r = warp; r < rows_valid; r += kWarps) {
      const float s = lane < kKeys ? p_s[r][lane] : -INFINITY;
      float mx = s;
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_old = m_s[r];
      const float m_new = fmaxf(m_old, mx);
      // m_new == -inf only if every key so far is masked for this row: nothing to add yet.
      const float p = m_new == -INFINITY ? 0.f : expf(s - m_new);
      float sum = p;
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      const float alpha = m_new == -INFINITY ? 1.f : expf(m_old - m_new);
      if (lane < kKeys) p_s[r][lane] = p;
      __syncwarp();
      if (lane == 0) {
        alpha_s[r] = alpha;
        l_s[r] = l_s[r] * alpha + sum;
        m_s[r] = m_new;
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kAcc; ++i) {
      const int e = tid + i * kThreads;
      const int r = e / DMAX, d = e % DMAX;
      if (r < rows_valid) {
        float v = acc[i] * alpha_s[r];
#pragma unroll
        for (int j = 0; j < kKeys; ++j) v = fmaf(p_s[r][j], v_s[j][d], v);  // p = 0 and v = 0 past num_keys
        acc[i] = v;
      }
    }
  }
  // The last tile's l_s/m_s writes were ordered before the barrier preceding the P.V loop.
  if (a.split_keys > 0) {
    // Decode: one token, row r is head kvh * group + r.
#pragma unroll
    for (int i = 0; i < kAcc; ++i) {
      const int e = tid + i * kThreads;
      const int r = e / DMAX, d = e % DMAX;
      if (r < rows_valid && d < a.head_dim) {
        const int64_t head = static_cast<int64_t>(seq) * a.num_heads + kvh * a.group + row_begin + r;
        a.part_out[(head * a.max_splits + blockIdx.z) * a.head_dim + d] = acc[i] / l_s[r];
      }
    }
    if (tid < rows_valid) {
      const int64_t head = static_cast<int64_t>(seq) * a.num_heads + kvh * a.group + row_begin + tid;
      a.part_ml[(head * a.max_splits + blockIdx.z) * 2] = m_s[tid];
      a.part_ml[(head * a.max_splits + blockIdx.z) * 2 + 1] = l_s[tid];
    }
    return;
  }
  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int i = 0; i < kAcc; ++i) {
    const int e = tid + i * kThreads;
    const int r = e / DMAX, d = e % DMAX;
    if (r < rows_valid && d < a.head_dim) {
      const int row = row_begin + r;
      const int64_t token = q0 + row / a.group;
      const int head = kvh * a.group + row % a.group;
      out[(token * a.num_heads + head) * a.head_dim + d] = from_f32<T>(acc[i] / l_s[r]);
    }
  }
}

// One block per (sequence, head) of a split decode batch: out = sum_i w_i o_i / sum_i w_i with
// w_i = l_i exp(m_i - max m), over the splits the sequence actually used.
template <typename T>
__global__ void attention_merge_kernel(const AttnArgs a) {
  const int seq = blockIdx.x / a.num_heads;
  const int head = blockIdx.x % a.num_heads;
  const int q0 = a.query_start[seq];
  if (a.query_start[seq + 1] - q0 != 1) return;  // no query in this sequence
  const int num_keys = a.start_pos[seq] + 1;
  const int num_splits = (num_keys + a.split_keys - 1) / a.split_keys;
  const int64_t h = static_cast<int64_t>(seq) * a.num_heads + head;
  const float* ml = a.part_ml + h * a.max_splits * 2;
  float m_max = -INFINITY;
  for (int i = 0; i < num_splits; ++i) m_max = fmaxf(m_max, ml[2 * i]);
  float total = 0.f;
  for (int i = 0; i < num_splits; ++i) total += ml[2 * i + 1] * expf(ml[2 * i] - m_max);
  const float inv_total = 1.f / total;
  T* out = static_cast<T*>(a.out) + (static_cast<int64_t>(q0) * a.num_heads + head) * a.head_dim;
  const float* po = a.part_out + h * a.max_splits * a.head_dim;
  for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    float v = 0.f;
    for (int i = 0; i < num_splits; ++i) v += ml[2 * i + 1] * expf(ml[2 * i] - m_max) * po[i * a.head_dim + d];
    out[d] = from_f32<T>(v * inv_total);
  }
}

template <typename T, int DMAX, KvCacheDType KV>
Status launch(const AttnArgs& a, int64_t max_query_len, int64_t num_seqs, int num_splits, cudaStream_t stream) {
  const int64_t tiles = ceil_div(max_query_len * a.group, Tile<DMAX>::kRows);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(num_seqs * a.num_kv_heads),
                  static_cast<unsigned>(num_splits));
  attention_kernel<T, DMAX, KV><<<grid, kThreads, 0, stream>>>(a);
  NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (a.split_keys > 0) {
    attention_merge_kernel<T><<<static_cast<unsigned>(num_seqs * a.num_heads), 128, 0, stream>>>(a);
    NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return Status::Ok();
}

}  // namespace

size_t attention_split_workspace_bytes(int64_t num_seqs, int64_t num_heads, int64_t head_dim, int64_t num_splits) {
  return static_cast<size_t>(num_seqs * num_heads * num_splits * (head_dim + 2)) * sizeof(float);
}

Status batch_attention(const BatchAttentionParams& p, Context& ctx) {
  if (p.num_seqs <= 0 || p.num_tokens <= 0) return Status::Ok();
  if (p.head_dim <= 0 || p.head_dim > 256) {
    return unimplemented("attention: head_dim " + std::to_string(p.head_dim) + " is not supported on CUDA (1..256)");
  }
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0) {
    return invalid_argument("attention: num_heads must be a multiple of num_kv_heads");
  }
  if (p.block_size <= 0 || p.max_query_len <= 0 || p.max_context_len < p.max_query_len) {
    return invalid_argument("attention: block_size, max_query_len must be positive and max_context_len >= max_query_len");
  }
  // Kernel indices are int: positions, rows and heads stay far below 2^31; the grid's y is capped.
  if (p.max_context_len > INT32_MAX / 2 || p.max_query_len * p.num_heads > INT32_MAX / 2 ||
      p.num_seqs * p.num_kv_heads > 65535) {
    return invalid_argument("attention: batch too large for one launch (num_seqs * num_kv_heads <= 65535); split it");
  }
  // Prefill with f16/bf16 and head_dim 64/128: the tensor-core kernel (attention_mma.cu).
  if (attention_mma_applies(p)) return attention_mma(p, ctx);
  KvCacheDType kv = p.cache_dtype;
  switch (p.cache_dtype) {
    case KvCacheDType::kF32:
      break;  // in act_dtype
    case KvCacheDType::kF16:
      if (p.act_dtype != DType::kF16) {
        return unimplemented("attention: an f16 KV cache needs f16 activations on CUDA (or use int8/int4)");
      }
      kv = KvCacheDType::kF32;  // = the act-dtype cache
      break;
    case KvCacheDType::kInt8:
      break;
    case KvCacheDType::kInt4:
      if (p.head_dim % 2 != 0) return invalid_argument("attention: an int4 KV cache needs an even head_dim");
      break;
  }
  AttnArgs a{};
  a.kvf = KvBlockFormat{p.cache_dtype, p.block_size, p.num_kv_heads, p.head_dim};
  // Every (slot, kv head) row then starts 4-byte aligned: block_bytes and head_bytes are multiples of 4.
  a.word_loads = p.head_dim % 8 == 0 && a.kvf.block_bytes() % 4 == 0 &&
                 reinterpret_cast<uintptr_t>(p.k_cache) % 4 == 0 && reinterpret_cast<uintptr_t>(p.v_cache) % 4 == 0;
  a.q = p.q;
  a.out = p.out;
  a.k_cache = p.k_cache;
  a.v_cache = p.v_cache;
  a.block_tables = p.block_tables;
  a.query_start = p.query_start;
  a.start_pos = p.start_pos;
  a.block_table_stride = p.block_table_stride;
  a.block_size = static_cast<int>(p.block_size);
  a.num_heads = static_cast<int>(p.num_heads);
  a.num_kv_heads = static_cast<int>(p.num_kv_heads);
  a.head_dim = static_cast<int>(p.head_dim);
  a.group = static_cast<int>(p.num_heads / p.num_kv_heads);
  a.scale = p.scale;
  const int dmax = p.head_dim <= 64 ? 64 : p.head_dim <= 128 ? 128 : 256;
  const int rows_per_block = 2048 / dmax;

  // Decode split (flash-decoding) when the batch alone does not fill the GPU.
  int num_splits = 1;
  if (p.max_query_len == 1) {
    int64_t split_keys = ctx.decode_split_keys();
    if (split_keys <= 0) {
      // Too few (sequence, kv head) blocks to fill the GPU twice: cut the keys into ranges of 128.
      // The range size does not depend on max_context_len, so a plan made for the longest context
      // (a captured CUDA graph) costs a short sequence only its empty splits, which exit at once.
      const int64_t blocks = p.num_seqs * p.num_kv_heads * ceil_div(a.group, rows_per_block);
      const int64_t target = 2 * int64_t{ctx.info().num_sms};
      split_keys = blocks < target && p.max_context_len > kDecodeSplitKeys ? kDecodeSplitKeys : p.max_context_len;
    }
    int64_t splits = ceil_div(p.max_context_len, split_keys);
    const size_t need = attention_split_workspace_bytes(p.num_seqs, p.num_heads, p.head_dim, splits);
    if (splits > 1 && need > ctx.workspace_bytes()) {
      if (ctx.decode_split_keys() > 0) {
        return resource_exhausted("attention: split decode needs " + std::to_string(need) +
                                  " workspace bytes; create the Context with a larger workspace");
      }
      splits = 1;  // automatic choice: run unsplit rather than fail
    }
    if (splits > 65535) return invalid_argument("attention: too many decode splits; raise the split size");
    if (splits > 1) {
      num_splits = static_cast<int>(splits);
      a.split_keys = static_cast<int>(split_keys);
      a.max_splits = num_splits;
      a.part_out = static_cast<float*>(ctx.workspace());
      a.part_ml = a.part_out + p.num_seqs * p.num_heads * splits * p.head_dim;
    }
  }
  cudaStream_t stream = detail::as_stream(ctx.stream());
  return detail::dispatch_act(p.act_dtype, "attention", [&](auto tag) -> Status {
    using T = decltype(tag);
    auto by_dim = [&](auto kv_tag) -> Status {
      constexpr KvCacheDType KV = decltype(kv_tag)::value;
      if (dmax == 64) return launch<T, 64, KV>(a, p.max_query_len, p.num_seqs, num_splits, stream);
      if (dmax == 128) return launch<T, 128, KV>(a, p.max_query_len, p.num_seqs, num_splits, stream);
      return launch<T, 256, KV>(a, p.max_query_len, p.num_seqs, num_splits, stream);
    };
    if (kv == KvCacheDType::kInt8) return by_dim(std::integral_constant<KvCacheDType, KvCacheDType::kInt8>{});
    if (kv == KvCacheDType::kInt4) return by_dim(std::integral_constant<KvCacheDType, KvCacheDType::kInt4>{});
    return by_dim(std::integral_constant<KvCacheDType, KvCacheDType::kF32>{});
  });
}

}  // namespace nb::cuda
