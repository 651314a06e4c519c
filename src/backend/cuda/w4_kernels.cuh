// Internal to backend/cuda/w4_matmul.cu (and the CPU emulator, tests/gpu/emu): the W4A16 device
// primitives — 4-bit codes in mma A-fragment order (backend/w4_layout.h) to f16/bf16 fragments, and
// the tensor-core product mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/mma.cuh"

namespace nb::cuda::w4 {

// Per-row group parameters as the kernels use them: the scale, and the zero point folded into the
// constants of the exponent trick.
template <typename T>
struct RowParams;

// f16: (w & 0x000f000f) | 0x64006400 is the f16 pair (1024 + q_lo, 1024 + q_hi); minus (1024 + z)
// it is q - z exactly (integers below 2048 are exact in f16). (w & 0x00f000f0) | 0x64006400 is
// 1024 + 16 q; times 1/16 minus (64 + z) is again q - z exactly (one fma, exact result). One
// multiply by the f16 scale then rounds once: the weight is round_f16((q - z) * scale).
template <>
struct RowParams<__half> {
  __half2 scale, zlo, zhi;  // zlo = 1024 + z, zhi = -(64 + z)
  __device__ __forceinline__ static RowParams make(uint32_t packed) {
    const __half s = __ushort_as_half(static_cast<unsigned short>(packed & 0xFFFFu));
    const float z = __half2float(__ushort_as_half(static_cast<unsigned short>(packed >> 16)));
    RowParams r;
    r.scale = __halves2half2(s, s);
    r.zlo = __float2half2_rn(1024.f + z);
    r.zhi = __float2half2_rn(-(64.f + z));
    return r;
  }
};

// bf16: no cheap exponent trick for the high nibble (bf16 has 7 mantissa bits), so each code goes
// through f32: round_bf16((q - z) * scale) with the f16 scale widened to f32.
template <>
struct RowParams<__nv_bfloat16> {
  float scale, zero;
  __device__ __forceinline__ static RowParams make(uint32_t packed) {
    RowParams r;
    r.scale = __half2float(__ushort_as_half(static_cast<unsigned short>(packed & 0xFFFFu)));
    r.zero = __half2float(__ushort_as_half(static_cast<unsigned short>(packed >> 16)));
    return r;
  }
};

__device__ __forceinline__ uint32_t h2_bits(__half2 v) { return *reinterpret_cast<uint32_t*>(&v); }
__device__ __forceinline__ __half2 bits_h2(uint32_t v) { return *reinterpret_cast<__half2*>(&v); }

// One 32-bit word of codes (8 nibbles; nibble reg + 4h = A register reg, half h) to the four A
// registers of one m16n8k16 k-tile: a[0], a[2] of row gid (params p0), a[1], a[3] of row gid + 8
// (params p1).
__device__ __forceinline__ void dequant_word(uint32_t w, const RowParams<__half>& p0, const RowParams<__half>& p1,
                                             uint32_t a[4]) {
  const __half2 sixteenth = __float2half2_rn(1.f / 16.f);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const uint32_t q = w >> (8 * i);
    const __half2 lo = __hsub2(bits_h2((q & 0x000F000Fu) | 0x64006400u), p0.zlo);
    const __half2 hi = __hfma2(bits_h2((q & 0x00F000F0u) | 0x64006400u), sixteenth, p1.zhi);
    a[2 * i] = h2_bits(__hmul2(lo, p0.scale));
    a[2 * i + 1] = h2_bits(__hmul2(hi, p1.scale));
  }
}

__device__ __forceinline__ void dequant_word(uint32_t w, const RowParams<__nv_bfloat16>& p0,
                                             const RowParams<__nv_bfloat16>& p1, uint32_t a[4]) {
#pragma unroll
  for (int reg = 0; reg < 4; ++reg) {
    const RowParams<__nv_bfloat16>& p = (reg & 1) ? p1 : p0;
    const float lo = (static_cast<float>((w >> (4 * reg)) & 15u) - p.zero) * p.scale;
    const float hi = (static_cast<float>((w >> (4 * reg + 16)) & 15u) - p.zero) * p.scale;
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    a[reg] = *reinterpret_cast<uint32_t*>(&v);
  }
}

// The tensor-core product (backend/cuda/mma.cuh).
using detail::mma_16816;

}  // namespace nb::cuda::w4
