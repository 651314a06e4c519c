#include "quant/smoothquant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "backend/cpu/cpu_ops.h"
#include "quant/awq.h"
#include "quant/rtn.h"

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

// The o_proj input channel (h, i) reads v channel (h / group, i).
std::vector<int32_t> o_channel_map(const ModelConfig& c) {
  const int64_t hd = c.head_dim, group = c.num_heads / c.num_kv_heads;
  std::vector<int32_t> m(static_cast<size_t>(c.num_heads * hd));
  for (int64_t h = 0; h < c.num_heads; ++h) {
    for (int64_t i = 0; i < hd; ++i) m[static_cast<size_t>(h * hd + i)] = static_cast<int32_t>((h / group) * hd + i);
  }
  return m;
}

// y [m, out] = x [m, in] . w^T in f32.
void dense_product(const std::vector<float>& w, int64_t out, int64_t in, const float* x, int64_t m, float* y, ThreadPool& pool) {
  const Tensor wt = Tensor::view(const_cast<float*>(w.data()), {out, in}, DType::kF32);
  cpu::matmul({wt, x, y, m}, pool);
}

// Per-token INT8 as the W8A8 runtime: scale absmax / 127, round half to even.
void fake_quantize_tokens(float* x, int64_t m, int64_t in) {
  for (int64_t t = 0; t < m; ++t) {
    float* r = x + t * in;
    float amax = 0.f;
    for (int64_t j = 0; j < in; ++j) amax = std::max(amax, std::fabs(r[j]));
    const float sc = amax / 127.f;
    for (int64_t j = 0; j < in; ++j) r[j] = sc > 0.f ? std::nearbyint(r[j] / sc) * sc : 0.f;
  }
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
  const int64_t qo = linear_out_features(c, LinearKind::kQ), kvo = linear_out_features(c, LinearKind::kK);
  std::array<SmoothSiteReport, kNumInputSites> rep;
  // Every scale is computed from the layer as given (before any folding), then all are folded.
  const auto a_in = site(InputSite::kAttnIn), a_out = site(InputSite::kAttnOut), f_in = site(InputSite::kFfnIn),
             f_mid = site(InputSite::kFfnMid);
  const std::vector<float> s_qkv = smoothquant_scales(*act_absmax[a_in], {&d.w[kQ], &d.w[kK], &d.w[kV]}, {qo, kvo, kvo}, dim, alpha[a_in]);
  const std::vector<int32_t> o_map = o_channel_map(c);
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

std::array<double, kNumInputSites> smooth_search_alpha(const DenseLayer& d, const ModelConfig& c,
                                                       const std::array<const std::vector<float>*, kNumInputSites>& act_absmax,
                                                       const SmoothSiteSamples& samples, const std::vector<double>& grid,
                                                       ThreadPool& pool) {
  const QuantSpec w8{8, -1, true};
  const std::vector<int32_t> o_map = o_channel_map(c);
  const int64_t m = samples.tokens, kv_dim = c.num_kv_heads * c.head_dim;
  std::array<double, kNumInputSites> best{};
  for (int site = 0; site < kNumInputSites; ++site) {
    std::vector<LinearKind> kinds;
    for (int k = 0; k < kNumLinearKinds; ++k) {
      if (input_site(static_cast<LinearKind>(k)) == static_cast<InputSite>(site)) kinds.push_back(static_cast<LinearKind>(k));
    }
    const int64_t in = linear_in_features(c, kinds[0]);
    const std::vector<float>& x = samples.x[static_cast<size_t>(site)];
    std::vector<const std::vector<float>*> ws;
    std::vector<int64_t> outs;
    std::vector<std::vector<float>> y_ref;
    for (LinearKind k : kinds) {
      ws.push_back(&d.w[static_cast<size_t>(k)]);
      outs.push_back(linear_out_features(c, k));
      y_ref.emplace_back(static_cast<size_t>(m * outs.back()));
      dense_product(*ws.back(), outs.back(), in, x.data(), m, y_ref.back().data(), pool);
    }
    const bool mapped = static_cast<InputSite>(site) == InputSite::kAttnOut;
    double best_err = std::numeric_limits<double>::infinity();
    for (double alpha : grid) {
      const std::vector<float> s = mapped ? smoothquant_scales_mapped(*act_absmax[static_cast<size_t>(site)], ws, outs, in, alpha, o_map, kv_dim)
                                          : smoothquant_scales(*act_absmax[static_cast<size_t>(site)], ws, outs, in, alpha);
      std::vector<float> s_in(static_cast<size_t>(in));
      for (int64_t j = 0; j < in; ++j) s_in[static_cast<size_t>(j)] = s[mapped ? static_cast<size_t>(o_map[static_cast<size_t>(j)]) : static_cast<size_t>(j)];
      std::vector<float> xq = x;
      for (int64_t t = 0; t < m; ++t) {
        for (int64_t j = 0; j < in; ++j) xq[static_cast<size_t>(t * in + j)] /= s_in[static_cast<size_t>(j)];
      }
      fake_quantize_tokens(xq.data(), m, in);
      double err = 0.0;
      for (size_t k = 0; k < ws.size(); ++k) {
        std::vector<float> wq = *ws[k];
        scale_input_channels(wq, outs[k], in, s_in);
        fake_quantize_rows(wq.data(), outs[k], in, w8);
        std::vector<float> y(static_cast<size_t>(m * outs[k]));
        dense_product(wq, outs[k], in, xq.data(), m, y.data(), pool);
        for (size_t i = 0; i < y.size(); ++i) {
          const double e = static_cast<double>(y[i]) - y_ref[k][i];
          err += e * e;
        }
      }
      if (err < best_err) {
        best_err = err;
        best[static_cast<size_t>(site)] = alpha;
      }
    }
  }
  return best;
}

}  // namespace nb::quant
