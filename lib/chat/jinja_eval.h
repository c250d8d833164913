// The Jinja interpreter's internals, shared by the evaluator
// (jinja_eval.cpp) and the filters/tests/methods (jinja_builtins.cpp).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/jinja_ast.h"
#include "chat/jinja_value.h"
#include "chat/template.h"

namespace qwen35::jinja {

// Variables of one scope: the template globals, a macro call, one loop
// iteration, a with-block. `if` does not open a scope (Jinja2 rules).
struct Scope {
  std::shared_ptr<Scope> parent;
  std::vector<std::pair<std::string, Value>> vars;

  const Value* find(std::string_view name) const;
  void set(const std::string& name, Value v);
};
using ScopePtr = std::shared_ptr<Scope>;

// Evaluated call arguments.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;

  // Argument `i` given positionally or by keyword `name`; nullptr if absent.
  const Value* get(size_t i, const char* name) const;
};

class Interp {
 public:
  explicit Interp(const RenderLimits& lim) : lim_(lim) {}
  ~Interp();   // breaks reference cycles through namespaces and macros

  Status run(const Body& body, ScopePtr globals, std::string* out);

  // ---- limits and value construction (every builtin goes through these)
  Status step();
  Status make_string(std::string s, Value* out);
  Status make_list(std::vector<Value> items, Value* out, bool tuple = false);
  Status make_dict(std::vector<std::pair<std::string, Value>> items, Value* out);
  Value make_namespace(std::vector<std::pair<std::string, Value>> items);
  Status check_size(size_t bytes) const;   // a string about to be built
  Status charge(size_t bytes);             // count bytes against the cumulative budget
  // str() / repr() bounded by the output limit.
  Status stringify(const Value& v, std::string* out);
  Status reprify(const Value& v, std::string* out);
  // Python json.dumps(v, ensure_ascii, indent, separators, sort_keys).
  struct DumpOpts {
    bool ensure_ascii = false;
    int indent = -1;
    std::string item_sep = ", ";
    std::string key_sep = ": ";
    bool sort_keys = false;
  };
  Status to_json(const Value& v, const DumpOpts& o, std::string* out);

  // ---- errors (name the current template line)
  Status error(const std::string& what) const;        // QWEN35_ERR_INVALID_ARG
  Status unsupported(const std::string& what) const;  // QWEN35_ERR_UNSUPPORTED
  Status undefined_error(const Value& u) const;       // use of an undefined value

  // ---- builtins (jinja_builtins.cpp)
  Status call_filter(const std::string& name, const Value& in, const Args& args, const ScopePtr& scope,
                     Value* out);
  Status call_test(const std::string& name, const Value& in, const Args& args, bool* out);
  bool has_test(const std::string& name) const;
  Status call_method(const CallableObj& m, const Args& args, Value* out);
  Status call_global(const std::string& name, const Args& args, Value* out);
  static bool is_global(std::string_view name);
  // Attribute lookup (obj.name) and subscription (obj[key]) with Jinja2's
  // fallbacks between the two.
  Status getattr(const Value& obj, const std::string& name, Value* out);
  Status getitem(const Value& obj, const Value& key, Value* out);
  // Iterate like Python (lists, dict keys, string characters).
  Status iterate(const Value& v, std::vector<Value>* out);
  Status compare(const std::string& op, const Value& a, const Value& b, bool* out);
  Status contains(const Value& container, const Value& item, bool* out);
  Status call(const Value& fn, const Args& args, Value* out);
  // Python printf-style formatting: fmt % args.
  Status percent_format(const std::string& fmt, const Value& args, Value* out);

 private:
  enum class Flow { Normal, Break, Continue };
  struct DepthGuard {
    explicit DepthGuard(Interp* in) : in_(in) { ++in_->depth_; }
    ~DepthGuard() { --in_->depth_; }
    Interp* in_;
  };
  Status enter(DepthGuard&);

  Status exec_body(const Body& body, const ScopePtr& scope, std::string* out, Flow* flow);
  Status exec(const Stmt& s, const ScopePtr& scope, std::string* out, Flow* flow);
  Status exec_for(const Stmt& s, const ScopePtr& scope, std::string* out);
  Status exec_set(const Stmt& s, const ScopePtr& scope, Value v);
  Status append_out(std::string* out, std::string_view s) const;

  Status eval(const Expr& e, const ScopePtr& scope, Value* out);
  // Filter chains whose innermost input is `input` (filter blocks).
  Status eval_filter(const Expr& e, const ScopePtr& scope, const Value* input, Value* out);
  Status eval_args(const Expr& e, const ScopePtr& scope, Args* out);
  Status eval_binary(const std::string& op, const Value& a, const Value& b, Value* out);
  Status eval_slice(const Value& obj, const Value* start, const Value* stop, const Value* step, Value* out);
  Status call_macro(const CallableObj& m, const Args& args, Value* out);
  Status to_json_rec(const Value& v, const DumpOpts& o, int level, std::string* out);

  RenderLimits lim_;
  uint64_t steps_ = 0;
  size_t total_bytes_ = 0;
  int depth_ = 0;
  int line_ = 0;
  std::vector<std::shared_ptr<DictObj>> namespaces_;
  std::vector<std::shared_ptr<CallableObj>> macros_;
};

}  // namespace qwen35::jinja
