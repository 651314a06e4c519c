// nibble tokenize: text -> ids and ids -> text with a model's tokenizer (also the hook the Python
// tests use to compare against HF tokenizers and sentencepiece).
//
//   nibble tokenize -m MODEL -p TEXT            one line per token: id, then the piece as JSON
//   nibble tokenize -m MODEL -p TEXT --ids      one JSON array of ids
//   nibble tokenize -m MODEL -f FILE            one JSON array of ids per input line
//   nibble tokenize -m MODEL -f FILE --decode   input lines are JSON id arrays; one JSON string each
//   nibble tokenize -m MODEL --info             vocabulary facts as one JSON object
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <string>

#include "core/mmap_file.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

using json = nlohmann::json;

std::string to_json(const std::string& s) { return json(s).dump(-1, ' ', false, json::error_handler_t::replace); }

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(ids[i]);
  }
  return out + "]";
}

// A llama2.c checkpoint (.bin not named tok*) names its tokenizer through the model loader;
// everything else is a tokenizer file, a .gguf, or a directory holding one.
Result<TokenizerSource> find_source(const std::string& path) {
  const std::filesystem::path p(path);
  std::error_code ec;
  if (std::filesystem::is_regular_file(p, ec) && p.extension() == ".bin" && !p.filename().string().starts_with("tok")) {
    NB_ASSIGN_OR_RETURN(LoadedModel model, load_model(path));
    if (model.tokenizer.kind == TokenizerSource::Kind::kNone) {
      return not_found("no tokenizer beside " + path + "; put tokenizer.model or tok*.bin next to it");
    }
    return model.tokenizer;
  }
  return detect_tokenizer_source(path);
}

Result<std::vector<std::string>> read_lines(const std::string& path, bool json_input) {
  std::string data;
  if (path == "-") {
    data.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    NB_ASSIGN_OR_RETURN(data, read_file(path));
  }
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < data.size()) {
    size_t end = data.find('\n', start);
    if (end == std::string::npos) end = data.size();
    lines.push_back(data.substr(start, end - start));
    start = end + 1;
  }
  if (!json_input) return lines;
  for (size_t i = 0; i < lines.size(); ++i) {
    const json j = json::parse(lines[i], nullptr, false);
    if (j.is_discarded() || !j.is_string()) {
      return invalid_argument("line " + std::to_string(i + 1) + " of " + path + " is not a JSON string (--json-input)");
    }
    lines[i] = j.get<std::string>();
  }
  return lines;
}

Result<std::vector<int32_t>> parse_ids(const std::string& line, size_t line_no) {
  const json j = json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_array()) {
    return invalid_argument("line " + std::to_string(line_no) + " is not a JSON array of token ids (--decode)");
  }
  std::vector<int32_t> ids;
  for (const json& e : j) {
    if (!e.is_number_integer() || e.get<int64_t>() < INT32_MIN || e.get<int64_t>() > INT32_MAX) {
      return invalid_argument("line " + std::to_string(line_no) + " holds something other than a 32-bit token id");
    }
    ids.push_back(static_cast<int32_t>(e.get<int64_t>()));
  }
  return ids;
}

int run_tokenize(int argc, char** argv) {
  CliArgs args("tokenize", "-m MODEL (-p TEXT | -f FILE) [options]");
  args.option("-m,--model", "a .gguf, tokenizer.model, tok*.bin, tokenizer.json, llama2.c .bin or model directory");
  args.option("-p,--prompt", "text to tokenize");
  args.option("-f,--file", "one input per line ('-' for stdin)");
  args.flag("--json-input", "each input line is a JSON string (so inputs may hold newlines)");
  args.flag("--no-bos", "do not add BOS (default: add it when the model expects it)");
  args.flag("--no-special", "treat special-token text like <|im_start|> as plain text");
  args.flag("--ids", "print only a JSON array of ids");
  args.flag("--decode", "input lines are JSON id arrays; print each decoded as a JSON string");
  args.flag("--skip-special", "with --decode: drop control tokens");
  args.flag("--stream", "with --decode: print the incremental detokenizer's chunks as a JSON array");
  args.flag("--info", "print vocabulary size, special ids and the model kind as JSON");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("tokenize", s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
  if (!args.has("-m")) return fail("tokenize", invalid_argument("-m MODEL is required; see nibble tokenize --help"));

  auto source = find_source(args.get("-m"));
  if (!source.ok()) return fail("tokenize", source.status());
  auto loaded = load_tokenizer(*source);
  if (!loaded.ok()) return fail("tokenize", loaded.status());
  const Tokenizer& tok = **loaded;

  if (args.has("--info")) {
    json info = {{"model", tok.model() == Tokenizer::Model::kSentencePiece ? "sentencepiece" : "byte_level_bpe"},
                 {"vocab_size", tok.vocab_size()},  {"bos_id", tok.bos_id()},
                 {"eos_id", tok.eos_id()},          {"unk_id", tok.unk_id()},
                 {"eot_ids", tok.eot_ids()},        {"add_bos", tok.add_bos_by_default()}};
    std::printf("%s\n", info.dump().c_str());
    return 0;
  }
  const bool add_bos = tok.add_bos_by_default() && !args.has("--no-bos");
  const bool parse_special = !args.has("--no-special");

  if (args.has("-p")) {
    const std::vector<int32_t> ids = tok.encode(args.get("-p"), add_bos, parse_special);
    if (args.has("--ids")) {
      std::printf("%s\n", ids_json(ids).c_str());
    } else {
      for (int32_t id : ids) std::printf("%6d %s\n", id, to_json(tok.token_piece(id)).c_str());
    }
    return 0;
  }
  if (!args.has("-f")) return fail("tokenize", invalid_argument("give -p TEXT or -f FILE; see nibble tokenize --help"));
  auto lines = read_lines(args.get("-f"), args.has("--json-input") && !args.has("--decode"));
  if (!lines.ok()) return fail("tokenize", lines.status());

  std::string out;
  for (size_t i = 0; i < lines->size(); ++i) {
    const std::string& line = (*lines)[i];
    if (!args.has("--decode")) {
      out += ids_json(tok.encode(line, add_bos, parse_special));
    } else {
      auto ids = parse_ids(line, i + 1);
      if (!ids.ok()) return fail("tokenize", ids.status());
      if (!args.has("--stream")) {
        out += to_json(tok.decode(*ids, args.has("--skip-special")));
      } else {
        IncrementalDetokenizer detok(tok, args.has("--skip-special"));
        json chunks = json::array();
        for (int32_t id : *ids) chunks.push_back(detok.push(id));
        chunks.push_back(detok.flush());
        for (const json& c : chunks) {
          if (!utf8::is_valid(c.get<std::string>())) {
            return fail("tokenize", internal_error("the detokenizer emitted invalid UTF-8 on line " + std::to_string(i + 1)));
          }
        }
        out += chunks.dump();
      }
    }
    out += '\n';
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND("tokenize", run_tokenize, "text -> token ids and back with a model's tokenizer");

}  // namespace nb::tools
