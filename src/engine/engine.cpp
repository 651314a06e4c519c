#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "engine/contiguous_kv.h"
#include "engine/device_sampling.h"
#include "engine/kv/block_manager.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "engine/spec/drafter.h"
#include "engine/spec/verify.h"
#include "model/llama.h"

namespace nb {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "unknown";
}

struct Engine::Impl {
  LlamaModel& model;
  EngineConfig config;
  int32_t pad_block = 0;  // the KV block after the pool's last: static batching's padding rows write there
  bool device_sampling = false;  // device_sampling_enabled(model), read at creation
  KvStorage kv;
  const KvPools& pools;  // kv.pools()
  BlockManager blocks;
  Scheduler scheduler;
  std::vector<float> logits;  // [rows, vocab]: one row per sampling sequence, 1 + drafts when verifying
  std::vector<float> target_probs;  // [1 + drafts, vocab] warped target distributions (verification)

  // Shared with other threads, under mu.
  mutable std::mutex mu;
  std::condition_variable cv;
  std::vector<std::unique_ptr<Sequence>> incoming;
  std::unordered_set<RequestId> cancels;
  RequestId next_id = 1;
  EngineStats stats;
  bool stop = false;

  // Engine thread only.
  std::unordered_map<RequestId, std::unique_ptr<Sequence>> live;
  uint64_t arrival = 0;
  std::thread thread;

  Impl(LlamaModel& m, const EngineConfig& c, int64_t num_blocks, KvStorage storage)
      : model(m),
        config(c),
        kv(std::move(storage)),
        pools(kv.pools()),
        blocks(num_blocks, c.block_size, c.enable_prefix_cache),
        scheduler(config, blocks) {}

  void loop();
  void step();
  void propose_drafts();
  // The step's new tokens for s from its logits rows: one sampled token, or (with drafts) the
  // verified drafts and the target's correction/bonus token, with rejected K/V rolled back.
  // argmax: when non-null (plain greedy without logprobs), each row's argmax from the model; `rows` is
  // then unused and a draft is verified by comparing it with the argmax (greedy verification).
  Status next_tokens(Sequence* s, const float* rows, std::vector<int32_t>* out, std::vector<SampleOutput>* lps,
                     const int32_t* argmax = nullptr);
  // Appends tokens to s up to a stop token or max_tokens, emits them; returns how many were kept.
  int64_t accept(Sequence* s, const std::vector<int32_t>& tokens, std::vector<SampleOutput> lps);
  void finish(Sequence* s, FinishReason reason, std::string error = "");
  void retire(Sequence* s);
  void refresh_stats();  // under mu
  void emit(Sequence* s, std::vector<int32_t> tokens, std::vector<SampleOutput> lps, FinishReason reason,
            const std::string& error);
  Status copy_block(int32_t src, int32_t dst);
};

Result<std::unique_ptr<Engine>> Engine::create(LlamaModel& model, const EngineConfig& config) {
  const ModelConfig& c = model.config();
  if (config.block_size < 1 || config.block_size > 1024) {
    return invalid_argument("block size must be in [1, 1024]; got " + std::to_string(config.block_size));
  }
  if (config.max_num_seqs < 1 || config.max_batched_tokens < 1) {
    return invalid_argument("max_num_seqs and max_batched_tokens must be positive");
  }
  if (config.max_batched_tokens > model.max_batch_tokens()) {
    return invalid_argument("max_batched_tokens (" + std::to_string(config.max_batched_tokens) +
                            ") exceeds what the model was created for (" + std::to_string(model.max_batch_tokens()) + ")");
  }
  const int64_t block_bytes = KvStorage::block_bytes(model, config.block_size);
  const int64_t num_blocks = config.kv_cache_bytes / block_bytes;
  if (num_blocks < 1) {
    return invalid_argument("--kv-cache-memory " + std::to_string(config.kv_cache_bytes) +
                            " bytes holds no KV block (one block is " + std::to_string(block_bytes) +
                            " bytes); raise it");
  }
  // One block more than the block manager hands out: the scratch block of static batching's padding.
  NB_ASSIGN_OR_RETURN(KvStorage storage, KvStorage::create(model, num_blocks + 1, config.block_size));
  std::unique_ptr<Engine> e(new Engine());
  e->impl_ = std::make_unique<Impl>(model, config, num_blocks, std::move(storage));
  Impl& im = *e->impl_;
  im.pad_block = static_cast<int32_t>(num_blocks);
  im.device_sampling = device_sampling_enabled(model);
  im.logits.resize(static_cast<size_t>(config.max_num_seqs * c.vocab_size));
  im.stats.num_blocks_total = num_blocks;
  im.stats.num_blocks_free = num_blocks;
  im.thread = std::thread([&im] { im.loop(); });
  return e;
}

Engine::~Engine() {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  impl_->thread.join();
}

const EngineConfig& Engine::config() const { return impl_->config; }
const LlamaModel& Engine::model() const { return impl_->model; }

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

Result<RequestId> Engine::submit(GenerationRequest request, OutputCallback callback) {
  const ModelConfig& c = impl_->model.config();
  const auto num_prompt = static_cast<int64_t>(request.prompt.size());
  if (num_prompt == 0) return invalid_argument("the prompt is empty; give at least one token");
  for (int32_t id : request.prompt) {
    if (id < 0 || id >= c.vocab_size) {
      return invalid_argument("prompt token id " + std::to_string(id) + " is outside the vocabulary (size " +
                              std::to_string(c.vocab_size) + ")");
    }
  }
  if (request.max_tokens < 1) return invalid_argument("max_tokens must be at least 1");
  if (num_prompt + request.max_tokens > c.max_seq_len) {
    return out_of_range("the prompt (" + std::to_string(num_prompt) + " tokens) plus max_tokens (" +
                        std::to_string(request.max_tokens) + ") exceeds the model's context of " +
                        std::to_string(c.max_seq_len) + " tokens; shorten the prompt or lower max_tokens");
  }
  const int64_t bs = impl_->config.block_size;
  if ((num_prompt + request.max_tokens + bs - 1) / bs > impl_->blocks.num_blocks()) {
    return resource_exhausted("the request needs more KV blocks than the whole cache holds (" +
                              std::to_string(impl_->blocks.num_blocks()) + " blocks of " + std::to_string(bs) +
                              " tokens); raise --kv-cache-memory or lower max_tokens");
  }
  NB_ASSIGN_OR_RETURN(Sampler sampler, Sampler::create(request.sampling));
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->stop) return failed_precondition("the engine is shutting down");
  const RequestId id = impl_->next_id++;
  impl_->incoming.push_back(
      std::make_unique<Sequence>(id, 0, std::move(request), std::move(callback), std::move(sampler)));
  impl_->cv.notify_all();
  return id;
}

void Engine::cancel(RequestId id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->cancels.insert(id);
  impl_->cv.notify_all();
}

void Engine::Impl::emit(Sequence* s, std::vector<int32_t> tokens, std::vector<SampleOutput> lps, FinishReason reason,
                        const std::string& error) {
  RequestOutput out;
  out.id = s->id;
  out.tokens = std::move(tokens);
  out.logprobs = std::move(lps);
  out.finished = reason != FinishReason::kNone;
  out.finish_reason = reason;
  out.error = error;
  out.num_prompt_tokens = s->num_prompt;
  out.num_cached_prompt_tokens = s->num_cached_prompt;
  out.num_generated = s->num_generated;
  out.num_draft_tokens = s->num_draft_tokens;
  out.num_accepted_tokens = s->num_accepted_tokens;
  out.num_spec_steps = s->num_spec_steps;
  out.num_spec_rejections = s->num_spec_rejections;
  if (s->callback) s->callback(out);
}

void Engine::Impl::finish(Sequence* s, FinishReason reason, std::string error) {
  retire(s);
  emit(s, {}, {}, reason, error);
  live.erase(s->id);  // destroys s
}

// Frees the sequence's blocks and updates the stats, so that both are settled before its final
// output reaches the callback.
void Engine::Impl::retire(Sequence* s) {
  scheduler.remove(s);
  if (config.drafter) config.drafter->release(s->id);
  std::lock_guard<std::mutex> lock(mu);
  ++stats.num_requests_finished;
  refresh_stats();
}

void Engine::Impl::refresh_stats() {
  stats.num_preemptions = scheduler.num_preemptions();
  stats.num_blocks_allocated = scheduler.num_blocks_allocated();
  stats.num_waiting = scheduler.num_waiting();
  stats.num_running = scheduler.num_running();
  stats.num_blocks_used = blocks.num_used();
  stats.num_blocks_free = blocks.num_free();
  stats.prefix_cache_queries = blocks.prefix_queries();
  stats.prefix_cache_hits = blocks.prefix_hits();
}

Status Engine::Impl::copy_block(int32_t src, int32_t dst) { return kv.copy_block(model, src, dst); }

void Engine::Impl::loop() {
  for (;;) {
    std::vector<std::unique_ptr<Sequence>> arrived;
    std::unordered_set<RequestId> cancelled;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stop || !incoming.empty() || !cancels.empty() || scheduler.has_work(); });
      if (stop) break;
      arrived.swap(incoming);
      cancelled.swap(cancels);
    }
    for (auto& s : arrived) {
      s->arrival = arrival++;
      Sequence* raw = s.get();
      live.emplace(s->id, std::move(s));
      scheduler.add(raw);
    }
    if (!arrived.empty()) {
      std::lock_guard<std::mutex> lock(mu);
      refresh_stats();
    }
    for (RequestId id : cancelled) {
      auto it = live.find(id);
      if (it != live.end()) finish(it->second.get(), FinishReason::kCancelled);
    }
    if (scheduler.has_work()) step();
  }
  // Shutting down: every request still here ends cancelled.
  std::vector<Sequence*> rest;
  for (auto& [id, s] : live) rest.push_back(s.get());
  for (Sequence* s : rest) finish(s, FinishReason::kCancelled);
}

void Engine::Impl::propose_drafts() {
  if (!config.drafter || scheduler.num_running() > config.speculative_max_running) return;
  const int64_t max_len = model.config().max_seq_len;
  std::vector<std::pair<Sequence*, std::string>> failed;
  for (Sequence* s : scheduler.running()) {
    if (!s->request.speculative || s->num_draft > 0 || s->num_pending() != 1) continue;
    // Drafts past max_tokens or the context could never be emitted.
    if (s->spec_k == 0) s->spec_k = config.num_speculative_tokens;
    const int64_t want = config.adaptive_speculative_tokens ? s->spec_k : config.num_speculative_tokens;
    const int64_t k = std::min({want, s->request.max_tokens - s->num_generated - 1,
                                max_len - static_cast<int64_t>(s->tokens.size())});
    if (k <= 0) continue;
    Result<spec::Draft> d = config.drafter->propose(
        {s->id, s->tokens, static_cast<size_t>(s->num_prompt), k, &s->request.sampling});
    if (!d.ok()) {
      failed.emplace_back(s, "drafting failed: " + d.status().message());
      continue;
    }
    s->tokens.insert(s->tokens.end(), d->tokens.begin(), d->tokens.end());
    s->num_draft = static_cast<int64_t>(d->tokens.size());
    s->draft_q = std::move(d->q);
  }
  for (auto& [s, msg] : failed) finish(s, FinishReason::kError, msg);
}

Status Engine::Impl::next_tokens(Sequence* s, const float* rows, std::vector<int32_t>* out,
                                 std::vector<SampleOutput>* lps, const int32_t* argmax) {
  const int64_t vocab = model.config().vocab_size;
  const auto v = static_cast<size_t>(vocab);
  const int64_t k = s->num_draft;
  const size_t num_real = s->tokens.size() - static_cast<size_t>(k);
  const auto np = static_cast<size_t>(s->num_prompt);
  // Row i scores the position after real tokens + drafts [0, i): its history is that prefix.
  auto history = [&](int64_t i) { return TokenHistory{std::span<const int32_t>(s->tokens).first(num_real + static_cast<size_t>(i)), np}; };
  auto row = [&](int64_t i) { return std::span<const float>(rows + i * vocab, v); };
  if (k == 0) {
    SampleOutput lp;
    NB_ASSIGN_OR_RETURN(const int32_t next, s->sampler.sample(row(0), history(0), s->request.logprobs ? &lp : nullptr));
    out->push_back(next);
    if (s->request.logprobs) lps->push_back(std::move(lp));
    return Status::Ok();
  }
  const std::vector<int32_t> draft(s->tokens.begin() + static_cast<std::ptrdiff_t>(num_real), s->tokens.end());
  spec::Verification ver;
  if (argmax != nullptr) {
    // Greedy: the target's distribution at each position is one-hot on its argmax, so the exact
    // rule accepts a draft iff it is the argmax and otherwise emits the argmax (no draws needed).
    while (ver.num_accepted < k && draft[static_cast<size_t>(ver.num_accepted)] == argmax[ver.num_accepted]) {
      ver.tokens.push_back(draft[static_cast<size_t>(ver.num_accepted)]);
      ++ver.num_accepted;
    }
    ver.tokens.push_back(argmax[ver.num_accepted]);
  } else {
    target_probs.resize(static_cast<size_t>(k + 1) * v);
    for (int64_t i = 0; i <= k; ++i) {
      NB_RETURN_IF_ERROR(s->sampler.distribution(row(i), history(i), std::span<float>(target_probs).subspan(static_cast<size_t>(i) * v, v)));
    }
    NB_ASSIGN_OR_RETURN(ver, spec::verify_draft(draft, s->draft_q, target_probs, vocab,
                                                [s] { return s->sampler.uniform(); }));
  }
  if (s->request.logprobs) {
    for (size_t j = 0; j < ver.tokens.size(); ++j) {
      SampleOutput lp;
      NB_RETURN_IF_ERROR(s->sampler.logprobs(row(static_cast<int64_t>(j)), history(static_cast<int64_t>(j)), ver.tokens[j], &lp));
      lps->push_back(std::move(lp));
    }
  }
  // The forward computed K/V for every draft; those after the first rejected one are dropped.
  const int64_t rejected = k - ver.num_accepted;
  s->drop_draft();
  NB_RETURN_IF_ERROR(blocks.rollback(s->id, rejected));
  s->num_computed -= rejected;
  s->num_draft_tokens += k;
  s->num_accepted_tokens += ver.num_accepted;
  ++s->num_spec_steps;
  s->num_spec_rejections += rejected > 0 ? 1 : 0;
  s->spec_k = rejected > 0 ? std::max<int64_t>(1, s->spec_k - 1)
                           : std::min(config.num_speculative_tokens, s->spec_k + 2);
  {
    std::lock_guard<std::mutex> lock(mu);
    stats.num_spec_steps += 1;
    stats.num_draft_tokens += k;
    stats.num_accepted_tokens += ver.num_accepted;
    stats.num_spec_rejections += rejected > 0 ? 1 : 0;
  }
  *out = std::move(ver.tokens);
  return Status::Ok();
}

int64_t Engine::Impl::accept(Sequence* s, const std::vector<int32_t>& tokens, std::vector<SampleOutput> lps) {
  FinishReason reason = FinishReason::kNone;
  size_t kept = 0;
  const auto& stops = s->request.stop_ids;
  for (int32_t t : tokens) {
    if (std::find(stops.begin(), stops.end(), t) != stops.end()) {
      reason = FinishReason::kStop;  // the stop id itself is not emitted
      break;
    }
    s->tokens.push_back(t);
    ++s->num_generated;
    ++kept;
    if (s->num_generated >= s->request.max_tokens) {
      reason = FinishReason::kLength;
      break;
    }
  }
  std::vector<int32_t> emitted(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(kept));
  if (lps.size() > kept) lps.resize(kept);
  if (reason != FinishReason::kNone) retire(s);
  emit(s, std::move(emitted), std::move(lps), reason, "");
  if (reason != FinishReason::kNone) live.erase(s->id);  // destroys s
  return static_cast<int64_t>(kept);
}

void Engine::Impl::step() {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point t_begin = Clock::now();
  propose_drafts();
  SchedulerOutput sched = scheduler.schedule();
  if (sched.batch.empty()) return;  // waiting for blocks; nothing runnable (cannot persist: see submit)
  Status copied = Status::Ok();
  for (const BlockCopy& c : sched.copies) {
    if (copied.ok()) copied = copy_block(c.src, c.dst);
  }

  std::vector<int32_t> tokens;
  tokens.reserve(static_cast<size_t>(sched.num_tokens));
  ForwardBatch batch;
  int64_t num_rows = 0;
  for (const ScheduledSeq& s : sched.batch) {
    const auto* first = s.seq->tokens.data() + s.seq->num_computed;
    tokens.insert(tokens.end(), first, first + s.num_tokens);
    batch.seqs.push_back({s.num_tokens, s.seq->num_computed, blocks.block_table(s.seq->id), s.samples,
                          /*all_logits=*/s.seq->num_draft > 0});
    if (s.samples) num_rows += 1 + s.seq->num_draft;
  }
  // Static batching's padding: a finished request's slot is still computed (one token at position 0
  // of the scratch block past the pool's last, which no sequence owns; no logits).
  for (int64_t i = 0; i < sched.num_padding; ++i) {
    tokens.push_back(0);
    batch.seqs.push_back({1, 0, std::span<const int32_t>(&pad_block, 1), false});
  }
  const int64_t vocab = model.config().vocab_size;
  if (logits.size() < static_cast<size_t>(num_rows * vocab)) logits.resize(static_cast<size_t>(num_rows * vocab));
  batch.tokens = tokens;
  int64_t prompt_work = 0;
  for (const ScheduledSeq& s : sched.batch) {
    if (s.seq->num_computed < s.seq->num_prompt) {
      prompt_work += std::min(s.num_tokens, s.seq->num_prompt - s.seq->num_computed);
    }
  }
  // Plain greedy everywhere (no penalties or logprobs): the model hands back each row's argmax, so
  // a GPU copies 4 bytes a row instead of its logits; drafts are verified against those argmaxes.
  bool all_greedy = num_rows > 0;
  for (const ScheduledSeq& s : sched.batch) {
    if (!s.samples) continue;
    const GenerationRequest& r = s.seq->request;
    all_greedy = all_greedy && !r.logprobs && r.sampling.temperature == 0.0f &&
                 r.sampling.repetition_penalty == 1.0f && r.sampling.presence_penalty == 0.0f &&
                 r.sampling.frequency_penalty == 0.0f;
  }
  std::vector<int32_t> greedy;
  if (all_greedy) {
    greedy.resize(static_cast<size_t>(num_rows));
    batch.greedy_tokens = greedy.data();
  }
  // Otherwise, on a device, the rows' tokens may be drawn there (engine/device_sampling.h).
  bool on_device = !all_greedy && num_rows > 0 && device_sampling;
  for (const ScheduledSeq& s : sched.batch) {
    on_device = on_device && (!s.samples || (s.seq->num_draft == 0 &&
                                             device_sampling_supports(s.seq->request.sampling, s.seq->request.logprobs)));
  }
  std::vector<SampleRowParams> sample_rows;
  std::vector<int32_t> drawn;
  if (on_device) {
    for (const ScheduledSeq& s : sched.batch) {
      if (s.samples) sample_rows.push_back(device_sample_row(s.seq->sampler));
    }
    drawn.resize(static_cast<size_t>(num_rows));
    batch.sample_rows = sample_rows.data();
    batch.sampled_tokens = drawn.data();
  }
  const Clock::time_point t_forward = Clock::now();
  const Status st = copied.ok() ? model.forward(batch, pools, logits.data()) : copied;
  const Clock::time_point t_forward_end = Clock::now();
  if (!st.ok()) {
    for (const ScheduledSeq& s : sched.batch) finish(s.seq, FinishReason::kError, st.message());
    return;
  }
  scheduler.on_step_done(sched);
  // The step's counts are settled before any of its outputs reaches a callback (as retire does for
  // a finished request); its host time after the forward is added at the end.
  const auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  const double forward_s = seconds(t_forward_end - t_forward);
  {
    std::lock_guard<std::mutex> lock(mu);
    stats.num_steps += 1;
    stats.num_prefill_steps += prompt_work > 0 ? 1 : 0;
    (prompt_work > 0 ? stats.prefill_forward_seconds : stats.decode_forward_seconds) += forward_s;
  }

  int64_t row = 0, generated = 0;
  for (const ScheduledSeq& s : sched.batch) {
    if (!s.samples) continue;
    Sequence* seq = s.seq;
    const float* rows = logits.data() + row * vocab;
    const int64_t first_row = row;
    row += 1 + seq->num_draft;
    std::vector<int32_t> next;
    std::vector<SampleOutput> lps;
    if (all_greedy && seq->num_draft == 0) {
      next.push_back(greedy[static_cast<size_t>(first_row)]);
    } else if (on_device) {
      const int32_t t = drawn[static_cast<size_t>(first_row)];
      if (Status st = device_sample_status(t); !st.ok()) {
        finish(seq, FinishReason::kError, st.message());
        continue;
      }
      next.push_back(t);
    } else if (Status st = next_tokens(seq, rows, &next, &lps, all_greedy ? greedy.data() + first_row : nullptr);
               !st.ok()) {
      finish(seq, FinishReason::kError, st.message());
      continue;
    }
    generated += accept(seq, next, std::move(lps));
  }
  std::lock_guard<std::mutex> lock(mu);
  stats.step_host_seconds += seconds(Clock::now() - t_begin) - forward_s;
  stats.num_padding_tokens += sched.num_padding;
  stats.num_prompt_tokens_computed += prompt_work;
  stats.num_generated_tokens += generated;
  refresh_stats();
}

}  // namespace nb
