// Perplexity / KL-divergence evaluation windows shared by `nibble eval ppl` and `nibble eval kld`.
//
// Windows follow Hugging Face's perplexity recipe (transformers docs, "Perplexity of fixed-length
// models"): window w covers tokens [begin, end) with end = min(begin + ctx, N); it scores the tokens
// after the previous window's end (all of them when stride == ctx: non-overlapping windows), never
// its own first token, which has no context inside the window. begin advances by stride; the loop
// stops after the window that reaches N. (llama.cpp's perplexity instead scores only the second half
// of each window: its numbers are not comparable.)
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "model/llama.h"

namespace nb::tools {

struct EvalWindow {
  int64_t begin = 0, end = 0;  // tokens [begin, end) are fed
  int64_t first_scored = 0;    // window-relative index of the first scored token (>= 1)
};
// The windows for n tokens; every > 1 keeps windows 0, every, 2 every, ... only (a subset spread over
// the text; each still scores what it would in the full sequence); then max_windows <= 0 means all.
std::vector<EvalWindow> eval_windows(int64_t n, int64_t ctx, int64_t stride, int64_t max_windows, int64_t every = 1);

// Runs `model` over the window with a fresh KV cache, chunk by chunk — and `ref`, when not null,
// over the same tokens, chunk for chunk — and calls fn(count, stats) for each chunk's scored
// positions (window-relative [first_scored - 1, len - 1): their next token is the target), in
// order: stats holds count rows of LogitStatsParams' four numbers (backend/ops.h: NLL, the ref's
// NLL, KL(ref || model), top-1 agreement). When the model (and ref) run on a device the logits stay
// there (LlamaModel::logit_stats); otherwise they come to the host and cpu::ref::logit_stats runs
// over `pool`.
using StatsFn = std::function<void(int64_t count, const double* stats)>;
Status run_window(LlamaModel& model, LlamaModel* ref, ThreadPool& pool, const std::vector<int32_t>& tokens,
                  const EvalWindow& w, const StatsFn& fn);

}  // namespace nb::tools
