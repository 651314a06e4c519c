#include "quant/qlinear.h"

namespace nb::quant {

namespace {
GroupQuant group_quant_of(const QuantizedLinear& l, bool act_int8) {
  GroupQuant q;
  q.bits = l.bits;
  q.group_size = l.group_size;
  q.symmetric = l.symmetric;
  q.act_int8 = act_int8;
  q.num_groups = l.num_groups();
  q.scales = l.scales;
  q.zeros = l.zeros;
  q.g_idx = l.g_idx;
  return q;
}
}  // namespace

Status validate(const QuantizedLinear& l, const std::string& what) {
  GroupQuant q = group_quant_of(l, false);
  if (static_cast<int64_t>(l.q.size()) != l.out_features * l.in_features) {
    return invalid_argument(what + ": " + std::to_string(l.q.size()) + " codes for a [" + std::to_string(l.out_features) +
                            ", " + std::to_string(l.in_features) + "] weight");
  }
  return validate_group_quant(q, l.out_features, l.in_features, l.q.data(), what);
}

std::vector<float> dequantize(const QuantizedLinear& l) {
  const GroupQuant q = group_quant_of(l, false);
  std::vector<float> w(static_cast<size_t>(l.out_features * l.in_features));
  for (int64_t n = 0; n < l.out_features; ++n) {
    for (int64_t j = 0; j < l.in_features; ++j) {
      const size_t i = static_cast<size_t>(n * l.in_features + j);
      const int64_t g = q.group_of(j);
      w[i] = (static_cast<float>(l.q[i]) - q.zero(n, g)) * q.scale(n, g);
    }
  }
  return w;
}

Result<Tensor> to_tensor(const QuantizedLinear& l, bool act_int8, const std::string& what) {
  return make_group_quant_tensor(l.q, l.out_features, l.in_features, group_quant_of(l, act_int8), what);
}

Result<QuantizedLinear> from_tensor(const Tensor& t, const std::string& what) {
  const GroupQuant* q = t.group_quant();
  if (t.dtype() != DType::kQGroup || q == nullptr || t.ndim() != 2) {
    return invalid_argument(what + " is " + t.describe() + ", not a group-quantized weight");
  }
  QuantizedLinear l;
  l.bits = q->bits;
  l.group_size = q->group_size;
  l.symmetric = q->symmetric;
  l.out_features = t.dim(0);
  l.in_features = t.dim(1);
  const auto* c = t.ptr<const uint8_t>();
  l.q.assign(c, c + l.out_features * l.in_features);
  l.scales = q->scales;
  l.zeros = q->zeros;
  l.g_idx = q->g_idx;
  return l;
}

Tensor& linear_of(LayerWeights& w, LinearKind kind) {
  switch (kind) {
    case LinearKind::kQ: return w.wq;
    case LinearKind::kK: return w.wk;
    case LinearKind::kV: return w.wv;
    case LinearKind::kO: return w.wo;
    case LinearKind::kGate: return w.w_gate;
    case LinearKind::kUp: return w.w_up;
    case LinearKind::kDown: break;
  }
  return w.w_down;
}
const Tensor& linear_of(const LayerWeights& w, LinearKind kind) { return linear_of(const_cast<LayerWeights&>(w), kind); }

const char* hf_linear_name(LinearKind kind) {
  static const char* kNames[kNumLinearKinds] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                "mlp.down_proj"};
  return kNames[static_cast<int>(kind)];
}

Result<ModelWeights> runtime_weights(const QuantizedModel& qm) {
  ModelWeights w = qm.weights;
  if (qm.layers.size() != w.layers.size()) {
    return invalid_argument("quantized model has " + std::to_string(qm.layers.size()) + " quantized layers but " +
                            std::to_string(w.layers.size()) + " layers");
  }
  for (size_t l = 0; l < qm.layers.size(); ++l) {
    for (int k = 0; k < kNumLinearKinds; ++k) {
      const auto kind = static_cast<LinearKind>(k);
      const Tensor& orig = linear_of(w.layers[l], kind);
      const QuantizedLinear& ql = qm.layers[l][static_cast<size_t>(k)];
      const std::string what = "layer " + std::to_string(l) + " " + hf_linear_name(kind);
      if (orig.defined() && (orig.dim(0) != ql.out_features || orig.dim(1) != ql.in_features)) {
        return invalid_argument(what + ": quantized shape [" + std::to_string(ql.out_features) + ", " +
                                std::to_string(ql.in_features) + "] differs from the model's " + orig.describe());
      }
      NB_ASSIGN_OR_RETURN(linear_of(w.layers[l], kind), to_tensor(ql, qm.act_int8, what));
    }
  }
  return w;
}

}  // namespace nb::quant
