// The Llama forward on one NVIDIA GPU (ForwardBackend): the same computation as LlamaModel's CPU
// forward, op for op, through the CUDA ops (backend/cuda/cuda_ops.h) that share the CPU ops' Params.
//
// Weights are uploaded once in the device dtype (f16, bf16 or f32; block-quantized GGUF tensors are
// dequantized on the host first; the embedding table stays in its stored dtype, the embedding kernel
// reads every GGUF block type), except packed linears: 4-bit kQGroup weights in the W4A16 layout
// (upload_w4) and W8A8 weights (kQGroup with int8 activations) in backend/cuda/w8a8.h's layout, run by
// cuda::matmul with the CPU's arithmetic. Norm weights and RoPE frequencies stay f32. Activations are
// in the device dtype; logits come back as f32. The KV cache is in the device dtype by default, or
// int8 / int4 pools (--kv-cache-dtype, backend/kv_format.h: the same bytes as the CPU's, written and
// read with the same Hadamard rotation of q, k, v and of the attention output).
//
// A step: the host writes the batch description (tokens, positions, slots, sequence starts, block
// tables, logit rows) into pinned staging and copies it to device buffers at fixed addresses; the
// layers run; the rows that want logits are gathered, normed and projected; the logits are copied
// back. Steps where every sequence runs the same number of tokens (decode: 1; speculative
// verification: K + 1, up to 16) are replayed from CUDA graphs captured once per (bucketed batch
// size, tokens a sequence): the batch is padded to the bucket with sequences that write no KV (slot -1)
// and whose outputs are dropped, and attention is planned for the longest possible context (its kernel
// bounds every sequence by its own length read from device memory).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/w8a8.h"
#include "core/group_quant.h"
#include "model/cuda/llama_cuda_internal.h"

namespace nb::cuda_model {
namespace {

Result<DType> parse_dtype(const std::string& s) {
  if (s == "f16" || s == "float16") return DType::kF16;
  if (s == "bf16" || s == "bfloat16") return DType::kBF16;
  if (s == "f32" || s == "float32") return DType::kF32;
  return invalid_argument("--dtype must be f16, bf16 or f32 on CUDA; got '" + s + "'");
}

}  // namespace

Result<std::unique_ptr<CudaLlama>> CudaLlama::create(const ModelWeights& w, const CudaForwardOptions& o) {
  NB_RETURN_IF_ERROR(w.config.validate());
  if (o.max_batch_tokens < 1 || o.max_seqs < 1) return invalid_argument("CUDA forward: batch limits must be positive");
  std::unique_ptr<CudaLlama> m(new CudaLlama(w.config, o));
  NB_ASSIGN_OR_RETURN(m->dtype_, parse_dtype(o.dtype));
  NB_ASSIGN_OR_RETURN(m->ctx_, Context::create(o.ordinal));
  if (w.config.head_dim > 256) return unimplemented("CUDA attention supports head_dim <= 256");
  NB_RETURN_IF_ERROR(m->upload_weights(w));
  NB_RETURN_IF_ERROR(m->allocate_scratch());
  const char* fusion = std::getenv("NIBBLE_DECODE_FUSION");
  m->fusion_ = fusion == nullptr || std::string(fusion) != "0";
  const char* step = std::getenv("NIBBLE_DECODE_STEP");
  // On by default (NIBBLE_DECODE_STEP=0: the layer-by-layer fused kernels): on H200, 7B batch 1,
  // 3.88 ms a token against 4.46 ms (bench/results/gpu-h200-decode-2026-11-27b.md).
  m->decode_step_ = m->fusion_ && (step == nullptr || std::string(step) != "0");
  m->step_profile_ = m->decode_step_ && std::getenv("NIBBLE_DECODE_STEP_PROFILE") != nullptr;
  m->fused_weights_ = m->fused_weights_ok();
  m->w4_weights_ = m->w4_weights_ok();
  return m;
}

Result<Tensor> CudaLlama::upload(const Tensor& t, DType target) {
  const int64_t rows = t.rows(), cols = t.cols();
  const size_t out_row = static_cast<size_t>(cols) * act_bytes(target);
  NB_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::allocate(static_cast<size_t>(rows) * out_row));
  NB_RETURN_IF_ERROR(upload_into(t, target, buf.data()));
  const int64_t shape[2] = {rows, cols};
  Tensor out = Tensor::view(buf.data(), shape, 2, target, nullptr, Device::kCUDA);
  owned_.push_back(std::move(buf));
  return out;
}

Status CudaLlama::upload_into(const Tensor& t, DType target, void* dst) {
  const int64_t rows = t.rows(), cols = t.cols();
  const size_t out_row = static_cast<size_t>(cols) * act_bytes(target);
  if (is_w8a8(t)) return internal_error("CUDA upload: a W8A8 weight goes through upload_w8a8 (its int8 layout)");
  if (t.dtype() == target) {
    NB_RETURN_IF_ERROR(cuda::copy_to_device(dst, t.data(), t.nbytes(), ctx_->stream()));
  } else {
    // Convert on the host through a pinned chunk (a few MiB at a time).
    const int64_t chunk_rows = std::max<int64_t>(1, (8 << 20) / static_cast<int64_t>(out_row));
    NB_ASSIGN_OR_RETURN(PinnedBuffer pin, PinnedBuffer::allocate(static_cast<size_t>(chunk_rows) * out_row));
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const int64_t n = std::min(chunk_rows, rows - r0);
      NB_RETURN_IF_ERROR(ctx_->synchronize());  // the previous chunk's copy is done with `pin`
      for (int64_t r = 0; r < n; ++r) {
        dequantize_tensor_row(t, r0 + r, row.data());  // GGUF blocks and kQGroup (GPTQ/AWQ) alike
        auto* out = static_cast<uint8_t*>(pin.data()) + static_cast<size_t>(r) * out_row;
        for (int64_t c = 0; c < cols; ++c) {
          const float v = row[static_cast<size_t>(c)];
          if (target == DType::kF32) {
            std::memcpy(out + c * 4, &v, 4);
          } else {
            const uint16_t h = target == DType::kF16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
            std::memcpy(out + c * 2, &h, 2);
          }
        }
      }
      NB_RETURN_IF_ERROR(cuda::copy_to_device(static_cast<uint8_t*>(dst) + static_cast<size_t>(r0) * out_row,
                                              pin.data(), static_cast<size_t>(n) * out_row, ctx_->stream()));
    }
    NB_RETURN_IF_ERROR(ctx_->synchronize());
  }
  return Status::Ok();
}

bool CudaLlama::w4_applies(const Tensor& t) const {
  const GroupQuant* g = t.dtype() == DType::kQGroup ? t.group_quant() : nullptr;
  return g != nullptr && g->bits == 4 && !g->act_int8 && dtype_ != DType::kF32;
}

bool CudaLlama::is_w8a8(const Tensor& t) {
  return t.dtype() == DType::kQGroup && t.group_quant() != nullptr && t.group_quant()->act_int8;
}

Result<Tensor> CudaLlama::upload_w8a8(const Tensor& t) {
  // No dequantized fallback: f16 weights with f16 activations would not be the W8A8 arithmetic the
  // model was quantized (and is evaluated on the CPU) for.
  if (Status st = cuda::w8a8_check(t); !st.ok()) {
    return Status(st.code(), "CUDA: " + st.message() + "; requantize it that way or run it on the CPU (--device cpu)");
  }
  NB_ASSIGN_OR_RETURN(const std::vector<uint8_t> bytes, cuda::w8a8_repack(t));
  NB_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::allocate(bytes.size()));
  NB_RETURN_IF_ERROR(cuda::copy_to_device(buf.data(), bytes.data(), bytes.size(), ctx_->stream()));
  NB_RETURN_IF_ERROR(ctx_->synchronize());  // `bytes` goes away on return
  // The device view says what the weight is (w8a8_check reads it); its scales live in the buffer.
  const GroupQuant& src = *t.group_quant();
  auto q = std::make_shared<GroupQuant>();
  q->bits = src.bits;
  q->group_size = src.group_size;
  q->symmetric = src.symmetric;
  q->act_int8 = true;
  q->num_groups = src.num_groups;
  const int64_t shape[2] = {t.rows(), t.cols()};
  Tensor out = Tensor::view(buf.data(), shape, 2, DType::kQGroup, nullptr, Device::kCUDA);
  out.set_group_quant(std::move(q));
  owned_.push_back(std::move(buf));
  return out;
}

Result<Tensor> CudaLlama::upload_linear(const Tensor& t) {
  if (is_w8a8(t)) return upload_w8a8(t);
  if (w4_applies(t)) {
    Result<Tensor> packed = cuda::upload_w4(t, *ctx_);
    if (packed.ok()) return packed;
    // Layouts the W4A16 kernels do not take (act-order, K % 64): dequantized to the device dtype.
    if (!w4_fallback_noted_) {
      std::fprintf(stderr, "nibble: 4-bit weights dequantized to %s on the GPU: %s\n", dtype_name(dtype_).data(),
                   packed.status().to_string().c_str());
      w4_fallback_noted_ = true;
    }
  }
  return upload(t, dtype_);
}

Result<const float*> CudaLlama::upload_f32(const Tensor& t) {
  NB_ASSIGN_OR_RETURN(Tensor d, upload(t, DType::kF32));
  return d.ptr<const float>();
}

Status CudaLlama::upload_weights(const ModelWeights& w) {
  // The embedding kernel reads every stored dtype; keep the table as stored (smaller for GGUF).
  const DType et = w.tok_embeddings.dtype();
  const bool embed_as_is = et == DType::kF32 || et == DType::kF16 || et == DType::kBF16 || et == DType::kQ8_0 ||
                           et == DType::kQ4_0 || et == DType::kQ4_1;
  if (embed_as_is) {
    NB_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::allocate(w.tok_embeddings.nbytes()));
    NB_RETURN_IF_ERROR(cuda::copy_to_device(buf.data(), w.tok_embeddings.data(), w.tok_embeddings.nbytes(),
                                            ctx_->stream()));
    const int64_t shape[2] = {w.tok_embeddings.dim(0), w.tok_embeddings.dim(1)};
    embed_ = Tensor::view(buf.data(), shape, 2, et, nullptr, Device::kCUDA);
    owned_.push_back(std::move(buf));
  } else {
    NB_ASSIGN_OR_RETURN(embed_, upload(w.tok_embeddings, dtype_));
  }
  NB_ASSIGN_OR_RETURN(output_, upload(w.output, dtype_));
  NB_ASSIGN_OR_RETURN(final_norm_, upload_f32(w.final_norm));
  for (const LayerWeights& l : w.layers) {
    DeviceLayer d;
    NB_ASSIGN_OR_RETURN(d.attn_norm, upload_f32(l.attn_norm));
    NB_ASSIGN_OR_RETURN(d.ffn_norm, upload_f32(l.ffn_norm));
    if (w4_applies(l.wq) || is_w8a8(l.wq) || is_w8a8(l.wk) || is_w8a8(l.wv)) {
      // 4-bit (W4A16) and W8A8 weights stay packed for their matmul kernels; no fused q|k|v buffer
      NB_ASSIGN_OR_RETURN(d.wq, upload_linear(l.wq));
      NB_ASSIGN_OR_RETURN(d.wk, upload_linear(l.wk));
      NB_ASSIGN_OR_RETURN(d.wv, upload_linear(l.wv));
    } else {  // q, k and v in one buffer: the decode step projects all three with one fused linear
      const int64_t rq = l.wq.rows(), rk = l.wk.rows(), rv = l.wv.rows(), cols = l.wq.cols();
      if (l.wk.cols() != cols || l.wv.cols() != cols) return invalid_argument("CUDA upload: q/k/v widths differ");
      const size_t row_bytes = static_cast<size_t>(cols) * act_bytes(dtype_);
      NB_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::allocate(static_cast<size_t>(rq + rk + rv) * row_bytes));
      auto* base = static_cast<uint8_t*>(buf.data());
      NB_RETURN_IF_ERROR(upload_into(l.wq, dtype_, base));
      NB_RETURN_IF_ERROR(upload_into(l.wk, dtype_, base + static_cast<size_t>(rq) * row_bytes));
      NB_RETURN_IF_ERROR(upload_into(l.wv, dtype_, base + static_cast<size_t>(rq + rk) * row_bytes));
      const auto view = [&](size_t row0, int64_t rows) {
        const int64_t shape[2] = {rows, cols};
        return Tensor::view(base + row0 * row_bytes, shape, 2, dtype_, nullptr, Device::kCUDA);
      };
      d.wqkv = view(0, rq + rk + rv);
      d.wq = view(0, rq);
      d.wk = view(static_cast<size_t>(rq), rk);
      d.wv = view(static_cast<size_t>(rq + rk), rv);
      owned_.push_back(std::move(buf));
    }
    NB_ASSIGN_OR_RETURN(d.wo, upload_linear(l.wo));
    NB_ASSIGN_OR_RETURN(d.w_gate, upload_linear(l.w_gate));
    NB_ASSIGN_OR_RETURN(d.w_up, upload_linear(l.w_up));
    NB_ASSIGN_OR_RETURN(d.w_down, upload_linear(l.w_down));
    layers_.push_back(d);
  }
  std::vector<float> inv(static_cast<size_t>(config_.head_dim / 2));
  rope_inv_freq(config_, inv.data());
  NB_ASSIGN_OR_RETURN(inv_freq_, DeviceBuffer::allocate(inv.size() * 4));
  NB_RETURN_IF_ERROR(cuda::copy_to_device(inv_freq_.data(), inv.data(), inv.size() * 4, ctx_->stream()));
  return ctx_->synchronize();
}

Status CudaLlama::allocate_scratch() {
  const ModelConfig& c = config_;
  max_tokens_ = options_.max_batch_tokens;
  max_seqs_ = std::max(options_.max_seqs, int64_t{1});
  max_rows_ = std::max(max_tokens_, max_seqs_);
  // A block table row can need one entry per position (block size 1) at most.
  max_table_ = max_seqs_ * c.max_seq_len;
  const size_t ab = act_bytes(dtype_);
  const auto t = static_cast<size_t>(std::max(max_tokens_, max_seqs_));
  const auto q_dim = static_cast<size_t>(c.num_heads * c.head_dim);
  const auto kv_dim = static_cast<size_t>(c.num_kv_heads * c.head_dim);
  const auto dim = static_cast<size_t>(c.dim), hidden = static_cast<size_t>(c.hidden_dim);
  NB_ASSIGN_OR_RETURN(x_, DeviceBuffer::allocate(t * dim * ab));
  NB_ASSIGN_OR_RETURN(xb_, DeviceBuffer::allocate(t * std::max(dim, q_dim) * ab));
  NB_ASSIGN_OR_RETURN(q_, DeviceBuffer::allocate(t * q_dim * ab));
  NB_ASSIGN_OR_RETURN(k_, DeviceBuffer::allocate(t * kv_dim * ab));
  NB_ASSIGN_OR_RETURN(v_, DeviceBuffer::allocate(t * kv_dim * ab));
  NB_ASSIGN_OR_RETURN(att_, DeviceBuffer::allocate(t * q_dim * ab));
  NB_ASSIGN_OR_RETURN(ob_, DeviceBuffer::allocate(t * dim * ab));
  NB_ASSIGN_OR_RETURN(hb_, DeviceBuffer::allocate(t * hidden * ab));
  NB_ASSIGN_OR_RETURN(hb2_, DeviceBuffer::allocate(t * hidden * ab));
  NB_ASSIGN_OR_RETURN(xg_, DeviceBuffer::allocate(static_cast<size_t>(max_rows_) * dim * ab));
  if (!layers_.empty() && is_w8a8(layers_[0].wq)) {
    NB_ASSIGN_OR_RETURN(w8q_, DeviceBuffer::allocate(t * std::max(dim, hidden)));  // xb's codes, then SwiGLU's
    NB_ASSIGN_OR_RETURN(w8d_, DeviceBuffer::allocate(t * 4));
  }
  const size_t logits_bytes = static_cast<size_t>(max_rows_ * c.vocab_size) * 4;
  NB_ASSIGN_OR_RETURN(logits_d_, DeviceBuffer::allocate(logits_bytes));
  NB_ASSIGN_OR_RETURN(logits_h_, PinnedBuffer::allocate(logits_bytes));
  NB_ASSIGN_OR_RETURN(greedy_d_, DeviceBuffer::allocate(static_cast<size_t>(max_rows_) * 4));
  NB_ASSIGN_OR_RETURN(greedy_h_, PinnedBuffer::allocate(static_cast<size_t>(max_rows_) * 4));
  const IdxOffsets o = idx_offsets(max_tokens_, max_seqs_, max_rows_, max_table_);
  NB_ASSIGN_OR_RETURN(idx_d_, DeviceBuffer::allocate(static_cast<size_t>(o.total) * 4));
  NB_ASSIGN_OR_RETURN(idx_h_, PinnedBuffer::allocate(static_cast<size_t>(o.total) * 4));
  NB_ASSIGN_OR_RETURN(slots_d_, DeviceBuffer::allocate(static_cast<size_t>(max_tokens_) * 8));
  NB_ASSIGN_OR_RETURN(slots_h_, PinnedBuffer::allocate(static_cast<size_t>(max_tokens_) * 8));
  auto* base = idx_h_.as<int32_t>();
  h_tokens_ = base + o.tokens;
  h_positions_ = base + o.positions;
  h_qstart_ = base + o.qstart;
  h_startpos_ = base + o.startpos;
  h_rows_ = base + o.rows;
  h_tables_ = base + o.tables;
  return Status::Ok();
}

Status CudaLlama::stage(const StepLayout& s) {
  const IdxOffsets o = idx_offsets(max_tokens_, max_seqs_, max_rows_, max_table_);
  auto* d = idx_d_.as<int32_t>();
  void* st = ctx_->stream();
  auto put = [&](int64_t off, int64_t n) {
    return cuda::copy_to_device(d + off, idx_h_.as<int32_t>() + off, static_cast<size_t>(n) * 4, st);
  };
  NB_RETURN_IF_ERROR(put(o.tokens, s.tokens));
  NB_RETURN_IF_ERROR(put(o.positions, s.tokens));
  NB_RETURN_IF_ERROR(put(o.qstart, s.seqs + 1));
  NB_RETURN_IF_ERROR(put(o.startpos, s.seqs));
  NB_RETURN_IF_ERROR(put(o.rows, s.rows));
  NB_RETURN_IF_ERROR(put(o.tables, s.seqs * s.stride));
  return cuda::copy_to_device(slots_d_.data(), slots_h_.data(), static_cast<size_t>(s.tokens) * 8, st);
}

Status CudaLlama::forward(const ForwardBatch& batch, const KvPools& kv, float* logits) {
  const ModelConfig& c = config_;
  NB_RETURN_IF_ERROR(cuda::set_device(options_.ordinal));
  last_rows_ = 0;
  StepLayout s;
  s.tokens = static_cast<int64_t>(batch.tokens.size());
  s.seqs = static_cast<int64_t>(batch.seqs.size());
  if (s.tokens > max_tokens_ || s.seqs > max_seqs_) {
    return invalid_argument("CUDA forward: batch of " + std::to_string(s.tokens) + " tokens / " +
                            std::to_string(s.seqs) + " sequences exceeds the limits it was created with (" +
                            std::to_string(max_tokens_) + " / " + std::to_string(max_seqs_) + ")");
  }
  // Graph-able: every sequence runs the same number of tokens q (1 for decode, K + 1 for a
  // speculative verification) and wants either every token's logits or only the last one's.
  const int64_t q = batch.seqs.empty() ? 0 : batch.seqs[0].num_tokens;
  bool uniform = q >= 1 && q <= kMaxGraphQuery;
  bool every_row = q > 1;  // q == 1: one row either way
  int64_t max_q = 0, max_ctx = 0, max_blocks = 1;
  for (const SeqForward& sq : batch.seqs) {
    const bool all_rows = batch.all_logits || sq.all_logits;
    uniform = uniform && sq.num_tokens == q && sq.want_logits && (q == 1 || all_rows == every_row);
    every_row = every_row && all_rows;
    max_q = std::max(max_q, sq.num_tokens);
    max_ctx = std::max(max_ctx, sq.start_pos + sq.num_tokens);
    max_blocks = std::max(max_blocks, (sq.start_pos + sq.num_tokens + kv.block_size - 1) / kv.block_size);
  }
  const int64_t rows_per_seq = q > 1 && every_row ? q : 1;
  // Graph buckets: 1, 2, 4, 8, then multiples of 8 up to max_seqs.
  int64_t bucket = s.seqs;
  if (bucket > 8) bucket = (bucket + 7) / 8 * 8;
  else if (bucket > 4) bucket = 8;
  else if (bucket > 2) bucket = 4;
  const bool use_graph = options_.cuda_graphs && uniform && bucket <= max_seqs_ && bucket * q <= max_tokens_;
  const int64_t full_stride = (c.max_seq_len + kv.block_size - 1) / kv.block_size;
  s.stride = use_graph ? std::min(full_stride, max_table_ / max_seqs_) : max_blocks;
  if (s.seqs * s.stride > max_table_) return internal_error("CUDA forward: block tables exceed the staging buffer");

  // Host staging.
  int64_t t = 0, rows = 0;
  auto* slots = slots_h_.as<int64_t>();
  for (int64_t i = 0; i < s.seqs; ++i) {
    const SeqForward& sq = batch.seqs[static_cast<size_t>(i)];
    h_qstart_[i] = static_cast<int32_t>(t);
    h_startpos_[i] = static_cast<int32_t>(sq.start_pos);
    const int64_t nb = (sq.start_pos + sq.num_tokens + kv.block_size - 1) / kv.block_size;
    int32_t* row = h_tables_ + i * s.stride;
    std::copy_n(sq.block_table.data(), nb, row);
    std::fill(row + nb, row + s.stride, 0);
    for (int64_t j = 0; j < sq.num_tokens; ++j, ++t) {
      const int64_t pos = sq.start_pos + j;
      h_tokens_[t] = batch.tokens[static_cast<size_t>(t)];
      h_positions_[t] = static_cast<int32_t>(pos);
      slots[t] = static_cast<int64_t>(sq.block_table[static_cast<size_t>(pos / kv.block_size)]) * kv.block_size +
                 pos % kv.block_size;
      if (sq.want_logits && (batch.all_logits || sq.all_logits || j == sq.num_tokens - 1)) h_rows_[rows++] = static_cast<int32_t>(t);
    }
  }
  h_qstart_[s.seqs] = static_cast<int32_t>(t);
  s.rows = rows;
  const int64_t real_rows = rows;

  if (use_graph) {
    // Pad to the bucket with sequences whose tokens write nothing (slot -1) and read block 0.
    for (int64_t i = s.seqs; i < bucket; ++i) {
      for (int64_t j = 0; j < q; ++j) {
        const int64_t tt = i * q + j;
        h_tokens_[tt] = 0;
        h_positions_[tt] = static_cast<int32_t>(j);
        slots[tt] = -1;
        if (rows_per_seq == q || j == q - 1) h_rows_[rows++] = static_cast<int32_t>(tt);
      }
      h_qstart_[i + 1] = static_cast<int32_t>((i + 1) * q);
      h_startpos_[i] = 0;
      std::fill(h_tables_ + i * s.stride, h_tables_ + (i + 1) * s.stride, 0);
    }
    s.seqs = bucket;
    s.tokens = bucket * q;
    s.rows = rows;
    NB_RETURN_IF_ERROR(stage(s));
    // Attention is planned for a context bucket (a power of two from 512, at most max_seq_len): a
    // plan for max_seq_len would launch mostly empty key splits for short contexts.
    int64_t ctx_bucket = 512;
    while (ctx_bucket < max_ctx) ctx_bucket *= 2;
    ctx_bucket = std::min(ctx_bucket, std::max(c.max_seq_len, max_ctx));
    const auto key = std::make_tuple(bucket, q, rows_per_seq, static_cast<const void*>(kv.k[0]), kv.block_size, s.stride,
                                     ctx_bucket);
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      NB_RETURN_IF_ERROR(ctx_->synchronize());
      NB_RETURN_IF_ERROR(cuda::Graph::begin_capture(ctx_->stream()));
      const Status enq = enqueue(s, q, ctx_bucket, kv);
      Result<cuda::Graph> g = cuda::Graph::end_capture(ctx_->stream());
      NB_RETURN_IF_ERROR(enq);
      if (!g.ok()) return g.status();
      it = graphs_.emplace(key, std::move(*g)).first;
    }
    NB_RETURN_IF_ERROR(it->second.launch(ctx_->stream()));
  } else {
    NB_RETURN_IF_ERROR(stage(s));
    NB_RETURN_IF_ERROR(enqueue(s, max_q, max_ctx, kv));
  }
  if (step_profile_ && s.tokens == 1) NB_RETURN_IF_ERROR(report_step_profile());
  if (batch.greedy_tokens != nullptr) {
    // Greedy: only the argmax ids come back (4 bytes a row instead of 4 x vocab).
    NB_RETURN_IF_ERROR(cuda::argmax({logits_d_.as<float>(), greedy_d_.as<int32_t>(), real_rows, c.vocab_size}, *ctx_));
    NB_RETURN_IF_ERROR(cuda::copy_to_host(greedy_h_.data(), greedy_d_.data(), static_cast<size_t>(real_rows) * 4,
                                          ctx_->stream()));
    NB_RETURN_IF_ERROR(ctx_->synchronize());
    std::memcpy(batch.greedy_tokens, greedy_h_.data(), static_cast<size_t>(real_rows) * 4);
    return Status::Ok();
  }
  if (batch.sample_rows != nullptr) return sample_on_device(batch, real_rows);
  if (batch.logits_on_device) {
    last_rows_ = real_rows;
    return ctx_->synchronize();  // logit_stats may read them from another model's stream
  }
  const size_t bytes = static_cast<size_t>(real_rows * c.vocab_size) * 4;
  NB_RETURN_IF_ERROR(cuda::copy_to_host(logits_h_.data(), logits_d_.data(), bytes, ctx_->stream()));
  NB_RETURN_IF_ERROR(ctx_->synchronize());
  if (bytes > 0) std::memcpy(logits, logits_h_.data(), bytes);
  return Status::Ok();
}

Status CudaLlama::sample_on_device(const ForwardBatch& batch, int64_t rows) {
  // The rows' settings go up, the drawn ids (4 bytes a row) come back; the logits stay on the device.
  const size_t params_bytes = static_cast<size_t>(max_rows_) * sizeof(SampleRowParams);
  if (sample_rows_d_.size() < params_bytes) {
    NB_ASSIGN_OR_RETURN(sample_rows_d_, DeviceBuffer::allocate(params_bytes));
    NB_ASSIGN_OR_RETURN(sample_rows_h_, PinnedBuffer::allocate(params_bytes));
  }
  const size_t n = static_cast<size_t>(rows);
  std::memcpy(sample_rows_h_.data(), batch.sample_rows, n * sizeof(SampleRowParams));
  NB_RETURN_IF_ERROR(cuda::copy_to_device(sample_rows_d_.data(), sample_rows_h_.data(), n * sizeof(SampleRowParams),
                                          ctx_->stream()));
  NB_RETURN_IF_ERROR(cuda::sample_rows({logits_d_.as<float>(), sample_rows_d_.as<SampleRowParams>(),
                                        greedy_d_.as<int32_t>(), rows, config_.vocab_size},
                                       *ctx_));
  NB_RETURN_IF_ERROR(cuda::copy_to_host(greedy_h_.data(), greedy_d_.data(), n * 4, ctx_->stream()));
  NB_RETURN_IF_ERROR(ctx_->synchronize());
  std::memcpy(batch.sampled_tokens, greedy_h_.data(), n * 4);
  return Status::Ok();
}

Status CudaLlama::logit_stats(const int32_t* targets, int64_t rows, const ForwardBackend* ref, double* out) {
  const auto* other = dynamic_cast<const CudaLlama*>(ref);
  if (ref != nullptr && (other == nullptr || other->options_.ordinal != options_.ordinal)) {
    return invalid_argument("logit_stats: the reference must run on the same CUDA device (" + describe() + ")");
  }
  if (rows <= 0 || rows != last_rows_ || (other != nullptr && other->last_rows_ != rows)) {
    return failed_precondition("logit_stats: the last forward (of both models) must have left " + std::to_string(rows) +
                               " logits rows on the device (ForwardBatch::logits_on_device)");
  }
  NB_RETURN_IF_ERROR(cuda::set_device(options_.ordinal));
  const size_t t_bytes = (static_cast<size_t>(max_rows_) * 4 + 7) / 8 * 8, o_bytes = static_cast<size_t>(max_rows_) * 32;
  if (stats_d_.size() < t_bytes + o_bytes) {
    NB_ASSIGN_OR_RETURN(stats_d_, DeviceBuffer::allocate(t_bytes + o_bytes));
    NB_ASSIGN_OR_RETURN(stats_h_, PinnedBuffer::allocate(t_bytes + o_bytes));
  }
  const auto n = static_cast<size_t>(rows);
  std::memcpy(stats_h_.data(), targets, n * 4);
  NB_RETURN_IF_ERROR(cuda::copy_to_device(stats_d_.data(), stats_h_.data(), n * 4, ctx_->stream()));
  auto* out_d = reinterpret_cast<double*>(static_cast<char*>(stats_d_.data()) + t_bytes);
  NB_RETURN_IF_ERROR(cuda::logit_stats({logits_d_.as<float>(), other != nullptr ? other->logits_d_.as<float>() : nullptr,
                                        stats_d_.as<int32_t>(), out_d, rows, config_.vocab_size},
                                       *ctx_));
  auto* out_h = static_cast<char*>(stats_h_.data()) + t_bytes;
  NB_RETURN_IF_ERROR(cuda::copy_to_host(out_h, out_d, n * 32, ctx_->stream()));
  NB_RETURN_IF_ERROR(ctx_->synchronize());
  std::memcpy(out, out_h, n * 32);
  return Status::Ok();
}

}  // namespace nb::cuda_model

namespace nb {

Result<std::unique_ptr<ForwardBackend>> create_cuda_forward(const ModelWeights& weights,
                                                            const CudaForwardOptions& options) {
  NB_ASSIGN_OR_RETURN(std::unique_ptr<cuda_model::CudaLlama> m, cuda_model::CudaLlama::create(weights, options));
  return std::unique_ptr<ForwardBackend>(std::move(m));
}

}  // namespace nb
