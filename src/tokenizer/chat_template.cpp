#include "tokenizer/chat_template.h"

#include <utility>

namespace nb {
namespace {

// The templates these model families publish (tokenizer_config.json "chat_template").
constexpr std::pair<std::string_view, std::string_view> kBuiltins[] = {
    {"chatml",
     R"JINJA({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})JINJA"},
    {"llama2",
     R"JINJA({% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %})JINJA"},
    {"llama3",
     R"JINJA({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})JINJA"},
    {"mistral",
     R"JINJA({%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
)JINJA"},
    {"zephyr",
     R"JINJA({% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %})JINJA"},
    {"phi3",
     R"JINJA({% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %})JINJA"},
};

bool contains(std::string_view s, std::string_view needle) { return s.find(needle) != std::string_view::npos; }

}  // namespace

Result<ChatTemplate> ChatTemplate::from_jinja(std::string source, std::string bos_token, std::string eos_token) {
  auto t = jinja::Template::parse(std::move(source));
  if (!t.ok()) return t.status().with_context("chat template");
  return ChatTemplate(std::move(t).value(), std::move(bos_token), std::move(eos_token), "jinja");
}

Result<ChatTemplate> ChatTemplate::from_name(std::string_view name, std::string bos_token, std::string eos_token) {
  const auto src = builtin_source(name);
  if (!src) {
    std::string names;
    for (const auto& n : builtin_names()) names += (names.empty() ? "" : ", ") + n;
    return invalid_argument("unknown chat template '" + std::string(name) + "'; expected one of: " + names);
  }
  auto t = jinja::Template::parse(std::string(*src));
  if (!t.ok()) return t.status().with_context("built-in chat template " + std::string(name));
  return ChatTemplate(std::move(t).value(), std::move(bos_token), std::move(eos_token), std::string(name));
}

Result<ChatTemplate> ChatTemplate::for_model(std::string source, std::string bos_token, std::string eos_token) {
  if (source.empty()) return from_name("chatml", std::move(bos_token), std::move(eos_token));
  Status why;
  auto own = from_jinja(source, bos_token, eos_token);
  if (own.ok()) {
    // Unsupported filters or methods only show when evaluated: try a typical conversation.
    const std::vector<ChatMessage> sample = {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
    auto r = own->render(sample, true);
    if (r.ok() || r.status().code() != StatusCode::kUnimplemented) return own;
    why = r.status();
  } else {
    why = own.status();
  }
  if (why.code() != StatusCode::kUnimplemented) return why;
  const auto name = detect_name(source);
  if (!name)
    return Status(StatusCode::kUnimplemented,
                  why.message() + "; and the template matches no built-in one: pass a template by name");
  return from_name(*name, std::move(bos_token), std::move(eos_token));
}

std::vector<std::string> ChatTemplate::builtin_names() {
  std::vector<std::string> names;
  for (const auto& [name, src] : kBuiltins) names.emplace_back(name);
  return names;
}

std::optional<std::string_view> ChatTemplate::builtin_source(std::string_view name) {
  for (const auto& [n, src] : kBuiltins)
    if (n == name) return src;
  return std::nullopt;
}

std::optional<std::string> ChatTemplate::detect_name(std::string_view s) {
  if (contains(s, "<|im_start|>")) return "chatml";
  if (contains(s, "<|start_header_id|>")) return "llama3";
  if (contains(s, "<<SYS>>")) return "llama2";
  if (contains(s, "[INST]")) return "mistral";
  if (contains(s, "<|user|>") && contains(s, "<|end|>")) return "phi3";
  if (contains(s, "<|user|>")) return "zephyr";
  return std::nullopt;
}

Result<std::string> ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                         const jinja::Dict& extra_vars) const {
  jinja::List list;
  list.reserve(messages.size());
  for (const ChatMessage& m : messages)
    list.push_back(jinja::Value::make_dict({{"role", jinja::Value::string(m.role)}, {"content", jinja::Value::string(m.content)}}));
  jinja::Dict globals = extra_vars;
  for (auto& [name, value] : jinja::Dict{{"messages", jinja::Value::make_list(std::move(list))},
                                         {"add_generation_prompt", jinja::Value::boolean(add_generation_prompt)},
                                         {"bos_token", jinja::Value::string(bos_)},
                                         {"eos_token", jinja::Value::string(eos_)}}) {
    std::erase_if(globals, [&](const auto& kv) { return kv.first == name; });
    globals.emplace_back(name, std::move(value));
  }
  auto out = tmpl_.render(globals);
  if (!out.ok()) return out.status().with_context("chat template");
  return out;
}

}  // namespace nb
