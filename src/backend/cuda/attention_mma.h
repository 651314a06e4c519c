// Internal to backend/cuda (attention.cu dispatches to it): prefill attention on tensor cores
// (attention_mma.cu). batch_attention's semantics and outputs (within f16/bf16 rounding of the
// output; P is carried at about twice the dtype's precision), for the common case only.
#pragma once
#include "backend/cuda/device.h"
#include "backend/ops.h"
#include "core/status.h"

namespace nb::cuda {

// Whether attention_mma takes p: a batch with a sequence of more than one query token (prefill,
// chunked prefill, draft verification), f16/bf16 activations with the cache in the same dtype,
// head_dim 64 or 128, 16-byte aligned q / k_cache / v_cache. NIBBLE_ATTN_MMA=0 turns it off
// (read once; a comparison switch).
bool attention_mma_applies(const BatchAttentionParams& p);
Status attention_mma(const BatchAttentionParams& p, Context& ctx);

}  // namespace nb::cuda
