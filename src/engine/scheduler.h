// Scheduler: picks each step's batch. Continuous batching (admit and retire every step) with chunked
// prefill under a per-step token budget: running decodes first, then running prefills' next
// chunks, then FCFS admission of waiting sequences while blocks and budget allow. When a running
// sequence cannot get a block, the newest running sequence is preempted by recompute (its blocks
// freed, back to the head of the queue), never an out-of-memory failure.
// Static batching (for comparison): admit a batch only when nothing runs, then run it to completion
// as request-level batching does (Orca's baseline, a padded HF generate batch): a request that
// finishes early keeps its slot until the whole batch is done, so its row is still computed every
// step (SchedulerOutput::num_padding rows the engine feeds as padding).
// The contiguous KV layout (for comparison) reserves each sequence's prompt + max_tokens at admission.
#pragma once
#include <cstdint>
#include <deque>
#include <vector>

#include "engine/engine.h"
#include "engine/kv/block_manager.h"
#include "engine/sequence.h"

namespace nb {

struct ScheduledSeq {
  Sequence* seq;
  int64_t num_tokens;  // tokens of seq->tokens from seq->num_computed to run this step
  bool samples;        // this chunk reaches the end of the sequence's tokens: sample after it
};

struct SchedulerOutput {
  std::vector<ScheduledSeq> batch;
  std::vector<BlockCopy> copies;       // copy-on-write copies to perform before the forward
  std::vector<Sequence*> preempted;    // moved back to waiting this step
  int64_t num_tokens = 0;
  int64_t num_padding = 0;             // static batching: slots of finished requests, computed as padding
};

class Scheduler {
 public:
  Scheduler(const EngineConfig& config, BlockManager& blocks) : config_(config), blocks_(blocks) {}

  void add(Sequence* seq);  // to the back of the waiting queue
  SchedulerOutput schedule();
  // After the step ran: marks computed tokens, registers full blocks in the prefix cache.
  void on_step_done(const SchedulerOutput& out);
  // Removes a waiting or running sequence and frees its blocks (finish, cancel).
  void remove(Sequence* seq);

  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }
  // KV blocks newly claimed for sequences (not served from the prefix cache), since creation.
  int64_t num_blocks_allocated() const { return num_blocks_allocated_; }
  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  const std::vector<Sequence*>& running() const { return running_; }

 private:
  void preempt(Sequence* seq, SchedulerOutput& out);
  bool try_admit(Sequence* seq, int64_t budget, SchedulerOutput& out);

  EngineConfig config_;
  BlockManager& blocks_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // in arrival order
  int64_t num_preemptions_ = 0;
  int64_t num_blocks_allocated_ = 0;
  int64_t static_batch_size_ = 0;  // static batching: sequences admitted into the running batch
};

}  // namespace nb
