#include "engine/engine.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "engine/contiguous_kv.h"
#include "engine/kv/block_manager.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
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
  int64_t kv_row = 0;  // floats per token per layer for K (same for V)
  KvStorage kv;
  const KvPools& pools;  // kv.pools()
  BlockManager blocks;
  Scheduler scheduler;
  std::vector<float> logits;  // [max_num_seqs, vocab]

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
  const int64_t kv_row = c.num_kv_heads * c.head_dim;
  const int64_t block_bytes = KvStorage::block_bytes(c, config.block_size);
  const int64_t num_blocks = config.kv_cache_bytes / block_bytes;
  if (num_blocks < 1) {
    return invalid_argument("--kv-cache-memory " + std::to_string(config.kv_cache_bytes) +
                            " bytes holds no KV block (one block is " + std::to_string(block_bytes) +
                            " bytes); raise it");
  }
  NB_ASSIGN_OR_RETURN(KvStorage storage, KvStorage::create(model, num_blocks, config.block_size));
  std::unique_ptr<Engine> e(new Engine());
  e->impl_ = std::make_unique<Impl>(model, config, num_blocks, std::move(storage));
  Impl& im = *e->impl_;
  im.kv_row = kv_row;
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

Status Engine::Impl::copy_block(int32_t src, int32_t dst) {
  const auto n = static_cast<size_t>(config.block_size * kv_row);
  const auto bytes = static_cast<int64_t>(n * sizeof(float));
  for (size_t l = 0; l < pools.k.size(); ++l) {
    NB_RETURN_IF_ERROR(model.copy_kv(pools.k[l] + static_cast<size_t>(dst) * n, pools.k[l] + static_cast<size_t>(src) * n, bytes));
    NB_RETURN_IF_ERROR(model.copy_kv(pools.v[l] + static_cast<size_t>(dst) * n, pools.v[l] + static_cast<size_t>(src) * n, bytes));
  }
  return Status::Ok();
}

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

void Engine::Impl::step() {
  SchedulerOutput sched = scheduler.schedule();
  if (sched.batch.empty()) return;  // waiting for blocks; nothing runnable (cannot persist: see submit)
  Status copied = Status::Ok();
  for (const BlockCopy& c : sched.copies) {
    if (copied.ok()) copied = copy_block(c.src, c.dst);
  }

  std::vector<int32_t> tokens;
  tokens.reserve(static_cast<size_t>(sched.num_tokens));
  ForwardBatch batch;
  for (const ScheduledSeq& s : sched.batch) {
    const auto* first = s.seq->tokens.data() + s.seq->num_computed;
    tokens.insert(tokens.end(), first, first + s.num_tokens);
    batch.seqs.push_back({s.num_tokens, s.seq->num_computed, blocks.block_table(s.seq->id), s.samples});
  }
  batch.tokens = tokens;
  int64_t prompt_work = 0;
  for (const ScheduledSeq& s : sched.batch) {
    if (s.seq->num_computed < s.seq->num_prompt) {
      prompt_work += std::min(s.num_tokens, s.seq->num_prompt - s.seq->num_computed);
    }
  }
  const Status st = copied.ok() ? model.forward(batch, pools, logits.data()) : copied;
  if (!st.ok()) {
    for (const ScheduledSeq& s : sched.batch) finish(s.seq, FinishReason::kError, st.message());
    return;
  }
  scheduler.on_step_done(sched);

  const int64_t vocab = model.config().vocab_size;
  int64_t row = 0, generated = 0;
  for (const ScheduledSeq& s : sched.batch) {
    if (!s.samples) continue;
    Sequence* seq = s.seq;
    std::span<const float> lg(logits.data() + row * vocab, static_cast<size_t>(vocab));
    ++row;
    SampleOutput lp;
    Result<int32_t> next = seq->sampler.sample(
        lg, TokenHistory{seq->tokens, static_cast<size_t>(seq->num_prompt)}, seq->request.logprobs ? &lp : nullptr);
    if (!next.ok()) {
      finish(seq, FinishReason::kError, next.status().message());
      continue;
    }
    const auto& stops = seq->request.stop_ids;
    if (std::find(stops.begin(), stops.end(), *next) != stops.end()) {
      finish(seq, FinishReason::kStop);
      continue;
    }
    seq->tokens.push_back(*next);
    ++seq->num_generated;
    ++generated;
    std::vector<SampleOutput> lps;
    if (seq->request.logprobs) lps.push_back(std::move(lp));
    const bool done = seq->num_generated >= seq->request.max_tokens;
    if (done) retire(seq);
    emit(seq, {*next}, std::move(lps), done ? FinishReason::kLength : FinishReason::kNone, "");
    if (done) live.erase(seq->id);
  }
  std::lock_guard<std::mutex> lock(mu);
  stats.num_steps += 1;
  stats.num_prompt_tokens_computed += prompt_work;
  stats.num_generated_tokens += generated;
  refresh_stats();
}

}  // namespace nb
