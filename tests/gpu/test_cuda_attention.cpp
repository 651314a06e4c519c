// CUDA paged attention (cuda::batch_attention) against cpu::ref::batch_attention (= cpu::ref::attention
// per sequence, double accumulation) with the same BatchAttentionParams: decode batches (one query per
// sequence, contexts up to 4096, split-K automatic and forced; also through the decode step's kernel,
// cuda::decode_attention, wherever it applies) and prefill batches (causal, cached
// prefix, mixed lengths), GQA groups 1..16, head_dim 8..256, block sizes 1..64, shuffled block tables.
// Cache slots outside the sequences' positions and block-table padding point at NaN, so reading
// anything but the right slots poisons the output.
//
// Tolerance: outputs are convex combinations of N(0,1) V rows; the kernel computes in f32 from inputs
// exactly representable in every dtype tested. f32 error sources (scores of hd terms, expf, P.V over
// <= 4096 keys with per-tile rescaling, split merge) give ~1e-6 absolute; the bound is 3e-5 absolute
// (like the CPU fast path's 2e-5) plus rel * |want| (output rounding for f16/bf16). An indexing bug
// (wrong key, wrong head, missing mask) moves outputs by O(0.1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "attention_check.h"
#include "gpu_test_util.h"
#include "paged_layout.h"

namespace nb {
namespace {

using gpu_test::all_close;
using gpu_test::CudaTest;
using gpu_test::random_normal;

constexpr DType kActs[] = {DType::kF32, DType::kF16, DType::kBF16};

using Shape = gpu_test::PagedShape;

// A batch of sequences over one shared, shuffled block pool (gpu_test::PagedLayout). Host-side f32
// copies (already rounded to the activation dtype) feed the reference; the same values go to the
// device. Slots no sequence owns (spare blocks, table padding) hold NaN.
struct PagedBatch : gpu_test::PagedLayout {
  std::vector<float> q, k_cache, v_cache;
};

PagedBatch make_batch(const Shape& sh, const std::vector<int64_t>& tokens, const std::vector<int64_t>& start,
                      DType act, uint32_t s) {
  PagedBatch b;
  static_cast<gpu_test::PagedLayout&>(b) = gpu_test::make_paged_layout(sh, tokens, start, s);
  const int64_t row = sh.kv_heads * sh.head_dim;
  b.k_cache.assign(static_cast<size_t>(b.pool_blocks * sh.block_size * row), NAN);
  b.v_cache = b.k_cache;
  std::mt19937 rng(gpu_test::seed(s + 7));
  std::normal_distribution<float> nd;
  for (size_t i = 0; i < tokens.size(); ++i)
    for (int64_t pos = 0; pos < start[i] + tokens[i]; ++pos) {
      const int64_t slot = gpu_test::paged_slot(b, i, pos);
      for (int64_t e = 0; e < row; ++e) {
        b.k_cache[static_cast<size_t>(slot * row + e)] = gpu_test::round_to(act, nd(rng));
        b.v_cache[static_cast<size_t>(slot * row + e)] = gpu_test::round_to(act, nd(rng));
      }
    }
  // q ~ N(0, 4): scores up to ~+-25, a sharp softmax, so the running max and rescaling matter.
  b.q = random_normal(static_cast<size_t>(b.total_tokens * sh.heads * sh.head_dim), s + 1, 2.f);
  gpu_test::round_all(b.q, act);
  return b;
}

BatchAttentionParams params_for(const PagedBatch& b) { return gpu_test::paged_params(b); }

std::string describe(const PagedBatch& b, DType act, int64_t split) {
  std::string s = "heads ";
  s.append(std::to_string(b.shape.heads)).append("/").append(std::to_string(b.shape.kv_heads));
  s.append(" hd ").append(std::to_string(b.shape.head_dim)).append(" bs ").append(std::to_string(b.shape.block_size));
  s.append(" act ").append(dtype_name(act)).append(" split ").append(std::to_string(split)).append(" seqs (tokens@start):");
  for (size_t i = 0; i < b.num_tokens.size(); ++i) {
    s.append(" ").append(std::to_string(b.num_tokens[i])).append("@").append(std::to_string(b.start_pos[i]));
  }
  return s;
}

class CudaAttention : public gpu_test::AttentionTest {
 protected:
  // Runs one batch on the GPU (with the given decode split; 0 = automatic) and checks every output.
  void check(const Shape& sh, const std::vector<int64_t>& tokens, const std::vector<int64_t>& start, DType act,
             uint32_t s, int64_t split_keys, int64_t extra_context = 0) {
    const PagedBatch b = make_batch(sh, tokens, start, act, s);
    const std::string what = describe(b, act, split_keys);
    std::vector<float> want(b.q.size());
    BatchAttentionParams hp = params_for(b);
    hp.q = b.q.data();
    hp.out = want.data();
    hp.k_cache = b.k_cache.data();
    hp.v_cache = b.v_cache.data();
    hp.block_tables = b.tables.data();
    hp.query_start = b.query_start.data();
    hp.start_pos = b.start_pos32.data();
    cpu::ref::batch_attention(hp);

    cuda::DeviceBuffer d_q = upload_act(b.q, act);
    cuda::DeviceBuffer d_k = upload_act(b.k_cache, act), d_v = upload_act(b.v_cache, act);
    cuda::DeviceBuffer d_tables = upload(b.tables), d_qs = upload(b.query_start), d_sp = upload(b.start_pos32);
    cuda::DeviceBuffer d_out = poisoned(b.q.size() * gpu_test::elem_bytes(act));
    BatchAttentionParams p = params_for(b);
    p.q = d_q.as<float>();
    p.out = d_out.as<float>();
    p.k_cache = d_k.as<float>();
    p.v_cache = d_v.as<float>();
    p.block_tables = d_tables.as<int32_t>();
    p.query_start = d_qs.as<int32_t>();
    p.start_pos = d_sp.as<int32_t>();
    p.max_context_len += extra_context;  // a looser host bound must not change the result
    p.act_dtype = act;
    ctx().set_decode_split_keys(split_keys);
    const Status st = cuda::batch_attention(p, ctx());
    ASSERT_TRUE(st.ok()) << what << ": " << st.to_string();
    const std::vector<float> got = download_act(d_out, b.q.size(), act);
    EXPECT_TRUE(all_close(got, want, gpu_test::act_tol(act, 3e-5))) << what;
    check_decode_kernel(p, b.q.size(), act, want, what);  // the decode step's kernel too, where it applies
  }
};

TEST_F(CudaAttention, DecodeMatchesReference) {
  struct Case {
    Shape shape;
    std::vector<int64_t> contexts;  // per sequence: start_pos + 1
  };
  const std::vector<Case> cases = {
      {{8, 8, 64, 16}, {1, 17, 300}},                 // GQA 1, a one-key sequence
      {{32, 8, 128, 16}, {4096, 1000, 33}},           // GQA 4, long context
      {{32, 4, 128, 32}, {4096}},                     // GQA 8, batch 1: split along the keys
      {{9, 3, 80, 7}, {}},                            // 17 random contexts, odd head_dim and block size
      {{4, 2, 256, 16}, {513, 2}},                    // head_dim 256
      {{8, 4, 8, 4}, {50, 3}},                        // stories260K-like head_dim 8
      {{16, 1, 256, 64}, {100, 1}},                   // MQA, group 16 over two row tiles
      {{12, 1, 64, 1}, {129}},                        // block size 1
  };
  uint32_t s = 1000;
  for (Case c : cases) {
    if (c.contexts.empty()) {
      std::mt19937 rng(gpu_test::seed(s++));
      for (int i = 0; i < 17; ++i) c.contexts.push_back(1 + static_cast<int64_t>(rng() % 600));
    }
    std::vector<int64_t> tokens(c.contexts.size(), 1), start;
    for (int64_t len : c.contexts) start.push_back(len - 1);
    for (DType act : kActs)
      for (int64_t split : {int64_t{0}, int64_t{32}, int64_t{37}, int64_t{1024}}) {
        check(c.shape, tokens, start, act, s++, split);
        if (HasFatalFailure()) return;
      }
  }
  // decode_attention takes f16/bf16 with head_dim 64/128 and groups <= 8: the first three shapes,
  // every split.
  EXPECT_EQ(decode_checks_, 3 * 2 * 4);
}

// A decode batch whose host-side max_context_len overstates the longest sequence: the extra splits
// are empty and the merge must ignore them.
TEST_F(CudaAttention, DecodeWithLooseContextBound) {
  for (DType act : kActs) {
    check({8, 2, 64, 16}, {1, 1}, {90, 10}, act, 1500, 32, /*extra_context=*/200);
    check({8, 2, 64, 16}, {1, 1}, {90, 10}, act, 1501, 0, /*extra_context=*/3000);
  }
  EXPECT_EQ(decode_checks_, 2 * 2);  // f16 and bf16 through decode_attention too
}

TEST_F(CudaAttention, PrefillMatchesReference) {
  struct Case {
    Shape shape;
    std::vector<int64_t> tokens, start;
  };
  const std::vector<Case> cases = {
      {{9, 3, 64, 16}, {17, 5, 1, 64}, {0, 7, 40, 100}},  // mixed batch incl. a decode row
      {{32, 8, 128, 16}, {256, 100}, {0, 300}},          // GQA 4, long prompt + cached prefix
      {{4, 4, 256, 7}, {20, 9}, {3, 0}},                 // head_dim 256, odd block size
      {{8, 1, 32, 1}, {33}, {5}},                        // MQA, block size 1
      {{6, 2, 20, 8}, {3, 1, 12}, {29, 0, 12}},          // odd head_dim
      {{32, 4, 128, 64}, {70, 2, 31}, {0, 900, 1}},      // GQA 8
      {{8, 8, 64, 16}, {40, 0, 9}, {0, 5, 3}},           // a sequence with no new tokens
  };
  uint32_t s = 2000;
  for (const Case& c : cases)
    for (DType act : kActs) {
      check(c.shape, c.tokens, c.start, act, s++, 0);
      if (HasFatalFailure()) return;
    }
}

TEST_F(CudaAttention, RejectsUnsupportedShapes) {
  BatchAttentionParams p{};
  p.num_seqs = 1;
  p.num_tokens = 1;
  p.max_query_len = 1;
  p.max_context_len = 1;
  p.block_size = 16;
  p.num_heads = 4;
  p.num_kv_heads = 4;
  p.head_dim = 320;
  EXPECT_EQ(cuda::batch_attention(p, ctx()).code(), StatusCode::kUnimplemented);
  p.head_dim = 64;
  p.num_kv_heads = 3;
  EXPECT_EQ(cuda::batch_attention(p, ctx()).code(), StatusCode::kInvalidArgument);
  p.num_kv_heads = 4;
  p.act_dtype = DType::kQ8_0;
  EXPECT_EQ(cuda::batch_attention(p, ctx()).code(), StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace nb
