#include "engine/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>

#include "backend/sampling_exp.h"

namespace nb {
namespace {

std::string fmt(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));
  return buf;
}

// Orders ids by descending logit, ties by ascending id: a strict weak order, so nth_element and
// sort give the same result on every platform.
struct ByLogitDesc {
  const float* logits;
  bool operator()(int32_t a, int32_t b) const {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  }
};

}  // namespace

Status SamplingParams::validate() const {
  // `!(x >= lo)` rather than `x < lo` so that NaN is rejected too.
  if (!(temperature >= 0.0f) || !std::isfinite(temperature))
    return invalid_argument("temperature must be a finite number >= 0 (0 = greedy); got " + fmt(temperature));
  if (top_k < 0) return invalid_argument("top_k must be >= 0 (0 = off); got " + std::to_string(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f))
    return invalid_argument("top_p must be in (0, 1]; got " + fmt(top_p));
  if (!(min_p >= 0.0f && min_p <= 1.0f))
    return invalid_argument("min_p must be in [0, 1]; got " + fmt(min_p));
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
    return invalid_argument("repetition_penalty must be a finite number > 0 (1 = off); got " +
                            fmt(repetition_penalty));
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    return invalid_argument("presence_penalty must be in [-2, 2]; got " + fmt(presence_penalty));
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    return invalid_argument("frequency_penalty must be in [-2, 2]; got " + fmt(frequency_penalty));
  if (penalty_last_n < -1)
    return invalid_argument("penalty_last_n must be >= -1 (-1 = whole history, 0 = off); got " +
                            std::to_string(penalty_last_n));
  if (top_logprobs < 0 || top_logprobs > kMaxTopLogprobs)
    return invalid_argument("top_logprobs must be in [0, " + std::to_string(kMaxTopLogprobs) + "]; got " +
                            std::to_string(top_logprobs));
  return Status::Ok();
}

Result<Sampler> Sampler::create(const SamplingParams& params) {
  NB_RETURN_IF_ERROR(params.validate().with_context("sampling params"));
  return Sampler(params);
}

double Sampler::next_uniform() {
  // The top 53 bits of one mt19937_64 output, scaled: exactly representable, uniform on [0, 1).
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

Status Sampler::apply_penalties(std::span<float> logits, TokenHistory history) {
  const size_t vocab = logits.size();
  for (size_t i = 0; i < history.tokens.size(); ++i) {
    const int32_t t = history.tokens[i];
    if (t < 0 || static_cast<size_t>(t) >= vocab)
      return invalid_argument("history token " + std::to_string(i) + " is id " + std::to_string(t) +
                              ", outside the vocab of " + std::to_string(vocab) +
                              "; pass the tokens of this sequence only");
  }
  if (history.num_prompt > history.tokens.size())
    return invalid_argument("history says " + std::to_string(history.num_prompt) + " prompt tokens but holds only " +
                            std::to_string(history.tokens.size()));

  if (params_.repetition_penalty != 1.0f && params_.penalty_last_n != 0) {
    const size_t n = params_.penalty_last_n < 0
                         ? history.tokens.size()
                         : std::min(history.tokens.size(), static_cast<size_t>(params_.penalty_last_n));
    counts_.assign(history.tokens.end() - static_cast<std::ptrdiff_t>(n), history.tokens.end());
    std::sort(counts_.begin(), counts_.end());
    counts_.erase(std::unique(counts_.begin(), counts_.end()), counts_.end());
    const float rp = params_.repetition_penalty;
    for (int32_t t : counts_) logits[t] = logits[t] > 0.0f ? logits[t] / rp : logits[t] * rp;
  }
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    counts_.assign(history.tokens.begin() + static_cast<std::ptrdiff_t>(history.num_prompt), history.tokens.end());
    std::sort(counts_.begin(), counts_.end());
    for (size_t i = 0; i < counts_.size();) {
      size_t j = i;
      while (j < counts_.size() && counts_[j] == counts_[i]) ++j;
      logits[counts_[i]] -= params_.presence_penalty + params_.frequency_penalty * static_cast<float>(j - i);
      i = j;
    }
  }
  return Status::Ok();
}

namespace {

// exp(x) for x <= 0 (backend/sampling_exp.h, shared with the device sampling op so that both
// weigh tokens alike); exactly 0 below -87 (incl. -inf, masked tokens), so such tokens can never be drawn.
inline float exp_nonpos(float x) { return sampling_exp(x); }

constexpr size_t kLanes = 16;  // independent accumulators, so reductions vectorize without -ffast-math

void scale(float* __restrict x, size_t n, float f) {
  for (size_t i = 0; i < n; ++i) x[i] *= f;
}

// True if any value is NaN or +inf (bit tests: float compares with NaN block vectorization).
bool has_nan_or_pos_inf(const float* __restrict x, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t u = std::bit_cast<uint32_t>(x[i]);
    bad |= static_cast<uint32_t>((u & 0x7fffffffu) > 0x7f800000u) | static_cast<uint32_t>(u == 0x7f800000u);
  }
  return bad != 0;
}

float max_of(const float* __restrict x, size_t n) {  // x holds no NaN
  float acc[kLanes];
  std::fill(acc, acc + kLanes, -std::numeric_limits<float>::infinity());
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (size_t j = 0; j < kLanes; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  float m = -std::numeric_limits<float>::infinity();
  for (float a : acc) m = a > m ? a : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

void exp_shifted(const float* __restrict x, float* __restrict out, size_t n, float shift) {
  for (size_t i = 0; i < n; ++i) out[i] = exp_nonpos(x[i] - shift);
}

// How many of x are >= t, and their sum. Written with GCC/Clang vector extensions: the
// auto-vectorizer turns the lane-array form of this loop into shuffles and scalar adds.
typedef float F32x16 __attribute__((vector_size(64)));
typedef int32_t I32x16 __attribute__((vector_size(64)));
inline bool any_lane(I32x16 k) {
  typedef int32_t I32x8 __attribute__((vector_size(32)));
  typedef int32_t I32x4 __attribute__((vector_size(16)));
  I32x8 lo8, hi8;
  std::memcpy(&lo8, &k, 32);
  std::memcpy(&hi8, reinterpret_cast<const char*>(&k) + 32, 32);
  const I32x8 o8 = lo8 | hi8;
  I32x4 lo4, hi4;
  std::memcpy(&lo4, &o8, 16);
  std::memcpy(&hi4, reinterpret_cast<const char*>(&o8) + 16, 16);
  const I32x4 o4 = lo4 | hi4;
  return (o4[0] | o4[1] | o4[2] | o4[3]) != 0;
}

void count_at_least(const float* __restrict x, size_t n, float t, size_t* count, double* mass) {
  F32x16 m = {};
  I32x16 c = {};
  const F32x16 tv = F32x16{} + t;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    F32x16 v;
    std::memcpy(&v, x + i, sizeof v);
    const I32x16 keep = v >= tv;  // lanes are -1 (true) or 0
    c -= keep;
    m += reinterpret_cast<F32x16>(reinterpret_cast<I32x16>(v) & keep);
  }
  size_t total_count = 0;
  double total_mass = 0.0;
  for (int j = 0; j < 16; ++j) total_count += static_cast<uint32_t>(c[j]), total_mass += m[j];
  for (; i < n; ++i)
    if (x[i] >= t) ++total_count, total_mass += x[i];
  *count = total_count;
  *mass = total_mass;
}

double sum_of(const float* __restrict x, size_t n) {
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (size_t j = 0; j < kLanes; ++j) acc[j] += x[i + j];
  double s = 0.0;
  for (float a : acc) s += a;
  for (; i < n; ++i) s += x[i];
  return s;
}

}  // namespace

double Sampler::exp_pass(float mx) {
  const size_t vocab = work_.size();
  probs_.resize(vocab);
  exp_shifted(work_.data(), probs_.data(), vocab, mx);
  block_sums_.resize((vocab + kBlock - 1) / kBlock);
  double total = 0.0;
  for (size_t b = 0; b < block_sums_.size(); ++b) {
    const size_t lo = b * kBlock;
    block_sums_[b] = sum_of(probs_.data() + lo, std::min(kBlock, vocab - lo));
    total += block_sums_[b];
  }
  return total;
}

void Sampler::mask_below(float t) {
  float* p = probs_.data();
  const size_t vocab = probs_.size();
  for (size_t i = 0; i < vocab; ++i) p[i] = p[i] >= t ? p[i] : 0.0f;
  for (size_t b = 0; b < block_sums_.size(); ++b) {
    const size_t lo = b * kBlock;
    block_sums_[b] = sum_of(p + lo, std::min(kBlock, vocab - lo));
  }
}

void Sampler::collect_at_least(float t) {
  // Chunks of 16 are tested with one vector compare and skipped when none passes (most chunks,
  // for a peaked distribution); passing chunks are written branchlessly.
  const float* p = probs_.data();
  const size_t vocab = probs_.size();
  cand_.resize(vocab);
  int32_t* out = cand_.data();
  const F32x16 tv = F32x16{} + t;
  size_t n = 0, i = 0;
  for (; i + 16 <= vocab; i += 16) {
    F32x16 v;
    std::memcpy(&v, p + i, sizeof v);
    if (!any_lane(v >= tv)) continue;
    for (size_t j = i; j < i + 16; ++j) {
      out[n] = static_cast<int32_t>(j);
      n += p[j] >= t;
    }
  }
  for (; i < vocab; ++i) {
    out[n] = static_cast<int32_t>(i);
    n += p[i] >= t;
  }
  cand_.resize(n);
}

void Sampler::collect_candidates(size_t min_count, double min_mass) {
  // Tokens with weight >= t form a most-likely prefix of the vocab, so if that prefix holds
  // enough tokens (top-k, top logprobs) or enough mass (top-p), the answer lies inside it and
  // the selection runs on a few hundred ids instead of the whole vocab. Thresholds are relative
  // to the top token's weight, which is 1. Counting is a vectorized pass; only the chosen
  // threshold is collected. The mass is a float-lane sum, so it must clear min_mass by a margin
  // to be sure the exact (double) mass does too.
  // For flat distributions even t = 0.1 keeps most of the vocab; then bisect t (over float bit
  // patterns) between the passing and the failing threshold until the set is small.
  size_t count = 0;
  double mass = 0.0;
  auto enough = [&](float t) {
    count_at_least(probs_.data(), probs_.size(), t, &count, &mass);
    return count >= min_count && mass >= min_mass * (1.0 + 1e-4);
  };
  float failed = 1.5f;  // above every weight: keeps nothing
  for (float t : {1e-1f, 1e-2f, 1e-4f, 1e-7f}) {
    if (!enough(t)) {
      failed = t;
      continue;
    }
    uint32_t lo = std::bit_cast<uint32_t>(t), hi = std::bit_cast<uint32_t>(failed);
    size_t lo_count = count;
    while (lo_count > kMaxSelectCandidates && hi - lo > (1u << 12)) {
      const uint32_t mid = lo + (hi - lo) / 2;
      if (enough(std::bit_cast<float>(mid))) {
        lo = mid;
        lo_count = count;
      } else {
        hi = mid;
      }
    }
    return collect_at_least(std::bit_cast<float>(lo));
  }
  collect_at_least(0.0f);  // everything
}

void Sampler::nucleus_by_threshold(double target) {
  // Bisect on the weight itself, over float bit patterns (for non-negative floats their order is
  // the value order), with vectorized passes over the vocab instead of ordering a huge nucleus
  // id by id. Invariant: mass(p >= lo) >= target > mass(p >= hi). Stop once [lo, hi) is a band
  // of < 2^15 ulps (~0.4% relative), then order just the tokens in the band.
  const float* p = probs_.data();
  const size_t vocab = probs_.size();
  uint32_t lo = 0, hi = std::bit_cast<uint32_t>(1.0f) + 1;
  while (hi - lo > (1u << 15)) {
    const uint32_t mid = lo + (hi - lo) / 2;
    size_t count = 0;
    double mass = 0.0;
    count_at_least(p, vocab, std::bit_cast<float>(mid), &count, &mass);
    (mass >= target ? lo : hi) = mid;
  }
  const float band_lo = std::bit_cast<float>(lo), band_hi = std::bit_cast<float>(hi);
  collect_at_least(band_lo);  // the tokens above the band (not enough mass alone) and the band
  ties_.clear();
  double cum = 0.0;
  size_t num_above = 0;
  for (int32_t t : cand_) {
    if (p[t] >= band_hi) {
      cand_[num_above++] = t;
      cum += p[t];
    } else {
      ties_.push_back(t);
    }
  }
  cand_.resize(num_above);
  std::sort(ties_.begin(), ties_.end(), ByLogitDesc{work_.data()});
  for (size_t i = 0; i < ties_.size() && (cand_.empty() || cum < target); ++i) {
    cand_.push_back(ties_[i]);
    cum += p[ties_[i]];
  }
}

double Sampler::truncate() {
  const size_t vocab = work_.size();
  const ByLogitDesc order{work_.data()};
  const bool use_k = params_.top_k > 0 && static_cast<size_t>(params_.top_k) < vocab;
  const bool use_p = params_.top_p < 1.0f;
  const bool use_min_p = params_.min_p > 0.0f;
  cand_.clear();
  bool sorted = false;

  if (use_k || use_p) {
    double all = 0.0;
    for (double b : block_sums_) all += b;
    // With top-k active, top-p works inside the top k, so having the top k is enough.
    collect_candidates(use_k ? static_cast<size_t>(params_.top_k) : 1, use_k ? 0.0 : params_.top_p * all);
  }
  if (use_k) {
    const size_t k = static_cast<size_t>(params_.top_k);
    if (cand_.size() > k) std::nth_element(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(k), cand_.end(), order);
    cand_.resize(k);
    std::sort(cand_.begin(), cand_.end(), order);
    sorted = true;
  }
  if (use_p) {
    // Keep the smallest most-likely prefix whose mass reaches top_p (llama.cpp's rule: the token
    // that crosses the threshold is kept).
    double total = 0.0;
    if (sorted) {
      for (int32_t t : cand_) total += probs_[t];
    } else {
      for (double b : block_sums_) total += b;
    }
    const double target = params_.top_p * total;
    double cum = 0.0;
    if (sorted) {
      size_t keep = 0;
      while (keep < cand_.size() && cum < target) cum += probs_[cand_[keep++]];
      cand_.resize(std::max<size_t>(keep, 1));
    } else if (cand_.size() > kMaxSelectCandidates) {
      nucleus_by_threshold(target);
    } else {
      // Find the nucleus without sorting: bisect with nth_element. Invariant: cand_[0, lo) are the
      // lo most likely tokens with mass `cum` < target, and the hi most likely reach the target.
      // Each round halves [lo, hi), so the search is O(candidates) expected.
      size_t lo = 0, hi = cand_.size();
      while (hi - lo > 1) {
        const size_t mid = lo + (hi - lo) / 2;
        std::nth_element(cand_.begin() + static_cast<std::ptrdiff_t>(lo), cand_.begin() + static_cast<std::ptrdiff_t>(mid),
                         cand_.begin() + static_cast<std::ptrdiff_t>(hi), order);
        double half = 0.0;
        for (size_t i = lo; i < mid; ++i) half += probs_[cand_[i]];
        if (cum + half >= target) {
          hi = mid;
        } else {
          cum += half;
          lo = mid;
        }
      }
      cand_.resize(hi);  // unsorted, but the set is exactly the sorted prefix
    }
  }
  if (use_min_p) {
    // p_i >= min_p * p_max; probs_ holds exp(logit - max), so the top token's weight is exactly 1.
    const float threshold = params_.min_p;
    if (sorted) {
      size_t keep = 1;  // the top token always survives
      while (keep < cand_.size() && probs_[cand_[keep]] >= threshold) ++keep;
      cand_.resize(keep);
    } else if (use_p) {
      std::erase_if(cand_, [&](int32_t t) { return probs_[t] < threshold; });
    } else {
      // min-p alone: zero the dropped weights in place (one vectorized pass) and draw over the
      // vocab with fresh block sums, instead of gathering a possibly vocab-sized id list.
      mask_below(threshold);
      return -1.0;
    }
  }
  if (!use_k && !use_p && !use_min_p) return -1.0;  // no truncation: caller draws over the whole vocab
  double total = 0.0;
  for (int32_t t : cand_) total += probs_[t];
  return total;
}

int32_t Sampler::draw_from_vocab(double total) {
  // Find the block holding the target with the block sums, then walk inside it.
  const double target = next_uniform() * total;
  double cum = 0.0;
  size_t b = 0;
  while (b + 1 < block_sums_.size() && target >= cum + block_sums_[b]) cum += block_sums_[b++];
  const size_t lo = b * kBlock, hi = std::min(probs_.size(), lo + kBlock);
  int32_t last_nonzero = -1;
  for (size_t i = lo; i < hi; ++i) {
    if (probs_[i] == 0.0f) continue;
    cum += probs_[i];
    last_nonzero = static_cast<int32_t>(i);
    if (target < cum) return last_nonzero;
  }
  // Rounding (block sums are added in another order) left the target just past this block's
  // walk: its last drawable token is the right answer up to that rounding.
  if (last_nonzero >= 0) return last_nonzero;
  for (size_t i = probs_.size(); i-- > 0;)
    if (probs_[i] > 0.0f) return static_cast<int32_t>(i);
  return 0;  // unreachable: the top token has weight 1
}

int32_t Sampler::draw_from_candidates(double total) {
  // Walks the candidates in id order, as draw_from_vocab does (the inverse CDF of distribution(),
  // which the device op sample_rows computes too), whatever order truncate() left them in: their
  // weight per kBlock ids finds the block holding the target, and only that block's few
  // candidates are sorted.
  const double target = next_uniform() * total;
  cand_block_sums_.assign(block_sums_.size(), 0.0);
  for (int32_t t : cand_) cand_block_sums_[static_cast<size_t>(t) / kBlock] += probs_[t];
  double cum = 0.0;
  size_t b = 0;
  while (b + 1 < cand_block_sums_.size() && target >= cum + cand_block_sums_[b]) cum += cand_block_sums_[b++];
  ties_.clear();
  for (int32_t t : cand_) {
    if (static_cast<size_t>(t) / kBlock == b) ties_.push_back(t);
  }
  std::sort(ties_.begin(), ties_.end());
  for (int32_t t : ties_) {
    if (probs_[t] == 0.0f) continue;
    cum += probs_[t];
    if (target < cum) return t;
  }
  // Rounding fallback, as in draw_from_vocab: the last drawable candidate of the block, else of all.
  for (size_t i = ties_.size(); i-- > 0;)
    if (probs_[ties_[i]] > 0.0f) return ties_[i];
  int32_t last = -1;
  for (int32_t t : cand_)
    if (probs_[t] > 0.0f && t > last) last = t;
  return last >= 0 ? last : cand_.front();
}

Result<float> Sampler::prepare(std::span<const float> logits, TokenHistory history) {
  const size_t vocab = logits.size();
  if (vocab == 0) return invalid_argument("sampler got empty logits");
  if (vocab > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    return invalid_argument("vocab of " + std::to_string(vocab) + " does not fit int32 token ids");
  work_.assign(logits.begin(), logits.end());
  NB_RETURN_IF_ERROR(apply_penalties(work_, history));

  const bool greedy = params_.temperature == 0.0f;
  if (!greedy && params_.temperature != 1.0f) scale(work_.data(), vocab, 1.0f / params_.temperature);
  if (has_nan_or_pos_inf(work_.data(), vocab)) return invalid_argument("logits contain NaN or +inf; the model forward produced invalid values");
  const float mx = max_of(work_.data(), vocab);
  if (mx == -std::numeric_limits<float>::infinity())
    return invalid_argument("every logit is -inf; nothing can be sampled");
  return mx;
}

Status Sampler::distribution(std::span<const float> logits, TokenHistory history, std::span<float> probs) {
  if (probs.size() != logits.size()) return invalid_argument("distribution: probs and logits differ in size");
  NB_ASSIGN_OR_RETURN(const float mx, prepare(logits, history));
  std::fill(probs.begin(), probs.end(), 0.0f);
  if (params_.temperature == 0.0f) {
    size_t chosen = 0;
    while (work_[chosen] != mx) ++chosen;  // the first maximum, as sample() picks
    probs[chosen] = 1.0f;
    return Status::Ok();
  }
  total_weight_ = exp_pass(mx);
  const double total = truncate();
  if (total < 0.0) {  // the whole vocab (min-p alone has zeroed its dropped weights in probs_)
    double all = 0.0;
    for (double b : block_sums_) all += b;
    for (size_t i = 0; i < probs.size(); ++i) probs[i] = static_cast<float>(probs_[i] / all);
  } else {
    for (int32_t t : cand_) probs[static_cast<size_t>(t)] = static_cast<float>(probs_[static_cast<size_t>(t)] / total);
  }
  return Status::Ok();
}

Status Sampler::logprobs(std::span<const float> logits, TokenHistory history, int32_t token, SampleOutput* out) {
  NB_ASSIGN_OR_RETURN(const float mx, prepare(logits, history));
  if (token < 0 || static_cast<size_t>(token) >= logits.size()) return invalid_argument("logprobs: token outside the vocab");
  fill_logprobs(token, mx, /*have_probs=*/false, out);
  return Status::Ok();
}

Result<int32_t> Sampler::sample(std::span<const float> logits, TokenHistory history, SampleOutput* out) {
  NB_ASSIGN_OR_RETURN(const float mx, prepare(logits, history));
  const bool greedy = params_.temperature == 0.0f;
  int32_t chosen = 0;
  bool have_probs = false;
  if (greedy) {
    while (work_[chosen] != mx) ++chosen;  // the first maximum: ties go to the lowest id
  } else {
    total_weight_ = exp_pass(mx);
    have_probs = true;
    const double total = truncate();
    if (total < 0.0) {
      double all = 0.0;
      for (double b : block_sums_) all += b;
      chosen = draw_from_vocab(all);
    } else {
      chosen = draw_from_candidates(total);
    }
  }
  if (out != nullptr) fill_logprobs(chosen, mx, have_probs, out);
  return chosen;
}

void Sampler::fill_logprobs(int32_t chosen, float mx, bool have_probs, SampleOutput* out) {
  const double total = have_probs ? total_weight_ : exp_pass(mx);
  const double log_z = mx + std::log(total);
  out->logprob = static_cast<float>(work_[chosen] - log_z);
  out->top.clear();
  const size_t n = std::min(work_.size(), static_cast<size_t>(params_.top_logprobs));
  if (n == 0) return;
  collect_candidates(n, 0.0);
  const ByLogitDesc order{work_.data()};
  std::nth_element(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(n - 1), cand_.end(), order);
  std::sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(n), order);
  for (size_t i = 0; i < n; ++i) out->top.push_back({cand_[i], static_cast<float>(work_[cand_[i]] - log_z)});
}

}  // namespace nb
