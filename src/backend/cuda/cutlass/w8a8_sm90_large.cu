// The Large tile configuration of the sm_90a W8A8 GEMM (w8a8_sm90_gemm.cuh), f16 and bf16 out.
#include "backend/cuda/cutlass/w8a8_sm90_gemm.cuh"

namespace nb::cuda::w8a8_sm90 {
NIBBLE_W8A8_SM90_DEFINE(run_large, Large)
}  // namespace nb::cuda::w8a8_sm90
