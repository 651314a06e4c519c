// Prefill attention on tensor cores (attention_mma.h): flash-attention 2 style with
// mma.sync.m16n8k16 (f32 accumulation), for f16/bf16 activations with the cache in the same dtype and
// head_dim 64 or 128. Everything else, and decode (one query token a sequence), stays with
// attention.cu's kernels.
//
// Work split. A block (4 warps) owns one (sequence, kv head, tile of 64 rows); rows are (query token,
// query head of the kv head's group) pairs, token-major as in attention.cu, so the heads of a GQA
// group share every K/V tile the block loads. Warp w owns rows 16w .. 16w + 15.
// Per tile of 64 keys: the block maps the keys' positions through the block table and copies K (as
// stored, [key][d]) and V (transposed, [d][key]) into shared memory, 16 bytes a load; each warp
//   S = Q K^T          16 x 64 scores, Q's A fragments kept in registers for the whole key loop;
//   scale, causal mask (a row at position qpos sees keys <= qpos), online softmax per row (the
//                      4 lanes of a quad hold a row: max and sum over them with two shuffles);
//   O += P V           P from S's accumulators as A fragments (the layouts line up), twice: its
//                      rounding to T and the remainder (p - T(p), rounded), so P carries ~2x T's
//                      mantissa and the result stays within the f32-P kernel's tolerance.
// Out = O / l, rounded to T. Keys past a sequence's end are never read (their slots may hold NaN).
// Shared memory: one 64 x (D + 8) tile for Q, then K (the padding keeps fragment reads free of bank
// conflicts), and V^T at D x 72: 35 KB for D = 128, under the 48 KB static limit.
#include "backend/cuda/attention_mma.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/mma.cuh"

namespace nb::cuda {

using detail::from_f32;
using detail::mma_16816;
using detail::to_f32;

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 16 * kWarps;  // query rows a block
constexpr int kKeys = 64;           // keys a tile
constexpr int kVStride = kKeys + 8; // halves per row of V^T in shared memory

template <typename T>
__device__ __forceinline__ uint32_t bits16(T v) {
  uint16_t b;
  memcpy(&b, &v, 2);
  return b;
}

// Two values rounded to T, packed as an mma operand word (the first in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return bits16(from_f32<T>(lo)) | bits16(from_f32<T>(hi)) << 16;
}

// p0, p1 as two words: their rounding to T, and the rounding of what that left out.
template <typename T>
__device__ __forceinline__ void split2(float p0, float p1, uint32_t& hi, uint32_t& lo) {
  const float h0 = to_f32(from_f32<T>(p0)), h1 = to_f32(from_f32<T>(p1));
  hi = pack2<T>(h0, h1);
  lo = pack2<T>(p0 - h0, p1 - h1);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_mma_kernel(const BatchAttentionParams p) {
  constexpr int kStride = D + 8;  // halves per row of the Q / K tile
  __shared__ __align__(16) uint16_t kq_s[kRows * kStride];  // Q, then each key tile's K: [row][d]
  __shared__ __align__(16) uint16_t vt_s[D * kVStride];     // the key tile's V, transposed: [d][key]
  __shared__ int64_t slot_s[kKeys];                         // element offset of key j's row; -1: none

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, gid = lane / 4, tig = lane % 4;
  const int num_heads = static_cast<int>(p.num_heads), num_kv_heads = static_cast<int>(p.num_kv_heads);
  const int group = num_heads / num_kv_heads, block_size = static_cast<int>(p.block_size);
  const int seq = blockIdx.y / num_kv_heads, kvh = blockIdx.y % num_kv_heads;
  const int q0 = p.query_start[seq];
  const int rows_total = (p.query_start[seq + 1] - q0) * group;
  const int sp = p.start_pos[seq];
  const int row_begin = blockIdx.x * kRows;
  if (row_begin >= rows_total) return;  // the whole block
  const int rows_valid = min(kRows, rows_total - row_begin);
  const int key_end = sp + (row_begin + rows_valid - 1) / group + 1;  // keys [0, key_end) are seen
  const int64_t kv_row = static_cast<int64_t>(num_kv_heads) * D;
  const T* q = reinterpret_cast<const T*>(p.q);
  const T* kc = reinterpret_cast<const T*>(p.k_cache);
  const T* vc = reinterpret_cast<const T*>(p.v_cache);

  // Q tile (zero rows past the valid ones), 8 elements a load.
  for (int e = tid; e < kRows * D / 8; e += kThreads) {
    const int r = e / (D / 8), c = e % (D / 8) * 8;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (r < rows_valid) {
      const int row = row_begin + r;
      const int64_t token = q0 + row / group;
      const int head = kvh * group + row % group;
      v = *reinterpret_cast<const uint4*>(q + (token * num_heads + head) * D + c);
    }
    *reinterpret_cast<uint4*>(&kq_s[r * kStride + c]) = v;
  }
  __syncthreads();
  const int wr = warp * 16;           // this warp's first row in the tile
  const bool live = wr < rows_valid;  // a warp with no valid row only helps load
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = wr + gid + 8 * (r & 1), col = kk * 16 + 2 * tig + 8 * (r >> 1);
      qf[kk][r] = *reinterpret_cast<const uint32_t*>(&kq_s[row * kStride + col]);
    }
  // This lane's two rows (gid and gid + 8 of the warp's 16): their positions; -1 sees no key.
  int qpos[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = wr + gid + 8 * h;
    qpos[h] = r < rows_valid ? sp + (row_begin + r) / group : -1;
  }
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.block_table_stride;

  for (int k0 = 0; k0 < key_end; k0 += kKeys) {
    __syncthreads();  // Q fragments / the previous tile's reads are done
    if (tid < kKeys) {
      const int pos = k0 + tid;
      int64_t at = -1;
      if (pos < key_end) {
        const int64_t block = table[pos / block_size];
        at = (block * block_size + pos % block_size) * kv_row + static_cast<int64_t>(kvh) * D;
      }
      slot_s[tid] = at;
    }
    __syncthreads();
    for (int e = tid; e < kKeys * D / 8; e += kThreads) {
      const int j = e / (D / 8), c = e % (D / 8) * 8;
      uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = kv;
      if (slot_s[j] >= 0) {
        kv = *reinterpret_cast<const uint4*>(kc + slot_s[j] + c);
        vv = *reinterpret_cast<const uint4*>(vc + slot_s[j] + c);
      }
      *reinterpret_cast<uint4*>(&kq_s[j * kStride + c]) = kv;
      const uint32_t w[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
      for (int i = 0; i < 8; ++i) vt_s[(c + i) * kVStride + j] = static_cast<uint16_t>(w[i / 2] >> (16 * (i % 2)));
    }
    __syncthreads();
    if (!live) continue;  // no barrier below in this iteration

    // S = Q K^T: n-tile jn holds keys k0 + 8 jn .. + 7; this lane's elements i: row gid + 8 (i / 2),
    // key k0 + 8 jn + 2 tig + i % 2.
    float s[kKeys / 8][4];
#pragma unroll
    for (int jn = 0; jn < kKeys / 8; ++jn) {
      s[jn][0] = s[jn][1] = s[jn][2] = s[jn][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint16_t* kr = &kq_s[(jn * 8 + gid) * kStride + kk * 16 + 2 * tig];
        mma_16816<T>(s[jn], qf[kk], *reinterpret_cast<const uint32_t*>(kr), *reinterpret_cast<const uint32_t*>(kr + 8));
      }
    }
    // Scale, mask, online softmax (row h of this lane: elements 2h, 2h + 1 of every n-tile).
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int jn = 0; jn < kKeys / 8; ++jn)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = k0 + jn * 8 + 2 * tig + (i & 1);
        const float v = key <= qpos[i >> 1] ? s[jn][i] * p.scale : -INFINITY;
        s[jn][i] = v;
        mx[i >> 1] = fmaxf(mx[i >> 1], v);
      }
    float alpha[2], sum[2] = {0.f, 0.f};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float m_new = fmaxf(m[h], mx[h]);
      // m_new == -inf only while every key so far is masked for the row: nothing to add yet.
      alpha[h] = m_new == -INFINITY ? 1.f : expf(m[h] - m_new);
      m[h] = m_new;
    }
#pragma unroll
    for (int jn = 0; jn < kKeys / 8; ++jn)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float p = m[i >> 1] == -INFINITY ? 0.f : expf(s[jn][i] - m[i >> 1]);
        s[jn][i] = p;
        sum[i >> 1] += p;
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 1);
      sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 2);
      l[h] = l[h] * alpha[h] + sum[h];
    }
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][0] *= alpha[0];
      o[j][1] *= alpha[0];
      o[j][2] *= alpha[1];
      o[j][3] *= alpha[1];
    }
    // O += P V over k-steps of 16 keys: P's A fragment of step t is S's n-tiles 2t and 2t + 1.
#pragma unroll
    for (int t = 0; t < kKeys / 16; ++t) {
      uint32_t ph[4], pl[4];
      split2<T>(s[2 * t][0], s[2 * t][1], ph[0], pl[0]);
      split2<T>(s[2 * t][2], s[2 * t][3], ph[1], pl[1]);
      split2<T>(s[2 * t + 1][0], s[2 * t + 1][1], ph[2], pl[2]);
      split2<T>(s[2 * t + 1][2], s[2 * t + 1][3], ph[3], pl[3]);
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        const uint16_t* vr = &vt_s[(j * 8 + gid) * kVStride + t * 16 + 2 * tig];
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(vr), b1 = *reinterpret_cast<const uint32_t*>(vr + 8);
        mma_16816<T>(o[j], ph, b0, b1);
        mma_16816<T>(o[j], pl, b0, b1);
      }
    }
  }
  if (!live) return;
  T* out = reinterpret_cast<T*>(p.out);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = wr + gid + 8 * h;
    if (r >= rows_valid) continue;
    const float inv = 1.f / l[h];  // l >= 1: every valid row sees key 0 at least, and its own maximum
    const int row = row_begin + r;
    const int64_t token = q0 + row / group;
    const int head = kvh * group + row % group;
    T* dst = out + (token * num_heads + head) * D + 2 * tig;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<uint32_t*>(dst + j * 8) = pack2<T>(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
    }
  }
}

bool aligned(const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; }

bool mma_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("NIBBLE_ATTN_MMA");  // comparison switch: 0 = the f32 SIMT kernel
    return e == nullptr || std::string(e) != "0";
  }();
  return on;
}

}  // namespace

bool attention_mma_applies(const BatchAttentionParams& p) {
  const bool cache_is_act = p.cache_dtype == KvCacheDType::kF32 ||
                            (p.cache_dtype == KvCacheDType::kF16 && p.act_dtype == DType::kF16);
  return mma_enabled() && p.max_query_len > 1 && (p.act_dtype == DType::kF16 || p.act_dtype == DType::kBF16) &&
         cache_is_act && (p.head_dim == 64 || p.head_dim == 128) && p.num_kv_heads > 0 &&
         p.num_heads % p.num_kv_heads == 0 && p.block_size > 0 && aligned(p.q, 16) && aligned(p.k_cache, 16) &&
         aligned(p.v_cache, 16) && aligned(p.out, 4) && p.max_query_len * p.num_heads <= INT32_MAX / 2 &&
         p.max_context_len <= INT32_MAX / 2 && p.num_seqs * p.num_kv_heads <= 65535;
}

Status attention_mma(const BatchAttentionParams& p, Context& ctx) {
  if (!attention_mma_applies(p)) {
    return invalid_argument("attention_mma: needs max_query_len > 1, f16/bf16 with an act-dtype cache, head_dim 64 "
                            "or 128 and 16-byte aligned q/k/v; use batch_attention");
  }
  if (p.num_seqs <= 0 || p.num_tokens <= 0) return Status::Ok();
  const int64_t tiles = detail::ceil_div(p.max_query_len * (p.num_heads / p.num_kv_heads), int64_t{kRows});
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.num_seqs * p.num_kv_heads));
  cudaStream_t stream = detail::as_stream(ctx.stream());
  return detail::dispatch_act(p.act_dtype, "attention_mma", [&](auto tag) -> Status {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      return invalid_argument("attention_mma: f32 activations");
    } else {
      if (p.head_dim == 64) {
        attention_mma_kernel<T, 64><<<grid, kThreads, 0, stream>>>(p);
      } else {
        attention_mma_kernel<T, 128><<<grid, kThreads, 0, stream>>>(p);
      }
      NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      return Status::Ok();
    }
  });
}

}  // namespace nb::cuda
