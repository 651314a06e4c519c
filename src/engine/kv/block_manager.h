// BlockManager: the paged KV cache's bookkeeping (no K/V memory here; the engine owns the pools).
// Blocks hold block_size tokens. Each sequence has a block table (logical block i -> physical id).
// Full blocks are content-addressed for prefix sharing: key = hash(parent block's key, the block's
// tokens), so a key names a whole prefix, not just one block's tokens. Reference counts let
// sequences share blocks; a sequence about to write into a shared block gets a private copy first
// (copy-on-write: the engine copies the K/V of the returned pairs before the step runs).
// Freed blocks that hold a cached full block stay reusable (LRU) until evicted for a new allocation.
//
// Invariants (checked by check_invariants(), used by the property tests):
//  - every block is exactly one of: free-uncached, cached-unreferenced (in the LRU), referenced
//  - refcount(b) == number of (sequence, logical index) entries pointing at b
//  - num_free() + num_used() == num_blocks(); "free" counts free-uncached + cached-unreferenced
//  - a cached block's key equals the hash chain of the tokens it was registered with
//  - after every sequence is freed, num_used() == 0
//
// Correctness never rests on the hash: a lookup hit must also match the stored tokens of the block
// and the identity of its parent entry (each registration gets a unique serial number, and a block
// records its parent's serial), so a collision can only cost a cache miss, never wrong K/V.
//
// Write rule (copy-on-write): a block is written only while exactly one sequence references it and
// it is not registered in the prefix cache. Before append_slots() claims slots in an existing block
// (the partly filled last block, or reserved / rolled-back blocks past it), it enforces the rule:
// a block the sequence alone uses is unregistered if registered (no copy needed); a shared block
// is replaced by a fresh private one, with a copy {src, dst} returned when the old block already
// holds some of the sequence's tokens (an empty reserved block needs no copy). The src of a copy
// stays referenced by its other users, so it cannot be evicted before the engine copies it.
// rollback() itself changes no registration: the blocks it keeps stay valid cache entries until
// something is about to overwrite them.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"

namespace nb {

using SeqId = uint64_t;

// The prefix-cache key of a full block: mixes the parent block's key with the block's tokens.
uint64_t prefix_block_key(uint64_t parent_key, std::span<const int32_t> tokens);
// Key function type; tests pass a deliberately weak one to prove that collisions are harmless.
using BlockKeyFn = uint64_t (*)(uint64_t parent_key, std::span<const int32_t> tokens);

struct BlockCopy {
  int32_t src;
  int32_t dst;
};

class BlockManager {
 public:
  // num_blocks < 0 is taken as 0 and block_size < 1 as 1 (the engine validates its config first).
  BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_cache);
  BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_cache, BlockKeyFn key_fn);

  int64_t num_blocks() const;
  int64_t block_size() const;
  int64_t num_free() const;  // allocatable now (free + evictable cached)
  int64_t num_used() const;  // referenced by at least one sequence

  // Admission. can_allocate: would allocate() succeed for this prompt, counting prefix-cache hits
  // (and reserving `extra_tokens` more slots, e.g. a contiguous layout's whole max length)?
  bool can_allocate(std::span<const int32_t> prompt, int64_t extra_tokens = 0) const;
  // Creates the sequence's block table for `prompt`, reusing cached full blocks of its longest
  // cached prefix; returns the number of prompt tokens whose K/V is already present (a multiple of
  // block_size, and < prompt.size() so at least one token is computed for its logits).
  Result<int64_t> allocate(SeqId seq, std::span<const int32_t> prompt, int64_t extra_tokens = 0);

  // Growth. can_append: are there blocks for `n` more tokens? append_slots makes room for n more
  // tokens (allocating blocks as needed; copy-on-write if the current last block is shared) and
  // returns the copies the engine must perform before writing.
  bool can_append(SeqId seq, int64_t n) const;
  Result<std::vector<BlockCopy>> append_slots(SeqId seq, int64_t n);

  // Registers the sequence's full blocks whose K/V is now computed (tokens = the sequence's tokens
  // so far, of which num_computed have K/V) in the prefix cache. Idempotent.
  void commit_full_blocks(SeqId seq, std::span<const int32_t> tokens, int64_t num_computed);

  // child shares all of parent's blocks (refcounts +1): n > 1 sampling from one prompt. Fork once
  // the parent's claimed slots are computed: slots claimed but not yet written are not protected
  // by copy-on-write (only append_slots() copies), so both would write the same shared block.
  Status fork(SeqId parent, SeqId child);
  // Drops the last k tokens' slots (speculative decoding rejections), freeing emptied blocks (not
  // below allocate()'s blocks when it reserved extra_tokens). 0 <= k <= num_tokens, else kOutOfRange.
  Status rollback(SeqId seq, int64_t k);
  // Releases all of the sequence's blocks (finish, cancel, preemption); unknown ids are a no-op.
  void free(SeqId seq);

  bool has_seq(SeqId seq) const;
  std::span<const int32_t> block_table(SeqId seq) const;
  // Slots the sequence has claimed: allocate() claims prompt.size() (and reserves blocks for
  // extra_tokens more without claiming them); append_slots(n) claims n more, using reserved blocks
  // first; rollback(k) releases k.
  int64_t num_tokens(SeqId seq) const;

  // Prefix-cache accounting, in tokens, over successful allocate() calls (a failed one is retried
  // and would count twice): queried = prompt tokens looked up, hit = the cached tokens returned.
  // Both stay 0 while the cache is disabled.
  int64_t prefix_queries() const;
  int64_t prefix_hits() const;

  // Verifies every invariant above; an error names the first one violated.
  Status check_invariants() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;  // shared_ptr only to keep this header light; not shared between managers
};

}  // namespace nb
