// Static batching as request-level batching: a request that finishes before its batch keeps its
// slot, and the scheduler reports that slot as a padding row every step until the batch is done.
// Driven step by step without the engine thread (the step loop is emulated here).
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "engine/kv/block_manager.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"

namespace nb {
namespace {

std::unique_ptr<Sequence> make_seq(RequestId id, int64_t prompt_len, int64_t max_tokens) {
  GenerationRequest r;
  r.prompt.assign(static_cast<size_t>(prompt_len), 7);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  Sampler sampler = std::move(Sampler::create(r.sampling).value());
  return std::make_unique<Sequence>(id, id, std::move(r), OutputCallback{}, std::move(sampler));
}

// Runs the scheduler until every sequence finished; returns the padding rows of each step.
std::vector<int64_t> run(BatchingPolicy policy, const std::vector<int64_t>& max_tokens, int64_t* padding_total) {
  EngineConfig cfg;
  cfg.batching = policy;
  cfg.max_batched_tokens = 512;
  BlockManager blocks(256, 16, false);
  Scheduler sched(cfg, blocks);
  std::vector<std::unique_ptr<Sequence>> seqs;
  for (size_t i = 0; i < max_tokens.size(); ++i) {
    seqs.push_back(make_seq(static_cast<RequestId>(i + 1), 10, max_tokens[i]));
    sched.add(seqs.back().get());
  }
  std::vector<int64_t> per_step;
  *padding_total = 0;
  for (int step = 0; step < 1000 && sched.has_work(); ++step) {
    SchedulerOutput out = sched.schedule();
    per_step.push_back(out.num_padding);
    *padding_total += out.num_padding;
    sched.on_step_done(out);
    for (const ScheduledSeq& s : out.batch) {
      if (!s.samples) continue;
      Sequence* q = s.seq;
      q->tokens.push_back(1);  // the "sampled" token
      ++q->num_generated;
      if (q->num_generated >= q->request.max_tokens) sched.remove(q);
    }
  }
  return per_step;
}

TEST(SchedulerStatic, FinishedRequestsKeepTheirSlotAsPadding) {
  int64_t total = 0;
  // One batch of three: A ends after 2 tokens, B after 5, C after 9. Every step after A finished
  // until C finishes pads A's slot (7 steps), and B's after B finished (4 steps).
  const std::vector<int64_t> steps = run(BatchingPolicy::kStatic, {2, 5, 9}, &total);
  EXPECT_EQ(total, (9 - 2) + (9 - 5));
  EXPECT_EQ(steps.size(), 9u);  // prefill + 8 decode steps: the batch lasts as long as its longest request
  EXPECT_EQ(steps.back(), 2);   // the last step computes C and two padding rows
}

TEST(SchedulerStatic, ContinuousBatchingHasNoPadding) {
  int64_t total = 0;
  run(BatchingPolicy::kContinuous, {2, 5, 9}, &total);
  EXPECT_EQ(total, 0);
}

}  // namespace
}  // namespace nb
