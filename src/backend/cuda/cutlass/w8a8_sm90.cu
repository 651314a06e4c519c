// W8A8 GEMM with the per-channel x per-token scales fused into the epilogue, for sm_90a: a CUTLASS 3
// kernel built from its collective builders (see w8a8_sm90.h for the arithmetic). Compiled only for
// sm_90a (its own CMake target), only when the CUTLASS headers are there.
//
// The epilogue is an epilogue visitor tree, innermost first:
//   float(acc) * scale[n]       Sm90RowBroadcast: one value per output column, the same on every row
//   (...) * d[t], rounded to T  Sm90ColBroadcast: one value per output row (token)
// Each step is one IEEE f32 multiply (no add, so nothing can be contracted into an FMA), then one
// round-to-nearest conversion: the bits of w8a8.cu's epilogue kernel.
#include <cuda_runtime.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include "backend/cuda/w8a8_sm90.h"

namespace nb::cuda {
namespace {

using namespace cute;

// Two tile configurations, both with ping-pong consumers (one warp group's epilogue overlaps the
// other's MMAs) and persistent CTAs:
// - Large: 128 x 128 output tiles, 128-deep K steps, clusters of 2 along M (the weight tile is
//   multicast to both CTAs). For many tokens, where the GEMM is compute-bound.
// - Small: 64 x 64 tiles, 256-deep K steps, no cluster. For few tokens (decode batches), where the
//   GEMM streams the weights: 128-row tiles would leave most SMs idle (M 128, N 4096: 32 tiles).
struct LargeTiles {
  using TileShape = Shape<_128, _128, _128>;
  using ClusterShape = Shape<_2, _1, _1>;
};
struct SmallTiles {
  using TileShape = Shape<_64, _64, _256>;
  using ClusterShape = Shape<_1, _1, _1>;
};

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
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
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

int sm_count() {
  static std::once_flag once;
  static int count = 0;
  std::call_once(once, [] {
    int dev = 0;
    if (cudaGetDevice(&dev) == cudaSuccess) count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(dev);
  });
  return count;
}

bool is_sm90() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return false;
  return major == 9 && minor == 0;
}

// The (leading dimension, 1, batch) strides of a packed row-major matrix whose rows are ld apart.
template <class S>
S row_stride(int64_t ld, int64_t batch) {
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

}  // namespace

int64_t w8a8_sm90_small_tile_max_m() {
  static const int64_t v = [] {
    const char* e = std::getenv("NIBBLE_W8A8_SMALL_TILE_MAX_M");  // comparison switch (bench w8a8)
    return e != nullptr ? std::atoll(e) : int64_t{128};
  }();
  return v;
}

bool w8a8_sm90_supported(int64_t m, int64_t n, int64_t k, DType out) {
  if (out != DType::kF16 && out != DType::kBF16) return false;
  if (m <= 0 || n <= 0 || k <= 0 || k % 16 != 0 || n % 8 != 0) return false;
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) return false;
  static const bool sm90 = is_sm90();
  return sm90;
}

Status w8a8_gemm_sm90(const int8_t* xq, const int8_t* wq, const float* scale, const float* d, void* y, DType out,
                      int64_t m, int64_t n, int64_t k, void* stream) {
  if (!w8a8_sm90_supported(m, n, k, out)) {
    return failed_precondition("W8A8 sm90: unsupported here (needs sm_90, f16/bf16 out, k % 16 == 0, n % 8 == 0)");
  }
  const auto s = static_cast<cudaStream_t>(stream);
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  if (m <= w8a8_sm90_small_tile_max_m()) {
    if (out == DType::kF16) return run<cutlass::half_t, SmallTiles>(xq, wq, scale, d, y, mi, ni, ki, s);
    return run<cutlass::bfloat16_t, SmallTiles>(xq, wq, scale, d, y, mi, ni, ki, s);
  }
  if (out == DType::kF16) return run<cutlass::half_t, LargeTiles>(xq, wq, scale, d, y, mi, ni, ki, s);
  return run<cutlass::bfloat16_t, LargeTiles>(xq, wq, scale, d, y, mi, ni, ki, s);
}

}  // namespace nb::cuda
