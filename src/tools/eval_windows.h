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
// The windows for n tokens; max_windows <= 0 means all.
std::vector<EvalWindow> eval_windows(int64_t n, int64_t ctx, int64_t stride, int64_t max_windows);

// Runs `model` over the window with a fresh KV cache, chunk by chunk, and calls
// fn(pos, logits) for every window-relative position pos in [first_scored - 1, len - 1) (the
// positions whose next-token prediction is scored); logits has vocab floats.
// fn is called in order of pos, chunk by chunk: fn_chunk(pos0, count, logits[count * vocab]).
using ChunkFn = std::function<void(int64_t pos0, int64_t count, const float* logits)>;
Status run_window(LlamaModel& model, const std::vector<int32_t>& tokens, const EvalWindow& w, const ChunkFn& fn);

// log-softmax of one row (in place), computed in double for the normaliser.
void log_softmax(float* row, int64_t n);

}  // namespace nb::tools
