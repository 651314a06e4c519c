// Element types. Plain types (F32/F16/BF16/I8/I32) have block size 1. Packed/block types store
// `block_size` logical elements in `block_bytes` bytes; a tensor's innermost dimension must be a
// multiple of its block size, and rows are contiguous.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace nb {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kI8,
  kI32,
  kI4,    // two signed 4-bit values per byte, low nibble first (used by quant/ formats)
  kQ8_0,  // GGUF block: f16 d; int8 qs[32]               x = d * q
  kQ4_0,  // GGUF block: f16 d; uint8 qs[16]              x = d * (q - 8), q in low nibbles = elems 0..15
  kQ4_1,  // GGUF block: f16 d; f16 m; uint8 qs[16]       x = d * q + m
  kQGroup,  // group-wise integer codes, one uint8 per element; scales/zeros/g_idx in the tensor's
            // GroupQuant (core/group_quant.h). dequantize_row cannot decode it alone (writes NaN):
            // use dequantize_tensor_row.
};

struct DTypeInfo {
  std::string_view name;
  int block_size;    // logical elements per block
  int block_bytes;   // bytes per block
};

const DTypeInfo& dtype_info(DType t);
inline std::string_view dtype_name(DType t) { return dtype_info(t).name; }
inline bool is_block_quantized(DType t) { return dtype_info(t).block_size > 1; }
// Bytes of a row of n elements; n must be a multiple of the block size.
inline size_t row_bytes(DType t, int64_t n) {
  const DTypeInfo& i = dtype_info(t);
  return static_cast<size_t>(n / i.block_size) * static_cast<size_t>(i.block_bytes);
}

// ---- half precision conversions (bit exact, round-to-nearest-even) ----
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
inline float bf16_to_fp32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t fp32_to_bf16(float f);

// ---- GGUF block layouts ----
constexpr int kQK8_0 = 32;
constexpr int kQK4_0 = 32;
constexpr int kQK4_1 = 32;
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK8_0];
};
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK4_0 / 2];  // element j in low nibble of qs[j], element j+16 in high nibble
};
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK4_1 / 2];
};
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);

// Dequantize n elements (multiple of the block size) of type t from src to f32.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
// Quantize n f32 elements into type t (reference, round-to-nearest like ggml).
void quantize_row(DType t, const float* src, void* dst, int64_t n);

}  // namespace nb
