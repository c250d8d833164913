// The Jinja evaluator: statements, expressions, scoping, operators and the
// resource limits (jinja_eval.h). Filters, tests and methods live in
// jinja_builtins.cpp.
#include "chat/jinja_eval.h"

#include <algorithm>
#include <cmath>

#include "chat/jinja_lexer.h"

namespace qwen35::jinja {

const Value* Scope::find(std::string_view name) const {
  for (const Scope* s = this; s; s = s->parent.get())
    for (auto it = s->vars.rbegin(); it != s->vars.rend(); ++it)
      if (it->first == name) return &it->second;
  return nullptr;
}

void Scope::set(const std::string& name, Value v) {
  for (auto& kv : vars)
    if (kv.first == name) {
      kv.second = std::move(v);
      return;
    }
  vars.emplace_back(name, std::move(v));
}

const Value* Args::get(size_t i, const char* name) const {
  if (i < pos.size()) return &pos[i];
  if (name)
    for (const auto& kv : kw)
      if (kv.first == name) return &kv.second;
  return nullptr;
}

Interp::~Interp() {
  // Namespaces can hold themselves and macros hold the scope that holds
  // them; clear both so every shared object is released.
  for (auto& ns : namespaces_) ns->items.clear();
  for (auto& m : macros_) m->closure.reset();
}

// ---------------------------------------------------------------------------
// Limits, errors, construction

Status Interp::error(const std::string& what) const {
  return Error(QWEN35_ERR_INVALID_ARG, "chat template line {}: {}", line_, what);
}

Status Interp::unsupported(const std::string& what) const {
  return Error(QWEN35_ERR_UNSUPPORTED, "chat template line {}: {} is not supported", line_, what);
}

Status Interp::undefined_error(const Value& u) const {
  const std::string& hint = u.str();
  return error(hint.empty() ? "use of an undefined value" : hint);
}

Status Interp::step() {
  if (++steps_ > lim_.max_steps)
    return Error(QWEN35_ERR_INVALID_ARG, "chat template exceeded its limit of {} evaluation steps (line {})",
                 lim_.max_steps, line_);
  return Status::Ok();
}

Status Interp::enter(DepthGuard&) {
  if (depth_ > lim_.max_depth)
    return Error(QWEN35_ERR_INVALID_ARG, "chat template nests deeper than {} levels (line {})", lim_.max_depth,
                 line_);
  return Status::Ok();
}

Status Interp::check_size(size_t bytes) const {
  if (bytes > lim_.max_output_bytes)
    return Error(QWEN35_ERR_INVALID_ARG, "chat template built a string of more than {} bytes (line {})",
                 lim_.max_output_bytes, line_);
  if (total_bytes_ + bytes > lim_.max_total_bytes)
    return Error(QWEN35_ERR_INVALID_ARG, "chat template created more than {} bytes of data (line {})",
                 lim_.max_total_bytes, line_);
  return Status::Ok();
}

Status Interp::charge(size_t bytes) {
  if (total_bytes_ + bytes > lim_.max_total_bytes)
    return Error(QWEN35_ERR_INVALID_ARG, "chat template created more than {} bytes of data (line {})",
                 lim_.max_total_bytes, line_);
  total_bytes_ += bytes;
  return Status::Ok();
}

Status Interp::make_string(std::string s, Value* out) {
  QWEN35_TRY(check_size(s.size()));
  total_bytes_ += s.size();
  *out = Value::string(std::move(s));
  return Status::Ok();
}

Status Interp::make_list(std::vector<Value> items, Value* out, bool tuple) {
  if (items.size() > lim_.max_list)
    return error(fmt::format("list of {} elements exceeds the limit of {}", items.size(), lim_.max_list));
  QWEN35_TRY(charge(items.size() * sizeof(Value)));
  Value v = Value::list(std::move(items), tuple);
  if (v.depth() > kMaxValueDepth) return error(fmt::format("values nested deeper than {} levels", kMaxValueDepth));
  *out = std::move(v);
  return Status::Ok();
}

Status Interp::make_dict(std::vector<std::pair<std::string, Value>> items, Value* out) {
  if (items.size() > lim_.max_list)
    return error(fmt::format("dict of {} items exceeds the limit of {}", items.size(), lim_.max_list));
  QWEN35_TRY(charge(items.size() * (sizeof(Value) + 32)));
  Value v = Value::dict(std::move(items));
  if (v.depth() > kMaxValueDepth) return error(fmt::format("values nested deeper than {} levels", kMaxValueDepth));
  *out = std::move(v);
  return Status::Ok();
}

Value Interp::make_namespace(std::vector<std::pair<std::string, Value>> items) {
  auto d = std::make_shared<DictObj>();
  d->items = std::move(items);
  namespaces_.push_back(d);
  return Value::ns(std::move(d));
}

Status Interp::append_out(std::string* out, std::string_view s) const {
  if (out->size() + s.size() > lim_.max_output_bytes)
    return Error(QWEN35_ERR_INVALID_ARG, "chat template output exceeds {} bytes (line {})", lim_.max_output_bytes,
                 line_);
  out->append(s);
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Statements

Status Interp::run(const Body& body, ScopePtr globals, std::string* out) {
  Flow flow = Flow::Normal;
  return exec_body(body, globals, out, &flow);
}

Status Interp::exec_body(const Body& body, const ScopePtr& scope, std::string* out, Flow* flow) {
  for (const StmtPtr& s : body) {
    QWEN35_TRY(exec(*s, scope, out, flow));
    if (*flow != Flow::Normal) break;
  }
  return Status::Ok();
}

Status Interp::exec(const Stmt& s, const ScopePtr& scope, std::string* out, Flow* flow) {
  DepthGuard g(this);
  QWEN35_TRY(enter(g));
  line_ = s.line;
  QWEN35_TRY(step());
  switch (s.kind) {
    case Stmt::Kind::Text: return append_out(out, s.text);
    case Stmt::Kind::Output: {
      Value v;
      QWEN35_TRY(eval(*s.expr, scope, &v));
      std::string text;
      QWEN35_TRY(stringify(v, &text));
      return append_out(out, text);
    }
    case Stmt::Kind::If:
      for (const auto& br : s.branches) {
        bool take = true;
        if (br.first) {
          Value c;
          QWEN35_TRY(eval(*br.first, scope, &c));
          take = c.truthy();
        }
        if (take) return exec_body(br.second, scope, out, flow);
      }
      return Status::Ok();
    case Stmt::Kind::For: return exec_for(s, scope, out);
    case Stmt::Kind::Set: {
      Value v;
      QWEN35_TRY(eval(*s.expr, scope, &v));
      return exec_set(s, scope, std::move(v));
    }
    case Stmt::Kind::SetBlock: {
      std::string buf;
      Flow f = Flow::Normal;
      QWEN35_TRY(exec_body(s.body, scope, &buf, &f));
      Value v;
      QWEN35_TRY(make_string(std::move(buf), &v));
      if (s.expr) {
        Value r;
        QWEN35_TRY(eval_filter(*s.expr, scope, &v, &r));
        v = std::move(r);
      }
      return exec_set(s, scope, std::move(v));
    }
    case Stmt::Kind::Macro: {
      auto m = std::make_shared<CallableObj>();
      m->kind = CallableObj::Kind::Macro;
      m->name = s.name;
      m->macro = &s;
      m->closure = scope;
      macros_.push_back(m);
      scope->set(s.name, Value::callable(m));
      return Status::Ok();
    }
    case Stmt::Kind::Break: *flow = Flow::Break; return Status::Ok();
    case Stmt::Kind::Continue: *flow = Flow::Continue; return Status::Ok();
    case Stmt::Kind::FilterBlock: {
      std::string buf;
      Flow f = Flow::Normal;
      QWEN35_TRY(exec_body(s.body, scope, &buf, &f));
      Value v, r;
      QWEN35_TRY(make_string(std::move(buf), &v));
      QWEN35_TRY(eval_filter(*s.expr, scope, &v, &r));
      std::string text;
      QWEN35_TRY(stringify(r, &text));
      return append_out(out, text);
    }
    case Stmt::Kind::With: {
      auto inner = std::make_shared<Scope>();
      inner->parent = scope;
      for (const auto& kv : s.params) {
        Value v;
        QWEN35_TRY(eval(*kv.second, scope, &v));
        inner->set(kv.first, std::move(v));
      }
      return exec_body(s.body, inner, out, flow);
    }
    case Stmt::Kind::Scope: return exec_body(s.body, scope, out, flow);
  }
  return Status::Ok();
}

Status Interp::exec_set(const Stmt& s, const ScopePtr& scope, Value v) {
  if (!s.attr.empty()) {
    const Value* ns = scope->find(s.targets[0]);
    if (!ns || !ns->is_namespace())
      return error(fmt::format("cannot assign attribute '{}' on '{}': not a namespace", s.attr, s.targets[0]));
    ns->ns_dict().set(s.attr, std::move(v));
    return Status::Ok();
  }
  if (s.targets.size() == 1) {
    scope->set(s.targets[0], std::move(v));
    return Status::Ok();
  }
  std::vector<Value> parts;
  QWEN35_TRY(iterate(v, &parts));
  if (parts.size() != s.targets.size())
    return error(fmt::format("cannot unpack {} values into {} names", parts.size(), s.targets.size()));
  for (size_t k = 0; k < parts.size(); ++k) scope->set(s.targets[k], parts[k]);
  return Status::Ok();
}

Status Interp::exec_for(const Stmt& s, const ScopePtr& scope, std::string* out) {
  Value seq;
  QWEN35_TRY(eval(*s.expr, scope, &seq));
  std::vector<Value> items;
  QWEN35_TRY(iterate(seq, &items));
  auto bind = [&](Scope& sc, const Value& item) -> Status {
    if (s.targets.size() == 1) {
      sc.set(s.targets[0], item);
      return Status::Ok();
    }
    std::vector<Value> parts;
    QWEN35_TRY(iterate(item, &parts));
    if (parts.size() != s.targets.size())
      return error(fmt::format("cannot unpack {} values into {} loop variables", parts.size(), s.targets.size()));
    for (size_t k = 0; k < parts.size(); ++k) sc.set(s.targets[k], parts[k]);
    return Status::Ok();
  };
  if (s.cond) {   // {% for x in xs if cond %}: filter first; loop.* counts what is kept
    std::vector<Value> kept;
    for (const Value& item : items) {
      QWEN35_TRY(step());
      auto sc = std::make_shared<Scope>();
      sc->parent = scope;
      QWEN35_TRY(bind(*sc, item));
      Value c;
      QWEN35_TRY(eval(*s.cond, sc, &c));
      if (c.truthy()) kept.push_back(item);
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    auto sc = std::make_shared<Scope>();
    sc->parent = scope;
    Flow f = Flow::Normal;
    return exec_body(s.else_body, sc, out, &f);
  }
  const int64_t n = int64_t(items.size());
  for (int64_t i = 0; i < n; ++i) {
    line_ = s.line;
    QWEN35_TRY(step());
    auto sc = std::make_shared<Scope>();
    sc->parent = scope;
    QWEN35_TRY(bind(*sc, items[size_t(i)]));
    if (s.uses_loop) {
      auto cycle = std::make_shared<CallableObj>();
      cycle->kind = CallableObj::Kind::Method;
      cycle->name = "cycle";
      cycle->loop_index0 = i;
      std::vector<std::pair<std::string, Value>> loop = {
          {"index", Value::integer(i + 1)},      {"index0", Value::integer(i)},
          {"revindex", Value::integer(n - i)},   {"revindex0", Value::integer(n - i - 1)},
          {"first", Value::boolean(i == 0)},     {"last", Value::boolean(i == n - 1)},
          {"length", Value::integer(n)},         {"depth", Value::integer(1)},
          {"depth0", Value::integer(0)},         {"cycle", Value::callable(cycle)},
      };
      if (i > 0) loop.emplace_back("previtem", items[size_t(i - 1)]);
      if (i + 1 < n) loop.emplace_back("nextitem", items[size_t(i + 1)]);
      sc->set("loop", Value::dict(std::move(loop)));
    }
    Flow f = Flow::Normal;
    QWEN35_TRY(exec_body(s.body, sc, out, &f));
    if (f == Flow::Break) break;
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Expressions

Status Interp::eval_args(const Expr& e, const ScopePtr& scope, Args* out) {
  out->pos.reserve(e.args.size());
  for (const ExprPtr& a : e.args) {
    Value v;
    QWEN35_TRY(eval(*a, scope, &v));
    out->pos.push_back(std::move(v));
  }
  for (const auto& kv : e.kwargs) {
    Value v;
    QWEN35_TRY(eval(*kv.second, scope, &v));
    out->kw.emplace_back(kv.first, std::move(v));
  }
  return Status::Ok();
}

Status Interp::eval_filter(const Expr& e, const ScopePtr& scope, const Value* input, Value* out) {
  Value in;
  if (!e.a) {
    if (!input) return error("filter without an input");
    in = *input;
  } else if (input && e.a->kind == Expr::Kind::Filter) {
    QWEN35_TRY(eval_filter(*e.a, scope, input, &in));
  } else {
    QWEN35_TRY(eval(*e.a, scope, &in));
  }
  Args args;
  QWEN35_TRY(eval_args(e, scope, &args));
  line_ = e.line;
  return call_filter(e.name, in, args, scope, out);
}

Status Interp::eval(const Expr& e, const ScopePtr& scope, Value* out) {
  DepthGuard g(this);
  QWEN35_TRY(enter(g));
  QWEN35_TRY(step());
  line_ = e.line;
  switch (e.kind) {
    case Expr::Kind::Literal: *out = e.value; return Status::Ok();
    case Expr::Kind::Name: {
      if (const Value* v = scope->find(e.name)) {
        *out = *v;
      } else if (is_global(e.name)) {
        auto c = std::make_shared<CallableObj>();
        c->kind = CallableObj::Kind::Global;
        c->name = e.name;
        *out = Value::callable(c);
      } else {
        *out = Value::undefined(fmt::format("'{}' is undefined", e.name));
      }
      return Status::Ok();
    }
    case Expr::Kind::GetAttr: {
      Value obj;
      QWEN35_TRY(eval(*e.a, scope, &obj));
      line_ = e.line;
      return getattr(obj, e.name, out);
    }
    case Expr::Kind::GetItem: {
      Value obj, key;
      QWEN35_TRY(eval(*e.a, scope, &obj));
      QWEN35_TRY(eval(*e.b, scope, &key));
      line_ = e.line;
      return getitem(obj, key, out);
    }
    case Expr::Kind::Slice: {
      Value obj, b, c, d;
      QWEN35_TRY(eval(*e.a, scope, &obj));
      if (e.b) QWEN35_TRY(eval(*e.b, scope, &b));
      if (e.c) QWEN35_TRY(eval(*e.c, scope, &c));
      if (e.d) QWEN35_TRY(eval(*e.d, scope, &d));
      line_ = e.line;
      return eval_slice(obj, e.b ? &b : nullptr, e.c ? &c : nullptr, e.d ? &d : nullptr, out);
    }
    case Expr::Kind::Call: {
      Value fn;
      QWEN35_TRY(eval(*e.a, scope, &fn));
      Args args;
      QWEN35_TRY(eval_args(e, scope, &args));
      line_ = e.line;
      return call(fn, args, out);
    }
    case Expr::Kind::Filter: return eval_filter(e, scope, nullptr, out);
    case Expr::Kind::Test: {
      Value in;
      QWEN35_TRY(eval(*e.a, scope, &in));
      Args args;
      QWEN35_TRY(eval_args(e, scope, &args));
      line_ = e.line;
      bool r = false;
      QWEN35_TRY(call_test(e.name, in, args, &r));
      *out = Value::boolean(r != e.negated);
      return Status::Ok();
    }
    case Expr::Kind::Neg:
    case Expr::Kind::Pos: {
      Value v;
      QWEN35_TRY(eval(*e.a, scope, &v));
      if (v.is_undefined()) return undefined_error(v);
      if (!v.is_number() || v.kind() == Value::Kind::BigInt)
        return error(fmt::format("bad operand type for unary {}: '{}'", e.kind == Expr::Kind::Neg ? '-' : '+',
                                 v.type_name()));
      if (e.kind == Expr::Kind::Pos) {
        *out = v.is_bool() ? Value::integer(v.i()) : v;
      } else if (v.kind() == Value::Kind::Float) {
        *out = Value::number(-v.f());
      } else {
        if (v.i() == INT64_MIN) return error("integer overflow");
        *out = Value::integer(-v.i());
      }
      return Status::Ok();
    }
    case Expr::Kind::Not: {
      Value v;
      QWEN35_TRY(eval(*e.a, scope, &v));
      *out = Value::boolean(!v.truthy());
      return Status::Ok();
    }
    case Expr::Kind::And:
    case Expr::Kind::Or: {
      // Python semantics: the deciding operand itself is the result.
      Value a;
      QWEN35_TRY(eval(*e.a, scope, &a));
      bool short_circuit = e.kind == Expr::Kind::And ? !a.truthy() : a.truthy();
      if (short_circuit) {
        *out = std::move(a);
        return Status::Ok();
      }
      return eval(*e.b, scope, out);
    }
    case Expr::Kind::Binary: {
      Value a, b;
      QWEN35_TRY(eval(*e.a, scope, &a));
      QWEN35_TRY(eval(*e.b, scope, &b));
      line_ = e.line;
      return eval_binary(e.name, a, b, out);
    }
    case Expr::Kind::Compare: {
      Value left;
      QWEN35_TRY(eval(*e.args[0], scope, &left));
      for (size_t k = 0; k < e.ops.size(); ++k) {
        Value right;
        QWEN35_TRY(eval(*e.args[k + 1], scope, &right));
        line_ = e.line;
        bool r = false;
        QWEN35_TRY(compare(e.ops[k], left, right, &r));
        if (!r) {
          *out = Value::boolean(false);
          return Status::Ok();
        }
        left = std::move(right);
      }
      *out = Value::boolean(true);
      return Status::Ok();
    }
    case Expr::Kind::Cond: {
      Value c;
      QWEN35_TRY(eval(*e.a, scope, &c));
      if (c.truthy()) return eval(*e.b, scope, out);
      if (e.c) return eval(*e.c, scope, out);
      *out = Value::undefined("the conditional expression had no else branch");
      return Status::Ok();
    }
    case Expr::Kind::List:
    case Expr::Kind::Tuple: {
      std::vector<Value> items;
      items.reserve(e.args.size());
      for (const ExprPtr& a : e.args) {
        Value v;
        QWEN35_TRY(eval(*a, scope, &v));
        items.push_back(std::move(v));
      }
      return make_list(std::move(items), out, e.kind == Expr::Kind::Tuple);
    }
    case Expr::Kind::Dict: {
      std::vector<std::pair<std::string, Value>> items;
      for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
        Value key, v;
        QWEN35_TRY(eval(*e.args[k], scope, &key));
        QWEN35_TRY(eval(*e.args[k + 1], scope, &v));
        if (!key.is_string()) return unsupported(fmt::format("a dict key of type '{}'", key.type_name()));
        bool replaced = false;
        for (auto& kv : items)
          if (kv.first == key.str()) {
            kv.second = v;
            replaced = true;
          }
        if (!replaced) items.emplace_back(key.str(), std::move(v));
      }
      return make_dict(std::move(items), out);
    }
  }
  return error("unknown expression");
}

Status Interp::call(const Value& fn, const Args& args, Value* out) {
  if (fn.is_undefined()) return undefined_error(fn);
  if (!fn.is_callable()) return error(fmt::format("'{}' object is not callable", fn.type_name()));
  const CallableObj& c = fn.fn();
  switch (c.kind) {
    case CallableObj::Kind::Macro: return call_macro(c, args, out);
    case CallableObj::Kind::Global: return call_global(c.name, args, out);
    case CallableObj::Kind::Method: return call_method(c, args, out);
  }
  return error("bad callable");
}

Status Interp::call_macro(const CallableObj& m, const Args& args, Value* out) {
  DepthGuard g(this);
  QWEN35_TRY(enter(g));
  const Stmt& def = *m.macro;
  auto sc = std::make_shared<Scope>();
  sc->parent = m.closure;
  std::vector<Value> varargs;
  std::vector<std::pair<std::string, Value>> kwargs;
  for (size_t k = 0; k < def.params.size(); ++k) {
    const std::string& pname = def.params[k].first;
    if (const Value* v = args.get(k, pname.c_str())) {
      sc->set(pname, *v);
    } else if (def.params[k].second) {
      Value d;
      QWEN35_TRY(eval(*def.params[k].second, sc, &d));
      sc->set(pname, std::move(d));
    } else {
      sc->set(pname, Value::undefined(fmt::format("'{}' is undefined (missing macro argument)", pname)));
    }
  }
  for (size_t k = def.params.size(); k < args.pos.size(); ++k) varargs.push_back(args.pos[k]);
  for (const auto& kv : args.kw) {
    bool is_param = false;
    for (const auto& p : def.params) is_param |= p.first == kv.first;
    if (!is_param) kwargs.push_back(kv);
  }
  Value va, kw;
  QWEN35_TRY(make_list(std::move(varargs), &va, true));
  QWEN35_TRY(make_dict(std::move(kwargs), &kw));
  sc->set("varargs", std::move(va));
  sc->set("kwargs", std::move(kw));
  std::string buf;
  Flow f = Flow::Normal;
  int saved_line = line_;
  QWEN35_TRY(exec_body(def.body, sc, &buf, &f));
  line_ = saved_line;
  return make_string(std::move(buf), out);
}

// ---------------------------------------------------------------------------
// Operators

namespace {

bool is_plain_int(const Value& v) { return v.kind() == Value::Kind::Int || v.kind() == Value::Kind::Bool; }

// Python floor division and modulo on integers.
int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
int64_t floor_mod(int64_t a, int64_t b) {
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

}  // namespace

Status Interp::eval_binary(const std::string& op, const Value& a, const Value& b, Value* out) {
  if (op == "~") {
    std::string s;
    QWEN35_TRY(stringify(a, &s));
    std::string t;
    QWEN35_TRY(stringify(b, &t));
    QWEN35_TRY(check_size(s.size() + t.size()));
    s += t;
    return make_string(std::move(s), out);
  }
  if (op == "%" && a.is_string()) return percent_format(a.str(), b, out);   // "%s" % x
  if (a.is_undefined()) return undefined_error(a);
  if (b.is_undefined()) return undefined_error(b);
  auto type_err = [&]() {
    return error(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, a.type_name(), b.type_name()));
  };
  if (a.kind() == Value::Kind::BigInt || b.kind() == Value::Kind::BigInt)
    return unsupported("arithmetic on integers beyond 64 bits");
  const bool ints = is_plain_int(a) && is_plain_int(b);
  const bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) {
      int64_t r;
      if (__builtin_add_overflow(a.i(), b.i(), &r)) return error("integer overflow");
      *out = Value::integer(r);
      return Status::Ok();
    }
    if (nums) {
      *out = Value::number(a.f() + b.f());
      return Status::Ok();
    }
    if (a.is_string() && b.is_string()) {
      QWEN35_TRY(check_size(a.str().size() + b.str().size()));
      return make_string(a.str() + b.str(), out);
    }
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
      std::vector<Value> items = a.items();
      if (items.size() + b.items().size() > lim_.max_list) return error("list too long");
      items.insert(items.end(), b.items().begin(), b.items().end());
      return make_list(std::move(items), out, a.is_tuple());
    }
    if (a.is_string() || b.is_string())
      return error(fmt::format("can only concatenate str (not \"{}\") to str",
                               a.is_string() ? b.type_name() : a.type_name()));
    return type_err();
  }
  if (op == "-") {
    if (ints) {
      int64_t r;
      if (__builtin_sub_overflow(a.i(), b.i(), &r)) return error("integer overflow");
      *out = Value::integer(r);
      return Status::Ok();
    }
    if (nums) {
      *out = Value::number(a.f() - b.f());
      return Status::Ok();
    }
    return type_err();
  }
  if (op == "*") {
    if (ints) {
      int64_t r;
      if (__builtin_mul_overflow(a.i(), b.i(), &r)) return error("integer overflow");
      *out = Value::integer(r);
      return Status::Ok();
    }
    if (nums) {
      *out = Value::number(a.f() * b.f());
      return Status::Ok();
    }
    // Sequence repetition: "ab" * 3, [x] * 3 (either order).
    const Value& seq = is_plain_int(a) ? b : a;
    const Value& cnt = is_plain_int(a) ? a : b;
    if (!is_plain_int(cnt) || !(seq.is_string() || seq.is_list())) return type_err();
    int64_t n = std::max<int64_t>(0, cnt.i());
    if (seq.is_string()) {
      if (!seq.str().empty() && uint64_t(n) > lim_.max_output_bytes / seq.str().size())
        return check_size(lim_.max_output_bytes + 1);
      std::string s;
      s.reserve(seq.str().size() * size_t(n));
      for (int64_t k = 0; k < n; ++k) s += seq.str();
      return make_string(std::move(s), out);
    }
    if (!seq.items().empty() && uint64_t(n) > lim_.max_list / seq.items().size()) return error("list too long");
    std::vector<Value> items;
    for (int64_t k = 0; k < n; ++k) items.insert(items.end(), seq.items().begin(), seq.items().end());
    return make_list(std::move(items), out, seq.is_tuple());
  }
  if (!nums) return type_err();
  if (op == "/") {
    if (b.f() == 0.0) return error("division by zero");
    *out = Value::number(a.f() / b.f());
    return Status::Ok();
  }
  if (op == "//" || op == "%") {
    if (ints) {
      if (b.i() == 0) return error(op == "//" ? "integer division by zero" : "integer modulo by zero");
      if (a.i() == INT64_MIN && b.i() == -1) {
        if (op == "%") {
          *out = Value::integer(0);
          return Status::Ok();
        }
        return error("integer overflow");
      }
      *out = Value::integer(op == "//" ? floor_div(a.i(), b.i()) : floor_mod(a.i(), b.i()));
      return Status::Ok();
    }
    double x = a.f(), y = b.f();
    if (y == 0.0) return error("float division by zero");
    if (op == "//") {
      *out = Value::number(std::floor(x / y));
    } else {
      double r = std::fmod(x, y);
      if (r != 0.0 && ((r < 0) != (y < 0))) r += y;
      if (r == 0.0) r = std::copysign(0.0, y);   // Python: a zero remainder takes the divisor's sign
      *out = Value::number(r);
    }
    return Status::Ok();
  }
  if (op == "**") {
    if (ints && b.i() >= 0) {
      int64_t base = a.i(), e = b.i(), r = 1;
      while (e > 0) {
        if (e & 1)
          if (__builtin_mul_overflow(r, base, &r)) return error("integer overflow");
        e >>= 1;
        if (e > 0 && __builtin_mul_overflow(base, base, &base)) return error("integer overflow");
      }
      *out = Value::integer(r);
      return Status::Ok();
    }
    if (a.f() == 0.0 && b.f() < 0) return error("zero to a negative power");
    double r = std::pow(a.f(), b.f());
    if (std::isinf(r) && std::isfinite(a.f()) && std::isfinite(b.f())) return error("numerical result out of range");
    if (std::isnan(r) && !std::isnan(a.f()) && !std::isnan(b.f()))
      return unsupported("a fractional power of a negative number (complex result)");
    *out = Value::number(r);
    return Status::Ok();
  }
  return error(fmt::format("unknown operator '{}'", op));
}

Status Interp::compare(const std::string& op, const Value& a, const Value& b, bool* out) {
  if (op == "==" || op == "!=") {
    *out = a.equals(b) == (op == "==");
    return Status::Ok();
  }
  if (op == "in" || op == "notin") {
    bool r = false;
    QWEN35_TRY(contains(b, a, &r));
    *out = r == (op == "in");
    return Status::Ok();
  }
  if (a.is_undefined()) return undefined_error(a);
  if (b.is_undefined()) return undefined_error(b);
  // Python ordering: three-way compare, then the operator.
  int c = 0;
  if (a.is_number() && b.is_number()) {
    if (is_plain_int(a) && is_plain_int(b)) c = a.i() < b.i() ? -1 : a.i() > b.i() ? 1 : 0;
    else c = a.f() < b.f() ? -1 : a.f() > b.f() ? 1 : 0;
  } else if (a.is_string() && b.is_string()) {
    c = a.str().compare(b.str());
    c = c < 0 ? -1 : c > 0 ? 1 : 0;
  } else if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
    const auto& x = a.items();
    const auto& y = b.items();
    size_t k = 0;
    while (k < x.size() && k < y.size() && x[k].equals(y[k])) ++k;
    if (k < x.size() && k < y.size()) {
      bool lt = false;
      QWEN35_TRY(compare("<", x[k], y[k], &lt));
      c = lt ? -1 : 1;
    } else {
      c = x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
    }
  } else {
    return error(fmt::format("'{}' not supported between instances of '{}' and '{}'", op, a.type_name(),
                             b.type_name()));
  }
  if (op == "<") *out = c < 0;
  else if (op == "<=") *out = c <= 0;
  else if (op == ">") *out = c > 0;
  else if (op == ">=") *out = c >= 0;
  else return error(fmt::format("unknown comparison '{}'", op));
  return Status::Ok();
}

Status Interp::contains(const Value& container, const Value& item, bool* out) {
  switch (container.kind()) {
    case Value::Kind::Undefined: *out = false; return Status::Ok();
    case Value::Kind::String:
      if (!item.is_string())
        return error(fmt::format("'in <string>' requires string as left operand, not {}", item.type_name()));
      *out = container.str().find(item.str()) != std::string::npos;
      return Status::Ok();
    case Value::Kind::List:
      *out = false;
      for (const Value& x : container.items())
        if (x.equals(item)) {
          *out = true;
          break;
        }
      return Status::Ok();
    case Value::Kind::Dict:
    case Value::Kind::Namespace:
      if (container.is_namespace()) return error("argument of type 'Namespace' is not iterable");
      if ((item.is_list() && !item.is_tuple()) || item.is_dict() || item.is_namespace())
        return error(fmt::format("unhashable type: '{}'", item.type_name()));
      *out = item.is_string() && container.dict().find(item.str()) != nullptr;
      return Status::Ok();
    default: return error(fmt::format("argument of type '{}' is not iterable", container.type_name()));
  }
}

Status Interp::iterate(const Value& v, std::vector<Value>* out) {
  out->clear();
  switch (v.kind()) {
    case Value::Kind::Undefined: return Status::Ok();   // Jinja2: iterating undefined yields nothing
    case Value::Kind::List: *out = v.items(); return Status::Ok();
    case Value::Kind::Dict:
      for (const auto& kv : v.dict().items) out->push_back(Value::string(kv.first));
      return Status::Ok();
    case Value::Kind::String: {
      const std::string& s = v.str();
      for (size_t i = 0; i < s.size();) {
        uint32_t cp;
        size_t n = utf8_next(s, i, &cp);
        out->push_back(Value::string(s.substr(i, n)));
        i += n;
      }
      return charge(s.size() * 40);   // one small string per character
    }
    default: return error(fmt::format("'{}' object is not iterable", v.type_name()));
  }
}

Status Interp::eval_slice(const Value& obj, const Value* start, const Value* stop, const Value* step_v, Value* out) {
  if (obj.is_undefined()) return undefined_error(obj);
  auto as_index = [&](const Value* v, bool* given, int64_t* x) -> Status {
    *given = v && !v->is_none();
    if (!*given) return Status::Ok();
    if (!is_plain_int(*v)) return error("slice indices must be integers or None");
    *x = v->i();
    return Status::Ok();
  };
  // Code-point boundaries for strings, so slicing never splits a character.
  std::vector<size_t> offs;
  int64_t len = 0;
  if (obj.is_string()) {
    const std::string& s = obj.str();
    for (size_t i = 0; i < s.size();) {
      uint32_t cp;
      offs.push_back(i);
      i += utf8_next(s, i, &cp);
    }
    offs.push_back(s.size());
    len = int64_t(offs.size()) - 1;
  } else if (obj.is_list()) {
    len = int64_t(obj.items().size());
  } else {
    return error(fmt::format("'{}' object is not subscriptable", obj.type_name()));
  }
  bool has_start, has_stop, has_step;
  int64_t a = 0, b = 0, st = 1;
  QWEN35_TRY(as_index(start, &has_start, &a));
  QWEN35_TRY(as_index(stop, &has_stop, &b));
  QWEN35_TRY(as_index(step_v, &has_step, &st));
  if (!has_step) st = 1;
  if (st == 0) return error("slice step cannot be zero");
  // PySlice_AdjustIndices.
  auto adjust = [&](bool given, int64_t x, int64_t dflt) {
    if (!given) return dflt;
    if (x < 0) {
      x += len;
      if (x < 0) x = st < 0 ? -1 : 0;
    } else if (x >= len) {
      x = st < 0 ? len - 1 : len;
    }
    return x;
  };
  a = adjust(has_start, a, st < 0 ? len - 1 : 0);
  b = adjust(has_stop, b, st < 0 ? -1 : len);
  std::vector<int64_t> idx;
  for (int64_t i = a; st > 0 ? i < b : i > b; i += st) idx.push_back(i);
  if (obj.is_string()) {
    const std::string& s = obj.str();
    std::string r;
    r.reserve(s.size());
    for (int64_t i : idx) r.append(s, offs[size_t(i)], offs[size_t(i) + 1] - offs[size_t(i)]);
    return make_string(std::move(r), out);
  }
  std::vector<Value> items;
  items.reserve(idx.size());
  for (int64_t i : idx) items.push_back(obj.items()[size_t(i)]);
  return make_list(std::move(items), out, obj.is_tuple());
}

}  // namespace qwen35::jinja

namespace qwen35 {

ChatTemplate::~ChatTemplate() = default;

Status ChatTemplate::Parse(std::string_view source, std::unique_ptr<ChatTemplate>* out) {
  std::unique_ptr<ChatTemplate> t(new ChatTemplate());
  t->source_ = std::string(source);
  QWEN35_TRY(jinja::ParseTemplate(t->source_, jinja::ParseLimits{}, &t->body_));
  *out = std::move(t);
  return Status::Ok();
}

Status ChatTemplate::Render(const Vars& vars, const RenderLimits& limits, std::string* out) const {
  auto globals = std::make_shared<jinja::Scope>();
  globals->vars = vars;
  std::string result;
  {
    jinja::Interp in(limits);
    QWEN35_TRY(in.run(body_, globals, &result));
  }
  // Break cycles through the template's own top-level variables.
  globals->vars.clear();
  *out = std::move(result);
  return Status::Ok();
}

Status ChatTemplate::Render(const Json& vars, const RenderLimits& limits, std::string* out) const {
  Vars v;
  if (!vars.is_null() && !vars.is_object()) return Error(QWEN35_ERR_INVALID_ARG, "template variables must be a JSON object");
  for (const auto& m : vars.as_object()) v.emplace_back(m.first, jinja::Value::from_json(m.second));
  return Render(v, limits, out);
}

}  // namespace qwen35
