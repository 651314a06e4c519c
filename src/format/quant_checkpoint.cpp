#include "format/quant_checkpoint.h"

#include <cmath>
#include <cstring>

namespace nb::qformat {

namespace {

std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim(); ++i) s += (i ? ", " : "") + std::to_string(t.dim(i));
  return s + "] " + std::string(dtype_name(t.dtype()));
}

Status expect(const Tensor& t, const std::string& name, DType dtype, std::initializer_list<int64_t> shape) {
  bool ok = t.defined() && t.dtype() == dtype && static_cast<size_t>(t.ndim()) == shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = t.dim(static_cast<int>(i)) == shape.begin()[i];
  if (ok) return Status::Ok();
  std::string want = "[";
  for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape.begin()[i]);
  want += "] " + std::string(dtype_name(dtype));
  return invalid_argument(name + " is " + (t.defined() ? shape_str(t) : std::string("missing")) + " but the configuration needs " +
                          want + "; the checkpoint does not match its config.json");
}

bool is_float(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

// All elements of a float tensor as f32.
std::vector<float> floats(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  if (!v.empty()) dequantize_row(t.dtype(), t.data(), v.data(), t.numel());
  return v;
}
std::vector<uint32_t> words(const Tensor& t) {
  std::vector<uint32_t> v(static_cast<size_t>(t.numel()));
  if (!v.empty()) std::memcpy(v.data(), t.data(), v.size() * 4);
  return v;
}

template <typename T>
PackedLinear::Array array(std::string suffix, std::string dtype, std::vector<int64_t> shape, const std::vector<T>& data) {
  PackedLinear::Array a{std::move(suffix), std::move(dtype), std::move(shape), {}};
  a.bytes.resize(data.size() * sizeof(T));
  if (!data.empty()) std::memcpy(a.bytes.data(), data.data(), a.bytes.size());
  return a;
}

std::vector<uint16_t> scales_f16_transposed(const GroupQuant& q, int64_t n) {
  std::vector<uint16_t> s(static_cast<size_t>(q.num_groups * n));
  for (int64_t g = 0; g < q.num_groups; ++g)
    for (int64_t c = 0; c < n; ++c) s[static_cast<size_t>(g * n + c)] = fp32_to_fp16(q.scale(c, g));
  return s;
}

Status check_runtime(const Tensor& w) {
  if (w.dtype() != DType::kQGroup || w.group_quant() == nullptr || w.ndim() != 2) {
    return invalid_argument("tensor " + w.describe() + " is not a group-quantized weight");
  }
  return Status::Ok();
}

}  // namespace

std::vector<uint32_t> pack_bits(const std::vector<uint32_t>& vals, int bits) {
  std::vector<uint32_t> out((vals.size() * static_cast<size_t>(bits) + 31) / 32, 0u);
  const uint32_t mask = (1u << bits) - 1u;
  for (size_t i = 0; i < vals.size(); ++i) {
    const size_t pos = i * static_cast<size_t>(bits);
    const uint64_t v = static_cast<uint64_t>(vals[i] & mask) << (pos % 32);
    out[pos / 32] |= static_cast<uint32_t>(v);
    if ((pos % 32) + static_cast<size_t>(bits) > 32) out[pos / 32 + 1] |= static_cast<uint32_t>(v >> 32);
  }
  return out;
}

uint32_t unpack_bits(const uint32_t* w, int64_t index, int bits) {
  const int64_t pos = index * bits;
  const int off = static_cast<int>(pos % 32);
  uint64_t v = w[pos / 32] >> off;
  if (off + bits > 32) v |= static_cast<uint64_t>(w[pos / 32 + 1]) << (32 - off);
  return static_cast<uint32_t>(v) & ((1u << bits) - 1u);
}

Result<Tensor> gptq_to_runtime(const Tensor& qweight, const Tensor& qzeros, const Tensor& scales, const Tensor& g_idx,
                               const GptqSpec& spec, int64_t n, int64_t k, const std::string& what) {
  const int bits = spec.bits;
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
    return unimplemented(what + ": GPTQ bits=" + std::to_string(bits) + "; supported: 2, 3, 4, 8");
  }
  if ((k * bits) % 32 != 0 || (n * bits) % 32 != 0) {
    return invalid_argument(what + ": [" + std::to_string(n) + ", " + std::to_string(k) + "] cannot be packed in 32-bit words at " +
                            std::to_string(bits) + " bits");
  }
  if (spec.group_size > 0 && k % spec.group_size != 0) {
    return invalid_argument(what + ": group_size " + std::to_string(spec.group_size) + " does not divide in_features " + std::to_string(k));
  }
  const int64_t groups = group_count(k, spec.group_size);
  NB_RETURN_IF_ERROR(expect(qweight, what + ".qweight", DType::kI32, {k * bits / 32, n}));
  NB_RETURN_IF_ERROR(expect(qzeros, what + ".qzeros", DType::kI32, {groups, n * bits / 32}));
  if (!is_float(scales.dtype())) return invalid_argument(what + ".scales must be f16/bf16/f32, is " + shape_str(scales));
  NB_RETURN_IF_ERROR(expect(scales, what + ".scales", scales.dtype(), {groups, n}));
  GroupQuant q;
  q.bits = bits;
  q.group_size = spec.group_size;
  q.symmetric = false;  // zeros as stored (a symmetric checkpoint stores 2^(bits-1))
  if (g_idx.defined()) {
    NB_RETURN_IF_ERROR(expect(g_idx, what + ".g_idx", DType::kI32, {k}));
    std::vector<uint32_t> gi = words(g_idx);
    bool all_zero = true;
    for (uint32_t v : gi) all_zero &= v == 0;
    if (spec.group_size > 0) {
      q.g_idx.assign(gi.begin(), gi.end());
    } else if (!all_zero) {
      return invalid_argument(what + ".g_idx assigns several groups but group_size is -1 (one group per row)");
    }
  }
  const std::vector<uint32_t> qw = words(qweight), qz = words(qzeros);
  const std::vector<float> sc = floats(scales);
  const int64_t kw = k * bits / 32;
  std::vector<uint8_t> codes(static_cast<size_t>(n * k));
  std::vector<uint32_t> col(static_cast<size_t>(kw));
  for (int64_t c = 0; c < n; ++c) {
    for (int64_t w = 0; w < kw; ++w) col[static_cast<size_t>(w)] = qw[static_cast<size_t>(w * n + c)];
    for (int64_t j = 0; j < k; ++j) codes[static_cast<size_t>(c * k + j)] = static_cast<uint8_t>(unpack_bits(col.data(), j, bits));
  }
  q.scales.resize(static_cast<size_t>(n * groups));
  q.zeros.resize(static_cast<size_t>(n * groups));
  const int64_t zw = n * bits / 32;
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t c = 0; c < n; ++c) {
      q.scales[static_cast<size_t>(c * groups + g)] = sc[static_cast<size_t>(g * n + c)];
      const uint32_t z = unpack_bits(qz.data() + g * zw, c, bits);
      q.zeros[static_cast<size_t>(c * groups + g)] = static_cast<float>(spec.v2 ? z : z + 1);
    }
  }
  return make_group_quant_tensor(std::move(codes), n, k, std::move(q), what);
}

Result<Tensor> awq_to_runtime(const Tensor& qweight, const Tensor& qzeros, const Tensor& scales, int64_t group_size,
                              int64_t n, int64_t k, const std::string& what) {
  if (n % 8 != 0) return invalid_argument(what + ": AWQ packs 8 output columns per word; out_features " + std::to_string(n) + " is not a multiple of 8");
  if (group_size > 0 && k % group_size != 0) {
    return invalid_argument(what + ": q_group_size " + std::to_string(group_size) + " does not divide in_features " + std::to_string(k));
  }
  const int64_t groups = group_count(k, group_size);
  NB_RETURN_IF_ERROR(expect(qweight, what + ".qweight", DType::kI32, {k, n / 8}));
  NB_RETURN_IF_ERROR(expect(qzeros, what + ".qzeros", DType::kI32, {groups, n / 8}));
  if (!is_float(scales.dtype())) return invalid_argument(what + ".scales must be f16/bf16/f32, is " + shape_str(scales));
  NB_RETURN_IF_ERROR(expect(scales, what + ".scales", scales.dtype(), {groups, n}));
  int shift[8];
  for (int i = 0; i < 8; ++i) shift[kAwqOrder[i]] = 4 * i;
  const std::vector<uint32_t> qw = words(qweight), qz = words(qzeros);
  const std::vector<float> sc = floats(scales);
  std::vector<uint8_t> codes(static_cast<size_t>(n * k));
  for (int64_t j = 0; j < k; ++j)
    for (int64_t c = 0; c < n; ++c)
      codes[static_cast<size_t>(c * k + j)] = static_cast<uint8_t>((qw[static_cast<size_t>(j * (n / 8) + c / 8)] >> shift[c % 8]) & 0xf);
  GroupQuant q;
  q.bits = 4;
  q.group_size = group_size;
  q.symmetric = false;
  q.scales.resize(static_cast<size_t>(n * groups));
  q.zeros.resize(static_cast<size_t>(n * groups));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t c = 0; c < n; ++c) {
      q.scales[static_cast<size_t>(c * groups + g)] = sc[static_cast<size_t>(g * n + c)];
      q.zeros[static_cast<size_t>(c * groups + g)] =
          static_cast<float>((qz[static_cast<size_t>(g * (n / 8) + c / 8)] >> shift[c % 8]) & 0xf);
    }
  }
  return make_group_quant_tensor(std::move(codes), n, k, std::move(q), what);
}

Result<Tensor> ct_int8_to_runtime(const Tensor& weight, const Tensor& weight_scale, const Tensor& weight_zero_point,
                                  bool act_int8, int64_t n, int64_t k, const std::string& what) {
  NB_RETURN_IF_ERROR(expect(weight, what + ".weight", DType::kI8, {n, k}));
  if (!weight_scale.defined() || !is_float(weight_scale.dtype())) {
    return invalid_argument(what + ".weight_scale must be an f32/f16/bf16 tensor");
  }
  // [n, 1] channel, [n, G] group, [1] / [] / [1, 1] one scale for the tensor.
  const int64_t numel = weight_scale.numel();
  int64_t groups = 1;
  bool per_tensor = numel == 1;
  if (!per_tensor) {
    if (weight_scale.ndim() != 2 || weight_scale.dim(0) != n) {
      return invalid_argument(what + ".weight_scale is " + shape_str(weight_scale) + "; expected [" + std::to_string(n) + ", groups]");
    }
    groups = weight_scale.dim(1);
    if (groups <= 0 || k % groups != 0) {
      return invalid_argument(what + ".weight_scale has " + std::to_string(groups) + " groups, which do not divide in_features " + std::to_string(k));
    }
  }
  GroupQuant q;
  q.bits = 8;
  q.group_size = groups == 1 ? -1 : k / groups;
  q.act_int8 = act_int8;
  const std::vector<float> sc = floats(weight_scale);
  q.scales.resize(static_cast<size_t>(n * groups));
  for (size_t i = 0; i < q.scales.size(); ++i) q.scales[i] = per_tensor ? sc[0] : sc[i];
  q.symmetric = !weight_zero_point.defined();
  if (!q.symmetric) {
    if (weight_zero_point.dtype() != DType::kI8 || weight_zero_point.numel() != (per_tensor ? 1 : n * groups)) {
      return invalid_argument(what + ".weight_zero_point is " + shape_str(weight_zero_point) + "; expected int8 shaped like weight_scale");
    }
    const auto* zp = weight_zero_point.ptr<const int8_t>();
    q.zeros.resize(q.scales.size());
    for (size_t i = 0; i < q.zeros.size(); ++i) q.zeros[i] = static_cast<float>((per_tensor ? zp[0] : zp[i]) + 128);
  }
  std::vector<uint8_t> codes(static_cast<size_t>(n * k));
  const auto* w = weight.ptr<const int8_t>();
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>(w[i] + 128);
  return make_group_quant_tensor(std::move(codes), n, k, std::move(q), what);
}

bool gptq_needs_v2(const Tensor& w) {
  const GroupQuant* q = w.group_quant();
  if (q == nullptr || q->symmetric) return false;
  for (float z : q->zeros) if (z == 0.f) return true;
  return false;
}

Result<PackedLinear> pack_gptq(const Tensor& w, bool v2) {
  NB_RETURN_IF_ERROR(check_runtime(w));
  const GroupQuant& q = *w.group_quant();
  const int64_t n = w.dim(0), k = w.dim(1);
  const int bits = q.bits;
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) return unimplemented("GPTQ packing needs 2, 3, 4 or 8 bits, not " + std::to_string(bits));
  if ((k * bits) % 32 != 0 || (n * bits) % 32 != 0) {
    return invalid_argument("GPTQ packing of " + w.describe() + " at " + std::to_string(bits) + " bits: dims must fill 32-bit words");
  }
  if (!v2 && gptq_needs_v2(w)) return invalid_argument("a zero point of 0 cannot be stored in GPTQ v1 (zero - 1); write gptq_v2");
  const int64_t kw = k * bits / 32, zw = n * bits / 32;
  std::vector<uint32_t> qweight(static_cast<size_t>(kw * n));
  std::vector<uint32_t> col(static_cast<size_t>(k));
  for (int64_t c = 0; c < n; ++c) {
    const uint8_t* codes = w.row<const uint8_t>(c);
    for (int64_t j = 0; j < k; ++j) col[static_cast<size_t>(j)] = codes[j];
    const std::vector<uint32_t> packed = pack_bits(col, bits);
    for (int64_t i = 0; i < kw; ++i) qweight[static_cast<size_t>(i * n + c)] = packed[static_cast<size_t>(i)];
  }
  std::vector<uint32_t> qzeros;
  std::vector<uint32_t> zrow(static_cast<size_t>(n));
  for (int64_t g = 0; g < q.num_groups; ++g) {
    for (int64_t c = 0; c < n; ++c) zrow[static_cast<size_t>(c)] = static_cast<uint32_t>(static_cast<int>(q.zero(c, g)) - (v2 ? 0 : 1));
    const std::vector<uint32_t> packed = pack_bits(zrow, bits);
    qzeros.insert(qzeros.end(), packed.begin(), packed.end());
  }
  std::vector<int32_t> g_idx(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) g_idx[static_cast<size_t>(j)] = static_cast<int32_t>(q.group_of(j));
  PackedLinear p;
  p.arrays.push_back(array("qweight", "I32", {kw, n}, qweight));
  p.arrays.push_back(array("qzeros", "I32", {q.num_groups, zw}, qzeros));
  p.arrays.push_back(array("scales", "F16", {q.num_groups, n}, scales_f16_transposed(q, n)));
  p.arrays.push_back(array("g_idx", "I32", {k}, g_idx));
  return p;
}

Result<PackedLinear> pack_awq(const Tensor& w) {
  NB_RETURN_IF_ERROR(check_runtime(w));
  const GroupQuant& q = *w.group_quant();
  const int64_t n = w.dim(0), k = w.dim(1);
  if (q.bits != 4 || n % 8 != 0 || !q.g_idx.empty()) {
    return invalid_argument("AutoAWQ GEMM packing needs 4-bit codes, out_features a multiple of 8 and no g_idx; " + w.describe() +
                            " has " + std::to_string(q.bits) + " bits");
  }
  std::vector<uint32_t> qweight(static_cast<size_t>(k * n / 8), 0u), qzeros(static_cast<size_t>(q.num_groups * n / 8), 0u);
  for (int64_t c = 0; c < n; ++c) {
    const uint8_t* codes = w.row<const uint8_t>(c);
    for (int i = 0; i < 8; ++i) {
      if (kAwqOrder[i] != c % 8) continue;
      for (int64_t j = 0; j < k; ++j) qweight[static_cast<size_t>(j * (n / 8) + c / 8)] |= static_cast<uint32_t>(codes[j] & 0xf) << (4 * i);
      for (int64_t g = 0; g < q.num_groups; ++g) {
        qzeros[static_cast<size_t>(g * (n / 8) + c / 8)] |= (static_cast<uint32_t>(q.zero(c, g)) & 0xf) << (4 * i);
      }
    }
  }
  PackedLinear p;
  p.arrays.push_back(array("qweight", "I32", {k, n / 8}, qweight));
  p.arrays.push_back(array("qzeros", "I32", {q.num_groups, n / 8}, qzeros));
  p.arrays.push_back(array("scales", "F16", {q.num_groups, n}, scales_f16_transposed(q, n)));
  return p;
}

Result<PackedLinear> pack_ct_int8(const Tensor& w) {
  NB_RETURN_IF_ERROR(check_runtime(w));
  const GroupQuant& q = *w.group_quant();
  const int64_t n = w.dim(0), k = w.dim(1);
  if (q.bits != 8 || !q.g_idx.empty()) return invalid_argument("compressed-tensors int8 packing needs 8-bit codes without g_idx; " + w.describe());
  std::vector<int8_t> weight(static_cast<size_t>(n * k));
  const auto* codes = w.ptr<const uint8_t>();
  for (size_t i = 0; i < weight.size(); ++i) weight[i] = static_cast<int8_t>(static_cast<int>(codes[i]) - 128);
  PackedLinear p;
  p.arrays.push_back(array("weight", "I8", {n, k}, weight));
  p.arrays.push_back(array("weight_scale", "F32", {n, q.num_groups}, q.scales));
  if (!q.symmetric) {
    std::vector<int8_t> zp(q.zeros.size());
    for (size_t i = 0; i < zp.size(); ++i) zp[i] = static_cast<int8_t>(static_cast<int>(q.zeros[i]) - 128);
    p.arrays.push_back(array("weight_zero_point", "I8", {n, q.num_groups}, zp));
  }
  return p;
}

}  // namespace nb::qformat
