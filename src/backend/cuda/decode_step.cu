// The whole decode step of a Llama stack for one sequence and one token as ONE persistent kernel
// (DecodeStepParams; the CPU reference runs the fused ops in turn). Batch-1 decode reads every
// weight once per token, so its floor is bytes / bandwidth; with one kernel per op (~190 a 7B token)
// each kernel's launch, ramp-up and drain left the memory idle for ~0.9 ms of a 4.5 ms token.
// Here the grid (one block of 16 warps an SM) stays resident for the whole step and moves from stage
// to stage through grid barriers; before a linear stage waits at its barrier, every warp has
// already issued the loads of its first weights (weights never depend on the step), so the weight
// stream runs on across stage boundaries.
//
// Measured (H200, 7B f16 batch 1, bench/results/gpu-h200-decode-2026-11-27.md): 4.05-4.08 ms a
// token against 4.48 ms for the layer-by-layer fused kernels in the same run (78.1-78.5% vs 71.1%
// of the roofline). NIBBLE_DECODE_STEP_PROFILE=1 prints where a layer's time goes: q|k|v, gate/up
// and down stream at 86-89% of the copy bandwidth; attention (~11 us a layer: the q load, a second
// key chunk, publishing the block partials, the merge) and o_proj's barrier and input staging (4 us
// over its bytes) are what is left to 85%.
//
// Tried on the H200 and removed, each slower than this in the same run (2026-11-27, gpu.sh 7bab;
// bench/results/gpu-h200-quant-table-2026-11-27e.md, raw-h200-2026-11-27f; code in git history,
// 2073cf9, 8af177b, ac8b0e4): a balanced chunk split of the linear stages (74.2% vs 75.7%), that plus
// o_proj's first chunks streamed into shared memory before attention's barrier (71.0%: the 17 MB land
// before q|k|v's barrier), and o_proj + gate/up prefetched into L2 during attention (74.1% and below:
// attention waits behind the prefetched bytes).
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/decode_step.cuh"
#include "backend/cuda/decode_step_attn_o.cuh"

namespace nb::cuda {

using detail::from_f32;
using detail::to_f32;

namespace {

using namespace step;  // NOLINT: the kernel's pieces (decode_step.cuh)

enum class Epi { kSplit, kAdd, kSwiglu };


// One linear stage: rows gw, gw + W, ... of the weight(s), each a warp streaming the row in chunks
// of U 16-byte loads per lane, over the flattened (row, step) sequence so that the next row's
// loads go out before the current one ends. The first two chunks are issued before the stage's
// grid barrier. The input (normed when nw) is staged in shared memory as f32 by each block.
// kU1: 16-byte loads a lane in a chunk of one weight (two weights: half as many each).
// kY (variant 7): the residual stream is x + y_acc (o_proj's f32 sums, attention_oproj_stage):
// kSwiglu's staging reads T(x + y_acc); kAdd's epilogue writes T(T(x + y_acc) + acc) and clears y_acc.
template <typename T, Epi E, int kU1, typename Bar, bool kY = false>
__device__ void linear_stage(const StepArgs& a, const uint4* w, const uint4* w2, const float* nw, const void* xin,
                             int n, int k, float* xs, float* red, Bar& bar) {
  constexpr int R = E == Epi::kSwiglu ? 2 : 1;
  constexpr int U = kU1 / R;
  const int lane = threadIdx.x % 32;
  const int W = gridDim.x * kWarpsB, gw = blockIdx.x * kWarpsB + threadIdx.x / 32;
  const int k8 = k / 8;
  const int steps = (k8 + 32 * U - 1) / (32 * U);
  const int rows = gw < n ? (n - gw + W - 1) / W : 0;
  const int total = rows * steps;
  const uint4* wr[R];
  wr[0] = w;
  if constexpr (R == 2) wr[1] = w2;
  // Two chunk buffers in ping-pong: a chunk's loads go out two chunks ahead of its use, so each
  // warp keeps 1-2 chunks (4-8 KB) in flight; both are issued before the barrier.
  uint4 ba[R][U], bb[R][U];
  auto load = [&](uint4 (&dst)[R][U], int c) {
    const int i = c / steps, st = c - i * steps;
    const size_t base = static_cast<size_t>(gw + i * W) * k8;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = st * 32 * U + u * 32 + lane;
#pragma unroll
      for (int r = 0; r < R; ++r) dst[r][u] = c < total && idx < k8 ? __ldcs(wr[r] + base + idx) : make_uint4(0, 0, 0, 0);
    }
  };
  load(ba, 0);
  load(bb, 1);
  bar.wait();
  // Stage the input: xs = x * nw (f32) and the block's sum of x^2 -> the norm's scale.
  const T* x = static_cast<const T*>(xin);
  float ss = 0.f;
#pragma unroll 4
  for (int i = threadIdx.x; i < k8; i += kThreadsB) {
    float f[8];
    unpack8<T>(__ldcg(reinterpret_cast<const uint4*>(x) + i), f);
    if constexpr (kY) {
      const float4 y0 = __ldcg(reinterpret_cast<const float4*>(a.y_acc) + 2 * i);
      const float4 y1 = __ldcg(reinterpret_cast<const float4*>(a.y_acc) + 2 * i + 1);
      const float y[8] = {y0.x, y0.y, y0.z, y0.w, y1.x, y1.y, y1.z, y1.w};
#pragma unroll
      for (int j = 0; j < 8; ++j) f[j] = to_f32(from_f32<T>(f[j] + y[j]));
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (nw != nullptr) {
        ss = fmaf(f[j], f[j], ss);
        f[j] *= __ldg(nw + 8 * i + j);
      }
      xs[8 * i + j] = f[j];
    }
  }
  float inv = 1.f;
  if (nw != nullptr) {
    for (int off = 16; off > 0; off /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (lane == 0) red[threadIdx.x / 32] = ss;
  }
  __syncthreads();
  if (nw != nullptr) {
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < kWarpsB; ++i) t += red[i];
    inv = rsqrtf(t / static_cast<float>(k) + a.eps);
  }
  const float4* xs4 = reinterpret_cast<const float4*>(xs);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  float resid = 0.f;  // kAdd: y[row], loaded by lane 0 when the row starts (not after its last chunk)
  // get(r, u): the chunk's 16 bytes of weight r, step u for this lane (registers or a slot).
  auto compute = [&](auto get, int c) {
    const int i = c / steps, st = c - i * steps;
    if constexpr (E == Epi::kAdd) {
      if (st == 0 && lane == 0) {
        resid = to_f32(__ldcg(static_cast<const T*>(a.x) + gw + i * W));
        if constexpr (kY) {
          resid = to_f32(from_f32<T>(resid + __ldcg(a.y_acc + gw + i * W)));
          a.y_acc[gw + i * W] = 0.f;  // every block staged it in gate/up, before this stage's barrier
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = st * 32 * U + u * 32 + lane;
      if (idx < k8) {
        const float4 x0 = xs4[2 * idx], x1 = xs4[2 * idx + 1];
        const float xf[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float wf[8];
          unpack8<T>(get(r, u), wf);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[r] = fmaf(wf[j], xf[j], acc[r]);
        }
      }
    }
    if (st != steps - 1) return;
#pragma unroll
    for (int r = 0; r < R; ++r)
      for (int off = 16; off > 0; off /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
    const int row = gw + i * W;
    if (lane == 0) {
      if constexpr (E == Epi::kSplit) {
        const float v = acc[0] * inv;
        if (row < a.q_dim) static_cast<T*>(a.q)[row] = from_f32<T>(v);
        else if (row < a.q_dim + a.kv_dim) static_cast<T*>(a.k)[row - a.q_dim] = from_f32<T>(v);
        else static_cast<T*>(a.v)[row - a.q_dim - a.kv_dim] = from_f32<T>(v);
      } else if constexpr (E == Epi::kAdd) {
        static_cast<T*>(a.x)[row] = from_f32<T>(resid + acc[0]);
      } else {
        const float g = acc[0] * inv, up = acc[R - 1] * inv;
        static_cast<T*>(a.hb)[row] = from_f32<T>(g / (1.f + expf(-g)) * up);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
  };
  const auto reg_a = [&](int r, int u) { return ba[r][u]; };
  const auto reg_b = [&](int r, int u) { return bb[r][u]; };
  {
    for (int c = 0; c < total; c += 2) {
      compute(reg_a, c);
      if (c + 2 < total) load(ba, c + 2);
      if (c + 1 >= total) break;
      compute(reg_b, c + 1);
      if (c + 3 < total) load(bb, c + 3);
    }
  }
}

// V: 0 = the barrier as one call (GridBarrier<false>); 1 = split into arrive and wait
// (GridBarrier<true>); 2 = 1 with one grid barrier a layer (diagnostics only: wrong results);
// 3 = 1 with attention_stage2; 5, 6 = 3 with chunks of 4, 2 loads a lane instead of 8 (fewer
// bytes in flight); 7 = 3 with attention and o_proj as one stage (attention_oproj_stage).
template <typename T, int HD, int V>
__global__ void __launch_bounds__(kThreadsB, 1) decode_step_kernel(const __grid_constant__ StepArgs a) {
  // Dynamic shared memory: xs [xs_floats] (a linear stage's input), the step's RoPE angles cos and
  // sin [HD / 2] each, the sequence's block table [table_entries] (constant through the step).
  extern __shared__ float xs[];
  __shared__ float red[kWarpsB];
  __shared__ unsigned warps_in;
  float* cs = xs + a.xs_floats;
  float* sn = cs + HD / 2;
  int32_t* table = reinterpret_cast<int32_t*>(sn + HD / 2);
  {
    const double pos = static_cast<double>(a.position[0]);
    for (int i = threadIdx.x; i < HD / 2; i += kThreadsB) {
      double sv, cv;
      sincos(pos * static_cast<double>(a.inv_freq[i]), &sv, &cv);  // as the rope kernels
      cs[i] = static_cast<float>(cv);
      sn[i] = static_cast<float>(sv);
    }
    const int entries = (a.start_pos[0] + a.block_size) / a.block_size;  // blocks holding keys 0..start_pos
    for (int i = threadIdx.x; i < entries; i += kThreadsB) table[i] = a.block_table[i];
    if (threadIdx.x == 0) warps_in = 0;
    if constexpr (V == 7) {  // o_proj's sums start at 0 (each layer's down stage clears them again)
      for (int i = blockIdx.x * kThreadsB + threadIdx.x; i < a.dim; i += gridDim.x * kThreadsB) a.y_acc[i] = 0.f;
    }
    if (V != 0) __syncthreads();  // warps_in is zero before any warp arrives
  }
  constexpr int kU = V == 5 ? 4 : V == 6 ? 2 : 8;
  GridBarrier<V != 0, V == 2> bar{a.barrier, &warps_in, 0, a.profile, 0, 0};  // its first wait orders the fills
  bar.arrive();
  for (int l = 0; l < a.num_layers; ++l) {
    const LayerPtrs& L = a.layers[l];
    linear_stage<T, Epi::kSplit, kU>(a, L.wqkv, nullptr, L.attn_norm, a.x, a.q_dim + 2 * a.kv_dim, a.dim, xs, red, bar);
    bar.arrive();
    if constexpr (V == 7) {
      attention_oproj_stage<T, HD>(a, l, cs, sn, table, xs, bar);  // its waits inside
      bar.arrive();
    } else {
      if constexpr (V >= 3) attention_stage2<T, HD>(a, l, cs, sn, table, xs, bar);  // its wait inside
      else attention_stage<T, HD>(a, l, cs, sn, table, xs, bar);
      bar.arrive();
      linear_stage<T, Epi::kAdd, kU>(a, L.wo, nullptr, nullptr, a.att, a.dim, a.q_dim, xs, red, bar);
      bar.arrive();
    }
    linear_stage<T, Epi::kSwiglu, kU, decltype(bar), V == 7>(a, L.wg, L.wu, L.ffn_norm, a.x, a.hidden, a.dim, xs, red,
                                                             bar);
    bar.arrive();
    linear_stage<T, Epi::kAdd, kU, decltype(bar), V == 7>(a, L.wd, nullptr, nullptr, a.hb, a.dim, a.hidden, xs, red, bar);
    if (l + 1 < a.num_layers) bar.arrive();
  }
  // The last block out resets the barrier for the next launch (every block has passed every
  // barrier once the exit count is complete).
  if (threadIdx.x == 0) {
    if (a.profile != nullptr && blockIdx.x == 0) a.profile[5 * a.num_layers] = global_ns();
    __threadfence();
    if (atomicAdd(a.barrier + 1, 1u) == gridDim.x - 1) {
      if constexpr (V == 7) {  // variant 7's head counters count up through the step
        for (int h = 0; h < a.num_heads; ++h) atomicExch(a.head_counters + h, 0);
      }
      atomicExch(a.barrier, 0u);
      atomicExch(a.barrier + 1, 0u);
    }
  }
}

using detail::aligned16;

bool weight_ok(const Tensor& w, int64_t n, int64_t k, DType act) {
  return w.ndim() == 2 && w.device() == Device::kCUDA && w.dtype() == act && w.dim(0) == n && w.dim(1) == k &&
         aligned16(w.data());
}

// Also the attention stage's per-warp partials ([kWarpsB][HD + 2]) live there.
int64_t xs_floats(const DecodeStepParams& p, int64_t hidden, int64_t dim) {
  return std::max({dim, hidden, p.num_heads * p.head_dim, kWarpsB * (p.head_dim + 2) + p.head_dim});
}
int64_t table_entries(const DecodeStepParams& p) { return (p.max_context_len + p.block_size - 1) / p.block_size; }
// xs, the RoPE angles and the block table (see the kernel).
size_t smem_bytes(const DecodeStepParams& p, int64_t hidden, int64_t dim) {
  return static_cast<size_t>(xs_floats(p, hidden, dim) + p.head_dim + table_entries(p)) * 4;
}

template <typename T, int HD>
Status launch(const StepArgs& a, size_t smem, int variant, Context& ctx) {
  auto kernel = variant == 1   ? decode_step_kernel<T, HD, 1>
                : variant == 2 ? decode_step_kernel<T, HD, 2>
                : variant == 3 ? decode_step_kernel<T, HD, 3>
                : variant == 5 ? decode_step_kernel<T, HD, 5>
                : variant == 6 ? decode_step_kernel<T, HD, 6>
                : variant == 7 ? decode_step_kernel<T, HD, 7>
                               : decode_step_kernel<T, HD, 0>;
  NB_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int per_sm = 0;
  NB_CUDA_RETURN_IF_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreadsB, smem));
  if (per_sm < 1) return resource_exhausted("decode_step: the kernel does not fit an SM");
  const int blocks = ctx.info().num_sms;  // one a SM (per_sm >= 1 checked)
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(kThreadsB);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = detail::as_stream(ctx.stream());
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  NB_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, kernel, a));
  return Status::Ok();
}

}  // namespace

// part_o, part_ml, then (16-byte aligned) y_acc [dim].
int64_t y_acc_offset(const DecodeStepParams& p, int64_t splits) {
  return (p.num_heads * splits * (p.head_dim + 2) + 3) / 4 * 4;
}

size_t decode_step_workspace_bytes(const DecodeStepParams& p) {
  const int64_t dim = p.layers.empty() || p.layers[0].wqkv.ndim() != 2 ? 0 : p.layers[0].wqkv.dim(1);
  return static_cast<size_t>(y_acc_offset(p, kMaxBlocks) + dim) * sizeof(float);
}

bool decode_step_applies(const DecodeStepParams& p, const Context& ctx) {
  if (p.layers.empty() || p.layers.size() > DecodeStepParams::kMaxLayers) return false;
  if (p.variant < 0 || p.variant > 7 || p.variant == 4) return false;
  if (p.act_dtype != DType::kF16 && p.act_dtype != DType::kBF16) return false;
  if (p.head_dim != 64 && p.head_dim != 128) return false;
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0 || p.block_size <= 0) return false;
  if (p.max_context_len < 1 || p.max_context_len > INT_MAX / 2) return false;
  const int64_t q_dim = p.num_heads * p.head_dim, kv_dim = p.num_kv_heads * p.head_dim;
  const DecodeStepLayer& l0 = p.layers[0];
  const int64_t dim = l0.wqkv.ndim() == 2 ? l0.wqkv.dim(1) : 0, hidden = l0.w_gate.ndim() == 2 ? l0.w_gate.dim(0) : 0;
  if (dim % 8 != 0 || hidden % 8 != 0 || q_dim % 8 != 0 || dim <= 0 || hidden <= 0) return false;
  if (smem_bytes(p, hidden, dim) > ctx.info().shared_per_block_optin) return false;
  if (decode_step_workspace_bytes(p) > ctx.workspace_bytes() || ctx.info().num_sms > kMaxBlocks) return false;
  for (const DecodeStepLayer& l : p.layers) {
    if (!weight_ok(l.wqkv, q_dim + 2 * kv_dim, dim, p.act_dtype) || !weight_ok(l.wo, dim, q_dim, p.act_dtype) ||
        !weight_ok(l.w_gate, hidden, dim, p.act_dtype) || !weight_ok(l.w_up, hidden, dim, p.act_dtype) ||
        !weight_ok(l.w_down, dim, hidden, p.act_dtype) || l.attn_norm == nullptr || l.ffn_norm == nullptr ||
        l.k_cache == nullptr || l.v_cache == nullptr) {
      return false;
    }
  }
  for (const void* ptr : {static_cast<const void*>(p.x), static_cast<const void*>(p.q), static_cast<const void*>(p.k),
                          static_cast<const void*>(p.v), static_cast<const void*>(p.att), static_cast<const void*>(p.hb)}) {
    if (!aligned16(ptr)) return false;
  }
  return true;
}

Status decode_step(const DecodeStepParams& p, Context& ctx) {
  if (!decode_step_applies(p, ctx)) {
    return invalid_argument("decode_step: needs 1.." + std::to_string(DecodeStepParams::kMaxLayers) +
                            " layers of f16/bf16 device weights in the activation dtype (K % 8 == 0), head_dim 64 or "
                            "128, 16-byte aligned buffers and enough workspace; run the fused ops layer by layer");
  }
  const DecodeStepLayer& l0 = p.layers[0];
  StepArgs a{};
  for (size_t i = 0; i < p.layers.size(); ++i) {
    const DecodeStepLayer& l = p.layers[i];
    a.layers[i] = {static_cast<const uint4*>(l.wqkv.data()), static_cast<const uint4*>(l.wo.data()),
                   static_cast<const uint4*>(l.w_gate.data()), static_cast<const uint4*>(l.w_up.data()),
                   static_cast<const uint4*>(l.w_down.data()), l.attn_norm, l.ffn_norm, l.k_cache, l.v_cache};
  }
  a.num_layers = static_cast<int>(p.layers.size());
  a.dim = static_cast<int>(l0.wqkv.dim(1));
  a.hidden = static_cast<int>(l0.w_gate.dim(0));
  a.q_dim = static_cast<int>(p.num_heads * p.head_dim);
  a.kv_dim = static_cast<int>(p.num_kv_heads * p.head_dim);
  a.num_heads = static_cast<int>(p.num_heads);
  a.num_kv_heads = static_cast<int>(p.num_kv_heads);
  a.group = static_cast<int>(p.num_heads / p.num_kv_heads);
  a.block_size = static_cast<int>(p.block_size);
  a.max_splits = ctx.info().num_sms;  // = the grid
  a.xs_floats = static_cast<int>(xs_floats(p, l0.w_gate.dim(0), l0.wqkv.dim(1)));
  a.eps = p.norm_eps;
  a.scale = p.scale;
  a.interleaved = p.rope_style == RopeStyle::kInterleaved;
  a.x = p.x;
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.att = p.att;
  a.hb = p.hb;
  a.block_table = p.block_table;
  a.start_pos = p.start_pos;
  a.position = p.position;
  a.slot = p.slot;
  a.inv_freq = p.inv_freq;
  a.part_o = static_cast<float*>(ctx.workspace());
  a.part_ml = a.part_o + p.num_heads * a.max_splits * p.head_dim;
  a.y_acc = a.part_o + y_acc_offset(p, a.max_splits);
  a.head_counters = ctx.sync_counters();
  a.barrier = reinterpret_cast<unsigned*>(ctx.sync_counters() + Context::kSyncCounters - 2);
  a.profile = reinterpret_cast<unsigned long long*>(p.profile);
  const size_t smem = smem_bytes(p, a.hidden, a.dim);
  if (p.act_dtype == DType::kF16) {
    return p.head_dim == 64 ? launch<__half, 64>(a, smem, p.variant, ctx) : launch<__half, 128>(a, smem, p.variant, ctx);
  }
  return p.head_dim == 64 ? launch<__nv_bfloat16, 64>(a, smem, p.variant, ctx)
                          : launch<__nv_bfloat16, 128>(a, smem, p.variant, ctx);
}

}  // namespace nb::cuda
