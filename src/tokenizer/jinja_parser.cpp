// Jinja statements: text, {{ }}, {% if/for/set/... %}. Expressions: jinja_parser_expr.cpp.
#include "tokenizer/jinja_parser.h"

namespace nb::jinja {

using Kind = Node::Kind;
using TK = Token::Kind;

Result<NodePtr> Parser::parse_body(const std::set<std::string>& ends, std::string* end_found) {
  NB_RETURN_IF_ERROR(enter(cur().pos));
  auto body = make_node(Kind::kBody, cur().pos);
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
      auto n = make_node(Kind::kText, t.pos);
      n->str = t.text;
      body->kids.push_back(n);
      ++i_;
    } else if (t.kind == TK::kVarBegin) {
      ++i_;
      auto n = make_node(Kind::kOutput, t.pos);
      NB_ASSIGN_OR_RETURN(NodePtr e, parse_expr_or_tuple());
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

Result<NodePtr> Parser::parse_statement() {
  const Token kw = cur();
  ++i_;
  if (kw.text == "if") return parse_if(kw.pos);
  if (kw.text == "for") return parse_for(kw.pos);
  if (kw.text == "set") return parse_set(kw.pos);
  if (kw.text == "break" || kw.text == "continue") {
    NB_RETURN_IF_ERROR(expect_block_end());
    return NodePtr(make_node(kw.text == "break" ? Kind::kBreak : Kind::kContinue, kw.pos));
  }
  if (kw.text == "generation") {  // Hugging Face's marker for assistant tokens: renders its body
    NB_RETURN_IF_ERROR(expect_block_end());
    std::string end;
    NB_ASSIGN_OR_RETURN(NodePtr body, parse_body({"endgeneration"}, &end));
    NB_RETURN_IF_ERROR(expect_block_end());
    return body;
  }
  if (kw.text == "macro") return parse_macro(kw.pos);
  static const std::set<std::string> kKnown = {"call", "filter", "include", "import", "from", "extends",
                                                "block", "with", "autoescape", "do", "endmacro"};
  if (kKnown.count(kw.text)) return unsupported(kw.pos, "{% " + kw.text + " %}");
  return error(kw.pos, "unknown or misplaced statement '{% " + kw.text + " %}'");
}

Result<NodePtr> Parser::parse_if(size_t pos) {
  auto n = make_node(Kind::kIf, pos);
  while (true) {
    // Jinja2 parses if-conditions without `a if b else c` (parse_tuple(with_condexpr=False)).
    NB_ASSIGN_OR_RETURN(NodePtr cond, parse_or());
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

Result<NodePtr> Parser::parse_for(size_t pos) {
  auto n = make_node(Kind::kFor, pos);
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

Result<NodePtr> Parser::parse_set(size_t pos) {
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
    auto n = make_node(Kind::kSetBlock, pos);
    n->str = name;
    n->kids.push_back(body);
    return NodePtr(n);
  }
  NB_RETURN_IF_ERROR(expect_op("="));
  NB_ASSIGN_OR_RETURN(NodePtr value, parse_expr_or_tuple());
  NB_RETURN_IF_ERROR(expect_block_end());
  auto n = make_node(Kind::kSet, pos);
  n->str = name;
  if (targets.size() > 1) n->names = targets;
  n->attr = attr;
  n->kids.push_back(value);
  return NodePtr(n);
}

Result<NodePtr> Parser::parse_macro(size_t pos) {
  auto n = make_node(Kind::kMacro, pos);
  if (cur().kind != TK::kName) return error(cur().pos, "expected a macro name");
  n->str = cur().text;
  ++i_;
  NB_RETURN_IF_ERROR(expect_op("("));
  std::vector<NodePtr> defaults;
  while (!at_op(")")) {
    if (!n->names.empty()) NB_RETURN_IF_ERROR(expect_op(","));
    if (cur().kind != TK::kName) return error(cur().pos, "expected a parameter name, got " + describe(cur()));
    n->names.push_back(cur().text);
    ++i_;
    NodePtr dflt;
    if (at_op("=")) {
      ++i_;
      NB_ASSIGN_OR_RETURN(dflt, parse_expr());
    }
    defaults.push_back(dflt);
  }
  ++i_;
  NB_RETURN_IF_ERROR(expect_block_end());
  std::string end;
  NB_ASSIGN_OR_RETURN(NodePtr body, parse_body({"endmacro"}, &end));
  NB_RETURN_IF_ERROR(expect_block_end());
  n->kids.push_back(body);
  n->kids.insert(n->kids.end(), defaults.begin(), defaults.end());
  return NodePtr(n);
}

Result<NodePtr> parse_template(const std::string& source, const Options& options, const Limits& limits) {
  NB_ASSIGN_OR_RETURN(std::vector<Token> tokens, tokenize(source, options));
  return Parser(source, std::move(tokens), limits).parse();
}

}  // namespace nb::jinja
