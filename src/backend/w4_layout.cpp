#include "backend/w4_layout.h"

#include <cmath>
#include <string>

#include "core/group_quant.h"

namespace nb {

namespace {

// Position of (row r in tile, col c in chunk) in a tile-chunk's 128 words: word index and nibble.
struct Slot {
  int64_t word;  // lane * 4 + t
  int nibble;    // reg + 4 * h
};
inline Slot slot_of(int64_t r, int64_t c) {
  const int64_t gid = r % 8, reg_row = r / 8;  // reg & 1
  const int64_t tig = c / 16, t = (c % 16) / 4, reg_k = (c % 4) / 2, h = c % 2;
  const int64_t lane = 4 * gid + tig, reg = reg_row + 2 * reg_k;
  return {lane * 4 + t, static_cast<int>(reg + 4 * h)};
}

inline int64_t tile_chunk_base(const W4Layout& l, int64_t row, int64_t col) {
  return ((row / W4Layout::kTileRows) * l.num_chunks() + col / W4Layout::kChunk) * 128;
}

}  // namespace

Status w4_check(const Tensor& t) {
  const GroupQuant* q = t.group_quant();
  if (t.dtype() != DType::kQGroup || q == nullptr || t.ndim() != 2) {
    return invalid_argument("w4: expected a 2-D kQGroup weight; got " + t.describe());
  }
  const std::string what = "w4: weight " + t.describe() + ": ";
  if (q->bits != 4 || q->act_int8) {
    return unimplemented(what + "only 4-bit weight-only (W4A16) codes run on the CUDA W4 kernels; got bits " +
                         std::to_string(q->bits) + (q->act_int8 ? " with int8 activations" : ""));
  }
  if (!q->contiguous_groups()) {
    return unimplemented(what + "act-order (a non-trivial g_idx) is not supported on CUDA; requantize without "
                                "--act-order");
  }
  const int64_t k = t.dim(1);
  if (k % W4Layout::kChunk != 0) {
    return unimplemented(what + "in_features must be a multiple of 64 for the CUDA W4 kernels; got " +
                         std::to_string(k));
  }
  if (q->group_size > 0 && q->group_size % W4Layout::kChunk != 0) {
    return unimplemented(what + "group size must be a multiple of 64 (e.g. 64 or 128) or per-channel; got " +
                         std::to_string(q->group_size));
  }
  return Status::Ok();
}

Result<W4Layout> w4_pack(const Tensor& t) {
  NB_RETURN_IF_ERROR(w4_check(t));
  if (t.device() != Device::kCPU) return invalid_argument("w4_pack: the kQGroup weight must be in host memory");
  const GroupQuant& q = *t.group_quant();
  W4Layout l;
  l.n = t.dim(0);
  l.k = t.dim(1);
  l.n_pad = (l.n + W4Layout::kRowAlign - 1) / W4Layout::kRowAlign * W4Layout::kRowAlign;
  l.group_size = q.group_size < 0 ? l.k : q.group_size;
  l.num_groups = (l.k + l.group_size - 1) / l.group_size;
  l.symmetric = q.symmetric;
  if (q.num_groups != l.num_groups) {
    return invalid_argument("w4_pack: GroupQuant num_groups " + std::to_string(q.num_groups) + " != " +
                            std::to_string(l.num_groups) + " for " + t.describe());
  }
  l.codes.assign(static_cast<size_t>(l.n_pad * l.k / 8), 0u);
  l.params.assign(static_cast<size_t>(l.n_pad * l.num_groups), 0u);
  for (int64_t r = 0; r < l.n; ++r) {
    const uint8_t* codes = t.row<const uint8_t>(r);
    for (int64_t c = 0; c < l.k; ++c) {
      const Slot s = slot_of(r % W4Layout::kTileRows, c % W4Layout::kChunk);
      l.codes[static_cast<size_t>(tile_chunk_base(l, r, c) + s.word)] |= static_cast<uint32_t>(codes[c] & 15u)
                                                                         << (4 * s.nibble);
    }
    for (int64_t g = 0; g < l.num_groups; ++g) {
      const float scale = q.scale(r, g), zero = q.zero(r, g);
      if (!(std::fabs(scale) <= 65504.f)) {
        return invalid_argument("w4_pack: scale " + std::to_string(scale) + " of row " + std::to_string(r) +
                                " is not finite in f16; the CUDA W4 kernels keep scales in f16");
      }
      const uint32_t sh = fp32_to_fp16(scale), zh = fp32_to_fp16(zero);
      const int64_t idx = ((r / W4Layout::kTileRows) * l.num_groups + g) * W4Layout::kTileRows + r % W4Layout::kTileRows;
      l.params[static_cast<size_t>(idx)] = sh | (zh << 16);
    }
  }
  return l;
}

Result<Tensor> concat_group_quant_rows(const std::vector<Tensor>& parts) {
  if (parts.empty()) return invalid_argument("concat_group_quant_rows: no tensors");
  const Tensor& first = parts.front();
  const GroupQuant* q0 = first.group_quant();
  if (first.dtype() != DType::kQGroup || q0 == nullptr || first.ndim() != 2 || first.device() != Device::kCPU) {
    return invalid_argument("concat_group_quant_rows: expected 2-D host kQGroup weights; got " + first.describe());
  }
  const int64_t k = first.dim(1);
  int64_t n = 0;
  for (const Tensor& t : parts) {
    const GroupQuant* q = t.group_quant();
    if (t.dtype() != DType::kQGroup || q == nullptr || t.ndim() != 2 || t.device() != Device::kCPU || t.dim(1) != k ||
        q->bits != q0->bits || q->group_size != q0->group_size || q->symmetric != q0->symmetric ||
        q->act_int8 != q0->act_int8 || !q->contiguous_groups()) {
      return invalid_argument("concat_group_quant_rows: " + t.describe() + " does not match " + first.describe() +
                              " (same in_features, bits, group size, symmetry; no act-order)");
    }
    n += t.dim(0);
  }
  GroupQuant q;
  q.bits = q0->bits;
  q.group_size = q0->group_size;
  q.symmetric = q0->symmetric;
  q.act_int8 = q0->act_int8;
  std::vector<uint8_t> codes;
  codes.reserve(static_cast<size_t>(n * k));
  for (const Tensor& t : parts) {
    const GroupQuant& tq = *t.group_quant();
    const auto* c = t.row<const uint8_t>(0);
    codes.insert(codes.end(), c, c + t.dim(0) * k);
    q.scales.insert(q.scales.end(), tq.scales.begin(), tq.scales.end());
    q.zeros.insert(q.zeros.end(), tq.zeros.begin(), tq.zeros.end());
  }
  return make_group_quant_tensor(std::move(codes), n, k, std::move(q), "concat_group_quant_rows");
}

int w4_unpack_code(const W4Layout& l, int64_t row, int64_t col) {
  const Slot s = slot_of(row % W4Layout::kTileRows, col % W4Layout::kChunk);
  return static_cast<int>((l.codes[static_cast<size_t>(tile_chunk_base(l, row, col) + s.word)] >> (4 * s.nibble)) & 15u);
}

void w4_unpack_params(const W4Layout& l, int64_t row, int64_t group, uint16_t* scale, uint16_t* zero) {
  const int64_t idx = ((row / W4Layout::kTileRows) * l.num_groups + group) * W4Layout::kTileRows + row % W4Layout::kTileRows;
  const uint32_t v = l.params[static_cast<size_t>(idx)];
  *scale = static_cast<uint16_t>(v & 0xFFFFu);
  *zero = static_cast<uint16_t>(v >> 16);
}

}  // namespace nb
