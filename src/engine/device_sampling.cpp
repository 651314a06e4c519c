#include "engine/device_sampling.h"

#include <cstdlib>
#include <cstring>

namespace nb {

bool device_sampling_enabled(const LlamaModel& model) {
  const char* env = std::getenv("NIBBLE_GPU_SAMPLING");
  return model.backend() != nullptr && (env == nullptr || std::strcmp(env, "0") != 0);
}

bool device_sampling_supports(const SamplingParams& p, bool logprobs) {
  return !logprobs && p.repetition_penalty == 1.0f && p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f;
}

SampleRowParams device_sample_row(Sampler& sampler) {
  const SamplingParams& p = sampler.params();
  SampleRowParams row;
  row.temperature = p.temperature;
  row.top_k = p.top_k;
  row.top_p = p.top_p;
  row.min_p = p.min_p;
  row.uniform = p.temperature == 0.0f ? 0.0 : sampler.uniform();
  return row;
}

Status device_sample_status(int32_t token) {
  if (token >= 0) return Status::Ok();
  return invalid_argument("logits contain NaN or +inf, or are all -inf; the model forward produced invalid values");
}

}  // namespace nb
