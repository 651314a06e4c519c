// The Jinja AST shared by jinja_parser.cpp and jinja_eval.cpp (private to the interpreter).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/jinja.h"

namespace nb::jinja {

using NodePtr = std::shared_ptr<const Node>;

// One node type with positional children keeps the parser and the evaluator short; the meaning
// of `kids`, `str` and `names` for each kind is listed beside it.
struct Node {
  enum class Kind {
    // ---- statements
    kBody,       // kids: statements in order
    kText,       // str: the text
    kOutput,     // kids[0]: expression to print
    kIf,         // kids: cond0, body0, cond1, body1, ..., [nullptr, else_body]
    kFor,        // names: loop targets; kids: iterable, filter cond|nullptr, body, else body|nullptr
    kSet,        // str: variable (names: all targets of `set a, b = ...`); attr: namespace attribute; kids[0]: value
    kSetBlock,   // str: variable; kids[0]: body whose rendering is assigned
    kMacro,      // str: name; names: parameters; kids[0]: body, kids[1..]: defaults (nullptr if none)
    kBreak,
    kContinue,
    // ---- expressions
    kLiteral,    // value
    kName,       // str: variable name
    kGetAttr,    // kids[0]: object; str: attribute
    kGetItem,    // kids[0]: object; kids[1]: key
    kSlice,      // kids[0]: object; kids[1..3]: start, stop, step (nullptr when absent)
    kCall,       // kids[0]: callee; kids[1..]: args, the last names.size() of them keyword args
    kFilter,     // kids[0]: subject; kids[1..]: args (last names.size() keyword); str: filter name
    kTest,       // kids[0]: subject; kids[1..]: args; str: test name; negated
    kNeg,        // kids[0]
    kPos,        // kids[0]
    kNot,        // kids[0]
    kAnd,        // kids[0], kids[1]
    kOr,         // kids[0], kids[1]
    kBinary,     // attr: operator (+ - * / // % ** ~); kids[0], kids[1]
    kCompare,    // kids: operands; names: the operators between them (== != < <= > >= in notin)
    kCond,       // kids[0]: value if true; kids[1]: condition; kids[2]: value if false|nullptr
    kList,       // kids: elements; negated: it is a tuple
    kDict,       // kids: key0, value0, key1, value1, ...
  };
  Kind kind = Kind::kBody;
  size_t pos = 0;  // byte offset in the template source, for error messages
  std::string str;
  std::string attr;
  std::vector<std::string> names;
  std::vector<NodePtr> kids;
  Value value;
  bool negated = false;
};

// Parses the whole template into a kBody node. `source` must already have normalised newlines.
Result<NodePtr> parse_template(const std::string& source, const Options& options, const Limits& limits);

}  // namespace nb::jinja
