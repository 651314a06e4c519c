// Chat templates: turn a conversation into the prompt text a chat model was trained on.
//
// A model's own template (tokenizer.chat_template in GGUF, chat_template in
// tokenizer_config.json) is rendered by nibble's Jinja subset (tokenizer/jinja.h) with the
// variables Hugging Face transformers passes: messages (a list of {role, content} dicts),
// add_generation_prompt, bos_token, eos_token, and the functions raise_exception and
// strftime_now; trim_blocks and lstrip_blocks are on, as in transformers.
//
// Built-in templates (by name) cover models that ship none, or whose template uses Jinja that
// the subset does not support: chatml, llama2, llama3, mistral, zephyr, phi3. They are the
// Jinja sources those model families publish, rendered by the same interpreter.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "tokenizer/jinja.h"

namespace nb {

struct ChatMessage {
  std::string role;
  std::string content;
};

class ChatTemplate {
 public:
  // Parses a Jinja template. kUnimplemented means it uses Jinja nibble does not support (the
  // message names the construct); kInvalidArgument means a syntax error. Both carry the position.
  static Result<ChatTemplate> from_jinja(std::string source, std::string bos_token, std::string eos_token);
  // One of builtin_names().
  static Result<ChatTemplate> from_name(std::string_view name, std::string bos_token, std::string eos_token);
  // What a model loader should call: the model's own template when nibble can render it (checked
  // by parsing it and rendering a sample conversation); if it uses unsupported Jinja, the built-in
  // template that detect_name() recognises in its text; chatml when `source` is empty.
  static Result<ChatTemplate> for_model(std::string source, std::string bos_token, std::string eos_token);

  static std::vector<std::string> builtin_names();
  // The Jinja source of a built-in template.
  static std::optional<std::string_view> builtin_source(std::string_view name);
  // Recognises a template family by its distinctive markers ("<|im_start|>", "[INST]", ...).
  static std::optional<std::string> detect_name(std::string_view source);

  // Renders the conversation. Errors: raise_exception() in the template (e.g. roles that do not
  // alternate), undefined values used as objects, limits exceeded; all name the template position.
  // `extra_vars` are further template variables, as extra keyword arguments of transformers'
  // apply_chat_template (tools, documents, enable_thinking, ...); they cannot replace the four above.
  Result<std::string> render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                             const jinja::Dict& extra_vars = {}) const;

  // "jinja" for a model's own template, else the built-in name.
  const std::string& name() const { return name_; }
  const std::string& source() const { return tmpl_.source(); }

 private:
  ChatTemplate(jinja::Template t, std::string bos, std::string eos, std::string name)
      : tmpl_(std::move(t)), bos_(std::move(bos)), eos_(std::move(eos)), name_(std::move(name)) {}

  jinja::Template tmpl_;
  std::string bos_, eos_;
  std::string name_;
};

}  // namespace nb
