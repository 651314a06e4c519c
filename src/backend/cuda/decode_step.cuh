// Internal to backend/cuda/decode_step.cu: the persistent decode step's shared pieces — its
// arguments, the grid barrier, the f16/bf16 packing helpers — and its attention stage (RoPE of q and
// of the new key, the KV cache write, blocks per head, the merge). See decode_step.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/common.cuh"
#include "backend/ops.h"

namespace nb::cuda::step {

using detail::from_f32;
using detail::to_f32;

constexpr int kWarpsB = 16;  // one block an SM: one staging of the input and half the barrier arrivals of 2 x 8
constexpr int kThreadsB = kWarpsB * 32;
constexpr int kMaxBlocks = 1024;
enum class Epi { kSplit, kAdd, kSwiglu };  // a linear stage's epilogue: q|k|v, += x, SwiGLU
  // partials a head can have (one a block); plans the workspace

struct LayerPtrs {
  const uint4 *wqkv, *wo, *wg, *wu, *wd;
  const uint4 *wk, *wv;  // W4 weights: wqkv holds the q rows only, these the k and v rows
  const float *attn_norm, *ffn_norm;
  void *k_cache, *v_cache;
};

// A W4 linear stage's shape (decode_step_w4.cuh), planned on the host: row tiles of 16 of each weight
// (q, k, v for q|k|v; gate and up share tiles[0]), inputs, the group size, and the byte offset of each
// weight's group parameters after its codes.
struct W4Dims {
  int tiles[3];
  int k;
  int group;  // inputs a group (k: one group a row)
  long long param_offset[3];
};

struct StepArgs {
  LayerPtrs layers[DecodeStepParams::kMaxLayers];
  int num_layers;
  int dim, hidden, q_dim, kv_dim;
  int num_heads, num_kv_heads, group, block_size;
  int max_splits;     // partials a head (the grid's blocks)
  int xs_floats;      // floats of the linear stages' input buffer in shared memory
  W4Dims w4[4];       // W4 weights: q|k|v, o_proj, gate/up, down
  int ps_offset;      // W4 weights: words of shared memory before the two parameter regions
  int ps_words;       // W4 weights: words of each parameter region
  int part_offset;    // W4 weights: words of shared memory before the warps' tile sums
  int part_tiles;     // W4 weights: the most tiles a warp touches in a stage
  float eps, scale;
  bool interleaved;
  void *x, *q, *k, *v, *att, *hb;
  const int32_t* block_table;
  const int32_t* start_pos;
  const int32_t* position;
  const int64_t* slot;
  const float* inv_freq;
  float* part_o;          // [num_heads, max_splits, HD]  (attention partials, one a block)
  float* part_ml;         // [num_heads, max_splits, 2]
  int32_t* head_counters; // [num_heads], 0 between launches
  unsigned* barrier;      // [2]: arrivals, exits; 0 between launches
  unsigned long long* profile;  // null, or [5 num_layers + 1] stage start times (DecodeStepParams)
};

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ int atom_add_acq_rel(int32_t* p, int v) {
  int old;
  asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}

// Grid barrier, as arrive() (every warp, once its stage's writes are done) and wait() (every
// thread, before the next stage reads them); every block makes the same sequence of calls. Each warp
// counts itself in shared memory (release/acquire at block scope) as soon as its work is done, and
// the block's last warp arrives on the grid counter (release) before the warps prefetch the next
// stage's weights; wait() spins (acquire). As one call (block barrier, thread 0's sc fence, arrival,
// spin, fence) the barrier was 2.5-3 points of the roofline slower on the H200: thread 0's fence
// also waited for its own prefetched weight loads, so a block arrived only once they had landed.
// With a profile buffer, block 0 records the time it leaves each barrier.
struct GridBarrier {
  unsigned* count;
  unsigned* warps_in;  // shared memory: the block's warps arrived at this barrier
  unsigned target;
  unsigned long long* profile;
  int passed;
  __device__ void arrive() {
    __syncwarp();
    if (threadIdx.x % 32 == 0) {
      unsigned old;
      asm volatile("atom.acq_rel.cta.shared::cta.add.u32 %0, [%1], 1;"
                   : "=r"(old) : "r"(static_cast<unsigned>(__cvta_generic_to_shared(warps_in))) : "memory");
      if (old == blockDim.x / 32 - 1) {
        *warps_in = 0;  // no warp arrives again before this block's arrival below lets the grid pass
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(count) : "memory");
      }
    }
    __syncwarp();
  }
  __device__ void wait() {
    if (threadIdx.x == 0) {
      target += gridDim.x;
      while (ld_acquire(count) < target) {
      }
      if (profile != nullptr && blockIdx.x == 0) profile[passed] = global_ns();
    }
    ++passed;
    __syncthreads();
  }
};

template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float* f) {
  const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = to_f32(h[j]);
}

template <typename T>
__device__ __forceinline__ uint4 pack8(const float* f) {
  uint4 v;
  T* h = reinterpret_cast<T*>(&v);
#pragma unroll
  for (int j = 0; j < 8; ++j) h[j] = from_f32<T>(f[j]);
  return v;
}

// RoPE of this lane's 8 dimensions [8 dl, 8 dl + 8) of a head vector (f32 in, rounded to T out, as
// the rope kernels store it), with the step's angles cs/sn [HD / 2] (shared memory). Half style
// pairs (i, i + HD/2): the partner lane is dl ^ (LPK / 2). Every lane of the warp must call it.
template <typename T, int HD>
__device__ __forceinline__ void rope8(float* f, int dl, const float* cs, const float* sn, bool interleaved) {
  constexpr int LPK = HD / 8;
  float other[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) other[j] = __shfl_xor_sync(0xffffffffu, f[j], LPK / 2, LPK);
  float r[8];
  if (interleaved) {
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
      const int fi = (8 * dl + j) / 2;
      r[j] = f[j] * cs[fi] - f[j + 1] * sn[fi];
      r[j + 1] = f[j] * sn[fi] + f[j + 1] * cs[fi];
    }
  } else {
    const bool lo = dl < LPK / 2;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int fi = (8 * dl + j) % (HD / 2);
      r[j] = lo ? f[j] * cs[fi] - other[j] * sn[fi] : other[j] * sn[fi] + f[j] * cs[fi];
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = to_f32(from_f32<T>(r[j]));
}

// Attention: each head gets up to bh_all = blocks / heads blocks (at least 1; blocks loop over heads
// when there are more heads than blocks); the keys go in contiguous ranges to as many blocks as
// have whole chunks to take, none empty (attn_split), and a block's 16 warps take that range's
// chunks of KPW x kChunkSteps keys in turn (online softmax in registers; LPK = HD / 8 lanes a key,
// 8 dimensions a lane). A warp's first chunk is loaded before the barrier (cached keys do not depend
// on the step): with 6 steps a chunk, 4 blocks of a head cover 768 keys (head_dim 128) in that one
// load. The warps' partials meet in shared memory; a head split over several blocks publishes one
// partial a block and the last block to finish merges them (head_counters). RoPE of q and of the
// new key is applied in registers; the new key/value are written to the cache by the first head of
// their group, in the block whose range ends with it.
constexpr int kChunkSteps = 6;  // 8 spill (64 bytes at 128 registers); 4 need a second load past 512 keys

struct AttnSplit {
  int bh_all;  // blocks a head can have (the grid's blocks / heads, at least 1)
  int bh;      // blocks the head uses: each a range of `range` keys, none empty
  int range;
};

__device__ __forceinline__ AttnSplit attn_split(int num_heads, int num_keys, int chunk_keys) {
  AttnSplit s;
  s.bh_all = max(1, static_cast<int>(gridDim.x) / num_heads);
  const int bh = min(s.bh_all, (num_keys + chunk_keys - 1) / chunk_keys);
  s.range = (num_keys + bh - 1) / bh;
  s.bh = (num_keys + s.range - 1) / s.range;
  return s;
}

template <typename T, int HD>
__device__ void attention_stage(const StepArgs& a, int layer, const float* cs, const float* sn, const int32_t* table,
                                float* sm, GridBarrier& bar) {
  constexpr int LPK = HD / 8, KPW = 32 / LPK, S = kChunkSteps, CK = KPW * S;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, sub = lane / LPK, dl = lane % LPK;
  const LayerPtrs& L = a.layers[layer];
  const int pos_new = a.start_pos[0];  // the new token's index among the keys
  const int num_keys = pos_new + 1;
  const int64_t kv_row = static_cast<int64_t>(a.num_kv_heads) * HD;
  const int64_t slot = a.slot[0];
  const AttnSplit sp = attn_split(a.num_heads, num_keys, CK);
  const int j = blockIdx.x % sp.bh_all, h0 = blockIdx.x / sp.bh_all;
  const int key_lo = j * sp.range, key_hi = min(num_keys, key_lo + sp.range);
  const bool has_new = key_hi == num_keys;  // of the blocks with keys (j < bh), only the last
  const int main_hi = has_new ? pos_new : key_hi;
  float* sm_o = sm;                      // [kWarpsB][HD]
  float* sm_m = sm + kWarpsB * HD;       // [kWarpsB]
  float* sm_l = sm_m + kWarpsB;          // [kWarpsB]
  __shared__ int last_s;
  uint4 kv[S], vv[S];
  auto load_chunk = [&](int kvh, int base, int hi) {
#pragma unroll
    for (int u = 0; u < S; ++u) {
      const int key = base + u * KPW + sub;
      if (key < hi) {
        const int64_t blk = table[key / a.block_size];
        const int64_t off = (blk * a.block_size + key % a.block_size) * kv_row + static_cast<int64_t>(kvh) * HD + 8 * dl;
        kv[u] = *reinterpret_cast<const uint4*>(static_cast<const T*>(L.k_cache) + off);
        vv[u] = *reinterpret_cast<const uint4*>(static_cast<const T*>(L.v_cache) + off);
      } else {
        kv[u] = vv[u] = make_uint4(0, 0, 0, 0);
      }
    }
  };
  // Cached keys and values do not depend on this step: each warp's first chunk (of its first head)
  // is requested before the barrier that waits for q, k and v.
  const bool active = h0 < a.num_heads && j < sp.bh;
  load_chunk(active ? h0 / a.group : 0, key_lo + warp * CK, active ? main_hi : 0);
  bar.wait();  // q, k and v of this step are complete
  if (j >= sp.bh) return;  // uniform over the block
  for (int h = h0; h < a.num_heads; h += gridDim.x / sp.bh_all) {
    const int kvh = h / a.group;
    const uint4 qraw = __ldcg(reinterpret_cast<const uint4*>(static_cast<const T*>(a.q) + h * HD) + dl);
    uint4 kraw = make_uint4(0, 0, 0, 0), vraw = make_uint4(0, 0, 0, 0);
    const bool new_here = has_new && warp == 0;  // warp 0 adds the new key
    if (new_here) {
      kraw = __ldcg(reinterpret_cast<const uint4*>(static_cast<const T*>(a.k) + kvh * HD) + dl);
      vraw = __ldcg(reinterpret_cast<const uint4*>(static_cast<const T*>(a.v) + kvh * HD) + dl);
    }
    float qf[8];
    unpack8<T>(qraw, qf);
    rope8<T, HD>(qf, dl, cs, sn, a.interleaved);
#pragma unroll
    for (int t = 0; t < 8; ++t) qf[t] *= a.scale;
    float m = -INFINITY, l = 0.f, o[8];
#pragma unroll
    for (int t = 0; t < 8; ++t) o[t] = 0.f;
    bool loaded = h == h0;
    for (int base = key_lo + warp * CK; base < main_hi; base += kWarpsB * CK) {
      if (!loaded) load_chunk(kvh, base, main_hi);
      loaded = false;
      float sc[S];
      float cmax = -INFINITY;
#pragma unroll
      for (int u = 0; u < S; ++u) {
        float kf[8];
        unpack8<T>(kv[u], kf);
        float d = 0.f;
#pragma unroll
        for (int t = 0; t < 8; ++t) d = fmaf(qf[t], kf[t], d);
#pragma unroll
        for (int off = LPK / 2; off > 0; off /= 2) d += __shfl_xor_sync(0xffffffffu, d, off);
        sc[u] = base + u * KPW + sub < main_hi ? d : -INFINITY;
        cmax = fmaxf(cmax, sc[u]);
      }
#pragma unroll
      for (int off = LPK; off < 32; off *= 2) cmax = fmaxf(cmax, __shfl_xor_sync(0xffffffffu, cmax, off));
      const float mnew = fmaxf(m, cmax);
      const float corr = expf(m - mnew);  // m = -inf at first: 0
      l *= corr;
#pragma unroll
      for (int t = 0; t < 8; ++t) o[t] *= corr;
#pragma unroll
      for (int u = 0; u < S; ++u) {
        if (base + u * KPW + sub >= main_hi) continue;
        const float p = expf(sc[u] - mnew);
        l += p;
        float vf[8];
        unpack8<T>(vv[u], vf);
#pragma unroll
        for (int t = 0; t < 8; ++t) o[t] = fmaf(p, vf[t], o[t]);
      }
      m = mnew;
    }
    if (new_here) {
      float kn[8], vn[8];
      unpack8<T>(kraw, kn);
      rope8<T, HD>(kn, dl, cs, sn, a.interleaved);
      unpack8<T>(vraw, vn);
      if (h % a.group == 0 && sub == 0 && slot >= 0) {
        const int64_t off = slot * kv_row + static_cast<int64_t>(kvh) * HD + 8 * dl;
        reinterpret_cast<uint4*>(static_cast<T*>(L.k_cache) + off)[0] = pack8<T>(kn);
        reinterpret_cast<uint4*>(static_cast<T*>(L.v_cache) + off)[0] = vraw;
      }
      float d = 0.f;
#pragma unroll
      for (int t = 0; t < 8; ++t) d = fmaf(qf[t], kn[t], d);
#pragma unroll
      for (int off = LPK / 2; off > 0; off /= 2) d += __shfl_xor_sync(0xffffffffu, d, off);
      // Every key lane group computed the same score; the first adds the key, the others rescale.
      const float mnew = fmaxf(m, d);
      const float corr = expf(m - mnew), p = sub == 0 ? expf(d - mnew) : 0.f;
      l = l * corr + p;
#pragma unroll
      for (int t = 0; t < 8; ++t) o[t] = fmaf(p, vn[t], o[t] * corr);
      m = mnew;
    }
    // The KPW key lane groups of the warp (same m), then the warps of the block in shared memory.
#pragma unroll
    for (int off = LPK; off < 32; off *= 2) {
      l += __shfl_xor_sync(0xffffffffu, l, off);
#pragma unroll
      for (int t = 0; t < 8; ++t) o[t] += __shfl_xor_sync(0xffffffffu, o[t], off);
    }
    if (sub == 0) {
#pragma unroll
      for (int t = 0; t < 8; ++t) sm_o[warp * HD + 8 * dl + t] = o[t];
    }
    if (lane == 0) {
      sm_m[warp] = m;
      sm_l[warp] = l;
    }
    __syncthreads();
    float mb = -INFINITY, lb = 0.f;
    for (int w = 0; w < kWarpsB; ++w) mb = fmaxf(mb, sm_m[w]);
    for (int w = 0; w < kWarpsB; ++w) lb += sm_m[w] == -INFINITY ? 0.f : sm_l[w] * expf(sm_m[w] - mb);
    float* po = a.part_o + (static_cast<int64_t>(h) * a.max_splits + j) * HD;
    T* att = static_cast<T*>(a.att) + h * HD;
    for (int d = threadIdx.x; d < HD; d += kThreadsB) {
      float v = 0.f;
      for (int w = 0; w < kWarpsB; ++w) v += sm_m[w] == -INFINITY ? 0.f : sm_o[w * HD + d] * expf(sm_m[w] - mb);
      if (sp.bh == 1) att[d] = from_f32<T>(v / lb);
      else po[d] = v / lb;  // normalized, merged below with weights lb exp(mb - max)
    }
    if (sp.bh > 1) {
      if (threadIdx.x == 0) {
        a.part_ml[(static_cast<int64_t>(h) * a.max_splits + j) * 2] = mb;
        a.part_ml[(static_cast<int64_t>(h) * a.max_splits + j) * 2 + 1] = lb;
      }
      __syncthreads();
      // Release (the block's partial, ordered by the block barrier) and acquire (the others', for
      // the last block's reads below, ordered for its threads by the next block barrier).
      if (threadIdx.x == 0) last_s = atom_add_acq_rel(a.head_counters + h, 1) == sp.bh - 1;
      __syncthreads();
      if (last_s) {
        const float* ml = a.part_ml + static_cast<int64_t>(h) * a.max_splits * 2;
        const float* pp = a.part_o + static_cast<int64_t>(h) * a.max_splits * HD;
        float mx = -INFINITY;
        for (int i = 0; i < sp.bh; ++i) mx = fmaxf(mx, __ldcg(ml + 2 * i));
        for (int d = threadIdx.x; d < HD; d += kThreadsB) {
          float v = 0.f, total = 0.f;
          for (int i = 0; i < sp.bh; ++i) {
            const float wgt = __ldcg(ml + 2 * i + 1) * expf(__ldcg(ml + 2 * i) - mx);
            total += wgt;
            v += wgt * __ldcg(pp + i * HD + d);
          }
          att[d] = from_f32<T>(v / total);
        }
        if (threadIdx.x == 0) a.head_counters[h] = 0;
      }
    }
    __syncthreads();  // shared memory is reused by the next head
  }
}

}  // namespace nb::cuda::step
