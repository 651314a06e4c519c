// W4A16 matmul: y[m, n] = x[m, k] . W[n, k]^T with W a 4-bit group-quantized weight uploaded once
// (upload_w4) in the layout of backend/w4_layout.h, x f16/bf16, y f16/bf16/f32, f32 accumulation.
//
// M <= 64: one fused kernel, bandwidth-bound; tokens in passes of 16 (grid.z; each pass reads the
// packed weights again, so up to 64 tokens it still reads no more than f16 weights once). Tensor
// cores for every M in 1..16 of a pass:
// the dequantization (a few ALU ops per weight) is the same whether the products then run on CUDA
// cores or in an mma, but an mma.m16n8k16 does 16 x 16 x 8 products for one instruction per warp, so
// M = 1 costs no more than M = 8, and M = 9..16 is a second mma on the same A fragments (a CUDA-core
// GEMV would need M FMAs per weight: at M = 16 that is 2x what H100's f32 units do at HBM speed).
//   - A block of 8 warps owns 64 rows (4 row tiles of 16; the same B fragments serve all 4, so each
//     activation is read from L2 once per 64 rows) and a cluster of `cs` blocks (sm_90 thread-block
//     cluster along grid.y) splits K: warp w of block rank b reads chunks s, s + S, s + 2S, ... with
//     s = 8 b + w, S = 8 cs. Each lane issues 4 row tiles x U = 2 chunks of 16-byte loads
//     (8 x 16 B) before using any: 32 KiB per block, 2 blocks per SM (<= 128 registers) in flight.
//     NIBBLE_W4_PIPE=1 (off until measured on a GPU): the same two chunks in ping-pong instead, each
//     chunk's loads issued two chunks ahead of its use as soon as its buffer is consumed, so a warp
//     keeps loads in flight while it dequantizes (at M = 1 the kernel reads at ~38% of the copy
//     bandwidth with the burst schedule; dequantizing is ~half of the SM's issue slots at HBM speed).
//   - Partial sums: warps -> shared memory -> block sum; blocks of a cluster -> distributed shared
//     memory; one launch, no workspace, so it is graph-capturable and needs no zeroing.
//   - cs is picked so that the grid covers the SMs (small N, e.g. 4096 rows = 64 blocks) without
//     leaving a warp without a chunk.
// M > 64 (prefill): the packed weight is dequantized (same formula, same f16 values as the fused
// kernel) into the Context workspace in slabs of rows, and each slab runs through cuBLAS. A first
// step: it writes and reads the weights at f16 size; a fused mma GEMM would read them at 4 bits.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#if !defined(NIBBLE_EMU)
#include <cooperative_groups.h>
#endif

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/w4_kernels.cuh"
#include "backend/w4_layout.h"
#include "core/group_quant.h"

namespace nb::cuda {

using detail::from_f32;

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTilesPerBlock = 4;  // row tiles of 16 per block (64 rows = W4Layout::kRowAlign)
constexpr int kUnroll = 2;         // chunks per warp loaded before use
constexpr int kMaxCluster = 8;     // portable cluster size
constexpr int kPassTokens = 16;    // tokens per pass of the fused kernel (two n8 mma tiles)
constexpr int64_t kFusedMaxM = 64; // above: dequantize + cuBLAS

static_assert(kTilesPerBlock * W4Layout::kTileRows == W4Layout::kRowAlign);

struct W4Args {
  const uint4* codes;      // [n_pad / 16][chunks][32] uint4
  const uint32_t* params;  // [n_pad / 16][num_groups][16]
  int n, k, m;
  int chunks;              // k / 64
  int group_chunks;        // chunks per group
  int num_groups;
  bool pipelined;          // the ping-pong load schedule (NIBBLE_W4_PIPE=1, w4_args)
};

// Rows [64 blockIdx.x, +64) x tokens [16 blockIdx.z, +16) over the K slices of the cluster
// (grid.y == cluster size).
template <typename T, typename OutT, int NT>
__global__ void __launch_bounds__(kThreads, 2) w4_gemv_kernel(W4Args a, const T* __restrict__ x, OutT* __restrict__ y) {
  constexpr int R = kTilesPerBlock, V = R * NT * 4;  // accumulators per lane
  __shared__ float red[kWarps][V][32];
  __shared__ float part[V][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const int tile0 = blockIdx.x * R;
  // This pass's tokens: [16 z, 16 z + m).
  const int z = blockIdx.z, m = min(kPassTokens, a.m - kPassTokens * z);
  x += static_cast<size_t>(kPassTokens) * z * a.k;
  y += static_cast<size_t>(kPassTokens) * z * a.n;
  const int cs = gridDim.y, slice = blockIdx.y * kWarps + warp, stride = cs * kWarps;

  float acc[R][NT][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][j][i] = 0.f;

  // One chunk's loads: R row tiles of 16-byte codes, their group parameters, the tokens' inputs.
  struct Chunk {
    uint4 wv[R];
    uint32_t pv[R][2];
    uint4 xv[NT][2];
  };
  auto load = [&](Chunk& ch, int c) {
    if (c >= a.chunks) return;
    const int g = c / a.group_chunks;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      // Streamed: every weight byte is read once per call (evict-first, keep L2 for activations).
      ch.wv[r] = __ldcs(a.codes + (static_cast<size_t>(tile0 + r) * a.chunks + c) * 32 + lane);
      const uint32_t* pp = a.params + (static_cast<size_t>(tile0 + r) * a.num_groups + g) * 16 + gid;
      ch.pv[r][0] = __ldg(pp);
      ch.pv[r][1] = __ldg(pp + 8);
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int tok = gid + 8 * j;
      if (tok < m) {
        const uint4* xp = reinterpret_cast<const uint4*>(x + static_cast<size_t>(tok) * a.k + c * 64 + tig * 16);
        ch.xv[j][0] = __ldg(xp);
        ch.xv[j][1] = __ldg(xp + 1);
      } else {
        ch.xv[j][0] = ch.xv[j][1] = make_uint4(0, 0, 0, 0);
      }
    }
  };
  auto compute = [&](const Chunk& ch) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const w4::RowParams<T> p0 = w4::RowParams<T>::make(ch.pv[r][0]), p1 = w4::RowParams<T>::make(ch.pv[r][1]);
      const uint32_t* words = reinterpret_cast<const uint32_t*>(&ch.wv[r]);
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        uint32_t af[4];
        w4::dequant_word(words[t], p0, p1, af);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint32_t* xb = reinterpret_cast<const uint32_t*>(&ch.xv[j][0]);  // 8 words: 16 inputs
          w4::mma_16816<T>(acc[r][j], af, xb[2 * t], xb[2 * t + 1]);
        }
      }
    }
  };
  if (a.pipelined) {
    // Ping-pong: a chunk's loads go out two chunks ahead of its use, right after the buffer is
    // consumed, so loads stay in flight while the warp dequantizes (NIBBLE_W4_PIPE=1).
    Chunk ca, cb;
    load(ca, slice);
    load(cb, slice + stride);
    for (int c = slice; c < a.chunks; c += 2 * stride) {
      compute(ca);
      load(ca, c + 2 * stride);
      if (c + stride >= a.chunks) break;
      compute(cb);
      load(cb, c + 3 * stride);
    }
  } else {
    // kUnroll chunks loaded, then used.
    for (int c0 = slice; c0 < a.chunks; c0 += stride * kUnroll) {
      Chunk ch[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) load(ch[u], c0 + u * stride);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (c0 + u * stride >= a.chunks) break;
        compute(ch[u]);
      }
    }
  }

  // Block sum over the 8 warps (each holds a different K slice of the same outputs).
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[warp][(r * NT + j) * 4 + i][lane] = acc[r][j][i];
  __syncthreads();
  for (int idx = threadIdx.x; idx < V * 32; idx += kThreads) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += red[w][idx / 32][idx % 32];
    part[idx / 32][idx % 32] = s;
  }
  int rank = 0;
#if !defined(NIBBLE_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  if (cs > 1) {
    cluster.sync();  // every block's `part` is complete and visible to the cluster
    rank = static_cast<int>(cluster.block_rank());
  } else {
    __syncthreads();
  }
#else
  __syncthreads();
#endif
  // Rank `rank` writes the outputs idx with idx % cs == rank, summing the cluster's partials.
  for (int idx = threadIdx.x; idx < V * 32; idx += kThreads) {
    if (idx % cs != rank) continue;
    float s = part[idx / 32][idx % 32];
#if !defined(NIBBLE_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    for (int b = 0; b < cs; ++b) {
      if (b != rank) s += cluster.map_shared_rank(&part[0][0], b)[idx];
    }
#endif
    const int v = idx / 32, ln = idx % 32, r = v / (NT * 4), j = (v / 4) % NT, i = v % 4;
    const int row = (tile0 + r) * 16 + ln / 4 + 8 * (i >> 1);
    const int tok = 8 * j + (ln % 4) * 2 + (i & 1);
    if (row < a.n && tok < m) y[static_cast<size_t>(tok) * a.n + row] = from_f32<OutT>(s);
  }
#if !defined(NIBBLE_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cs > 1) cluster.sync();  // keep this block's shared memory alive until every rank has read it
#endif
}

// Dequantizes row tiles [tile0, tile0 + tiles) of the packed weight into w[rows][k] (T), with the
// fused kernel's formula (the same T values). One thread per (tile, chunk, lane) 16-byte word group.
template <typename T>
__global__ void __launch_bounds__(256) w4_dequant_kernel(W4Args a, int tile0, int tiles, T* __restrict__ w) {
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= static_cast<int64_t>(tiles) * a.chunks * 32) return;
  const int lane = static_cast<int>(id % 32), c = static_cast<int>((id / 32) % a.chunks);
  const int tile = static_cast<int>(id / (32 * static_cast<int64_t>(a.chunks)));
  const int gid = lane / 4, tig = lane % 4, g = c / a.group_chunks;
  const uint4 wv = a.codes[(static_cast<size_t>(tile0 + tile) * a.chunks + c) * 32 + lane];
  const uint32_t* pp = a.params + (static_cast<size_t>(tile0 + tile) * a.num_groups + g) * 16 + gid;
  const w4::RowParams<T> p0 = w4::RowParams<T>::make(pp[0]), p1 = w4::RowParams<T>::make(pp[8]);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(&wv);
  for (int t = 0; t < 4; ++t) {
    uint32_t af[4];
    w4::dequant_word(words[t], p0, p1, af);
    for (int reg = 0; reg < 4; ++reg) {
      const int row = tile * 16 + gid + 8 * (reg & 1);
      const int col = c * 64 + tig * 16 + 4 * t + 2 * (reg >> 1);
      *reinterpret_cast<uint32_t*>(w + static_cast<size_t>(row) * a.k + col) = af[reg];
    }
  }
}

Result<W4Args> w4_args(const MatmulParams& p) {
  const Tensor& w = p.weight;
  const GroupQuant* q = w.group_quant();
  if (q == nullptr || q->bits != 4 || w.ndim() != 2) {
    return invalid_argument("matmul: a kQGroup device weight must come from cuda::upload_w4; got " + w.describe());
  }
  const int64_t n = w.dim(0), k = w.dim(1), gs = q->group_size < 0 ? k : q->group_size;
  if (n >= (int64_t{1} << 30) || k >= (int64_t{1} << 30)) return invalid_argument("matmul: W4 weight too large");
  const int64_t n_pad = (n + W4Layout::kRowAlign - 1) / W4Layout::kRowAlign * W4Layout::kRowAlign;
  W4Args a{};
  a.codes = static_cast<const uint4*>(w.data());
  a.params = reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(w.data()) + n_pad * k / 2);
  a.n = static_cast<int>(n);
  a.k = static_cast<int>(k);
  a.m = static_cast<int>(p.m);
  a.chunks = static_cast<int>(k / W4Layout::kChunk);
  a.group_chunks = static_cast<int>(gs / W4Layout::kChunk);
  a.num_groups = static_cast<int>((k + gs - 1) / gs);
  // NIBBLE_W4_PIPE=1: the fused kernel's ping-pong load schedule; off until measured on a GPU.
  const char* pipe = std::getenv("NIBBLE_W4_PIPE");
  a.pipelined = pipe != nullptr && pipe[0] == '1';
  return a;
}

// Cluster size along K: the smallest power of two whose grid fills the resident slots (2 blocks
// per SM: <= 128 registers, <= 37 KiB shared), at most 8 (portable clusters), while every warp keeps
// at least kUnroll chunks (one full batch of loads). 1 below sm_90 (no clusters). The environment
// variable NIBBLE_W4_MAX_CLUSTER=1|2|4|8 caps it (diagnostics and tests: 1 = no cluster).
int pick_cluster(const W4Args& a, const Context& ctx) {
  const int passes = (a.m + kPassTokens - 1) / kPassTokens;
  if (ctx.info().major < 9) return 1;
  int max_cs = kMaxCluster;
  if (const char* env = std::getenv("NIBBLE_W4_MAX_CLUSTER"); env != nullptr) {
    max_cs = std::clamp(std::atoi(env), 1, kMaxCluster);
  }
  const int row_blocks = (a.n + W4Layout::kRowAlign - 1) / static_cast<int>(W4Layout::kRowAlign);
  int cs = 1;
  while (2 * cs <= max_cs && row_blocks * passes * cs < 2 * ctx.info().num_sms && a.chunks >= 2 * cs * kWarps * kUnroll) {
    cs *= 2;
  }
  return cs;
}

template <typename T, typename OutT, int NT>
Status launch_gemv(const W4Args& a, const MatmulParams& p, int cs, cudaStream_t stream) {
  const unsigned row_blocks = static_cast<unsigned>((a.n + W4Layout::kRowAlign - 1) / W4Layout::kRowAlign);
  const unsigned passes = static_cast<unsigned>((a.m + kPassTokens - 1) / kPassTokens);
  const dim3 grid(row_blocks, static_cast<unsigned>(cs), passes), block(kThreads, 1, 1);
  const T* x = reinterpret_cast<const T*>(p.x);
  OutT* y = reinterpret_cast<OutT*>(p.y);
#if defined(NIBBLE_EMU)  // tests/gpu/emu: plain launches only (no clusters there: cs == 1)
  w4_gemv_kernel<T, OutT, NT><<<grid, block, 0, stream>>>(a, x, y);
  NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
#else
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = static_cast<unsigned>(cs);
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = cs > 1 ? 1 : 0;
  NB_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, w4_gemv_kernel<T, OutT, NT>, a, x, y));
#endif
  return Status::Ok();
}

template <typename T, typename OutT>
Status run_gemv(const W4Args& a, const MatmulParams& p, Context& ctx) {
  const int cs = pick_cluster(a, ctx);
  cudaStream_t stream = detail::as_stream(ctx.stream());
  return p.m <= 8 ? launch_gemv<T, OutT, 1>(a, p, cs, stream) : launch_gemv<T, OutT, 2>(a, p, cs, stream);
}

template <typename T>
Status run_dequant_gemm(const W4Args& a, const MatmulParams& p, Context& ctx, bool f32_out) {
  const cudaDataType_t type = std::is_same_v<T, __half> ? CUDA_R_16F : CUDA_R_16BF;
  const int64_t row_bytes = static_cast<int64_t>(a.k) * 2;
  const int64_t slab_rows = std::min<int64_t>(static_cast<int64_t>(ctx.workspace_bytes()) / row_bytes / 64 * 64,
                                              (static_cast<int64_t>(a.n) + 63) / 64 * 64);
  if (slab_rows <= 0) {
    return resource_exhausted("matmul: the W4 prefill path needs a workspace of at least " +
                              std::to_string(64 * row_bytes) + " bytes (64 rows of f16); create the Context with more");
  }
  if (p.m > INT_MAX) return invalid_argument("matmul: m exceeds cuBLAS's int range");
  cudaStream_t stream = detail::as_stream(ctx.stream());
  T* wbuf = static_cast<T*>(ctx.workspace());
  const float alpha = 1.f, beta = 0.f;
  for (int64_t r0 = 0; r0 < a.n; r0 += slab_rows) {
    const int64_t rows = std::min<int64_t>(slab_rows, a.n - r0);
    const int tiles = static_cast<int>((rows + 15) / 16);
    const int64_t threads = static_cast<int64_t>(tiles) * a.chunks * 32;
    w4_dequant_kernel<T><<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(
        a, static_cast<int>(r0 / 16), tiles, wbuf);
    NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    void* y = reinterpret_cast<uint8_t*>(p.y) + static_cast<size_t>(r0) * (f32_out ? 4 : 2);
    NB_CUDA_RETURN_IF_ERROR(cublasGemmEx(static_cast<cublasHandle_t>(ctx.blas()), CUBLAS_OP_T, CUBLAS_OP_N,
                                         static_cast<int>(rows), static_cast<int>(p.m), a.k, &alpha, wbuf, type, a.k,
                                         p.x, type, a.k, &beta, y, f32_out ? CUDA_R_32F : type, a.n,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  return Status::Ok();
}

}  // namespace

// matmul.cpp dispatches kQGroup device weights here.
Status w4_matmul(const MatmulParams& p, Context& ctx, bool f32_out) {
  NB_ASSIGN_OR_RETURN(const W4Args a, w4_args(p));
  if (p.act_dtype != DType::kF16 && p.act_dtype != DType::kBF16) {
    return unimplemented("matmul: W4 weights run with f16 or bf16 activations on CUDA; got " +
                         std::string(dtype_name(p.act_dtype)));
  }
  if (p.m <= 0 || a.n <= 0) return Status::Ok();
  if (reinterpret_cast<uintptr_t>(p.x) % 16 != 0 || reinterpret_cast<uintptr_t>(p.weight.data()) % 16 != 0) {
    return invalid_argument("matmul: W4 needs 16-byte aligned activations and weights");
  }
  if (p.m > kFusedMaxM) {
    return p.act_dtype == DType::kF16 ? run_dequant_gemm<__half>(a, p, ctx, f32_out)
                                      : run_dequant_gemm<__nv_bfloat16>(a, p, ctx, f32_out);
  }
  if (p.act_dtype == DType::kF16) {
    return f32_out ? run_gemv<__half, float>(a, p, ctx) : run_gemv<__half, __half>(a, p, ctx);
  }
  return f32_out ? run_gemv<__nv_bfloat16, float>(a, p, ctx) : run_gemv<__nv_bfloat16, __nv_bfloat16>(a, p, ctx);
}

Result<Tensor> upload_w4(const Tensor& qgroup, Context& ctx) {
  NB_ASSIGN_OR_RETURN(const W4Layout l, w4_pack(qgroup));
  NB_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::allocate(static_cast<size_t>(l.total_bytes())));
  NB_RETURN_IF_ERROR(copy_to_device(buf.data(), l.codes.data(), static_cast<size_t>(l.code_bytes()), ctx.stream()));
  NB_RETURN_IF_ERROR(copy_to_device(static_cast<uint8_t*>(buf.data()) + l.code_bytes(), l.params.data(),
                                    static_cast<size_t>(l.param_bytes()), ctx.stream()));
  NB_RETURN_IF_ERROR(ctx.synchronize());  // the host layout goes away on return
  const GroupQuant& src = *qgroup.group_quant();
  auto q = std::make_shared<GroupQuant>();
  q->bits = 4;
  q->group_size = src.group_size;
  q->symmetric = src.symmetric;
  q->num_groups = src.num_groups;  // scales, zeros, tiled stay empty: they live in the device buffer
  auto owner = std::make_shared<DeviceBuffer>(std::move(buf));
  Tensor t = Tensor::view(owner->data(), {l.n, l.k}, DType::kQGroup, owner, Device::kCUDA);
  t.set_group_quant(std::move(q));
  return t;
}

int64_t w4_device_bytes(const Tensor& qgroup) {
  const int64_t n = qgroup.dim(0), k = qgroup.dim(1);
  const GroupQuant* q = qgroup.group_quant();
  const int64_t n_pad = (n + W4Layout::kRowAlign - 1) / W4Layout::kRowAlign * W4Layout::kRowAlign;
  const int64_t groups = q == nullptr ? 1 : group_count(k, q->group_size);
  return n_pad * k / 2 + n_pad * groups * 4;
}

}  // namespace nb::cuda
