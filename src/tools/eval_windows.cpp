#include "tools/eval_windows.h"

#include <algorithm>
#include <cmath>

#include "engine/contiguous_kv.h"

namespace nb::tools {

std::vector<EvalWindow> eval_windows(int64_t n, int64_t ctx, int64_t stride, int64_t max_windows) {
  std::vector<EvalWindow> out;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + ctx, n);
    const int64_t trg = end - prev_end;  // new tokens this window scores
    EvalWindow w{begin, end, std::max<int64_t>(1, (end - begin) - trg)};
    if (end - begin >= 2) out.push_back(w);
    prev_end = end;
    if (end == n || (max_windows > 0 && static_cast<int64_t>(out.size()) >= max_windows)) break;
  }
  return out;
}

Status run_window(LlamaModel& model, const std::vector<int32_t>& tokens, const EvalWindow& w, const ChunkFn& fn) {
  const int64_t len = w.end - w.begin;
  const int64_t vocab = model.config().vocab_size;
  NB_ASSIGN_OR_RETURN(ContiguousKvCache kv, ContiguousKvCache::create(model, len));
  const int64_t chunk = LlamaModel::kMaxChunkTokens;
  std::vector<float> logits(static_cast<size_t>(chunk * vocab));
  // Positions len-1 predicts nothing inside the window: feed tokens [0, len - 1) only.
  for (int64_t pos = 0; pos < len - 1; pos += chunk) {
    const int64_t n = std::min(chunk, len - 1 - pos);
    const ForwardBatch b = ForwardBatch::single(std::span<const int32_t>(tokens.data() + w.begin + pos, static_cast<size_t>(n)),
                                                pos, kv.block_table(), /*all_logits=*/true);
    NB_RETURN_IF_ERROR(model.forward(b, kv.pools(), logits.data()));
    const int64_t lo = std::max(pos, w.first_scored - 1);
    if (lo < pos + n) fn(lo, pos + n - lo, logits.data() + (lo - pos) * vocab);
  }
  return Status::Ok();
}

void log_softmax(float* row, int64_t n) {
  float mx = row[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, row[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(row[i] - mx);  // float exp, double sum
  const auto lse = static_cast<float>(mx + std::log(sum));
  for (int64_t i = 0; i < n; ++i) row[i] -= lse;
}

}  // namespace nb::tools
