// Used by tests/gpu/emu (included by emu.h): emulation of the warp-wide tensor-core product
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32  d = A(16x16) . B(16x8) + c
// with the fragment layouts of the PTX ISA (groupID = lane / 4, tig = lane % 4):
//   A: a[r] holds two elements (low half first): row = groupID + 8 * (r & 1),
//      col = 2 * tig + (half) + 8 * (r >> 1)                     (a0,a1 | a2,a3 | a4,a5 | a6,a7)
//   B: b0 holds rows k = 2 * tig + {0, 1}, b1 rows k = 2 * tig + 8 + {0, 1}; col = groupID
//   C/D: d[i]: row = groupID + 8 * (i >> 1), col = 2 * tig + (i & 1)
// Every lane publishes its fragments, the warp meets, each lane computes its four outputs from the
// whole warp's A and B (f32 sums of exact products, k in order; hardware order differs within f32
// rounding), and the warp meets again before the exchange area is reused.
#pragma once
#include <cstdint>
#include <cstring>

namespace emu {
struct MmaXchg {
  uint32_t a[1024][4];
  uint32_t b[1024][2];
};
inline MmaXchg& mma_xchg() {
  static MmaXchg x;
  return x;
}
inline float half_bits_to_f32(uint16_t h, bool bf16) {
  if (bf16) {
    uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half v;
  std::memcpy(&v, &h, 2);
  return __half2float(v);
}
}  // namespace emu

inline void emu_mma_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1, bool bf16) {
  auto& s = emu::S();
  auto& x = emu::mma_xchg();
  const int me = s.cur, lane = me % 32, base = me - lane;
  for (int r = 0; r < 4; ++r) x.a[me][r] = a[r];
  x.b[me][0] = b0;
  x.b[me][1] = b1;
  __syncwarp();
  auto elem = [&](uint32_t word, int half) {
    return emu::half_bits_to_f32(static_cast<uint16_t>(half ? word >> 16 : word & 0xFFFFu), bf16);
  };
  auto A = [&](int row, int col) {
    const int l = (row % 8) * 4 + (col % 8) / 2, r = (row / 8) + 2 * (col / 8);
    return elem(x.a[base + l][r], col % 2);
  };
  auto B = [&](int k, int col) {
    const int l = col * 4 + (k % 8) / 2;
    return elem(x.b[base + l][k / 8], k % 2);
  };
  const int gid = lane / 4, tig = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = gid + 8 * (i >> 1), col = 2 * tig + (i & 1);
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    out[i] = acc;
  }
  __syncwarp();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}
inline void emu_mma_16816_f16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  emu_mma_16816(d, a, b0, b1, false);
}
inline void emu_mma_16816_bf16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  emu_mma_16816(d, a, b0, b1, true);
}
// Read-only / streaming loads are plain loads on the host.
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
// Not declared for the host by cuda_fp16.h: a*b+c per half with one rounding.
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  const float2 fa = __half22float2(a), fb = __half22float2(b), fc = __half22float2(c);
  return __floats2half2_rn(static_cast<float>(static_cast<double>(fa.x) * fb.x + fc.x),
                           static_cast<float>(static_cast<double>(fa.y) * fb.y + fc.y));
}
