// The backend op interface: one Params struct per op, passed by value. Every backend (cpu/ now,
// cuda/ later) implements the same ops with the same Params; backend/cpu/reference.cpp holds the
// plain reference each fast path and GPU kernel is tested against.
// Activations are f32 on the CPU backend. The CUDA backend also takes f16/bf16 activations: an
// `act_dtype` field (default f32) then says what the `float*` fields really point to (the pointers
// are reinterpreted; the CPU ops require f32). Shapes are written on the fields.
#pragma once
#include <cstdint>
#include <vector>

#include "core/status.h"
#include "backend/kv_format.h"
#include "core/tensor.h"
#include "model/config.h"

namespace nb {

class ThreadPool;

// y[m, n] = sum_k x[m, k] * W[n, k]   (W in any weight dtype: f32, f16, bf16, q8_0, q4_0, q4_1)
struct MatmulParams {
  Tensor weight;       // [N, K]
  const float* x;      // [M, K] row-major
  float* y;            // [M, N] row-major
  int64_t m;           // rows of x (tokens)
  DType act_dtype = DType::kF32;  // of x and y
};

// y = x / sqrt(mean(x^2) + eps) * weight, row by row. y may alias x.
struct RmsNormParams {
  const float* x;       // [rows, dim]
  const float* weight;  // [dim]
  float* y;             // [rows, dim]
  int64_t rows;
  int64_t dim;
  float eps;
  DType act_dtype = DType::kF32;  // of x and y (weight stays f32)
  // Optional, for W8A8 linears that read y: y's int8 codes [rows, dim] and scales [rows], as the
  // per-token quantizer makes them from y as stored (cpu::quantize_act_int8_row on the CPU,
  // cuda::quantize_act_int8 on the GPU). Null: not made.
  int8_t* y_codes = nullptr;
  float* y_scales = nullptr;
};

// Fused residual add + RMSNorm, row by row: x += residual (x is updated in place, rounded to
// act_dtype), then y = rms_norm(x) of that stored x, so y is exactly the norm of what the next
// block adds to.
struct AddRmsNormParams {
  float* x;               // [rows, dim] the residual stream, updated in place
  const float* residual;  // [rows, dim] the block output added to it
  const float* weight;    // [dim] f32
  float* y;               // [rows, dim] must not alias x or residual
  int64_t rows;
  int64_t dim;
  float eps;
  DType act_dtype = DType::kF32;  // of x, residual and y
  int8_t* y_codes = nullptr;      // optional int8 codes of y, as RmsNormParams::y_codes
  float* y_scales = nullptr;
};

// Rotates q and k in place. Token t has position positions[t].
struct RopeParams {
  float* q;                  // [num_tokens, num_heads, head_dim]
  float* k;                  // [num_tokens, num_kv_heads, head_dim]
  const int32_t* positions;  // [num_tokens]
  const float* inv_freq;     // [head_dim / 2]
  int64_t num_tokens;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  RopeStyle style;
  DType act_dtype = DType::kF32;  // of q and k
};

// out[i] = silu(gate[i]) * up[i]
struct SwigluParams {
  const float* gate;  // [n]
  const float* up;    // [n]
  float* out;         // [n]; may alias gate
  int64_t n;
  DType act_dtype = DType::kF32;  // of gate, up and out
  // Optional, for a W8A8 linear that reads out (down_proj): out's int8 codes [n] and scales [n / cols],
  // one scale per row of `cols` elements (a token's hidden vector), as the per-token quantizer makes
  // them from out as stored (as RmsNormParams::y_codes). Null: not made; cols is then unused.
  int8_t* out_codes = nullptr;
  float* out_scales = nullptr;
  int64_t cols = 0;
};

// Writes each new token's K and V rows into the paged cache: row t goes to slot slot_mapping[t]
// (slot = block * block_size + offset in block); a negative slot skips the row (padding).
// The cache layout is the one AttentionParams reads: [num_blocks, block_size, num_kv_heads, head_dim].
struct KvWriteParams {
  const float* k;               // [num_tokens, num_kv_heads, head_dim]
  const float* v;               // [num_tokens, num_kv_heads, head_dim]
  float* k_cache;               // [num_slots, num_kv_heads, head_dim]
  float* v_cache;               // [num_slots, num_kv_heads, head_dim]
  const int64_t* slot_mapping;  // [num_tokens]
  int64_t num_tokens;
  int64_t num_kv_heads;
  int64_t head_dim;
  DType act_dtype = DType::kF32;  // of k, v and both caches
  // Other than f32, the caches are pools in that format (backend/kv_format.h; k_cache and v_cache
  // point to a pool's first byte), quantized on write, with cache_block_size tokens a block. CUDA:
  // int8 and int4 (and f16 with f16 activations); f32 there means "in act_dtype".
  KvCacheDType cache_dtype = KvCacheDType::kF32;
  int64_t cache_block_size = 0;  // needed unless cache_dtype is f32
};

// Causal attention of one sequence's new tokens over its cached K/V, read through a block table.
// The cache must already hold K/V for positions [0, start_pos + num_tokens).
// A contiguous cache is the special case of one block of block_size = capacity.
struct AttentionParams {
  const float* q;              // [num_tokens, num_heads, head_dim]
  float* out;                  // [num_tokens, num_heads, head_dim]
  const float* k_cache;        // [num_blocks, block_size, num_kv_heads, head_dim]
  const float* v_cache;        // [num_blocks, block_size, num_kv_heads, head_dim]
  const int32_t* block_table;  // [ceil((start_pos + num_tokens) / block_size)] block ids
  int64_t block_size;
  int64_t num_tokens;          // new tokens (queries)
  int64_t start_pos;           // query t sits at position start_pos + t and sees [0, start_pos + t]
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  float scale;                 // usually 1 / sqrt(head_dim)
  // Other than f32 the caches are pools in that format (backend/kv_format.h; the pointers are the
  // pools' first bytes), dequantized inside attention.
  KvCacheDType cache_dtype = KvCacheDType::kF32;
};

// Attention for a batch of sequences at once (the GPU path: one launch for the whole batch).
// Sequence s owns query rows [query_start[s], query_start[s + 1]); those rows sit at positions
// start_pos[s] + i and see [0, start_pos[s] + i] (causal), through block table row s. It is exactly
// AttentionParams applied to each sequence in turn (cpu::ref::batch_attention does that).
// Decode is the case max_query_len == 1. Every pointer is in the backend's memory (device pointers
// on CUDA), except that max_query_len and max_context_len are host values used to plan the launch.
struct BatchAttentionParams {
  const float* q;               // [num_tokens, num_heads, head_dim]
  float* out;                   // [num_tokens, num_heads, head_dim]
  const float* k_cache;         // [num_blocks, block_size, num_kv_heads, head_dim]
  const float* v_cache;         // [num_blocks, block_size, num_kv_heads, head_dim]
  const int32_t* block_tables;  // [num_seqs, block_table_stride] block ids
  const int32_t* query_start;   // [num_seqs + 1] with query_start[0] = 0, query_start[num_seqs] = num_tokens
  const int32_t* start_pos;     // [num_seqs] positions already in the cache before the new tokens
  int64_t block_table_stride;   // entries per row of block_tables
  int64_t num_seqs;
  int64_t num_tokens;           // total query rows
  int64_t max_query_len;        // >= max over s of query_start[s + 1] - query_start[s]
  int64_t max_context_len;      // >= max over s of start_pos[s] + its query count
  int64_t block_size;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  float scale;                  // usually 1 / sqrt(head_dim)
  DType act_dtype = DType::kF32;  // of q, out, k_cache and v_cache
  // As AttentionParams::cache_dtype (pools of block_size tokens a block). CUDA: int8 and int4 (and
  // f16 with f16 activations); f32 there means "in act_dtype".
  KvCacheDType cache_dtype = KvCacheDType::kF32;
};

// out[r] = the index of row r's largest value, ties to the lowest index (the sampler's greedy rule);
// NaN never wins. Used for greedy decoding without copying logits back from a device.
struct ArgmaxParams {
  const float* x;  // [rows, cols] f32
  int32_t* out;    // [rows]
  int64_t rows;
  int64_t cols;
};

// out[r] = the token the engine's Sampler (engine/sampler.h) draws from row r of x with rows[r]'s
// settings when its RNG gives rows[r].uniform: the inverse CDF, in id order, of the distribution
// Sampler::distribution() computes (no penalties). Exactly:
//   z_i = x_i * (1.0f / temperature) in f32 (z = x when temperature == 1); m = max z;
//   w_i = sampling_exp(z_i - m) (backend/sampling_exp.h; 0 below -87, so the top token weighs 1);
//   order: z descending, ties by ascending id;
//   top-k (0 < k < vocab): keep the first k in that order;
//   top-p (< 1): of those, keep the shortest prefix in that order whose weight reaches
//     top_p x their total weight (the token crossing the threshold is kept; at least one);
//   min-p (> 0): drop kept tokens with w_i < min_p (relative to the top token's weight, 1);
//   draw: the first kept id, walking ids upward, at which the running sum of kept weights
//     exceeds uniform x (their total), sums in double.
// temperature 0 is greedy: the first maximum of x (uniform unused), as the Sampler.
// A row with a NaN or +inf logit, or only -inf, gets -1 (the Sampler's error cases).
// Sums are in double in an order of the backend's choosing, so backends may pick a neighbouring
// token only when uniform x total lies within rounding of a bucket edge (or the top-p mass of a
// prefix within rounding of its target).
struct SampleRowParams {
  float temperature = 1.0f;  // >= 0
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // (0, 1]; 1 = off
  float min_p = 0.0f;        // [0, 1]; 0 = off
  double uniform = 0.0;      // [0, 1): the draw
};
struct SampleRowsParams {
  const float* x;               // [num_rows, vocab] f32 logits
  const SampleRowParams* rows;  // [num_rows]
  int32_t* out;                 // [num_rows]
  int64_t num_rows;
  int64_t vocab;
};

// Next-token statistics of logits rows for evaluation (`nibble eval ppl|kld`). For row r, with
// log p = log_softmax(logits[r]) (the model) and log q = log_softmax(ref_logits[r]) (the reference):
//   out[4r + 0] = -log p[targets[r]]                           (negative log-likelihood)
//   out[4r + 1] = -log q[targets[r]]                           (0 without ref_logits)
//   out[4r + 2] = KL(q || p) = sum over v with q_v > 0 of q_v (log q_v - log p_v)   (0 without ref)
//   out[4r + 3] = 1 if both rows' argmax agree (ArgmaxParams' rule), else 0 (1 without ref)
// Exponentials, sums and logarithms in double; the order of the sums is the backend's.
struct LogitStatsParams {
  const float* logits = nullptr;      // [rows, vocab] f32
  const float* ref_logits = nullptr;  // [rows, vocab] f32, or null
  const int32_t* targets = nullptr;   // [rows], each in [0, vocab)
  double* out = nullptr;              // [rows, 4]
  int64_t rows = 0;
  int64_t vocab = 0;
};

// x[v] = H x[v], in place, for num_vectors vectors of dim floats (dim a power of two), where H is the
// orthonormal Walsh-Hadamard matrix H[i][j] = (-1)^popcount(i & j) / sqrt(dim); H = H^T = H^-1.
// The int8/int4 KV caches store rotated K and V (see backend/kv_format.h).
struct HadamardParams {
  float* x;  // [num_vectors, dim]
  int64_t num_vectors;
  int64_t dim;
  DType act_dtype = DType::kF32;  // of x (CUDA; the CPU ops take f32)
};

// out[t, :] = dequantized row ids[t] of the embedding table.
struct EmbeddingParams {
  Tensor table;        // [vocab, dim] any dtype
  const int32_t* ids;  // [num_tokens]
  float* out;          // [num_tokens, dim]
  int64_t num_tokens;
  DType act_dtype = DType::kF32;  // of out
};

// A decoder layer's linear fused with what surrounds it, for decode batches (a few rows):
//   xn = norm_weight ? x * rsqrt(mean(x^2) + norm_eps) * norm_weight : x     (f32, not rounded)
//   r  = xn . W^T                                                            [m, N]
//   kStore:   y = r
//   kAddInto: y += r                      (y: the residual stream; o_proj and down_proj)
//   kSwiglu:  y = silu(r) * (xn . W2^T)   (W = gate, W2 = up)
//   kSplit:   columns [0, n0) of r -> y [m, n0], [n0, n0 + n1) -> y1 [m, n1], the rest -> y2
//             [m, N - n0 - n1]            (q, k and v from one [q; k; v] weight)
enum class LinearEpilogue { kStore, kAddInto, kSwiglu, kSplit };
struct FusedLinearParams {
  Tensor weight;                       // [N, K]
  Tensor weight2;                      // [N, K], kSwiglu only
  const float* x;                      // [m, K]
  const float* norm_weight = nullptr;  // [K] f32, or null
  float norm_eps = 0.f;
  float* y;                            // see the epilogue
  float* y1 = nullptr;                 // kSplit
  float* y2 = nullptr;                 // kSplit
  int64_t n0 = 0, n1 = 0;              // kSplit
  int64_t m;
  LinearEpilogue epilogue = LinearEpilogue::kStore;
  DType act_dtype = DType::kF32;       // of x and every y
};

// RoPE on q and k (as RopeParams) and the rotated k with v written to the cache (as KvWriteParams,
// act-dtype cache only), in one pass: the decode step's glue between the q/k/v projection and
// attention. The CPU reference is rope then kv_write.
struct RopeKvWriteParams {
  RopeParams rope;
  KvWriteParams kv;  // kv.k must be rope.k
};

// A whole decode step of a Llama stack for ONE sequence and ONE token, layer after layer:
//   [attn_norm -> q|k|v] (FusedLinearParams kSplit), RoPE + KV write (RopeKvWriteParams), attention
//   over the sequence's cached keys (BatchAttentionParams, one sequence), [o_proj -> x +=],
//   [ffn_norm -> gate, up -> SwiGLU], [down_proj -> x +=].
// x is the residual stream (in and out); q, k, v, att and hb are scratch. The CPU reference runs
// exactly those ops in turn; the CUDA backend runs the whole stack as one persistent kernel (grid
// barriers between the stages instead of kernel boundaries).
struct DecodeStepLayer {
  Tensor wqkv;           // [q_dim + 2 kv_dim, dim]: q rows, then k, then v
  Tensor wo;             // [dim, q_dim]
  Tensor w_gate, w_up;   // [hidden, dim]
  Tensor w_down;         // [dim, hidden]
  const float* attn_norm = nullptr;  // [dim] f32
  const float* ffn_norm = nullptr;   // [dim] f32
  float* k_cache = nullptr;          // [num_blocks, block_size, num_kv_heads, head_dim], act dtype
  float* v_cache = nullptr;
  // 4-bit weights (kQGroup; on CUDA as cuda::upload_w4 packs them): q, k and v stay apart — wqkv
  // then holds the q rows [q_dim, dim] only, and these the k and v rows [kv_dim, dim]. Empty otherwise.
  Tensor wk, wv;
};
struct DecodeStepParams {
  static constexpr int kMaxLayers = 40;  // the CUDA kernel takes every layer's pointers by value
  std::vector<DecodeStepLayer> layers;
  float* x;                                  // [dim]
  float *q, *k, *v, *att, *hb;               // [q_dim], [kv_dim], [kv_dim], [q_dim], [hidden]
  const int32_t* block_table;                // the sequence's block ids
  const int32_t* start_pos;                  // [1]: tokens already cached (the new token's position)
  const int32_t* position;                   // [1]: the RoPE position
  const int64_t* slot;                       // [1]: the cache slot the new token's k/v go to
  const float* inv_freq;                     // [head_dim / 2]
  int64_t block_size = 0;
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t max_context_len = 0;               // host value: >= start_pos + 1 (plans the workspace)
  float norm_eps = 0.f;
  float scale = 0.f;                         // attention scale
  RopeStyle rope_style = RopeStyle::kHalf;
  DType act_dtype = DType::kF32;
  // Diagnostics (CUDA): null, or [5 num_layers + 1] device u64s that receive the time (ns) at which
  // each stage starts (q|k|v, attention, o_proj, gate/up, down of every layer) and the step ends;
  // with 4-bit weights [15 num_layers + 1]: then two a stage (W4 stages: input staged, sums done).
  uint64_t* profile = nullptr;
};

}  // namespace nb
