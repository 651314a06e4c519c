// BlockManager implementation. Data layout:
//  - per block: refcount, registration (key, parent key, serial, parent serial) and, for registered
//    blocks, a copy of its tokens in `tokens_` (so a hit is verified, never trusted from the hash);
//  - free-uncached blocks on a stack; cached-unreferenced blocks on an intrusive doubly linked LRU
//    list (head = least recently released = next to evict); the rest are referenced;
//  - per sequence: block table, claimed token count, reserved block count, and the (key, serial)
//    chain of its leading full blocks already processed by allocate()/commit_full_blocks().
#include "engine/kv/block_manager.h"

#include <algorithm>
#include <string>

namespace nb {

namespace {

constexpr uint64_t kRootKey = 0x6a09e667f3bcc908ULL;  // parent key of a sequence's first block
constexpr uint64_t kBrokenSerial = 0;  // chain cannot be registered (inconsistent or colliding prefix)
constexpr uint64_t kRootSerial = 1;    // parent serial of a first block
constexpr int32_t kNil = -1;

uint64_t mix64(uint64_t z) {  // splitmix64 finaliser: every input bit affects every output bit
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

uint64_t prefix_block_key(uint64_t parent_key, std::span<const int32_t> tokens) {
  uint64_t h = mix64(parent_key ^ 0x9e3779b97f4a7c15ULL);
  for (int32_t t : tokens) h = mix64(h + 0x9e3779b97f4a7c15ULL + static_cast<uint32_t>(t));
  return mix64(h ^ static_cast<uint64_t>(tokens.size()));
}

struct BlockManager::Impl {
  struct Block {
    int32_t ref = 0;
    bool cached = false;  // registered in the prefix cache (key -> this block in `index`)
    uint64_t key = 0, parent_key = 0;
    uint64_t serial = 0, parent_serial = 0;
    int32_t prev = kNil, next = kNil;  // LRU links, valid while cached && ref == 0
  };
  struct Seq {
    std::vector<int32_t> table;
    int64_t num_tokens = 0;
    int64_t num_reserved_blocks = 0;  // with extra_tokens, allocate()'s blocks: rollback keeps them
    std::vector<uint64_t> keys, serials;  // chain of processed leading full blocks
  };
  struct Lookup {
    std::vector<int32_t> blocks;  // consecutive verified hits from the first block
    std::vector<uint64_t> keys, serials;
  };

  int64_t block_size;
  bool enabled;
  BlockKeyFn key_fn;
  std::vector<Block> blocks;
  std::vector<int32_t> tokens;  // [num_blocks * block_size] tokens of registered blocks
  std::vector<int32_t> free_stack;
  int32_t lru_head = kNil, lru_tail = kNil;
  int64_t lru_size = 0;
  int64_t num_used = 0;
  std::unordered_map<uint64_t, int32_t> index;
  std::unordered_map<SeqId, Seq> seqs;
  uint64_t next_serial = 2;
  int64_t queries = 0, hits = 0;

  Impl(int64_t n, int64_t bs, bool enable, BlockKeyFn fn)
      : block_size(std::max<int64_t>(bs, 1)), enabled(enable), key_fn(fn ? fn : prefix_block_key) {
    n = std::max<int64_t>(n, 0);
    blocks.resize(static_cast<size_t>(n));
    tokens.resize(static_cast<size_t>(n * block_size));
    for (int64_t b = n - 1; b >= 0; --b) free_stack.push_back(static_cast<int32_t>(b));  // 0 is used first
  }

  int64_t num_free() const { return static_cast<int64_t>(free_stack.size()) + lru_size; }
  std::span<const int32_t> stored_tokens(int32_t b) const {
    return {tokens.data() + b * block_size, static_cast<size_t>(block_size)};
  }
  std::span<const int32_t> block_of(std::span<const int32_t> toks, int64_t i) const {
    return toks.subspan(static_cast<size_t>(i * block_size), static_cast<size_t>(block_size));
  }
  // Does registered block b hold exactly `toks` after the prefix named by parent_serial?
  bool matches(int32_t b, std::span<const int32_t> toks, uint64_t parent_serial) const {
    const Block& blk = blocks[b];
    if (!blk.cached || blk.parent_serial != parent_serial) return false;
    std::span<const int32_t> s = stored_tokens(b);
    return std::equal(s.begin(), s.end(), toks.begin(), toks.end());
  }

  void lru_remove(int32_t b) {
    Block& blk = blocks[b];
    (blk.prev == kNil ? lru_head : blocks[blk.prev].next) = blk.next;
    (blk.next == kNil ? lru_tail : blocks[blk.next].prev) = blk.prev;
    blk.prev = blk.next = kNil;
    --lru_size;
  }
  void lru_push_back(int32_t b) {
    Block& blk = blocks[b];
    blk.prev = lru_tail;
    blk.next = kNil;
    (lru_tail == kNil ? lru_head : blocks[lru_tail].next) = b;
    lru_tail = b;
    ++lru_size;
  }
  void unregister(int32_t b) {
    index.erase(blocks[b].key);
    blocks[b].cached = false;
  }

  void retain(int32_t b) {
    Block& blk = blocks[b];
    if (blk.ref == 0) {
      lru_remove(b);  // only cached blocks are retained while unreferenced
      ++num_used;
    }
    ++blk.ref;
  }
  void release(int32_t b) {
    Block& blk = blocks[b];
    if (--blk.ref > 0) return;
    --num_used;
    if (blk.cached) {
      lru_push_back(b);
    } else {
      free_stack.push_back(b);
    }
  }
  // A fresh private block; callers have checked num_free() first.
  int32_t take_fresh() {
    int32_t b;
    if (!free_stack.empty()) {
      b = free_stack.back();
      free_stack.pop_back();
    } else {
      b = lru_head;
      lru_remove(b);
      unregister(b);
    }
    blocks[b].ref = 1;
    ++num_used;
    return b;
  }

  // Longest verified cached prefix of `prompt`, in full blocks, at most max_blocks.
  Lookup lookup(std::span<const int32_t> prompt, int64_t max_blocks) const {
    Lookup r;
    uint64_t parent_key = kRootKey, parent_serial = kRootSerial;
    for (int64_t i = 0; i < max_blocks; ++i) {
      std::span<const int32_t> toks = block_of(prompt, i);
      const uint64_t key = key_fn(parent_key, toks);
      auto it = index.find(key);
      if (it == index.end() || !matches(it->second, toks, parent_serial)) break;
      r.blocks.push_back(it->second);
      r.keys.push_back(key);
      r.serials.push_back(blocks[it->second].serial);
      parent_key = key;
      parent_serial = blocks[it->second].serial;
    }
    return r;
  }

  struct Plan {
    Lookup hits;
    int64_t num_cached_blocks = 0, num_fresh = 0, num_revived = 0;  // revived: hits now in the LRU
  };
  Plan plan_allocate(std::span<const int32_t> prompt, int64_t extra) const {
    Plan p;
    const auto n = static_cast<int64_t>(prompt.size());
    // At least the last prompt token is computed (its logits are needed), so a block-aligned fully
    // cached prompt still recomputes its last block, into a private block (never a shared one).
    const int64_t max_cached = (n - 1) / block_size;
    if (enabled) p.hits = lookup(prompt, max_cached);
    p.num_cached_blocks = static_cast<int64_t>(p.hits.blocks.size());
    p.num_fresh = ceil_div(n + extra, block_size) - p.num_cached_blocks;
    for (int32_t b : p.hits.blocks) p.num_revived += blocks[b].ref == 0 ? 1 : 0;
    return p;
  }

  // Fresh blocks append_slots(n) needs: new blocks past the table + private copies of shared ones
  // (a registered block only this sequence uses is unregistered instead, which needs no block).
  int64_t append_need(const Seq& s, int64_t n) const {
    if (n == 0) return 0;
    const auto size = static_cast<int64_t>(s.table.size());
    const int64_t end = ceil_div(s.num_tokens + n, block_size);
    int64_t need = std::max<int64_t>(end - size, 0);
    for (int64_t i = s.num_tokens / block_size; i < std::min(end, size); ++i) need += blocks[s.table[i]].ref > 1 ? 1 : 0;
    return need;
  }
};

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_cache)
    : BlockManager(num_blocks, block_size, enable_prefix_cache, prefix_block_key) {}

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_cache, BlockKeyFn key_fn)
    : impl_(std::make_shared<Impl>(num_blocks, block_size, enable_prefix_cache, key_fn)) {}

int64_t BlockManager::num_blocks() const { return static_cast<int64_t>(impl_->blocks.size()); }
int64_t BlockManager::block_size() const { return impl_->block_size; }
int64_t BlockManager::num_free() const { return impl_->num_free(); }
int64_t BlockManager::num_used() const { return impl_->num_used; }

bool BlockManager::can_allocate(std::span<const int32_t> prompt, int64_t extra_tokens) const {
  if (prompt.empty() || extra_tokens < 0) return false;
  const Impl::Plan p = impl_->plan_allocate(prompt, extra_tokens);
  return p.num_fresh + p.num_revived <= impl_->num_free();
}

Result<int64_t> BlockManager::allocate(SeqId seq, std::span<const int32_t> prompt, int64_t extra_tokens) {
  Impl& im = *impl_;
  if (im.seqs.count(seq) != 0) {
    return invalid_argument("sequence " + std::to_string(seq) + " already has KV blocks; free it before allocating again");
  }
  if (prompt.empty()) return invalid_argument("cannot allocate KV blocks for an empty prompt; pass at least one token");
  if (extra_tokens < 0) return invalid_argument("extra_tokens must be >= 0, got " + std::to_string(extra_tokens));
  const Impl::Plan p = im.plan_allocate(prompt, extra_tokens);
  if (p.num_fresh + p.num_revived > im.num_free()) {
    return resource_exhausted("no free KV blocks; the prompt needs " + std::to_string(p.num_fresh + p.num_revived) +
                              " and " + std::to_string(im.num_free()) +
                              " are free; wait for running sequences to finish or raise the KV cache size");
  }
  Impl::Seq& s = im.seqs[seq];
  for (int32_t b : p.hits.blocks) {
    im.retain(b);
    s.table.push_back(b);
  }
  for (int64_t i = 0; i < p.num_fresh; ++i) s.table.push_back(im.take_fresh());
  s.num_tokens = static_cast<int64_t>(prompt.size());
  s.num_reserved_blocks = extra_tokens > 0 ? static_cast<int64_t>(s.table.size()) : 0;
  s.keys = p.hits.keys;
  s.serials = p.hits.serials;
  const int64_t cached = p.num_cached_blocks * im.block_size;
  if (im.enabled) {
    im.queries += static_cast<int64_t>(prompt.size());
    im.hits += cached;
  }
  return cached;
}

bool BlockManager::can_append(SeqId seq, int64_t n) const {
  auto it = impl_->seqs.find(seq);
  if (it == impl_->seqs.end() || n < 0) return false;
  return impl_->append_need(it->second, n) <= impl_->num_free();
}

Result<std::vector<BlockCopy>> BlockManager::append_slots(SeqId seq, int64_t n) {
  Impl& im = *impl_;
  auto it = im.seqs.find(seq);
  if (it == im.seqs.end()) return not_found("unknown sequence " + std::to_string(seq) + "; allocate() it first");
  if (n < 0) return invalid_argument("append_slots needs n >= 0, got " + std::to_string(n));
  Impl::Seq& s = it->second;
  const int64_t need = im.append_need(s, n);
  if (need > im.num_free()) {
    return resource_exhausted("no free KV blocks; appending " + std::to_string(n) + " tokens needs " +
                              std::to_string(need) + " and " + std::to_string(im.num_free()) +
                              " are free; preempt a sequence or raise the KV cache size");
  }
  std::vector<BlockCopy> copies;
  if (n == 0) return copies;
  const int64_t end = ceil_div(s.num_tokens + n, im.block_size);
  const auto size = static_cast<int64_t>(s.table.size());
  for (int64_t i = s.num_tokens / im.block_size; i < std::min(end, size); ++i) {
    const int32_t old = s.table[i];
    if (im.blocks[old].ref == 1) {
      // Ours alone: writable once it leaves the prefix cache (its key would no longer describe it).
      if (im.blocks[old].cached) im.unregister(old);
      continue;
    }
    // Shared: the old block keeps other users (ref stays >= 1 after release), so it cannot be
    // evicted and reused before the engine has copied from it.
    const int32_t fresh = im.take_fresh();
    if (i * im.block_size < s.num_tokens) copies.push_back({old, fresh});  // holds some of our tokens
    s.table[i] = fresh;
    im.release(old);
  }
  for (int64_t i = size; i < end; ++i) s.table.push_back(im.take_fresh());
  s.num_tokens += n;
  return copies;
}

void BlockManager::commit_full_blocks(SeqId seq, std::span<const int32_t> tokens, int64_t num_computed) {
  Impl& im = *impl_;
  if (!im.enabled) return;
  auto it = im.seqs.find(seq);
  if (it == im.seqs.end()) return;
  Impl::Seq& s = it->second;
  const int64_t limit = std::min({num_computed, static_cast<int64_t>(tokens.size()), s.num_tokens});
  const int64_t num_full = std::min(limit / im.block_size, static_cast<int64_t>(s.table.size()));
  for (auto i = static_cast<int64_t>(s.keys.size()); i < num_full; ++i) {
    const uint64_t parent_key = i == 0 ? kRootKey : s.keys[i - 1];
    const uint64_t parent_serial = i == 0 ? kRootSerial : s.serials[i - 1];
    std::span<const int32_t> toks = im.block_of(tokens, i);
    const uint64_t key = im.key_fn(parent_key, toks);
    const int32_t b = s.table[i];
    uint64_t serial = kBrokenSerial;
    if (parent_serial == kBrokenSerial) {
      // An unregistrable prefix: nothing after it can be registered either.
    } else if (im.blocks[b].cached) {
      // Already registered (a prefix-cache hit, or a block shared with a sequence that committed it).
      if (im.blocks[b].key == key && im.matches(b, toks, parent_serial)) serial = im.blocks[b].serial;
    } else if (auto hit = im.index.find(key); hit != im.index.end()) {
      // Someone else registered this key first: keep their entry; if it is the same prefix, our
      // chain continues through it, otherwise (a hash collision) our chain stops here.
      if (im.matches(hit->second, toks, parent_serial)) serial = im.blocks[hit->second].serial;
    } else {
      Impl::Block& blk = im.blocks[b];
      blk.cached = true;
      blk.key = key;
      blk.parent_key = parent_key;
      blk.serial = serial = im.next_serial++;
      blk.parent_serial = parent_serial;
      std::copy(toks.begin(), toks.end(), im.tokens.begin() + b * im.block_size);
      im.index.emplace(key, b);
    }
    s.keys.push_back(key);
    s.serials.push_back(serial);
  }
}

Status BlockManager::fork(SeqId parent, SeqId child) {
  Impl& im = *impl_;
  auto it = im.seqs.find(parent);
  if (it == im.seqs.end()) return not_found("unknown parent sequence " + std::to_string(parent) + "; allocate() it first");
  if (im.seqs.count(child) != 0) {
    return invalid_argument("fork target sequence " + std::to_string(child) + " already exists; pick an unused id");
  }
  Impl::Seq copy = it->second;  // copy before inserting: insertion may rehash and move `it`
  for (int32_t b : copy.table) im.retain(b);
  im.seqs.emplace(child, std::move(copy));
  return Status::Ok();
}

Status BlockManager::rollback(SeqId seq, int64_t k) {
  Impl& im = *impl_;
  auto it = im.seqs.find(seq);
  if (it == im.seqs.end()) return not_found("unknown sequence " + std::to_string(seq) + "; allocate() it first");
  Impl::Seq& s = it->second;
  if (k < 0 || k > s.num_tokens) {
    return out_of_range("cannot roll back " + std::to_string(k) + " tokens of a sequence holding " +
                        std::to_string(s.num_tokens) + "; pass 0 <= k <= num_tokens");
  }
  s.num_tokens -= k;
  const int64_t keep = std::max(ceil_div(s.num_tokens, im.block_size), s.num_reserved_blocks);
  while (static_cast<int64_t>(s.table.size()) > keep) {  // last first: later blocks age out first in the LRU
    im.release(s.table.back());
    s.table.pop_back();
  }
  const auto num_full = static_cast<size_t>(s.num_tokens / im.block_size);
  if (s.keys.size() > num_full) {
    s.keys.resize(num_full);
    s.serials.resize(num_full);
  }
  // Kept blocks past the last full one may be registered or shared; they stay as they are (still
  // valid cache entries) until an append is about to write them (see the write rule).
  return Status::Ok();
}

void BlockManager::free(SeqId seq) {
  Impl& im = *impl_;
  auto it = im.seqs.find(seq);
  if (it == im.seqs.end()) return;
  // Release the last block first so that, among a prefix's blocks, the deeper ones are evicted
  // first: evicting a parent first would strand its children (lookups stop at the first miss).
  for (auto b = it->second.table.rbegin(); b != it->second.table.rend(); ++b) im.release(*b);
  im.seqs.erase(it);
}

bool BlockManager::has_seq(SeqId seq) const { return impl_->seqs.count(seq) != 0; }

std::span<const int32_t> BlockManager::block_table(SeqId seq) const {
  auto it = impl_->seqs.find(seq);
  if (it == impl_->seqs.end()) return {};
  return it->second.table;
}

int64_t BlockManager::num_tokens(SeqId seq) const {
  auto it = impl_->seqs.find(seq);
  return it == impl_->seqs.end() ? 0 : it->second.num_tokens;
}

int64_t BlockManager::prefix_queries() const { return impl_->queries; }
int64_t BlockManager::prefix_hits() const { return impl_->hits; }

Status BlockManager::check_invariants() const {
  const Impl& im = *impl_;
  const auto n = static_cast<int64_t>(im.blocks.size());
  auto fail = [](const std::string& m) { return internal_error("BlockManager invariant violated: " + m); };
  std::vector<int32_t> refs(static_cast<size_t>(n), 0);
  for (const auto& [id, s] : im.seqs) {
    const std::string name = "sequence " + std::to_string(id);
    if (s.num_tokens < 0 || static_cast<int64_t>(s.table.size()) < ceil_div(s.num_tokens, im.block_size)) {
      return fail(name + " claims more tokens than its block table holds");
    }
    if (s.keys.size() != s.serials.size() || static_cast<int64_t>(s.keys.size()) > s.num_tokens / im.block_size) {
      return fail(name + " has a prefix chain longer than its full blocks");
    }
    for (int32_t b : s.table) {
      if (b < 0 || b >= n) return fail(name + " has out-of-range block id " + std::to_string(b));
      ++refs[b];
    }
  }
  // Every block in exactly one state: walk the free stack and the LRU list, marking what we see.
  enum : uint8_t { kUnseen, kFree, kLru };
  std::vector<uint8_t> state(static_cast<size_t>(n), kUnseen);
  for (int32_t b : im.free_stack) {
    if (b < 0 || b >= n || state[b] != kUnseen) return fail("free list holds a bad or repeated block");
    state[b] = kFree;
  }
  int64_t lru_count = 0;
  for (int32_t b = im.lru_head, prev = kNil; b != kNil; prev = b, b = im.blocks[b].next) {
    if (b < 0 || b >= n || state[b] != kUnseen || im.blocks[b].prev != prev || ++lru_count > n) {
      return fail("LRU list is malformed");
    }
    state[b] = kLru;
  }
  if (lru_count != im.lru_size) return fail("LRU size counter disagrees with the list");
  int64_t used = 0, cached = 0;
  for (int32_t b = 0; b < n; ++b) {
    const Impl::Block& blk = im.blocks[b];
    const std::string name = "block " + std::to_string(b);
    if (blk.ref != refs[b]) {
      return fail(name + " has refcount " + std::to_string(blk.ref) + " but " + std::to_string(refs[b]) +
                  " table entries");
    }
    if (blk.ref > 0) ++used;
    if (blk.ref > 0 && state[b] != kUnseen) return fail(name + " is referenced and also free");
    if (blk.ref == 0 && state[b] == kUnseen) return fail(name + " is leaked (unreferenced, not free)");
    if (state[b] == kFree && blk.cached) return fail(name + " is cached but on the free-uncached list");
    if (state[b] == kLru && !blk.cached) return fail(name + " is in the LRU but not cached");
    if (!blk.cached) continue;
    ++cached;
    auto it = im.index.find(blk.key);
    if (it == im.index.end() || it->second != b) return fail(name + " is cached but its key maps elsewhere");
    if (im.key_fn(blk.parent_key, im.stored_tokens(b)) != blk.key) return fail(name + "'s key does not match its tokens");
    if (blk.serial < 2 || blk.serial >= im.next_serial || blk.parent_serial == kBrokenSerial ||
        blk.parent_serial >= blk.serial) {
      return fail(name + " has an invalid serial chain");
    }
  }
  if (cached != static_cast<int64_t>(im.index.size())) return fail("prefix index size differs from cached blocks");
  if (used != im.num_used) return fail("used-block counter disagrees with refcounts");
  if (im.num_free() + im.num_used != n) return fail("free + used != total");
  if (!im.enabled && (cached != 0 || im.queries != 0 || im.hits != 0)) return fail("disabled prefix cache holds state");
  return Status::Ok();
}

}  // namespace nb
