// Runtime values of the Jinja interpreter, with Python semantics where the
// templates can observe them (str(), truthiness, equality, repr()).
// Strings, lists and dicts are immutable and shared (Hugging Face renders in
// an ImmutableSandboxedEnvironment); only namespace() objects are mutable.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "json.h"
#include "status.h"

namespace qwen35::jinja {

class Value;
struct Stmt;
struct Scope;

struct Object {
  virtual ~Object() = default;
};

struct StrObj : Object {
  std::string s;
};

struct ListObj;
struct DictObj;
struct CallableObj;

class Value {
 public:
  enum class Kind : uint8_t { Undefined, None, Bool, Int, BigInt, Float, String, List, Dict, Namespace, Callable };

  Value() = default;   // undefined
  static Value undefined(std::string hint);
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value big_integer(std::string digits);
  static Value number(double f);
  static Value string(std::string s);
  static Value list(std::vector<Value> items, bool tuple = false);
  static Value dict(std::vector<std::pair<std::string, Value>> items);
  static Value ns(std::shared_ptr<DictObj> d);
  static Value callable(std::shared_ptr<const CallableObj> c);
  static Value from_json(const Json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int || kind_ == Kind::Bool; }   // Python: bool is an int
  bool is_number() const { return is_int() || kind_ == Kind::Float || kind_ == Kind::BigInt; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_tuple() const { return kind_ == Kind::List && tuple_; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_namespace() const { return kind_ == Kind::Namespace; }
  bool is_callable() const { return kind_ == Kind::Callable; }

  bool b() const { return b_; }
  int64_t i() const { return kind_ == Kind::Bool ? int64_t(b_) : i_; }
  double f() const;   // any number as double
  const std::string& str() const;   // String text, BigInt digits, Undefined hint
  const std::vector<Value>& items() const;
  const DictObj& dict() const;
  DictObj& ns_dict() const;           // Namespace (mutable)
  const CallableObj& fn() const;
  std::shared_ptr<const Object> object() const { return obj_; }
  int depth() const { return depth_; }   // container nesting (0 for scalars)

  // Python truthiness.
  bool truthy() const;
  // Python str(): None -> "None", True -> "True", 1.5 -> "1.5", lists and
  // dicts as their repr; undefined -> "". Appends to *out.
  // Stops early once *out is longer than `limit` (callers check).
  void to_str(std::string* out, size_t limit = SIZE_MAX) const;
  std::string to_str() const;
  // Python repr() ('single-quoted' strings).
  void to_repr(std::string* out, size_t limit = SIZE_MAX) const;
  // Python ==.
  bool equals(const Value& o) const;
  // "str", "int", "list", ... for error messages.
  const char* type_name() const;

 private:
  Kind kind_ = Kind::Undefined;
  bool tuple_ = false;
  uint16_t depth_ = 0;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0.0;
  std::shared_ptr<const Object> obj_;
};

struct ListObj : Object {
  std::vector<Value> items;
};

// Insertion-ordered string-keyed mapping (dicts and namespaces).
struct DictObj : Object {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(std::string_view key) const;
  void set(std::string key, Value v);
};

// Something callable: a macro, a global function, or a method bound to a value.
struct CallableObj : Object {
  enum class Kind { Macro, Global, Method };
  Kind kind = Kind::Global;
  std::string name;
  const Stmt* macro = nullptr;         // Macro: its definition
  std::shared_ptr<Scope> closure;      // Macro: the scope it was defined in
  Value self;                          // Method: the receiver
  int64_t loop_index0 = -1;            // Method "cycle" of a loop object
};

// Values nested deeper than this are refused (guards recursive printing and
// destruction against hostile templates).
constexpr int kMaxValueDepth = 300;

// Python repr of a str.
void py_str_repr(std::string_view s, std::string* out);

}  // namespace qwen35::jinja
