#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace nb::quant {

namespace {

// In place: the lower triangle of a becomes L with a = L L^T. Returns false if a is not positive definite.
bool cholesky_lower(std::vector<double>& a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double* ri = a.data() + i * n;
    for (int64_t j = 0; j <= i; ++j) {
      const double* rj = a.data() + j * n;
      double s = ri[j];
      for (int64_t k = 0; k < j; ++k) s -= ri[k] * rj[k];
      if (i == j) {
        if (!(s > 0.0)) return false;
        ri[i] = std::sqrt(s);
      } else {
        ri[j] = s / rj[j];
      }
    }
    for (int64_t j = i + 1; j < n; ++j) ri[j] = 0.0;
  }
  return true;
}

}  // namespace

Result<std::vector<double>> inverse_upper_cholesky(std::vector<double> h, int64_t n, ThreadPool& pool) {
  const auto un = static_cast<size_t>(n);
  if (!cholesky_lower(h, n)) {
    return failed_precondition("the Hessian is not positive definite; raise the damping or use more calibration data");
  }
  // M = L^-1 (lower), row by row: M_i = (e_i - sum_{k<i} L_ik M_k) / L_ii.
  std::vector<double> m(un * un, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double* mi = m.data() + i * n;
    const double* li = h.data() + i * n;
    mi[i] = 1.0;
    for (int64_t k = 0; k < i; ++k) {
      const double f = li[k];
      const double* mk = m.data() + k * n;
      for (int64_t j = 0; j <= k; ++j) mi[j] -= f * mk[j];
    }
    const double inv = 1.0 / li[i];
    for (int64_t j = 0; j <= i; ++j) mi[j] *= inv;
  }
  // h^-1 = M^T M: (h^-1)_ij = sum_{k >= max(i,j)} M_ki M_kj (M_kj = 0 for j > k); each thread owns
  // whole rows i and only needs k >= i.
  std::vector<double> hinv(un * un, 0.0);
  pool.parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double* out = hinv.data() + i * n;
      for (int64_t k = i; k < n; ++k) {
        const double* mk = m.data() + k * n;
        const double f = mk[i];
        for (int64_t j = 0; j <= k; ++j) out[j] += f * mk[j];
      }
    }
  });
  if (!cholesky_lower(hinv, n)) {
    return failed_precondition("the inverse Hessian is not positive definite (ill-conditioned); raise the damping");
  }
  // U = L^T of h^-1 = L L^T.
  std::vector<double> u(un * un, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j <= i; ++j) u[static_cast<size_t>(j * n + i)] = hinv[static_cast<size_t>(i * n + j)];
  }
  return u;
}

Result<QuantizedLinear> gptq_quantize(const float* w_in, int64_t out, int64_t in, const std::vector<double>& hessian,
                                      const QuantSpec& spec, const GptqOptions& options, ThreadPool& pool,
                                      const std::string& what) {
  NB_RETURN_IF_ERROR(validate_quant_spec(spec, in, what));
  NB_RETURN_IF_ERROR(check_finite(w_in, out * in, what));
  if (static_cast<int64_t>(hessian.size()) != in * in) return internal_error("GPTQ Hessian size mismatch for " + what);
  if (options.block_size < 1) return invalid_argument("GPTQ block size must be positive");
  const auto un = static_cast<size_t>(in);

  // Visiting order: identity, or by decreasing Hessian diagonal (act-order).
  std::vector<int64_t> perm(un);
  std::iota(perm.begin(), perm.end(), 0);
  if (options.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
      return hessian[static_cast<size_t>(a * in + a)] > hessian[static_cast<size_t>(b * in + b)];
    });
  }
  // Permuted Hessian and weights; dead channels get H_jj = 1 and zero weights.
  std::vector<double> h(un * un);
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t j = 0; j < in; ++j) h[static_cast<size_t>(i * in + j)] = hessian[static_cast<size_t>(perm[i] * in + perm[j])];
  }
  std::vector<float> w(static_cast<size_t>(out * in));
  std::vector<bool> dead(un, false);
  for (int64_t i = 0; i < in; ++i) {
    if (h[static_cast<size_t>(i * in + i)] == 0.0) {
      dead[static_cast<size_t>(i)] = true;
      h[static_cast<size_t>(i * in + i)] = 1.0;
    }
  }
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < in; ++i) {
      w[static_cast<size_t>(o * in + i)] = dead[static_cast<size_t>(i)] ? 0.f : w_in[o * in + perm[i]];
    }
  }
  double mean_diag = 0.0;
  for (int64_t i = 0; i < in; ++i) mean_diag += h[static_cast<size_t>(i * in + i)];
  mean_diag /= static_cast<double>(in);
  for (int64_t i = 0; i < in; ++i) h[static_cast<size_t>(i * in + i)] += options.damp_percent * mean_diag;
  auto u_or = inverse_upper_cholesky(std::move(h), in, pool);
  if (!u_or.ok()) return u_or.status().with_context(what);
  std::vector<float> u(un * un);
  for (size_t i = 0; i < un * un; ++i) u[i] = static_cast<float>((*u_or)[i]);

  QuantizedLinear q = allocate_quantized(out, in, spec);
  const int64_t ng = q.num_groups();
  const int64_t gs = spec.group_size < 0 ? in : spec.group_size;
  const int max_code = spec.max_code();
  std::vector<uint8_t> codes(static_cast<size_t>(out * in));  // in visiting order

  // Every output row is quantized independently given U, so rows are split across threads; each
  // row runs the blocked sweep of Algorithm 1.
  // A group's grid is taken from fully updated weights only if the group does not reach past the
  // current block (columns after the block still lack the block's lazy update): blocks are made a
  // multiple of the group size, or a divisor of it. Mathematically the block size changes nothing.
  int64_t bs = options.block_size;
  if (spec.group_size > 0) bs = gs <= bs ? bs / gs * gs : (gs % bs == 0 ? bs : gs);
  pool.parallel_for(out, [&](int64_t rb, int64_t re) {
    std::vector<float> err(static_cast<size_t>(bs));
    for (int64_t o = rb; o < re; ++o) {
      float* row = w.data() + o * in;
      uint8_t* qrow = codes.data() + o * in;
      GroupRange r;
      for (int64_t i1 = 0; i1 < in; i1 += bs) {
        const int64_t i2 = std::min(i1 + bs, in);
        for (int64_t i = i1; i < i2; ++i) {
          if (i % gs == 0) {
            r = options.mse ? group_range_mse(row + i, std::min(gs, in - i), 1, spec)
                            : group_range(row + i, std::min(gs, in - i), 1, spec);
            q.scales[static_cast<size_t>(o * ng + i / gs)] = r.scale;
            if (!spec.symmetric) q.zeros[static_cast<size_t>(o * ng + i / gs)] = r.zero;
          }
          const int code = quantize_code(row[i], r, max_code);
          qrow[i] = static_cast<uint8_t>(code);
          const float* ui = u.data() + i * in;
          const float e = (row[i] - dequantize_code(code, r)) / ui[i];
          err[static_cast<size_t>(i - i1)] = e;
          for (int64_t j = i + 1; j < i2; ++j) row[j] -= e * ui[j];  // within the block, at once
        }
        // Lazy batch update of every column after the block: W[:, i2:] -= Err @ U[i1:i2, i2:].
        for (int64_t k = i1; k < i2; ++k) {
          const float e = err[static_cast<size_t>(k - i1)];
          const float* uk = u.data() + k * in;
          for (int64_t j = i2; j < in; ++j) row[j] -= e * uk[j];
        }
      }
    }
  });

  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < in; ++i) q.q[static_cast<size_t>(o * in + perm[i])] = codes[static_cast<size_t>(o * in + i)];
  }
  // Per-channel (one group a row): every column is in group 0 whatever the order, so no g_idx (the
  // checkpoint is a plain per-channel one; g_idx with group size -1 is rejected by GroupQuant).
  if (options.act_order && spec.group_size >= 0) {
    q.g_idx.resize(un);
    for (int64_t i = 0; i < in; ++i) q.g_idx[static_cast<size_t>(perm[i])] = static_cast<int32_t>(i / gs);
  }
  return q;
}

}  // namespace nb::quant
