// Internal to backend/cuda/decode_step.cu: attention and o_proj as ONE stage of the persistent
// decode step (variant 7), without the grid barrier between them.
//
// o_proj's output is a sum over heads, y = sum_h Wo[:, h] att_h, so a head's share can start as soon
// as that head's attention is done. The bh_all blocks of head h (attn_split): those with keys
// (j < bh) publish their partials and count themselves on the head's counter; every one of the
// bh_all blocks then issues the loads of its first o_proj chunks, waits for the head's count (a
// head's blocks, not the grid), merges the partials into att_h (rounded to T, as attention's output
// is stored), and adds Wo[rows of block j, head h's columns] att_h into y_acc (f32, red.add).
// The next stages take x + y_acc as the residual stream: gate/up's input staging rounds it to T as
// the o_proj epilogue does, and down's epilogue writes T(T(x + y_acc) + down) and clears y_acc.
#pragma once
#include "backend/cuda/decode_step.cuh"

namespace nb::cuda::step {

template <typename T, int HD, typename Bar>
__device__ void attention_oproj_stage(const StepArgs& a, int layer, const float* cs, const float* sn,
                                      const int32_t* table, float* sm, Bar& bar) {
  constexpr int LPK = HD / 8, KPW = 32 / LPK, S = kChunkSteps2, CK = KPW * S;
  constexpr int U = 8, RPC = U * KPW;  // o_proj: LPK lanes a row (HD columns), RPC rows a chunk
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, sub = lane / LPK, dl = lane % LPK;
  const LayerPtrs& L = a.layers[layer];
  const int pos_new = a.start_pos[0];  // the new token's index among the keys
  const int num_keys = pos_new + 1;
  const int64_t kv_row = static_cast<int64_t>(a.num_kv_heads) * HD;
  const int64_t slot = a.slot[0];
  const AttnSplit sp = attn_split(a.num_heads, num_keys, CK);
  const int j = blockIdx.x % sp.bh_all, h0 = blockIdx.x / sp.bh_all;
  const int key_lo = j * sp.range, key_hi = min(num_keys, key_lo + sp.range);
  const bool has_new = key_hi == num_keys;  // only the last block with keys: none is empty
  const int main_hi = has_new ? pos_new : key_hi;
  const bool has_keys = j < sp.bh;
  // o_proj rows of this block and warp, contiguous.
  const int rows_b = (a.dim + sp.bh_all - 1) / sp.bh_all, rows_w = (rows_b + kWarpsB - 1) / kWarpsB;
  const int r_hi_b = min(a.dim, (j + 1) * rows_b);
  const int w_lo = j * rows_b + warp * rows_w, w_hi = min(r_hi_b, w_lo + rows_w);
  const int chunks = w_hi > w_lo ? (w_hi - w_lo + RPC - 1) / RPC : 0;
  const int64_t wo_row = a.q_dim / 8;  // uint4s a row of Wo
  float* sm_o = sm;                    // [kWarpsB][HD]
  float* sm_m = sm + kWarpsB * HD;     // [kWarpsB]
  float* sm_l = sm_m + kWarpsB;        // [kWarpsB]
  float* att_s = sm_l + kWarpsB;       // [HD]: the head's merged output
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
  uint4 ba[U], bb[U];
  auto load_o = [&](uint4 (&dst)[U], int h, int c) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int row = w_lo + c * RPC + u * KPW + sub;
      dst[u] = c < chunks && row < w_hi ? __ldcs(L.wo + row * wo_row + h * (HD / 8) + dl) : make_uint4(0, 0, 0, 0);
    }
  };
  // Cached keys and values do not depend on this step: each warp's first chunk (of its first head)
  // is requested before the barrier that waits for q, k and v.
  const bool active = h0 < a.num_heads && has_keys;
  load_chunk(active ? h0 / a.group : 0, key_lo + warp * CK, active ? main_hi : 0);
  bar.wait();  // q, k and v of this step are complete
  bool marked = false;  // every block marks once (blocks without a head: after the loop)
  // One head; `first`: its first chunk is the one loaded before the barrier. The first head is a
  // call of its own, so that the compiler sees that chunk dead afterwards (no spills in o_proj).
  auto one_head = [&](int h, bool first) {
    const int kvh = h / a.group;
    if (has_keys) {  // uniform over the block
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
      bool loaded = first;
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
      for (int d = threadIdx.x; d < HD; d += kThreadsB) {
        float v = 0.f;
        for (int w = 0; w < kWarpsB; ++w) v += sm_m[w] == -INFINITY ? 0.f : sm_o[w * HD + d] * expf(sm_m[w] - mb);
        po[d] = v / lb;  // normalized, merged below with weights lb exp(mb - max)
      }
      if (threadIdx.x == 0) {
        a.part_ml[(static_cast<int64_t>(h) * a.max_splits + j) * 2] = mb;
        a.part_ml[(static_cast<int64_t>(h) * a.max_splits + j) * 2 + 1] = lb;
      }
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) atomicAdd(a.head_counters + h, 1);
    }
    // o_proj weights do not depend on the step: the first two chunks go out before the head's wait.
    load_o(ba, h, 0);
    load_o(bb, h, 1);
    if (threadIdx.x == 0) {
      const unsigned target = static_cast<unsigned>(sp.bh * (layer + 1));  // sp.bh partials a layer
      while (ld_acquire(reinterpret_cast<const unsigned*>(a.head_counters + h)) < target) {
      }
    }
    __syncthreads();
    {
      const float* ml = a.part_ml + static_cast<int64_t>(h) * a.max_splits * 2;
      const float* pp = a.part_o + static_cast<int64_t>(h) * a.max_splits * HD;
      for (int d = threadIdx.x; d < HD; d += kThreadsB) {
        float mx = -INFINITY, v = 0.f, total = 0.f;
        for (int i = 0; i < sp.bh; ++i) {
          const float mi = __ldcg(ml + 2 * i), mn = fmaxf(mx, mi), c = expf(mx - mn);
          const float wgt = __ldcg(ml + 2 * i + 1) * expf(mi - mn);
          total = total * c + wgt;
          v = v * c + wgt * __ldcg(pp + i * HD + d);
          mx = mn;
        }
        att_s[d] = to_f32(from_f32<T>(v / total));
      }
    }
    __syncthreads();
    if (!marked) bar.mark();  // the profile's o_proj time starts here
    marked = true;
    float af[8];
#pragma unroll
    for (int t = 0; t < 8; ++t) af[t] = att_s[8 * dl + t];
    auto compute = [&](const uint4 (&wv)[U], int c) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int row = w_lo + c * RPC + u * KPW + sub;
        float wf[8];
        unpack8<T>(wv[u], wf);
        float d = 0.f;
#pragma unroll
        for (int t = 0; t < 8; ++t) d = fmaf(wf[t], af[t], d);
#pragma unroll
        for (int off = LPK / 2; off > 0; off /= 2) d += __shfl_xor_sync(0xffffffffu, d, off);
        if (dl == 0 && row < w_hi) atomicAdd(a.y_acc + row, d);
      }
    };
    for (int c = 0; c < chunks; c += 2) {
      compute(ba, c);
      if (c + 2 < chunks) load_o(ba, h, c + 2);
      if (c + 1 >= chunks) break;
      compute(bb, c + 1);
      if (c + 3 < chunks) load_o(bb, h, c + 3);
    }
    __syncthreads();  // shared memory is reused by the next head
  };
  if (h0 < a.num_heads) one_head(h0, true);
  for (int h = h0 + gridDim.x / sp.bh_all; h < a.num_heads; h += gridDim.x / sp.bh_all) one_head(h, false);
  if (!marked) bar.mark();
}

}  // namespace nb::cuda::step
