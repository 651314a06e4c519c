// W8A8 linears (see w8a8.h): per-token int8 quantization kernel, cuBLASLt int8 GEMM with int32
// results, and the scale epilogue. Every step reproduces backend/cpu/matmul_group.cpp's arithmetic:
// the absmax is exact in any reduction order; d = amax / 127, 1 / d, x * (1 / d) and rintf are IEEE
// single operations as on the CPU (no contraction is possible: no multiply feeds an add); the int32
// dot is exact; the epilogue rounds float(iv) * scale and then * d, as the CPU does.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "backend/cuda/act_int8.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/w8a8.h"
#include "backend/cuda/w8a8_sm90.h"
#include "core/group_quant.h"

namespace nb::cuda {

using detail::ceil_div;
using detail::from_f32;
using detail::to_f32;

namespace {

constexpr int kQuantThreads = 256;
constexpr size_t kLtWorkspace = size_t{8} << 20;  // cuBLASLt's scratch, carved from ctx.workspace()
constexpr size_t kAlign = 256;

size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// One block per token row: the absmax (block reduction), then the codes.
template <typename T>
__global__ void __launch_bounds__(kQuantThreads)
    quantize_act_int8_kernel(const T* __restrict__ x, int64_t k, int8_t* __restrict__ xq, float* __restrict__ d) {
  __shared__ float warp_max[kQuantThreads / 32];
  const int64_t t = blockIdx.x;
  const T* row = x + t * k;
  float amax = 0.f;
  for (int64_t j = threadIdx.x; j < k; j += kQuantThreads) amax = fmaxf(amax, fabsf(to_f32(row[j])));
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = warp_max[0];
  for (int w = 1; w < kQuantThreads / 32; ++w) amax = fmaxf(amax, warp_max[w]);
  detail::act_int8_codes(row, k, amax, xq + t * k, d + t, kQuantThreads);
}

// y[t, n] = (float(iv[t, n]) * scale[n]) * d[t], four columns a thread (N % 4 == 0).
template <typename T>
__global__ void w8a8_epilogue_kernel(const int32_t* __restrict__ iv, const float* __restrict__ scale,
                                     const float* __restrict__ d, T* __restrict__ y, int64_t m, int64_t n) {
  const int64_t quads = m * n / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < quads; i += stride) {
    const int4 v = reinterpret_cast<const int4*>(iv)[i];
    const int64_t e = 4 * i, t = e / n, c = e % n;
    const float dt = d[t];
    const int vals[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      y[e + j] = from_f32<T>(__fmul_rn(__fmul_rn(static_cast<float>(vals[j]), scale[c + j]), dt));
    }
  }
}

// One cuBLASLt handle for the process and one plan (descriptors + the heuristic's algorithm) per
// GEMM shape, made on first use: the per-call cost is then the cublasLtMatmul launch only. (The
// Context would be the natural owner of the handle; it lives here until Context grows a slot.)
struct LtPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};
struct LtState {
  std::mutex mu;
  cublasLtHandle_t handle = nullptr;
  std::map<std::tuple<int, int64_t, int64_t, int64_t>, LtPlan> plans;  // (device, m, n, k)
};
LtState& lt_state() {
  static LtState s;
  return s;
}

// D[m, n] (int32, row-major) = Xq[m, k] . Wq[n, k]^T. In cuBLAS's column-major terms: D^T (n x m,
// ld n) = op(A) . B with A = Wq as a k x n matrix (ld k) transposed, B = Xq^T as k x m (ld k): the
// "TN" int8 layout the IMMA kernels take.
Result<LtPlan> lt_plan(int device, int64_t m, int64_t n, int64_t k) {
  LtState& s = lt_state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.handle == nullptr) NB_CUDA_RETURN_IF_ERROR(cublasLtCreate(&s.handle));
  const auto key = std::make_tuple(device, m, n, k);
  if (auto it = s.plans.find(key); it != s.plans.end()) return it->second;
  LtPlan p;
  NB_CUDA_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32I, CUDA_R_32I));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  NB_CUDA_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  NB_CUDA_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  NB_CUDA_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8I, static_cast<uint64_t>(k), static_cast<uint64_t>(n), k));
  NB_CUDA_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8I, static_cast<uint64_t>(k), static_cast<uint64_t>(m), k));
  NB_CUDA_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32I, static_cast<uint64_t>(n), static_cast<uint64_t>(m), n));
  cublasLtMatmulPreference_t pref = nullptr;
  NB_CUDA_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = kLtWorkspace;
  NB_CUDA_RETURN_IF_ERROR(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(s.handle, p.op, p.a, p.b, p.d, p.d, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    return unimplemented("W8A8: cuBLASLt has no int8 GEMM for m " + std::to_string(m) + ", n " + std::to_string(n) +
                         ", k " + std::to_string(k) + " on this device");
  }
  p.algo = result.algo;
  s.plans.emplace(key, p);
  return p;
}

template <typename F>
Status dispatch(DType t, F&& f) {
  return detail::dispatch_act(t, "matmul_w8a8", std::forward<F>(f));
}

}  // namespace

size_t w8a8_scales_offset(int64_t n, int64_t k) { return align_up(static_cast<size_t>(n * k)); }
size_t w8a8_device_bytes(int64_t n, int64_t k) { return w8a8_scales_offset(n, k) + static_cast<size_t>(n) * 4; }

Status w8a8_check(const Tensor& w) {
  const GroupQuant* q = w.group_quant();
  if (w.dtype() != DType::kQGroup || q == nullptr || !q->act_int8) {
    return invalid_argument("W8A8: the weight is not a kQGroup tensor with int8 activations; got " + w.describe());
  }
  if (q->bits != 8 || !q->symmetric || q->num_groups != 1 || !q->g_idx.empty()) {
    return unimplemented("W8A8 on CUDA: only 8-bit symmetric per-channel weights (nibble quantize --act-int8); got " +
                         std::to_string(q->bits) + " bits, " + (q->symmetric ? "symmetric" : "asymmetric") + ", " +
                         std::to_string(q->num_groups) + " groups a row");
  }
  if (w.ndim() != 2 || w.dim(0) % 4 != 0 || w.dim(1) % 4 != 0) {
    return unimplemented("W8A8 on CUDA: out and in features must be multiples of 4 (cuBLASLt int8); got " + w.describe());
  }
  return Status::Ok();
}

Result<std::vector<uint8_t>> w8a8_repack(const Tensor& w) {
  NB_RETURN_IF_ERROR(w8a8_check(w));
  if (w.device() != Device::kCPU) return invalid_argument("w8a8_repack: the weight must be in host memory");
  const int64_t n = w.dim(0), k = w.dim(1);
  const GroupQuant& q = *w.group_quant();
  std::vector<uint8_t> out(w8a8_device_bytes(n, k), 0);
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* src = w.row<const uint8_t>(r);
    uint8_t* dst = out.data() + r * k;
    for (int64_t j = 0; j < k; ++j) dst[j] = static_cast<uint8_t>(static_cast<int8_t>(static_cast<int>(src[j]) - 128));
  }
  for (int64_t r = 0; r < n; ++r) {
    const float s = q.scale(r, 0);
    std::memcpy(out.data() + w8a8_scales_offset(n, k) + r * 4, &s, 4);
  }
  return out;
}

Status quantize_act_int8(const float* x, int64_t m, int64_t k, DType act_dtype, int8_t* xq, float* d, Context& ctx) {
  if (m <= 0) return Status::Ok();
  if (m > INT32_MAX) return invalid_argument("quantize_act_int8: too many rows for one launch");
  cudaStream_t stream = detail::as_stream(ctx.stream());
  return dispatch(act_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    quantize_act_int8_kernel<T><<<static_cast<unsigned>(m), kQuantThreads, 0, stream>>>(reinterpret_cast<const T*>(x), k,
                                                                                        xq, d);
    NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::Ok();
  });
}

Status matmul_w8a8(const MatmulParams& p, Context& ctx) { return matmul_w8a8_path(p, ctx, W8A8Path::kAuto); }

bool w8a8_fused_available(int64_t m, int64_t n, int64_t k, DType act_dtype) {
#ifdef NIBBLE_HAVE_CUTLASS
  return w8a8_sm90_supported(m, n, k, act_dtype);
#else
  (void)m, (void)n, (void)k, (void)act_dtype;
  return false;
#endif
}

namespace {

// The GEMM step on codes already made: y[rows] from xq/d, by the fused kernel or by cuBLASLt into
// the int32 scratch `iv` (iv_rows rows at a time) and the epilogue kernel.
struct W8A8Weight {
  const int8_t* wq;
  const float* scales;
  int64_t n, k;
};
Status w8a8_gemm(const W8A8Weight& w, const int8_t* xq, const float* d, void* y, int64_t rows, DType act, bool fused,
                 void* lt_ws, int32_t* iv, int64_t iv_rows, Context& ctx) {
  cudaStream_t stream = detail::as_stream(ctx.stream());
  if (fused) {
#ifdef NIBBLE_HAVE_CUTLASS
    return w8a8_gemm_sm90(xq, w.wq, w.scales, d, y, act, rows, w.n, w.k, stream);
#else
    return unimplemented("W8A8: this build has no fused GEMM (no CUTLASS headers)");
#endif
  }
  int device = 0;
  NB_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  const size_t act_bytes = act == DType::kF32 ? 4 : 2;
  for (int64_t r0 = 0; r0 < rows; r0 += iv_rows) {
    const int64_t mr = std::min(iv_rows, rows - r0);
    NB_ASSIGN_OR_RETURN(LtPlan plan, lt_plan(device, mr, w.n, w.k));
    const int32_t alpha = 1, beta = 0;
    NB_CUDA_RETURN_IF_ERROR(cublasLtMatmul(lt_state().handle, plan.op, &alpha, w.wq, plan.a, xq + r0 * w.k, plan.b,
                                           &beta, iv, plan.d, iv, plan.d, &plan.algo, lt_ws, kLtWorkspace, stream));
    void* yr = static_cast<uint8_t*>(y) + static_cast<size_t>(r0 * w.n) * act_bytes;
    NB_RETURN_IF_ERROR(dispatch(act, [&](auto tag) -> Status {
      using T = decltype(tag);
      const int64_t quads = mr * w.n / 4;
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(quads, 256), 65536));
      w8a8_epilogue_kernel<T><<<blocks, 256, 0, stream>>>(iv, w.scales, d + r0, static_cast<T*>(yr), mr, w.n);
      NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      return Status::Ok();
    }));
  }
  return Status::Ok();
}

Result<W8A8Weight> weight_of(const Tensor& weight) {
  NB_RETURN_IF_ERROR(w8a8_check(weight));
  if (weight.device() != Device::kCUDA) return invalid_argument("matmul_w8a8: the weight must be a device view (w8a8.h)");
  const int64_t n = weight.dim(0), k = weight.dim(1);
  if (k * 255 * 127 >= (int64_t{1} << 31)) return unimplemented("W8A8: K too large for exact int32 sums (K < 66000)");
  const auto* wbytes = static_cast<const uint8_t*>(weight.data());
  return W8A8Weight{reinterpret_cast<const int8_t*>(wbytes), reinterpret_cast<const float*>(wbytes + w8a8_scales_offset(n, k)),
                    n, k};
}

bool use_fused(W8A8Path path, int64_t m, int64_t n, int64_t k, DType act) {
  return path == W8A8Path::kFused || (path == W8A8Path::kAuto && w8a8_fused_available(m, n, k, act));
}

}  // namespace

Status matmul_w8a8_path(const MatmulParams& p, Context& ctx, W8A8Path path) {
  NB_ASSIGN_OR_RETURN(const W8A8Weight w, weight_of(p.weight));
  if (p.m <= 0) return Status::Ok();
  const int64_t n = w.n, k = w.k;
  const bool fused = use_fused(path, p.m, n, k, p.act_dtype);
  if (fused && !w8a8_fused_available(p.m, n, k, p.act_dtype)) {
    return unimplemented("W8A8: the fused sm_90a GEMM is not available for this shape, dtype or device");
  }
  // Workspace: [cuBLASLt scratch | xq (mc x k) | d (mc) | iv (mc x n, cuBLASLt path only)], mc rows at a time.
  const size_t per_row = static_cast<size_t>(k) + 4 + (fused ? 0 : static_cast<size_t>(n) * 4);
  const size_t fixed = kLtWorkspace + 3 * kAlign;
  if (ctx.workspace_bytes() < fixed + per_row) {
    return resource_exhausted("W8A8: the Context workspace (" + std::to_string(ctx.workspace_bytes()) +
                              " bytes) is too small; it needs at least " + std::to_string(fixed + per_row));
  }
  int64_t mc = static_cast<int64_t>((ctx.workspace_bytes() - fixed) / per_row);
  if (mc >= 16) mc -= mc % 16;
  mc = std::min(mc, p.m);
  auto* ws = static_cast<uint8_t*>(ctx.workspace());
  auto* xq = reinterpret_cast<int8_t*>(ws + kLtWorkspace);
  auto* d = reinterpret_cast<float*>(ws + kLtWorkspace + align_up(static_cast<size_t>(mc * k)));
  auto* iv = reinterpret_cast<int32_t*>(reinterpret_cast<uint8_t*>(d) + align_up(static_cast<size_t>(mc) * 4));
  const size_t act = p.act_dtype == DType::kF32 ? 4 : 2;
  for (int64_t r0 = 0; r0 < p.m; r0 += mc) {
    const int64_t rows = std::min(mc, p.m - r0);
    const auto* x = reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(p.x) + static_cast<size_t>(r0 * k) * act);
    NB_RETURN_IF_ERROR(quantize_act_int8(x, rows, k, p.act_dtype, xq, d, ctx));
    void* y = reinterpret_cast<uint8_t*>(p.y) + static_cast<size_t>(r0 * n) * act;
    NB_RETURN_IF_ERROR(w8a8_gemm(w, xq, d, y, rows, p.act_dtype, fused, ws, iv, rows, ctx));
  }
  return Status::Ok();
}

Status matmul_w8a8_quantized(const Tensor& weight, const int8_t* xq, const float* d, void* y, int64_t m, DType act_dtype,
                             Context& ctx) {
  NB_ASSIGN_OR_RETURN(const W8A8Weight w, weight_of(weight));
  if (m <= 0) return Status::Ok();
  const bool fused = use_fused(W8A8Path::kAuto, m, w.n, w.k, act_dtype);
  // Workspace: [cuBLASLt scratch | iv (rows x n)] on the cuBLASLt path.
  const size_t fixed = kLtWorkspace + kAlign, per_row = static_cast<size_t>(w.n) * 4;
  if (!fused && ctx.workspace_bytes() < fixed + per_row) {
    return resource_exhausted("W8A8: the Context workspace (" + std::to_string(ctx.workspace_bytes()) +
                              " bytes) is too small; it needs at least " + std::to_string(fixed + per_row));
  }
  const int64_t iv_rows = fused ? m : static_cast<int64_t>((ctx.workspace_bytes() - fixed) / per_row);
  auto* ws = static_cast<uint8_t*>(ctx.workspace());
  return w8a8_gemm(w, xq, d, y, m, act_dtype, fused, ws, reinterpret_cast<int32_t*>(ws + kLtWorkspace), iv_rows, ctx);
}

}  // namespace nb::cuda
