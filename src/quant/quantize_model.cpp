#include "quant/quantize_model.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <numeric>
#include <string>

#include "backend/cpu/cpu_ops.h"
#include "core/thread_pool.h"
#include "quant/awq_block.h"
#include "quant/calib.h"
#include "quant/smoothquant.h"

namespace nb::quant {

Result<QuantMethod> parse_quant_method(const std::string& name) {
  if (name == "rtn") return QuantMethod::kRtn;
  if (name == "smoothquant") return QuantMethod::kSmoothQuant;
  if (name == "awq") return QuantMethod::kAwq;
  if (name == "gptq") return QuantMethod::kGptq;
  return invalid_argument("unknown quantization method '" + name + "'; expected one of: rtn, smoothquant, awq, gptq");
}

Result<AwqLoss> parse_awq_loss(const std::string& name) {
  if (name == "linear") return AwqLoss::kLinear;
  if (name == "block") return AwqLoss::kBlock;
  return invalid_argument("unknown AWQ loss '" + name + "'; expected one of: linear, block");
}

Result<AwqVo> parse_awq_vo(const std::string& name) {
  if (name == "auto") return AwqVo::kAuto;
  if (name == "on") return AwqVo::kOn;
  if (name == "off") return AwqVo::kOff;
  return invalid_argument("--awq-vo must be auto, on or off; got '" + name + "'");
}

const char* quant_method_name(QuantMethod m) {
  switch (m) {
    case QuantMethod::kRtn: return "rtn";
    case QuantMethod::kSmoothQuant: return "smoothquant";
    case QuantMethod::kAwq: return "awq";
    case QuantMethod::kGptq: return "gptq";
  }
  return "?";
}

namespace {

constexpr int kQ = static_cast<int>(LinearKind::kQ), kK = static_cast<int>(LinearKind::kK),
              kV = static_cast<int>(LinearKind::kV), kO = static_cast<int>(LinearKind::kO),
              kGate = static_cast<int>(LinearKind::kGate), kUp = static_cast<int>(LinearKind::kUp),
              kDown = static_cast<int>(LinearKind::kDown);

struct LayerContext {
  const ModelConfig& config;
  const QuantizeOptions& options;
  ThreadPool& pool;
  int64_t layer;
  int64_t out(int k) const { return linear_out_features(config, static_cast<LinearKind>(k)); }
  int64_t in(int k) const { return linear_in_features(config, static_cast<LinearKind>(k)); }
  std::string what(int k) const { return "layer " + std::to_string(layer) + " " + linear_name(static_cast<LinearKind>(k)); }
};

std::vector<float> mean_abs(const SiteStats& s) {
  std::vector<float> m(static_cast<size_t>(s.dim));
  for (int64_t j = 0; j < s.dim; ++j) m[static_cast<size_t>(j)] = static_cast<float>(s.abs_sum[static_cast<size_t>(j)] / static_cast<double>(s.count));
  return m;
}

// AWQ: scale search for the four groups, folding, clipping. block_inputs: the norm outputs of the
// sampled sequences when the q/k/v and gate/up searches use the block loss (else null).
Status awq_layer(DenseLayer& d, std::vector<SiteStats>& stats, const LayerContext& cx, LayerReport& rep,
                 AwqBlockInputs* block_inputs) {
  const ModelConfig& c = cx.config;
  const QuantSpec& spec = cx.options.spec;
  AwqOptions opt;
  opt.duo_scaling = cx.options.awq_duo_scaling;
  opt.two_sided_clip = cx.options.awq_two_sided_clip;
  std::unique_ptr<AwqBlockLoss> block;
  if (block_inputs != nullptr) {
    NB_ASSIGN_OR_RETURN(AwqBlockLoss b, AwqBlockLoss::create(c, d, std::move(*block_inputs), cx.options.calib_seqlen, cx.pool));
    block = std::make_unique<AwqBlockLoss>(std::move(b));
  }
  using BlockLossFn = std::function<double(const std::vector<std::vector<float>>&)>;
  BlockLossFn attn_loss, mlp_loss;
  if (block) {
    attn_loss = [&](const std::vector<std::vector<float>>& w) { return block->attention_loss(w[0], w[1], w[2]); };
    mlp_loss = [&](const std::vector<std::vector<float>>& w) { return block->mlp_loss(w[0], w[1]); };
  }
  std::vector<std::vector<float>> grams(kNumInputSites);
  for (int s = 0; s < kNumInputSites; ++s) grams[static_cast<size_t>(s)] = stats[static_cast<size_t>(s)].gram_f32();
  auto search = [&](std::initializer_list<int> kinds, InputSite site, std::vector<float> x_mean,
                    std::vector<int32_t> channel_map, BlockLossFn block_loss = {}) {
    AwqScaleProblem p;
    p.block_loss = std::move(block_loss);
    for (int k : kinds) {
      p.weights.push_back(&d.w[static_cast<size_t>(k)]);
      p.out_features.push_back(cx.out(k));
    }
    p.in = cx.in(*kinds.begin());
    p.gram = &grams[static_cast<size_t>(site)];
    p.x_mean = std::move(x_mean);
    p.channel_map = std::move(channel_map);
    AwqScaleResult r = awq_search_scales(p, spec, opt, cx.pool);
    rep.awq_alpha.push_back(r.alpha);
    rep.awq_gain.push_back(r.rtn_error > 0 ? r.error / r.rtn_error : 1.0);
    return r.scales;
  };
  const auto at = [](InputSite s) { return static_cast<size_t>(s); };
  // The four searches all use the float layer's inputs (scaling is exact in float), as AutoAWQ.
  const std::vector<float> s_qkv = search({kQ, kK, kV}, InputSite::kAttnIn, mean_abs(stats[at(InputSite::kAttnIn)]), {}, attn_loss);
  // v -> o: one scale per v_proj output channel; o_proj input channel (h, i) uses kv head h / group.
  const int64_t hd = c.head_dim, group = c.num_heads / c.num_kv_heads, kv_dim = c.num_kv_heads * hd;
  std::vector<int32_t> o_map(static_cast<size_t>(c.num_heads * hd));
  for (int64_t h = 0; h < c.num_heads; ++h) {
    for (int64_t i = 0; i < hd; ++i) o_map[static_cast<size_t>(h * hd + i)] = static_cast<int32_t>((h / group) * hd + i);
  }
  const std::vector<float> o_mean = mean_abs(stats[at(InputSite::kAttnOut)]);
  std::vector<float> v_mean(static_cast<size_t>(kv_dim), 0.f);
  for (size_t j = 0; j < o_map.size(); ++j) v_mean[static_cast<size_t>(o_map[j])] += o_mean[j] / static_cast<float>(group);
  // v -> o scaling: AutoAWQ's rule (only without GQA) unless forced.
  const bool vo = cx.options.awq_vo == AwqVo::kOn || (cx.options.awq_vo == AwqVo::kAuto && c.num_kv_heads == c.num_heads);
  std::vector<float> s_vo(static_cast<size_t>(kv_dim), 1.f);
  if (!vo) {
    rep.awq_alpha.push_back(-1.0);
    rep.awq_gain.push_back(1.0);
  } else {
    s_vo = search({kO}, InputSite::kAttnOut, v_mean, o_map);
  }
  const std::vector<float> s_ffn = search({kGate, kUp}, InputSite::kFfnIn, mean_abs(stats[at(InputSite::kFfnIn)]), {}, mlp_loss);
  const std::vector<float> s_down = search({kDown}, InputSite::kFfnMid, mean_abs(stats[at(InputSite::kFfnMid)]), {});

  // Fold: 1/s into the producer, s into the consumers' input channels; the Grams follow the inputs.
  divide_output_channels(d.attn_norm, c.dim, 1, s_qkv);
  for (int k : {kQ, kK, kV}) scale_input_channels(d.w[static_cast<size_t>(k)], cx.out(k), c.dim, s_qkv);
  scale_gram(grams[at(InputSite::kAttnIn)], c.dim, s_qkv);
  std::vector<float> s_o(o_map.size());
  for (size_t j = 0; j < o_map.size(); ++j) s_o[j] = s_vo[static_cast<size_t>(o_map[j])];
  divide_output_channels(d.w[kV], kv_dim, c.dim, s_vo);
  scale_input_channels(d.w[kO], c.dim, cx.in(kO), s_o);
  scale_gram(grams[at(InputSite::kAttnOut)], cx.in(kO), s_o);
  divide_output_channels(d.ffn_norm, c.dim, 1, s_ffn);
  for (int k : {kGate, kUp}) scale_input_channels(d.w[static_cast<size_t>(k)], cx.out(k), c.dim, s_ffn);
  scale_gram(grams[at(InputSite::kFfnIn)], c.dim, s_ffn);
  divide_output_channels(d.w[kUp], c.hidden_dim, c.dim, s_down);
  scale_input_channels(d.w[kDown], c.dim, c.hidden_dim, s_down);
  scale_gram(grams[at(InputSite::kFfnMid)], c.hidden_dim, s_down);

  // Clipping search on the scaled weights; q/k are not clipped (AutoAWQ: attention scores are sensitive).
  for (int k : {kV, kO, kGate, kUp, kDown}) {
    awq_search_clip(d.w[static_cast<size_t>(k)], cx.out(k), cx.in(k),
                    grams[at(input_site(static_cast<LinearKind>(k)))], spec, opt, cx.pool);
  }
  // Later steps (relative error) read the scaled Grams.
  for (int s = 0; s < kNumInputSites; ++s) {
    auto& g = stats[static_cast<size_t>(s)].gram;
    for (size_t i = 0; i < g.size(); ++i) g[i] = grams[static_cast<size_t>(s)][i];
  }
  return Status::Ok();
}

// 2 X^T X / n (the scale is irrelevant to GPTQ; kept as in the paper).
std::vector<double> hessian_of(const SiteStats& s) {
  std::vector<double> h = s.gram;
  const double f = 2.0 / static_cast<double>(std::max<int64_t>(s.count, 1));
  for (double& v : h) v *= f;
  return h;
}

Status quantize_layer(DenseLayer& d, std::vector<SiteStats>& stats, const SmoothSiteSamples& samples,
                      AwqBlockInputs* block_inputs, const LayerContext& cx, std::array<QuantizedLinear, kNumLinearKinds>& out,
                      LayerReport& rep) {
  const QuantizeOptions& o = cx.options;
  if (o.method == QuantMethod::kSmoothQuant) {
    std::array<const std::vector<float>*, kNumInputSites> amax{};
    std::array<double, kNumInputSites> alpha{};
    for (size_t s = 0; s < amax.size(); ++s) {
      amax[s] = &stats[s].abs_max;
      alpha[s] = o.site_alpha.empty() ? o.alpha : o.site_alpha[s];
    }
    if (o.alpha_search) alpha = smooth_search_alpha(d, cx.config, amax, samples, o.smooth_alpha_grid, cx.pool);
    const auto sites = smooth_layer(d, cx.config, amax, alpha);
    rep.smooth.assign(sites.begin(), sites.end());
    rep.smooth_alpha.assign(alpha.begin(), alpha.end());
  } else if (o.method == QuantMethod::kAwq) {
    NB_RETURN_IF_ERROR(awq_layer(d, stats, cx, rep, block_inputs));
  }
  for (int k = 0; k < kNumLinearKinds; ++k) {
    const auto& w = d.w[static_cast<size_t>(k)];
    const auto site = static_cast<size_t>(input_site(static_cast<LinearKind>(k)));
    if (o.method == QuantMethod::kGptq) {
      GptqOptions g;
      g.act_order = o.act_order;
      g.mse = o.gptq_mse;
      NB_ASSIGN_OR_RETURN(out[static_cast<size_t>(k)],
                          gptq_quantize(w.data(), cx.out(k), cx.in(k), hessian_of(stats[site]), o.spec, g, cx.pool, cx.what(k)));
    } else {
      NB_ASSIGN_OR_RETURN(out[static_cast<size_t>(k)], rtn_quantize(w.data(), cx.out(k), cx.in(k), o.spec, cx.what(k)));
    }
  }
  return Status::Ok();
}

// Sum over linears of ||X (W - Q)^T||^2 / ||X W^T||^2 pieces, through the Grams.
double relative_layer_error(const DenseLayer& d, const std::array<QuantizedLinear, kNumLinearKinds>& q,
                            const std::vector<SiteStats>& stats, ThreadPool& pool) {
  double err = 0.0, ref = 0.0;
  for (int k = 0; k < kNumLinearKinds; ++k) {
    const QuantizedLinear& ql = q[static_cast<size_t>(k)];
    const auto& w = d.w[static_cast<size_t>(k)];
    const std::vector<float> dq = dequantize(ql);
    const std::vector<float> g = stats[static_cast<size_t>(input_site(static_cast<LinearKind>(k)))].gram_f32();
    std::vector<float> diff(w.size());
    for (size_t i = 0; i < w.size(); ++i) diff[i] = w[i] - dq[i];
    // sum_o d_o^T G d_o and sum_o w_o^T G w_o.
    const Tensor gt = Tensor::view(const_cast<float*>(g.data()), {ql.in_features, ql.in_features}, DType::kF32);
    std::vector<float> y(w.size());
    cpu::matmul({gt, diff.data(), y.data(), ql.out_features}, pool);
    for (size_t i = 0; i < w.size(); ++i) err += static_cast<double>(diff[i]) * y[i];
    cpu::matmul({gt, w.data(), y.data(), ql.out_features}, pool);
    for (size_t i = 0; i < w.size(); ++i) ref += static_cast<double>(w[i]) * y[i];
  }
  return ref > 0 ? err / ref : 0.0;
}

}  // namespace

Result<QuantizedModel> quantize_model(ModelWeights weights, const Tokenizer* tokenizer, const QuantizeOptions& options,
                                      const QuantizeProgress& progress, std::vector<LayerReport>* report) {
  const ModelConfig c = weights.config;
  NB_RETURN_IF_ERROR(c.validate());
  QuantizeOptions opt = options;
  if (opt.method == QuantMethod::kSmoothQuant) {
    opt.spec = QuantSpec{8, -1, true};
    opt.act_int8 = true;
  }
  if (!opt.site_alpha.empty() && opt.site_alpha.size() != kNumInputSites) {
    return invalid_argument("SmoothQuant per-site alphas: give 4 (q/k/v, o, gate/up, down)");
  }
  if (opt.act_int8 && (opt.spec.bits != 8 || !opt.spec.symmetric || opt.spec.group_size != -1)) {
    return invalid_argument("W8A8 (INT8 activations) needs --wbits 8 --sym --group-size -1");
  }
  for (int k = 0; k < kNumLinearKinds; ++k) {
    NB_RETURN_IF_ERROR(validate_quant_spec(opt.spec, linear_in_features(c, static_cast<LinearKind>(k)),
                                           linear_name(static_cast<LinearKind>(k))));
  }
  const bool awq_block = opt.method == QuantMethod::kAwq && opt.awq_loss == AwqLoss::kBlock;
  if (awq_block && opt.awq_block_samples < 1) {
    return invalid_argument("the AWQ block loss needs at least 1 calibration sequence (--awq-block-samples)");
  }
  opt.awq_block_samples = std::min(opt.awq_block_samples, opt.calib_samples);  // fewer samples: all of them
  const bool float_inputs = opt.method == QuantMethod::kAwq && opt.awq_float_inputs;
  ThreadPool pool(opt.num_threads);
  const bool calibrate = opt.method != QuantMethod::kRtn;
  const bool need_gram = opt.method == QuantMethod::kAwq || opt.method == QuantMethod::kGptq;

  // Hidden states of every calibration sample: [samples][seq_len, dim].
  std::vector<std::vector<float>> hidden;
  if (calibrate) {
    if (tokenizer == nullptr) return invalid_argument("calibration needs the model's tokenizer");
    NB_ASSIGN_OR_RETURN(auto samples, make_calibration_samples(*tokenizer, opt.calib_path, opt.calib_samples, opt.calib_seqlen));
    for (const auto& ids : samples) {
      for (int32_t id : ids) {
        if (id < 0 || id >= c.vocab_size) return invalid_argument("calibration token id outside the model's vocabulary; wrong tokenizer?");
      }
      std::vector<float> x(static_cast<size_t>(opt.calib_seqlen * c.dim));
      cpu::embedding({weights.tok_embeddings, ids.data(), x.data(), opt.calib_seqlen});
      hidden.push_back(std::move(x));
    }
  }
  LayerRunner runner(c, opt.calib_seqlen, pool);

  QuantizedModel qm;
  qm.method = quant_method_name(opt.method);
  qm.act_int8 = opt.act_int8;
  qm.layers.resize(static_cast<size_t>(c.num_layers));
  if (report) report->clear();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    NB_ASSIGN_OR_RETURN(DenseLayer d, dense_layer(weights, l));
    LayerContext cx{c, opt, pool, l};
    std::vector<SiteStats> stats(kNumInputSites);
    for (int s = 0; s < kNumInputSites; ++s) {
      stats[static_cast<size_t>(s)].dim = s == 1 ? c.num_heads * c.head_dim : s == 3 ? c.hidden_dim : c.dim;
    }
    SmoothSiteSamples samples;  // SmoothQuant's alpha search: every stride-th token of the samples
    const bool sample = opt.method == QuantMethod::kSmoothQuant && opt.alpha_search;
    const int64_t total = static_cast<int64_t>(hidden.size()) * opt.calib_seqlen;
    const int64_t stride = std::max<int64_t>(1, total / std::max<int64_t>(1, opt.alpha_search_tokens));
    // AWQ block loss: the norm outputs of awq_block_samples sequences spread evenly over the samples.
    AwqBlockInputs block_inputs;
    const auto num_hidden = static_cast<int64_t>(hidden.size());
    auto in_block_sample = [&](int64_t i) {
      const int64_t m = opt.awq_block_samples;
      return awq_block && (i * m) % num_hidden < m;  // i = ceil(k * n / m) for k = 0..m-1
    };
    if (calibrate) {
      std::vector<float> x(static_cast<size_t>(opt.calib_seqlen * c.dim));
      for (size_t i = 0; i < hidden.size(); ++i) {
        x = hidden[i];  // the float layer's output is not needed (unless awq_float_inputs): only its inputs
        const bool keep = in_block_sample(static_cast<int64_t>(i));
        if (keep) ++block_inputs.num_seqs;
        runner.forward(d, x.data(), [&](InputSite site, const float* a, int64_t tokens) {
          runner.accumulate(stats[static_cast<size_t>(site)], a, tokens, need_gram);
          if (keep && (site == InputSite::kAttnIn || site == InputSite::kFfnIn)) {
            auto& buf = site == InputSite::kAttnIn ? block_inputs.attn_in : block_inputs.ffn_in;
            buf.insert(buf.end(), a, a + tokens * c.dim);
          }
          if (!sample) return;
          const int64_t dim = stats[static_cast<size_t>(site)].dim;
          auto& buf = samples.x[static_cast<size_t>(site)];
          for (int64_t t = static_cast<int64_t>(i) % stride; t < tokens; t += stride) buf.insert(buf.end(), a + t * dim, a + (t + 1) * dim);
        });
        if (float_inputs) hidden[i] = x;
      }
      if (sample) samples.tokens = static_cast<int64_t>(samples.x[0].size()) / c.dim;
    }
    LayerReport rep;
    rep.layer = l;
    auto& ql = qm.layers[static_cast<size_t>(l)];
    NB_RETURN_IF_ERROR(quantize_layer(d, stats, samples, awq_block ? &block_inputs : nullptr, cx, ql, rep));
    if (opt.method == QuantMethod::kGptq) rep.relative_error = relative_layer_error(d, ql, stats, pool);
    if (calibrate && !float_inputs) {
      // The next layer sees what the quantized layer computes (norms with folded scales included).
      for (int k = 0; k < kNumLinearKinds; ++k) d.w[static_cast<size_t>(k)] = dequantize(ql[static_cast<size_t>(k)]);
      for (auto& h : hidden) runner.forward(d, h.data(), {});
    }
    LayerWeights& lw = weights.layers[static_cast<size_t>(l)];
    lw.attn_norm = Tensor::empty({c.dim}, DType::kF32);
    lw.ffn_norm = Tensor::empty({c.dim}, DType::kF32);
    std::copy(d.attn_norm.begin(), d.attn_norm.end(), lw.attn_norm.ptr<float>());
    std::copy(d.ffn_norm.begin(), d.ffn_norm.end(), lw.ffn_norm.ptr<float>());
    lw.wq = lw.wk = lw.wv = lw.wo = lw.w_gate = lw.w_up = lw.w_down = Tensor();
    if (report) report->push_back(std::move(rep));
    if (progress) progress(l + 1, c.num_layers);
  }
  qm.weights = std::move(weights);
  return qm;
}

}  // namespace nb::quant
