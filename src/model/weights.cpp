#include "model/weights.h"

namespace nb {
namespace {
// Calls f on every distinct tensor (the tied output shares tok_embeddings' storage: counted once).
template <typename F>
void for_each_tensor(const ModelWeights& w, F f) {
  f(w.tok_embeddings);
  f(w.final_norm);
  if (w.output.defined() && w.output.data() != w.tok_embeddings.data()) f(w.output);
  for (const LayerWeights& l : w.layers) {
    for (const Tensor* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      f(*t);
    }
  }
}
}  // namespace

int64_t ModelWeights::num_params() const {
  int64_t n = 0;
  for_each_tensor(*this, [&](const Tensor& t) { n += t.defined() ? t.numel() : 0; });
  return n;
}

int64_t ModelWeights::num_bytes() const {
  int64_t n = 0;
  for_each_tensor(*this, [&](const Tensor& t) { n += t.defined() ? static_cast<int64_t>(t.nbytes()) : 0; });
  return n;
}

}  // namespace nb
