#include "quant/awq.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/cpu_ops.h"

namespace nb::quant {

namespace {

// sum over rows of d_r . (d_r G) for d [rows, n], G [n, n] symmetric (one threaded f32 matmul).
std::vector<double> row_quadratic_forms(const std::vector<float>& d, int64_t rows, int64_t n, const float* g,
                                        ThreadPool& pool) {
  std::vector<float> dg(static_cast<size_t>(rows * n));
  const Tensor gt = Tensor::view(const_cast<float*>(g), {n, n}, DType::kF32);
  cpu::matmul({gt, d.data(), dg.data(), rows}, pool);
  std::vector<double> out(static_cast<size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += static_cast<double>(d[static_cast<size_t>(r * n + j)]) * dg[static_cast<size_t>(r * n + j)];
    out[static_cast<size_t>(r)] = s;
  }
  return out;
}

}  // namespace

void scale_input_channels(std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& s) {
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t j = 0; j < in; ++j) w[static_cast<size_t>(o * in + j)] *= s[static_cast<size_t>(j)];
  }
}

void divide_output_channels(std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& s) {
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t j = 0; j < in; ++j) w[static_cast<size_t>(o * in + j)] /= s[static_cast<size_t>(o)];
  }
}

void scale_gram(std::vector<float>& gram, int64_t in, const std::vector<float>& s) {
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t j = 0; j < in; ++j) gram[static_cast<size_t>(i * in + j)] /= s[static_cast<size_t>(i)] * s[static_cast<size_t>(j)];
  }
}

std::vector<float> awq_scaled_fake_quant(const std::vector<float>& w, int64_t out, int64_t in,
                                         const std::vector<float>& s_full, const QuantSpec& spec) {
  std::vector<float> wq = w;
  if (!s_full.empty()) scale_input_channels(wq, out, in, s_full);
  fake_quantize_rows(wq.data(), out, in, spec);
  if (s_full.empty()) return wq;
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t j = 0; j < in; ++j) wq[static_cast<size_t>(o * in + j)] /= s_full[static_cast<size_t>(j)];
  }
  return wq;
}

double awq_output_error(const std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& s_full,
                        const std::vector<float>& gram, const QuantSpec& spec, ThreadPool& pool) {
  std::vector<float> d = awq_scaled_fake_quant(w, out, in, s_full, spec);
  for (size_t k = 0; k < d.size(); ++k) d[k] = w[k] - d[k];
  double e = 0.0;
  for (double v : row_quadratic_forms(d, out, in, gram.data(), pool)) e += v;
  return e;
}

namespace {

// AutoAWQ's get_weight_scale over the concatenated rows of every linear: |w| / max|w| of its group,
// averaged over rows; then over the input channels mapped to each scale.
std::vector<float> weight_channel_means(const AwqScaleProblem& p, const QuantSpec& spec, size_t num_scales) {
  const int64_t gs = spec.group_size < 0 ? p.in : spec.group_size;
  std::vector<double> col(static_cast<size_t>(p.in), 0.0);
  int64_t rows = 0;
  for (size_t k = 0; k < p.weights.size(); ++k) {
    const std::vector<float>& w = *p.weights[k];
    for (int64_t o = 0; o < p.out_features[k]; ++o, ++rows) {
      for (int64_t g0 = 0; g0 < p.in; g0 += gs) {
        float amax = 0.f;
        for (int64_t j = g0; j < g0 + gs; ++j) amax = std::max(amax, std::fabs(w[static_cast<size_t>(o * p.in + j)]));
        if (amax <= 0.f) continue;
        for (int64_t j = g0; j < g0 + gs; ++j) col[static_cast<size_t>(j)] += std::fabs(w[static_cast<size_t>(o * p.in + j)]) / amax;
      }
    }
  }
  std::vector<double> sum(num_scales, 0.0), cnt(num_scales, 0.0);
  for (int64_t j = 0; j < p.in; ++j) {
    const size_t c = p.channel_map.empty() ? static_cast<size_t>(j) : static_cast<size_t>(p.channel_map[static_cast<size_t>(j)]);
    sum[c] += col[static_cast<size_t>(j)] / static_cast<double>(std::max<int64_t>(rows, 1));
    cnt[c] += 1.0;
  }
  std::vector<float> m(num_scales);
  for (size_t c = 0; c < num_scales; ++c) m[c] = static_cast<float>(cnt[c] > 0 ? sum[c] / cnt[c] : 0.0);
  return m;
}

}  // namespace

AwqScaleResult awq_search_scales(const AwqScaleProblem& p, const QuantSpec& spec, const AwqOptions& options,
                                 ThreadPool& pool) {
  const auto num_scales = p.x_mean.size();
  AwqScaleResult best;
  best.error = std::numeric_limits<double>::infinity();
  std::vector<float> s(num_scales), s_full(static_cast<size_t>(p.in));
  auto error_of = [&](const std::vector<float>& sf) {
    if (p.block_loss) {
      std::vector<std::vector<float>> candidates;
      for (size_t k = 0; k < p.weights.size(); ++k) candidates.push_back(awq_scaled_fake_quant(*p.weights[k], p.out_features[k], p.in, sf, spec));
      return p.block_loss(candidates);
    }
    double err = 0.0;
    for (size_t k = 0; k < p.weights.size(); ++k) err += awq_output_error(*p.weights[k], p.out_features[k], p.in, sf, *p.gram, spec, pool);
    return err;
  };
  std::vector<float> w_mean;
  if (options.duo_scaling) {
    w_mean = weight_channel_means(p, spec, num_scales);
    // Plain RTN first (a duo candidate at a = 0 is not the identity).
    best.rtn_error = best.error = error_of({});
    best.alpha = -1.0;  // "no scaling" in the report
    best.scales.assign(num_scales, 1.f);
  }
  for (int i = 0; i <= options.num_grid; ++i) {
    const double alpha = static_cast<double>(i) / options.num_grid;
    float lo = std::numeric_limits<float>::infinity(), hi = 0.f;
    for (size_t c = 0; c < num_scales; ++c) {
      double v = std::pow(static_cast<double>(p.x_mean[c]), alpha);
      if (options.duo_scaling) v /= std::pow(static_cast<double>(w_mean[c]), 1.0 - alpha) + 1e-4;
      s[c] = std::max(static_cast<float>(v), 1e-4f);
      lo = std::min(lo, s[c]);
      hi = std::max(hi, s[c]);
    }
    const float norm = std::sqrt(lo * hi);  // AutoAWQ's normalisation: geometric middle at 1
    for (float& v : s) v /= norm;
    for (int64_t j = 0; j < p.in; ++j) {
      s_full[static_cast<size_t>(j)] = s[p.channel_map.empty() ? static_cast<size_t>(j) : static_cast<size_t>(p.channel_map[static_cast<size_t>(j)])];
    }
    const double err = error_of(s_full);
    if (i == 0 && !options.duo_scaling) best.rtn_error = err;
    if (err < best.error) {
      best.error = err;
      best.alpha = alpha;
      best.scales = s;
    }
  }
  return best;
}

double awq_search_clip(std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& gram,
                       const QuantSpec& spec, const AwqOptions& options, ThreadPool& pool) {
  const int64_t gs = spec.group_size < 0 ? in : spec.group_size;
  const int64_t ng = in / gs;
  const int max_code = spec.max_code();
  const int n = static_cast<int>(options.max_shrink * options.clip_grid) + 1;  // ratios per end
  const auto ratio = [&](int r) { return 1.f - static_cast<float>(r) / static_cast<float>(options.clip_grid); };
  // Candidates: the symmetric clamp [-c, c], c = max|w| * ratio (AutoAWQ), then, for an asymmetric
  // grid, every pair of ratios for the two ends of [min(w, 0), max(w, 0)].
  const bool two_sided = options.two_sided_clip && !spec.symmetric;
  const int num_candidates = n + (two_sided ? n * n : 0);
  struct Clip {
    float lo = 0.f, hi = 0.f;
  };
  std::vector<Clip> best_clip(static_cast<size_t>(out * ng));
  std::vector<double> best_err(static_cast<size_t>(out * ng), std::numeric_limits<double>::infinity());
  std::vector<float> d(static_cast<size_t>(out * gs)), g_block(static_cast<size_t>(gs * gs));
  std::vector<Clip> clip(static_cast<size_t>(out)), range(static_cast<size_t>(out));
  for (int64_t g = 0; g < ng; ++g) {
    for (int64_t a = 0; a < gs; ++a) {
      for (int64_t b = 0; b < gs; ++b) {
        g_block[static_cast<size_t>(a * gs + b)] = gram[static_cast<size_t>((g * gs + a) * in + g * gs + b)];
      }
    }
    // Each row's [min(w, 0), max(w, 0)] over the group: a clamp [c.lo, c.hi] (c.lo <= 0 <= c.hi)
    // leaves the range [max(lo, c.lo), min(hi, c.hi)], what group_range of the clamped values gives.
    for (int64_t o = 0; o < out; ++o) {
      const auto [lo, hi] = group_min_max(w.data() + o * in + g * gs, gs, 1);
      range[static_cast<size_t>(o)] = {lo, hi};
    }
    for (int cand = 0; cand < num_candidates; ++cand) {
      pool.parallel_for(out, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
          const float* row = w.data() + o * in + g * gs;
          const Clip r = range[static_cast<size_t>(o)];
          Clip c;
          if (cand < n) {
            c.hi = std::max(r.hi, -r.lo) * ratio(cand);
            c.lo = -c.hi;
          } else {
            c.lo = r.lo * ratio((cand - n) / n);
            c.hi = r.hi * ratio((cand - n) % n);
          }
          clip[static_cast<size_t>(o)] = c;
          const GroupRange q = range_of(std::max(r.lo, c.lo), std::min(r.hi, c.hi), spec);
          for (int64_t j = 0; j < gs; ++j) {
            d[static_cast<size_t>(o * gs + j)] = row[j] - dequantize_code(quantize_code(std::clamp(row[j], c.lo, c.hi), q, max_code), q);
          }
        }
      }, 16);
      const std::vector<double> err = row_quadratic_forms(d, out, gs, g_block.data(), pool);
      for (int64_t o = 0; o < out; ++o) {
        const auto k = static_cast<size_t>(o * ng + g);
        if (err[static_cast<size_t>(o)] < best_err[k]) {
          best_err[k] = err[static_cast<size_t>(o)];
          best_clip[k] = clip[static_cast<size_t>(o)];
        }
      }
    }
  }
  double total = 0.0;
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t g = 0; g < ng; ++g) {
      const Clip c = best_clip[static_cast<size_t>(o * ng + g)];
      float* row = w.data() + o * in + g * gs;
      for (int64_t j = 0; j < gs; ++j) row[j] = std::clamp(row[j], c.lo, c.hi);
      total += best_err[static_cast<size_t>(o * ng + g)];
    }
  }
  return total;
}

}  // namespace nb::quant
