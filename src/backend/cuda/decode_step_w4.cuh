// Internal to backend/cuda/decode_step.cu: the persistent decode step's linear stage for 4-bit
// weights (W4A16: cuda::upload_w4's layout, backend/w4_layout.h), the counterpart of linear_stage
// for f16/bf16 weights. Batch-1 decode reads 4x fewer weight bytes here, so the launch, ramp-up
// and drain of the stand-alone W4 kernel (a fixed ~8-10 us at decode sizes) would cost more than the
// weights themselves; inside the step the weight stream runs on across stages as for f16.
//
// Work split: the stage's row tiles of 16 (the mma's A rows; q|k|v are the concatenation of three
// weights, gate/up alternate gate tile j, up tile j, blocks taking whole pairs) go in contiguous
// ranges to the blocks (block b takes tiles [b T / G, (b + 1) T / G)), and a block's (tile, 64-input
// chunk) units, flattened tile by tile, in 16 contiguous ranges to its warps, so every warp reads
// contiguous codes and has the same number of units within one. A unit is one 16-byte load a lane
// (16 rows x 64 inputs), turned in registers into exact integers q - z (w4_int_word) for four
// mma.m16n8k16 (token 0 of the 8 columns; the other columns are never read); the group's scale
// multiplies the unit's f32 sums. Each warp leaves its sum of every tile it touches in shared
// memory; after a block barrier each row adds the sums of the warps that took part of its tile in
// warp order and applies the epilogue (deterministic: no atomics; the epilogue is out of the
// unrolled load/compute loop, which keeps its registers low).
//
// Loads: two buffers of U units a lane in ping-pong, the first two issued before the stage's grid
// barrier, as linear_stage does. The group parameters of the block's tiles (16 rows x 4 bytes a
// group) go to shared memory by cp.async before the barrier too (two regions, alternating between
// consecutive W4 stages so that one stage's copies never overwrite what a slower warp of the
// previous one still reads). The input is staged in shared memory in the activation type (the
// mma's B operand), already normalized: x * rsqrt(mean x^2 + eps) * w_norm rounded once to T, as
// the layer-by-layer path's rms_norm writes it.
//
// Measured (H200, 7B RTN W4 g128, batch 1; bench/results/gpu-h200-w4step-2026-11-27.md): 2.44-2.46
// ms a token, 38.2-38.5% of the W4 roofline, against 4.30 ms for the layer-by-layer W4 kernels and
// 3.87 ms for the f16 step in the same run (1.58x its tokens/s). Stage profile (us a layer, block 0:
// staging / units / sums + waiting at the barrier): q|k|v 1.8/8.5/4.9, o_proj 0.6/1.7/9.3, gate/up
// 1.7/15.2/5.5, down 0.9/3.6/9.8, and block 0 waits ~5-10 us a stage for the slowest block. The
// units are neither load-buffer-bound (6 units a buffer instead of 4 changed nothing) nor
// issue-bound (a form with ~61 instead of ~81 instructions a unit ran as fast; docs/decode_step.md).
#pragma once
#include <type_traits>

#include "backend/cuda/decode_step.cuh"
#include "backend/cuda/w4_kernels.cuh"

namespace nb::cuda::step {

// Units a lane holds in each of its two load buffers: 4 (6 measured the same, 2.439 vs 2.450 ms;
// 8 spill loaded words to local memory at 128 registers a thread). NIBBLE_W4_STEP_UNITS=6 takes 6
// (f16), for comparison.
constexpr int kW4Units = 4;

// One packed weight: codes [n_pad / 16][k / 64][32][4 words], then params [n_pad / 16][groups][16].
struct W4Mat {
  const uint4* codes;
  const uint32_t* params;
};

// A W4 linear stage: kSplit reads m[0..2] (q, k, v rows, tiles[0..2] tiles each) as one weight;
// kAdd m[0]; kSwiglu m[0] (gate) and m[1] (up) of tiles[0] tiles each. The shape comes from the
// kernel's arguments (StepArgs::w4, constant): offsets computed in the kernel would be hoisted out of
// the layer loop and held in registers through every stage.
struct W4Stage {
  W4Mat m[3];
  int tiles[3];
  int k;
  int group;  // inputs a group: a multiple of 64, or k (one group a row)
};

// `which` is made opaque to the compiler: the shapes are loop-invariant, and hoisted out of the
// layer loop they would hold ~40 registers through every stage (spills at 128 a thread).
__device__ __forceinline__ W4Stage w4_stage_of(const StepArgs& a, int which, const uint4* w0, const uint4* w1,
                                               const uint4* w2) {
  asm volatile("" : "+r"(which));
  const W4Dims& d = a.w4[which];
  auto mat = [](const uint4* w, long long off) {
    return W4Mat{w, reinterpret_cast<const uint32_t*>(reinterpret_cast<const uint8_t*>(w) + off)};
  };
  return {{mat(w0, d.param_offset[0]), mat(w1, d.param_offset[1]), mat(w2, d.param_offset[2])},
          {d.tiles[0], d.tiles[1], d.tiles[2]},
          d.k,
          d.group};
}


// Codes to exact integers q - z in T (the scale is applied to the f32 sums, per group, after the
// mma). (w & 0x000f000f) | magic is the T pair (B + q_lo, B + q_hi), B = 1024 (f16: 0x6400) or 128
// (bf16: 0x4300); minus (B + z) it is q - z. For the high nibble of each byte, f16 (10 mantissa
// bits) takes (w & 0x00f000f0) | magic = B + 16 q, times 1/16 minus (B / 16 + z) (one fma, exact);
// bf16 has 7 mantissa bits (bit 7 is the exponent's), so it shifts the nibble down first. Fewer
// operations a weight than w4::dequant_word (no multiply by the scale), and no rounding of the
// weight: the product is s * sum((q - z) x) with the sum in f32.
template <typename T>
struct W4Int {
  static constexpr bool kF16 = std::is_same_v<T, __half>;
  static constexpr uint32_t kMagic = kF16 ? 0x64006400u : 0x43004300u;
  static constexpr float kBase = kF16 ? 1024.f : 128.f;
  static constexpr bool kShiftHigh = !kF16;
  using T2 = std::conditional_t<kF16, __half2, __nv_bfloat162>;
  __device__ __forceinline__ static T2 make2(float v) {
    if constexpr (kF16) return __float2half2_rn(v);
    else return __float2bfloat162_rn(v);
  }
};

// The zero-point constants of a row pair from its packed parameters (f16 scale low, f16 zero point
// high): the low nibbles are row gid's (zlo = B + z0), the high ones row gid + 8's (zhi = -(B / 16
// + z1) for f16, B + z1 for bf16). f16 works on the halves directly (z is an integer: exact).
template <typename T>
__device__ __forceinline__ void w4_int_zeros(uint32_t p0, uint32_t p1, typename W4Int<T>::T2& zlo,
                                             typename W4Int<T>::T2& zhi) {
  using I = W4Int<T>;
  if constexpr (std::is_same_v<T, __half>) {
    const uint32_t z0 = __byte_perm(p0, 0, 0x3232), z1 = __byte_perm(p1, 0, 0x3232);  // (z, z)
    zlo = __hadd2(*reinterpret_cast<const __half2*>(&z0), __float2half2_rn(I::kBase));
    zhi = __hfma2(*reinterpret_cast<const __half2*>(&z1), __float2half2_rn(-1.f), __float2half2_rn(-I::kBase / 16.f));
  } else {
    const float z0 = __half2float(__ushort_as_half(static_cast<unsigned short>(p0 >> 16)));
    const float z1 = __half2float(__ushort_as_half(static_cast<unsigned short>(p1 >> 16)));
    zlo = I::make2(I::kBase + z0);
    zhi = I::make2(I::kBase + z1);
  }
}

// (a & mask) | magic as one lop3 (the compiler splits it in two: SASS LOP3 takes one immediate).
template <uint32_t kMask, uint32_t kOr>
__device__ __forceinline__ uint32_t and_or(uint32_t a) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(a), "n"(kMask), "n"(kOr));
  return r;
#else
  return (a & kMask) | kOr;
#endif
}

// One 32-bit word of codes (W4Layout: nibble reg + 4h = A register reg, half h) to the four A
// registers of one m16n8k16 k-tile: the low nibbles of each byte are registers 0 and 2 (row gid),
// the high ones registers 1 and 3 (row gid + 8).
template <typename T>
__device__ __forceinline__ void w4_int_word(uint32_t w, typename W4Int<T>::T2 zlo, typename W4Int<T>::T2 zhi,
                                            uint32_t a[4]) {
  using I = W4Int<T>;
  using T2 = typename I::T2;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const uint32_t q = w >> (8 * i);
    uint32_t lo = and_or<0x000F000Fu, I::kMagic>(q);
    const T2 l = __hsub2(*reinterpret_cast<T2*>(&lo), zlo);
    T2 h;
    if constexpr (I::kShiftHigh) {
      uint32_t hi = and_or<0x000F000Fu, I::kMagic>(q >> 4);
      h = __hsub2(*reinterpret_cast<T2*>(&hi), zhi);
    } else {
      uint32_t hi = and_or<0x00F000F0u, I::kMagic>(q);
      h = __hfma2(*reinterpret_cast<T2*>(&hi), I::make2(1.f / 16.f), zhi);
    }
    a[2 * i] = *reinterpret_cast<const uint32_t*>(&l);
    a[2 * i + 1] = *reinterpret_cast<const uint32_t*>(&h);
  }
}

template <typename T, Epi E, int U = kW4Units>
__device__ void w4_stage(const StepArgs& a, const W4Stage& s, const float* nw, const void* xin, float* xs, int region,
                         float* red, GridBarrier& bar) {
  // Shared memory after the kernel's own (StepArgs::ps_offset): parameter regions 0 and 1, the sums.
  uint32_t* ps = reinterpret_cast<uint32_t*>(xs) + a.ps_offset + region * a.ps_words;
  float* part = xs + a.part_offset;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gid = lane / 4, tig = lane % 4;
  // The stage's tiles: kSplit q, k, v in turn; kAdd the weight's; kSwiglu gate and up alternately
  // (tile 2 j gate's j, 2 j + 1 up's j), blocks taking whole pairs so that SwiGLU finds both.
  const int t0 = s.tiles[0], t01 = t0 + (E == Epi::kSplit ? s.tiles[1] : 0);
  const int tt = E == Epi::kSplit ? t01 + s.tiles[2] : (E == Epi::kSwiglu ? 2 * t0 : t0);
  const int pair = E == Epi::kSwiglu ? 2 : 1;
  const int tb0 = pair * static_cast<int>(static_cast<int64_t>(blockIdx.x) * (tt / pair) / gridDim.x);
  const int nt = pair * static_cast<int>(static_cast<int64_t>(blockIdx.x + 1) * (tt / pair) / gridDim.x) - tb0;
  const int chunks = s.k / 64, gch = s.group / 64, groups = (chunks + gch - 1) / gch;
  const int nu = nt * chunks;
  const int u0 = warp * nu / kWarpsB, u1 = (warp + 1) * nu / kWarpsB;
  // Tile (global) -> its weight (selected, not indexed: no local-memory copy of s) and its tile there.
  auto locate = [&](int t, W4Mat& m, int& lt) {
    if constexpr (E == Epi::kSwiglu) {
      m = (t & 1) ? s.m[1] : s.m[0];
      lt = t >> 1;
    } else {
      const int mi = E != Epi::kSplit || t < t0 ? 0 : (t < t01 ? 1 : 2);
      m = mi == 0 ? s.m[0] : (mi == 1 ? s.m[1] : s.m[2]);
      lt = t - (mi == 0 ? 0 : (mi == 1 ? t0 : t01));
    }
  };
  // Load cursor (units in order): the lane's next 16 bytes and the units left in its tile. Running,
  // not recomputed a unit: the unrolled loops must leave registers for the 2 x U loads in flight.
  const uint4* lp = nullptr;
  int lt_next = tb0 + u0 / chunks, lleft = 0, lnext = u0;
  auto seek = [&](int c) {  // to chunk c of tile lt_next
    W4Mat m;
    int lt;
    locate(lt_next, m, lt);
    lp = m.codes + (static_cast<size_t>(lt) * chunks + c) * 32 + lane;
    lleft = chunks - c;
    ++lt_next;
  };
  if (u0 < u1) seek(u0 % chunks);
  uint4 ba[U], bb[U];
  auto load = [&](uint4 (&dst)[U]) {
#pragma unroll
    for (int i = 0; i < U; ++i) {
      if (lnext < u1) {
        dst[i] = __ldcs(lp);
        lp += 32;
        if (++lnext < u1 && --lleft == 0) seek(0);
      }
    }
  };
  load(ba);
  load(bb);
  // The block's group parameters: [tile][groups][16 rows], 16 bytes a copy.
  {
    const int pieces = groups * 4;
    for (int i = threadIdx.x; i < nt * pieces; i += kThreadsB) {
      const int tl = i / pieces, piece = i - tl * pieces;
      W4Mat m;
      int lt;
      locate(tb0 + tl, m, lt);
      detail::cp_async<16>(ps + static_cast<size_t>(tl) * groups * 16 + piece * 4,
                 m.params + static_cast<size_t>(lt) * groups * 16 + piece * 4);
    }
  }
  // kAdd: the residual of the rows this thread finishes below (x is written only there).
  float resid = 0.f;
  bar.wait();
  if (E == Epi::kAdd && threadIdx.x < nt * 16) resid = to_f32(__ldcg(static_cast<const T*>(a.x) + tb0 * 16 + threadIdx.x));
  detail::cp_async_commit();
  detail::cp_async_wait<0>();
  // Stage the input in T, normalized when nw is given: copied as is (with the norm: its sum of
  // squares on the way), then normed in place, each thread rescaling the vectors it wrote.
  T* xst = reinterpret_cast<T*>(xs);
  const int k8 = s.k / 8;
  const uint4* x4 = static_cast<const uint4*>(xin);
  uint4* xs8 = reinterpret_cast<uint4*>(xst);
  float ss = 0.f;
  for (int i = threadIdx.x; i < k8; i += kThreadsB) {
    const uint4 v = __ldcg(x4 + i);
    xs8[i] = v;
    if (nw != nullptr) {
      float f[8];
      unpack8<T>(v, f);
#pragma unroll
      for (int e = 0; e < 8; ++e) ss = fmaf(f[e], f[e], ss);
    }
  }
  if (nw != nullptr) {
    for (int off = 16; off > 0; off /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (lane == 0) red[warp] = ss;
    __syncthreads();
    float tot = 0.f;
#pragma unroll
    for (int i = 0; i < kWarpsB; ++i) tot += red[i];
    const float inv = rsqrtf(tot / static_cast<float>(s.k) + a.eps);
    for (int i = threadIdx.x; i < k8; i += kThreadsB) {
      float f[8];
      unpack8<T>(xs8[i], f);
#pragma unroll
      for (int e = 0; e < 8; ++e) f[e] = f[e] * inv * __ldg(nw + 8 * i + e);
      xs8[i] = pack8<T>(f);
    }
  }
  __syncthreads();  // the input and the parameters are in shared memory
  // Profile (block 0): this stage's input staged, then its sums done (after the stage barrier's
  // times, DecodeStepParams::profile).
  unsigned long long* prof = a.profile != nullptr && blockIdx.x == 0 && threadIdx.x == 0
                                 ? a.profile + 5 * a.num_layers + 1 + 2 * (bar.passed - 1)
                                 : nullptr;
  if (prof != nullptr) prof[0] = global_ns();

  // Each warp's sums of the tiles it touches go to part[warp][tile - its first tile][16] (at most
  // a.part_tiles tiles a warp); the block adds them up in warp order below.
  float* slot = part + warp * a.part_tiles * 16;
  float acc0 = 0.f, acc1 = 0.f;  // rows gid and gid + 8, token 0 (lanes tig == 0)
  const uint4* xs4 = reinterpret_cast<const uint4*>(xst);
  // Compute cursor: the chunk in the tile, the chunk in the group, the group's parameters (row gid).
  int cc = u0 % chunks, gc = cc % gch, cnext = u0;
  const uint32_t* pp = ps + static_cast<size_t>(u0 / chunks) * groups * 16 + cc / gch * 16 + gid;
  auto compute = [&](const uint4 (&buf)[U]) {
#pragma unroll
    for (int i = 0; i < U; ++i) {
      if (cnext >= u1) break;
      const uint4 xa = xs4[cc * 8 + tig * 2], xb = xs4[cc * 8 + tig * 2 + 1];
      const uint32_t xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
      // Row gid's zero point for the low nibbles, row gid + 8's for the high ones; the scales after.
      using I = W4Int<T>;
      const uint32_t pr0 = pp[0], pr1 = pp[8];
      typename I::T2 zlo, zhi;
      w4_int_zeros<T>(pr0, pr1, zlo, zhi);
      const uint32_t* words = reinterpret_cast<const uint32_t*>(&buf[i]);
      float d[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int t4 = 0; t4 < 4; ++t4) {
        uint32_t af[4];
        w4_int_word<T>(words[t4], zlo, zhi, af);
        w4::mma_16816<T>(d, af, xw[2 * t4], xw[2 * t4 + 1]);
      }
      acc0 = fmaf(__half2float(__ushort_as_half(static_cast<unsigned short>(pr0 & 0xFFFFu))), d[0], acc0);
      acc1 = fmaf(__half2float(__ushort_as_half(static_cast<unsigned short>(pr1 & 0xFFFFu))), d[2], acc1);
      ++cnext;
      if (++gc == gch) {
        gc = 0;
        pp += 16;
      }
      const bool tile_end = ++cc == chunks;
      if (tile_end || cnext == u1) {
        // The end of this warp's part of the tile: token 0 is column 0, held by lanes tig == 0.
        if (tig == 0) {
          slot[gid] = acc0;
          slot[gid + 8] = acc1;
        }
        acc0 = acc1 = 0.f;
      }
      if (tile_end) {
        if (gc != 0) pp += 16;  // a last group shorter than the others
        cc = gc = 0;
        slot += 16;  // pp: the next tile's parameters follow this one's
      }
    }
  };
  for (int us = u0; us < u1; us += 2 * U) {
    compute(ba);
    load(ba);
    if (us + U >= u1) break;
    compute(bb);
    load(bb);
  }
  __syncthreads();
  if (prof != nullptr) prof[1] = global_ns();
  // Each row: the sums of the warps that took part of its tile, in warp order; then the epilogue.
  auto row_sum = [&](int tl, int row) {
    const int lo = tl * chunks, hi = lo + chunks;
    // Warp w takes units [w nu / 16, (w + 1) nu / 16): unit u is in warp (16 u + 15) / nu.
    const int wlo = (kWarpsB * lo + kWarpsB - 1) / nu, whi = (kWarpsB * (hi - 1) + kWarpsB - 1) / nu;
    float v = 0.f;
    for (int w = wlo; w <= whi; ++w) {
      const int w0 = w * nu / kWarpsB;
      if (w0 == (w + 1) * nu / kWarpsB) continue;  // no units (fewer units than warps)
      v += part[(w * a.part_tiles + tl - w0 / chunks) * 16 + row];
    }
    return v;
  };
  for (int idx = threadIdx.x; idx < nt / pair * 16; idx += kThreadsB) {
    const int tl = idx / 16 * pair, row = idx % 16;
    const float v = row_sum(tl, row);
    if constexpr (E == Epi::kSplit) {
      const int out = (tb0 + tl) * 16 + row;  // over q, k, v
      if (out < a.q_dim) static_cast<T*>(a.q)[out] = from_f32<T>(v);
      else if (out < a.q_dim + a.kv_dim) static_cast<T*>(a.k)[out - a.q_dim] = from_f32<T>(v);
      else static_cast<T*>(a.v)[out - a.q_dim - a.kv_dim] = from_f32<T>(v);
    } else if constexpr (E == Epi::kAdd) {
      const int out = (tb0 + tl) * 16 + row;
      T* x = static_cast<T*>(a.x);
      x[out] = from_f32<T>((idx == threadIdx.x ? resid : to_f32(__ldcg(x + out))) + v);
    } else {
      const float g = v, up = row_sum(tl + 1, row);
      static_cast<T*>(a.hb)[(tb0 + tl) / 2 * 16 + row] = from_f32<T>(g / (1.f + expf(-g)) * up);
    }
  }
}

}  // namespace nb::cuda::step
