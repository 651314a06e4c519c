// nibble template: render a chat template (also the hook the Python tests use to compare our
// Jinja interpreter with the jinja2 package).
//
//   nibble template --template-file F --messages-json J   render F (a Jinja chat template)
//   nibble template --name llama3 --messages-json J       render a built-in template
//   nibble template --gguf MODEL.gguf --messages-json J   render the model's tokenizer.chat_template
//                                                         (falling back to a built-in one, as loaders do)
//   J is a JSON array of {"role", "content"} objects, given inline or as a file path.
//   The rendering goes to stdout exactly, without a trailing newline.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>

#include "core/mmap_file.h"
#include "format/gguf.h"
#include "tokenizer/chat_template.h"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

using json = nlohmann::json;

Result<std::vector<ChatMessage>> parse_messages(const std::string& arg) {
  std::string text = arg;
  const size_t first = arg.find_first_not_of(" \t\r\n");
  if (first == std::string::npos || arg[first] != '[') {
    NB_ASSIGN_OR_RETURN(text, read_file(arg));
  }
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_array())
    return invalid_argument("--messages-json must be a JSON array of {\"role\": ..., \"content\": ...} objects");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const json& m = j[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string())
      return invalid_argument("message " + std::to_string(i) + " needs string fields \"role\" and \"content\"");
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

// JSON -> template value, keeping object key order as Python's json.loads does.
jinja::Value to_value(const nlohmann::ordered_json& j) {
  if (j.is_null()) return jinja::Value::none();
  if (j.is_boolean()) return jinja::Value::boolean(j.get<bool>());
  if (j.is_number_integer()) return jinja::Value::integer(j.get<int64_t>());
  if (j.is_number()) return jinja::Value::number(j.get<double>());
  if (j.is_string()) return jinja::Value::string(j.get<std::string>());
  if (j.is_array()) {
    jinja::List items;
    for (const auto& e : j) items.push_back(to_value(e));
    return jinja::Value::make_list(std::move(items));
  }
  jinja::Dict d;
  for (const auto& [k, v] : j.items()) d.emplace_back(k, to_value(v));
  return jinja::Value::make_dict(std::move(d));
}

int run_template(int argc, char** argv) {
  CliArgs args("template", "(--template-file F | --name NAME | --gguf MODEL) --messages-json J [options]");
  args.option("--template-file", "a Jinja chat template file");
  args.option("--name", "a built-in template: chatml, llama2, llama3, mistral, zephyr, phi3");
  args.option("--gguf", "use tokenizer.chat_template of this GGUF model (and its BOS/EOS tokens)");
  args.option("--messages-json", "JSON array of {role, content}, inline or a file path");
  args.flag("--no-generation-prompt", "do not end with the assistant header (add_generation_prompt=false)");
  args.option("--bos", "bos_token text", "<s>");
  args.option("--eos", "eos_token text", "</s>");
  args.option("--vars-json", "JSON object of extra template variables (like apply_chat_template kwargs)");
  args.flag("--print-source", "print the template source instead of rendering");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("template", s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
  const int num_sources = args.has("--template-file") + args.has("--name") + args.has("--gguf");
  if (num_sources != 1)
    return fail("template", invalid_argument("give exactly one of --template-file, --name, --gguf"));

  std::string bos = args.get("--bos"), eos = args.get("--eos");
  Result<ChatTemplate> tmpl = invalid_argument("no template");
  if (args.has("--template-file")) {
    auto src = read_file(args.get("--template-file"));
    if (!src.ok()) return fail("template", src.status());
    tmpl = ChatTemplate::from_jinja(*src, bos, eos);
  } else if (args.has("--name")) {
    tmpl = ChatTemplate::from_name(args.get("--name"), bos, eos);
  } else {
    auto gguf = GgufFile::open(args.get("--gguf"));
    if (!gguf.ok()) return fail("template", gguf.status());
    auto src = (*gguf)->get_string("tokenizer.chat_template");
    // BOS/EOS come from the vocabulary unless given explicitly.
    auto token_text = [&](const char* id_key, std::string& out) {
      auto id = (*gguf)->get_int(id_key);
      if (!id.ok()) return;
      const GgufValue* tokens = (*gguf)->find("tokenizer.ggml.tokens");
      if (tokens != nullptr && *id >= 0 && static_cast<size_t>(*id) < tokens->strs.size())
        out = tokens->strs[static_cast<size_t>(*id)];
    };
    if (!args.has("--bos")) token_text("tokenizer.ggml.bos_token_id", bos);
    if (!args.has("--eos")) token_text("tokenizer.ggml.eos_token_id", eos);
    tmpl = ChatTemplate::for_model(src.ok() ? *src : std::string(), bos, eos);
  }
  if (!tmpl.ok()) return fail("template", tmpl.status());
  if (args.has("--print-source")) {
    std::fwrite(tmpl->source().data(), 1, tmpl->source().size(), stdout);
    return 0;
  }
  if (!args.has("--messages-json")) return fail("template", invalid_argument("--messages-json J is required"));
  auto messages = parse_messages(args.get("--messages-json"));
  if (!messages.ok()) return fail("template", messages.status());
  jinja::Dict vars;
  if (args.has("--vars-json")) {
    const auto j = nlohmann::ordered_json::parse(args.get("--vars-json"), nullptr, false);
    if (j.is_discarded() || !j.is_object()) return fail("template", invalid_argument("--vars-json must be a JSON object"));
    vars = *to_value(j).dict;
  }
  auto out = tmpl->render(*messages, !args.has("--no-generation-prompt"), vars);
  if (!out.ok()) return fail("template", out.status());
  std::fwrite(out->data(), 1, out->size(), stdout);
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND("template", run_template, "render a chat template for a conversation");

}  // namespace nb::tools
