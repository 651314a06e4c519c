// llama2.c "legacy v0" checkpoints (karpathy/llama2.c export.py legacy_export / run.c):
//   int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative: separate classifier),
//   seq_len; then f32 arrays in memory_map_weights order (see kSections below).
// Weights are row-major [out, in] as run.c's matmul reads them; RoPE rotates interleaved pairs.
#include <sys/stat.h>

#include <cstring>

#include "core/mmap_file.h"
#include "model/loader_internal.h"

namespace nb {
namespace {

constexpr uint64_t kHeaderBytes = 7 * 4;

std::string unknown_format(const std::string& path, const std::string& why) {
  return "'" + path + "' is not a model nibble can read (" + why +
         "); expected a GGUF file (.gguf), a llama2.c legacy .bin checkpoint, or a Hugging Face directory "
         "with config.json and *.safetensors";
}

// Finds the tokenizer that llama2.c ships beside its checkpoints; prefers SentencePiece .model files.
TokenizerSource find_tokenizer(const std::string& path, int64_t vocab) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  const std::string v = std::to_string(vocab);
  const std::pair<const char*, TokenizerSource::Kind> candidates[] = {
      {"tokenizer.model", TokenizerSource::Kind::kSentencePieceModel},
      {"tok*.model", TokenizerSource::Kind::kSentencePieceModel},
      {"tok*.bin", TokenizerSource::Kind::kLlama2cBin},
      {"tokenizer.bin", TokenizerSource::Kind::kLlama2cBin},
  };
  for (const auto& [pattern, kind] : candidates) {
    std::string name = pattern;
    if (const size_t star = name.find('*'); star != std::string::npos) name.replace(star, 1, v);
    const std::string candidate = dir + "/" + name;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return TokenizerSource{kind, candidate};
  }
  return TokenizerSource{};
}

}  // namespace

Result<LoadedModel> load_llama2c_model(const std::string& path) {
  NB_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::open(path));
  if (file->size() < kHeaderBytes) return invalid_argument(unknown_format(path, "too short for any header"));
  int32_t h[7];
  std::memcpy(h, file->data(), sizeof(h));
  if (std::memcmp(file->data(), "ak42", 4) == 0 || h[0] == 0x616b3432) {
    return unimplemented("'" + path + "' is a llama2.c version 1+ export; only the legacy (v0) layout is " +
                         "supported: re-export it with export.py --version 0");
  }
  ModelConfig c;
  c.architecture = "llama";
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.num_layers = h[2];
  c.num_heads = h[3];
  c.num_kv_heads = h[4];
  const bool shared_classifier = h[5] > 0;
  c.vocab_size = h[5] == INT32_MIN ? 0 : (h[5] < 0 ? -static_cast<int64_t>(h[5]) : h[5]);
  c.max_seq_len = h[6];
  c.head_dim = c.num_heads > 0 ? c.dim / c.num_heads : 0;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.f;
  c.rope_style = RopeStyle::kInterleaved;
  c.tied_embeddings = shared_classifier;
  if (Status s = c.validate(); !s.ok()) return invalid_argument(unknown_format(path, "no GGUF magic, and its first 28 bytes are no plausible llama2.c header: " + s.message()));
  if (c.dim % c.num_heads != 0) {
    return invalid_argument(unknown_format(path, "its dim is not a multiple of its head count"));
  }

  // validate() bounds every dimension, so these int64 products cannot overflow.
  const int64_t dim = c.dim, hidden = c.hidden_dim, layers = c.num_layers, vocab = c.vocab_size;
  const int64_t q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  const int64_t rope_floats = c.max_seq_len * c.head_dim / 2;
  const int64_t num_floats = vocab * dim + layers * (2 * dim + dim * q_dim + 2 * dim * kv_dim + q_dim * dim +
                                                     3 * dim * hidden) +
                             dim + 2 * rope_floats + (shared_classifier ? 0 : vocab * dim);
  const uint64_t expected = kHeaderBytes + static_cast<uint64_t>(num_floats) * 4;
  if (file->size() != expected) {
    return data_loss("llama2.c checkpoint '" + path + "' has " + std::to_string(file->size()) +
                     " bytes but its header (dim " + std::to_string(dim) + ", hidden " + std::to_string(hidden) +
                     ", layers " + std::to_string(layers) + ", heads " + std::to_string(c.num_heads) + "/" +
                     std::to_string(c.num_kv_heads) + ", vocab " + std::to_string(vocab) + ", seq " +
                     std::to_string(c.max_seq_len) + ") implies " + std::to_string(expected) +
                     "; the file is truncated, corrupt, or not a legacy llama2.c checkpoint");
  }

  // Walk the arrays in file order; each layer-stacked array is [layers, out, in].
  auto* base = reinterpret_cast<float*>(const_cast<uint8_t*>(file->data() + kHeaderBytes));
  int64_t cursor = 0;
  auto take = [&](int64_t n) {
    float* p = base + cursor;
    cursor += n;
    return p;
  };
  float* emb = take(vocab * dim);
  float* rms_att = take(layers * dim);
  float* wq = take(layers * q_dim * dim);
  float* wk = take(layers * kv_dim * dim);
  float* wv = take(layers * kv_dim * dim);
  float* wo = take(layers * dim * q_dim);
  float* rms_ffn = take(layers * dim);
  float* w1 = take(layers * hidden * dim);
  float* w2 = take(layers * dim * hidden);
  float* w3 = take(layers * hidden * dim);
  float* rms_final = take(dim);
  take(2 * rope_floats);  // freq_cis_real, freq_cis_imag: RoPE is recomputed
  float* wcls = shared_classifier ? emb : take(vocab * dim);

  std::shared_ptr<void> owner = file;
  auto view = [&](float* p, std::initializer_list<int64_t> shape) {
    return Tensor::view(p, shape, DType::kF32, owner);
  };
  ModelWeights w;
  w.tok_embeddings = view(emb, {vocab, dim});
  w.output = shared_classifier ? w.tok_embeddings : view(wcls, {vocab, dim});
  w.final_norm = to_f32(view(rms_final, {dim}));
  w.layers.resize(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) {
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    lw.attn_norm = to_f32(view(rms_att + l * dim, {dim}));
    lw.wq = view(wq + l * q_dim * dim, {q_dim, dim});
    lw.wk = view(wk + l * kv_dim * dim, {kv_dim, dim});
    lw.wv = view(wv + l * kv_dim * dim, {kv_dim, dim});
    lw.wo = view(wo + l * dim * q_dim, {dim, q_dim});
    lw.ffn_norm = to_f32(view(rms_ffn + l * dim, {dim}));
    lw.w_gate = view(w1 + l * hidden * dim, {hidden, dim});
    lw.w_down = view(w2 + l * dim * hidden, {dim, hidden});
    lw.w_up = view(w3 + l * hidden * dim, {hidden, dim});
  }
  w.config = c;

  LoadedModel m;
  m.weights = std::move(w);
  m.tokenizer = find_tokenizer(path, vocab);
  m.format = "llama2c";
  return m;
}

}  // namespace nb
