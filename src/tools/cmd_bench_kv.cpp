// nibble bench kv: paged attention time on the GPU with an f16, int8 and int4 KV cache (issue 6:
// "decode attention time at 4k context no worse than FP16 KV"). For each batch size B: B sequences
// of --context tokens each (block tables interleaved over one pool, as a busy engine's are), q rows
// of --query tokens each at the end of the context (1 = decode), f16 activations; the op is
// cuda::batch_attention with cache_dtype f16 (the act-dtype cache), int8 or int4, timed alone (median
// of -r runs of back-to-back calls). Also printed: the K/V bytes each call reads (metadata included)
// over the time, each format's time relative to f16, and the time of the kv_write that stores the
// batch's new tokens (quantizing them for int8/int4). Cache contents are constant bytes
// (finite f16 values and scales): attention's time does not depend on them.
// The shape defaults to Llama-2-7B's attention (32 heads, 32 KV heads, head_dim 128, blocks of 16).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/kv_format.h"
#include "core/dtype.h"
#include "tools/bench_commands.h"
#include "tools/bench_cuda.h"
#include "tools/cli_args.h"
#include "tools/commands.h"
#ifdef NIBBLE_HAVE_CUDA
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device.h"
#endif

namespace nb::tools {
namespace {

constexpr const char* kCmd = "bench kv";

#ifdef NIBBLE_HAVE_CUDA
struct BenchShape {
  int64_t heads, kv_heads, head_dim, block_size, context, query;
};


// One batch size: every format on the same shape; prints one line a format.
Status bench_batch(cuda::Context& ctx, const BenchShape& sh, int64_t batch, int runs) {
  const int64_t blocks_per_seq = (sh.context + sh.block_size - 1) / sh.block_size;
  const int64_t num_blocks = blocks_per_seq * batch;
  std::vector<int32_t> tables(static_cast<size_t>(num_blocks)), query_start, start_pos;
  for (int64_t s = 0; s < batch; ++s) {
    for (int64_t j = 0; j < blocks_per_seq; ++j) tables[static_cast<size_t>(s * blocks_per_seq + j)] = static_cast<int32_t>(j * batch + s);
    query_start.push_back(static_cast<int32_t>(s * sh.query));
    start_pos.push_back(static_cast<int32_t>(sh.context - sh.query));
  }
  query_start.push_back(static_cast<int32_t>(batch * sh.query));
  const size_t q_bytes = static_cast<size_t>(batch * sh.query * sh.heads * sh.head_dim) * 2;
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_q, cuda::DeviceBuffer::allocate(q_bytes));
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_out, cuda::DeviceBuffer::allocate(q_bytes));
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_tables, cuda::DeviceBuffer::allocate(tables.size() * 4));
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_qs, cuda::DeviceBuffer::allocate(query_start.size() * 4));
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_sp, cuda::DeviceBuffer::allocate(start_pos.size() * 4));
  NB_RETURN_IF_ERROR(cuda::copy_to_device(d_tables.data(), tables.data(), tables.size() * 4, ctx.stream()));
  NB_RETURN_IF_ERROR(cuda::copy_to_device(d_qs.data(), query_start.data(), query_start.size() * 4, ctx.stream()));
  NB_RETURN_IF_ERROR(cuda::copy_to_device(d_sp.data(), start_pos.data(), start_pos.size() * 4, ctx.stream()));
  NB_RETURN_IF_ERROR(cuda::fill_bytes(d_q.data(), 0x2C, q_bytes, ctx.stream()));  // f16 0x2C2C = 0.069
  // The new tokens' K and V rows (N(0,1) in f16: the int4 rule's work depends on the values) and
  // their slots (the last --query positions of each sequence), for timing kv_write.
  const int64_t new_rows = batch * sh.query, row = sh.kv_heads * sh.head_dim;
  std::vector<uint16_t> kv_host(static_cast<size_t>(new_rows * row));
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd;
  for (uint16_t& h : kv_host) h = fp32_to_fp16(nd(rng));
  std::vector<int64_t> slots;
  for (int64_t s = 0; s < batch; ++s)
    for (int64_t pos = sh.context - sh.query; pos < sh.context; ++pos)
      slots.push_back(static_cast<int64_t>(tables[static_cast<size_t>(s * blocks_per_seq + pos / sh.block_size)]) *
                          sh.block_size + pos % sh.block_size);
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_new, cuda::DeviceBuffer::allocate(kv_host.size() * 2));
  NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_slots, cuda::DeviceBuffer::allocate(slots.size() * 8));
  NB_RETURN_IF_ERROR(cuda::copy_to_device(d_new.data(), kv_host.data(), kv_host.size() * 2, ctx.stream()));
  NB_RETURN_IF_ERROR(cuda::copy_to_device(d_slots.data(), slots.data(), slots.size() * 8, ctx.stream()));
  double f16_time = 0;
  for (KvCacheDType kvt : {KvCacheDType::kF16, KvCacheDType::kInt8, KvCacheDType::kInt4}) {
    const KvBlockFormat f{kvt, sh.block_size, sh.kv_heads, sh.head_dim};
    const size_t pool_bytes = static_cast<size_t>(num_blocks * f.block_bytes());
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer k_pool, cuda::DeviceBuffer::allocate(pool_bytes));
    NB_ASSIGN_OR_RETURN(cuda::DeviceBuffer v_pool, cuda::DeviceBuffer::allocate(pool_bytes));
    // 0x3C bytes: f16 values and scales/zeros of 1.06, int8 codes 60, int4 codes 12 and 3.
    NB_RETURN_IF_ERROR(cuda::fill_bytes(k_pool.data(), 0x3C, pool_bytes, ctx.stream()));
    NB_RETURN_IF_ERROR(cuda::fill_bytes(v_pool.data(), 0x3C, pool_bytes, ctx.stream()));
    BatchAttentionParams p{};
    p.q = d_q.as<float>();
    p.out = d_out.as<float>();
    p.k_cache = k_pool.as<float>();
    p.v_cache = v_pool.as<float>();
    p.block_tables = d_tables.as<int32_t>();
    p.query_start = d_qs.as<int32_t>();
    p.start_pos = d_sp.as<int32_t>();
    p.block_table_stride = blocks_per_seq;
    p.num_seqs = batch;
    p.num_tokens = batch * sh.query;
    p.max_query_len = sh.query;
    p.max_context_len = sh.context;
    p.block_size = sh.block_size;
    p.num_heads = sh.heads;
    p.num_kv_heads = sh.kv_heads;
    p.head_dim = sh.head_dim;
    p.scale = 1.f / std::sqrt(static_cast<float>(sh.head_dim));
    p.act_dtype = DType::kF16;
    p.cache_dtype = kvt;
    NB_ASSIGN_OR_RETURN(double t, time_gpu(ctx, runs, 0, [&](int) { return cuda::batch_attention(p, ctx); }));
    KvWriteParams w{d_new.as<float>(), d_new.as<float>(), k_pool.as<float>(), v_pool.as<float>(), d_slots.as<int64_t>(),
                    new_rows, sh.kv_heads, sh.head_dim, DType::kF16};
    w.cache_dtype = kvt;
    w.cache_block_size = sh.block_size;
    NB_ASSIGN_OR_RETURN(double t_write, time_gpu(ctx, runs, 0, [&](int) { return cuda::kv_write(w, ctx); }));
    if (kvt == KvCacheDType::kF16) f16_time = t;
    // Bytes read: every sequence's K and V of every position, values and scales/zeros.
    const double bytes = 2.0 * static_cast<double>(batch * sh.context * sh.kv_heads * f.bytes_per_token_head());
    std::printf("  %5lld  %-5s %10.1f %9.1f %8.2fx %10.1f\n", static_cast<long long>(batch), kv_cache_dtype_name(kvt),
                t * 1e6, bytes / t / 1e9, t / f16_time, t_write * 1e6);
  }
  return Status::Ok();
}
#endif

int run_bench_kv_impl(int argc, char** argv) {
  CliArgs args(kCmd, "[--context 4096] [--batches 1,8,32] [--query 1] [--heads 32] [--kv-heads 32] [--head-dim 128]");
  args.option("--context", "tokens in each sequence's cache (queries included)", "4096");
  args.option("--batches", "batch sizes (sequences a call)", "1,8,32");
  args.option("--query", "query tokens a sequence (1 = decode; more = a prefill chunk at the context's end)", "1");
  args.option("--heads", "query heads", "32");
  args.option("--kv-heads", "KV heads", "32");
  args.option("--head-dim", "head dimension (<= 256)", "128");
  args.option("--block-size", "tokens a KV block", "16");
  args.option("-r,--runs", "repetitions (medians reported)", "5");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail(kCmd, s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
#ifdef NIBBLE_HAVE_CUDA
  auto run = [&]() -> Status {
    BenchShape sh{};
    NB_ASSIGN_OR_RETURN(sh.context, args.get_int("--context", 1, 1 << 20));
    NB_ASSIGN_OR_RETURN(sh.query, args.get_int("--query", 1, sh.context));
    NB_ASSIGN_OR_RETURN(sh.heads, args.get_int("--heads", 1, 1024));
    NB_ASSIGN_OR_RETURN(sh.kv_heads, args.get_int("--kv-heads", 1, sh.heads));
    NB_ASSIGN_OR_RETURN(sh.head_dim, args.get_int("--head-dim", 2, 256));
    NB_ASSIGN_OR_RETURN(sh.block_size, args.get_int("--block-size", 1, 1024));
    NB_ASSIGN_OR_RETURN(int64_t runs, args.get_int("-r", 1, 100));
    NB_ASSIGN_OR_RETURN(std::vector<int64_t> batches, parse_sizes(args.get("--batches"), "--batches", 999999));
    NB_ASSIGN_OR_RETURN(cuda::DeviceInfo info, cuda::device_info(0));
    NB_ASSIGN_OR_RETURN(std::unique_ptr<cuda::Context> ctx, cuda::Context::create(0));
    std::printf("device %s; heads %lld/%lld, head_dim %lld, block %lld, context %lld, query %lld, act f16\n",
                info.name.c_str(), static_cast<long long>(sh.heads), static_cast<long long>(sh.kv_heads),
                static_cast<long long>(sh.head_dim), static_cast<long long>(sh.block_size),
                static_cast<long long>(sh.context), static_cast<long long>(sh.query));
    std::printf("  batch  kv    attention(us)  KV GB/s  vs f16  kv_write(us)\n");
    for (int64_t b : batches) NB_RETURN_IF_ERROR(bench_batch(*ctx, sh, b, static_cast<int>(runs)));
    return Status::Ok();
  };
  if (Status s = run(); !s.ok()) return fail(kCmd, s);
  return 0;
#else
  return fail(kCmd, failed_precondition("this nibble was built without CUDA; rebuild with -DNIBBLE_CUDA=ON"));
#endif
}

}  // namespace

int run_bench_kv(int argc, char** argv) { return run_bench_kv_impl(argc, argv); }

}  // namespace nb::tools
