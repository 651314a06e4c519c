// A small Jinja2 interpreter: the subset that chat templates use (the templates shipped in
// tokenizer_config.json / GGUF tokenizer.chat_template), with Python/Jinja2 semantics where the
// output depends on them (value printing, scoping of {% set %} in loops, whitespace control).
//
// Supported: text, {{ }}, {# #}, whitespace control (-, +, trim_blocks, lstrip_blocks),
// {% if/elif/else %}, {% for x in xs [if cond] %} with else/loop.*/break/continue,
// {% set x = ... %}, {% set a, b = ... %}, {% set ns.attr = ... %}, {% set x %}...{% endset %},
// {% macro name(a, b=default) %} (called as name(...); no caller/varargs), {% raw %}, {% generation %};
// literals (str, int, float, bool, none, list, tuple, dict), arithmetic, ~, comparisons, and/or/not,
// in/not in, a if c else b, subscripts and slices, attribute access, filters, tests (`is`), string
// and dict methods, and the globals raise_exception, range, namespace.
// Not supported (a clear kUnimplemented error naming the construct): call/filter blocks,
// include/extends/import, recursive loops, and any filter/test/method not in jinja_builtins.cpp /
// jinja_methods.cpp.
//
// Every error is a Status whose message starts with "template line L, column C:". Evaluation is
// bounded: nesting depth, loop iterations and output size are capped (Limits), so a hostile
// template returns an error instead of hanging or exhausting memory.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace nb::jinja {

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion-ordered, like Python dicts

struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0.0;
  std::string s;               // kString; for kUndefined, the name that was looked up
  std::shared_ptr<List> list;  // kList
  bool tuple = false;          // kList: a Python tuple (prints with parentheses; never equals a list)
  std::shared_ptr<Dict> dict;  // kDict, kNamespace (a namespace is a dict that {% set %} may mutate)

  static Value undefined(std::string name = {}) { Value v; v.s = std::move(name); return v; }
  static Value none() { Value v; v.kind = Kind::kNone; return v; }
  static Value boolean(bool x) { Value v; v.kind = Kind::kBool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.kind = Kind::kInt; v.i = x; return v; }
  static Value number(double x) { Value v; v.kind = Kind::kFloat; v.f = x; return v; }
  static Value string(std::string x) { Value v; v.kind = Kind::kString; v.s = std::move(x); return v; }
  static Value make_list(List x = {}) { Value v; v.kind = Kind::kList; v.list = std::make_shared<List>(std::move(x)); return v; }
  static Value make_tuple(List x) { Value v = make_list(std::move(x)); v.tuple = true; return v; }
  static Value make_dict(Dict x = {}) { Value v; v.kind = Kind::kDict; v.dict = std::make_shared<Dict>(std::move(x)); return v; }

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_none() const { return kind == Kind::kNone; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool; }
  bool is_mapping() const { return kind == Kind::kDict || kind == Kind::kNamespace; }
  // Python truthiness.
  bool truthy() const;
  // A dict member (nullptr when absent or not a mapping).
  const Value* find(std::string_view key) const;
  // Sets key in a dict/namespace, appending when new.
  void set(std::string key, Value v);
};

// Python str(): what {{ v }} prints ("None", "True", "1.0", "['a', 1]"; undefined prints "").
std::string to_str(const Value& v);
// Python repr() (strings quoted).
std::string to_repr(const Value& v);
// JSON as Python's json.dumps(v, ensure_ascii=False, indent=indent) writes it (indent < 0: none),
// which is what Hugging Face's tojson filter does.
Result<std::string> to_json(const Value& v, int indent);
// Python ==.
bool equals(const Value& a, const Value& b);

struct Options {
  bool trim_blocks = true;    // Hugging Face transformers renders chat templates with both on
  bool lstrip_blocks = true;
  bool keep_trailing_newline = false;
};

struct Limits {
  int max_depth = 200;                      // nested blocks and expression depth
  int64_t max_loop_iterations = 1'000'000;  // all loops of one render together
  size_t max_output_bytes = 64u << 20;
  int64_t max_range = 1'000'000;            // longest range() / string repeat
};

struct Node;  // AST, private to the implementation

class Template {
 public:
  // Parses `source`; syntax errors and unsupported constructs are reported here.
  static Result<Template> parse(std::string source, Options options = {}, Limits limits = {});
  // Renders with the given global variables (name -> value).
  Result<std::string> render(const Dict& globals) const;

  const std::string& source() const { return *source_; }

 private:
  std::shared_ptr<const std::string> source_;  // normalised newlines
  std::shared_ptr<const Node> root_;
  Limits limits_;
};

// "template line L, column C: <message>" for a byte offset into `source`.
std::string position_prefix(std::string_view source, size_t offset);

}  // namespace nb::jinja
