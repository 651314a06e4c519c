// Linears for a few activation rows (decode) with f16/bf16 weights: bandwidth-bound, so the kernel
// is built to stream the weights at the memory's rate and to fold the layer's glue into the product
// (FusedLinearParams: RMSNorm of the input, residual add, SwiGLU, the q/k/v split).
//
// Layout of the work: one warp per output row (kSwiglu: the gate row and the up row together), the
// whole K range, 16-byte loads (8 elements) with U loads per lane in flight per row before any is
// used; 4 warps a block, so that a 4096-row matrix spreads over every SM with ~30 warps each and
// small matrices still have ~100 KB in flight per SM. Activation rows (<= 8 KB to 22 KB each) are
// read through L1, where every warp of the SM finds them. f32 accumulation, one warp reduction per
// output. The fused RMSNorm costs nothing extra: each warp reads all of x anyway, so it sums x^2
// alongside the dot product of W with x * norm_weight, and scales the result by rsqrt(mean + eps).
//
// Programmatic dependent launch: the first U weight loads of every warp are issued before
// pdl_wait(), so with Context::pdl() a linear streams weights while the kernel before it finishes.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"

namespace nb::cuda {

using detail::from_f32;
using detail::to_f32;
using detail::pdl_launch_dependents;
using detail::pdl_wait;

namespace {

constexpr int kWarps = 4;  // warps per block
constexpr int kMaxRows = 2;  // activation rows the fused kernel takes (from 3 on it is compute-bound)

struct LinArgs {
  const void* w;
  const void* w2;
  const void* x;
  const float* nw;
  float eps;
  void* y;
  void* y1;
  void* y2;
  int n0, n1;
  int n, k, m;
};

template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float* f) {
  const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = to_f32(h[j]);
}

// Warp sums; with S > 1 the pieces of a row add up in shared memory (fixed order: deterministic);
// then the norm's scale and the epilogue, by lane 0 of the row's first warp.
template <typename T, typename OutT, int MAXM, LinearEpilogue E, bool NORM, int S, int R>
__device__ __forceinline__ void finish(const LinArgs& a, float (&acc)[R][MAXM], float (&ss)[MAXM],
                                       float (*part_s)[R + 1][MAXM], int warp, int lane, int row, int piece,
                                       bool active) {
#pragma unroll
  for (int mm = 0; mm < MAXM; ++mm) {
#pragma unroll
    for (int r = 0; r < R; ++r)
      for (int off = 16; off > 0; off /= 2) acc[r][mm] += __shfl_xor_sync(0xffffffffu, acc[r][mm], off);
    if constexpr (NORM)
      for (int off = 16; off > 0; off /= 2) ss[mm] += __shfl_xor_sync(0xffffffffu, ss[mm], off);
  }
  if constexpr (S > 1) {
    if (lane == 0) {
#pragma unroll
      for (int mm = 0; mm < MAXM; ++mm) {
#pragma unroll
        for (int r = 0; r < R; ++r) part_s[warp][r][mm] = acc[r][mm];
        part_s[warp][R][mm] = ss[mm];
      }
    }
    __syncthreads();
    if (piece != 0) return;
#pragma unroll
    for (int mm = 0; mm < MAXM; ++mm) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float v = 0.f;
#pragma unroll
        for (int p = 0; p < S; ++p) v += part_s[warp + p][r][mm];
        acc[r][mm] = v;
      }
      float v = 0.f;
#pragma unroll
      for (int p = 0; p < S; ++p) v += part_s[warp + p][R][mm];
      ss[mm] = v;
    }
  }
  if (!active || lane != 0) return;
#pragma unroll
  for (int mm = 0; mm < MAXM; ++mm) {
    if (mm >= a.m) break;
    float v[R];
#pragma unroll
    for (int r = 0; r < R; ++r) v[r] = acc[r][mm];
    if constexpr (NORM) {
      const float inv = rsqrtf(ss[mm] / static_cast<float>(a.k) + a.eps);
#pragma unroll
      for (int r = 0; r < R; ++r) v[r] *= inv;
    }
    if constexpr (E == LinearEpilogue::kStore) {
      static_cast<OutT*>(a.y)[static_cast<size_t>(mm) * a.n + row] = from_f32<OutT>(v[0]);
    } else if constexpr (E == LinearEpilogue::kAddInto) {
      T* y = static_cast<T*>(a.y) + static_cast<size_t>(mm) * a.n + row;
      *y = from_f32<T>(to_f32(*y) + v[0]);
    } else if constexpr (E == LinearEpilogue::kSwiglu) {
      const float g = v[0];
      static_cast<T*>(a.y)[static_cast<size_t>(mm) * a.n + row] = from_f32<T>(g / (1.f + expf(-g)) * v[R - 1]);
    } else {  // kSplit
      if (row < a.n0) {
        static_cast<T*>(a.y)[static_cast<size_t>(mm) * a.n0 + row] = from_f32<T>(v[0]);
      } else if (row < a.n0 + a.n1) {
        static_cast<T*>(a.y1)[static_cast<size_t>(mm) * a.n1 + row - a.n0] = from_f32<T>(v[0]);
      } else {
        const int n2 = a.n - a.n0 - a.n1;
        static_cast<T*>(a.y2)[static_cast<size_t>(mm) * n2 + row - a.n0 - a.n1] = from_f32<T>(v[0]);
      }
    }
  }
}

// S warps share a row (each a contiguous 1/S of K; partial sums meet in shared memory), so small
// matrices still put enough warps (and bytes in flight) on every SM. VAR >= 1: the next U loads are
// issued before the current ones are used (double buffering), so a warp always has loads in flight.
template <typename T, typename OutT, int MAXM, LinearEpilogue E, bool NORM, int S, int VAR>
__global__ void __launch_bounds__(kWarps * 32) linear_kernel(const LinArgs a) {
  constexpr int R = E == LinearEpilogue::kSwiglu ? 2 : 1;  // weight rows a warp streams
  constexpr int U = (VAR >= 1 ? 4 : MAXM <= 2 ? 8 : 4) / R;  // 16-byte loads per lane and row per step
  constexpr int RB = kWarps / S;                             // rows per block
  __shared__ float part_s[kWarps][R + 1][MAXM];
  pdl_launch_dependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * RB + warp / S, piece = warp % S;
  const bool active = row < a.n;
  const int k8 = a.k / 8;
  const int per = (k8 + S - 1) / S;
  const int lo = piece * per, hi = min(k8, lo + per);
  const uint4* wr[R];
  wr[0] = static_cast<const uint4*>(a.w) + static_cast<size_t>(active ? row : 0) * k8;
  if constexpr (R == 2) wr[1] = static_cast<const uint4*>(a.w2) + static_cast<size_t>(active ? row : 0) * k8;
  uint4 wv[R][U], nx[R][U];
  auto load = [&](uint4 (&dst)[R][U], int i0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u * 32;
#pragma unroll
      for (int r = 0; r < R; ++r) dst[r][u] = active && i < hi ? __ldcs(wr[r] + i) : make_uint4(0, 0, 0, 0);
    }
  };
  load(wv, lo + lane);  // weights are constant: start streaming before the previous kernel is done
  pdl_wait();
  float acc[R][MAXM];
  float ss[MAXM];
#pragma unroll
  for (int mm = 0; mm < MAXM; ++mm) {
    ss[mm] = 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r][mm] = 0.f;
  }
  const uint4* x4 = static_cast<const uint4*>(a.x);
  for (int b0 = lo; b0 < hi; b0 += 32 * U) {
    const int i0 = b0 + lane;
    if constexpr (VAR >= 1) {
      if (b0 + 32 * U < hi) load(nx, i0 + 32 * U);
    } else {
      if (b0 != lo) load(wv, i0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u * 32;
      if (i >= hi) break;
      float nw[8];
      if constexpr (NORM) {
        const float4 n0 = __ldg(reinterpret_cast<const float4*>(a.nw) + 2 * i);
        const float4 n1 = __ldg(reinterpret_cast<const float4*>(a.nw) + 2 * i + 1);
        nw[0] = n0.x, nw[1] = n0.y, nw[2] = n0.z, nw[3] = n0.w, nw[4] = n1.x, nw[5] = n1.y, nw[6] = n1.z, nw[7] = n1.w;
      }
      float wf[R][8];
#pragma unroll
      for (int r = 0; r < R; ++r) unpack8<T>(wv[r][u], wf[r]);
#pragma unroll
      for (int mm = 0; mm < MAXM; ++mm) {
        if (mm < a.m) {
          float xf[8];
          unpack8<T>(__ldg(x4 + static_cast<size_t>(mm) * k8 + i), xf);
          if constexpr (NORM) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
              ss[mm] = fmaf(xf[j], xf[j], ss[mm]);
              xf[j] *= nw[j];
            }
          }
#pragma unroll
          for (int r = 0; r < R; ++r)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[r][mm] = fmaf(wf[r][j], xf[j], acc[r][mm]);
        }
      }
    }
    if constexpr (VAR >= 1) {
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int r = 0; r < R; ++r) wv[r][u] = nx[r][u];
    }
  }
  finish<T, OutT, MAXM, E, NORM, S, R>(a, acc, ss, part_s, warp, lane, row, piece, active);
}

// Kernel variant (NIBBLE_GEMV, for measurement): 0 = single-buffered, one warp a row (the first
// version); 2 (default) = double-buffered, rows split over S warps on small matrices. Measured on
// H200 (7B decode, bench gpu): 0 5.16 ms/token, 2 4.93; also tried and dropped: double buffering
// without the split (4.88-4.95, no better), no-L1-allocate + L2::256B loads (5.05), weights staged
// through shared memory by cp.async, 4 stages (5.73).
int gemv_variant() {
  static const int v = [] {
    const char* e = std::getenv("NIBBLE_GEMV");
    return e != nullptr && std::atoi(e) == 0 ? 0 : 2;
  }();
  return v;
}

template <typename T, typename OutT, int MAXM, LinearEpilogue E, bool NORM, int VAR>
Status launch_s(const LinArgs& a, Context& ctx) {
  // Warps per row: enough warps for ~48 a SM on matrices with few rows.
  const int64_t want = int64_t{ctx.info().num_sms} * 48;
  const int s = VAR == 0 || a.n >= want ? 1 : 2 * int64_t{a.n} >= want ? 2 : 4;
  const int rb = kWarps / s;
  const dim3 grid(static_cast<unsigned>((a.n + rb - 1) / rb)), block(kWarps * 32);
  cudaStream_t st = detail::as_stream(ctx.stream());
  cudaError_t e;
  if (s == 1) e = detail::launch_pdl(linear_kernel<T, OutT, MAXM, E, NORM, 1, VAR>, grid, block, st, ctx.pdl(), a);
  else if (s == 2) e = detail::launch_pdl(linear_kernel<T, OutT, MAXM, E, NORM, 2, VAR>, grid, block, st, ctx.pdl(), a);
  else e = detail::launch_pdl(linear_kernel<T, OutT, MAXM, E, NORM, 4, VAR>, grid, block, st, ctx.pdl(), a);
  NB_CUDA_RETURN_IF_ERROR(e);
  return Status::Ok();
}

template <typename T, typename OutT, int MAXM, LinearEpilogue E, bool NORM>
Status launch_v(const LinArgs& a, Context& ctx) {
  if (gemv_variant() == 0) return launch_s<T, OutT, MAXM, E, NORM, 0>(a, ctx);
  return launch_s<T, OutT, MAXM, E, NORM, 2>(a, ctx);
}

template <typename T, typename OutT, LinearEpilogue E, bool NORM>
Status launch_m(const LinArgs& a, Context& ctx) {
  if (a.m == 1) return launch_v<T, OutT, 1, E, NORM>(a, ctx);
  return launch_v<T, OutT, 2, E, NORM>(a, ctx);
}

template <typename T, typename OutT, LinearEpilogue E>
Status launch_norm(const LinArgs& a, Context& ctx) {
  return a.nw != nullptr ? launch_m<T, OutT, E, true>(a, ctx) : launch_m<T, OutT, E, false>(a, ctx);
}

template <typename T>
Status launch_epilogue(const LinArgs& a, LinearEpilogue e, Context& ctx) {
  switch (e) {
    case LinearEpilogue::kStore: return launch_norm<T, T, LinearEpilogue::kStore>(a, ctx);
    case LinearEpilogue::kAddInto: return launch_norm<T, T, LinearEpilogue::kAddInto>(a, ctx);
    case LinearEpilogue::kSwiglu: return launch_norm<T, T, LinearEpilogue::kSwiglu>(a, ctx);
    case LinearEpilogue::kSplit: return launch_norm<T, T, LinearEpilogue::kSplit>(a, ctx);
  }
  return invalid_argument("fused_linear: unknown epilogue");
}

using detail::aligned16;

bool weight_ok(const Tensor& w, DType act) {
  return w.ndim() == 2 && w.device() == Device::kCUDA && (w.dtype() == DType::kF16 || w.dtype() == DType::kBF16) &&
         w.dtype() == act && w.dim(1) % 8 == 0 && w.dim(0) < (int64_t{1} << 30) && w.dim(1) < (int64_t{1} << 30) &&
         aligned16(w.data());
}

LinArgs args_of(const FusedLinearParams& p) {
  LinArgs a{};
  a.w = p.weight.data();
  a.w2 = p.weight2.data();
  a.x = p.x;
  a.nw = p.norm_weight;
  a.eps = p.norm_eps;
  a.y = p.y;
  a.y1 = p.y1;
  a.y2 = p.y2;
  a.n0 = static_cast<int>(p.n0);
  a.n1 = static_cast<int>(p.n1);
  a.n = static_cast<int>(p.weight.dim(0));
  a.k = static_cast<int>(p.weight.dim(1));
  a.m = static_cast<int>(p.m);
  return a;
}

}  // namespace

bool fused_linear_applies(const FusedLinearParams& p) {
  if (p.m < 1 || p.m > kMaxRows || !weight_ok(p.weight, p.act_dtype) || !aligned16(p.x)) return false;
  if (p.norm_weight != nullptr && !aligned16(p.norm_weight)) return false;
  if (p.epilogue == LinearEpilogue::kSwiglu &&
      (!weight_ok(p.weight2, p.act_dtype) || p.weight2.dim(0) != p.weight.dim(0) || p.weight2.dim(1) != p.weight.dim(1))) {
    return false;
  }
  if (p.epilogue == LinearEpilogue::kSplit && (p.n0 < 0 || p.n1 < 0 || p.n0 + p.n1 > p.weight.dim(0))) return false;
  return true;
}

Status fused_linear(const FusedLinearParams& p, Context& ctx) {
  if (!fused_linear_applies(p)) {
    return invalid_argument("fused_linear: needs 1.." + std::to_string(kMaxRows) +
                            " rows, f16/bf16 device weights of the activation dtype with K % 8 == 0, 16-byte "
                            "aligned pointers and a consistent epilogue; use matmul and the separate ops otherwise");
  }
  const LinArgs a = args_of(p);
  if (p.act_dtype == DType::kF16) return launch_epilogue<__half>(a, p.epilogue, ctx);
  return launch_epilogue<__nv_bfloat16>(a, p.epilogue, ctx);
}

// Plain matmul for 1-2 rows (cuBLAS is as fast from 3-4 rows on; measured on H200).
bool gemv_applies(const MatmulParams& p) {
  return p.m >= 1 && p.m <= 2 && weight_ok(p.weight, p.act_dtype) && aligned16(p.x);
}

Status gemv(const MatmulParams& p, Context& ctx, bool f32_out) {
  FusedLinearParams f{};
  f.weight = p.weight;
  f.x = p.x;
  f.y = p.y;
  f.m = p.m;
  f.act_dtype = p.act_dtype;
  const LinArgs a = args_of(f);
  if (p.act_dtype == DType::kF16) {
    return f32_out ? launch_m<__half, float, LinearEpilogue::kStore, false>(a, ctx)
                   : launch_m<__half, __half, LinearEpilogue::kStore, false>(a, ctx);
  }
  return f32_out ? launch_m<__nv_bfloat16, float, LinearEpilogue::kStore, false>(a, ctx)
                 : launch_m<__nv_bfloat16, __nv_bfloat16, LinearEpilogue::kStore, false>(a, ctx);
}

}  // namespace nb::cuda
