// The model side of `nibble synth`: shape presets copied from the published HF config.json files,
// the HF Llama tensor list in state-dict order, config.json text, and the random weights.
//
// Weights are a pure function of (seed, tensor name, element index): element i of tensor t is
// splitmix64(key(seed, t) + (i + 1) * golden_gamma), i.e. the i-th output of a SplitMix64 stream
// (a counter-based generator: any element can be computed alone, so threads split a tensor freely
// and the bytes do not depend on the thread count or the machine). The four 16-bit lanes of that
// word are summed (Irwin-Hall, n = 4: bell-shaped, within +-3.46 sigma) and scaled to standard
// deviation initializer_range, the std transformers' LlamaPreTrainedModel._init_weights draws
// Linear and Embedding weights with. RMSNorm weights are 1, as that init sets them. With these
// scales every projection output has std ~ initializer_range * sqrt(fan_in) ~ 1, so activations stay
// O(1) through any depth.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace nb::tools {

enum class SynthDType { kF16, kBF16, kF32 };

struct SynthPreset {
  std::string name;      // "llama-2-7b"
  std::string hf_name;   // the real model whose shape this is
  int64_t hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim, vocab_size;
  int64_t max_position_embeddings;
  double rope_theta, rms_norm_eps, initializer_range;
  bool tie_word_embeddings;
  bool llama3_rope_scaling;  // Llama 3.1: factor 8, low 1, high 4, original 8192
  SynthDType native_dtype;   // the real checkpoint's torch_dtype
  int64_t bos_token_id, eos_token_id;
  std::vector<std::pair<int64_t, std::string>> specials;  // the tokenizer's special tokens
  std::string bos, eos;
  bool add_bos;
};

// Known presets; the error lists them.
Result<SynthPreset> find_synth_preset(const std::string& name);
std::string synth_preset_names();  // "llama-2-7b, llama-2-13b, ..."

Result<SynthDType> parse_synth_dtype(const std::string& s);
const char* synth_dtype_st_name(SynthDType d);     // "F16"
const char* synth_dtype_torch_name(SynthDType d);  // "float16"
int synth_dtype_bytes(SynthDType d);

enum class SynthInit { kNormal, kOnes };
struct SynthTensor {
  std::string name;
  std::vector<int64_t> shape;
  SynthInit init;
  int64_t numel() const;
};
// HF LlamaForCausalLM state-dict order; lm_head.weight only when not tied.
std::vector<SynthTensor> synth_tensors(const SynthPreset& p);

// config.json text; `seed` and `dtype` are also recorded under "nibble_synth".
std::string synth_config_json(const SynthPreset& p, SynthDType dtype, uint64_t seed);

// The per-tensor stream key.
uint64_t synth_tensor_key(uint64_t seed, const std::string& name);
// Writes elements [begin, begin + n) of a tensor, encoded as `dtype`, to out (n * bytes(dtype)).
void synth_fill(SynthInit init, uint64_t key, float stddev, SynthDType dtype, int64_t begin, int64_t n, void* out);

}  // namespace nb::tools
