#include "engine/spec/verify.h"

#include <algorithm>
#include <string>

namespace nb::spec {

int32_t draw_from_weights(std::span<const float> w, double u) {
  double total = 0.0;
  for (float x : w) total += x;
  const double target = u * total;
  double cum = 0.0;
  int32_t last = -1;
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] <= 0.0f) continue;
    cum += w[i];
    last = static_cast<int32_t>(i);
    if (target < cum) return last;
  }
  return last < 0 ? 0 : last;  // rounding left the target at the end: the last drawable id
}

Result<Verification> verify_draft(std::span<const int32_t> draft, std::span<const float> q, std::span<const float> p,
                                  int64_t vocab, const std::function<double()>& uniform) {
  const auto k = static_cast<int64_t>(draft.size());
  const auto v = static_cast<size_t>(vocab);
  if (vocab <= 0) return invalid_argument("verify_draft: empty vocabulary");
  if (static_cast<int64_t>(p.size()) != (k + 1) * vocab)
    return invalid_argument("verify_draft: p must hold k + 1 = " + std::to_string(k + 1) + " rows of the vocab");
  if (!q.empty() && static_cast<int64_t>(q.size()) != k * vocab)
    return invalid_argument("verify_draft: q must be empty (deterministic proposal) or hold k rows of the vocab");
  for (int32_t x : draft) {
    if (x < 0 || x >= vocab) return invalid_argument("verify_draft: draft token outside the vocabulary");
  }
  Verification out;
  std::vector<float> residual;
  for (int64_t i = 0; i < k; ++i) {
    const int32_t x = draft[static_cast<size_t>(i)];
    std::span<const float> pi = p.subspan(static_cast<size_t>(i) * v, v);
    const double px = pi[static_cast<size_t>(x)];
    const double qx = q.empty() ? 1.0 : q[static_cast<size_t>(i) * v + static_cast<size_t>(x)];
    // Accept with probability min(1, px / qx): u < px / qx, written without the division.
    // (qx == 0 cannot come from a draw of q; such an x is then accepted iff the target allows it.)
    if (uniform() * qx < px) {
      out.tokens.push_back(x);
      ++out.num_accepted;
      continue;
    }
    residual.assign(pi.begin(), pi.end());
    if (q.empty()) {
      residual[static_cast<size_t>(x)] = 0.0f;
    } else {
      std::span<const float> qi = q.subspan(static_cast<size_t>(i) * v, v);
      for (size_t j = 0; j < v; ++j) residual[j] = std::max(0.0f, residual[j] - qi[j]);
    }
    double mass = 0.0;
    for (float r : residual) mass += r;
    // A rejection has probability 1 - sum(min(p, q)) = sum(max(0, p - q)), so an empty residual
    // is reached only through rounding when p ~= q; p itself is then the right distribution.
    const int32_t y = draw_from_weights(mass > 0.0 ? std::span<const float>(residual) : pi, uniform());
    out.tokens.push_back(y);
    return out;
  }
  out.tokens.push_back(draw_from_weights(p.subspan(static_cast<size_t>(k) * v, v), uniform()));
  return out;
}

}  // namespace nb::spec
