// nibble convert: writes a model as a plain HF directory (config.json + model.safetensors in f16 or
// f32 + tokenizer.json / tokenizer_config.json): e.g. a GGUF dequantized to f16, the "base" of the
// quantization experiments. Interleaved-RoPE sources (GGUF, llama2.c) get their q/k rows put in
// HF's rotate_half order, so the directory computes the same function.
#include <cstdio>

#include "model/weights.h"
#include "quant/checkpoint_writer.h"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

int run_convert(int argc, char** argv) {
  CliArgs args("convert", "-m MODEL -o DIR [--dtype f16|f32]");
  args.option("-m,--model", "input model: .gguf, llama2.c .bin or HF directory");
  args.option("-o,--output", "output directory (created if missing)");
  args.option("--dtype", "storage type of every tensor: f16 or f32", "f16");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("convert", s);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  if (!args.has("-m") || !args.has("-o")) return fail("convert", invalid_argument("-m and -o are required; see 'nibble convert --help'"));
  const std::string dtype = args.get("--dtype");
  if (dtype != "f16" && dtype != "f32") return fail("convert", invalid_argument("--dtype must be f16 or f32, not '" + dtype + "'"));
  auto loaded = load_model(args.get("-m"));
  if (!loaded.ok()) return fail("convert", loaded.status());
  if (Status s = quant::save_float_model(*loaded, args.get("-o"), dtype == "f32"); !s.ok()) return fail("convert", s);
  std::fprintf(stderr, "wrote %s (%s)\n", args.get("-o").c_str(), dtype.c_str());
  return 0;
}

}  // namespace
NB_REGISTER_COMMAND("convert", run_convert, "-m MODEL -o DIR [--dtype f16|f32]: write a plain HF safetensors directory");
}  // namespace nb::tools
