// Jinja expressions, with Jinja2's precedence (see jinja_parser.h).
#include <cerrno>
#include <cstdlib>

#include "tokenizer/jinja_parser.h"

namespace nb::jinja {

using Kind = Node::Kind;
using TK = Token::Kind;

Result<NodePtr> Parser::parse_expr_or_tuple() {
  const size_t pos = cur().pos;
  NB_ASSIGN_OR_RETURN(NodePtr first, parse_expr());
  if (!at_op(",")) return first;
  auto n = make_node(Kind::kList, pos);
  n->negated = true;
  n->kids.push_back(first);
  while (at_op(",")) {
    ++i_;
    if (cur().kind == TK::kBlockEnd || cur().kind == TK::kVarEnd) break;
    NB_ASSIGN_OR_RETURN(NodePtr e, parse_expr());
    n->kids.push_back(e);
  }
  return NodePtr(n);
}

Result<NodePtr> Parser::parse_expr() {
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
    auto n = make_node(Kind::kCond, pos);
    n->kids = {value, cond, other};
    value = n;
  }
  --depth_;
  return value;
}

Result<NodePtr> Parser::parse_or() {
  NB_ASSIGN_OR_RETURN(NodePtr left, parse_and());
  int links = 0;
  while (at_name("or")) {
    const size_t pos = cur().pos;
    NB_RETURN_IF_ERROR(chain(pos, links));
    ++i_;
    NB_ASSIGN_OR_RETURN(NodePtr right, parse_and());
    auto n = make_node(Kind::kOr, pos);
    n->kids = {left, right};
    left = n;
  }
  return left;
}

Result<NodePtr> Parser::parse_and() {
  NB_ASSIGN_OR_RETURN(NodePtr left, parse_not());
  int links = 0;
  while (at_name("and")) {
    const size_t pos = cur().pos;
    NB_RETURN_IF_ERROR(chain(pos, links));
    ++i_;
    NB_ASSIGN_OR_RETURN(NodePtr right, parse_not());
    auto n = make_node(Kind::kAnd, pos);
    n->kids = {left, right};
    left = n;
  }
  return left;
}

Result<NodePtr> Parser::parse_not() {
  if (at_name("not")) {
    const size_t pos = cur().pos;
    ++i_;
    NB_RETURN_IF_ERROR(enter(pos));
    NB_ASSIGN_OR_RETURN(NodePtr e, parse_not());
    --depth_;
    auto n = make_node(Kind::kNot, pos);
    n->kids = {e};
    return NodePtr(n);
  }
  return parse_compare();
}

Result<NodePtr> Parser::parse_compare() {
  const size_t pos = cur().pos;
  NB_ASSIGN_OR_RETURN(NodePtr first, parse_math1());
  auto n = make_node(Kind::kCompare, pos);
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

Result<NodePtr> Parser::binary_chain(const std::vector<const char*>& ops, Result<NodePtr> (Parser::*next)()) {
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
    auto n = make_node(Kind::kBinary, pos);
    n->attr = hit;
    n->kids = {left, right};
    left = n;
  }
}

Result<NodePtr> Parser::parse_unary(bool with_filter) {
  NB_RETURN_IF_ERROR(enter(cur().pos));
  NodePtr node;
  if (at_op("-") || at_op("+")) {
    auto n = make_node(at_op("-") ? Kind::kNeg : Kind::kPos, cur().pos);
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

Result<NodePtr> Parser::parse_primary() {
  const Token t = cur();
  auto lit = [&](Value v) {
    auto n = make_node(Kind::kLiteral, t.pos);
    n->value = std::move(v);
    ++i_;
    return NodePtr(n);
  };
  switch (t.kind) {
    case TK::kName: {
      if (t.text == "true" || t.text == "True") return lit(Value::boolean(true));
      if (t.text == "false" || t.text == "False") return lit(Value::boolean(false));
      if (t.text == "none" || t.text == "None") return lit(Value::none());
      auto n = make_node(Kind::kName, t.pos);
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

Result<NodePtr> Parser::parse_paren() {
  const size_t pos = cur().pos;
  ++i_;
  if (at_op(")")) {  // () is an empty tuple
    ++i_;
    auto n = make_node(Kind::kList, pos);
    n->negated = true;
    return NodePtr(n);
  }
  NB_ASSIGN_OR_RETURN(NodePtr first, parse_expr());
  if (at_op(")")) {
    ++i_;
    return first;
  }
  auto n = make_node(Kind::kList, pos);
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

Result<NodePtr> Parser::parse_list() {
  auto n = make_node(Kind::kList, cur().pos);
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

Result<NodePtr> Parser::parse_dict() {
  auto n = make_node(Kind::kDict, cur().pos);
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

Status Parser::parse_args(std::shared_ptr<Node>& n) {
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

Result<NodePtr> Parser::parse_postfix(NodePtr node) {
  int links = 0;
  while (true) {
    if (at_op(".") || at_op("[") || at_op("(")) NB_RETURN_IF_ERROR(chain(cur().pos, links));
    if (at_op(".")) {
      ++i_;
      if (cur().kind != TK::kName && cur().kind != TK::kInt)
        return error(cur().pos, "expected an attribute name after '.', got " + describe(cur()));
      auto n = make_node(Kind::kGetAttr, cur().pos);
      n->str = cur().text;
      n->kids = {node};
      ++i_;
      node = n;
    } else if (at_op("[")) {
      NB_ASSIGN_OR_RETURN(node, parse_subscript(node));
    } else if (at_op("(")) {
      auto n = make_node(Kind::kCall, cur().pos);
      n->kids = {node};
      NB_RETURN_IF_ERROR(parse_args(n));
      node = n;
    } else {
      return node;
    }
  }
}

Result<NodePtr> Parser::parse_subscript(NodePtr obj) {
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
    if (idx == 0 && !is_slice && at_op(",")) {  // x[a, b]: the key is a tuple
      auto key = make_node(Kind::kList, parts[0]->pos);
      key->negated = true;
      key->kids.push_back(parts[0]);
      while (at_op(",")) {
        ++i_;
        if (at_op("]")) break;
        NB_ASSIGN_OR_RETURN(NodePtr e, parse_expr());
        key->kids.push_back(e);
      }
      parts[0] = key;
      if (!at_op("]")) return error(cur().pos, "expected ']' after a tuple subscript, got " + describe(cur()));
    }
  }
  ++i_;
  if (!is_slice) {
    if (!parts[0]) return error(pos, "empty subscript []");
    auto n = make_node(Kind::kGetItem, pos);
    n->kids = {obj, parts[0]};
    return NodePtr(n);
  }
  auto n = make_node(Kind::kSlice, pos);
  n->kids = {obj, parts[0], parts[1], parts[2]};
  return NodePtr(n);
}

Result<NodePtr> Parser::parse_filters(NodePtr node) {
  int links = 0;
  while (true) {
    if (at_op("|") || at_name("is") || at_op("(")) NB_RETURN_IF_ERROR(chain(cur().pos, links));
    if (at_op("|")) {
      ++i_;
      if (cur().kind != TK::kName) return error(cur().pos, "expected a filter name after '|'");
      auto n = make_node(Kind::kFilter, cur().pos);
      n->str = cur().text;
      ++i_;
      while (at_op(".") && peek().kind == TK::kName) n->str += "." + peek().text, i_ += 2;
      n->kids = {node};
      if (at_op("(")) NB_RETURN_IF_ERROR(parse_args(n));
      node = n;
    } else if (at_name("is")) {
      ++i_;
      auto n = make_node(Kind::kTest, cur().pos);
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
      auto n = make_node(Kind::kCall, cur().pos);
      n->kids = {node};
      NB_RETURN_IF_ERROR(parse_args(n));
      node = n;
    } else {
      return node;
    }
  }
}

}  // namespace nb::jinja
