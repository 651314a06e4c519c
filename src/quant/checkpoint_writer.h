// Writing HF-layout checkpoints (config.json + model.safetensors + tokenizer files) that nibble and
// other tools load: quantized linears in the GPTQ, AutoAWQ GEMM or compressed-tensors conventions
// (format/quant_checkpoint.h), every other tensor as f16.
#pragma once
#include <string>

#include "core/status.h"
#include "model/weights.h"
#include "quant/qlinear.h"

namespace nb::quant {

// Which layout a quantized model is written in, chosen by method:
//   act_int8 or "smoothquant" -> compressed-tensors int-quantized (8-bit codes)
//   "awq" with 4-bit codes     -> AutoAWQ GEMM (other bit widths / per-channel fall back to GPTQ)
//   anything else ("gptq", "rtn") -> GPTQ (v1 zero-1 convention; gptq_v2 when a zero point is 0)
enum class QuantLayout { kGptq, kAwqGemm, kCompressedTensors };
QuantLayout layout_for(const QuantizedModel& qm);

// Writes qm into `dir` (created if missing). `source` supplies the tokenizer and chat template.
// Models whose RoPE pairs are interleaved (GGUF, llama2.c) get their q/k rows permuted to HF's
// rotate_half order, so the directory computes the same function as `source`.
Status save_quantized_model(const QuantizedModel& qm, const LoadedModel& source, const std::string& dir);

// The plain model (every linear dequantized and stored as f16, or f32 when `f32`): the "base"
// checkpoint of quantization experiments.
Status save_float_model(const LoadedModel& source, const std::string& dir, bool f32 = false);

// Writes tokenizer.json + tokenizer_config.json (byte-level BPE from a GGUF "gpt2" vocabulary, or
// the files of an HF source copied) into dir. Returns false (nothing written) when the source's
// tokenizer has no tokenizer.json form (SentencePiece / llama2.c): pass --tokenizer then.
Result<bool> export_tokenizer(const LoadedModel& source, const std::string& dir);

// Creates or truncates `path` with `text` (used for the JSON files of a checkpoint directory).
Status write_text_file(const std::string& path, const std::string& text);

}  // namespace nb::quant
