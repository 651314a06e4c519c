#include "core/group_quant.h"

#include <cmath>

namespace nb {

Status validate_group_quant(GroupQuant& q, int64_t n, int64_t k, const uint8_t* codes, const std::string& what) {
  if (q.bits < 2 || q.bits > 8) {
    return invalid_argument(what + ": " + std::to_string(q.bits) + "-bit codes are not supported; use 2..8 bits");
  }
  if (n <= 0 || k <= 0) return invalid_argument(what + ": empty weight [" + std::to_string(n) + ", " + std::to_string(k) + "]");
  if (q.group_size == 0 || q.group_size < -1) {
    return invalid_argument(what + ": group size " + std::to_string(q.group_size) + " is invalid; use -1 (per channel) or a positive size");
  }
  if (q.g_idx.empty() && q.group_size > 0 && k % q.group_size != 0) {
    return invalid_argument(what + ": group size " + std::to_string(q.group_size) + " does not divide in_features " +
                            std::to_string(k) + "; pick a group size that divides it, or -1 (per channel)");
  }
  if (!q.g_idx.empty()) {
    if (static_cast<int64_t>(q.g_idx.size()) != k) {
      return invalid_argument(what + ": g_idx has " + std::to_string(q.g_idx.size()) + " entries, in_features is " + std::to_string(k));
    }
    if (q.group_size < 0) return invalid_argument(what + ": g_idx with per-channel quantization (group size -1)");
  }
  q.num_groups = group_count(k, q.group_size);
  const auto ng = static_cast<size_t>(n * q.num_groups);
  if (q.scales.size() != ng) {
    return invalid_argument(what + ": " + std::to_string(q.scales.size()) + " scales, expected " + std::to_string(ng) +
                            " (" + std::to_string(n) + " rows x " + std::to_string(q.num_groups) + " groups)");
  }
  if (!q.symmetric && q.zeros.size() != ng) {
    return invalid_argument(what + ": " + std::to_string(q.zeros.size()) + " zero points, expected " + std::to_string(ng));
  }
  if (q.symmetric && !q.zeros.empty()) return invalid_argument(what + ": symmetric quantization with explicit zero points");
  const int qmax = (1 << q.bits) - 1;
  for (size_t i = 0; i < ng; ++i) {
    if (!std::isfinite(q.scales[i])) {
      return invalid_argument(what + ": scale " + std::to_string(i) + " is " + std::to_string(q.scales[i]) +
                              " (NaN/Inf weights); the checkpoint is corrupt or was quantized from non-finite weights");
    }
  }
  for (size_t i = 0; i < q.zeros.size(); ++i) {
    const float z = q.zeros[i];
    if (!(z >= 0.f && z <= static_cast<float>(qmax)) || z != std::floor(z)) {
      return invalid_argument(what + ": zero point " + std::to_string(i) + " is " + std::to_string(z) + ", outside the " +
                              std::to_string(q.bits) + "-bit code range [0, " + std::to_string(qmax) + "]");
    }
  }
  bool trivial = true;
  for (size_t j = 0; j < q.g_idx.size(); ++j) {
    const int32_t g = q.g_idx[j];
    if (g < 0 || g >= q.num_groups) {
      return invalid_argument(what + ": g_idx[" + std::to_string(j) + "] = " + std::to_string(g) + " is outside [0, " +
                              std::to_string(q.num_groups) + ")");
    }
    trivial &= g == static_cast<int64_t>(j) / q.group_size;
  }
  if (trivial) q.g_idx.clear();
  if (codes != nullptr) {
    const auto total = static_cast<size_t>(n * k);
    for (size_t i = 0; i < total; ++i) {
      if (codes[i] > qmax) {
        return invalid_argument(what + ": code " + std::to_string(codes[i]) + " at element " + std::to_string(i) +
                                " does not fit " + std::to_string(q.bits) + " bits");
      }
    }
  }
  return Status::Ok();
}

Result<Tensor> make_group_quant_tensor(std::vector<uint8_t> codes, int64_t n, int64_t k, GroupQuant q,
                                       const std::string& what) {
  if (static_cast<int64_t>(codes.size()) != n * k) {
    return invalid_argument(what + ": " + std::to_string(codes.size()) + " codes for a [" + std::to_string(n) + ", " +
                            std::to_string(k) + "] weight");
  }
  NB_RETURN_IF_ERROR(validate_group_quant(q, n, k, codes.data(), what));
  const int64_t tr = GroupQuant::kTileRows, tiles = (n + tr - 1) / tr;
  q.tiled.assign(static_cast<size_t>(tiles * k * tr), 0);
  const bool quads = q.act_int8 && k % 4 == 0;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < k; ++i) {
      const int64_t at = quads ? (((r / tr) * (k / 4) + i / 4) * tr + r % tr) * 4 + i % 4 : ((r / tr) * k + i) * tr + r % tr;
      q.tiled[static_cast<size_t>(at)] = codes[static_cast<size_t>(r * k + i)];
    }
  }
  auto owner = std::make_shared<std::vector<uint8_t>>(std::move(codes));
  Tensor t = Tensor::view(owner->data(), {n, k}, DType::kQGroup, owner);
  t.set_group_quant(std::make_shared<const GroupQuant>(std::move(q)));
  return t;
}

void dequantize_tensor_row(const Tensor& t, int64_t r, float* dst) {
  const GroupQuant* q = t.group_quant();
  const int64_t k = t.cols();
  if (t.dtype() != DType::kQGroup || q == nullptr) {
    dequantize_row(t.dtype(), t.row<const void>(r), dst, k);
    return;
  }
  const uint8_t* codes = t.row<const uint8_t>(r);
  for (int64_t j = 0; j < k; ++j) {
    const int64_t g = q->group_of(j);
    dst[j] = (static_cast<float>(codes[j]) - q->zero(r, g)) * q->scale(r, g);
  }
}

}  // namespace nb
