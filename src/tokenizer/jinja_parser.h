// Jinja parser (private to the interpreter): recursive descent following Jinja2's grammar and
// precedence (jinja2/parser.py):
//   cond:    or ['if' or ['else' cond]]
//   or/and/not, compare (== != < <= > >= in, not in; chained), + -, ~, * / // %, **,
//   unary (- +), then postfix (.attr [key] [a:b:c] (args)) and filters/tests (| name, is name),
//   which bind tighter than every binary operator.
// Statements are parsed in jinja_parser.cpp, expressions in jinja_parser_expr.cpp.
#pragma once
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_lexer.h"

namespace nb::jinja {

inline std::shared_ptr<Node> make_node(Node::Kind kind, size_t pos) {
  auto n = std::make_shared<Node>();
  n->kind = kind;
  n->pos = pos;
  return n;
}

class Parser {
  using Kind = Node::Kind;
  using TK = Token::Kind;

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
  Result<NodePtr> parse_body(const std::set<std::string>& ends, std::string* end_found);
  Result<NodePtr> parse_statement();
  Result<NodePtr> parse_if(size_t pos);
  Result<NodePtr> parse_for(size_t pos);
  Result<NodePtr> parse_set(size_t pos);
  Result<NodePtr> parse_macro(size_t pos);

  // ---- expressions ----------------------------------------------------------------------------

  // `a, b` without brackets is a tuple ({{ a, b }} and the right of {% set %}).
  Result<NodePtr> parse_expr_or_tuple();
  Result<NodePtr> parse_expr();
  Result<NodePtr> parse_or();
  Result<NodePtr> parse_and();
  Result<NodePtr> parse_not();
  Result<NodePtr> parse_compare();
  Result<NodePtr> binary_chain(const std::vector<const char*>& ops, Result<NodePtr> (Parser::*next)());
  Result<NodePtr> parse_math1() { return binary_chain({"+", "-"}, &Parser::parse_concat); }
  Result<NodePtr> parse_concat() { return binary_chain({"~"}, &Parser::parse_math2); }
  Result<NodePtr> parse_math2() { return binary_chain({"*", "/", "//", "%"}, &Parser::parse_pow); }
  Result<NodePtr> parse_pow() { return binary_chain({"**"}, &Parser::parse_unary_filtered); }
  Result<NodePtr> parse_unary_filtered() { return parse_unary(true); }

  Result<NodePtr> parse_unary(bool with_filter);

  Result<NodePtr> parse_primary();

  Result<NodePtr> parse_paren();

  Result<NodePtr> parse_list();

  Result<NodePtr> parse_dict();

  // Arguments of a call, filter or test: positional first, then name=value.
  Status parse_args(std::shared_ptr<Node>& n);

  Result<NodePtr> parse_postfix(NodePtr node);

  Result<NodePtr> parse_subscript(NodePtr obj);

  Result<NodePtr> parse_filters(NodePtr node);

  const std::string& src_;
  std::vector<Token> toks_;
  const Limits& limits_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace nb::jinja
