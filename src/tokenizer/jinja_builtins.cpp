// Operators with Python semantics, and the filters/tests/methods/globals chat templates use.
// Case mapping (upper/lower/title/capitalize) is ASCII-only; other characters pass through.
#include "tokenizer/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>

namespace nb::jinja {
namespace {

using K = Value::Kind;

Status type_error(const std::string& what, const Value& a, const Value& b) {
  return invalid_argument(what + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}
Status undefined_error(const Value& v) {
  return invalid_argument("'" + (v.s.empty() ? std::string("value") : v.s) + "' is undefined");
}

double as_double(const Value& v) { return v.kind == K::kFloat ? v.f : v.kind == K::kBool ? v.b : static_cast<double>(v.i); }
int64_t as_int(const Value& v) { return v.kind == K::kBool ? v.b : v.i; }
bool is_intlike(const Value& v) { return v.kind == K::kInt || v.kind == K::kBool; }

std::string ascii_upper(std::string s) {
  for (char& c : s) if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  return s;
}
std::string ascii_lower(std::string s) {
  for (char& c : s) if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return s;
}
bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  auto drop = [&](char c) { return chars.is_string() ? chars.s.find(c) != std::string::npos : is_ascii_space(c); };
  size_t b = 0, e = s.size();
  if (left) while (b < e && drop(s[b])) ++b;
  if (right) while (e > b && drop(s[e - 1])) --e;
  return s.substr(b, e - b);
}

std::string capitalize(const std::string& s) {
  if (s.empty()) return s;
  return ascii_upper(s.substr(0, 1)) + ascii_lower(s.substr(1));
}

Result<std::string> need_string(const Value& v, const char* what) {
  if (v.is_string()) return v.s;
  if (v.is_undefined()) return std::string();  // str(Undefined) == ''
  return invalid_argument(std::string(what) + " expects a string, got '" + type_name(v) + "'");
}

// Attribute lookup used by selectattr/map/join(attribute=...): "a.b" walks nested dicts.
Value get_attribute(const Value& v, const std::string& path) {
  Value cur = v;
  size_t b = 0;
  while (b <= path.size()) {
    const size_t e = std::min(path.find('.', b), path.size());
    const Value* next = cur.find(path.substr(b, e - b));
    if (next == nullptr) return Value::undefined(path);
    cur = *next;
    b = e + 1;
  }
  return cur;
}

Result<Value> select_like(const std::string& name, const Value& subject, const Args& args) {
  NB_ASSIGN_OR_RETURN(List items, iterate(subject));
  const bool by_attr = name == "selectattr" || name == "rejectattr";
  const bool keep_if = name == "select" || name == "selectattr";
  List out;
  size_t first_test_arg = by_attr ? 1 : 0;
  const Value test = args.get(first_test_arg, "");
  Args test_args;
  for (size_t i = first_test_arg + 1; i < args.positional.size(); ++i) test_args.positional.push_back(args.positional[i]);
  for (const Value& item : items) {
    const Value subj = by_attr ? get_attribute(item, args.get(0, "").s) : item;
    bool ok = subj.truthy();
    if (test.is_string()) {
      NB_ASSIGN_OR_RETURN(ok, apply_test(test.s, subj, test_args));
    }
    if (ok == keep_if) out.push_back(item);
  }
  return Value::make_list(std::move(out));
}

}  // namespace

Value Args::get(size_t i, const char* name, Value fallback) const {
  if (i < positional.size()) return positional[i];
  for (size_t k = 0; k < names.size(); ++k)
    if (names[k] == name) return keyword[k];
  return fallback;
}

const char* type_name(const Value& v) {
  switch (v.kind) {
    case K::kUndefined: return "Undefined";
    case K::kNone: return "NoneType";
    case K::kBool: return "bool";
    case K::kInt: return "int";
    case K::kFloat: return "float";
    case K::kString: return "str";
    case K::kList: return "list";
    case K::kDict: return "dict";
    case K::kNamespace: return "Namespace";
  }
  return "object";
}

std::vector<size_t> codepoint_offsets(const std::string& s) {
  std::vector<size_t> off;
  for (size_t i = 0; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) off.push_back(i);
  off.push_back(s.size());
  return off;
}

Result<List> iterate(const Value& v) {
  switch (v.kind) {
    case K::kUndefined: return List{};
    case K::kList: return *v.list;
    case K::kDict: {
      List keys;
      for (const auto& kv : *v.dict) keys.push_back(Value::string(kv.first));
      return keys;
    }
    case K::kString: {
      const auto off = codepoint_offsets(v.s);
      List chars;
      for (size_t i = 0; i + 1 < off.size(); ++i) chars.push_back(Value::string(v.s.substr(off[i], off[i + 1] - off[i])));
      return chars;
    }
    default: return invalid_argument(std::string("'") + type_name(v) + "' object is not iterable");
  }
}

Result<Value> binary_op(const std::string& op, const Value& a, const Value& b, const Limits& limits) {
  const auto too_long = [&](size_t n) {
    return n > limits.max_output_bytes ? resource_exhausted("a string of " + std::to_string(n) +
                                                            " bytes is over the template output limit")
                                       : Status::Ok();
  };
  if (op == "~") {
    std::string out = to_str(a) + to_str(b);
    NB_RETURN_IF_ERROR(too_long(out.size()));
    return Value::string(std::move(out));
  }
  if (a.is_undefined()) return undefined_error(a);
  if (b.is_undefined()) return undefined_error(b);
  const bool nums = a.is_number() && b.is_number();
  const bool ints = is_intlike(a) && is_intlike(b);
  if (op == "+") {
    if (ints) {
      int64_t r;
      if (__builtin_add_overflow(as_int(a), as_int(b), &r)) return invalid_argument("integer overflow in +");
      return Value::integer(r);
    }
    if (nums) return Value::number(as_double(a) + as_double(b));
    if (a.is_string() && b.is_string()) {
      NB_RETURN_IF_ERROR(too_long(a.s.size() + b.s.size()));
      return Value::string(a.s + b.s);
    }
    if (a.kind == K::kList && b.kind == K::kList) {
      if (a.list->size() + b.list->size() > static_cast<size_t>(limits.max_range))
        return resource_exhausted("a list of " + std::to_string(a.list->size() + b.list->size()) +
                                  " items is over the template limit");
      List out = *a.list;
      out.insert(out.end(), b.list->begin(), b.list->end());
      return Value::make_list(std::move(out));
    }
    return type_error("unsupported operand types for +", a, b);
  }
  if (op == "*") {
    if (ints) {
      int64_t r;
      if (__builtin_mul_overflow(as_int(a), as_int(b), &r)) return invalid_argument("integer overflow in *");
      return Value::integer(r);
    }
    if (nums) return Value::number(as_double(a) * as_double(b));
    const Value* seq = a.is_string() || a.kind == K::kList ? &a : &b;
    const Value* count = seq == &a ? &b : &a;
    if ((seq->is_string() || seq->kind == K::kList) && is_intlike(*count)) {
      const int64_t n = std::max<int64_t>(0, as_int(*count));
      const size_t unit = seq->is_string() ? seq->s.size() : seq->list->size();
      if (n > limits.max_range || static_cast<double>(unit) * static_cast<double>(n) > static_cast<double>(limits.max_output_bytes))
        return resource_exhausted("repetition of " + std::to_string(n) + " is over the template limits");
      if (seq->is_string()) {
        std::string out;
        for (int64_t i = 0; i < n; ++i) out += seq->s;
        return Value::string(std::move(out));
      }
      List out;
      for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq->list->begin(), seq->list->end());
      return Value::make_list(std::move(out));
    }
    return type_error("unsupported operand types for *", a, b);
  }
  if (!nums) {
    if (op == "%" && a.is_string()) return unimplemented("printf-style '%' string formatting is not supported by nibble's Jinja subset");
    return type_error("unsupported operand types for " + op, a, b);
  }
  if (op == "-") {
    if (ints) {
      int64_t r;
      if (__builtin_sub_overflow(as_int(a), as_int(b), &r)) return invalid_argument("integer overflow in -");
      return Value::integer(r);
    }
    return Value::number(as_double(a) - as_double(b));
  }
  if (op == "/") {
    if (as_double(b) == 0.0) return invalid_argument("division by zero");
    return Value::number(as_double(a) / as_double(b));
  }
  if (op == "//" || op == "%") {
    if (as_double(b) == 0.0) return invalid_argument("integer division or modulo by zero");
    if (ints) {
      const int64_t x = as_int(a), y = as_int(b);
      if (x == INT64_MIN && y == -1) return invalid_argument("integer overflow in " + op);
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;  // Python floors
      return Value::integer(op == "//" ? q : r);
    }
    const double x = as_double(a), y = as_double(b);
    if (op == "//") return Value::number(std::floor(x / y));
    double r = std::fmod(x, y);
    if (r != 0 && ((r < 0) != (y < 0))) r += y;
    return Value::number(r);
  }
  if (op == "**") {
    if (ints && as_int(b) >= 0) {
      // Square-and-multiply: O(log e) even for 1 ** 10**18.
      int64_t r = 1, base = as_int(a);
      for (int64_t e = as_int(b); e > 0; e >>= 1) {
        if ((e & 1) && __builtin_mul_overflow(r, base, &r)) return invalid_argument("integer overflow in **");
        if (e > 1 && __builtin_mul_overflow(base, base, &base)) return invalid_argument("integer overflow in **");
      }
      return Value::integer(r);
    }
    return Value::number(std::pow(as_double(a), as_double(b)));
  }
  return invalid_argument("unknown operator " + op);
}

Result<bool> compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in" || op == "notin") {
    bool found = false;
    if (b.is_string()) {
      if (!a.is_string()) return invalid_argument(std::string("'in <string>' requires string as left operand, not ") + type_name(a));
      found = b.s.find(a.s) != std::string::npos;
    } else if (b.kind == K::kList) {
      for (const Value& x : *b.list) found = found || equals(a, x);
    } else if (b.is_mapping()) {
      found = a.is_string() && b.find(a.s) != nullptr;
    } else if (!b.is_undefined()) {
      return invalid_argument(std::string("argument of type '") + type_name(b) + "' is not iterable");
    }
    return op == "in" ? found : !found;
  }
  int c = 0;  // three-way result
  if (a.is_number() && b.is_number()) {
    const double x = as_double(a), y = as_double(b);
    if (is_intlike(a) && is_intlike(b)) c = as_int(a) < as_int(b) ? -1 : as_int(a) > as_int(b);
    else c = x < y ? -1 : x > y ? 1 : 0;
  } else if (a.is_string() && b.is_string()) {
    c = a.s.compare(b.s) < 0 ? -1 : a.s.compare(b.s) > 0;
  } else if (a.kind == K::kList && b.kind == K::kList) {
    size_t i = 0;
    while (i < a.list->size() && i < b.list->size() && equals((*a.list)[i], (*b.list)[i])) ++i;
    if (i < a.list->size() && i < b.list->size()) {
      NB_ASSIGN_OR_RETURN(bool lt, compare_op("<", (*a.list)[i], (*b.list)[i]));
      c = lt ? -1 : 1;
    } else {
      c = a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size();
    }
  } else {
    return type_error("'" + op + "' not supported between instances", a, b);
  }
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  if (op == ">=") return c >= 0;
  return invalid_argument("unknown comparison " + op);
}

Result<Value> apply_filter(const std::string& name, const Value& v, const Args& args, const Limits& limits) {
  if (name == "default" || name == "d") {
    const bool boolean = args.get(1, "boolean", Value::boolean(false)).truthy();
    const bool use_default = v.is_undefined() || (boolean && !v.truthy());
    return use_default ? args.get(0, "default_value", Value::string("")) : v;
  }
  if (name == "safe") return v;
  if (name == "string") return Value::string(to_str(v));
  if (name == "tojson") {
    const Value indent = args.get(0, "indent", Value::none());
    NB_ASSIGN_OR_RETURN(std::string json, to_json(v, is_intlike(indent) ? static_cast<int>(as_int(indent)) : -1));
    return Value::string(std::move(json));
  }
  if (name == "length" || name == "count") {
    if (v.is_string()) return Value::integer(static_cast<int64_t>(codepoint_offsets(v.s).size() - 1));
    if (v.kind == K::kList) return Value::integer(static_cast<int64_t>(v.list->size()));
    if (v.is_mapping()) return Value::integer(static_cast<int64_t>(v.dict->size()));
    if (v.is_undefined()) return Value::integer(0);
    return invalid_argument(std::string("object of type '") + type_name(v) + "' has no len()");
  }
  if (name == "first" || name == "last") {
    NB_ASSIGN_OR_RETURN(List items, iterate(v));
    if (items.empty()) return Value::undefined("first/last of an empty sequence");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    NB_ASSIGN_OR_RETURN(List items, iterate(v));
    return Value::make_list(std::move(items));
  }
  if (name == "reverse") {
    if (v.is_string()) {
      const auto off = codepoint_offsets(v.s);
      std::string out;
      for (size_t i = off.size() - 1; i > 0; --i) out += v.s.substr(off[i - 1], off[i] - off[i - 1]);
      return Value::string(std::move(out));
    }
    NB_ASSIGN_OR_RETURN(List items, iterate(v));
    std::reverse(items.begin(), items.end());
    return Value::make_list(std::move(items));
  }
  if (name == "items") {
    if (!v.is_mapping()) return v.is_undefined() ? Value::make_list() : Result<Value>(invalid_argument("items expects a dict"));
    List out;
    for (const auto& [k, x] : *v.dict) out.push_back(Value::make_tuple({Value::string(k), x}));
    return Value::make_list(std::move(out));
  }
  if (name == "join") {
    NB_ASSIGN_OR_RETURN(List items, iterate(v));
    const Value sep = args.get(0, "d", Value::string(""));
    const Value attr = args.get(1, "attribute", Value::none());
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += to_str(sep);
      out += to_str(attr.is_string() ? get_attribute(items[i], attr.s) : items[i]);
    }
    return Value::string(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") return select_like(name, v, args);
  if (name == "map") {
    NB_ASSIGN_OR_RETURN(List items, iterate(v));
    const Value attr = args.get(99, "attribute", Value::none());
    List out;
    for (const Value& item : items) {
      if (attr.is_string()) {
        out.push_back(get_attribute(item, attr.s));
      } else if (!args.positional.empty() && args.positional[0].is_string()) {
        Args rest;
        rest.positional.assign(args.positional.begin() + 1, args.positional.end());
        NB_ASSIGN_OR_RETURN(Value r, apply_filter(args.positional[0].s, item, rest, limits));
        out.push_back(std::move(r));
      } else {
        return invalid_argument("map needs a filter name or attribute=");
      }
    }
    return Value::make_list(std::move(out));
  }
  if (name == "abs") {
    if (v.kind == K::kFloat) return Value::number(std::fabs(v.f));
    if (is_intlike(v)) return Value::integer(as_int(v) < 0 ? -as_int(v) : as_int(v));
    return invalid_argument(std::string("bad operand type for abs(): '") + type_name(v) + "'");
  }
  if (name == "int") {
    if (is_intlike(v)) return Value::integer(as_int(v));
    if (v.kind == K::kFloat && std::isfinite(v.f) && std::fabs(v.f) < 9.2e18) return Value::integer(static_cast<int64_t>(v.f));
    if (v.is_string()) {
      char* end = nullptr;
      const std::string t = strip(v.s, Value(), true, true);
      const long long x = std::strtoll(t.c_str(), &end, 10);
      if (!t.empty() && end == t.c_str() + t.size()) return Value::integer(x);
    }
    return args.get(0, "default", Value::integer(0));
  }
  if (name == "float") {
    if (v.is_number()) return Value::number(as_double(v));
    if (v.is_string()) {
      char* end = nullptr;
      const std::string t = strip(v.s, Value(), true, true);
      const double x = std::strtod(t.c_str(), &end);
      if (!t.empty() && end == t.c_str() + t.size()) return Value::number(x);
    }
    return args.get(0, "default", Value::number(0.0));
  }
  // String filters; str() of the subject, as Jinja's soft_str does.
  const std::string s = v.is_string() ? v.s : to_str(v);
  if (name == "trim") return Value::string(strip(s, args.get(0, "chars", Value::none()), true, true));
  if (name == "upper") return Value::string(ascii_upper(s));
  if (name == "lower") return Value::string(ascii_lower(s));
  if (name == "capitalize") return Value::string(capitalize(s));
  if (name == "title") {  // Jinja's: capitalize each run after [-\s(\{\[<]+
    std::string out;
    bool start = true;
    for (char c : s) {
      const bool sep = is_ascii_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
      out += sep ? c : start ? ascii_upper(std::string(1, c))[0] : ascii_lower(std::string(1, c))[0];
      start = sep;
    }
    return Value::string(std::move(out));
  }
  if (name == "replace") {
    NB_ASSIGN_OR_RETURN(std::string from, need_string(args.get(0, "old"), "replace"));
    NB_ASSIGN_OR_RETURN(std::string to, need_string(args.get(1, "new"), "replace"));
    const Value count = args.get(2, "count", Value::none());
    return call_method(Value::string(s), "replace",
                       Args{{Value::string(from), Value::string(to), is_intlike(count) ? count : Value::integer(-1)}, {}, {}});
  }
  return unimplemented("filter '" + name + "' is not supported by nibble's Jinja subset");
}

Result<bool> apply_test(const std::string& name, const Value& v, const Args& args) {
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.kind == K::kInt || v.kind == K::kFloat || v.kind == K::kBool;
  if (name == "integer") return v.kind == K::kInt;
  if (name == "float") return v.kind == K::kFloat;
  if (name == "boolean") return v.kind == K::kBool;
  if (name == "true") return v.kind == K::kBool && v.b;
  if (name == "false") return v.kind == K::kBool && !v.b;
  if (name == "mapping") return v.is_mapping();
  if (name == "iterable") return v.is_string() || v.kind == K::kList || v.is_mapping() || v.is_undefined();
  if (name == "sequence") return v.is_string() || v.kind == K::kList || v.is_mapping();
  if (name == "callable") return false;
  if (name == "lower") return v.is_string() && ascii_lower(v.s) == v.s;
  if (name == "upper") return v.is_string() && ascii_upper(v.s) == v.s;
  if (name == "odd" || name == "even") {
    if (!is_intlike(v)) return invalid_argument(name + " test expects an integer");
    return (as_int(v) % 2 != 0) == (name == "odd");
  }
  if (name == "divisibleby") {
    const Value d = args.get(0, "num");
    if (!is_intlike(v) || !is_intlike(d) || as_int(d) == 0) return invalid_argument("divisibleby expects nonzero integers");
    return as_int(v) % as_int(d) == 0;
  }
  static const std::pair<const char*, const char*> kAliases[] = {
      {"eq", "=="}, {"equalto", "=="}, {"==", "=="}, {"ne", "!="}, {"!=", "!="}, {"lt", "<"}, {"lessthan", "<"},
      {"<", "<"}, {"le", "<="}, {"<=", "<="}, {"gt", ">"}, {"greaterthan", ">"}, {">", ">"}, {"ge", ">="},
      {">=", ">="}, {"in", "in"}};
  for (const auto& [alias, op] : kAliases)
    if (name == alias) return compare_op(op, v, args.get(0, "b"));
  if (name == "sameas") {
    const Value o = args.get(0, "other");
    if (v.kind != o.kind) return false;
    if (v.kind == K::kList) return v.list == o.list;
    if (v.is_mapping()) return v.dict == o.dict;
    return equals(v, o);
  }
  return unimplemented("test '" + name + "' is not supported by nibble's Jinja subset");
}

bool is_global_function(const std::string& name) {
  return name == "range" || name == "namespace" || name == "dict" || name == "raise_exception" || name == "strftime_now";
}

Result<Value> call_global(const std::string& name, const Args& args, const Limits& limits) {
  if (name == "raise_exception") return invalid_argument("template raised an exception: " + to_str(args.get(0, "message")));
  if (name == "namespace" || name == "dict") {
    Value ns = Value::make_dict();
    if (name == "namespace") ns.kind = K::kNamespace;
    if (!args.positional.empty()) {
      if (!args.positional[0].is_mapping()) return invalid_argument(name + "() positional argument must be a dict");
      for (const auto& [k, x] : *args.positional[0].dict) ns.set(k, x);
    }
    for (size_t i = 0; i < args.names.size(); ++i) ns.set(args.names[i], args.keyword[i]);
    return ns;
  }
  if (name == "range") {
    for (const Value& a : args.positional)
      if (!is_intlike(a)) return invalid_argument(std::string("range() expects integers, got '") + type_name(a) + "'");
    const size_t n = args.positional.size();
    if (n < 1 || n > 3) return invalid_argument("range() takes 1 to 3 arguments");
    const int64_t start = n == 1 ? 0 : as_int(args.positional[0]);
    const int64_t stop = n == 1 ? as_int(args.positional[0]) : as_int(args.positional[1]);
    const int64_t step = n == 3 ? as_int(args.positional[2]) : 1;
    if (step == 0) return invalid_argument("range() step must not be zero");
    const double len = std::ceil((static_cast<double>(stop) - static_cast<double>(start)) / static_cast<double>(step));
    if (len > static_cast<double>(limits.max_range))
      return resource_exhausted("range() of " + std::to_string(static_cast<int64_t>(len)) + " items is over the limit of " +
                                std::to_string(limits.max_range));
    List out;
    for (int64_t x = start; step > 0 ? x < stop : x > stop; x += step) out.push_back(Value::integer(x));
    return Value::make_list(std::move(out));
  }
  if (name == "strftime_now") {  // Hugging Face provides this for templates that print today's date
    const std::string fmt = to_str(args.get(0, "format"));
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[256];
    const size_t len = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
    return Value::string(std::string(buf, len));
  }
  return invalid_argument("'" + name + "' is not a function");
}

}  // namespace nb::jinja
