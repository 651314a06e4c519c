#include "tools/synth_model.h"

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/dtype.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace nb::tools {
namespace {

constexpr uint64_t kGoldenGamma = 0x9e3779b97f4a7c15ull;

inline uint64_t mix64(uint64_t z) {  // SplitMix64's finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Numbers from the models' published config.json files (Hugging Face hub): Llama-2-7b-hf,
// Llama-2-13b-hf, Meta-Llama-3-8B, Llama-3.1-8B, SmolLM2-135M.
std::vector<SynthPreset> presets() {
  const std::vector<std::pair<int64_t, std::string>> llama2_specials = {{0, "<unk>"}, {1, "<s>"}, {2, "</s>"}};
  const std::vector<std::pair<int64_t, std::string>> llama3_specials = {{128000, "<|begin_of_text|>"},
                                                                        {128001, "<|end_of_text|>"}};
  return {
      {"llama-2-7b", "meta-llama/Llama-2-7b-hf", 4096, 11008, 32, 32, 32, 128, 32000, 4096, 10000.0, 1e-5, 0.02,
       false, false, SynthDType::kF16, 1, 2, llama2_specials, "<s>", "</s>", true},
      {"llama-2-13b", "meta-llama/Llama-2-13b-hf", 5120, 13824, 40, 40, 40, 128, 32000, 4096, 10000.0, 1e-5, 0.02,
       false, false, SynthDType::kF16, 1, 2, llama2_specials, "<s>", "</s>", true},
      {"llama-3-8b", "meta-llama/Meta-Llama-3-8B", 4096, 14336, 32, 32, 8, 128, 128256, 8192, 500000.0, 1e-5, 0.02,
       false, false, SynthDType::kBF16, 128000, 128001, llama3_specials, "<|begin_of_text|>", "<|end_of_text|>", true},
      {"llama-3.1-8b", "meta-llama/Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128, 128256, 131072, 500000.0, 1e-5, 0.02,
       false, true, SynthDType::kBF16, 128000, 128001, llama3_specials, "<|begin_of_text|>", "<|end_of_text|>", true},
      {"smollm2-135m", "HuggingFaceTB/SmolLM2-135M", 576, 1536, 30, 9, 3, 64, 49152, 8192, 100000.0, 1e-5,
       0.041666666666666664, true, false, SynthDType::kBF16, 0, 0,
       {{0, "<|endoftext|>"}, {1, "<|im_start|>"}, {2, "<|im_end|>"}}, "<|endoftext|>", "<|endoftext|>", false},
  };
}

inline uint16_t to_bf16(float f) {  // round to nearest even; our values are finite
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace

Result<SynthPreset> find_synth_preset(const std::string& name) {
  for (SynthPreset& p : presets()) {
    if (p.name == name) return std::move(p);
  }
  return invalid_argument("unknown --config '" + name + "'; expected one of: " + synth_preset_names());
}

std::string synth_preset_names() {
  std::string s;
  for (const SynthPreset& p : presets()) s += (s.empty() ? "" : ", ") + p.name;
  return s;
}

Result<SynthDType> parse_synth_dtype(const std::string& s) {
  if (s == "f16" || s == "float16" || s == "fp16") return SynthDType::kF16;
  if (s == "bf16" || s == "bfloat16") return SynthDType::kBF16;
  if (s == "f32" || s == "float32" || s == "fp32") return SynthDType::kF32;
  return invalid_argument("unknown --dtype '" + s + "'; expected one of: f16, bf16, f32");
}
const char* synth_dtype_st_name(SynthDType d) {
  return d == SynthDType::kF16 ? "F16" : d == SynthDType::kBF16 ? "BF16" : "F32";
}
const char* synth_dtype_torch_name(SynthDType d) {
  return d == SynthDType::kF16 ? "float16" : d == SynthDType::kBF16 ? "bfloat16" : "float32";
}
int synth_dtype_bytes(SynthDType d) { return d == SynthDType::kF32 ? 4 : 2; }

int64_t SynthTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<SynthTensor> synth_tensors(const SynthPreset& p) {
  const int64_t d = p.hidden_size, q = p.num_heads * p.head_dim, kv = p.num_kv_heads * p.head_dim;
  const int64_t f = p.intermediate_size;
  std::vector<SynthTensor> t;
  t.push_back({"model.embed_tokens.weight", {p.vocab_size, d}, SynthInit::kNormal});
  for (int64_t i = 0; i < p.num_layers; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".";
    t.push_back({l + "self_attn.q_proj.weight", {q, d}, SynthInit::kNormal});
    t.push_back({l + "self_attn.k_proj.weight", {kv, d}, SynthInit::kNormal});
    t.push_back({l + "self_attn.v_proj.weight", {kv, d}, SynthInit::kNormal});
    t.push_back({l + "self_attn.o_proj.weight", {d, q}, SynthInit::kNormal});
    t.push_back({l + "mlp.gate_proj.weight", {f, d}, SynthInit::kNormal});
    t.push_back({l + "mlp.up_proj.weight", {f, d}, SynthInit::kNormal});
    t.push_back({l + "mlp.down_proj.weight", {d, f}, SynthInit::kNormal});
    t.push_back({l + "input_layernorm.weight", {d}, SynthInit::kOnes});
    t.push_back({l + "post_attention_layernorm.weight", {d}, SynthInit::kOnes});
  }
  t.push_back({"model.norm.weight", {d}, SynthInit::kOnes});
  if (!p.tie_word_embeddings) t.push_back({"lm_head.weight", {p.vocab_size, d}, SynthInit::kNormal});
  return t;
}

std::string synth_config_json(const SynthPreset& p, SynthDType dtype, uint64_t seed) {
  nlohmann::json j;  // std::map-backed: keys come out sorted, as transformers writes them
  j["_name_or_path"] = "nibble-synth/" + p.name;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["bos_token_id"] = p.bos_token_id;
  j["eos_token_id"] = p.eos_token_id;
  j["hidden_act"] = "silu";
  j["hidden_size"] = p.hidden_size;
  j["intermediate_size"] = p.intermediate_size;
  j["num_hidden_layers"] = p.num_layers;
  j["num_attention_heads"] = p.num_heads;
  j["num_key_value_heads"] = p.num_kv_heads;
  j["head_dim"] = p.head_dim;
  j["vocab_size"] = p.vocab_size;
  j["max_position_embeddings"] = p.max_position_embeddings;
  j["rms_norm_eps"] = p.rms_norm_eps;
  j["rope_theta"] = p.rope_theta;
  j["rope_scaling"] = nullptr;
  if (p.llama3_rope_scaling) {
    j["rope_scaling"] = {{"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 8192}, {"rope_type", "llama3"}};
  }
  j["initializer_range"] = p.initializer_range;
  j["tie_word_embeddings"] = p.tie_word_embeddings;
  j["torch_dtype"] = synth_dtype_torch_name(dtype);
  j["pretraining_tp"] = 1;
  j["use_cache"] = true;
  j["nibble_synth"] = {{"shape_of", p.hf_name}, {"preset", p.name}, {"seed", seed}, {"dtype", synth_dtype_torch_name(dtype)},
                       {"init", "Irwin-Hall(4) ~ normal, std initializer_range; RMSNorm weights 1; random weights, not a trained model"}};
  return j.dump(2) + "\n";
}

uint64_t synth_tensor_key(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return mix64(mix64(seed + kGoldenGamma) ^ h);
}

void synth_fill(SynthInit init, uint64_t key, float stddev, SynthDType dtype, int64_t begin, int64_t n, void* out) {
  constexpr int64_t kBlock = 256;
  // Sum of four uniform 16-bit lanes: mean 4 * 32767.5, variance 4 * (65536^2 - 1) / 12.
  const float scale = static_cast<float>(stddev / std::sqrt((65536.0 * 65536.0 - 1.0) / 3.0));
  float vals[kBlock];
  auto* out16 = static_cast<uint16_t*>(out);
  auto* out32 = static_cast<float*>(out);
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    if (init == SynthInit::kOnes) {
      for (int64_t k = 0; k < m; ++k) vals[k] = 1.0f;
    } else {
      const uint64_t base = key + static_cast<uint64_t>(begin + b + 1) * kGoldenGamma;
      for (int64_t k = 0; k < m; ++k) {
        const uint64_t r = mix64(base + static_cast<uint64_t>(k) * kGoldenGamma);
        const int32_t s = static_cast<int32_t>((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48));
        vals[k] = static_cast<float>(s - 131070) * scale;  // exact integer, one rounding
      }
    }
    switch (dtype) {
      case SynthDType::kF32:
        std::memcpy(out32 + b, vals, static_cast<size_t>(m) * 4);
        break;
      case SynthDType::kBF16:
        for (int64_t k = 0; k < m; ++k) out16[b + k] = to_bf16(vals[k]);
        break;
      case SynthDType::kF16: {
        int64_t k = 0;
#if defined(__F16C__)
        // Hardware conversion, round to nearest even: bit-identical to fp32_to_fp16.
        for (; k + 8 <= m; k += 8) {
          const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(vals + k), _MM_FROUND_TO_NEAREST_INT);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out16 + b + k), h);
        }
#endif
        for (; k < m; ++k) out16[b + k] = fp32_to_fp16(vals[k]);
        break;
      }
    }
  }
}

}  // namespace nb::tools
