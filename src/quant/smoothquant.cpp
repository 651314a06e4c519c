#include "quant/smoothquant.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "quant/awq.h"

namespace nb::quant {

std::vector<float> smoothquant_scales_mapped(const std::vector<float>& act_absmax,
                                             const std::vector<const std::vector<float>*>& weights,
                                             const std::vector<int64_t>& out_features, int64_t in, double alpha,
                                             const std::vector<int32_t>& channel_map, int64_t num_scales) {
  auto scale_of = [&](int64_t j) { return channel_map.empty() ? j : static_cast<int64_t>(channel_map[static_cast<size_t>(j)]); };
  std::vector<float> w_max(static_cast<size_t>(num_scales), 0.f), a_max(static_cast<size_t>(num_scales), 0.f);
  for (int64_t j = 0; j < in; ++j) {
    float& a = a_max[static_cast<size_t>(scale_of(j))];
    a = std::max(a, act_absmax[static_cast<size_t>(j)]);
  }
  for (size_t k = 0; k < weights.size(); ++k) {
    const std::vector<float>& w = *weights[k];
    for (int64_t o = 0; o < out_features[k]; ++o) {
      for (int64_t j = 0; j < in; ++j) {
        float& m = w_max[static_cast<size_t>(scale_of(j))];
        m = std::max(m, std::fabs(w[static_cast<size_t>(o * in + j)]));
      }
    }
  }
  std::vector<float> s(static_cast<size_t>(num_scales));
  for (int64_t j = 0; j < num_scales; ++j) {
    // The reference clamps both maxima at 1e-5 so dead channels give finite scales.
    const double a = std::max(static_cast<double>(a_max[static_cast<size_t>(j)]), 1e-5);
    const double w = std::max(static_cast<double>(w_max[static_cast<size_t>(j)]), 1e-5);
    s[static_cast<size_t>(j)] = static_cast<float>(std::max(std::pow(a, alpha) / std::pow(w, 1.0 - alpha), 1e-5));
  }
  return s;
}

std::vector<float> smoothquant_scales(const std::vector<float>& act_absmax,
                                      const std::vector<const std::vector<float>*>& weights,
                                      const std::vector<int64_t>& out_features, int64_t in, double alpha) {
  return smoothquant_scales_mapped(act_absmax, weights, out_features, in, alpha, {}, in);
}

namespace {

float max_over_median(std::vector<float> v) {
  const float mx = *std::max_element(v.begin(), v.end());
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  const float med = v[v.size() / 2];
  return med > 0.f ? mx / med : 0.f;
}

SmoothSiteReport site_report(const std::vector<float>& amax, const std::vector<float>& s_in) {
  const size_t n = amax.size();
  std::vector<float> after(n);
  for (size_t j = 0; j < n; ++j) after[j] = amax[j] / s_in[j];
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  const size_t top = std::min<size_t>(5, n);
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(top), order.end(),
                    [&](int64_t a, int64_t b) { return amax[static_cast<size_t>(a)] > amax[static_cast<size_t>(b)]; });
  SmoothSiteReport r;
  for (size_t i = 0; i < top; ++i) {
    const auto j = static_cast<size_t>(order[i]);
    r.top.push_back({order[i], amax[j], after[j]});
  }
  r.ratio_before = max_over_median(amax);
  r.ratio_after = max_over_median(after);
  return r;
}

}  // namespace

std::array<SmoothSiteReport, kNumInputSites> smooth_layer(DenseLayer& d, const ModelConfig& c,
                                                          const std::array<const std::vector<float>*, kNumInputSites>& act_absmax,
                                                          const std::array<double, kNumInputSites>& alpha) {
  constexpr auto kQ = static_cast<size_t>(LinearKind::kQ), kK = static_cast<size_t>(LinearKind::kK),
                 kV = static_cast<size_t>(LinearKind::kV), kO = static_cast<size_t>(LinearKind::kO),
                 kGate = static_cast<size_t>(LinearKind::kGate), kUp = static_cast<size_t>(LinearKind::kUp),
                 kDown = static_cast<size_t>(LinearKind::kDown);
  const auto site = [](InputSite s) { return static_cast<size_t>(s); };
  const int64_t dim = c.dim, hd = c.head_dim, q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd, hidden = c.hidden_dim;
  const int64_t group = c.num_heads / c.num_kv_heads;
  const int64_t qo = linear_out_features(c, LinearKind::kQ), kvo = linear_out_features(c, LinearKind::kK);
  std::array<SmoothSiteReport, kNumInputSites> rep;
  // Every scale is computed from the layer as given (before any folding), then all are folded.
  const auto a_in = site(InputSite::kAttnIn), a_out = site(InputSite::kAttnOut), f_in = site(InputSite::kFfnIn),
             f_mid = site(InputSite::kFfnMid);
  const std::vector<float> s_qkv = smoothquant_scales(*act_absmax[a_in], {&d.w[kQ], &d.w[kK], &d.w[kV]}, {qo, kvo, kvo}, dim, alpha[a_in]);
  // o_proj input channel (h, i) reads v channel (h / group, i).
  std::vector<int32_t> o_map(static_cast<size_t>(q_dim));
  for (int64_t h = 0; h < c.num_heads; ++h) {
    for (int64_t i = 0; i < hd; ++i) o_map[static_cast<size_t>(h * hd + i)] = static_cast<int32_t>((h / group) * hd + i);
  }
  const std::vector<float> s_v = smoothquant_scales_mapped(*act_absmax[a_out], {&d.w[kO]}, {dim}, q_dim, alpha[a_out], o_map, kv_dim);
  std::vector<float> s_o(static_cast<size_t>(q_dim));
  for (size_t j = 0; j < o_map.size(); ++j) s_o[j] = s_v[static_cast<size_t>(o_map[j])];
  const std::vector<float> s_ffn = smoothquant_scales(*act_absmax[f_in], {&d.w[kGate], &d.w[kUp]}, {hidden, hidden}, dim, alpha[f_in]);
  const std::vector<float> s_down = smoothquant_scales(*act_absmax[f_mid], {&d.w[kDown]}, {dim}, hidden, alpha[f_mid]);

  divide_output_channels(d.attn_norm, dim, 1, s_qkv);
  for (size_t k : {kQ, kK, kV}) scale_input_channels(d.w[k], linear_out_features(c, static_cast<LinearKind>(k)), dim, s_qkv);
  divide_output_channels(d.w[kV], kv_dim, dim, s_v);
  scale_input_channels(d.w[kO], dim, q_dim, s_o);
  divide_output_channels(d.ffn_norm, dim, 1, s_ffn);
  for (size_t k : {kGate, kUp}) scale_input_channels(d.w[k], hidden, dim, s_ffn);
  divide_output_channels(d.w[kUp], hidden, dim, s_down);
  scale_input_channels(d.w[kDown], dim, hidden, s_down);

  rep[a_in] = site_report(*act_absmax[a_in], s_qkv);
  rep[a_out] = site_report(*act_absmax[a_out], s_o);
  rep[f_in] = site_report(*act_absmax[f_in], s_ffn);
  rep[f_mid] = site_report(*act_absmax[f_mid], s_down);
  return rep;
}

}  // namespace nb::quant
