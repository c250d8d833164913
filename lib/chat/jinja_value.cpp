// Jinja runtime values with Python semantics (jinja_value.h).
#include "chat/jinja_value.h"

#include <algorithm>

#include "chat/jinja_lexer.h"

namespace qwen35::jinja {

const Value* DictObj::find(std::string_view key) const {
  for (const auto& kv : items)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

void DictObj::set(std::string key, Value v) {
  for (auto& kv : items)
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  items.emplace_back(std::move(key), std::move(v));
}

Value Value::undefined(std::string hint) {
  Value v;
  auto s = std::make_shared<StrObj>();
  s->s = std::move(hint);
  v.obj_ = std::move(s);
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = Kind::None;
  return v;
}

Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::Bool;
  v.b_ = b;
  return v;
}

Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::Int;
  v.i_ = i;
  return v;
}

Value Value::big_integer(std::string digits) {
  Value v;
  v.kind_ = Kind::BigInt;
  auto s = std::make_shared<StrObj>();
  s->s = std::move(digits);
  v.obj_ = std::move(s);
  return v;
}

Value Value::number(double f) {
  Value v;
  v.kind_ = Kind::Float;
  v.f_ = f;
  return v;
}

Value Value::string(std::string s) {
  Value v;
  v.kind_ = Kind::String;
  auto o = std::make_shared<StrObj>();
  o->s = std::move(s);
  v.obj_ = std::move(o);
  return v;
}

Value Value::list(std::vector<Value> items, bool tuple) {
  Value v;
  v.kind_ = Kind::List;
  v.tuple_ = tuple;
  int d = 0;
  for (const Value& x : items) d = std::max(d, int(x.depth_));
  v.depth_ = uint16_t(std::min(d + 1, 0xFFFF));
  auto o = std::make_shared<ListObj>();
  o->items = std::move(items);
  v.obj_ = std::move(o);
  return v;
}

Value Value::dict(std::vector<std::pair<std::string, Value>> items) {
  Value v;
  v.kind_ = Kind::Dict;
  int d = 0;
  for (const auto& kv : items) d = std::max(d, int(kv.second.depth_));
  v.depth_ = uint16_t(std::min(d + 1, 0xFFFF));
  auto o = std::make_shared<DictObj>();
  o->items = std::move(items);
  v.obj_ = std::move(o);
  return v;
}

Value Value::ns(std::shared_ptr<DictObj> d) {
  Value v;
  v.kind_ = Kind::Namespace;
  v.depth_ = 1;
  v.obj_ = std::move(d);
  return v;
}

Value Value::callable(std::shared_ptr<const CallableObj> c) {
  Value v;
  v.kind_ = Kind::Callable;
  v.obj_ = std::move(c);
  return v;
}

Value Value::from_json(const Json& j) {
  switch (j.type()) {
    case Json::Type::Null: return none();
    case Json::Type::Bool: return boolean(j.as_bool());
    case Json::Type::Int: return j.is_big_int() ? big_integer(j.as_string()) : integer(j.as_int());
    case Json::Type::Double: return number(j.as_double());
    case Json::Type::String: return string(j.as_string());
    case Json::Type::Array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const Json& x : j.as_array()) items.push_back(from_json(x));
      return list(std::move(items));
    }
    case Json::Type::Object: {
      std::vector<std::pair<std::string, Value>> items;
      items.reserve(j.size());
      for (const auto& m : j.as_object()) items.emplace_back(m.first, from_json(m.second));
      return dict(std::move(items));
    }
  }
  return none();
}

double Value::f() const {
  switch (kind_) {
    case Kind::Float: return f_;
    case Kind::Int: return double(i_);
    case Kind::Bool: return b_ ? 1.0 : 0.0;
    case Kind::BigInt: return digits_to_double(str());
    default: return 0.0;
  }
}

const std::string& Value::str() const {
  static const std::string kEmpty;
  if (!obj_ || (kind_ != Kind::String && kind_ != Kind::BigInt && kind_ != Kind::Undefined)) return kEmpty;
  return static_cast<const StrObj*>(obj_.get())->s;
}

const std::vector<Value>& Value::items() const {
  static const std::vector<Value> kEmpty;
  if (kind_ != Kind::List) return kEmpty;
  return static_cast<const ListObj*>(obj_.get())->items;
}

const DictObj& Value::dict() const {
  static const DictObj kEmpty;
  if (kind_ != Kind::Dict && kind_ != Kind::Namespace) return kEmpty;
  return *static_cast<const DictObj*>(obj_.get());
}

DictObj& Value::ns_dict() const {
  // Namespaces are created mutable (Value::ns takes a non-const DictObj).
  return *static_cast<DictObj*>(const_cast<Object*>(obj_.get()));
}

const CallableObj& Value::fn() const { return *static_cast<const CallableObj*>(obj_.get()); }

bool Value::truthy() const {
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool: return b_;
    case Kind::Int: return i_ != 0;
    case Kind::BigInt: return true;
    case Kind::Float: return f_ != 0.0;
    case Kind::String: return !str().empty();
    case Kind::List: return !items().empty();
    case Kind::Dict: return !dict().items.empty();
    case Kind::Namespace:
    case Kind::Callable: return true;
  }
  return false;
}

const char* Value::type_name() const {
  switch (kind_) {
    case Kind::Undefined: return "undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int:
    case Kind::BigInt: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return tuple_ ? "tuple" : "list";
    case Kind::Dict: return "dict";
    case Kind::Namespace: return "Namespace";
    case Kind::Callable: return "function";
  }
  return "object";
}

namespace {

// Code points Python's str.isprintable() rejects, reduced to the ones real
// text contains (controls, format characters, separators other than ' ').
bool py_unprintable(uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) return true;
  if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F) ||
      (cp >= 0x205F && cp <= 0x2064) || cp == 0x3000 || cp == 0xFEFF)
    return true;
  if (cp >= 0xE000 && cp <= 0xF8FF) return true;   // private use
  if (cp >= 0xD800 && cp <= 0xDFFF) return true;
  return false;
}

void repr_depth(const Value& v, std::string* out, int depth, size_t limit);

void str_depth(const Value& v, std::string* out, int depth, size_t limit) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return;
    case Value::Kind::None: out->append("None"); return;
    case Value::Kind::Bool: out->append(v.b() ? "True" : "False"); return;
    case Value::Kind::Int: out->append(std::to_string(v.i())); return;
    case Value::Kind::BigInt: out->append(v.str()); return;
    case Value::Kind::Float: out->append(py_float_repr(v.f())); return;
    case Value::Kind::String: out->append(v.str()); return;
    default: repr_depth(v, out, depth, limit); return;
  }
}

void repr_depth(const Value& v, std::string* out, int depth, size_t limit) {
  if (out->size() > limit) return;
  if (depth > 2 * kMaxValueDepth) {
    out->append("...");
    return;
  }
  switch (v.kind()) {
    case Value::Kind::Undefined: return;
    case Value::Kind::String: py_str_repr(v.str(), out); return;
    case Value::Kind::List: {
      const auto& it = v.items();
      out->push_back(v.is_tuple() ? '(' : '[');
      for (size_t k = 0; k < it.size(); ++k) {
        if (k) out->append(", ");
        repr_depth(it[k], out, depth + 1, limit);
      }
      if (v.is_tuple() && it.size() == 1) out->push_back(',');
      out->push_back(v.is_tuple() ? ')' : ']');
      return;
    }
    case Value::Kind::Dict:
    case Value::Kind::Namespace: {
      if (v.is_namespace()) out->append("<Namespace ");
      out->push_back('{');
      const auto& it = v.dict().items;
      for (size_t k = 0; k < it.size(); ++k) {
        if (k) out->append(", ");
        py_str_repr(it[k].first, out);
        out->append(": ");
        repr_depth(it[k].second, out, depth + 1, limit);
      }
      out->push_back('}');
      if (v.is_namespace()) out->push_back('>');
      return;
    }
    case Value::Kind::Callable: {
      const CallableObj& c = v.fn();
      out->append(c.kind == CallableObj::Kind::Macro ? "<macro " : c.kind == CallableObj::Kind::Global
                                                                       ? "<function "
                                                                       : "<built-in method ");
      out->append(c.name);
      out->push_back('>');
      return;
    }
    default: str_depth(v, out, depth, limit); return;
  }
}

bool equals_depth(const Value& a, const Value& b, int depth) {
  using K = Value::Kind;
  if (depth > 2 * kMaxValueDepth) return false;
  if (a.is_number() && b.is_number()) {
    if (a.kind() == K::BigInt || b.kind() == K::BigInt)
      return a.kind() == b.kind() && a.str() == b.str();
    if (a.kind() == K::Float || b.kind() == K::Float) return a.f() == b.f();
    return a.i() == b.i();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::Undefined:
    case K::None: return true;
    case K::String: return a.str() == b.str();
    case K::List: {
      if (a.is_tuple() != b.is_tuple()) return false;
      const auto& x = a.items();
      const auto& y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t k = 0; k < x.size(); ++k)
        if (!equals_depth(x[k], y[k], depth + 1)) return false;
      return true;
    }
    case K::Dict: {
      const auto& x = a.dict().items;
      if (x.size() != b.dict().items.size()) return false;
      for (const auto& kv : x) {
        const Value* o = b.dict().find(kv.first);
        if (!o || !equals_depth(kv.second, *o, depth + 1)) return false;
      }
      return true;
    }
    default: return a.object() == b.object();   // identity
  }
}

}  // namespace

void py_str_repr(std::string_view s, std::string* out) {
  bool has_single = s.find('\'') != std::string_view::npos;
  bool has_double = s.find('"') != std::string_view::npos;
  char q = has_single && !has_double ? '"' : '\'';
  out->push_back(q);
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    size_t n = utf8_next(s, i, &cp);
    if (cp == uint32_t(q) || cp == '\\') {
      out->push_back('\\');
      out->push_back(char(cp));
    } else if (cp == '\n') {
      out->append("\\n");
    } else if (cp == '\r') {
      out->append("\\r");
    } else if (cp == '\t') {
      out->append("\\t");
    } else if (n == 1 && cp == 0xFFFD && uint8_t(s[i]) >= 0x80) {
      out->push_back(s[i]);   // malformed byte: keep it as is
    } else if (py_unprintable(cp)) {
      out->append(cp < 0x100 ? fmt::format("\\x{:02x}", cp) : fmt::format("\\u{:04x}", cp));
    } else {
      out->append(s.substr(i, n));
    }
    i += n;
  }
  out->push_back(q);
}

void Value::to_str(std::string* out, size_t limit) const { str_depth(*this, out, 0, limit); }

std::string Value::to_str() const {
  std::string s;
  to_str(&s);
  return s;
}

void Value::to_repr(std::string* out, size_t limit) const {
  if (kind_ == Kind::Undefined) return;
  repr_depth(*this, out, 0, limit);
}

bool Value::equals(const Value& o) const { return equals_depth(*this, o, 0); }

}  // namespace qwen35::jinja
