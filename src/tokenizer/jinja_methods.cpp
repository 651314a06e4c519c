// Python methods on str and dict that chat templates call (message.content.strip(), d.items()).
#include <algorithm>

#include "tokenizer/jinja_builtins.h"

namespace nb::jinja {
namespace {

using K = Value::Kind;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string strip_chars(const std::string& s, const Value& chars, bool left, bool right) {
  auto drop = [&](char c) { return chars.is_string() ? chars.s.find(c) != std::string::npos : is_space(c); };
  size_t b = 0, e = s.size();
  if (left) while (b < e && drop(s[b])) ++b;
  if (right) while (e > b && drop(s[e - 1])) --e;
  return s.substr(b, e - b);
}

Result<Value> string_method(const std::string& s, const std::string& name, const Args& args) {
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const Value chars = args.get(0, "chars", Value::none());
    return Value::string(strip_chars(s, chars, name != "rstrip", name != "lstrip"));
  }
  if (name == "upper" || name == "lower" || name == "capitalize" || name == "title") {
    std::string out = s;
    bool start = true;
    for (size_t i = 0; i < out.size(); ++i) {
      char& c = out[i];
      const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      bool up = name == "upper" || (name == "capitalize" && i == 0) || (name == "title" && start);
      if (up && c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
      if (!up && c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
      start = !alpha;  // Python's title(): a letter after a non-letter starts a word
    }
    return Value::string(std::move(out));
  }
  if (name == "startswith" || name == "endswith") {
    const Value arg = args.get(0, "prefix");
    std::vector<std::string> options;
    if (arg.is_string()) options.push_back(arg.s);
    else if (arg.kind == K::kList)
      for (const Value& x : *arg.list) options.push_back(x.s);
    else return invalid_argument(name + " expects a string or a tuple of strings");
    for (const std::string& o : options) {
      const bool hit = o.size() <= s.size() &&
                       (name == "startswith" ? s.compare(0, o.size(), o) == 0 : s.compare(s.size() - o.size(), o.size(), o) == 0);
      if (hit) return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  if (name == "split") {
    const Value sep = args.get(0, "sep", Value::none());
    const Value max = args.get(1, "maxsplit", Value::integer(-1));
    int64_t left = max.kind == K::kInt ? max.i : -1;
    List out;
    if (sep.is_string()) {
      if (sep.s.empty()) return invalid_argument("split: empty separator");
      size_t b = 0;
      while (left != 0) {
        const size_t e = s.find(sep.s, b);
        if (e == std::string::npos) break;
        out.push_back(Value::string(s.substr(b, e - b)));
        b = e + sep.s.size();
        --left;
      }
      out.push_back(Value::string(s.substr(b)));
    } else {  // runs of whitespace, no empty strings
      size_t i = 0;
      while (i < s.size()) {
        while (i < s.size() && is_space(s[i])) ++i;
        if (i >= s.size()) break;
        if (left == 0) {
          out.push_back(Value::string(strip_chars(s.substr(i), Value::none(), false, true)));
          break;
        }
        size_t e = i;
        while (e < s.size() && !is_space(s[e])) ++e;
        out.push_back(Value::string(s.substr(i, e - i)));
        i = e;
        --left;
      }
    }
    return Value::make_list(std::move(out));
  }
  if (name == "replace") {
    const Value from = args.get(0, "old"), to = args.get(1, "new"), count = args.get(2, "count", Value::integer(-1));
    if (!from.is_string() || !to.is_string()) return invalid_argument("replace expects strings");
    int64_t left = count.kind == K::kInt ? count.i : -1;
    std::string out;
    if (from.s.empty()) {  // Python inserts `to` between characters
      const auto off = codepoint_offsets(s);
      for (size_t i = 0; i + 1 < off.size(); ++i) {
        if (left != 0) out += to.s, --left;
        out += s.substr(off[i], off[i + 1] - off[i]);
      }
      if (left != 0) out += to.s;
      return Value::string(std::move(out));
    }
    size_t b = 0;
    while (left != 0) {
      const size_t e = s.find(from.s, b);
      if (e == std::string::npos) break;
      out += s.substr(b, e - b) + to.s;
      b = e + from.s.size();
      --left;
    }
    return Value::string(out + s.substr(b));
  }
  if (name == "find") {
    const Value sub = args.get(0, "sub");
    if (!sub.is_string()) return invalid_argument("find expects a string");
    const size_t at = s.find(sub.s);
    if (at == std::string::npos) return Value::integer(-1);
    return Value::integer(static_cast<int64_t>(codepoint_offsets(s.substr(0, at)).size() - 1));
  }
  if (name == "count") {
    const Value sub = args.get(0, "sub");
    if (!sub.is_string() || sub.s.empty()) return invalid_argument("count expects a non-empty string");
    int64_t n = 0;
    for (size_t at = s.find(sub.s); at != std::string::npos; at = s.find(sub.s, at + sub.s.size())) ++n;
    return Value::integer(n);
  }
  if (name == "join") {
    NB_ASSIGN_OR_RETURN(List items, iterate(args.get(0, "iterable")));
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string()) return invalid_argument("join: sequence item " + std::to_string(i) + " is not a str");
      out += (i ? s : "") + items[i].s;
    }
    return Value::string(std::move(out));
  }
  return unimplemented("string method '" + name + "' is not supported by nibble's Jinja subset");
}

}  // namespace

Result<Value> call_method(const Value& obj, const std::string& name, const Args& args) {
  if (obj.is_string()) return string_method(obj.s, name, args);
  if (obj.kind == K::kDict) {
    if (name == "items" || name == "keys" || name == "values") {
      List out;
      for (const auto& [k, v] : *obj.dict) {
        if (name == "items") out.push_back(Value::make_tuple({Value::string(k), v}));
        else out.push_back(name == "keys" ? Value::string(k) : v);
      }
      return Value::make_list(std::move(out));
    }
    if (name == "get") {
      const Value key = args.get(0, "key");
      const Value* v = key.is_string() ? obj.find(key.s) : nullptr;
      return v ? *v : args.get(1, "default", Value::none());
    }
    return unimplemented("dict method '" + name + "' is not supported by nibble's Jinja subset");
  }
  if (obj.is_undefined())
    return invalid_argument("'" + (obj.s.empty() ? std::string("value") : obj.s) + "' is undefined (calling ." + name + "())");
  return unimplemented(std::string("method '") + name + "' on '" + type_name(obj) + "' is not supported by nibble's Jinja subset");
}

}  // namespace nb::jinja
