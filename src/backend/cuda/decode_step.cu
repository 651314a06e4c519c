// The whole decode step of a Llama stack for one sequence and one token as ONE persistent kernel
// (DecodeStepParams; the CPU reference runs the fused ops in turn). Batch-1 decode reads every
// weight once per token, so its floor is bytes / bandwidth; with one kernel per op (~190 a 7B token)
// each kernel's launch, ramp-up and drain left the memory idle for ~0.9 ms of a 4.5 ms token.
// Here the grid (one block of 16 warps an SM) stays resident for the whole step and moves from stage
// to stage through grid barriers; before a linear stage waits at its barrier, every warp has
// already issued the loads of its first weights (weights never depend on the step), so the weight
// stream runs on across stage boundaries.
//
// Measured (H200, 7B f16 batch 1, context 512-576, gpu.sh 7bab; docs/decode_step.md has the
// history): 3.87-3.92 ms a token, 80.6-82.2% of the roofline, against 4.04-4.10 ms (78.0-78.8%)
// for stop 13's step in the same runs; the layer-by-layer fused kernels take ~4.5 ms.
// 4-bit weights (upload_w4) run W4 linear stages instead (decode_step_w4.cuh: 7B RTN W4 g128
// 2.44-2.46 ms, 1.58x the f16 step's tokens/s in the same run).
// NIBBLE_DECODE_STEP_PROFILE=1 prints where a layer's time goes (µs): q|k|v 26.4 (its bytes at the
// copy bandwidth: 23.7), attention 8.9, o_proj 11.5 (7.9), gate/up 46.9 (42.5), down 23.4 (21.2).
//
// Tried on the H200 and removed, each slower in the same run (code in git history; figures in
// docs/decode_step.md): a balanced chunk split of the linear stages; o_proj's first chunks streamed
// into shared memory before attention's barrier; o_proj + gate/up prefetched into L2 during
// attention; two more chunks a warp in flight through shared-memory slots (62%); chunks of 4 or 2
// loads a lane instead of 8 (77%, 60%); attention's partials merged in o_proj's input staging
// (attention -2.5 µs, o_proj +2.2 µs); attention and o_proj as one stage with a per-head wait and
// f32 atomics into the residual (75%).
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/decode_step.cuh"
#include "backend/cuda/decode_step_w4.cuh"
#include "backend/w4_layout.h"
#include "core/group_quant.h"

namespace nb::cuda {

using detail::from_f32;
using detail::to_f32;

namespace {

using namespace step;  // NOLINT: the kernel's pieces (decode_step.cuh)


// One linear stage: rows gw, gw + W, ... of the weight(s), each a warp streaming the row in chunks
// of U 16-byte loads per lane, over the flattened (row, step) sequence so that the next row's
// loads go out before the current one ends. The first two chunks are issued before the stage's
// grid barrier. The input (normed when nw) is staged in shared memory as f32 by each block.
template <typename T, Epi E>
__device__ void linear_stage(const StepArgs& a, const uint4* w, const uint4* w2, const float* nw, const void* xin,
                             int n, int k, float* xs, float* red, GridBarrier& bar) {
  constexpr int R = E == Epi::kSwiglu ? 2 : 1;
  constexpr int U = 8 / R;
  const int lane = threadIdx.x % 32;
  // Warps numbered across the blocks first: the rows left over when n % W != 0 (a stage's tail) go to
  // warps of every SM, not to all warps of the first SMs.
  const int W = gridDim.x * kWarpsB, gw = (threadIdx.x / 32) * gridDim.x + blockIdx.x;
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
  auto compute = [&](const uint4 (&wv)[R][U], int c) {
    const int i = c / steps, st = c - i * steps;
    if constexpr (E == Epi::kAdd) {
      if (st == 0 && lane == 0) resid = to_f32(__ldcg(static_cast<const T*>(a.x) + gw + i * W));
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
          unpack8<T>(wv[r][u], wf);
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
  for (int c = 0; c < total; c += 2) {
    compute(ba, c);
    if (c + 2 < total) load(ba, c + 2);
    if (c + 1 >= total) break;
    compute(bb, c + 1);
    if (c + 3 < total) load(bb, c + 3);
  }
}

template <typename T, int HD, bool W4, int WU = kW4Units>
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
    __syncthreads();  // warps_in is zero before any warp arrives
  }
  GridBarrier bar{a.barrier, &warps_in, 0, a.profile, 0};  // its first wait orders the fills
  bar.arrive();
  for (int l = 0; l < a.num_layers; ++l) {
    const LayerPtrs& L = a.layers[l];
    if constexpr (W4) {
      // Two parameter regions in turn: q|k|v and gate/up use the first, o_proj and down the second.
      w4_stage<T, Epi::kSplit, WU>(a, w4_stage_of(a, 0, L.wqkv, L.wk, L.wv), L.attn_norm, a.x, xs, 0, red, bar);
      bar.arrive();
      attention_stage<T, HD>(a, l, cs, sn, table, xs, bar);
      bar.arrive();
      w4_stage<T, Epi::kAdd, WU>(a, w4_stage_of(a, 1, L.wo, L.wo, L.wo), nullptr, a.att, xs, 1, red, bar);
      bar.arrive();
      w4_stage<T, Epi::kSwiglu, WU>(a, w4_stage_of(a, 2, L.wg, L.wu, L.wu), L.ffn_norm, a.x, xs, 0, red, bar);
      bar.arrive();
      w4_stage<T, Epi::kAdd, WU>(a, w4_stage_of(a, 3, L.wd, L.wd, L.wd), nullptr, a.hb, xs, 1, red, bar);
    } else {
      linear_stage<T, Epi::kSplit>(a, L.wqkv, nullptr, L.attn_norm, a.x, a.q_dim + 2 * a.kv_dim, a.dim, xs, red, bar);
      bar.arrive();
      attention_stage<T, HD>(a, l, cs, sn, table, xs, bar);  // its wait inside
      bar.arrive();
      linear_stage<T, Epi::kAdd>(a, L.wo, nullptr, nullptr, a.att, a.dim, a.q_dim, xs, red, bar);
      bar.arrive();
      linear_stage<T, Epi::kSwiglu>(a, L.wg, L.wu, L.ffn_norm, a.x, a.hidden, a.dim, xs, red, bar);
      bar.arrive();
      linear_stage<T, Epi::kAdd>(a, L.wd, nullptr, nullptr, a.hb, a.dim, a.hidden, xs, red, bar);
    }
    if (l + 1 < a.num_layers) bar.arrive();
  }
  // The last block out resets the barrier for the next launch (every block has passed every
  // barrier once the exit count is complete).
  if (threadIdx.x == 0) {
    if (a.profile != nullptr && blockIdx.x == 0) a.profile[5 * a.num_layers] = global_ns();
    __threadfence();
    if (atomicAdd(a.barrier + 1, 1u) == gridDim.x - 1) {
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

// A 4-bit weight as cuda::upload_w4 makes it (backend/w4_layout.h: K a multiple of 64, groups of
// whole 64-input chunks), n rows in whole tiles of 16, with the step's group size.
bool w4_weight_ok(const Tensor& w, int64_t n, int64_t k, int64_t group) {
  const GroupQuant* q = w.dtype() == DType::kQGroup ? w.group_quant() : nullptr;
  return q != nullptr && q->bits == 4 && !q->act_int8 && q->g_idx.empty() && w.ndim() == 2 &&
         w.device() == Device::kCUDA && w.dim(0) == n && w.dim(1) == k && n % 16 == 0 && k % 64 == 0 &&
         q->group_size == group && (group < 0 || group % 64 == 0) && aligned16(w.data());
}

bool is_w4(const DecodeStepParams& p) { return !p.layers.empty() && p.layers[0].wqkv.dtype() == DType::kQGroup; }

// The four W4 linear stages of a layer (q|k|v, o_proj, gate/up, down): the rows of each weight
// read in the stage (0 = none), the inputs, and how many tiles a block takes together (gate/up:
// pairs, one of each). The shared-memory plan and the kernel's stage table both come from here.
struct W4StageShape {
  int64_t rows[3];
  int64_t k;
  int64_t together;
  // The most tiles one block takes in the stage (whole groups of `together`).
  int64_t block_tiles(int blocks) const {
    const int64_t sets = (rows[0] + rows[1] + rows[2]) / 16 / together;
    return (sets + blocks - 1) / blocks * together;
  }
};
std::array<W4StageShape, 4> w4_stages(const DecodeStepParams& p, int64_t dim, int64_t hidden) {
  const int64_t q_dim = p.num_heads * p.head_dim, kv_dim = p.num_kv_heads * p.head_dim;
  return {{{{q_dim, kv_dim, kv_dim}, dim, 1}, {{dim, 0, 0}, q_dim, 1}, {{hidden, hidden, 0}, dim, 2},
           {{dim, 0, 0}, hidden, 1}}};
}

// Words of one W4 parameter region: the most tiles a block takes in a stage x groups x 16 rows.
int64_t w4_param_words(const DecodeStepParams& p, int64_t dim, int64_t hidden, int blocks) {
  const int64_t group = p.layers[0].wqkv.group_quant()->group_size;
  int64_t most = 0;
  for (const W4StageShape& st : w4_stages(p, dim, hidden)) {
    const int64_t g = group < 0 ? 1 : (st.k + group - 1) / group;
    most = std::max(most, st.block_tiles(blocks) * g * 16);
  }
  return most;
}

// Also the attention stage's per-warp partials ([kWarpsB][HD + 2]) live there.
int64_t xs_floats(const DecodeStepParams& p, int64_t hidden, int64_t dim) {
  return std::max({dim, hidden, p.num_heads * p.head_dim, kWarpsB * (p.head_dim + 2) + p.head_dim});
}
int64_t table_entries(const DecodeStepParams& p) { return (p.max_context_len + p.block_size - 1) / p.block_size; }
// The most tiles one warp touches in a W4 stage (its units: an even share of its block's).
int64_t w4_part_tiles(const DecodeStepParams& p, int64_t dim, int64_t hidden, int blocks) {
  int64_t most = 0;
  for (const W4StageShape& st : w4_stages(p, dim, hidden)) {
    const int64_t nt = st.block_tiles(blocks), chunks = st.k / 64;
    most = std::max(most, std::min(nt, (nt * chunks + kWarpsB - 1) / kWarpsB / chunks + 2));
  }
  return most;
}

// xs, the RoPE angles and the block table (see the kernel); then, for W4 weights, from a 16-byte
// boundary, the two parameter regions and the warps' tile sums [kWarpsB][part_tiles][16].
int64_t ps_offset(const DecodeStepParams& p, int64_t hidden, int64_t dim) {
  return (xs_floats(p, hidden, dim) + p.head_dim + table_entries(p) + 3) / 4 * 4;
}
size_t smem_bytes(const DecodeStepParams& p, int64_t hidden, int64_t dim, int blocks) {
  if (!is_w4(p)) return static_cast<size_t>(xs_floats(p, hidden, dim) + p.head_dim + table_entries(p)) * 4;
  return static_cast<size_t>(ps_offset(p, hidden, dim) + 2 * w4_param_words(p, dim, hidden, blocks) +
                             kWarpsB * w4_part_tiles(p, dim, hidden, blocks) * 16) *
         4;
}

template <typename T, int HD, bool W4, int WU = kW4Units>
Status launch(const StepArgs& a, size_t smem, Context& ctx) {
  auto kernel = decode_step_kernel<T, HD, W4, WU>;
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

size_t decode_step_workspace_bytes(const DecodeStepParams& p) {
  const int64_t splits = kMaxBlocks;
  return static_cast<size_t>(p.num_heads * splits * (p.head_dim + 2)) * sizeof(float);
}

bool decode_step_applies(const DecodeStepParams& p, const Context& ctx) {
  if (p.layers.empty() || p.layers.size() > DecodeStepParams::kMaxLayers) return false;
  if (p.act_dtype != DType::kF16 && p.act_dtype != DType::kBF16) return false;
  if (p.head_dim != 64 && p.head_dim != 128) return false;
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0 || p.block_size <= 0) return false;
  if (p.max_context_len < 1 || p.max_context_len > INT_MAX / 2) return false;
  const int64_t q_dim = p.num_heads * p.head_dim, kv_dim = p.num_kv_heads * p.head_dim;
  const DecodeStepLayer& l0 = p.layers[0];
  const int64_t dim = l0.wqkv.ndim() == 2 ? l0.wqkv.dim(1) : 0, hidden = l0.w_gate.ndim() == 2 ? l0.w_gate.dim(0) : 0;
  if (dim % 8 != 0 || hidden % 8 != 0 || q_dim % 8 != 0 || dim <= 0 || hidden <= 0) return false;
  const bool w4 = is_w4(p);
  if (w4 && (l0.wqkv.group_quant() == nullptr || ctx.info().major < 8)) return false;  // W4: mma.m16n8k16
  if (smem_bytes(p, hidden, dim, ctx.info().num_sms) > ctx.info().shared_per_block_optin) return false;
  if (decode_step_workspace_bytes(p) > ctx.workspace_bytes() || ctx.info().num_sms > kMaxBlocks) return false;
  const int64_t group = w4 ? l0.wqkv.group_quant()->group_size : 0;
  for (const DecodeStepLayer& l : p.layers) {
    const bool ok = w4 ? w4_weight_ok(l.wqkv, q_dim, dim, group) && w4_weight_ok(l.wk, kv_dim, dim, group) &&
                             w4_weight_ok(l.wv, kv_dim, dim, group) && w4_weight_ok(l.wo, dim, q_dim, group) &&
                             w4_weight_ok(l.w_gate, hidden, dim, group) && w4_weight_ok(l.w_up, hidden, dim, group) &&
                             w4_weight_ok(l.w_down, dim, hidden, group)
                       : weight_ok(l.wqkv, q_dim + 2 * kv_dim, dim, p.act_dtype) &&
                             weight_ok(l.wo, dim, q_dim, p.act_dtype) && weight_ok(l.w_gate, hidden, dim, p.act_dtype) &&
                             weight_ok(l.w_up, hidden, dim, p.act_dtype) && weight_ok(l.w_down, dim, hidden, p.act_dtype);
    if (!ok || l.attn_norm == nullptr || l.ffn_norm == nullptr || l.k_cache == nullptr || l.v_cache == nullptr) {
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
                            " layers of f16/bf16 device weights in the activation dtype (K % 8 == 0) or of 4-bit "
                            "weights from cuda::upload_w4 (one group size, q, k and v apart), head_dim 64 or "
                            "128, 16-byte aligned buffers and enough workspace; run the fused ops layer by layer");
  }
  const DecodeStepLayer& l0 = p.layers[0];
  StepArgs a{};
  for (size_t i = 0; i < p.layers.size(); ++i) {
    const DecodeStepLayer& l = p.layers[i];
    a.layers[i] = {static_cast<const uint4*>(l.wqkv.data()), static_cast<const uint4*>(l.wo.data()),
                   static_cast<const uint4*>(l.w_gate.data()), static_cast<const uint4*>(l.w_up.data()),
                   static_cast<const uint4*>(l.w_down.data()), static_cast<const uint4*>(l.wk.data()),
                   static_cast<const uint4*>(l.wv.data()), l.attn_norm, l.ffn_norm, l.k_cache, l.v_cache};
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
  a.head_counters = ctx.sync_counters();
  a.barrier = reinterpret_cast<unsigned*>(ctx.sync_counters() + Context::kSyncCounters - 2);
  a.profile = reinterpret_cast<unsigned long long*>(p.profile);
  const int blocks = ctx.info().num_sms;
  const size_t smem = smem_bytes(p, a.hidden, a.dim, blocks);
  if (is_w4(p)) {
    const int64_t group = l0.wqkv.group_quant()->group_size;
    const std::array<W4StageShape, 4> stages = w4_stages(p, a.dim, a.hidden);
    for (int i = 0; i < 4; ++i) {
      W4Dims& d = a.w4[i];
      d.k = static_cast<int>(stages[i].k);
      d.group = static_cast<int>(group < 0 ? d.k : group);
      for (int j = 0; j < 3; ++j) {
        const int64_t n = stages[i].rows[j];
        const int64_t n_pad = (n + W4Layout::kRowAlign - 1) / W4Layout::kRowAlign * W4Layout::kRowAlign;
        d.tiles[j] = static_cast<int>(n / 16);
        d.param_offset[j] = n_pad * d.k / 2;  // backend/w4_layout.h: the params follow the codes
      }
    }
    a.ps_offset = static_cast<int>(ps_offset(p, a.hidden, a.dim));
    a.ps_words = static_cast<int>(w4_param_words(p, a.dim, a.hidden, blocks));
    a.part_offset = a.ps_offset + 2 * a.ps_words;
    a.part_tiles = static_cast<int>(w4_part_tiles(p, a.dim, a.hidden, blocks));
    if (p.act_dtype == DType::kF16) {
      const char* units = std::getenv("NIBBLE_W4_STEP_UNITS");  // comparison switch (decode_step_w4.cuh)
      if (units != nullptr && std::string(units) == "6") {
        return p.head_dim == 64 ? launch<__half, 64, true, 6>(a, smem, ctx) : launch<__half, 128, true, 6>(a, smem, ctx);
      }
      return p.head_dim == 64 ? launch<__half, 64, true>(a, smem, ctx) : launch<__half, 128, true>(a, smem, ctx);
    }
    return p.head_dim == 64 ? launch<__nv_bfloat16, 64, true>(a, smem, ctx)
                            : launch<__nv_bfloat16, 128, true>(a, smem, ctx);
  }
  if (p.act_dtype == DType::kF16) {
    return p.head_dim == 64 ? launch<__half, 64, false>(a, smem, ctx) : launch<__half, 128, false>(a, smem, ctx);
  }
  return p.head_dim == 64 ? launch<__nv_bfloat16, 64, false>(a, smem, ctx)
                          : launch<__nv_bfloat16, 128, false>(a, smem, ctx);
}

}  // namespace nb::cuda
