// Drafting with a (small) LlamaModel: a separate draft model or the target's truncated self-draft.
// The draft keeps its own paged KV pool with one block table per sequence (no prefix cache): on
// each proposal it rolls its cache back to the longest prefix it shares with the sequence's
// current tokens (rejected drafts, preemption), feeds the rest, then drafts k tokens one forward
// each. When its pool is full it proposes nothing for that sequence (the engine then decodes
// normally) rather than failing the request.
#include <algorithm>
#include <unordered_map>

#include "engine/contiguous_kv.h"
#include "engine/kv/block_manager.h"
#include "engine/spec/drafter.h"
#include "engine/spec/verify.h"
#include "model/llama.h"

namespace nb::spec {
namespace {

// Draws are made with a seed derived from the request's, so the draft's RNG stream differs from
// the target's (the target's sampler makes the acceptance draws).
constexpr uint64_t kDraftSeedMix = 0x9E3779B97F4A7C15ull;

class ModelDrafter final : public Drafter {
 public:
  ModelDrafter(LlamaModel& m, KvStorage kv, int64_t num_blocks, int64_t block_size)
      : model_(m), kv_(std::move(kv)), blocks_(num_blocks, block_size, /*enable_prefix_cache=*/false) {}

  Result<Draft> propose(const DraftRequest& r) override {
    Draft d;
    if (r.k <= 0 || r.tokens.empty()) return d;
    const int64_t vocab = model_.config().vocab_size;
    if (static_cast<int64_t>(r.tokens.size()) + r.k > model_.config().max_seq_len) return d;
    auto it = seqs_.find(r.seq_id);
    if (it == seqs_.end()) {
      SamplingParams sp = r.sampling ? *r.sampling : SamplingParams{};
      sp.seed ^= kDraftSeedMix;
      sp.top_logprobs = 0;
      NB_ASSIGN_OR_RETURN(Sampler sampler, Sampler::create(sp));
      it = seqs_.emplace(r.seq_id, SeqState{std::move(sampler), {}}).first;
    }
    SeqState& st = it->second;
    // The cached prefix still valid; at least the last token is fed again, for its logits.
    size_t keep = 0;
    while (keep < st.computed.size() && keep < r.tokens.size() && st.computed[keep] == r.tokens[keep]) ++keep;
    keep = std::min(keep, r.tokens.size() - 1);
    if (blocks_.has_seq(r.seq_id)) {
      NB_RETURN_IF_ERROR(blocks_.rollback(r.seq_id, blocks_.num_tokens(r.seq_id) - static_cast<int64_t>(keep)));
    }
    st.computed.assign(r.tokens.begin(), r.tokens.begin() + static_cast<std::ptrdiff_t>(keep));

    logits_.resize(static_cast<size_t>(vocab));
    d.q.reserve(static_cast<size_t>(r.k * vocab));
    std::vector<int32_t> history(r.tokens.begin(), r.tokens.end());
    if (!feed(r.seq_id, st, std::span<const int32_t>(r.tokens).subspan(keep))) return release_and_empty(r.seq_id);
    for (int64_t i = 0; i < r.k; ++i) {
      const size_t row = d.q.size();
      d.q.resize(row + static_cast<size_t>(vocab));
      std::span<float> q(d.q.data() + row, static_cast<size_t>(vocab));
      NB_RETURN_IF_ERROR(st.sampler.distribution(logits_, TokenHistory{history, r.num_prompt}, q));
      const int32_t x = draw_from_weights(q, st.sampler.uniform());
      d.tokens.push_back(x);
      history.push_back(x);
      if (i + 1 == r.k) break;
      const int32_t one[1] = {x};
      if (!feed(r.seq_id, st, one)) break;  // pool full: propose what we have
    }
    return d;
  }

  void release(uint64_t seq_id) override {
    blocks_.free(seq_id);
    seqs_.erase(seq_id);
  }
  const char* name() const override { return "draft-model"; }

 private:
  struct SeqState {
    Sampler sampler;
    std::vector<int32_t> computed;  // tokens whose K/V the draft's cache holds
  };

  Result<Draft> release_and_empty(uint64_t seq_id) {
    release(seq_id);
    return Draft{};
  }

  // Runs `tokens` through the draft after st.computed, leaving the last one's logits in logits_.
  // False when the pool has no room (state then unchanged beyond what was computed).
  bool feed(uint64_t id, SeqState& st, std::span<const int32_t> tokens) {
    const int64_t chunk_max = model_.max_batch_tokens();
    for (size_t off = 0; off < tokens.size();) {
      const auto n = std::min<int64_t>(chunk_max, static_cast<int64_t>(tokens.size() - off));
      std::span<const int32_t> chunk = tokens.subspan(off, static_cast<size_t>(n));
      if (!blocks_.has_seq(id)) {
        if (!blocks_.can_allocate(chunk)) return false;
        if (!blocks_.allocate(id, chunk).ok()) return false;
      } else {
        if (!blocks_.can_append(id, n)) return false;
        if (!blocks_.append_slots(id, n).ok()) return false;  // no prefix cache: never a copy
      }
      const auto start = static_cast<int64_t>(st.computed.size());
      ForwardBatch b;
      b.tokens = chunk;
      b.seqs.push_back({n, start, blocks_.block_table(id), off + static_cast<size_t>(n) == tokens.size()});
      if (!model_.forward(b, kv_.pools(), logits_.data()).ok()) return false;
      st.computed.insert(st.computed.end(), chunk.begin(), chunk.end());
      off += static_cast<size_t>(n);
    }
    return true;
  }

  LlamaModel& model_;
  KvStorage kv_;
  BlockManager blocks_;
  std::unordered_map<uint64_t, SeqState> seqs_;
  std::vector<float> logits_;
};

}  // namespace

Result<std::unique_ptr<Drafter>> make_model_drafter(LlamaModel& draft, int64_t target_vocab_size,
                                                    const ModelDrafterOptions& options) {
  const ModelConfig& c = draft.config();
  if (c.vocab_size != target_vocab_size) {
    return invalid_argument("the draft model's vocabulary has " + std::to_string(c.vocab_size) +
                            " tokens but the target's has " + std::to_string(target_vocab_size) +
                            "; use a draft model with the target's tokenizer");
  }
  if (options.block_size < 1) return invalid_argument("draft block size must be positive");
  // The bytes of one block, as the storage lays it out (whatever the KV dtype).
  NB_ASSIGN_OR_RETURN(KvStorage one, KvStorage::create(draft, 1, options.block_size));
  const int64_t num_blocks = options.kv_cache_bytes / std::max<int64_t>(1, one.num_bytes());
  if (num_blocks < 1) return invalid_argument("the draft's KV memory holds no block; raise it");
  NB_ASSIGN_OR_RETURN(KvStorage kv, KvStorage::create(draft, num_blocks, options.block_size));
  return std::unique_ptr<Drafter>(new ModelDrafter(draft, std::move(kv), num_blocks, options.block_size));
}

Result<ModelWeights> truncate_layers(const ModelWeights& weights, int64_t num_layers) {
  const auto total = static_cast<int64_t>(weights.layers.size());
  if (num_layers < 1 || num_layers > total) {
    return invalid_argument("--draft-layers must be in [1, " + std::to_string(total) + "]; got " +
                            std::to_string(num_layers));
  }
  ModelWeights w = weights;  // Tensor copies are views: they share the target's memory
  w.layers.resize(static_cast<size_t>(num_layers));
  w.config.num_layers = num_layers;
  return w;
}

}  // namespace nb::spec
