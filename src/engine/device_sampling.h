// Drawing tokens on the model's device (ForwardBatch::sample_rows) instead of copying each row's
// logits to the host for the Sampler. The device op draws by the Sampler's own rule (backend/ops.h,
// SampleRowsParams) with a uniform taken from the sequence's Sampler, so a seed gives the same
// tokens on either path (up to rounding when a uniform lands on a bucket edge).
//
// Used for a step only when every sampled row qualifies: no penalties (the op sees no history), no
// logprobs, no speculative drafts (verification needs the whole distribution). NIBBLE_GPU_SAMPLING=0
// turns it off, for comparison.
#pragma once
#include <cstdint>

#include "backend/ops.h"
#include "core/status.h"
#include "engine/sampler.h"
#include "model/llama.h"

namespace nb {

// The model runs on a device backend and NIBBLE_GPU_SAMPLING is not "0".
bool device_sampling_enabled(const LlamaModel& model);
// A request with these settings can have its tokens drawn by the device op.
bool device_sampling_supports(const SamplingParams& p, bool logprobs);
// Row r's settings for the sequence's next token. Takes the one uniform Sampler::sample() would take
// for it (none when greedy), so the sequence's RNG advances as on the host path.
SampleRowParams device_sample_row(Sampler& sampler);
// OK for a drawn token; for -1 (invalid logits) the Sampler's error.
Status device_sample_status(int32_t token);

}  // namespace nb
