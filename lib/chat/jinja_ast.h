// Syntax tree of a parsed Jinja template (jinja_parser.cpp builds it,
// jinja_eval.cpp runs it). One node struct per category with the fields
// each kind uses, to keep the tree easy to walk.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/jinja_value.h"
#include "status.h"

namespace qwen35::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
using KwArgs = std::vector<std::pair<std::string, ExprPtr>>;

struct Expr {
  enum class Kind {
    Literal,   // value
    Name,      // name
    GetAttr,   // a.name
    GetItem,   // a[b]
    Slice,     // a[b:c:d] (b, c, d may be null)
    Call,      // a(args, kwargs)
    Filter,    // a | name(args, kwargs); a is null inside {% filter %} / {% set x | f %}
    Test,      // a is [not] name(args)
    Neg,       // -a
    Pos,       // +a
    Not,       // not a
    Binary,    // a op b: + - * / // % ** ~
    And,       // a and b
    Or,        // a or b
    Compare,   // args[0] ops[0] args[1] ops[1] args[2] ... (== != < <= > >= in notin)
    Cond,      // b if a else c (c may be null)
    List,      // [args]
    Tuple,     // (args)
    Dict,      // {args[0]: args[1], ...}
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;
  ExprPtr a, b, c, d;
  std::vector<ExprPtr> args;
  KwArgs kwargs;
  std::vector<std::string> ops;
  bool negated = false;
  int height = 1;   // levels of this subtree (bounded by the parser)
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind {
    Text,         // text
    Output,       // {{ expr }}
    If,           // branches (cond null = else)
    For,          // {% for targets in expr [if cond] %} body {% else %} else_body
    Set,          // {% set targets = expr %} / {% set ns.attr = expr %} (attr non-empty)
    SetBlock,     // {% set targets[0] [| filter] %} body {% endset %}
    Macro,        // {% macro name(params) %} body
    Break,
    Continue,
    FilterBlock,  // {% filter f %} body (expr: the filter chain, innermost a == null)
    With,         // {% with assigns %} body
    Scope,        // {% generation %} body (Hugging Face's assistant-mask marker)
  };
  Kind kind;
  int line = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr cond;
  std::vector<std::pair<ExprPtr, Body>> branches;
  std::vector<std::string> targets;
  std::string attr;
  Body body, else_body;
  std::string name;
  KwArgs params;   // macro parameters (default expr may be null); with-assignments
  bool uses_loop = true;   // For: the body or filter mentions `loop` (else no loop object is built)
};

struct ParseLimits {
  int max_nesting = 200;   // nested blocks plus nested expressions
};

// Parse a template into a body of statements. Errors: QWEN35_ERR_FORMAT
// (syntax) or QWEN35_ERR_UNSUPPORTED (a Jinja feature this subset lacks),
// both naming the line.
Status ParseTemplate(std::string_view source, const ParseLimits& limits, Body* out);

}  // namespace qwen35::jinja
