// The whole decode step of a Llama stack for one sequence and one token as ONE persistent kernel
// (DecodeStepParams; the CPU reference runs the fused ops in turn). Batch-1 decode reads every
// weight once per token, so its floor is bytes / bandwidth; with one kernel per op (~190 a 7B token)
// each kernel's launch, ramp-up and drain left the memory idle for ~0.9 ms of a 4.5 ms token.
// Here the grid (one block of 16 warps an SM) stays resident for the whole step and moves from stage
// to stage through grid barriers; before a linear stage waits at its barrier, every warp has
// already issued the loads of its first weights (weights never depend on the step), so the weight
// stream runs on across stage boundaries.
//
// Measured (H200, 7B f16 batch 1, bench/results/gpu-h200-decode-2026-11-27.md): 4.05-4.08 ms a
// token against 4.48 ms for the layer-by-layer fused kernels in the same run (78.1-78.5% vs 71.1%
// of the roofline). NIBBLE_DECODE_STEP_PROFILE=1 prints where a layer's time goes: q|k|v, gate/up
// and down stream at 86-89% of the copy bandwidth; attention (~11 us a layer: the q load, a second
// key chunk, publishing the block partials, the merge) and o_proj's barrier and input staging (4 us
// over its bytes) are what is left to 85%.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"

namespace nb::cuda {

using detail::from_f32;
using detail::to_f32;

namespace {

constexpr int kWarpsB = 16;  // one block an SM: one staging of the input and half the barrier arrivals of 2 x 8
constexpr int kThreadsB = kWarpsB * 32;
constexpr int kChunkSteps = 4;  // key steps of an attention warp loaded before any is used (8 spills)
constexpr int kMaxBlocks = 1024;  // partials a head can have (one a block); plans the workspace

struct LayerPtrs {
  const uint4 *wqkv, *wo, *wg, *wu, *wd;
  const float *attn_norm, *ffn_norm;
  void *k_cache, *v_cache;
};

struct StepArgs {
  LayerPtrs layers[DecodeStepParams::kMaxLayers];
  int num_layers;
  int dim, hidden, q_dim, kv_dim;
  int num_heads, num_kv_heads, group, block_size;
  int max_splits;     // partials a head (the grid's blocks)
  int xs_floats;      // floats of the linear stages' input buffer in shared memory
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

// Grid barrier: every block calls sync() the same number of times.
// With a profile buffer, block 0 records the time it leaves each barrier.
struct GridBarrier {
  unsigned* count;
  unsigned target;
  unsigned long long* profile;
  int passed;
  __device__ void sync() {
    __syncthreads();
    if (threadIdx.x == 0) {
      target += gridDim.x;
      __threadfence();
      atomicAdd(count, 1u);
      while (ld_acquire(count) < target) {
      }
      __threadfence();
      if (profile != nullptr && blockIdx.x == 0) profile[passed] = global_ns();
      ++passed;
    }
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

enum class Epi { kSplit, kAdd, kSwiglu };

// One linear stage: rows gw, gw + W, ... of the weight(s), each a warp streaming the row in chunks
// of U 16-byte loads per lane, over the flattened (row, step) sequence so that the next row's
// loads go out before the current one ends. The first two chunks are issued before the stage's
// grid barrier. The input (normed when nw) is staged in shared memory as f32 by each block.
template <typename T, Epi E>
__device__ void linear_stage(const StepArgs& a, const uint4* w, const uint4* w2, const float* nw, const void* xin,
                             int n, int k, float* xs, float* red, GridBarrier& bar) {
  constexpr int R = E == Epi::kSwiglu ? 2 : 1;
  constexpr int U = 8 / R;
  const int lane = threadIdx.x % 32;
  const int W = gridDim.x * kWarpsB, gw = blockIdx.x * kWarpsB + threadIdx.x / 32;
  const int k8 = k / 8;
  const int steps = (k8 + 32 * U - 1) / (32 * U);
  const int rows = gw < n ? (n - gw + W - 1) / W : 0;
  const int total = rows * steps;
  const uint4* wr[R];
  wr[0] = w;
  if constexpr (R == 2) wr[1] = w2;
  // Two chunk buffers in ping-pong: a chunk's loads go out two chunks ahead of its use, so each
  // warp keeps 1-2 chunks (4-8 KB) in flight; both are issued before the barrier.
  uint4 ba[R][U], bb[R][U];
  auto load = [&](uint4 (&dst)[R][U], int c) {
    const int i = c / steps, st = c - i * steps;
    const size_t base = static_cast<size_t>(gw + i * W) * k8;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = st * 32 * U + u * 32 + lane;
#pragma unroll
      for (int r = 0; r < R; ++r) dst[r][u] = c < total && idx < k8 ? __ldcs(wr[r] + base + idx) : make_uint4(0, 0, 0, 0);
    }
  };
  load(ba, 0);
  load(bb, 1);
  bar.sync();
  // Stage the input: xs = x * nw (f32) and the block's sum of x^2 -> the norm's scale.
  const T* x = static_cast<const T*>(xin);
  float ss = 0.f;
#pragma unroll 4
  for (int i = threadIdx.x; i < k8; i += kThreadsB) {
    float f[8];
    unpack8<T>(__ldcg(reinterpret_cast<const uint4*>(x) + i), f);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (nw != nullptr) {
        ss = fmaf(f[j], f[j], ss);
        f[j] *= __ldg(nw + 8 * i + j);
      }
      xs[8 * i + j] = f[j];
    }
  }
  float inv = 1.f;
  if (nw != nullptr) {
    for (int off = 16; off > 0; off /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (lane == 0) red[threadIdx.x / 32] = ss;
  }
  __syncthreads();
  if (nw != nullptr) {
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < kWarpsB; ++i) t += red[i];
    inv = rsqrtf(t / static_cast<float>(k) + a.eps);
  }
  const float4* xs4 = reinterpret_cast<const float4*>(xs);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  float resid = 0.f;  // kAdd: y[row], loaded by lane 0 when the row starts (not after its last chunk)
  auto compute = [&](const uint4 (&wv)[R][U], int c) {
    const int i = c / steps, st = c - i * steps;
    if constexpr (E == Epi::kAdd) {
      if (st == 0 && lane == 0) resid = to_f32(__ldcg(static_cast<const T*>(a.x) + gw + i * W));
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = st * 32 * U + u * 32 + lane;
      if (idx < k8) {
        const float4 x0 = xs4[2 * idx], x1 = xs4[2 * idx + 1];
        const float xf[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float wf[8];
          unpack8<T>(wv[r][u], wf);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[r] = fmaf(wf[j], xf[j], acc[r]);
        }
      }
    }
    if (st != steps - 1) return;
#pragma unroll
    for (int r = 0; r < R; ++r)
      for (int off = 16; off > 0; off /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
    const int row = gw + i * W;
    if (lane == 0) {
      if constexpr (E == Epi::kSplit) {
        const float v = acc[0] * inv;
        if (row < a.q_dim) static_cast<T*>(a.q)[row] = from_f32<T>(v);
        else if (row < a.q_dim + a.kv_dim) static_cast<T*>(a.k)[row - a.q_dim] = from_f32<T>(v);
        else static_cast<T*>(a.v)[row - a.q_dim - a.kv_dim] = from_f32<T>(v);
      } else if constexpr (E == Epi::kAdd) {
        static_cast<T*>(a.x)[row] = from_f32<T>(resid + acc[0]);
      } else {
        const float g = acc[0] * inv, up = acc[R - 1] * inv;
        static_cast<T*>(a.hb)[row] = from_f32<T>(g / (1.f + expf(-g)) * up);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
  };
  for (int c = 0; c < total; c += 2) {
    compute(ba, c);
    if (c + 2 < total) load(ba, c + 2);
    if (c + 1 >= total) break;
    compute(bb, c + 1);
    if (c + 3 < total) load(bb, c + 3);
  }
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

// Attention: each head gets Bh = blocks / heads blocks (at least 1; blocks loop over heads when
// there are more heads than blocks), block j of a head takes the j-th contiguous range of keys, and
// its 16 warps take that range's chunks of KPW x kChunkSteps keys in turn (online softmax in
// registers; LPK = HD / 8 lanes a key, 8 dimensions a lane). The warps' partials meet in shared
// memory; a head split over several blocks publishes one partial a block and the last block to
// finish merges them (head_counters). RoPE of q and of the new key is applied in registers; the new
// key/value are written to the cache by the first head of their group.
template <typename T, int HD>
__device__ void attention_stage(const StepArgs& a, int layer, const float* cs, const float* sn, const int32_t* table,
                                float* sm, GridBarrier& bar) {
  constexpr int LPK = HD / 8, KPW = 32 / LPK, CK = KPW * kChunkSteps;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, sub = lane / LPK, dl = lane % LPK;
  const LayerPtrs& L = a.layers[layer];
  const int pos_new = a.start_pos[0];  // the new token's index among the keys
  const int num_keys = pos_new + 1;
  const int64_t kv_row = static_cast<int64_t>(a.num_kv_heads) * HD;
  const int64_t slot = a.slot[0];
  const int bh_all = max(1, static_cast<int>(gridDim.x) / a.num_heads);
  const int bh = min(bh_all, (num_keys + CK - 1) / CK);  // blocks a head actually uses
  const int range = (num_keys + bh - 1) / bh;
  const int j = blockIdx.x % bh_all;
  float* sm_o = sm;                      // [kWarpsB][HD]
  float* sm_m = sm + kWarpsB * HD;       // [kWarpsB]
  float* sm_l = sm_m + kWarpsB;          // [kWarpsB]
  __shared__ int last_s;
  // Cached keys and values do not depend on this step: each warp's first chunk (of its first head)
  // is requested before the barrier that waits for q, k and v.
  auto load_chunk = [&](int kvh, int base, int main_hi, uint4 (&kv)[kChunkSteps], uint4 (&vv)[kChunkSteps]) {
#pragma unroll
    for (int u = 0; u < kChunkSteps; ++u) {
      const int key = base + u * KPW + sub;
      if (key < main_hi) {
        const int64_t blk = table[key / a.block_size];
        const int64_t off = (blk * a.block_size + key % a.block_size) * kv_row + static_cast<int64_t>(kvh) * HD + 8 * dl;
        kv[u] = *reinterpret_cast<const uint4*>(static_cast<const T*>(L.k_cache) + off);
        vv[u] = *reinterpret_cast<const uint4*>(static_cast<const T*>(L.v_cache) + off);
      } else {
        kv[u] = vv[u] = make_uint4(0, 0, 0, 0);
      }
    }
  };
  const int h0 = blockIdx.x / bh_all;
  uint4 pk[kChunkSteps], pv[kChunkSteps];
  {
    const int key_lo = j * range, key_hi = min(num_keys, key_lo + range);
    const int main_hi = key_hi == num_keys ? pos_new : key_hi;
    const bool active = h0 < a.num_heads && j < bh;
    load_chunk(active ? h0 / a.group : 0, key_lo + warp * CK, active ? main_hi : 0, pk, pv);
  }
  bar.sync();  // q, k and v of this step are complete
  for (int h = h0; h < a.num_heads; h += gridDim.x / bh_all) {
    if (j >= bh) break;  // uniform over the block
    const int kvh = h / a.group;
    const int key_lo = j * range, key_hi = min(num_keys, key_lo + range);
    const bool has_new = key_hi == num_keys;  // this block's range ends with the new key
    const int main_hi = has_new ? pos_new : key_hi;
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
    for (int base = key_lo + warp * CK; base < main_hi; base += kWarpsB * CK) {
      uint4 kv[kChunkSteps], vv[kChunkSteps];
      if (h == h0 && base == key_lo + warp * CK) {
#pragma unroll
        for (int u = 0; u < kChunkSteps; ++u) {
          kv[u] = pk[u];
          vv[u] = pv[u];
        }
      } else {
        load_chunk(kvh, base, main_hi, kv, vv);
      }
      float sc[kChunkSteps];
      float cmax = -INFINITY;
#pragma unroll
      for (int u = 0; u < kChunkSteps; ++u) {
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
      for (int u = 0; u < kChunkSteps; ++u) {
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
    float* po = a.part_o + (static_cast<int64_t>(h) * a.max_splits + j) * HD;
    float mb = -INFINITY, lb = 0.f;
    for (int w = 0; w < kWarpsB; ++w) mb = fmaxf(mb, sm_m[w]);
    for (int w = 0; w < kWarpsB; ++w) lb += sm_m[w] == -INFINITY ? 0.f : sm_l[w] * expf(sm_m[w] - mb);
    T* att = static_cast<T*>(a.att) + h * HD;
    for (int d = threadIdx.x; d < HD; d += kThreadsB) {
      float v = 0.f;
      for (int w = 0; w < kWarpsB; ++w) v += sm_m[w] == -INFINITY ? 0.f : sm_o[w * HD + d] * expf(sm_m[w] - mb);
      if (bh == 1) att[d] = from_f32<T>(v / lb);
      else po[d] = v / lb;  // normalized, merged below with weights l exp(m - max)
    }
    if (bh > 1) {
      if (threadIdx.x == 0) {
        a.part_ml[(static_cast<int64_t>(h) * a.max_splits + j) * 2] = mb;
        a.part_ml[(static_cast<int64_t>(h) * a.max_splits + j) * 2 + 1] = lb;
      }
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) last_s = atomicAdd(a.head_counters + h, 1) == bh - 1;
      __syncthreads();
      if (last_s) {
        __threadfence();
        const float* ml = a.part_ml + static_cast<int64_t>(h) * a.max_splits * 2;
        const float* pp = a.part_o + static_cast<int64_t>(h) * a.max_splits * HD;
        float mx = -INFINITY;
        for (int i = 0; i < bh; ++i) mx = fmaxf(mx, __ldcg(ml + 2 * i));
        for (int d = threadIdx.x; d < HD; d += kThreadsB) {
          float v = 0.f, total = 0.f;
          for (int i = 0; i < bh; ++i) {
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

template <typename T, int HD>
__global__ void __launch_bounds__(kThreadsB, 1) decode_step_kernel(const __grid_constant__ StepArgs a) {
  // Dynamic shared memory: xs [xs_floats] (a linear stage's input), the step's RoPE angles cos and
  // sin [HD / 2] each, the sequence's block table [table_entries] (constant through the step).
  extern __shared__ float xs[];
  __shared__ float red[kWarpsB];
  float* cs = xs + a.xs_floats;
  float* sn = cs + HD / 2;
  int32_t* table = reinterpret_cast<int32_t*>(sn + HD / 2);
  {
    const double pos = static_cast<double>(a.position[0]);
    for (int i = threadIdx.x; i < HD / 2; i += kThreadsB) {
      double sv, cv;
      sincos(pos * static_cast<double>(a.inv_freq[i]), &sv, &cv);  // as the rope kernels
      cs[i] = static_cast<float>(cv);
      sn[i] = static_cast<float>(sv);
    }
    const int entries = (a.start_pos[0] + a.block_size) / a.block_size;  // blocks holding keys 0..start_pos
    for (int i = threadIdx.x; i < entries; i += kThreadsB) table[i] = a.block_table[i];
  }
  GridBarrier bar{a.barrier, 0, a.profile, 0};  // its first sync orders the fills above
  for (int l = 0; l < a.num_layers; ++l) {
    const LayerPtrs& L = a.layers[l];
    linear_stage<T, Epi::kSplit>(a, L.wqkv, nullptr, L.attn_norm, a.x, a.q_dim + 2 * a.kv_dim, a.dim, xs, red, bar);
    attention_stage<T, HD>(a, l, cs, sn, table, xs, bar);  // its barrier inside
    linear_stage<T, Epi::kAdd>(a, L.wo, nullptr, nullptr, a.att, a.dim, a.q_dim, xs, red, bar);
    linear_stage<T, Epi::kSwiglu>(a, L.wg, L.wu, L.ffn_norm, a.x, a.hidden, a.dim, xs, red, bar);
    linear_stage<T, Epi::kAdd>(a, L.wd, nullptr, nullptr, a.hb, a.dim, a.hidden, xs, red, bar);
  }
  // The last block out resets the barrier for the next launch (every block has passed every
  // barrier once the exit count is complete).
  if (threadIdx.x == 0) {
    if (a.profile != nullptr && blockIdx.x == 0) a.profile[5 * a.num_layers] = global_ns();
    __threadfence();
    if (atomicAdd(a.barrier + 1, 1u) == gridDim.x - 1) {
      atomicExch(a.barrier, 0u);
      atomicExch(a.barrier + 1, 0u);
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

bool weight_ok(const Tensor& w, int64_t n, int64_t k, DType act) {
  return w.ndim() == 2 && w.device() == Device::kCUDA && w.dtype() == act && w.dim(0) == n && w.dim(1) == k &&
         aligned16(w.data());
}

// Also the attention stage's per-warp partials ([kWarpsB][HD + 2]) live there.
int64_t xs_floats(const DecodeStepParams& p, int64_t hidden, int64_t dim) {
  return std::max({dim, hidden, p.num_heads * p.head_dim, kWarpsB * (p.head_dim + 2)});
}
int64_t table_entries(const DecodeStepParams& p) { return (p.max_context_len + p.block_size - 1) / p.block_size; }
// xs, the RoPE angles and the block table (see the kernel).
size_t smem_bytes(const DecodeStepParams& p, int64_t hidden, int64_t dim) {
  return static_cast<size_t>(xs_floats(p, hidden, dim) + p.head_dim + table_entries(p)) * 4;
}

template <typename T, int HD>
Status launch(const StepArgs& a, size_t smem, Context& ctx) {
  auto kernel = decode_step_kernel<T, HD>;
  NB_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int per_sm = 0;
  NB_CUDA_RETURN_IF_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreadsB, smem));
  if (per_sm < 1) return resource_exhausted("decode_step: the kernel does not fit an SM");
  StepArgs args = a;
  const int blocks = ctx.info().num_sms;  // one a SM (per_sm >= 1 checked)
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(kThreadsB);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = detail::as_stream(ctx.stream());
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  NB_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, kernel, args));
  return Status::Ok();
}

}  // namespace

size_t decode_step_workspace_bytes(const DecodeStepParams& p) {
  const int64_t splits = kMaxBlocks;
  return static_cast<size_t>(p.num_heads * splits * (p.head_dim + 2)) * sizeof(float);
}

bool decode_step_applies(const DecodeStepParams& p, const Context& ctx) {
  if (p.layers.empty() || p.layers.size() > DecodeStepParams::kMaxLayers) return false;
  if (p.act_dtype != DType::kF16 && p.act_dtype != DType::kBF16) return false;
  if (p.head_dim != 64 && p.head_dim != 128) return false;
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0 || p.block_size <= 0) return false;
  if (p.max_context_len < 1 || p.max_context_len > INT_MAX / 2) return false;
  const int64_t q_dim = p.num_heads * p.head_dim, kv_dim = p.num_kv_heads * p.head_dim;
  const DecodeStepLayer& l0 = p.layers[0];
  const int64_t dim = l0.wqkv.ndim() == 2 ? l0.wqkv.dim(1) : 0, hidden = l0.w_gate.ndim() == 2 ? l0.w_gate.dim(0) : 0;
  if (dim % 8 != 0 || hidden % 8 != 0 || q_dim % 8 != 0 || dim <= 0 || hidden <= 0) return false;
  if (smem_bytes(p, hidden, dim) > ctx.info().shared_per_block_optin) return false;
  if (decode_step_workspace_bytes(p) > ctx.workspace_bytes() || ctx.info().num_sms > kMaxBlocks) return false;
  for (const DecodeStepLayer& l : p.layers) {
    if (!weight_ok(l.wqkv, q_dim + 2 * kv_dim, dim, p.act_dtype) || !weight_ok(l.wo, dim, q_dim, p.act_dtype) ||
        !weight_ok(l.w_gate, hidden, dim, p.act_dtype) || !weight_ok(l.w_up, hidden, dim, p.act_dtype) ||
        !weight_ok(l.w_down, dim, hidden, p.act_dtype) || l.attn_norm == nullptr || l.ffn_norm == nullptr ||
        l.k_cache == nullptr || l.v_cache == nullptr) {
      return false;
    }
  }
  for (const void* ptr : {static_cast<const void*>(p.x), static_cast<const void*>(p.q), static_cast<const void*>(p.k),
                          static_cast<const void*>(p.v), static_cast<const void*>(p.att), static_cast<const void*>(p.hb)}) {
    if (!aligned16(ptr)) return false;
  }
  return true;
}

Status decode_step(const DecodeStepParams& p, Context& ctx) {
  if (!decode_step_applies(p, ctx)) {
    return invalid_argument("decode_step: needs 1.." + std::to_string(DecodeStepParams::kMaxLayers) +
                            " layers of f16/bf16 device weights in the activation dtype (K % 8 == 0), head_dim 64 or "
                            "128, 16-byte aligned buffers and enough workspace; run the fused ops layer by layer");
  }
  const DecodeStepLayer& l0 = p.layers[0];
  StepArgs a{};
  for (size_t i = 0; i < p.layers.size(); ++i) {
    const DecodeStepLayer& l = p.layers[i];
    a.layers[i] = {static_cast<const uint4*>(l.wqkv.data()), static_cast<const uint4*>(l.wo.data()),
                   static_cast<const uint4*>(l.w_gate.data()), static_cast<const uint4*>(l.w_up.data()),
                   static_cast<const uint4*>(l.w_down.data()), l.attn_norm, l.ffn_norm, l.k_cache, l.v_cache};
  }
  a.num_layers = static_cast<int>(p.layers.size());
  a.dim = static_cast<int>(l0.wqkv.dim(1));
  a.hidden = static_cast<int>(l0.w_gate.dim(0));
  a.q_dim = static_cast<int>(p.num_heads * p.head_dim);
  a.kv_dim = static_cast<int>(p.num_kv_heads * p.head_dim);
  a.num_heads = static_cast<int>(p.num_heads);
  a.num_kv_heads = static_cast<int>(p.num_kv_heads);
  a.group = static_cast<int>(p.num_heads / p.num_kv_heads);
  a.block_size = static_cast<int>(p.block_size);
  a.max_splits = ctx.info().num_sms;  // = the grid
  a.xs_floats = static_cast<int>(xs_floats(p, l0.w_gate.dim(0), l0.wqkv.dim(1)));
  a.eps = p.norm_eps;
  a.scale = p.scale;
  a.interleaved = p.rope_style == RopeStyle::kInterleaved;
  a.x = p.x;
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.att = p.att;
  a.hb = p.hb;
  a.block_table = p.block_table;
  a.start_pos = p.start_pos;
  a.position = p.position;
  a.slot = p.slot;
  a.inv_freq = p.inv_freq;
  a.part_o = static_cast<float*>(ctx.workspace());
  a.part_ml = a.part_o + p.num_heads * a.max_splits * p.head_dim;
  a.head_counters = ctx.sync_counters();
  a.barrier = reinterpret_cast<unsigned*>(ctx.sync_counters() + Context::kSyncCounters - 2);
  a.profile = reinterpret_cast<unsigned long long*>(p.profile);
  const size_t smem = smem_bytes(p, a.hidden, a.dim);
  if (p.act_dtype == DType::kF16) {
    return p.head_dim == 64 ? launch<__half, 64>(a, smem, ctx) : launch<__half, 128>(a, smem, ctx);
  }
  return p.head_dim == 64 ? launch<__nv_bfloat16, 64>(a, smem, ctx) : launch<__nv_bfloat16, 128>(a, smem, ctx);
}

}  // namespace nb::cuda
