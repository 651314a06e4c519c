// The backend op interface: one Params struct per op, passed by value. Every backend (cpu/ now,
// cuda/ later) implements the same ops with the same Params; backend/cpu/reference.cpp holds the
// plain reference each fast path and GPU kernel is tested against.
// Activations are f32 on the CPU backend. Shapes are written on the fields.
#pragma once
#include <cstdint>

#include "core/status.h"
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
};

// y = x / sqrt(mean(x^2) + eps) * weight, row by row. y may alias x.
struct RmsNormParams {
  const float* x;       // [rows, dim]
  const float* weight;  // [dim]
  float* y;             // [rows, dim]
  int64_t rows;
  int64_t dim;
  float eps;
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
};

// out[i] = silu(gate[i]) * up[i]
struct SwigluParams {
  const float* gate;  // [n]
  const float* up;    // [n]
  float* out;         // [n]; may alias gate
  int64_t n;
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
};

// out[t, :] = dequantized row ids[t] of the embedding table.
struct EmbeddingParams {
  Tensor table;        // [vocab, dim] any dtype
  const int32_t* ids;  // [num_tokens]
  float* out;          // [num_tokens, dim]
  int64_t num_tokens;
};

}  // namespace nb
