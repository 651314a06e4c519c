#include "tools/eval_windows.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "backend/cpu/cpu_ops.h"
#include "engine/contiguous_kv.h"

namespace nb::tools {

std::vector<EvalWindow> eval_windows(int64_t n, int64_t ctx, int64_t stride, int64_t max_windows, int64_t every) {
  std::vector<EvalWindow> out;
  int64_t prev_end = 0, index = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + ctx, n);
    const int64_t trg = end - prev_end;  // new tokens this window scores
    EvalWindow w{begin, end, std::max<int64_t>(1, (end - begin) - trg)};
    if (end - begin >= 2 && index++ % std::max<int64_t>(every, 1) == 0) out.push_back(w);
    prev_end = end;
    if (end == n || (max_windows > 0 && static_cast<int64_t>(out.size()) >= max_windows)) break;
  }
  return out;
}

Status run_window(LlamaModel& model, LlamaModel* ref, ThreadPool& pool, const std::vector<int32_t>& tokens,
                  const EvalWindow& w, const StatsFn& fn) {
  const int64_t len = w.end - w.begin;
  const int64_t vocab = model.config().vocab_size;
  const bool on_device = model.backend() != nullptr && (ref == nullptr || ref->backend() != nullptr);
  NB_ASSIGN_OR_RETURN(ContiguousKvCache kv, ContiguousKvCache::create(model, len));
  std::optional<ContiguousKvCache> ref_kv;
  if (ref != nullptr) {
    NB_ASSIGN_OR_RETURN(ContiguousKvCache k, ContiguousKvCache::create(*ref, len));
    ref_kv.emplace(std::move(k));
  }
  const int64_t chunk = std::min(model.max_batch_tokens(), ref != nullptr ? ref->max_batch_tokens() : INT64_MAX);
  std::vector<float> logits, ref_logits;
  if (!on_device) {
    logits.resize(static_cast<size_t>(chunk * vocab));
    if (ref != nullptr) ref_logits.resize(logits.size());
  }
  std::vector<int32_t> targets(static_cast<size_t>(chunk));
  std::vector<double> stats(static_cast<size_t>(chunk * 4));
  // Positions len-1 predicts nothing inside the window: feed tokens [0, len - 1) only.
  for (int64_t pos = 0; pos < len - 1; pos += chunk) {
    const int64_t n = std::min(chunk, len - 1 - pos);
    const std::span<const int32_t> ids(tokens.data() + w.begin + pos, static_cast<size_t>(n));
    ForwardBatch b = ForwardBatch::single(ids, pos, kv.block_table(), /*all_logits=*/true);
    b.logits_on_device = on_device;
    NB_RETURN_IF_ERROR(model.forward(b, kv.pools(), on_device ? nullptr : logits.data()));
    if (ref != nullptr) {
      ForwardBatch rb = ForwardBatch::single(ids, pos, ref_kv->block_table(), /*all_logits=*/true);
      rb.logits_on_device = on_device;
      NB_RETURN_IF_ERROR(ref->forward(rb, ref_kv->pools(), on_device ? nullptr : ref_logits.data()));
    }
    const int64_t lo = std::max(pos, w.first_scored - 1);  // the first scored row of this chunk
    if (lo >= pos + n) continue;
    for (int64_t r = 0; r < n; ++r) targets[static_cast<size_t>(r)] = tokens[static_cast<size_t>(w.begin + pos + r + 1)];
    if (on_device) {
      // All n rows (the device computes them in one launch); the unscored ones are dropped below.
      NB_RETURN_IF_ERROR(model.logit_stats(targets.data(), n, ref, stats.data()));
    } else {
      pool.parallel_for(n - (lo - pos), [&](int64_t a, int64_t e) {
        const int64_t r0 = lo - pos + a;
        cpu::ref::logit_stats({logits.data() + r0 * vocab, ref != nullptr ? ref_logits.data() + r0 * vocab : nullptr,
                               targets.data() + r0, stats.data() + r0 * 4, e - a, vocab});
      });
    }
    fn(pos + n - lo, stats.data() + (lo - pos) * 4);
  }
  return Status::Ok();
}

}  // namespace nb::tools
