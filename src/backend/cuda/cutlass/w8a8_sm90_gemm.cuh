// Internal to backend/cuda/cutlass: the W8A8 GEMM kernel of w8a8_sm90.cu as a template over the
// output type and a tile configuration (TileShape, ClusterShape, KernelSchedule), and the launch of
// one. Each configuration is instantiated in its own .cu (w8a8_sm90_<config>.cu, about a minute of
// compile time each, so they build in parallel); w8a8_sm90.cu picks one by the number of rows.
//
// The epilogue is an epilogue visitor tree, innermost first:
//   float(acc) * scale[n]       Sm90RowBroadcast: one value per output column, the same on every row
//   (...) * d[t], rounded to T  Sm90ColBroadcast: one value per output row (token)
// Each step is one IEEE f32 multiply (no add, so nothing can be contracted into an FMA), then one
// round-to-nearest conversion: the bits of w8a8.cu's epilogue kernel.
#pragma once
#include <cuda_runtime.h>

#include <mutex>
#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include "core/status.h"

namespace nb::cuda::w8a8_sm90 {

using namespace cute;

// The tile configurations, by the rows (tokens, M) they serve; measured on an H200 with the
// Llama-2-7B linears (bench/results/gpu-h200-w8a8-2026-11-28b.md):
// - Tiny (M <= 32): 64 x 64 tiles, 256-deep K steps, one consumer warp group, clusters of 8 along N
//   (the activation tile is multicast to the 8 CTAs that share it). 1.7x f16 at M 16-32, where the
//   unclustered ping-pong kernel gave 1.25-1.4x.
// - Small (M <= 128): 64 x 64 x 256, ping-pong consumers, no cluster: the decode batches, where the
//   GEMM streams the weights and 128-row tiles would leave most SMs idle (M 128, N 4096: 32 tiles).
// - Medium (192 < M <= 384): 128 x 64 x 128, ping-pong: twice the CTAs of Large on the 4096-wide
//   linears (M 256: 1.64x f16 against 1.44x).
// - Large (otherwise): 128 x 128 x 128, ping-pong, clusters of 2 along M (the weight tile multicast
//   to both CTAs). Compute-bound prefill.
// Ping-pong: one warp group's epilogue overlaps the other's MMAs. All persistent.
struct Tiny {
  using TileShape = Shape<_64, _64, _256>;
  using ClusterShape = Shape<_1, _8, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecialized;
};
struct Small {
  using TileShape = Shape<_64, _64, _256>;
  using ClusterShape = Shape<_1, _1, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
};
struct Medium {
  using TileShape = Shape<_128, _64, _128>;
  using ClusterShape = Shape<_1, _1, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
};
struct Large {
  using TileShape = Shape<_128, _128, _128>;
  using ClusterShape = Shape<_2, _1, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
};

// One launch of a configuration, f16 (half_out) or bf16 out; each defined in w8a8_sm90_<config>.cu.
#define NIBBLE_W8A8_SM90_DECLARE(fn)                                                                  \
  Status fn(bool half_out, const int8_t* xq, const int8_t* wq, const float* scale, const float* d, void* y, \
            int m, int n, int k, cudaStream_t stream)
NIBBLE_W8A8_SM90_DECLARE(run_tiny);
NIBBLE_W8A8_SM90_DECLARE(run_small);
NIBBLE_W8A8_SM90_DECLARE(run_medium);
NIBBLE_W8A8_SM90_DECLARE(run_large);

template <typename ElementD, typename Config>
struct W8A8Gemm {
  using ElementA = int8_t;  // activations [M, K], K contiguous
  using LayoutA = cutlass::layout::RowMajor;
  using ElementB = int8_t;  // weights [N, K], K contiguous: a column-major K x N operand
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cutlass::layout::RowMajor;
  using Acc = int32_t;
  using TileShape = typename Config::TileShape;
  using ClusterShape = typename Config::ClusterShape;
  using KernelSchedule = typename Config::KernelSchedule;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  using AccFetch = cutlass::epilogue::fusion::Sm90AccFetch;
  using ScaleN = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, _0>>;
  using ScaleM = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, _0>, 1>;
  using MulF32 = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>;
  using MulOut = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, ElementD, float, kRound>;
  using Evt0 = cutlass::epilogue::fusion::Sm90EVT<MulF32, AccFetch, ScaleN>;  // float(acc) * scale[n]
  using Evt1 = cutlass::epilogue::fusion::Sm90EVT<MulOut, Evt0, ScaleM>;      // (...) * d[t] -> ElementD

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, Acc, float, void, LayoutD, 16 / sizeof(ElementD), ElementD,
      LayoutD, 16 / sizeof(ElementD), EpilogueSchedule, Evt1>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, 16, ElementB, LayoutB, 16, Acc,
      TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      cutlass::gemm::PersistentScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

inline int sm_count() {
  static std::once_flag once;
  static int count = 0;
  std::call_once(once, [] {
    int dev = 0;
    if (cudaGetDevice(&dev) == cudaSuccess) count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(dev);
  });
  return count;
}

// The (leading dimension, 1, batch) strides of a packed row-major matrix whose rows are ld apart.
template <class S>
inline S row_stride(int64_t ld, int64_t batch) {
  S s{};
  get<0>(s) = ld;
  get<2>(s) = batch;
  return s;
}

template <typename ElementD, typename Config>
Status run(const int8_t* xq, const int8_t* wq, const float* scale, const float* d, void* y, int m, int n, int k,
           cudaStream_t stream) {
  using G = W8A8Gemm<ElementD, Config>;
  using Gemm = typename G::Gemm;
  using StrideA = typename Gemm::GemmKernel::StrideA;
  using StrideB = typename Gemm::GemmKernel::StrideB;
  using StrideD = typename Gemm::GemmKernel::StrideD;
  const auto sa = row_stride<StrideA>(k, int64_t{m} * k);  // x: [m, k]
  const auto sb = row_stride<StrideB>(k, int64_t{n} * k);  // w: [n, k]
  const auto sd = row_stride<StrideD>(n, int64_t{m} * n);  // y: [m, n]
  typename G::Evt0::Arguments evt0{{}, {scale, 0.f, {}}, {}};
  typename G::Evt1::Arguments evt1{evt0, {d, 0.f, {}}, {}};
  typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                {m, n, k, 1},
                                {xq, sa, wq, sb},
                                {evt1, nullptr, sd, static_cast<ElementD*>(y), sd}};
  args.hw_info.sm_count = sm_count();
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) {
    return unimplemented("W8A8 sm90: CUTLASS cannot run m " + std::to_string(m) + ", n " + std::to_string(n) + ", k " +
                         std::to_string(k) + " (alignment)");
  }
  if (Gemm::get_workspace_size(args) != 0) return internal_error("W8A8 sm90: the kernel asks for a workspace");
  if (gemm.initialize(args, nullptr, stream) != cutlass::Status::kSuccess) {
    return internal_error("W8A8 sm90: CUTLASS initialize failed");
  }
  if (gemm.run(stream) != cutlass::Status::kSuccess) return internal_error("W8A8 sm90: CUTLASS launch failed");
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
    return internal_error(std::string("W8A8 sm90: ") + cudaGetErrorString(e));
  }
  return Status::Ok();
}

}  // namespace nb::cuda::w8a8_sm90

// The body of w8a8_sm90_<config>.cu: fn runs Config, for both output types.
#define NIBBLE_W8A8_SM90_DEFINE(fn, Config)                                                    \
  NIBBLE_W8A8_SM90_DECLARE(fn) {                                                               \
    if (half_out) return run<cutlass::half_t, Config>(xq, wq, scale, d, y, m, n, k, stream); \
    return run<cutlass::bfloat16_t, Config>(xq, wq, scale, d, y, m, n, k, stream);           \
  }
