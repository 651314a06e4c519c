#include "engine/scheduler.h"

#include <algorithm>

namespace nb {

void Scheduler::add(Sequence* seq) {
  seq->state = Sequence::State::kWaiting;
  waiting_.push_back(seq);
}

void Scheduler::remove(Sequence* seq) {
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), seq), waiting_.end());
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
  if (blocks_.has_seq(seq->id)) blocks_.free(seq->id);
  seq->state = Sequence::State::kFinished;
}

void Scheduler::preempt(Sequence* seq, SchedulerOutput& out) {
  // Recompute, not swap: drop the K/V and requeue at the head; its tokens (prompt + generated so
  // far) are prefilled again on re-admission, mostly from the prefix cache when blocks allow.
  for (auto it = out.batch.begin(); it != out.batch.end(); ++it) {
    if (it->seq == seq) {
      out.num_tokens -= it->num_tokens;
      out.batch.erase(it);
      break;
    }
  }
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
  blocks_.free(seq->id);
  seq->drop_draft();
  seq->num_computed = 0;
  seq->state = Sequence::State::kWaiting;
  waiting_.push_front(seq);
  out.preempted.push_back(seq);
  ++num_preemptions_;
}

bool Scheduler::try_admit(Sequence* seq, int64_t budget, SchedulerOutput& out) {
  int64_t extra = 0;
  if (config_.kv_layout == KvLayout::kContiguous) {
    // Reserve the whole remaining generation up front, as a non-paged cache must.
    extra = seq->num_prompt + seq->request.max_tokens - static_cast<int64_t>(seq->tokens.size());
  }
  if (!blocks_.can_allocate(seq->tokens, extra)) return false;
  Result<int64_t> cached = blocks_.allocate(seq->id, seq->tokens, extra);
  if (!cached.ok()) return false;
  seq->num_computed = *cached;
  num_blocks_allocated_ += static_cast<int64_t>(blocks_.block_table(seq->id).size()) - *cached / config_.block_size;
  if (!seq->admitted_once) {
    seq->num_cached_prompt = *cached;
    seq->admitted_once = true;
  }
  seq->state = Sequence::State::kRunning;
  running_.push_back(seq);
  const int64_t n = std::min(seq->num_pending(), budget);
  if (n > 0) {  // with no budget left this step, its prefill starts next step (static batching)
    out.batch.push_back({seq, n, n == seq->num_pending()});
    out.num_tokens += n;
  }
  return true;
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  const bool static_batching = config_.batching == BatchingPolicy::kStatic;
  // Static batching: when nothing runs, the whole queue that fits becomes the batch (its prefill
  // then proceeds in budget-sized chunks), and it runs to completion before the next is admitted.
  const bool static_admission = static_batching && running_.empty();
  auto budget = [&] { return config_.max_batched_tokens - out.num_tokens; };

  // 1. Decodes first (one pending token each, plus its draft tokens when speculating), oldest
  // first; make room by preempting the newest. Drafts that do not fit the budget are dropped.
  for (size_t i = 0; i < running_.size() && budget() > 0; ++i) {
    Sequence* s = running_[i];
    if (s->num_pending() - s->num_draft != 1) continue;
    if (s->num_pending() > budget()) s->drop_draft();
    const int64_t need = static_cast<int64_t>(s->tokens.size()) - blocks_.num_tokens(s->id);
    bool self_preempted = false;
    while (need > 0 && !blocks_.can_append(s->id, need)) {
      Sequence* victim = running_.back();
      preempt(victim, out);
      if (victim == s) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // s was the newest: nothing after it remains to schedule
    if (need > 0) {
      const auto before = static_cast<int64_t>(blocks_.block_table(s->id).size());
      Result<std::vector<BlockCopy>> copies = blocks_.append_slots(s->id, need);
      if (!copies.ok()) continue;  // cannot happen after can_append; skip this step rather than fail
      out.copies.insert(out.copies.end(), copies->begin(), copies->end());
      num_blocks_allocated_ += static_cast<int64_t>(blocks_.block_table(s->id).size()) - before +
                               static_cast<int64_t>(copies->size());
    }
    out.batch.push_back({s, s->num_pending(), true});
    out.num_tokens += s->num_pending();
  }
  // 2. Running prefills: their next chunk (their blocks were allocated at admission).
  for (Sequence* s : running_) {
    if (budget() <= 0) break;
    if (!s->is_prefilling()) continue;
    const int64_t n = std::min(s->num_pending(), budget());
    out.batch.push_back({s, n, n == s->num_pending()});
    out.num_tokens += n;
  }
  // 3. Admission, FCFS: stop at the first request that does not fit (no overtaking).
  if (!static_batching || static_admission) {
    while (!waiting_.empty() && (static_admission || budget() > 0) && num_running() < config_.max_num_seqs) {
      if (!try_admit(waiting_.front(), std::max<int64_t>(0, budget()), out)) break;
      waiting_.pop_front();
    }
  }
  // 4. Static batching: the batch's finished requests still occupy their slots (padding rows).
  if (static_batching) {
    if (static_admission) static_batch_size_ = num_running();
    if (running_.empty()) static_batch_size_ = 0;
    out.num_padding = std::clamp<int64_t>(static_batch_size_ - num_running(), 0, std::max<int64_t>(0, budget()));
    out.num_tokens += out.num_padding;
  }
  return out;
}

void Scheduler::on_step_done(const SchedulerOutput& out) {
  for (const ScheduledSeq& s : out.batch) {
    s.seq->num_computed += s.num_tokens;
    blocks_.commit_full_blocks(s.seq->id, s.seq->tokens, s.seq->num_computed);
  }
}

}  // namespace nb
