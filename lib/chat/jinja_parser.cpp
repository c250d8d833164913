// Jinja parser: tokens (jinja_lexer) to a syntax tree (jinja_ast.h). The
// grammar and operator precedence follow jinja2.parser:
//   expr    := or ["if" or ["else" expr]]
//   or      := and ("or" and)*        and := not ("and" not)*
//   not     := "not" not | compare     compare := math1 (cmp math1)*
//   math1   := concat (("+"|"-") concat)*   concat := math2 ("~" math2)*
//   math2   := pow (("*"|"/"|"//"|"%") pow)*   pow := unary ("**" unary)*
//   unary   := ("-"|"+") unary | primary postfix*, then filters and tests
// so `x|length - 1` is `(x|length) - 1` and `not a is b` is `not (a is b)`.
#include <initializer_list>

#include "chat/jinja_ast.h"
#include "chat/jinja_lexer.h"

namespace qwen35::jinja {

namespace {

class Parser {
 public:
  Parser(std::vector<Token> toks, const ParseLimits& lim) : t_(std::move(toks)), lim_(lim) {}

  Status parse(Body* out) {
    std::string ended;
    QWEN35_TRY(parse_body(out, {}, &ended));
    return Status::Ok();
  }

 private:
  // ---- token helpers -------------------------------------------------------
  const Token& cur() const { return t_[p_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  void next() {
    if (p_ + 1 < t_.size()) ++p_;
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Text: return "template text";
      case Tok::VarBegin: return "'{{'";
      case Tok::VarEnd: return "'}}'";
      case Tok::BlockBegin: return "'{%'";
      case Tok::BlockEnd: return "'%}'";
      case Tok::Name: return "'" + t.text + "'";
      case Tok::String: return "a string";
      case Tok::Int:
      case Tok::Float: return "a number";
      case Tok::Op: return "'" + t.text + "'";
      case Tok::Eof: return "the end of the template";
    }
    return "?";
  }

  Status err(const std::string& what) const {
    return Error(QWEN35_ERR_FORMAT, "chat template line {}: {}", cur().line, what);
  }
  Status unsupported(const std::string& what) const {
    return Error(QWEN35_ERR_UNSUPPORTED, "chat template line {}: {} is not supported", cur().line, what);
  }
  Status expect_op(const char* op) {
    if (!skip_op(op)) return err(fmt::format("expected '{}', got {}", op, describe(cur())));
    return Status::Ok();
  }
  Status expect_block_end() {
    if (cur().type != Tok::BlockEnd) return err(fmt::format("expected '%}}', got {}", describe(cur())));
    next();
    return Status::Ok();
  }
  Status expect_name(std::string* out) {
    if (cur().type != Tok::Name) return err(fmt::format("expected a name, got {}", describe(cur())));
    *out = cur().text;
    next();
    return Status::Ok();
  }

  // ---- nesting guard ----------------------------------------------------------
  struct Guard {
    explicit Guard(Parser* p) : p_(p) { ++p_->depth_; }
    ~Guard() { --p_->depth_; }
    Parser* p_;
  };
  Status check_depth() const {
    if (depth_ > lim_.max_nesting)
      return err(fmt::format("nesting deeper than {} levels", lim_.max_nesting));
    return Status::Ok();
  }

  ExprPtr node(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }
  // Expression trees are walked recursively, so their height is bounded as
  // they are built (a chain like 1+1+1+... grows without any parentheses).
  Status finish(Expr* e) {
    int h = 0;
    auto take = [&](const ExprPtr& x) {
      if (x) h = std::max(h, x->height);
    };
    take(e->a);
    take(e->b);
    take(e->c);
    take(e->d);
    for (const auto& x : e->args) take(x);
    for (const auto& kv : e->kwargs) take(kv.second);
    e->height = h + 1;
    if (h + 1 > 2 * lim_.max_nesting)
      return err(fmt::format("expression nested deeper than {} levels", 2 * lim_.max_nesting));
    return Status::Ok();
  }

  // ---- statements ---------------------------------------------------------
  // Parse statements until a block tag whose name is in `ends` (consumed,
  // stored in *ended; the rest of that tag is left to the caller).
  Status parse_body(Body* out, std::initializer_list<const char*> ends, std::string* ended) {
    Guard g(this);
    QWEN35_TRY(check_depth());
    for (;;) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (ends.size() == 0) return Status::Ok();
        std::string names;
        for (const char* e : ends) names += std::string(names.empty() ? "" : " or ") + "'" + e + "'";
        return err("unexpected end of template, expected " + names);
      }
      if (t.type == Tok::Text) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Text;
        s->line = t.line;
        s->text = t.text;
        out->push_back(std::move(s));
        next();
        continue;
      }
      if (t.type == Tok::VarBegin) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Output;
        s->line = t.line;
        next();
        QWEN35_TRY(parse_tuple(&s->expr, true, false));
        if (cur().type != Tok::VarEnd) return err(fmt::format("expected '}}}}', got {}", describe(cur())));
        next();
        out->push_back(std::move(s));
        continue;
      }
      if (t.type != Tok::BlockBegin) return err("unexpected " + describe(t));
      next();
      if (cur().type != Tok::Name) return err(fmt::format("expected a statement name, got {}", describe(cur())));
      for (const char* e : ends) {
        if (cur().text == e) {
          *ended = e;
          next();
          return Status::Ok();
        }
      }
      StmtPtr s;
      QWEN35_TRY(parse_statement(&s));
      out->push_back(std::move(s));
    }
  }

  Status parse_statement(StmtPtr* out) {
    const std::string name = cur().text;
    int line = cur().line;
    auto s = std::make_unique<Stmt>();
    s->line = line;
    std::string ended;
    if (name == "if") {
      next();
      s->kind = Stmt::Kind::If;
      for (;;) {
        ExprPtr cond;
        QWEN35_TRY(parse_tuple(&cond, false, false));
        QWEN35_TRY(expect_block_end());
        Body body;
        QWEN35_TRY(parse_body(&body, {"elif", "else", "endif"}, &ended));
        s->branches.emplace_back(std::move(cond), std::move(body));
        if (ended == "elif") continue;
        if (ended == "else") {
          QWEN35_TRY(expect_block_end());
          Body else_body;
          QWEN35_TRY(parse_body(&else_body, {"endif"}, &ended));
          s->branches.emplace_back(nullptr, std::move(else_body));
        }
        break;
      }
      QWEN35_TRY(expect_block_end());
    } else if (name == "for") {
      next();
      s->kind = Stmt::Kind::For;
      QWEN35_TRY(parse_targets(&s->targets, nullptr));
      if (!skip_name("in")) return err(fmt::format("expected 'in', got {}", describe(cur())));
      QWEN35_TRY(parse_tuple(&s->expr, false, false));
      const int refs_before = loop_refs_;
      if (skip_name("if")) QWEN35_TRY(parse_expression(&s->cond, true));
      if (is_name("recursive")) return unsupported("a recursive for loop");
      QWEN35_TRY(expect_block_end());
      ++loops_;
      Status st = parse_body(&s->body, {"endfor", "else"}, &ended);
      --loops_;
      QWEN35_TRY(st);
      s->uses_loop = loop_refs_ != refs_before;
      if (ended == "else") {
        QWEN35_TRY(expect_block_end());
        QWEN35_TRY(parse_body(&s->else_body, {"endfor"}, &ended));
      }
      QWEN35_TRY(expect_block_end());
    } else if (name == "set") {
      next();
      QWEN35_TRY(parse_targets(&s->targets, &s->attr));
      if (skip_op("=")) {
        s->kind = Stmt::Kind::Set;
        QWEN35_TRY(parse_tuple(&s->expr, true, false));
        QWEN35_TRY(expect_block_end());
      } else {
        s->kind = Stmt::Kind::SetBlock;
        if (s->targets.size() != 1 || !s->attr.empty()) return err("a block set needs a single plain name");
        if (is_op("|")) QWEN35_TRY(parse_filter_chain(nullptr, &s->expr));
        QWEN35_TRY(expect_block_end());
        QWEN35_TRY(parse_body(&s->body, {"endset"}, &ended));
        QWEN35_TRY(expect_block_end());
      }
    } else if (name == "macro") {
      next();
      s->kind = Stmt::Kind::Macro;
      QWEN35_TRY(expect_name(&s->name));
      QWEN35_TRY(expect_op("("));
      while (!is_op(")")) {
        if (!s->params.empty()) QWEN35_TRY(expect_op(","));
        if (is_op(")")) break;
        std::string pname;
        QWEN35_TRY(expect_name(&pname));
        ExprPtr def;
        if (skip_op("=")) QWEN35_TRY(parse_expression(&def, true));
        s->params.emplace_back(std::move(pname), std::move(def));
      }
      next();   // ')'
      QWEN35_TRY(expect_block_end());
      int saved = loops_;
      loops_ = 0;
      Status st = parse_body(&s->body, {"endmacro"}, &ended);
      loops_ = saved;
      QWEN35_TRY(st);
      if (cur().type == Tok::Name) next();   // optional macro name after endmacro
      QWEN35_TRY(expect_block_end());
    } else if (name == "break" || name == "continue") {
      if (loops_ == 0) return err(fmt::format("'{}' outside of a loop", name));
      next();
      s->kind = name == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue;
      QWEN35_TRY(expect_block_end());
    } else if (name == "filter") {
      next();
      s->kind = Stmt::Kind::FilterBlock;
      QWEN35_TRY(parse_filter_chain(nullptr, &s->expr, /*first_without_pipe=*/true));
      QWEN35_TRY(expect_block_end());
      QWEN35_TRY(parse_body(&s->body, {"endfilter"}, &ended));
      QWEN35_TRY(expect_block_end());
    } else if (name == "with") {
      next();
      s->kind = Stmt::Kind::With;
      while (cur().type != Tok::BlockEnd) {
        if (!s->params.empty()) QWEN35_TRY(expect_op(","));
        std::string var;
        QWEN35_TRY(expect_name(&var));
        QWEN35_TRY(expect_op("="));
        ExprPtr e;
        QWEN35_TRY(parse_expression(&e, true));
        s->params.emplace_back(std::move(var), std::move(e));
      }
      next();
      QWEN35_TRY(parse_body(&s->body, {"endwith"}, &ended));
      QWEN35_TRY(expect_block_end());
    } else if (name == "generation") {
      next();
      s->kind = Stmt::Kind::Scope;
      QWEN35_TRY(expect_block_end());
      QWEN35_TRY(parse_body(&s->body, {"endgeneration"}, &ended));
      QWEN35_TRY(expect_block_end());
    } else if (name == "include" || name == "import" || name == "from" || name == "extends" || name == "block" ||
               name == "call" || name == "do" || name == "autoescape" || name == "trans") {
      return unsupported(fmt::format("the '{}' statement", name));
    } else {
      return err(fmt::format("unknown statement '{}'", name));
    }
    *out = std::move(s);
    return Status::Ok();
  }

  // Assignment targets: `a`, `a, b`, `(a, b)`; with attr != null also `ns.x`.
  Status parse_targets(std::vector<std::string>* names, std::string* attr) {
    bool paren = skip_op("(");
    for (;;) {
      std::string n;
      QWEN35_TRY(expect_name(&n));
      if (n == "true" || n == "false" || n == "none" || n == "True" || n == "False" || n == "None")
        return err(fmt::format("cannot assign to '{}'", n));
      names->push_back(n);
      if (attr && names->size() == 1 && is_op(".")) {
        next();
        QWEN35_TRY(expect_name(attr));
        return Status::Ok();
      }
      if (!skip_op(",")) break;
      if (paren && is_op(")")) break;
    }
    if (paren) QWEN35_TRY(expect_op(")"));
    return Status::Ok();
  }

  // ---- expressions --------------------------------------------------------
  bool is_tuple_end() const {
    const Token& t = cur();
    return t.type == Tok::VarEnd || t.type == Tok::BlockEnd || (t.type == Tok::Op && t.text == ")") ||
           t.type == Tok::Eof;
  }

  Status parse_tuple(ExprPtr* out, bool with_condexpr, bool explicit_parens) {
    int line = cur().line;
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    for (;;) {
      if (!args.empty()) QWEN35_TRY(expect_op(","));
      if (is_tuple_end()) break;
      ExprPtr e;
      QWEN35_TRY(parse_expression(&e, with_condexpr));
      args.push_back(std::move(e));
      if (is_op(",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (args.size() == 1) {
        *out = std::move(args[0]);
        return Status::Ok();
      }
      if (!explicit_parens) return err(fmt::format("expected an expression, got {}", describe(cur())));
    }
    auto t = node(Expr::Kind::Tuple, line);
    t->args = std::move(args);
    QWEN35_TRY(finish(t.get()));
    *out = std::move(t);
    return Status::Ok();
  }

  Status parse_expression(ExprPtr* out, bool with_condexpr) {
    QWEN35_TRY(parse_or(out));
    if (!with_condexpr) return Status::Ok();
    while (is_name("if")) {
      int line = cur().line;
      next();
      auto e = node(Expr::Kind::Cond, line);
      e->b = std::move(*out);
      QWEN35_TRY(parse_or(&e->a));
      if (skip_name("else")) QWEN35_TRY(parse_expression(&e->c, true));
      QWEN35_TRY(finish(e.get()));
      *out = std::move(e);
    }
    return Status::Ok();
  }

  Status parse_or(ExprPtr* out) {
    QWEN35_TRY(parse_and(out));
    while (is_name("or")) {
      auto e = node(Expr::Kind::Or, cur().line);
      next();
      e->a = std::move(*out);
      QWEN35_TRY(parse_and(&e->b));
      QWEN35_TRY(finish(e.get()));
      *out = std::move(e);
    }
    return Status::Ok();
  }

  Status parse_and(ExprPtr* out) {
    QWEN35_TRY(parse_not(out));
    while (is_name("and")) {
      auto e = node(Expr::Kind::And, cur().line);
      next();
      e->a = std::move(*out);
      QWEN35_TRY(parse_not(&e->b));
      QWEN35_TRY(finish(e.get()));
      *out = std::move(e);
    }
    return Status::Ok();
  }

  Status parse_not(ExprPtr* out) {
    Guard g(this);
    QWEN35_TRY(check_depth());
    if (is_name("not")) {
      auto e = node(Expr::Kind::Not, cur().line);
      next();
      QWEN35_TRY(parse_not(&e->a));
      QWEN35_TRY(finish(e.get()));
      *out = std::move(e);
      return Status::Ok();
    }
    return parse_compare(out);
  }

  Status parse_compare(ExprPtr* out) {
    int line = cur().line;
    ExprPtr first;
    QWEN35_TRY(parse_math1(&first));
    std::vector<ExprPtr> operands;
    std::vector<std::string> ops;
    for (;;) {
      std::string op;
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        next();
      } else if (is_name("in")) {
        op = "in";
        next();
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        op = "notin";
        next();
        next();
      } else {
        break;
      }
      ExprPtr rhs;
      QWEN35_TRY(parse_math1(&rhs));
      ops.push_back(op);
      operands.push_back(std::move(rhs));
    }
    if (ops.empty()) {
      *out = std::move(first);
      return Status::Ok();
    }
    auto e = node(Expr::Kind::Compare, line);
    e->args.push_back(std::move(first));
    for (auto& x : operands) e->args.push_back(std::move(x));
    e->ops = std::move(ops);
    QWEN35_TRY(finish(e.get()));
    *out = std::move(e);
    return Status::Ok();
  }

  Status binary(ExprPtr* out, std::string op, ExprPtr rhs, int line) {
    auto e = node(Expr::Kind::Binary, line);
    e->name = std::move(op);
    e->a = std::move(*out);
    e->b = std::move(rhs);
    QWEN35_TRY(finish(e.get()));
    *out = std::move(e);
    return Status::Ok();
  }

  Status parse_math1(ExprPtr* out) {
    QWEN35_TRY(parse_concat(out));
    while (is_op("+") || is_op("-")) {
      std::string op = cur().text;
      int line = cur().line;
      next();
      ExprPtr rhs;
      QWEN35_TRY(parse_concat(&rhs));
      QWEN35_TRY(binary(out, op, std::move(rhs), line));
    }
    return Status::Ok();
  }

  Status parse_concat(ExprPtr* out) {
    QWEN35_TRY(parse_math2(out));
    while (is_op("~")) {
      int line = cur().line;
      next();
      ExprPtr rhs;
      QWEN35_TRY(parse_math2(&rhs));
      QWEN35_TRY(binary(out, "~", std::move(rhs), line));
    }
    return Status::Ok();
  }

  Status parse_math2(ExprPtr* out) {
    QWEN35_TRY(parse_pow(out));
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = cur().text;
      int line = cur().line;
      next();
      ExprPtr rhs;
      QWEN35_TRY(parse_pow(&rhs));
      QWEN35_TRY(binary(out, op, std::move(rhs), line));
    }
    return Status::Ok();
  }

  Status parse_pow(ExprPtr* out) {
    QWEN35_TRY(parse_unary(out, true));
    while (is_op("**")) {
      int line = cur().line;
      next();
      ExprPtr rhs;
      QWEN35_TRY(parse_unary(&rhs, true));
      QWEN35_TRY(binary(out, "**", std::move(rhs), line));
    }
    return Status::Ok();
  }

  Status parse_unary(ExprPtr* out, bool with_filter) {
    Guard g(this);
    QWEN35_TRY(check_depth());
    if (is_op("-") || is_op("+")) {
      auto e = node(is_op("-") ? Expr::Kind::Neg : Expr::Kind::Pos, cur().line);
      next();
      QWEN35_TRY(parse_unary(&e->a, false));
      QWEN35_TRY(finish(e.get()));
      *out = std::move(e);
    } else {
      QWEN35_TRY(parse_primary(out));
    }
    QWEN35_TRY(parse_postfix(out));
    if (with_filter) QWEN35_TRY(parse_filter_expr(out));
    return Status::Ok();
  }

  Status parse_primary(ExprPtr* out) {
    const Token& t = cur();
    int line = t.line;
    if (t.type == Tok::Name) {
      const std::string& n = t.text;
      auto lit = node(Expr::Kind::Literal, line);
      if (n == "true" || n == "True") lit->value = Value::boolean(true);
      else if (n == "false" || n == "False") lit->value = Value::boolean(false);
      else if (n == "none" || n == "None") lit->value = Value::none();
      else {
        auto e = node(Expr::Kind::Name, line);
        e->name = n;
        if (n == "loop") ++loop_refs_;
        next();
        QWEN35_TRY(finish(e.get()));
        *out = std::move(e);
        return Status::Ok();
      }
      next();
      QWEN35_TRY(finish(lit.get()));
      *out = std::move(lit);
      return Status::Ok();
    }
    if (t.type == Tok::String) {
      std::string s;
      while (cur().type == Tok::String) {   // adjacent literals concatenate
        s += cur().text;
        next();
      }
      auto lit = node(Expr::Kind::Literal, line);
      lit->value = Value::string(std::move(s));
      QWEN35_TRY(finish(lit.get()));
      *out = std::move(lit);
      return Status::Ok();
    }
    if (t.type == Tok::Int || t.type == Tok::Float) {
      auto lit = node(Expr::Kind::Literal, line);
      lit->value = t.type == Tok::Int ? Value::integer(t.ival) : Value::number(t.fval);
      next();
      QWEN35_TRY(finish(lit.get()));
      *out = std::move(lit);
      return Status::Ok();
    }
    if (skip_op("(")) {
      QWEN35_TRY(parse_tuple(out, true, true));
      return expect_op(")");
    }
    if (is_op("[")) {
      next();
      auto e = node(Expr::Kind::List, line);
      while (!is_op("]")) {
        if (!e->args.empty()) QWEN35_TRY(expect_op(","));
        if (is_op("]")) break;
        ExprPtr x;
        QWEN35_TRY(parse_expression(&x, true));
        e->args.push_back(std::move(x));
      }
      next();
      QWEN35_TRY(finish(e.get()));
      *out = std::move(e);
      return Status::Ok();
    }
    if (is_op("{")) {
      next();
      auto e = node(Expr::Kind::Dict, line);
      while (!is_op("}")) {
        if (!e->args.empty()) QWEN35_TRY(expect_op(","));
        if (is_op("}")) break;
        ExprPtr k, v;
        QWEN35_TRY(parse_expression(&k, true));
        QWEN35_TRY(expect_op(":"));
        QWEN35_TRY(parse_expression(&v, true));
        e->args.push_back(std::move(k));
        e->args.push_back(std::move(v));
      }
      next();
      QWEN35_TRY(finish(e.get()));
      *out = std::move(e);
      return Status::Ok();
    }
    return err(fmt::format("unexpected {}", describe(t)));
  }

  Status parse_postfix(ExprPtr* out) {
    for (;;) {
      int line = cur().line;
      if (is_op(".")) {
        next();
        if (cur().type == Tok::Name) {
          auto e = node(Expr::Kind::GetAttr, line);
          e->a = std::move(*out);
          e->name = cur().text;
          next();
          QWEN35_TRY(finish(e.get()));
          *out = std::move(e);
        } else if (cur().type == Tok::Int) {
          auto e = node(Expr::Kind::GetItem, line);
          e->a = std::move(*out);
          e->b = node(Expr::Kind::Literal, line);
          e->b->value = Value::integer(cur().ival);
          QWEN35_TRY(finish(e->b.get()));
          next();
          QWEN35_TRY(finish(e.get()));
          *out = std::move(e);
        } else {
          return err(fmt::format("expected an attribute name after '.', got {}", describe(cur())));
        }
      } else if (is_op("[")) {
        next();
        QWEN35_TRY(parse_subscript(out, line));
      } else if (is_op("(")) {
        QWEN35_TRY(parse_call(out, line));
      } else {
        return Status::Ok();
      }
    }
  }

  Status parse_subscript(ExprPtr* out, int line) {
    ExprPtr start;
    if (!is_op(":")) {
      QWEN35_TRY(parse_expression(&start, true));
      if (is_op(",")) return unsupported("a tuple subscript");
      if (skip_op("]")) {
        auto e = node(Expr::Kind::GetItem, line);
        e->a = std::move(*out);
        e->b = std::move(start);
        QWEN35_TRY(finish(e.get()));
        *out = std::move(e);
        return Status::Ok();
      }
    }
    auto e = node(Expr::Kind::Slice, line);
    e->a = std::move(*out);
    e->b = std::move(start);
    QWEN35_TRY(expect_op(":"));
    if (!is_op("]") && !is_op(":")) QWEN35_TRY(parse_expression(&e->c, true));
    if (skip_op(":")) {
      if (!is_op("]")) QWEN35_TRY(parse_expression(&e->d, true));
    }
    QWEN35_TRY(expect_op("]"));
    QWEN35_TRY(finish(e.get()));
    *out = std::move(e);
    return Status::Ok();
  }

  Status parse_call_args(std::vector<ExprPtr>* args, KwArgs* kwargs) {
    QWEN35_TRY(expect_op("("));
    while (!is_op(")")) {
      if (!args->empty() || !kwargs->empty()) QWEN35_TRY(expect_op(","));
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) return unsupported("*args / **kwargs in a call");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string k = cur().text;
        next();
        next();
        ExprPtr v;
        QWEN35_TRY(parse_expression(&v, true));
        kwargs->emplace_back(std::move(k), std::move(v));
      } else {
        if (!kwargs->empty()) return err("positional argument after a keyword argument");
        ExprPtr v;
        QWEN35_TRY(parse_expression(&v, true));
        args->push_back(std::move(v));
      }
    }
    next();   // ')'
    return Status::Ok();
  }

  Status parse_call(ExprPtr* out, int line) {
    auto e = node(Expr::Kind::Call, line);
    e->a = std::move(*out);
    QWEN35_TRY(parse_call_args(&e->args, &e->kwargs));
    QWEN35_TRY(finish(e.get()));
    *out = std::move(e);
    return Status::Ok();
  }

  // Dotted names are allowed for filters and tests (`|foo.bar`).
  Status parse_dotted_name(std::string* out) {
    QWEN35_TRY(expect_name(out));
    while (is_op(".") && peek().type == Tok::Name) {
      next();
      *out += "." + cur().text;
      next();
    }
    return Status::Ok();
  }

  // `| f(args) | g ...` applied to *out (null for filter blocks).
  Status parse_filter_chain(ExprPtr* in, ExprPtr* out, bool first_without_pipe = false) {
    ExprPtr cur_expr = in ? std::move(*in) : nullptr;
    bool first = true;
    while ((first && first_without_pipe) || is_op("|")) {
      if (!(first && first_without_pipe)) next();
      first = false;
      auto e = node(Expr::Kind::Filter, cur().line);
      QWEN35_TRY(parse_dotted_name(&e->name));
      if (is_op("(")) QWEN35_TRY(parse_call_args(&e->args, &e->kwargs));
      e->a = std::move(cur_expr);
      QWEN35_TRY(finish(e.get()));
      cur_expr = std::move(e);
    }
    *out = std::move(cur_expr);
    return Status::Ok();
  }

  Status parse_filter_expr(ExprPtr* out) {
    for (;;) {
      if (is_op("|")) {
        QWEN35_TRY(parse_filter_chain(out, out));
      } else if (is_name("is")) {
        auto e = node(Expr::Kind::Test, cur().line);
        next();
        if (skip_name("not")) e->negated = true;
        QWEN35_TRY(parse_dotted_name(&e->name));
        if (is_op("(")) {
          QWEN35_TRY(parse_call_args(&e->args, &e->kwargs));
        } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                    cur().type == Tok::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          // `x is divisibleby 3`: one argument without parentheses.
          ExprPtr arg;
          QWEN35_TRY(parse_primary(&arg));
          QWEN35_TRY(parse_postfix(&arg));
          e->args.push_back(std::move(arg));
        }
        e->a = std::move(*out);
        QWEN35_TRY(finish(e.get()));
        *out = std::move(e);
      } else if (is_op("(")) {
        QWEN35_TRY(parse_call(out, cur().line));
      } else {
        return Status::Ok();
      }
    }
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  ParseLimits lim_;
  int depth_ = 0;
  int loops_ = 0;
  int loop_refs_ = 0;   // Name nodes "loop" seen so far
};

}  // namespace

Status ParseTemplate(std::string_view source, const ParseLimits& limits, Body* out) {
  std::vector<Token> toks;
  QWEN35_TRY(Lex(source, LexOptions{}, &toks));
  Parser p(std::move(toks), limits);
  Body body;
  QWEN35_TRY(p.parse(&body));
  *out = std::move(body);
  return Status::Ok();
}

}  // namespace qwen35::jinja
