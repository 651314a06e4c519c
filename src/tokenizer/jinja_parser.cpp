// Recursive-descent parser following Jinja2's grammar and precedence (jinja2/parser.py):
//   cond:    or ['if' or ['else' cond]]
//   or/and/not, compare (== != < <= > >= in, not in; chained), + -, ~, * / // %, **,
//   unary (- +), then postfix (.attr [key] [a:b:c] (args)) and filters/tests (| name, is name),
//   which bind tighter than every binary operator.
#include <cstdlib>
#include <set>

#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_lexer.h"

namespace nb::jinja {
namespace {

using Kind = Node::Kind;
using TK = Token::Kind;

std::shared_ptr<Node> make(Kind kind, size_t pos) {
  auto n = std::make_shared<Node>();
  n->kind = kind;
  n->pos = pos;
  return n;
}

class Parser {
 public:
  Parser(const std::string& src, std::vector<Token> tokens, const Limits& limits)
      : src_(src), toks_(std::move(tokens)), limits_(limits) {}

  Result<NodePtr> parse() {
    std::string end;
    NB_ASSIGN_OR_RETURN(NodePtr body, parse_body({}, &end));
    return body;
  }

 private:
  const Token& cur() const { return toks_[i_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(i_ + k, toks_.size() - 1)]; }
  bool at_op(const char* op) const { return cur().kind == TK::kOp && cur().text == op; }
  bool at_name(const char* name) const { return cur().kind == TK::kName && cur().text == name; }

  Status error(size_t pos, const std::string& msg) const { return invalid_argument(position_prefix(src_, pos) + msg); }
  Status unsupported(size_t pos, const std::string& what) const {
    return unimplemented(position_prefix(src_, pos) + what +
                         " is not supported by nibble's Jinja subset; use a built-in chat template by name instead");
  }
  std::string describe(const Token& t) const {
    switch (t.kind) {
      case TK::kEof: return "end of template";
      case TK::kVarEnd: return "'}}'";
      case TK::kBlockEnd: return "'%}'";
      case TK::kString: return "a string";
      default: return "'" + t.text + "'";
    }
  }
  Status expect_op(const char* op) {
    if (!at_op(op)) return error(cur().pos, std::string("expected '") + op + "', got " + describe(cur()));
    ++i_;
    return Status::Ok();
  }
  Status expect_block_end() {
    if (cur().kind != TK::kBlockEnd) return error(cur().pos, "expected '%}', got " + describe(cur()));
    ++i_;
    return Status::Ok();
  }
  // Left-deep chains (a + b + c ..., x.y.z ..., f|g|h ...) do not recurse while parsing but make a
  // deep tree that evaluation recurses through; count their links against the depth limit too.
  Status chain(size_t pos, int& links) {
    if (depth_ + ++links > limits_.max_depth)
      return error(pos, "expression chained deeper than " + std::to_string(limits_.max_depth) + " levels");
    return Status::Ok();
  }
  Status enter(size_t pos) {
    if (++depth_ > limits_.max_depth)
      return error(pos, "nesting deeper than " + std::to_string(limits_.max_depth) + " levels");
    return Status::Ok();
  }

  // Statements until a block tag whose keyword is in `ends` (consumed up to its keyword).
  Result<NodePtr> parse_body(const std::set<std::string>& ends, std::string* end_found) {
    NB_RETURN_IF_ERROR(enter(cur().pos));
    auto body = make(Kind::kBody, cur().pos);
    while (true) {
      const Token& t = cur();
      if (t.kind == TK::kEof) {
        if (!ends.empty()) {
          std::string want;
          for (const auto& e : ends) want += (want.empty() ? "" : " or ") + ("{% " + e + " %}");
          return error(t.pos, "template ended before " + want);
        }
        break;
      }
      if (t.kind == TK::kText) {
        auto n = make(Kind::kText, t.pos);
        n->str = t.text;
        body->kids.push_back(n);
        ++i_;
      } else if (t.kind == TK::kVarBegin) {
        ++i_;
        auto n = make(Kind::kOutput, t.pos);
        NB_ASSIGN_OR_RETURN(NodePtr e, parse_expr());
        n->kids.push_back(e);
        if (cur().kind != TK::kVarEnd) return error(cur().pos, "expected '}}', got " + describe(cur()));
        ++i_;
        body->kids.push_back(n);
      } else if (t.kind == TK::kBlockBegin) {
        const Token& kw = peek();
        if (kw.kind != TK::kName) return error(kw.pos, "expected a statement keyword after '{%'");
        if (ends.count(kw.text)) {
          i_ += 2;
          *end_found = kw.text;
          break;
        }
        ++i_;
        NB_ASSIGN_OR_RETURN(NodePtr stmt, parse_statement());
        body->kids.push_back(stmt);
      } else {
        return error(t.pos, "unexpected " + describe(t));
      }
    }
    --depth_;
    return NodePtr(body);
  }

  Result<NodePtr> parse_statement() {
    const Token kw = cur();
    ++i_;
    if (kw.text == "if") return parse_if(kw.pos);
    if (kw.text == "for") return parse_for(kw.pos);
    if (kw.text == "set") return parse_set(kw.pos);
    if (kw.text == "break" || kw.text == "continue") {
      NB_RETURN_IF_ERROR(expect_block_end());
      return NodePtr(make(kw.text == "break" ? Kind::kBreak : Kind::kContinue, kw.pos));
    }
    if (kw.text == "generation") {  // Hugging Face's marker for assistant tokens: renders its body
      NB_RETURN_IF_ERROR(expect_block_end());
      std::string end;
      NB_ASSIGN_OR_RETURN(NodePtr body, parse_body({"endgeneration"}, &end));
      NB_RETURN_IF_ERROR(expect_block_end());
      return body;
    }
    static const std::set<std::string> kKnown = {"macro", "call", "filter", "include", "import", "from", "extends",
                                                  "block", "with", "autoescape", "do", "endmacro"};
    if (kKnown.count(kw.text)) return unsupported(kw.pos, "{% " + kw.text + " %}");
    return error(kw.pos, "unknown or misplaced statement '{% " + kw.text + " %}'");
  }

  Result<NodePtr> parse_if(size_t pos) {
    auto n = make(Kind::kIf, pos);
    while (true) {
      NB_ASSIGN_OR_RETURN(NodePtr cond, parse_expr());
      NB_RETURN_IF_ERROR(expect_block_end());
      std::string end;
      NB_ASSIGN_OR_RETURN(NodePtr body, parse_body({"elif", "else", "endif"}, &end));
      n->kids.push_back(cond);
      n->kids.push_back(body);
      if (end == "elif") continue;
      if (end == "else") {
        NB_RETURN_IF_ERROR(expect_block_end());
        NB_ASSIGN_OR_RETURN(NodePtr else_body, parse_body({"endif"}, &end));
        n->kids.push_back(nullptr);
        n->kids.push_back(else_body);
      }
      NB_RETURN_IF_ERROR(expect_block_end());
      return NodePtr(n);
    }
  }

  Result<NodePtr> parse_for(size_t pos) {
    auto n = make(Kind::kFor, pos);
    do {
      if (cur().kind != TK::kName) return error(cur().pos, "expected a loop variable name, got " + describe(cur()));
      n->names.push_back(cur().text);
      ++i_;
    } while (at_op(",") && (++i_, true));
    if (!at_name("in")) return error(cur().pos, "expected 'in' in for loop, got " + describe(cur()));
    ++i_;
    NB_ASSIGN_OR_RETURN(NodePtr iter, parse_or());  // no `a if b else c` here: `if` filters the loop
    NodePtr filter;
    if (at_name("if")) {
      ++i_;
      NB_ASSIGN_OR_RETURN(filter, parse_expr());
    }
    if (at_name("recursive")) return unsupported(cur().pos, "recursive for loops");
    NB_RETURN_IF_ERROR(expect_block_end());
    std::string end;
    NB_ASSIGN_OR_RETURN(NodePtr body, parse_body({"else", "endfor"}, &end));
    NodePtr else_body;
    if (end == "else") {
      NB_RETURN_IF_ERROR(expect_block_end());
      NB_ASSIGN_OR_RETURN(else_body, parse_body({"endfor"}, &end));
    }
    NB_RETURN_IF_ERROR(expect_block_end());
    n->kids = {iter, filter, body, else_body};
    return NodePtr(n);
  }

  Result<NodePtr> parse_set(size_t pos) {
    if (cur().kind != TK::kName) return error(cur().pos, "expected a variable name after 'set'");
    std::string name = cur().text, attr;
    ++i_;
    if (at_op(".")) {
      ++i_;
      if (cur().kind != TK::kName) return error(cur().pos, "expected an attribute name after '.'");
      attr = cur().text;
      ++i_;
    }
    std::vector<std::string> targets = {name};
    while (attr.empty() && at_op(",")) {  // {% set a, b = ... %}
      ++i_;
      if (cur().kind != TK::kName) return error(cur().pos, "expected a variable name after ','");
      targets.push_back(cur().text);
      ++i_;
    }
    if (cur().kind == TK::kBlockEnd && attr.empty() && targets.size() == 1) {  // {% set x %}...{% endset %}
      ++i_;
      std::string end;
      NB_ASSIGN_OR_RETURN(NodePtr body, parse_body({"endset"}, &end));
      NB_RETURN_IF_ERROR(expect_block_end());
      auto n = make(Kind::kSetBlock, pos);
      n->str = name;
      n->kids.push_back(body);
      return NodePtr(n);
    }
    NB_RETURN_IF_ERROR(expect_op("="));
    NB_ASSIGN_OR_RETURN(NodePtr value, parse_expr_or_tuple());
    NB_RETURN_IF_ERROR(expect_block_end());
    auto n = make(Kind::kSet, pos);
    n->str = name;
    if (targets.size() > 1) n->names = targets;
    n->attr = attr;
    n->kids.push_back(value);
    return NodePtr(n);
  }

  // ---- expressions ----------------------------------------------------------------------------

  // `a, b` without brackets is a tuple (used on the right of {% set %}).
  Result<NodePtr> parse_expr_or_tuple() {
    const size_t pos = cur().pos;
    NB_ASSIGN_OR_RETURN(NodePtr first, parse_expr());
    if (!at_op(",")) return first;
    auto n = make(Kind::kList, pos);
    n->negated = true;
    n->kids.push_back(first);
    while (at_op(",")) {
      ++i_;
      if (cur().kind == TK::kBlockEnd) break;
      NB_ASSIGN_OR_RETURN(NodePtr e, parse_expr());
      n->kids.push_back(e);
    }
    return NodePtr(n);
  }

  Result<NodePtr> parse_expr() {
    NB_RETURN_IF_ERROR(enter(cur().pos));
    const size_t pos = cur().pos;
    NB_ASSIGN_OR_RETURN(NodePtr value, parse_or());
    int links = 0;
    while (at_name("if")) {
      NB_RETURN_IF_ERROR(chain(cur().pos, links));
      ++i_;
      NB_ASSIGN_OR_RETURN(NodePtr cond, parse_or());
      NodePtr other;
      if (at_name("else")) {
        ++i_;
        NB_ASSIGN_OR_RETURN(other, parse_expr());
      }
      auto n = make(Kind::kCond, pos);
      n->kids = {value, cond, other};
      value = n;
    }
    --depth_;
    return value;
  }

  Result<NodePtr> parse_or() {
    NB_ASSIGN_OR_RETURN(NodePtr left, parse_and());
    int links = 0;
    while (at_name("or")) {
      const size_t pos = cur().pos;
      NB_RETURN_IF_ERROR(chain(pos, links));
      ++i_;
      NB_ASSIGN_OR_RETURN(NodePtr right, parse_and());
      auto n = make(Kind::kOr, pos);
      n->kids = {left, right};
      left = n;
    }
    return left;
  }

  Result<NodePtr> parse_and() {
    NB_ASSIGN_OR_RETURN(NodePtr left, parse_not());
    int links = 0;
    while (at_name("and")) {
      const size_t pos = cur().pos;
      NB_RETURN_IF_ERROR(chain(pos, links));
      ++i_;
      NB_ASSIGN_OR_RETURN(NodePtr right, parse_not());
      auto n = make(Kind::kAnd, pos);
      n->kids = {left, right};
      left = n;
    }
    return left;
  }

  Result<NodePtr> parse_not() {
    if (at_name("not")) {
      const size_t pos = cur().pos;
      ++i_;
      NB_RETURN_IF_ERROR(enter(pos));
      NB_ASSIGN_OR_RETURN(NodePtr e, parse_not());
      --depth_;
      auto n = make(Kind::kNot, pos);
      n->kids = {e};
      return NodePtr(n);
    }
    return parse_compare();
  }

  Result<NodePtr> parse_compare() {
    const size_t pos = cur().pos;
    NB_ASSIGN_OR_RETURN(NodePtr first, parse_math1());
    auto n = make(Kind::kCompare, pos);
    n->kids.push_back(first);
    while (true) {
      std::string op;
      if (cur().kind == TK::kOp && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        ++i_;
      } else if (at_name("in")) {
        op = "in";
        ++i_;
      } else if (at_name("not") && peek().kind == TK::kName && peek().text == "in") {
        op = "notin";
        i_ += 2;
      } else {
        break;
      }
      NB_ASSIGN_OR_RETURN(NodePtr e, parse_math1());
      n->names.push_back(op);
      n->kids.push_back(e);
    }
    if (n->names.empty()) return first;
    return NodePtr(n);
  }

  Result<NodePtr> binary_chain(const std::vector<const char*>& ops, Result<NodePtr> (Parser::*next)()) {
    NB_ASSIGN_OR_RETURN(NodePtr left, (this->*next)());
    int links = 0;
    while (true) {
      const char* hit = nullptr;
      for (const char* op : ops)
        if (at_op(op)) hit = op;
      if (hit == nullptr) return left;
      const size_t pos = cur().pos;
      NB_RETURN_IF_ERROR(chain(pos, links));
      ++i_;
      NB_ASSIGN_OR_RETURN(NodePtr right, (this->*next)());
      auto n = make(Kind::kBinary, pos);
      n->attr = hit;
      n->kids = {left, right};
      left = n;
    }
  }
  Result<NodePtr> parse_math1() { return binary_chain({"+", "-"}, &Parser::parse_concat); }
  Result<NodePtr> parse_concat() { return binary_chain({"~"}, &Parser::parse_math2); }
  Result<NodePtr> parse_math2() { return binary_chain({"*", "/", "//", "%"}, &Parser::parse_pow); }
  Result<NodePtr> parse_pow() { return binary_chain({"**"}, &Parser::parse_unary_filtered); }
  Result<NodePtr> parse_unary_filtered() { return parse_unary(true); }

  Result<NodePtr> parse_unary(bool with_filter) {
    NB_RETURN_IF_ERROR(enter(cur().pos));
    NodePtr node;
    if (at_op("-") || at_op("+")) {
      auto n = make(at_op("-") ? Kind::kNeg : Kind::kPos, cur().pos);
      ++i_;
      NB_ASSIGN_OR_RETURN(NodePtr e, parse_unary(false));
      n->kids = {e};
      node = n;
    } else {
      NB_ASSIGN_OR_RETURN(node, parse_primary());
    }
    NB_ASSIGN_OR_RETURN(node, parse_postfix(node));
    if (with_filter) {
      NB_ASSIGN_OR_RETURN(node, parse_filters(node));
    }
    --depth_;
    return node;
  }

  Result<NodePtr> parse_primary() {
    const Token t = cur();
    auto lit = [&](Value v) {
      auto n = make(Kind::kLiteral, t.pos);
      n->value = std::move(v);
      ++i_;
      return NodePtr(n);
    };
    switch (t.kind) {
      case TK::kName: {
        if (t.text == "true" || t.text == "True") return lit(Value::boolean(true));
        if (t.text == "false" || t.text == "False") return lit(Value::boolean(false));
        if (t.text == "none" || t.text == "None") return lit(Value::none());
        auto n = make(Kind::kName, t.pos);
        n->str = t.text;
        ++i_;
        return NodePtr(n);
      }
      case TK::kString: {
        std::string s = t.text;  // adjacent literals concatenate, as in Python
        while (peek().kind == TK::kString) s += toks_[++i_].text;
        return lit(Value::string(std::move(s)));
      }
      case TK::kInt: {
        errno = 0;
        const long long v = std::strtoll(t.text.c_str(), nullptr, 10);
        if (errno == ERANGE) return error(t.pos, "integer literal " + t.text + " does not fit 64 bits");
        return lit(Value::integer(v));
      }
      case TK::kFloat: return lit(Value::number(std::strtod(t.text.c_str(), nullptr)));
      case TK::kOp:
        if (t.text == "(") return parse_paren();
        if (t.text == "[") return parse_list();
        if (t.text == "{") return parse_dict();
        [[fallthrough]];
      default: return error(t.pos, "expected an expression, got " + describe(t));
    }
  }

  Result<NodePtr> parse_paren() {
    const size_t pos = cur().pos;
    ++i_;
    if (at_op(")")) {  // () is an empty tuple
      ++i_;
      auto n = make(Kind::kList, pos);
      n->negated = true;
      return NodePtr(n);
    }
    NB_ASSIGN_OR_RETURN(NodePtr first, parse_expr());
    if (at_op(")")) {
      ++i_;
      return first;
    }
    auto n = make(Kind::kList, pos);
    n->negated = true;  // a tuple
    n->kids.push_back(first);
    while (at_op(",")) {
      ++i_;
      if (at_op(")")) break;
      NB_ASSIGN_OR_RETURN(NodePtr e, parse_expr());
      n->kids.push_back(e);
    }
    NB_RETURN_IF_ERROR(expect_op(")"));
    return NodePtr(n);
  }

  Result<NodePtr> parse_list() {
    auto n = make(Kind::kList, cur().pos);
    ++i_;
    while (!at_op("]")) {
      if (!n->kids.empty()) NB_RETURN_IF_ERROR(expect_op(","));
      if (at_op("]")) break;
      NB_ASSIGN_OR_RETURN(NodePtr e, parse_expr());
      n->kids.push_back(e);
    }
    ++i_;
    return NodePtr(n);
  }

  Result<NodePtr> parse_dict() {
    auto n = make(Kind::kDict, cur().pos);
    ++i_;
    while (!at_op("}")) {
      if (!n->kids.empty()) NB_RETURN_IF_ERROR(expect_op(","));
      if (at_op("}")) break;
      NB_ASSIGN_OR_RETURN(NodePtr k, parse_expr());
      NB_RETURN_IF_ERROR(expect_op(":"));
      NB_ASSIGN_OR_RETURN(NodePtr v, parse_expr());
      n->kids.push_back(k);
      n->kids.push_back(v);
    }
    ++i_;
    return NodePtr(n);
  }

  // Arguments of a call, filter or test: positional first, then name=value.
  Status parse_args(std::shared_ptr<Node>& n) {
    NB_RETURN_IF_ERROR(expect_op("("));
    while (!at_op(")")) {
      if (n->kids.size() > 1 || !n->names.empty()) NB_RETURN_IF_ERROR(expect_op(","));
      if (at_op(")")) break;
      if (at_op("*") || at_op("**")) return unsupported(cur().pos, "*args / **kwargs in calls");
      if (cur().kind == TK::kName && peek().kind == TK::kOp && peek().text == "=") {
        n->names.push_back(cur().text);
        i_ += 2;
      } else if (!n->names.empty()) {
        return error(cur().pos, "positional argument after a keyword argument");
      }
      NB_ASSIGN_OR_RETURN(NodePtr e, parse_expr());
      n->kids.push_back(e);
    }
    ++i_;
    return Status::Ok();
  }

  Result<NodePtr> parse_postfix(NodePtr node) {
    int links = 0;
    while (true) {
      if (at_op(".") || at_op("[") || at_op("(")) NB_RETURN_IF_ERROR(chain(cur().pos, links));
      if (at_op(".")) {
        ++i_;
        if (cur().kind != TK::kName && cur().kind != TK::kInt)
          return error(cur().pos, "expected an attribute name after '.', got " + describe(cur()));
        auto n = make(Kind::kGetAttr, cur().pos);
        n->str = cur().text;
        n->kids = {node};
        ++i_;
        node = n;
      } else if (at_op("[")) {
        NB_ASSIGN_OR_RETURN(node, parse_subscript(node));
      } else if (at_op("(")) {
        auto n = make(Kind::kCall, cur().pos);
        n->kids = {node};
        NB_RETURN_IF_ERROR(parse_args(n));
        node = n;
      } else {
        return node;
      }
    }
  }

  Result<NodePtr> parse_subscript(NodePtr obj) {
    const size_t pos = cur().pos;
    ++i_;
    NodePtr parts[3];
    int idx = 0;
    bool is_slice = false;
    while (!at_op("]")) {
      if (at_op(":")) {
        if (++idx > 2) return error(cur().pos, "too many ':' in slice");
        is_slice = true;
        ++i_;
        continue;
      }
      if (parts[idx]) return error(cur().pos, "expected ']' or ':' in subscript, got " + describe(cur()));
      NB_ASSIGN_OR_RETURN(parts[idx], parse_expr());
    }
    ++i_;
    if (!is_slice) {
      if (!parts[0]) return error(pos, "empty subscript []");
      auto n = make(Kind::kGetItem, pos);
      n->kids = {obj, parts[0]};
      return NodePtr(n);
    }
    auto n = make(Kind::kSlice, pos);
    n->kids = {obj, parts[0], parts[1], parts[2]};
    return NodePtr(n);
  }

  Result<NodePtr> parse_filters(NodePtr node) {
    int links = 0;
    while (true) {
      if (at_op("|") || at_name("is") || at_op("(")) NB_RETURN_IF_ERROR(chain(cur().pos, links));
      if (at_op("|")) {
        ++i_;
        if (cur().kind != TK::kName) return error(cur().pos, "expected a filter name after '|'");
        auto n = make(Kind::kFilter, cur().pos);
        n->str = cur().text;
        ++i_;
        while (at_op(".") && peek().kind == TK::kName) n->str += "." + peek().text, i_ += 2;
        n->kids = {node};
        if (at_op("(")) NB_RETURN_IF_ERROR(parse_args(n));
        node = n;
      } else if (at_name("is")) {
        ++i_;
        auto n = make(Kind::kTest, cur().pos);
        if (at_name("not")) n->negated = true, ++i_;
        if (cur().kind != TK::kName) return error(cur().pos, "expected a test name after 'is'");
        n->str = cur().text;
        ++i_;
        n->kids = {node};
        if (at_op("(")) {
          NB_RETURN_IF_ERROR(parse_args(n));
        } else if ((cur().kind == TK::kName && cur().text != "else" && cur().text != "or" && cur().text != "and") ||
                   cur().kind == TK::kString || cur().kind == TK::kInt || cur().kind == TK::kFloat ||
                   at_op("[") || at_op("{")) {
          // `x is divisibleby 3`, `x is sameas none`: one argument without parentheses.
          NB_ASSIGN_OR_RETURN(NodePtr arg, parse_primary());
          NB_ASSIGN_OR_RETURN(arg, parse_postfix(arg));
          n->kids.push_back(arg);
        }
        node = n;
      } else if (at_op("(")) {
        auto n = make(Kind::kCall, cur().pos);
        n->kids = {node};
        NB_RETURN_IF_ERROR(parse_args(n));
        node = n;
      } else {
        return node;
      }
    }
  }

  const std::string& src_;
  std::vector<Token> toks_;
  const Limits& limits_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace

Result<NodePtr> parse_template(const std::string& source, const Options& options, const Limits& limits) {
  NB_ASSIGN_OR_RETURN(std::vector<Token> tokens, tokenize(source, options));
  return Parser(source, std::move(tokens), limits).parse();
}

}  // namespace nb::jinja
