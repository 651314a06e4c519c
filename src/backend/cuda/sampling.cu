// Sampling-side kernels: row-wise argmax (greedy decoding without copying logits to the host),
// sample_rows (temperature / top-k / top-p / min-p draws by the rule in backend/ops.h) and
// logit_stats (perplexity / KL divergence rows for `nibble eval` without copying logits).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/sampling_exp.h"

namespace nb::cuda {
namespace {

constexpr int kThreads = 256;

// (value, index) with NaN below every number and ties to the lower index.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  if (isnan(v)) return false;
  if (isnan(bv)) return true;
  return v > bv || (v == bv && i < bi);
}

// The block's best (value, index) by better(), in every thread; sv/si: [kThreads / 32] shared.
__device__ __forceinline__ void block_best(float& bv, int& bi, float* sv, int* si) {
  for (int off = 16; off > 0; off /= 2) {
    const float ov = __shfl_down_sync(0xffffffffu, bv, off);
    const int oi = __shfl_down_sync(0xffffffffu, bi, off);
    if (better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  bv = sv[0];
  bi = si[0];
  for (int w = 1; w < kThreads / 32; ++w) {
    if (better(sv[w], si[w], bv, bi)) {
      bv = sv[w];
      bi = si[w];
    }
  }
  __syncthreads();  // sv/si are reused
}

__global__ void argmax_kernel(const float* x, int32_t* out, int64_t cols) {
  const float* row = x + blockIdx.x * cols;
  float bv = NAN;
  int bi = 0x7fffffff;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
    const float v = row[i];
    if (better(v, static_cast<int>(i), bv, bi)) {
      bv = v;
      bi = static_cast<int>(i);
    }
  }
  __shared__ float sv[kThreads / 32];
  __shared__ int si[kThreads / 32];
  block_best(bv, bi, sv, si);
  if (threadIdx.x == 0) out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;  // an all-NaN row gives 0, as the reference
}

// ---- logit_stats --------------------------------------------------------------------------------
// One block of kThreads a row. Pass 1: each row's maximum and argmax (better(): ties to the lower id);
// pass 2, in double: sum exp(x - max x), sum exp(y - max y) and sum exp(y - max y) (y - x), from
// which KL(q || p) = E_q[y - x] - (lse y - lse x) (ops.h's definition, rearranged).
__device__ __forceinline__ double block_sum(double v, double* sd) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) sd[threadIdx.x / 32] = v;
  __syncthreads();
  double t = 0.0;
  for (int w = 0; w < kThreads / 32; ++w) t += sd[w];
  __syncthreads();
  return t;
}

__global__ void logit_stats_kernel(LogitStatsParams p) {
  const int64_t r = blockIdx.x;
  const float* x = p.logits + r * p.vocab;
  const float* y = p.ref_logits != nullptr ? p.ref_logits + r * p.vocab : nullptr;
  __shared__ float sv[kThreads / 32];
  __shared__ int si[kThreads / 32];
  __shared__ double sd[kThreads / 32];
  float bx = NAN, by = NAN;
  int ix = 0x7fffffff, iy = 0x7fffffff;
  for (int64_t i = threadIdx.x; i < p.vocab; i += kThreads) {
    const int id = static_cast<int>(i);
    if (better(x[i], id, bx, ix)) {
      bx = x[i];
      ix = id;
    }
    if (y != nullptr && better(y[i], id, by, iy)) {
      by = y[i];
      iy = id;
    }
  }
  block_best(bx, ix, sv, si);
  if (y != nullptr) block_best(by, iy, sv, si);
  // The maxima as the reference takes them (NaN ignored); a row of NaN only gives NaN sums.
  const double mx = bx, my = by;
  double sx = 0.0, sy = 0.0, a = 0.0;
  for (int64_t i = threadIdx.x; i < p.vocab; i += kThreads) {
    sx += exp(static_cast<double>(x[i]) - mx);
    if (y != nullptr) {
      const double e = exp(static_cast<double>(y[i]) - my);
      sy += e;
      if (e > 0.0) a += e * (static_cast<double>(y[i]) - static_cast<double>(x[i]));
    }
  }
  sx = block_sum(sx, sd);
  if (y != nullptr) {
    sy = block_sum(sy, sd);
    a = block_sum(a, sd);
  }
  if (threadIdx.x != 0) return;
  const int32_t t = p.targets[r];
  const double lse_x = mx + log(sx);
  double* o = p.out + 4 * r;
  o[0] = lse_x - static_cast<double>(x[t]);
  o[1] = 0.0;
  o[2] = 0.0;
  o[3] = 1.0;
  if (y == nullptr) return;
  const double lse_y = my + log(sy);
  o[1] = lse_y - static_cast<double>(y[t]);
  o[2] = a / sy - (lse_y - lse_x);
  o[3] = ix == iy ? 1.0 : 0.0;
}

// ---- sample_rows ------------------------------------------------------------------------------
// One block of kSampleThreads a row. The kept set is a prefix of the order (z descending, ties by
// id) cut by top-k and then top-p, written as (key, id): token i is in it iff key_i > key or
// (key_i == key and i <= id), where key is z mapped to an unsigned int that orders like z. Each
// cut is found by bisection over the 2^32 keys (32 passes over the row counting the tokens, or
// summing the weights, at or above a key); the tokens tied at the cut key are then taken in id
// order by a block scan. Every sum is per-thread sums in a fixed order, then a fixed-order
// reduction: a row's token does not change from run to run.
// Cost: ~34 passes over the row for top-k (counting only), ~35 with an exp each for top-p, 3
// otherwise; the row stays in L2 between passes.

constexpr int kSampleThreads = 1024;
constexpr int kWarps = kSampleThreads / 32;

struct SampleShared {
  double scan[kSampleThreads];  // per-thread values of a scan
  double seg[kWarps + 1];       // per-warp bases, then the total; reductions' per-warp values
  int pick;                     // the id a scan chose
};

// The order key: increasing with z (z == -0 is keyed as +0, which it equals).
__device__ __forceinline__ uint32_t order_key(float z) {
  const uint32_t b = __float_as_uint(z + 0.0f);
  return (b & 0x80000000u) != 0 ? ~b : (b | 0x80000000u);
}

// Every thread gets op over all threads' v, combined in the same order in every run.
template <typename T, typename Op>
__device__ T block_all_reduce(T v, Op op, SampleShared& sh) {
  for (int o = 16; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  T* red = reinterpret_cast<T*>(sh.seg);
  __syncthreads();  // the previous reduction or scan may still be reading sh.seg
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  T acc = red[0];
  for (int w = 1; w < kWarps; ++w) acc = op(acc, red[w]);
  return acc;
}

// Exclusive scan of one double a thread, in thread order; *total gets the sum. For non-negative
// values the starts never decrease, so the ranges [start_t, start_t+1) partition [0, total).
__device__ double block_exclusive_scan(double v, double* total, SampleShared& sh) {
  __syncthreads();
  sh.scan[threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.x < kWarps) {
    double acc = 0.0;
    for (int j = 0; j < 32; ++j) {
      const double x = sh.scan[threadIdx.x * 32 + j];
      sh.scan[threadIdx.x * 32 + j] = acc;
      acc += x;
    }
    sh.seg[threadIdx.x] = acc;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double acc = 0.0;
    for (int w = 0; w < kWarps; ++w) {
      const double x = sh.seg[w];
      sh.seg[w] = acc;
      acc += x;
    }
    sh.seg[kWarps] = acc;
  }
  __syncthreads();
  *total = sh.seg[kWarps];
  return sh.seg[threadIdx.x / 32] + sh.scan[threadIdx.x];
}

struct RowView {
  const float* x;
  int vocab;
  bool scaled;
  float inv_temperature;
  float z_max;
  __device__ float z(int i) const { return scaled ? x[i] * inv_temperature : x[i]; }
  __device__ float w(int i) const { return sampling_exp(z(i) - z_max); }
};

struct Prefix {  // a prefix of the order: key_i > key, or key_i == key and i <= id
  uint32_t key = 0;
  int id = 0x7fffffff;
  __device__ bool has(uint32_t k, int i) const { return k > key || (k == key && i <= id); }
};

// The largest key t with f(t) >= goal, where f(t) = the sum of value(i) over the tokens of p with
// key >= t (non-increasing in t) and f(0) >= goal.
template <typename T, typename F>
__device__ uint32_t bisect_key(const RowView& row, const Prefix& p, T goal, F value, SampleShared& sh) {
  uint64_t lo = 0, hi = uint64_t{1} << 32;
  while (hi - lo > 1) {
    const auto mid = static_cast<uint32_t>(lo + (hi - lo) / 2);
    T acc = 0;
    for (int i = threadIdx.x; i < row.vocab; i += kSampleThreads) {
      const uint32_t k = order_key(row.z(i));
      if (k >= mid && p.has(k, i)) acc += value(i);
    }
    acc = block_all_reduce(acc, [](T a, T b) { return a + b; }, sh);
    if (acc >= goal) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return static_cast<uint32_t>(lo);
}

// The id of the n-th (1-based) token of p with key `key`, in id order (there are at least n).
__device__ int nth_tie(const RowView& row, const Prefix& p, uint32_t key, int n, SampleShared& sh) {
  const int chunk = (row.vocab + kSampleThreads - 1) / kSampleThreads;
  const int lo = min(row.vocab, static_cast<int>(threadIdx.x) * chunk), hi = min(row.vocab, lo + chunk);
  int count = 0;
  for (int i = lo; i < hi; ++i) {
    const uint32_t k = order_key(row.z(i));
    count += (k == key && p.has(k, i)) ? 1 : 0;
  }
  double total = 0.0;
  const auto start = static_cast<int>(block_exclusive_scan(count, &total, sh));  // exact: small integers
  if (start < n && n <= start + count) {
    int seen = start;
    for (int i = lo; i < hi; ++i) {
      const uint32_t k = order_key(row.z(i));
      if (k == key && p.has(k, i) && ++seen == n) sh.pick = i;
    }
  }
  __syncthreads();
  return sh.pick;
}

__global__ void __launch_bounds__(kSampleThreads)
    sample_rows_kernel(const float* x, const SampleRowParams* params, int32_t* out, int vocab) {
  __shared__ SampleShared sh;
  const SampleRowParams s = params[blockIdx.x];
  const float inf = __int_as_float(0x7f800000);
  RowView row{x + static_cast<int64_t>(blockIdx.x) * vocab, vocab, false, 1.0f, 0.0f};
  row.scaled = s.temperature != 0.0f && s.temperature != 1.0f;
  row.inv_temperature = row.scaled ? 1.0f / s.temperature : 1.0f;

  // z's maximum, and the Sampler's error cases (NaN or +inf after scaling; only -inf).
  float mx = -inf;
  int bad = 0;
  for (int i = threadIdx.x; i < vocab; i += kSampleThreads) {
    const float z = row.z(i);
    bad |= (isnan(z) || z == inf) ? 1 : 0;
    mx = fmaxf(mx, z);
  }
  bad = block_all_reduce(bad, [](int a, int b) { return a | b; }, sh);
  mx = block_all_reduce(mx, [](float a, float b) { return fmaxf(a, b); }, sh);
  if (bad != 0 || mx == -inf) {
    if (threadIdx.x == 0) out[blockIdx.x] = -1;
    return;
  }
  if (s.temperature == 0.0f) {  // greedy: the first maximum
    int first = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += kSampleThreads) {
      if (row.x[i] == mx) first = min(first, i);
    }
    first = block_all_reduce(first, [](int a, int b) { return min(a, b); }, sh);
    if (threadIdx.x == 0) out[blockIdx.x] = first;
    return;
  }
  row.z_max = mx;

  Prefix kept;  // the whole vocab
  if (s.top_k > 0 && s.top_k < vocab) {
    kept.key = bisect_key<int>(row, kept, s.top_k, [](int) { return 1; }, sh);
    int above = 0;
    for (int i = threadIdx.x; i < vocab; i += kSampleThreads) above += order_key(row.z(i)) > kept.key ? 1 : 0;
    above = block_all_reduce(above, [](int a, int b) { return a + b; }, sh);
    kept.id = nth_tie(row, kept, kept.key, s.top_k - above, sh);
  }
  if (s.top_p < 1.0f) {
    double total = 0.0;
    for (int i = threadIdx.x; i < vocab; i += kSampleThreads) {
      if (kept.has(order_key(row.z(i)), i)) total += row.w(i);
    }
    total = block_all_reduce(total, [](double a, double b) { return a + b; }, sh);
    const double target = static_cast<double>(s.top_p) * total;
    const uint32_t cut = bisect_key<double>(row, kept, target, [&row](int i) { return static_cast<double>(row.w(i)); }, sh);
    // The tokens above the cut key weigh < target; those tied at it (equal z, so equal weight) are
    // taken in id order until it is reached.
    double above = 0.0;
    int ties = 0;
    float tie_w = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += kSampleThreads) {
      const uint32_t k = order_key(row.z(i));
      if (!kept.has(k, i)) continue;
      if (k > cut) above += row.w(i);
      if (k == cut) {
        ++ties;
        tie_w = row.w(i);
      }
    }
    above = block_all_reduce(above, [](double a, double b) { return a + b; }, sh);
    ties = block_all_reduce(ties, [](int a, int b) { return a + b; }, sh);
    tie_w = block_all_reduce(tie_w, [](float a, float b) { return fmaxf(a, b); }, sh);
    int need = 1;
    if (tie_w > 0.0f) need = static_cast<int>(ceil((target - above) / static_cast<double>(tie_w)));
    need = max(1, min(need, ties));
    kept.id = nth_tie(row, kept, cut, need, sh);
    kept.key = cut;
  }

  // The draw: a contiguous id range a thread, ranges scanned in thread order.
  const int chunk = (vocab + kSampleThreads - 1) / kSampleThreads;
  const int lo = min(vocab, static_cast<int>(threadIdx.x) * chunk), hi = min(vocab, lo + chunk);
  const float min_p = s.min_p;
  auto weight = [&](int i) {  // the token's weight if it can be drawn, else 0
    const float z = row.z(i);
    const float w = sampling_exp(z - row.z_max);
    return kept.has(order_key(z), i) && w >= min_p ? w : 0.0f;
  };
  double mine = 0.0;
  int last = -1;
  for (int i = lo; i < hi; ++i) {
    const float w = weight(i);
    if (w > 0.0f) {
      mine += w;
      last = i;
    }
  }
  double total = 0.0;
  const double start = block_exclusive_scan(mine, &total, sh);
  const int next = static_cast<int>(threadIdx.x) + 1;
  const double end = next < kSampleThreads ? sh.seg[next / 32] + sh.scan[next] : total;
  const double target = s.uniform * total;
  if (threadIdx.x == 0) sh.pick = -1;
  __syncthreads();
  if (start <= target && target < end) {  // one thread at most
    double cum = start;
    int chosen = last;
    for (int i = lo; i < hi; ++i) {
      const float w = weight(i);
      if (w == 0.0f) continue;
      cum += w;
      if (target < cum) {
        chosen = i;
        break;
      }
    }
    sh.pick = chosen;
  }
  __syncthreads();
  const int picked = sh.pick;
  if (picked < 0) {  // the target rounded up to the total: the last drawable token
    const int any_last = block_all_reduce(last, [](int a, int b) { return max(a, b); }, sh);
    if (threadIdx.x == 0) out[blockIdx.x] = any_last;
  } else if (threadIdx.x == 0) {
    out[blockIdx.x] = picked;
  }
}

}  // namespace

Status argmax(const ArgmaxParams& p, Context& ctx) {
  if (p.rows < 0 || p.cols <= 0 || p.cols > 0x7fffffff) return invalid_argument("argmax: need rows >= 0, 0 < cols < 2^31");
  if (p.rows == 0) return Status::Ok();
  if (p.rows > 0x7fffffff) return invalid_argument("argmax: too many rows for one launch");
  argmax_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, detail::as_stream(ctx.stream())>>>(p.x, p.out, p.cols);
  NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status sample_rows(const SampleRowsParams& p, Context& ctx) {
  if (p.num_rows < 0 || p.vocab <= 0 || p.vocab > 0x7fffffff - kSampleThreads) {
    return invalid_argument("sample_rows: need num_rows >= 0 and 0 < vocab < 2^31 - 1024");
  }
  if (p.num_rows == 0) return Status::Ok();
  if (p.num_rows > 0x7fffffff) return invalid_argument("sample_rows: too many rows for one launch");
  sample_rows_kernel<<<static_cast<unsigned>(p.num_rows), kSampleThreads, 0, detail::as_stream(ctx.stream())>>>(
      p.x, p.rows, p.out, static_cast<int>(p.vocab));
  NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status logit_stats(const LogitStatsParams& p, Context& ctx) {
  if (p.rows < 0 || p.vocab <= 0 || p.vocab > 0x7fffffff) return invalid_argument("logit_stats: need rows >= 0, 0 < vocab < 2^31");
  if (p.rows == 0) return Status::Ok();
  if (p.rows > 0x7fffffff) return invalid_argument("logit_stats: too many rows for one launch");
  logit_stats_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, detail::as_stream(ctx.stream())>>>(p);
  NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace nb::cuda
