// The Jinja evaluator. Scoping follows Jinja2: {% if %} shares its enclosing scope, while each
// iteration of a for loop gets a fresh scope whose {% set %}s vanish at the end of the iteration
// (templates use namespace() to carry values out of loops).
#include <algorithm>

#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_builtins.h"

namespace nb::jinja {
namespace {

using Kind = Node::Kind;

// How deeply `v` nests lists/dicts, counting no further than `limit` + 1 (so a value that contains
// itself through a namespace still terminates).
int nesting_depth(const Value& v, int limit) {
  if (limit < 0) return 1;
  int deepest = 0;
  if (v.kind == Value::Kind::kList) {
    for (const Value& x : *v.list) deepest = std::max(deepest, nesting_depth(x, limit - 1));
  } else if (v.is_mapping()) {
    for (const auto& kv : *v.dict) deepest = std::max(deepest, nesting_depth(kv.second, limit - 1));
  } else {
    return 0;
  }
  return 1 + deepest;
}

class Renderer {
 public:
  Renderer(const std::string& src, const Limits& limits, const Dict& globals) : src_(src), limits_(limits) {
    scopes_.push_back(globals);
    scopes_.emplace_back();  // the template's own top-level scope
  }

  Status exec(const Node& n, std::string& out) {
    switch (n.kind) {
      case Kind::kBody:
        for (const NodePtr& k : n.kids) {
          NB_RETURN_IF_ERROR(exec(*k, out));
          if (flow_ != Flow::kNormal) break;
        }
        return Status::Ok();
      case Kind::kText: return append(out, n.str, n.pos);
      case Kind::kOutput: {
        NB_ASSIGN_OR_RETURN(Value v, eval(*n.kids[0]));
        return append(out, to_str(v), n.pos);
      }
      case Kind::kIf:
        for (size_t i = 0; i + 1 < n.kids.size(); i += 2) {
          bool take = true;
          if (n.kids[i]) {
            NB_ASSIGN_OR_RETURN(Value c, eval(*n.kids[i]));
            take = c.truthy();
          }
          if (take) return exec(*n.kids[i + 1], out);
        }
        return Status::Ok();
      case Kind::kFor: return exec_for(n, out);
      case Kind::kSet: {
        NB_ASSIGN_OR_RETURN(Value v, eval(*n.kids[0]));
        return assign(n, std::move(v));
      }
      case Kind::kSetBlock: {
        std::string captured;
        NB_RETURN_IF_ERROR(exec(*n.kids[0], captured));
        return assign(n, Value::string(std::move(captured)));
      }
      case Kind::kMacro:
        macros_.emplace_back(n.str, &n);
        return Status::Ok();
      case Kind::kBreak: flow_ = Flow::kBreak; return Status::Ok();
      case Kind::kContinue: flow_ = Flow::kContinue; return Status::Ok();
      default: return error(n.pos, "internal: expression node in statement position");
    }
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Status error(size_t pos, const std::string& msg) const { return invalid_argument(position_prefix(src_, pos) + msg); }
  // Re-raises a builtin's error with this node's position, keeping its code.
  Status at(size_t pos, const Status& s) const { return Status(s.code(), position_prefix(src_, pos) + s.message()); }

  // Values nest at most max_depth levels, so printing, comparing and freeing them cannot exhaust
  // the stack, and a namespace cannot be stored inside itself.
  Status deep_value(size_t pos) const {
    return Status(StatusCode::kResourceExhausted, position_prefix(src_, pos) + "a value nested deeper than " +
                                                      std::to_string(limits_.max_depth) + " levels (or containing itself)");
  }
  Result<Value> checked(Value v, size_t pos) const {
    if (nesting_depth(v, limits_.max_depth) > limits_.max_depth) return deep_value(pos);
    return v;
  }

  Status append(std::string& out, const std::string& s, size_t pos) {
    if (out.size() + s.size() > limits_.max_output_bytes)
      return Status(StatusCode::kResourceExhausted, position_prefix(src_, pos) + "output is over the limit of " +
                                                        std::to_string(limits_.max_output_bytes) + " bytes");
    out += s;
    return Status::Ok();
  }

  Status assign(const Node& n, Value v) {
    if (!n.names.empty()) {  // {% set a, b = ... %}
      auto parts = iterate(v);
      if (!parts.ok()) return at(n.pos, parts.status());
      if (parts->size() != n.names.size())
        return error(n.pos, "cannot unpack " + std::to_string(parts->size()) + " values into " +
                                std::to_string(n.names.size()) + " names");
      for (size_t i = 0; i < parts->size(); ++i) scopes_.back()[n.names[i]] = (*parts)[i];
      return Status::Ok();
    }
    if (n.attr.empty()) {
      scopes_.back()[n.str] = std::move(v);
      return Status::Ok();
    }
    const Value* ns = lookup(n.str);
    if (ns == nullptr || ns->kind != Value::Kind::kNamespace)
      return error(n.pos, "cannot assign attribute '" + n.attr + "' on '" + n.str + "': only namespace() objects allow it");
    Value handle = *ns;  // shares the dict
    handle.set(n.attr, std::move(v));
    if (nesting_depth(handle, limits_.max_depth) > limits_.max_depth) {
      handle.set(n.attr, Value::none());  // break the cycle / depth before reporting
      return deep_value(n.pos);
    }
    return Status::Ok();
  }

  const Value* lookup(const std::string& name) const {
    for (size_t i = scopes_.size(); i-- > 0;) {
      for (const auto& [k, v] : scopes_[i])
        if (k == name) return &v;
    }
    return nullptr;
  }

  Status exec_for(const Node& n, std::string& out) {
    NB_ASSIGN_OR_RETURN(Value iterable, eval(*n.kids[0]));
    auto items = iterate(iterable);
    if (!items.ok()) return at(n.kids[0]->pos, items.status());
    auto bind = [&](Scope& scope, const Value& item) -> Status {
      if (n.names.size() == 1) {
        scope[n.names[0]] = item;
        return Status::Ok();
      }
      NB_ASSIGN_OR_RETURN(List parts, iterate(item));
      if (parts.size() != n.names.size())
        return error(n.pos, "cannot unpack " + std::to_string(parts.size()) + " values into " +
                                std::to_string(n.names.size()) + " loop variables");
      for (size_t i = 0; i < parts.size(); ++i) scope[n.names[i]] = parts[i];
      return Status::Ok();
    };
    List kept;
    if (n.kids[1]) {  // `for x in xs if cond`: filter first, so loop.length counts kept items
      for (const Value& item : *items) {
        scopes_.emplace_back();
        Status s = bind(scopes_.back(), item);
        Result<Value> c = s.ok() ? eval(*n.kids[1]) : Result<Value>(s);
        scopes_.pop_back();
        if (!c.ok()) return c.status();
        if (c->truthy()) kept.push_back(item);
      }
    } else {
      kept = std::move(*items);
    }
    const int64_t len = static_cast<int64_t>(kept.size());
    for (int64_t i = 0; i < len; ++i) {
      if (++iterations_ > limits_.max_loop_iterations)
        return Status(StatusCode::kResourceExhausted, position_prefix(src_, n.pos) + "loops ran more than " +
                                                          std::to_string(limits_.max_loop_iterations) + " iterations");
      Value loop = Value::make_dict({
          {"index", Value::integer(i + 1)},
          {"index0", Value::integer(i)},
          {"revindex", Value::integer(len - i)},
          {"revindex0", Value::integer(len - i - 1)},
          {"first", Value::boolean(i == 0)},
          {"last", Value::boolean(i == len - 1)},
          {"length", Value::integer(len)},
          {"depth", Value::integer(1)},
          {"depth0", Value::integer(0)},
          {"previtem", i > 0 ? kept[i - 1] : Value::undefined("loop.previtem")},
          {"nextitem", i + 1 < len ? kept[i + 1] : Value::undefined("loop.nextitem")},
      });
      scopes_.emplace_back();
      scopes_.back()["loop"] = loop;
      Status s = bind(scopes_.back(), kept[i]);
      if (s.ok()) s = exec(*n.kids[2], out);
      scopes_.pop_back();
      NB_RETURN_IF_ERROR(s);
      const Flow f = flow_;
      flow_ = Flow::kNormal;
      if (f == Flow::kBreak) break;
    }
    if (len == 0 && n.kids[3]) return exec(*n.kids[3], out);
    return Status::Ok();
  }

  Result<Args> eval_args(const Node& n, size_t first) {
    Args args;
    const size_t num_kw = n.names.size();
    for (size_t i = first; i < n.kids.size(); ++i) {
      NB_ASSIGN_OR_RETURN(Value v, eval(*n.kids[i]));
      if (i + num_kw >= n.kids.size()) args.keyword.push_back(std::move(v));
      else args.positional.push_back(std::move(v));
    }
    args.names = n.names;
    return args;
  }

  Result<Value> eval_call(const Node& n) {
    const Node& callee = *n.kids[0];
    NB_ASSIGN_OR_RETURN(Args args, eval_args(n, 1));
    Result<Value> r = Value();
    if (callee.kind == Kind::kName) {
      for (size_t i = macros_.size(); i-- > 0;)
        if (macros_[i].first == callee.str && lookup(callee.str) == nullptr) return call_macro(*macros_[i].second, args, n.pos);
      if (lookup(callee.str) != nullptr || !is_global_function(callee.str))
        return error(n.pos, "'" + callee.str + "' is not callable (or not a supported function)");
      r = call_global(callee.str, args, limits_);
      if (r.ok()) r = checked(std::move(r).value(), n.pos);
    } else if (callee.kind == Kind::kGetAttr) {
      NB_ASSIGN_OR_RETURN(Value obj, eval(*callee.kids[0]));
      r = call_method(obj, callee.str, args);
    } else {
      return error(n.pos, "this expression is not callable");
    }
    if (!r.ok()) return at(n.pos, r.status());
    return r;
  }

  // A macro sees the template's globals and top-level variables plus its parameters (not the
  // caller's loop variables), and returns its rendering as a string.
  Result<Value> call_macro(const Node& m, const Args& args, size_t pos) {
    if (++macro_depth_ > limits_.max_depth)
      return Status(StatusCode::kResourceExhausted, position_prefix(src_, pos) + "macro calls nested deeper than " +
                                                        std::to_string(limits_.max_depth));
    if (args.positional.size() > m.names.size())
      return error(pos, "macro '" + m.str + "' takes " + std::to_string(m.names.size()) + " arguments");
    Scope params;
    for (size_t i = 0; i < m.names.size(); ++i) {
      Value v = args.get(i, m.names[i].c_str());
      if (v.is_undefined() && m.kids[i + 1]) {
        NB_ASSIGN_OR_RETURN(v, eval(*m.kids[i + 1]));
      }
      params[m.names[i]] = std::move(v);
    }
    for (const std::string& k : args.names) {
      if (std::find(m.names.begin(), m.names.end(), k) == m.names.end())
        return error(pos, "macro '" + m.str + "' has no parameter '" + k + "'");
    }
    std::vector<Scope> saved(scopes_.begin() + 2, scopes_.end());
    scopes_.resize(2);
    scopes_.push_back(std::move(params));
    std::string out;
    const Status s = exec(*m.kids[0], out);
    flow_ = Flow::kNormal;
    scopes_.resize(2);
    scopes_.insert(scopes_.end(), saved.begin(), saved.end());
    --macro_depth_;
    NB_RETURN_IF_ERROR(s);
    return Value::string(std::move(out));
  }

  Result<Value> subscript(const Value& obj, const Value& key, size_t pos) {
    if (obj.is_undefined()) return error(pos, "'" + (obj.s.empty() ? std::string("value") : obj.s) + "' is undefined");
    if (obj.is_mapping()) {
      const Value* v = key.is_string() ? obj.find(key.s) : nullptr;
      return v ? *v : Value::undefined(key.is_string() ? key.s : to_str(key));
    }
    if (key.kind != Value::Kind::kInt) return Value::undefined(to_str(key));
    if (obj.kind == Value::Kind::kList || obj.is_string()) {
      std::vector<size_t> off;
      if (obj.is_string()) off = codepoint_offsets(obj.s);
      const int64_t size = obj.is_string() ? static_cast<int64_t>(off.size() - 1) : static_cast<int64_t>(obj.list->size());
      const int64_t i = key.i < 0 ? key.i + size : key.i;
      if (i < 0 || i >= size) return Value::undefined("index " + std::to_string(key.i));
      if (obj.is_string()) return Value::string(obj.s.substr(off[i], off[i + 1] - off[i]));
      return (*obj.list)[static_cast<size_t>(i)];
    }
    return Value::undefined(to_str(key));
  }

  Result<Value> slice(const Node& n) {
    NB_ASSIGN_OR_RETURN(Value obj, eval(*n.kids[0]));
    int64_t bound[3] = {0, 0, 1};
    bool given[3] = {false, false, false};
    for (int k = 0; k < 3; ++k) {
      if (!n.kids[k + 1]) continue;
      NB_ASSIGN_OR_RETURN(Value v, eval(*n.kids[k + 1]));
      if (v.is_none()) continue;
      if (v.kind != Value::Kind::kInt) return error(n.kids[k + 1]->pos, "slice indices must be integers or none");
      bound[k] = v.i;
      given[k] = true;
    }
    const int64_t step = bound[2];
    if (step == 0) return error(n.pos, "slice step cannot be zero");
    if (obj.kind != Value::Kind::kList && !obj.is_string())
      return error(n.pos, std::string("cannot slice a '") + type_name(obj) + "'");
    std::vector<size_t> off;
    if (obj.is_string()) off = codepoint_offsets(obj.s);
    const int64_t size = obj.is_string() ? static_cast<int64_t>(off.size() - 1) : static_cast<int64_t>(obj.list->size());
    auto clamp = [&](int64_t v, bool is_given, int64_t dflt) {  // Python's PySlice_AdjustIndices
      if (!is_given) return dflt;
      if (v < 0) v += size;
      if (step > 0) return std::clamp<int64_t>(v, 0, size);
      return std::clamp<int64_t>(v, -1, size - 1);
    };
    const int64_t start = clamp(bound[0], given[0], step > 0 ? 0 : size - 1);
    const int64_t stop = clamp(bound[1], given[1], step > 0 ? size : -1);
    List items;
    std::string text;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (obj.is_string()) text += obj.s.substr(off[i], off[i + 1] - off[i]);
      else items.push_back((*obj.list)[static_cast<size_t>(i)]);
    }
    if (obj.is_string()) return Value::string(std::move(text));
    return obj.tuple ? Value::make_tuple(std::move(items)) : Value::make_list(std::move(items));
  }

  Result<Value> eval(const Node& n) {
    switch (n.kind) {
      case Kind::kLiteral: return n.value;
      case Kind::kName: {
        const Value* v = lookup(n.str);
        return v ? *v : Value::undefined(n.str);
      }
      case Kind::kGetAttr: {
        NB_ASSIGN_OR_RETURN(Value obj, eval(*n.kids[0]));
        if (!n.str.empty() && n.str[0] >= '0' && n.str[0] <= '9')
          return subscript(obj, Value::integer(std::atoll(n.str.c_str())), n.pos);
        if (obj.is_undefined()) return error(n.pos, "'" + (obj.s.empty() ? std::string("value") : obj.s) + "' is undefined");
        const Value* v = obj.find(n.str);
        return v ? *v : Value::undefined(n.str);
      }
      case Kind::kGetItem: {
        NB_ASSIGN_OR_RETURN(Value obj, eval(*n.kids[0]));
        NB_ASSIGN_OR_RETURN(Value key, eval(*n.kids[1]));
        return subscript(obj, key, n.pos);
      }
      case Kind::kSlice: return slice(n);
      case Kind::kCall: return eval_call(n);
      case Kind::kFilter: {
        NB_ASSIGN_OR_RETURN(Value subject, eval(*n.kids[0]));
        NB_ASSIGN_OR_RETURN(Args args, eval_args(n, 1));
        Result<Value> r = apply_filter(n.str, subject, args, limits_);
        if (!r.ok()) return at(n.pos, r.status());
        return r;
      }
      case Kind::kTest: {
        NB_ASSIGN_OR_RETURN(Value subject, eval(*n.kids[0]));
        NB_ASSIGN_OR_RETURN(Args args, eval_args(n, 1));
        Result<bool> r = apply_test(n.str, subject, args);
        if (!r.ok()) return at(n.pos, r.status());
        return Value::boolean(*r != n.negated);
      }
      case Kind::kNeg:
      case Kind::kPos: {
        NB_ASSIGN_OR_RETURN(Value v, eval(*n.kids[0]));
        if (!v.is_number()) return error(n.pos, std::string("bad operand type for unary -/+: '") + type_name(v) + "'");
        if (n.kind == Kind::kPos) return v.kind == Value::Kind::kBool ? Value::integer(v.b) : v;
        if (v.kind == Value::Kind::kFloat) return Value::number(-v.f);
        const int64_t x = v.kind == Value::Kind::kBool ? v.b : v.i;
        if (x == INT64_MIN) return error(n.pos, "integer overflow in unary -");
        return Value::integer(-x);
      }
      case Kind::kNot: {
        NB_ASSIGN_OR_RETURN(Value v, eval(*n.kids[0]));
        return Value::boolean(!v.truthy());
      }
      case Kind::kAnd:
      case Kind::kOr: {  // Python returns an operand, not a bool
        NB_ASSIGN_OR_RETURN(Value a, eval(*n.kids[0]));
        if (a.truthy() == (n.kind == Kind::kOr)) return a;
        return eval(*n.kids[1]);
      }
      case Kind::kBinary: {
        NB_ASSIGN_OR_RETURN(Value a, eval(*n.kids[0]));
        NB_ASSIGN_OR_RETURN(Value b, eval(*n.kids[1]));
        Result<Value> r = binary_op(n.attr, a, b, limits_);
        if (!r.ok()) return at(n.pos, r.status());
        return r;
      }
      case Kind::kCompare: {
        NB_ASSIGN_OR_RETURN(Value left, eval(*n.kids[0]));
        for (size_t i = 0; i < n.names.size(); ++i) {
          NB_ASSIGN_OR_RETURN(Value right, eval(*n.kids[i + 1]));
          Result<bool> r = compare_op(n.names[i], left, right);
          if (!r.ok()) return at(n.pos, r.status());
          if (!*r) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case Kind::kCond: {
        NB_ASSIGN_OR_RETURN(Value c, eval(*n.kids[1]));
        if (c.truthy()) return eval(*n.kids[0]);
        if (n.kids[2]) return eval(*n.kids[2]);
        return Value::undefined();
      }
      case Kind::kList: {
        List items;
        for (const NodePtr& k : n.kids) {
          NB_ASSIGN_OR_RETURN(Value v, eval(*k));
          items.push_back(std::move(v));
        }
        return checked(n.negated ? Value::make_tuple(std::move(items)) : Value::make_list(std::move(items)), n.pos);
      }
      case Kind::kDict: {
        Value d = Value::make_dict();
        for (size_t i = 0; i + 1 < n.kids.size(); i += 2) {
          NB_ASSIGN_OR_RETURN(Value k, eval(*n.kids[i]));
          NB_ASSIGN_OR_RETURN(Value v, eval(*n.kids[i + 1]));
          if (!k.is_string()) return error(n.kids[i]->pos, "dict keys must be strings in nibble's Jinja subset");
          d.set(k.s, std::move(v));
        }
        return checked(std::move(d), n.pos);
      }
      default: return error(n.pos, "internal: statement node in expression position");
    }
  }

  const std::string& src_;
  const Limits& limits_;
  // Scopes are small (a handful of names), so a flat map keyed by name would not pay off; a
  // vector of pairs keeps insertion order and makes `scope[name] = v` an upsert.
  struct Scope : std::vector<std::pair<std::string, Value>> {
    Value& operator[](const std::string& k) {
      for (auto& kv : *this)
        if (kv.first == k) return kv.second;
      emplace_back(k, Value());
      return back().second;
    }
    Scope() = default;
    Scope(const Dict& d) : std::vector<std::pair<std::string, Value>>(d) {}  // NOLINT: implicit
  };
  std::vector<Scope> scopes_;
  std::vector<std::pair<std::string, const Node*>> macros_;  // defined so far; later ones win
  int macro_depth_ = 0;
  Flow flow_ = Flow::kNormal;
  int64_t iterations_ = 0;
};

}  // namespace

Result<Template> Template::parse(std::string source, Options options, Limits limits) {
  // Jinja2 normalises \r\n and \r to \n, and drops one trailing newline unless asked not to.
  std::string norm;
  norm.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      norm += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      norm += source[i];
    }
  }
  if (!options.keep_trailing_newline && !norm.empty() && norm.back() == '\n') norm.pop_back();
  Template t;
  t.source_ = std::make_shared<const std::string>(std::move(norm));
  t.limits_ = limits;
  NB_ASSIGN_OR_RETURN(t.root_, parse_template(*t.source_, options, limits));
  return t;
}

Result<std::string> Template::render(const Dict& globals) const {
  Renderer r(*source_, limits_, globals);
  std::string out;
  NB_RETURN_IF_ERROR(r.exec(*root_, out));
  return out;
}

}  // namespace nb::jinja
