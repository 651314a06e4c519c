// Chat template error paths, limits, fallback and robustness. Rendering correctness is checked
// against the jinja2 package in tests/py/test_chat_template*.py; here the expected strings are
// the published prompt formats written out by hand.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "tokenizer/chat_template.h"
#include "tokenizer/jinja.h"

namespace nb {
namespace {

const std::vector<ChatMessage> kChat = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};

Status render_status(const std::string& source, const jinja::Dict& vars = {}) {
  auto t = jinja::Template::parse(source);
  if (!t.ok()) return t.status();
  auto r = t->render(vars);
  return r.ok() ? Status::Ok() : r.status();
}

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

TEST(ChatTemplate, ChatMlMatchesThePublishedFormat) {
  auto t = ChatTemplate::from_name("chatml", "<s>", "</s>");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  auto out = t->render({{"user", "Hi"}, {"assistant", "Hello"}}, true);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(*out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n");
  out = t->render({{"user", "Hi"}}, false);
  EXPECT_EQ(*out, "<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplate, Llama3MatchesThePublishedFormat) {
  auto t = ChatTemplate::from_name("llama3", "<|begin_of_text|>", "<|eot_id|>");
  ASSERT_TRUE(t.ok());
  auto out = t->render({{"system", "S "}, {"user", " U"}}, true);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, EveryBuiltinRendersAndIsDetectedFromItsOwnSource) {
  for (const std::string& name : ChatTemplate::builtin_names()) {
    auto t = ChatTemplate::from_name(name, "<s>", "</s>");
    ASSERT_TRUE(t.ok()) << name << ": " << t.status().to_string();
    auto out = t->render(kChat, true);
    ASSERT_TRUE(out.ok()) << name << ": " << out.status().to_string();
    EXPECT_TRUE(contains(*out, "Bye")) << name;
    EXPECT_EQ(ChatTemplate::detect_name(*ChatTemplate::builtin_source(name)), name);
  }
  EXPECT_FALSE(ChatTemplate::from_name("vicuna", "", "").ok());
  EXPECT_TRUE(contains(ChatTemplate::from_name("vicuna", "", "").status().message(), "chatml"));
}

TEST(ChatTemplate, RaiseExceptionIsAnErrorWithTheMessage) {
  auto t = ChatTemplate::from_name("llama2", "<s>", "</s>");
  auto out = t->render({{"user", "a"}, {"user", "b"}}, true);
  ASSERT_FALSE(out.ok());
  EXPECT_TRUE(contains(out.status().message(), "Conversation roles must alternate")) << out.status().message();
  EXPECT_TRUE(contains(out.status().message(), "line 1, column")) << out.status().message();
}

TEST(ChatTemplate, ForModelFallsBackOnlyForUnsupportedJinja) {
  // Parse-time unsupported construct + ChatML markers -> chatml.
  auto a = ChatTemplate::for_model("{% filter upper %}{% endfilter %}{{ '<|im_start|>' }}", "", "");
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->name(), "chatml");
  // Unsupported filter seen only when rendering + [INST] -> mistral.
  auto b = ChatTemplate::for_model("{% for m in messages %}[INST]{{ m.content | wordwrap(5) }}{% endfor %}", "", "");
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(b->name(), "mistral");
  // A supported template is kept even if it raises for some conversations.
  auto c = ChatTemplate::for_model(std::string(*ChatTemplate::builtin_source("llama2")), "", "");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->name(), "jinja");
  // A syntax error is the template's fault: reported, no silent fallback.
  auto d = ChatTemplate::for_model("{% if messages %}<|im_start|>", "", "");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  // Unsupported and unrecognisable: an error that says what to do.
  auto e = ChatTemplate::for_model("{% include 'other.jinja' %}", "", "");
  ASSERT_FALSE(e.ok());
  EXPECT_TRUE(contains(e.status().message(), "by name")) << e.status().message();
  EXPECT_EQ(ChatTemplate::for_model("", "", "")->name(), "chatml");
}

TEST(Jinja, UnsupportedSyntaxNamesConstructAndPosition) {
  const Status s = render_status("ok\n  {% call greet() %}hi{% endcall %}");
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(contains(s.message(), "line 2, column 6")) << s.message();
  EXPECT_TRUE(contains(s.message(), "call")) << s.message();
  for (const char* src : {"{% include 'x' %}", "{% extends 'x' %}", "{% filter upper %}x{% endfilter %}",
                          "{{ x | wordwrap }}", "{{ 'a'.zfill(3) }}", "{{ [1] | sort }}"}) {
    EXPECT_EQ(render_status(src, {{"x", jinja::Value::string("a")}}).code(), StatusCode::kUnimplemented) << src;
  }
}

TEST(Jinja, SyntaxErrorsCarryPositions) {
  struct Case {
    const char* src;
    const char* where;
  };
  for (const Case& c : {Case{"{% if x %}", "line 1, column 11"}, Case{"a\n{{ 1 + }}", "line 2, column 8"},
                        Case{"{{ 'abc }}", "line 1, column 4"}, Case{"{# never closed", "line 1, column 1"},
                        Case{"{{ (1 ]] }}", "line 1, column 7"}, Case{"{% endif %}", "line 1, column 4"},
                        Case{"{{ a b }}", "line 1, column 6"}, Case{"{% for 1 in x %}{% endfor %}", "line 1, column 8"}}) {
    const Status s = render_status(c.src);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.src;
    EXPECT_TRUE(contains(s.message(), c.where)) << c.src << " -> " << s.message();
  }
}

TEST(Jinja, RuntimeErrors) {
  EXPECT_TRUE(contains(render_status("{{ x.y }}").message(), "'x' is undefined"));
  EXPECT_TRUE(contains(render_status("{{ 1 + 'a' }}").message(), "unsupported operand"));
  EXPECT_TRUE(contains(render_status("{{ 1 // 0 }}").message(), "by zero"));
  EXPECT_TRUE(contains(render_status("{% set x = 1 %}{% set x.a = 2 %}").message(), "namespace"));
  EXPECT_TRUE(contains(render_status("{{ raise_exception('stop here') }}").message(), "stop here"));
  EXPECT_TRUE(contains(render_status("{{ 9223372036854775807 + 1 }}").message(), "overflow"));
  EXPECT_TRUE(contains(render_status("{{ undefined_fn() }}").message(), "not callable"));
}

TEST(JinjaRobust, RunawayLoopsAndOutputAreBounded) {
  jinja::Limits limits;
  limits.max_loop_iterations = 10000;
  limits.max_output_bytes = 1 << 16;
  auto run = [&](const std::string& src) {
    auto t = jinja::Template::parse(src, {}, limits);
    if (!t.ok()) return t.status();
    auto r = t->render({});
    return r.ok() ? Status::Ok() : r.status();
  };
  Status s = run("{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}");
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(contains(s.message(), "iterations")) << s.message();
  EXPECT_EQ(run("{{ range(100000000) | length }}").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(run("{% for a in range(5000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}").code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(run("{{ 'x' * 100000000 }}").code(), StatusCode::kResourceExhausted);
  // Default limits stop a cartesian explosion too (1e12 iterations would take hours).
  EXPECT_EQ(render_status("{% for a in range(1000000) %}{% for b in range(1000000) %}{% endfor %}{% endfor %}").code(),
            StatusCode::kResourceExhausted);
}

TEST(JinjaRobust, DeepOrSelfContainingValuesAreErrors) {
  for (const char* src : {"{% set x = [] %}{% set ns = namespace(v=x) %}{% for i in range(100000) %}{% set ns.v = [ns.v] %}{% endfor %}{{ ns.v }}",
                          "{% set ns = namespace(v=1) %}{% for i in range(100000) %}{% set ns.v = {'a': ns.v} %}{% endfor %}",
                          "{% set ns = namespace() %}{% set ns.self = ns %}{{ ns }}",
                          "{% set ns = namespace() %}{% set ns.l = [1, ns] %}{{ ns.l }}",
                          "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                          "{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
                          "{{ 1 ** 1000000000000000000 }}{{ 2 ** 100 }}"}) {
    const Status s = render_status(src);
    EXPECT_FALSE(s.ok()) << src;
    EXPECT_TRUE(s.code() == StatusCode::kResourceExhausted || s.code() == StatusCode::kInvalidArgument) << s.to_string();
  }
  EXPECT_TRUE(render_status("{{ 1 ** 1000000000000000000 }}").ok());
}

TEST(JinjaRobust, RunawayMacroRecursionIsAnError) {
  const Status s = render_status("{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}");
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(contains(s.message(), "macro calls nested deeper")) << s.message();
}

TEST(JinjaRobust, DeepNestingIsAnErrorNotACrash) {
  for (const std::string& src : {"{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}",
                                 "{{ 1" + std::string("") + [] { std::string s; for (int i = 0; i < 100000; ++i) s += " + 1"; return s; }() + " }}",
                                 [] { std::string s; for (int i = 0; i < 5000; ++i) s += "{% if true %}"; return s; }(),
                                 "{{ x" + [] { std::string s; for (int i = 0; i < 100000; ++i) s += ".a"; return s; }() + " }}",
                                 "{{ x" + [] { std::string s; for (int i = 0; i < 100000; ++i) s += "|trim"; return s; }() + " }}",
                                 "{{ " + [] { std::string s; for (int i = 0; i < 100000; ++i) s += "not "; return s; }() + "1 }}",
                                 "{{ " + [] { std::string s; for (int i = 0; i < 100000; ++i) s += "["; return s; }() + " }}"}) {
    const Status s = render_status(src);
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(contains(s.message(), "deeper than") || contains(s.message(), "expected")) << s.message().substr(0, 200);
  }
}

TEST(JinjaFuzz, MutatedTemplatesNeverCrash) {
  std::mt19937_64 rng(1234);
  std::vector<std::string> seeds;
  for (const std::string& name : ChatTemplate::builtin_names()) seeds.emplace_back(*ChatTemplate::builtin_source(name));
  seeds.push_back("{% set ns = namespace(a=[1,2]) %}{% for k, v in {'x': (1, 2)}.items() if k %}{{ loop.index ~ v[1:] | tojson }}"
                  "{% set a, b = 1, 2 %}{% raw %}{{x}}{% endraw %}{{ -a ** 2 // 3 % 2 }}{% endfor %}");
  const std::string alphabet = "{}%#-+~|()[].,:'\"\\ \n\tabcdefghijklmnopqrstuvwxyz0123456789=<>!*/";
  jinja::Limits limits;
  limits.max_loop_iterations = 1000;
  limits.max_output_bytes = 1 << 16;
  jinja::List msgs;
  for (const auto& m : kChat)
    msgs.push_back(jinja::Value::make_dict({{"role", jinja::Value::string(m.role)}, {"content", jinja::Value::string(m.content)}}));
  const jinja::Dict vars = {{"messages", jinja::Value::make_list(msgs)}, {"add_generation_prompt", jinja::Value::boolean(true)},
                            {"bos_token", jinja::Value::string("<s>")}, {"eos_token", jinja::Value::string("</s>")}};
  int parsed = 0, rendered = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string src = seeds[rng() % seeds.size()];
    const int num_edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < num_edits && !src.empty(); ++e) {
      const size_t at = rng() % src.size();
      switch (rng() % 3) {
        case 0: src.erase(at, 1 + rng() % 3); break;
        case 1: src.insert(at, 1, alphabet[rng() % alphabet.size()]); break;
        default: src[at] = alphabet[rng() % alphabet.size()];
      }
    }
    auto t = jinja::Template::parse(src, {}, limits);
    if (!t.ok()) {
      EXPECT_FALSE(t.status().message().empty());
      continue;
    }
    ++parsed;
    auto r = t->render(vars);
    if (r.ok()) ++rendered;
    else EXPECT_TRUE(contains(r.status().message(), "template line")) << r.status().message();
  }
  // The mutations must leave a fair share parseable, or this would only test the lexer.
  EXPECT_GT(parsed, 300);
  EXPECT_GT(rendered, 100);
}

}  // namespace
}  // namespace nb
