// Memory-bound ops: embedding (with GGUF row dequantization), RMSNorm (plain and fused with the
// residual add), RoPE, SwiGLU and the KV write through the slot mapping. All compute in f32 and round
// once on store; each is checked against nb::cpu::ref::* in tests/gpu/.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <string>

#include "backend/cuda/act_int8.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"

namespace nb::cuda {

namespace detail {
Status kv_write_quantized(const KvWriteParams& p, Context& ctx);  // kv_quant.cu
}  // namespace detail

using detail::ceil_div;
using detail::from_f32;
using detail::to_f32;

namespace {

constexpr int kRowThreads = 1024;  // one block per row: a decode row of 4096 is 4 elements a thread

__device__ __forceinline__ float half_bits_to_f32(const uint8_t* p) {
  // GGUF blocks are 2-byte aligned (34/18/20-byte blocks), so a 16-bit load is aligned.
  return __half2float(__ushort_as_half(*reinterpret_cast<const unsigned short*>(p)));
}

// Element j of a table row in any table dtype, as the core's dequantize_row computes it.
__device__ __forceinline__ float table_element(const uint8_t* row, DType dt, int64_t j) {
  switch (dt) {
    case DType::kF32: return reinterpret_cast<const float*>(row)[j];
    case DType::kF16: return __half2float(reinterpret_cast<const __half*>(row)[j]);
    case DType::kBF16: return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[j]);
    case DType::kQ8_0: {
      const uint8_t* b = row + (j / kQK8_0) * static_cast<int64_t>(sizeof(BlockQ8_0));
      return half_bits_to_f32(b) * static_cast<float>(reinterpret_cast<const int8_t*>(b + 2)[j % kQK8_0]);
    }
    case DType::kQ4_0: {
      const uint8_t* b = row + (j / kQK4_0) * static_cast<int64_t>(sizeof(BlockQ4_0));
      const int i = static_cast<int>(j % kQK4_0);
      const int q = i < 16 ? (b[2 + i] & 0xf) : (b[2 + i - 16] >> 4);
      return half_bits_to_f32(b) * static_cast<float>(q - 8);
    }
    case DType::kQ4_1: {
      const uint8_t* b = row + (j / kQK4_1) * static_cast<int64_t>(sizeof(BlockQ4_1));
      const int i = static_cast<int>(j % kQK4_1);
      const int q = i < 16 ? (b[4 + i] & 0xf) : (b[4 + i - 16] >> 4);
      return __fadd_rn(__fmul_rn(half_bits_to_f32(b), static_cast<float>(q)), half_bits_to_f32(b + 2));
    }
    default: return __int_as_float(0x7fc00000);  // unreachable: the launcher rejects other dtypes
  }
}

// One block per token: out[t, :] = row ids[t] of the table. An id outside the table (the boundary
// validates ids, so this means a bug upstream) yields NaN rather than a read out of bounds.
template <typename T>
__global__ void embedding_kernel(const uint8_t* __restrict__ table, DType dt, int64_t row_bytes, int64_t vocab,
                                 int64_t dim, const int32_t* __restrict__ ids, T* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  T* o = out + t * dim;
  if (id < 0 || id >= vocab) {
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) o[j] = from_f32<T>(__int_as_float(0x7fc00000));
    return;
  }
  const uint8_t* row = table + static_cast<int64_t>(id) * row_bytes;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) o[j] = from_f32<T>(table_element(row, dt, j));
}

// Sum over the block of one float per thread; every thread gets the total. `scratch` holds one
// float per warp. Ends with a barrier, so scratch may be reused right after.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// Max over the block of one float per thread (as block_sum).
__device__ __forceinline__ float block_max(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) m = fmaxf(m, scratch[w]);
  __syncthreads();
  return m;
}

// One block per row. With `residual` non-null, first x += residual (stored rounded to T), and the norm
// is taken of the stored x. The second pass re-reads x from global memory (L1/L2-resident). With
// `codes` non-null, a third pass quantizes the stored y row as w8a8.cu's quantize_act_int8_kernel
// does (its absmax, then the same act_int8_codes), so a W8A8 linear reading y needs no quantization
// kernel of its own.
template <typename T>
__global__ void rms_norm_kernel(T* x, const T* __restrict__ residual, const float* __restrict__ weight, T* y,
                                int64_t dim, float eps, int8_t* codes, float* scales) {
  __shared__ float scratch[kRowThreads / 32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * dim;
  float ss = 0.f;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    float v;
    if (residual != nullptr) {
      const T stored = from_f32<T>(to_f32(x[base + j]) + to_f32(residual[base + j]));
      x[base + j] = stored;
      v = to_f32(stored);
    } else {
      v = to_f32(x[base + j]);
    }
    ss += v * v;
  }
  // Each thread reads back only the x elements it wrote, so no barrier is needed before pass 2
  // (block_sum's barriers order it anyway).
  const float total = block_sum(ss, scratch);
  const float inv = rsqrtf(total / static_cast<float>(dim) + eps);
  float amax = 0.f;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    const T v = from_f32<T>(to_f32(x[base + j]) * inv * weight[j]);
    y[base + j] = v;
    amax = fmaxf(amax, fabsf(to_f32(v)));
  }
  if (codes == nullptr) return;
  // Each thread reads back only the y elements it wrote (the same stride as pass 2).
  detail::act_int8_codes(y + base, dim, block_max(amax, scratch), codes + base, scales + blockIdx.x,
                         static_cast<int>(blockDim.x));
}

// One block per token. The angles pos * inv_freq[i] are formed in double (an f32 angle at position
// 4096 is already off by ~2e-4 rad) and their cos/sin shared by all heads of the token.
constexpr int kMaxRopeHalf = 256;  // head_dim <= 512
template <typename T>
__global__ void rope_kernel(T* q, T* k, const int32_t* __restrict__ positions, const float* __restrict__ inv_freq,
                            int num_heads, int num_kv_heads, int head_dim, bool interleaved) {
  __shared__ float cos_s[kMaxRopeHalf], sin_s[kMaxRopeHalf];
  const int64_t t = blockIdx.x;
  const int half = head_dim / 2;
  const double pos = static_cast<double>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double s, c;
    sincos(pos * static_cast<double>(inv_freq[i]), &s, &c);
    cos_s[i] = static_cast<float>(c);
    sin_s[i] = static_cast<float>(s);
  }
  __syncthreads();
  const int num_pairs = (num_heads + num_kv_heads) * half;
  for (int p = threadIdx.x; p < num_pairs; p += blockDim.x) {
    const int h = p / half, i = p % half;
    T* x = h < num_heads ? q + (t * num_heads + h) * head_dim
                         : k + (t * num_kv_heads + (h - num_heads)) * head_dim;
    const int a = interleaved ? 2 * i : i;
    const int b = interleaved ? 2 * i + 1 : i + half;
    const float x0 = to_f32(x[a]), x1 = to_f32(x[b]);
    x[a] = from_f32<T>(x0 * cos_s[i] - x1 * sin_s[i]);
    x[b] = from_f32<T>(x0 * sin_s[i] + x1 * cos_s[i]);
  }
}

// silu(g) * u rounded to T: the one formula of both SwiGLU kernels, so codes and out agree bit for bit.
template <typename T>
__device__ __forceinline__ T silu_mul(T g, T u) {
  const float gf = to_f32(g);
  return from_f32<T>(gf / (1.f + expf(-gf)) * to_f32(u));
}

template <typename T>
__global__ void swiglu_kernel(const T* gate, const T* __restrict__ up, T* out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = silu_mul(gate[i], up[i]);
  }
}

// With int8 codes (SwigluParams::out_codes): one block per row of `cols` elements; each thread
// writes its elements of out (the bits swiglu_kernel writes), then quantizes what it wrote, as
// rms_norm_kernel's third pass does.
template <typename T>
__global__ void swiglu_codes_kernel(const T* gate, const T* __restrict__ up, T* out, int64_t cols, int8_t* codes,
                                    float* scales) {
  __shared__ float scratch[kRowThreads / 32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  float amax = 0.f;
  for (int64_t j = threadIdx.x; j < cols; j += kRowThreads) {
    const T v = silu_mul(gate[base + j], up[base + j]);
    out[base + j] = v;
    amax = fmaxf(amax, fabsf(to_f32(v)));
  }
  detail::act_int8_codes(out + base, cols, block_max(amax, scratch), codes + base, scales + blockIdx.x, kRowThreads);
}

// One block per token: copies its K and V rows into slot slot_mapping[t] (negative: padding, skip).
template <typename T>
__global__ void kv_write_kernel(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ k_cache,
                                T* __restrict__ v_cache, const int64_t* __restrict__ slot_mapping, int64_t row) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;
  for (int64_t j = threadIdx.x; j < row; j += blockDim.x) {
    k_cache[slot * row + j] = k[t * row + j];
    v_cache[slot * row + j] = v[t * row + j];
  }
}

Status check_grid_rows(int64_t rows, const char* op) {
  if (rows > INT_MAX) return invalid_argument(std::string(op) + ": too many rows for one launch; split the batch");
  return Status::Ok();
}

Status launch_rms_norm(float* x, const float* residual, const float* weight, float* y, int64_t rows, int64_t dim,
                       float eps, DType act, int8_t* codes, float* scales, const char* op, Context& ctx) {
  if ((codes == nullptr) != (scales == nullptr)) {
    return invalid_argument(std::string(op) + ": y_codes and y_scales go together (both or neither)");
  }
  if (rows <= 0 || dim <= 0) return Status::Ok();
  NB_RETURN_IF_ERROR(check_grid_rows(rows, op));
  cudaStream_t stream = detail::as_stream(ctx.stream());
  return detail::dispatch_act(act, op, [&](auto tag) -> Status {
    using T = decltype(tag);
    rms_norm_kernel<T><<<static_cast<unsigned>(rows), kRowThreads, 0, stream>>>(
        reinterpret_cast<T*>(x), reinterpret_cast<const T*>(residual), weight, reinterpret_cast<T*>(y), dim, eps, codes,
        scales);
    NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::Ok();
  });
}

}  // namespace

Status embedding(const EmbeddingParams& p, Context& ctx) {
  if (p.num_tokens <= 0) return Status::Ok();
  NB_RETURN_IF_ERROR(check_grid_rows(p.num_tokens, "embedding"));
  const DType dt = p.table.dtype();
  switch (dt) {
    case DType::kF32: case DType::kF16: case DType::kBF16: case DType::kQ8_0: case DType::kQ4_0: case DType::kQ4_1:
      break;
    default:
      return unimplemented("embedding: table dtype " + std::string(dtype_name(dt)) +
                           " is not supported on CUDA; use f32/f16/bf16/q8_0/q4_0/q4_1");
  }
  if (p.table.ndim() != 2 || p.table.device() != Device::kCUDA) {
    return invalid_argument("embedding: the table must be a 2-D device tensor (Device::kCUDA); got " +
                            p.table.describe());
  }
  cudaStream_t stream = detail::as_stream(ctx.stream());
  return detail::dispatch_act(p.act_dtype, "embedding", [&](auto tag) -> Status {
    using T = decltype(tag);
    embedding_kernel<T><<<static_cast<unsigned>(p.num_tokens), kRowThreads, 0, stream>>>(
        static_cast<const uint8_t*>(p.table.data()), dt, static_cast<int64_t>(p.table.row_nbytes()), p.table.dim(0),
        p.table.dim(1), p.ids, reinterpret_cast<T*>(p.out));
    NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::Ok();
  });
}

Status rms_norm(const RmsNormParams& p, Context& ctx) {
  // y may alias x: each element is read (pass 2) by the thread that then writes it.
  return launch_rms_norm(const_cast<float*>(p.x), nullptr, p.weight, p.y, p.rows, p.dim, p.eps, p.act_dtype,
                         p.y_codes, p.y_scales, "rms_norm", ctx);
}

Status add_rms_norm(const AddRmsNormParams& p, Context& ctx) {
  if (p.y == p.x || p.y == p.residual) return invalid_argument("add_rms_norm: y must not alias x or residual");
  return launch_rms_norm(p.x, p.residual, p.weight, p.y, p.rows, p.dim, p.eps, p.act_dtype, p.y_codes, p.y_scales,
                         "add_rms_norm", ctx);
}

Status rope(const RopeParams& p, Context& ctx) {
  if (p.num_tokens <= 0) return Status::Ok();
  NB_RETURN_IF_ERROR(check_grid_rows(p.num_tokens, "rope"));
  if (p.head_dim <= 0 || p.head_dim % 2 != 0 || p.head_dim / 2 > kMaxRopeHalf) {
    return invalid_argument("rope: head_dim must be even and <= " + std::to_string(2 * kMaxRopeHalf) + "; got " +
                            std::to_string(p.head_dim));
  }
  if (p.num_heads < 0 || p.num_kv_heads < 0 || (p.num_heads + p.num_kv_heads) * (p.head_dim / 2) > INT_MAX) {
    return invalid_argument("rope: head counts out of range");
  }
  cudaStream_t stream = detail::as_stream(ctx.stream());
  return detail::dispatch_act(p.act_dtype, "rope", [&](auto tag) -> Status {
    using T = decltype(tag);
    rope_kernel<T><<<static_cast<unsigned>(p.num_tokens), 1024, 0, stream>>>(
        reinterpret_cast<T*>(p.q), reinterpret_cast<T*>(p.k), p.positions, p.inv_freq, static_cast<int>(p.num_heads),
        static_cast<int>(p.num_kv_heads), static_cast<int>(p.head_dim), p.style == RopeStyle::kInterleaved);
    NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::Ok();
  });
}

Status swiglu(const SwigluParams& p, Context& ctx) {
  if ((p.out_codes == nullptr) != (p.out_scales == nullptr)) {
    return invalid_argument("swiglu: out_codes and out_scales go together (both or neither)");
  }
  if (p.out_codes != nullptr && (p.cols <= 0 || p.n % p.cols != 0)) {
    return invalid_argument("swiglu: with codes, cols must be positive and divide n (n " + std::to_string(p.n) +
                            ", cols " + std::to_string(p.cols) + ")");
  }
  if (p.n <= 0) return Status::Ok();
  cudaStream_t stream = detail::as_stream(ctx.stream());
  if (p.out_codes != nullptr) {
    NB_RETURN_IF_ERROR(check_grid_rows(p.n / p.cols, "swiglu"));
    return detail::dispatch_act(p.act_dtype, "swiglu", [&](auto tag) -> Status {
      using T = decltype(tag);
      swiglu_codes_kernel<T><<<static_cast<unsigned>(p.n / p.cols), kRowThreads, 0, stream>>>(
          reinterpret_cast<const T*>(p.gate), reinterpret_cast<const T*>(p.up), reinterpret_cast<T*>(p.out), p.cols,
          p.out_codes, p.out_scales);
      NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      return Status::Ok();
    });
  }
  const int64_t blocks = std::min<int64_t>(ceil_div(p.n, 256), int64_t{ctx.info().num_sms} * 16);
  return detail::dispatch_act(p.act_dtype, "swiglu", [&](auto tag) -> Status {
    using T = decltype(tag);
    swiglu_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        reinterpret_cast<const T*>(p.gate), reinterpret_cast<const T*>(p.up), reinterpret_cast<T*>(p.out), p.n);
    NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::Ok();
  });
}

Status kv_write(const KvWriteParams& p, Context& ctx) {
  if (p.num_tokens <= 0) return Status::Ok();
  switch (p.cache_dtype) {
    case KvCacheDType::kInt8: case KvCacheDType::kInt4:
      return detail::kv_write_quantized(p, ctx);
    case KvCacheDType::kF32:
      break;  // the cache is in act_dtype
    case KvCacheDType::kF16:
      if (p.act_dtype == DType::kF16) break;  // = the act-dtype cache
      return unimplemented("kv_write: an f16 KV cache needs f16 activations on CUDA (or use int8/int4)");
  }
  NB_RETURN_IF_ERROR(check_grid_rows(p.num_tokens, "kv_write"));
  const int64_t row = p.num_kv_heads * p.head_dim;
  if (row <= 0) return invalid_argument("kv_write: num_kv_heads * head_dim must be positive");
  cudaStream_t stream = detail::as_stream(ctx.stream());
  return detail::dispatch_act(p.act_dtype, "kv_write", [&](auto tag) -> Status {
    using T = decltype(tag);
    kv_write_kernel<T><<<static_cast<unsigned>(p.num_tokens), 1024, 0, stream>>>(
        reinterpret_cast<const T*>(p.k), reinterpret_cast<const T*>(p.v), reinterpret_cast<T*>(p.k_cache),
        reinterpret_cast<T*>(p.v_cache), p.slot_mapping, row);
    NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::Ok();
  });
}

}  // namespace nb::cuda
