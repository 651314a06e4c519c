#include "engine/generate.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "engine/device_sampling.h"

namespace nb {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::kMaxTokens: return "length";
    case StopReason::kStopToken: return "stop";
    case StopReason::kContextFull: return "context_full";
    case StopReason::kCallback: return "cancelled";
  }
  return "unknown";
}

SequenceRunner::SequenceRunner(LlamaModel& model, int64_t capacity)
    : model_(model),
      capacity_(std::min(capacity, model.config().max_seq_len)),
      kv_(ContiguousKvCache::create(model, capacity_)) {
  logits_.resize(static_cast<size_t>(model.config().vocab_size));
}

Result<std::span<const float>> SequenceRunner::evaluate(std::span<const int32_t> context) {
  return evaluate_drawing(context, nullptr, nullptr);
}

Result<std::span<const float>> SequenceRunner::evaluate_drawing(std::span<const int32_t> context,
                                                                const SampleRowParams* row, int32_t* token) {
  if (context.empty()) return invalid_argument("the prompt is empty; give at least one token");
  if (!kv_.ok()) return kv_.status();
  if (static_cast<int64_t>(context.size()) > capacity_) {
    return out_of_range("the prompt has " + std::to_string(context.size()) + " tokens but the context holds " +
                        std::to_string(capacity_) + "; shorten the prompt or raise --ctx-size");
  }
  // Reuse the longest cached prefix; always recompute at least the last token to get its logits.
  int64_t common = 0;
  const int64_t limit = std::min<int64_t>(num_cached_, static_cast<int64_t>(context.size()) - 1);
  while (common < limit && tokens_[static_cast<size_t>(common)] == context[static_cast<size_t>(common)]) ++common;
  tokens_.assign(context.begin(), context.end());
  num_cached_ = common;
  last_reused_ = common;
  const auto total = static_cast<int64_t>(context.size());
  while (num_cached_ < total) {
    const int64_t n = std::min(model_.max_batch_tokens(), total - num_cached_);
    ForwardBatch b = ForwardBatch::single(
        context.subspan(static_cast<size_t>(num_cached_), static_cast<size_t>(n)), num_cached_, kv_->block_table());
    if (num_cached_ + n == total) {  // the last chunk's row is the one sampled
      b.sample_rows = row;
      b.sampled_tokens = token;
    }
    NB_RETURN_IF_ERROR(model_.forward(b, kv_->pools(), logits_.data()));
    num_cached_ += n;
  }
  return std::span<const float>(logits_);
}

Result<GenerateStats> SequenceRunner::generate(std::span<const int32_t> context, Sampler& sampler,
                                               const GenerateOptions& options,
                                               const std::function<bool(int32_t)>& on_token) {
  GenerateStats stats;
  stats.num_prompt_tokens = static_cast<int64_t>(context.size());
  auto t0 = std::chrono::steady_clock::now();
  // On a device the token may be drawn there (engine/device_sampling.h); `row` and `drawn` are then
  // the settings and result of each forward's draw, and the logits are not copied back.
  const bool on_device = device_sampling_enabled(model_) && device_sampling_supports(sampler.params(), false);
  SampleRowParams row;
  int32_t drawn = -1;
  if (on_device) row = device_sample_row(sampler);
  NB_ASSIGN_OR_RETURN(std::span<const float> logits,
                      evaluate_drawing(context, on_device ? &row : nullptr, on_device ? &drawn : nullptr));
  stats.num_reused_tokens = last_reused_;
  stats.prefill_seconds = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  const auto num_prompt = static_cast<size_t>(context.size());
  for (;;) {
    int32_t next = drawn;
    if (on_device) {
      NB_RETURN_IF_ERROR(device_sample_status(drawn));
    } else {
      NB_ASSIGN_OR_RETURN(next, sampler.sample(logits, TokenHistory{tokens_, num_prompt}));
    }
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) != options.stop_ids.end()) {
      stats.stop = StopReason::kStopToken;
      break;
    }
    tokens_.push_back(next);
    ++stats.num_generated;
    if (!on_token(next)) {
      stats.stop = StopReason::kCallback;
      break;
    }
    if (stats.num_generated >= options.max_new_tokens) {
      stats.stop = StopReason::kMaxTokens;
      break;
    }
    if (static_cast<int64_t>(tokens_.size()) >= capacity_) {
      stats.stop = StopReason::kContextFull;
      break;
    }
    ForwardBatch b = ForwardBatch::single(std::span<const int32_t>(&tokens_.back(), 1), num_cached_, kv_->block_table());
    if (on_device) {
      row = device_sample_row(sampler);
      b.sample_rows = &row;
      b.sampled_tokens = &drawn;
    }
    NB_RETURN_IF_ERROR(model_.forward(b, kv_->pools(), logits_.data()));
    ++num_cached_;
    logits = logits_;
  }
  stats.decode_seconds = seconds_since(t0);
  return stats;
}

}  // namespace nb
