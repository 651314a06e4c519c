// Operators, filters, tests, methods and global functions of the Jinja subset (private to the
// interpreter). Errors carry no position; the evaluator prefixes the position of the node.
#pragma once
#include <string>
#include <vector>

#include "tokenizer/jinja.h"

namespace nb::jinja {

// Call arguments after evaluation: positional, then keyword (names[i] names kwargs[i]).
struct Args {
  std::vector<Value> positional;
  std::vector<std::string> names;
  std::vector<Value> keyword;
  // The i-th positional argument or the keyword `name`, else `fallback`.
  Value get(size_t i, const char* name, Value fallback = Value::undefined()) const;
};

// Python type name, for messages ("str", "int", "NoneType", ...).
const char* type_name(const Value& v);

Result<Value> binary_op(const std::string& op, const Value& a, const Value& b, const Limits& limits);
// Python ==, <, <=, >, >=, != (and `in` / `not in` as "in" / "notin").
Result<bool> compare_op(const std::string& op, const Value& a, const Value& b);

Result<Value> apply_filter(const std::string& name, const Value& subject, const Args& args, const Limits& limits);
Result<bool> apply_test(const std::string& name, const Value& subject, const Args& args);
Result<Value> call_method(const Value& object, const std::string& name, const Args& args);
// range, namespace, dict, raise_exception, strftime_now.
Result<Value> call_global(const std::string& name, const Args& args, const Limits& limits);
bool is_global_function(const std::string& name);

// Python iteration: list items, dict keys, string characters (code points); undefined is empty.
Result<List> iterate(const Value& v);
// Code-point view of a UTF-8 string: byte offset of each code point, plus the end.
std::vector<size_t> codepoint_offsets(const std::string& s);

}  // namespace nb::jinja
