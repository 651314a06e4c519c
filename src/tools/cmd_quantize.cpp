// nibble quantize: post-training quantization of a model's linear layers (RTN, SmoothQuant W8A8,
// AWQ, GPTQ; src/quant/quantize_model.h), written as an HF directory other tools read (GPTQ,
// AutoAWQ GEMM or compressed-tensors; quant/checkpoint_writer.h). Progress (layer i/N, elapsed,
// ETA) goes to stderr; --report FILE writes per-layer facts (SmoothQuant's activation outliers
// before/after smoothing, AWQ's chosen exponents, GPTQ's layer errors) as JSON.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/weights.h"
#include "quant/checkpoint_writer.h"
#include "quant/quantize_model.h"
#include "tokenizer/tokenizer.h"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

constexpr const char* kDefaultCalib = "../shared/data/text/wikitext-2-raw.valid.txt";

nlohmann::json report_json(const std::vector<quant::LayerReport>& report) {
  nlohmann::json layers = nlohmann::json::array();
  auto tops = [](const std::vector<quant::ChannelMax>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& c : v) a.push_back({{"channel", c.channel}, {"absmax_before", c.before}, {"absmax_after", c.after}});
    return a;
  };
  for (const auto& r : report) {
    nlohmann::json j = {{"layer", r.layer}};
    static constexpr const char* kSites[] = {"attn_in", "attn_out", "ffn_in", "ffn_mid"};  // q/k/v, o, gate/up, down inputs
    for (size_t s = 0; s < r.smooth.size() && s < 4; ++s) {
      j[std::string(kSites[s]) + "_top"] = tops(r.smooth[s].top);
      j[std::string(kSites[s]) + "_max_over_median"] = {r.smooth[s].ratio_before, r.smooth[s].ratio_after};
      j[std::string(kSites[s]) + "_alpha"] = r.smooth_alpha[s];
    }
    if (!r.awq_alpha.empty()) {
      j["awq_alpha"] = r.awq_alpha;            // qkv, v->o, gate/up, up->down
      j["awq_error_over_rtn"] = r.awq_gain;
    }
    if (r.relative_error > 0) j["relative_output_error"] = r.relative_error;
    layers.push_back(std::move(j));
  }
  return layers;
}

Status run(const CliArgs& args) {
  quant::QuantizeOptions o;
  NB_ASSIGN_OR_RETURN(o.method, quant::parse_quant_method(args.get("--method")));
  NB_ASSIGN_OR_RETURN(const int64_t bits, args.get_int("--wbits", 2, 8));
  NB_ASSIGN_OR_RETURN(o.spec.group_size, args.get_int("--group-size", -1, 1 << 20));
  o.spec.bits = static_cast<int>(bits);
  o.spec.symmetric = args.has("--sym");
  o.act_int8 = args.has("--act-int8");
  if (args.get("--alpha") == "search") {
    if (o.method != quant::QuantMethod::kSmoothQuant) return invalid_argument("--alpha search is a SmoothQuant option");
    o.alpha_search = true;
  } else {
    NB_ASSIGN_OR_RETURN(o.alpha, args.get_float("--alpha", 0.0, 1.0));
  }
  if (args.has("--alpha-sites")) {
    const std::string v = args.get("--alpha-sites");
    size_t pos = 0;
    while (pos <= v.size()) {
      const size_t end = std::min(v.find(',', pos), v.size());
      char* stop = nullptr;
      const std::string item = v.substr(pos, end - pos);
      const double a = std::strtod(item.c_str(), &stop);
      if (item.empty() || stop != item.c_str() + item.size() || !(a >= 0.0 && a <= 1.0)) {
        return invalid_argument("--alpha-sites wants 4 numbers in [0, 1] separated by commas (q/k/v, o, gate/up, down); got '" + v + "'");
      }
      o.site_alpha.push_back(a);
      pos = end + 1;
    }
    if (o.site_alpha.size() != 4) return invalid_argument("--alpha-sites wants 4 numbers (q/k/v, o, gate/up, down); got '" + v + "'");
    if (o.method != quant::QuantMethod::kSmoothQuant) return invalid_argument("--alpha-sites is a SmoothQuant option");
  }
  o.act_order = args.has("--act-order");
  o.gptq_mse = args.has("--gptq-mse");
  if (o.gptq_mse && o.method != quant::QuantMethod::kGptq) return invalid_argument("--gptq-mse is a GPTQ option");
  o.awq_duo_scaling = args.has("--awq-duo-scaling");
  const std::string clip = args.get("--awq-clip");
  if (clip != "sym" && clip != "two-sided") return invalid_argument("--awq-clip must be sym or two-sided; got '" + clip + "'");
  o.awq_two_sided_clip = clip == "two-sided";
  if (args.has("--awq-clip") && o.method != quant::QuantMethod::kAwq) return invalid_argument("--awq-clip is an AWQ option");
  if (o.awq_duo_scaling && o.method != quant::QuantMethod::kAwq) return invalid_argument("--awq-duo-scaling is an AWQ option");
  NB_ASSIGN_OR_RETURN(o.awq_loss, quant::parse_awq_loss(args.get("--awq-loss")));
  NB_ASSIGN_OR_RETURN(o.awq_block_samples, args.get_int("--awq-block-samples", 1, 1 << 20));
  o.awq_float_inputs = args.has("--awq-float-inputs");
  NB_ASSIGN_OR_RETURN(o.awq_vo, quant::parse_awq_vo(args.get("--awq-vo")));
  if ((args.has("--awq-loss") || args.has("--awq-block-samples") || o.awq_float_inputs || args.has("--awq-vo")) &&
      o.method != quant::QuantMethod::kAwq) {
    return invalid_argument("--awq-loss, --awq-block-samples, --awq-float-inputs and --awq-vo are AWQ options");
  }
  o.calib_path = args.has("--calib") ? args.get("--calib") : std::string(kDefaultCalib);
  NB_ASSIGN_OR_RETURN(o.calib_samples, args.get_int("--calib-samples", 1, 1 << 20));
  NB_ASSIGN_OR_RETURN(o.calib_seqlen, args.get_int("--calib-seqlen", 8, 1 << 20));
  if (args.has("--awq-block-samples") && o.awq_block_samples > o.calib_samples) {
    return invalid_argument("--awq-block-samples " + std::to_string(o.awq_block_samples) +
                            ": the block loss is measured on calibration sequences; give between 1 and --calib-samples (" +
                            std::to_string(o.calib_samples) + ")");
  }
  NB_ASSIGN_OR_RETURN(const int64_t threads, args.get_int("-t", 1, 1024));
  o.num_threads = static_cast<int>(threads);
  if (o.act_int8 && o.method != quant::QuantMethod::kRtn && o.method != quant::QuantMethod::kSmoothQuant) {
    return invalid_argument("--act-int8 (naive W8A8) goes with --method rtn; smoothquant is always W8A8");
  }
  if (o.act_order && o.method != quant::QuantMethod::kGptq) return invalid_argument("--act-order is a GPTQ option");

  NB_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(args.get("-m")));
  if (loaded.tokenizer.kind == TokenizerSource::Kind::kNone && o.method != quant::QuantMethod::kRtn) {
    return not_found("no tokenizer found beside '" + args.get("-m") + "'; calibration needs one");
  }
  std::unique_ptr<Tokenizer> tokenizer;
  if (loaded.tokenizer.kind != TokenizerSource::Kind::kNone) {
    NB_ASSIGN_OR_RETURN(tokenizer, load_tokenizer(loaded.tokenizer));
  }
  // quantize_model consumes the weights; the writer needs the rest of `loaded` (tokenizer, template).
  ModelWeights weights = loaded.weights;
  const auto start = std::chrono::steady_clock::now();
  auto progress = [&](int64_t done, int64_t total) {
    const double e = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double eta = e / static_cast<double>(done) * static_cast<double>(total - done);
    const int width = 30;
    const auto filled = static_cast<int>(width * done / total);
    std::fprintf(stderr, "\r[%.*s%*s] layer %lld/%lld  elapsed %.0fs  ETA %.0fs   ", filled,
                 "##############################", width - filled, "", static_cast<long long>(done),
                 static_cast<long long>(total), e, eta);
    std::fflush(stderr);
  };
  std::vector<quant::LayerReport> report;
  NB_ASSIGN_OR_RETURN(quant::QuantizedModel qm,
                      quant::quantize_model(std::move(weights), tokenizer.get(), o, progress,
                                            &report));
  std::fputc('\n', stderr);
  NB_RETURN_IF_ERROR(quant::save_quantized_model(qm, loaded, args.get("-o")));
  if (args.has("--report")) {
    std::ofstream f(args.get("--report"));
    f << report_json(report).dump(1) << "\n";
    if (!f) return failed_precondition("cannot write the report '" + args.get("--report") + "'");
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "wrote %s (%s, %d-bit, group %lld%s) in %.1fs\n", args.get("-o").c_str(), qm.method.c_str(),
               o.method == quant::QuantMethod::kSmoothQuant ? 8 : o.spec.bits,
               static_cast<long long>(o.method == quant::QuantMethod::kSmoothQuant ? -1 : o.spec.group_size),
               qm.act_int8 ? ", W8A8" : "", secs);
  return Status::Ok();
}

int run_quantize(int argc, char** argv) {
  CliArgs args("quantize", "-m IN -o OUT --method rtn|smoothquant|awq|gptq [options]");
  args.option("-m,--model", "input model: .gguf, llama2.c .bin or HF directory (weights are dequantized to f32 first)");
  args.option("-o,--output", "output directory (HF safetensors + config + tokenizer)");
  args.option("--method", "rtn | smoothquant | awq | gptq", "rtn");
  args.option("--wbits", "weight bits (3, 4 or 8; smoothquant: always 8)", "4");
  args.option("--group-size", "input channels per scale group (32, 64, 128) or -1 for per output channel", "128");
  args.flag("--sym", "symmetric grid (zero point 2^(bits-1)); default asymmetric min-max");
  args.flag("--act-int8", "rtn only: W8A8 with dynamic per-token INT8 activations (naive W8A8; needs --wbits 8 --sym --group-size -1)");
  args.option("--alpha", "SmoothQuant migration strength (every smoothed input), or 'search': per layer and input, the\n"
              "      alpha in 0.3..0.95 with the least W8A8 output error on 512 calibration tokens", "0.5");
  args.option("--alpha-sites", "SmoothQuant: one strength per input A,B,C,D (q/k/v, o_proj, gate/up, down_proj); overrides --alpha");
  args.flag("--awq-duo-scaling", "AWQ: s = s_X^a / s_W^(1-a) as AutoAWQ's duo_scaling (s_W: mean normalized |w| per input channel)");
  args.option("--awq-clip", "AWQ clipping search: 'sym' (clamp to [-c, c], AutoAWQ's) or 'two-sided' (also the two ends\n"
              "      of an asymmetric group's range shrunk independently; the best per group)", "sym");
  args.option("--awq-loss", "AWQ: what the q/k/v and gate/up scale search minimises: 'linear' (the linears' output error,\n"
              "      exact on all calibration tokens) or 'block' (the attention / MLP output after them, AutoAWQ's)", "block");
  args.option("--awq-block-samples", "AWQ block loss: calibration sequences it is measured on (spread evenly)",
              std::to_string(quant::kAwqBlockSamples));
  args.flag("--awq-float-inputs", "AWQ: calibrate each layer on the float previous layer's output (AutoAWQ) instead of the quantized one");
  args.option("--awq-vo", "AWQ: v_proj -> o_proj scaling: 'auto' (AutoAWQ's rule: only when the two have the same\n"
              "      shape, i.e. no GQA), 'on' or 'off'", "auto");
  args.flag("--act-order", "GPTQ: quantize columns by decreasing Hessian diagonal (writes g_idx)");
  args.flag("--gptq-mse", "GPTQ: each group's grid by the reference code's mse search (range shrunk by 1..0.21,\n"
            "      least sum of |error|^2.4) instead of min-max");
  args.option("--calib", std::string("calibration text file (default ") + kDefaultCalib + ")");
  args.option("--calib-samples", "calibration windows", "32");
  args.option("--calib-seqlen", "tokens per calibration window", "512");
  args.option("--report", "write per-layer facts (outliers, AWQ exponents, GPTQ errors) as JSON to FILE");
  args.option("-t,--threads", "worker threads", "2");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("quantize", s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
  if (!args.has("-m") || !args.has("-o")) {
    return fail("quantize", invalid_argument("-m and -o are required; see 'nibble quantize --help'"));
  }
  if (Status s = run(args); !s.ok()) return fail("quantize", s);
  return 0;
}

}  // namespace
NB_REGISTER_COMMAND("quantize", run_quantize,
                    "-m IN -o OUT --method rtn|smoothquant|awq|gptq --wbits N --group-size G: post-training quantization");
}  // namespace nb::tools
