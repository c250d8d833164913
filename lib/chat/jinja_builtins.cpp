// Jinja builtins: attribute access, filters, tests, str/dict/list methods
// and the global functions Hugging Face chat templates use. Behaviour
// follows Jinja2 3.1 + Python 3 (noted where only an approximation is made).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <functional>

#include "chat/jinja_eval.h"
#include "chat/jinja_lexer.h"
#include "chat/text_case.h"

namespace qwen35::jinja {

namespace {

bool is_plain_int(const Value& v) { return v.kind() == Value::Kind::Int || v.kind() == Value::Kind::Bool; }

const char* const kStrMethods[] = {"split",   "rsplit",  "startswith", "endswith",     "strip",        "lstrip",
                                   "rstrip",  "upper",   "lower",      "title",        "capitalize",   "replace",
                                   "find",    "rfind",   "index",      "rindex",       "count",        "join",
                                   "splitlines", "isdigit", "isalpha", "isalnum",      "isspace",      "islower",
                                   "isupper", "removeprefix", "removesuffix", "ljust", "rjust",        "center",
                                   "zfill",   "swapcase", "casefold",  "partition",    "rpartition",   "format",
                                   "format_map", "encode", "expandtabs", "isascii",   "isdecimal",    "isidentifier",
                                   "isnumeric", "isprintable", "istitle", "maketrans", "translate"};
const char* const kDictMethods[] = {"items", "keys", "values", "get", "copy", "clear", "fromkeys",
                                    "pop", "popitem", "setdefault", "update"};
const char* const kListMethods[] = {"index", "count", "copy", "append", "clear", "extend",
                                    "insert", "pop", "remove", "reverse", "sort"};

template <size_t N>
bool in_list(const char* const (&list)[N], std::string_view name) {
  for (const char* m : list)
    if (name == m) return true;
  return false;
}

Value method(const Value& self, const std::string& name) {
  auto c = std::make_shared<CallableObj>();
  c->kind = CallableObj::Kind::Method;
  c->name = name;
  c->self = self;
  return Value::callable(c);
}

Value tuple2(Value a, Value b) { return Value::list({std::move(a), std::move(b)}, true); }

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

size_t cp_count(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); ++n) {
    uint32_t cp;
    i += utf8_next(s, i, &cp);
  }
  return n;
}

// Strip code points contained in `chars` (Python str.strip(chars)).
std::string_view strip_chars(std::string_view s, std::string_view chars, bool left, bool right) {
  auto in_set = [&](size_t i, size_t n) { return chars.find(s.substr(i, n)) != std::string_view::npos; };
  size_t b = 0, e = s.size();
  if (left)
    while (b < e) {
      uint32_t cp;
      size_t n = utf8_next(s, b, &cp);
      if (!in_set(b, n)) break;
      b += n;
    }
  if (right) {
    // Walk forward to find the code-point boundaries, then trim from the end.
    std::vector<size_t> starts;
    for (size_t i = b; i < e;) {
      uint32_t cp;
      starts.push_back(i);
      i += utf8_next(s, i, &cp);
    }
    while (!starts.empty() && in_set(starts.back(), e - starts.back())) {
      e = starts.back();
      starts.pop_back();
    }
  }
  return s.substr(b, e - b);
}

// Python str.split(sep=None): runs of whitespace, no empty strings.
std::vector<std::string> split_ws(std::string_view s, int64_t maxsplit) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp;
    size_t n = utf8_next(s, i, &cp);
    if (py_isspace(cp)) {
      i += n;
      continue;
    }
    if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) {
      out.emplace_back(s.substr(i));   // Python keeps the remainder's trailing whitespace
      return out;
    }
    size_t j = i;
    while (j < s.size()) {
      size_t m = utf8_next(s, j, &cp);
      if (py_isspace(cp)) break;
      j += m;
    }
    out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Stringification and JSON

Status Interp::stringify(const Value& v, std::string* out) {
  v.to_str(out, lim_.max_output_bytes);
  return check_size(out->size());
}

Status Interp::reprify(const Value& v, std::string* out) {
  v.to_repr(out, lim_.max_output_bytes);
  return check_size(out->size());
}

Status Interp::to_json(const Value& v, const DumpOpts& o, std::string* out) {
  QWEN35_TRY(to_json_rec(v, o, 0, out));
  return check_size(out->size());
}

Status Interp::to_json_rec(const Value& v, const DumpOpts& o, int level, std::string* out) {
  if (out->size() > lim_.max_output_bytes) return check_size(out->size());
  auto newline = [&](int lvl) {
    if (o.indent < 0) return;
    out->push_back('\n');
    out->append(size_t(o.indent) * size_t(lvl), ' ');
  };
  switch (v.kind()) {
    case Value::Kind::None: out->append("null"); return Status::Ok();
    case Value::Kind::Bool: out->append(v.b() ? "true" : "false"); return Status::Ok();
    case Value::Kind::Int: out->append(std::to_string(v.i())); return Status::Ok();
    case Value::Kind::BigInt: out->append(v.str()); return Status::Ok();
    case Value::Kind::Float: out->append(json_float(v.f())); return Status::Ok();
    case Value::Kind::String: json_escape(v.str(), o.ensure_ascii, out); return Status::Ok();
    case Value::Kind::List: {
      const auto& it = v.items();
      if (it.empty()) {
        out->append("[]");
        return Status::Ok();
      }
      out->push_back('[');
      for (size_t k = 0; k < it.size(); ++k) {
        if (k) out->append(o.item_sep);
        newline(level + 1);
        QWEN35_TRY(to_json_rec(it[k], o, level + 1, out));
      }
      newline(level);
      out->push_back(']');
      return Status::Ok();
    }
    case Value::Kind::Dict: {
      std::vector<const std::pair<std::string, Value>*> order;
      for (const auto& kv : v.dict().items) order.push_back(&kv);
      if (order.empty()) {
        out->append("{}");
        return Status::Ok();
      }
      if (o.sort_keys)
        std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out->push_back('{');
      for (size_t k = 0; k < order.size(); ++k) {
        if (k) out->append(o.item_sep);
        newline(level + 1);
        json_escape(order[k]->first, o.ensure_ascii, out);
        out->append(o.key_sep);
        QWEN35_TRY(to_json_rec(order[k]->second, o, level + 1, out));
      }
      newline(level);
      out->push_back('}');
      return Status::Ok();
    }
    default:
      return error(fmt::format("Object of type {} is not JSON serializable",
                               v.is_undefined() ? "Undefined" : v.type_name()));
  }
}

// ---------------------------------------------------------------------------
// Attribute access

Status Interp::getattr(const Value& obj, const std::string& name, Value* out) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: return undefined_error(obj);
    case Value::Kind::Dict:
      // Python attributes (methods) win over keys for obj.name.
      if (in_list(kDictMethods, name)) {
        *out = method(obj, name);
      } else if (const Value* v = obj.dict().find(name)) {
        *out = *v;
      } else {
        *out = Value::undefined(fmt::format("'dict object' has no attribute '{}'", name));
      }
      return Status::Ok();
    case Value::Kind::Namespace:
      if (const Value* v = obj.dict().find(name)) *out = *v;
      else *out = Value::undefined(fmt::format("'Namespace object' has no attribute '{}'", name));
      return Status::Ok();
    case Value::Kind::String:
      if (in_list(kStrMethods, name)) *out = method(obj, name);
      else *out = Value::undefined(fmt::format("'str object' has no attribute '{}'", name));
      return Status::Ok();
    case Value::Kind::List:
      if (in_list(kListMethods, name)) *out = method(obj, name);
      else *out = Value::undefined(fmt::format("'{} object' has no attribute '{}'", obj.type_name(), name));
      return Status::Ok();
    default:
      *out = Value::undefined(fmt::format("'{} object' has no attribute '{}'", obj.type_name(), name));
      return Status::Ok();
  }
}

Status Interp::getitem(const Value& obj, const Value& key, Value* out) {
  if (obj.is_undefined()) return undefined_error(obj);
  auto missing = [&]() {
    *out = Value::undefined(fmt::format("'{} object' has no attribute '{}'", obj.type_name(), key.to_str()));
    return Status::Ok();
  };
  if (obj.is_list() || obj.is_string()) {
    if (!is_plain_int(key)) return key.is_string() ? getattr(obj, key.str(), out) : missing();
    int64_t i = key.i();
    if (obj.is_list()) {
      int64_t n = int64_t(obj.items().size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return missing();
      *out = obj.items()[size_t(i)];
      return Status::Ok();
    }
    const std::string& s = obj.str();
    std::vector<std::pair<size_t, size_t>> cps;
    for (size_t p = 0; p < s.size();) {
      uint32_t cp;
      size_t n = utf8_next(s, p, &cp);
      cps.emplace_back(p, n);
      p += n;
    }
    int64_t n = int64_t(cps.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) return missing();
    return make_string(s.substr(cps[size_t(i)].first, cps[size_t(i)].second), out);
  }
  if (obj.is_dict() || obj.is_namespace()) {
    if (key.is_string()) {
      if (const Value* v = obj.dict().find(key.str())) {
        *out = *v;
        return Status::Ok();
      }
      if (obj.is_dict()) return getattr(obj, key.str(), out);
    }
    return missing();
  }
  return missing();
}

// ---------------------------------------------------------------------------
// Tests

bool Interp::has_test(const std::string& name) const {
  static const char* const kTests[] = {
      "defined", "undefined", "none",  "boolean", "false",   "true",   "integer",   "float", "number",
      "string",  "mapping",   "iterable", "sequence", "callable", "odd", "even",    "divisibleby", "eq",
      "equalto", "==",        "ne",    "!=",      "lt",      "lessthan", "<",     "le",    "<=",
      "gt",      "greaterthan", ">",   "ge",      ">=",      "in",     "lower",     "upper", "sameas",
      "escaped", "filter",    "test"};
  return in_list(kTests, name);
}

Status Interp::call_test(const std::string& name, const Value& in, const Args& args, bool* out) {
  using K = Value::Kind;
  const K k = in.kind();
  auto arg0 = [&](const Value** v) -> Status {
    *v = args.get(0, nullptr);
    if (!*v) return error(fmt::format("test '{}' needs an argument", name));
    return Status::Ok();
  };
  if (name == "defined") *out = k != K::Undefined;
  else if (name == "undefined") *out = k == K::Undefined;
  else if (name == "none") *out = k == K::None;
  else if (name == "boolean") *out = k == K::Bool;
  else if (name == "false") *out = k == K::Bool && !in.b();
  else if (name == "true") *out = k == K::Bool && in.b();
  else if (name == "integer") *out = k == K::Int || k == K::BigInt;
  else if (name == "float") *out = k == K::Float;
  else if (name == "number") *out = in.is_number();
  else if (name == "string") *out = k == K::String;
  else if (name == "mapping") *out = k == K::Dict;
  // Jinja2's Undefined is iterable and has a length, so it passes both.
  else if (name == "iterable") *out = k == K::Undefined || k == K::String || k == K::List || k == K::Dict;
  else if (name == "sequence") *out = k == K::Undefined || k == K::String || k == K::List || k == K::Dict;
  else if (name == "callable") *out = k == K::Callable;
  else if (name == "escaped") *out = false;
  else if (name == "odd" || name == "even") {
    // Jinja2: value % 2 == 1 (floats allowed).
    if (is_plain_int(in)) *out = (in.i() % 2 != 0) == (name == "odd");
    else if (k == K::Float) *out = name == "odd" ? std::fmod(in.f(), 2.0) == 1.0 || std::fmod(in.f(), 2.0) == -1.0
                                                   : std::fmod(in.f(), 2.0) == 0.0;
    else return error(fmt::format("test '{}' needs a number, not '{}'", name, in.type_name()));
  } else if (name == "divisibleby") {
    const Value* d;
    QWEN35_TRY(arg0(&d));
    if (!is_plain_int(in) || !is_plain_int(*d) || d->i() == 0) return error("divisibleby needs non-zero integers");
    *out = in.i() % d->i() == 0;
  } else if (name == "lower" || name == "upper") {
    std::string s;
    QWEN35_TRY(stringify(in, &s));
    *out = name == "lower" ? str_islower(s) : str_isupper(s);   // Python: needs a cased character
  } else if (name == "sameas") {
    const Value* o;
    QWEN35_TRY(arg0(&o));
    if (in.kind() != o->kind()) *out = false;
    else if (k == K::None || k == K::Undefined) *out = true;
    else if (k == K::Bool) *out = in.b() == o->b();
    else if (k == K::Int) *out = in.i() == o->i();   // small ints are shared objects in CPython
    else *out = in.object() == o->object();
  } else if (name == "in") {
    const Value* o;
    QWEN35_TRY(arg0(&o));
    return contains(*o, in, out);
  } else if (name == "filter" || name == "test") {
    std::string s;
    QWEN35_TRY(stringify(in, &s));
    if (name == "test") {
      *out = has_test(s);
    } else {
      static const char* const kFilters[] = {
          "abs", "attr", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
          "first", "float", "forceescape", "indent", "int", "items", "join", "last", "length", "list",
          "lower", "map", "max", "min", "pprint", "reject", "rejectattr", "replace", "reverse", "round",
          "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique",
          "upper", "wordcount"};
      *out = in_list(kFilters, s);
    }
  } else {
    static const std::pair<const char*, const char*> kCmp[] = {
        {"eq", "=="}, {"equalto", "=="}, {"==", "=="}, {"ne", "!="}, {"!=", "!="}, {"lt", "<"},
        {"lessthan", "<"}, {"<", "<"}, {"le", "<="}, {"<=", "<="}, {"gt", ">"}, {"greaterthan", ">"},
        {">", ">"}, {"ge", ">="}, {">=", ">="}};
    for (const auto& c : kCmp) {
      if (name == c.first) {
        const Value* o;
        QWEN35_TRY(arg0(&o));
        return compare(c.second, in, *o, out);
      }
    }
    return unsupported(fmt::format("the test '{}'", name));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Global functions

bool Interp::is_global(std::string_view name) {
  return name == "range" || name == "namespace" || name == "dict" || name == "raise_exception" ||
         name == "strftime_now";
}

Status Interp::call_global(const std::string& name, const Args& args, Value* out) {
  if (name == "raise_exception") {
    std::string msg;
    if (const Value* m = args.get(0, "message")) QWEN35_TRY(stringify(*m, &msg));
    return Error(QWEN35_ERR_INVALID_ARG, "chat template: {}", msg);
  }
  if (name == "namespace" || name == "dict") {
    std::vector<std::pair<std::string, Value>> items;
    if (const Value* init = args.get(0, nullptr)) {
      if (!init->is_dict()) return error(fmt::format("{}() takes a mapping or keyword arguments", name));
      items = init->dict().items;
    }
    for (const auto& kv : args.kw) {
      bool replaced = false;
      for (auto& it : items)
        if (it.first == kv.first) {
          it.second = kv.second;
          replaced = true;
        }
      if (!replaced) items.push_back(kv);
    }
    if (name == "dict") return make_dict(std::move(items), out);
    *out = make_namespace(std::move(items));
    return Status::Ok();
  }
  if (name == "range") {
    int64_t a = 0, b = 0, st = 1;
    std::vector<int64_t> xs;
    for (const Value& v : args.pos) {
      if (!is_plain_int(v)) return error("range() arguments must be integers");
      xs.push_back(v.i());
    }
    if (xs.size() == 1) b = xs[0];
    else if (xs.size() == 2 || xs.size() == 3) {
      a = xs[0];
      b = xs[1];
      if (xs.size() == 3) st = xs[2];
    } else {
      return error("range() takes 1 to 3 arguments");
    }
    if (st == 0) return error("range() step must not be zero");
    // Count first so a huge range fails before allocating.
    double n = st > 0 ? std::ceil((double(b) - double(a)) / double(st)) : std::ceil((double(a) - double(b)) / double(-st));
    if (n > double(lim_.max_list)) return error(fmt::format("range() of {} elements exceeds the limit of {}", n, lim_.max_list));
    std::vector<Value> items;
    for (int64_t i = a; st > 0 ? i < b : i > b; i += st) items.push_back(Value::integer(i));
    return make_list(std::move(items), out);
  }
  if (name == "strftime_now") {
    const Value* f = args.get(0, "format");
    if (!f || !f->is_string()) return error("strftime_now() needs a format string");
    std::time_t now = std::time(nullptr);
    std::tm tm{};
#ifdef _WIN32
    localtime_s(&tm, &now);
#else
    localtime_r(&now, &tm);
#endif
    char buf[256];
    size_t n = std::strftime(buf, sizeof buf, f->str().c_str(), &tm);
    return make_string(std::string(buf, n), out);
  }
  return error(fmt::format("'{}' is undefined", name));
}

// ---------------------------------------------------------------------------
// Methods of str, dict, list and the loop object

Status Interp::call_method(const CallableObj& m, const Args& args, Value* out) {
  const Value& self = m.self;
  const std::string& name = m.name;
  if (m.loop_index0 >= 0) {   // loop.cycle(a, b, ...)
    if (args.pos.empty()) return error("loop.cycle() needs at least one argument");
    *out = args.pos[size_t(m.loop_index0) % args.pos.size()];
    return Status::Ok();
  }
  auto str_arg = [&](size_t i, const char* kw, const Value** v) -> Status {
    *v = args.get(i, kw);
    if (*v && !(*v)->is_string() && !(*v)->is_none())
      return error(fmt::format("{}() argument must be a string, not '{}'", name, (*v)->type_name()));
    if (*v && (*v)->is_none()) *v = nullptr;
    return Status::Ok();
  };
  if (self.is_dict()) {
    const auto& items = self.dict().items;
    if (name == "items" || name == "keys" || name == "values") {
      std::vector<Value> r;
      for (const auto& kv : items)
        r.push_back(name == "items" ? tuple2(Value::string(kv.first), kv.second)
                                    : name == "keys" ? Value::string(kv.first) : kv.second);
      return make_list(std::move(r), out);
    }
    if (name == "get") {
      const Value* k = args.get(0, "key");
      const Value* d = args.get(1, "default");
      const Value* v = k && k->is_string() ? self.dict().find(k->str()) : nullptr;
      *out = v ? *v : d ? *d : Value::none();
      return Status::Ok();
    }
    if (name == "copy") {
      *out = self;
      return Status::Ok();
    }
    return error(fmt::format("dict.{}() modifies the dict; chat templates are rendered immutably", name));
  }
  if (self.is_list()) {
    const Value* x = args.get(0, nullptr);
    if (name == "count") {
      int64_t c = 0;
      for (const Value& v : self.items()) c += x && v.equals(*x);
      *out = Value::integer(c);
      return Status::Ok();
    }
    if (name == "index") {
      for (size_t k = 0; k < self.items().size(); ++k)
        if (x && self.items()[k].equals(*x)) {
          *out = Value::integer(int64_t(k));
          return Status::Ok();
        }
      return error("list.index(x): x not in list");
    }
    if (name == "copy") {
      *out = self;
      return Status::Ok();
    }
    return error(fmt::format("list.{}() modifies the list; chat templates are rendered immutably", name));
  }
  if (!self.is_string()) return error(fmt::format("'{}' has no method '{}'", self.type_name(), name));
  const std::string& s = self.str();
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const Value* chars;
    QWEN35_TRY(str_arg(0, "chars", &chars));
    bool l = name != "rstrip", r = name != "lstrip";
    std::string_view res = chars ? strip_chars(s, chars->str(), l, r) : py_strip(s, l, r);
    return make_string(std::string(res), out);
  }
  if (name == "split" || name == "rsplit") {
    const Value* sep;
    QWEN35_TRY(str_arg(0, "sep", &sep));
    const Value* mx = args.get(1, "maxsplit");
    int64_t maxsplit = mx && is_plain_int(*mx) ? mx->i() : -1;
    std::vector<std::string> parts;
    if (!sep) {
      if (name == "rsplit" && maxsplit >= 0) return unsupported("rsplit() with maxsplit and no separator");
      parts = split_ws(s, maxsplit);
    } else {
      const std::string& d = sep->str();
      if (d.empty()) return error("empty separator");
      if (name == "split") {
        size_t p = 0;
        for (;;) {
          size_t q = s.find(d, p);
          if (q == std::string::npos || (maxsplit >= 0 && int64_t(parts.size()) == maxsplit)) {
            parts.push_back(s.substr(p));
            break;
          }
          parts.push_back(s.substr(p, q - p));
          p = q + d.size();
        }
      } else {
        size_t end = s.size();
        for (;;) {
          size_t q = end >= d.size() ? s.rfind(d, end - d.size()) : std::string::npos;
          if (q == std::string::npos || (maxsplit >= 0 && int64_t(parts.size()) == maxsplit)) {
            parts.push_back(s.substr(0, end));
            break;
          }
          parts.push_back(s.substr(q + d.size(), end - q - d.size()));
          end = q;
        }
        std::reverse(parts.begin(), parts.end());
      }
    }
    std::vector<Value> items;
    items.reserve(parts.size());
    for (auto& p : parts) items.push_back(Value::string(std::move(p)));
    QWEN35_TRY(charge(s.size()));
    return make_list(std::move(items), out);
  }
  if (name == "startswith" || name == "endswith") {
    const Value* p = args.get(0, nullptr);
    if (!p) return error(fmt::format("{}() needs an argument", name));
    if (args.pos.size() > 1) return unsupported(fmt::format("{}() with start/end", name));
    std::vector<std::string> cands;
    if (p->is_string()) {
      cands.push_back(p->str());
    } else if (p->is_list()) {
      for (const Value& v : p->items()) {
        if (!v.is_string()) return error(fmt::format("{}() tuple items must be strings", name));
        cands.push_back(v.str());
      }
    } else {
      return error(fmt::format("{}() argument must be str or a tuple of str", name));
    }
    bool r = false;
    for (const auto& c : cands) {
      if (c.size() > s.size()) continue;
      r |= name == "startswith" ? s.compare(0, c.size(), c) == 0 : s.compare(s.size() - c.size(), c.size(), c) == 0;
    }
    *out = Value::boolean(r);
    return Status::Ok();
  }
  if (name == "upper") return make_string(str_upper(s), out);
  if (name == "lower" || name == "casefold") return make_string(str_lower(s), out);
  if (name == "title") return make_string(str_title(s), out);
  if (name == "capitalize") return make_string(str_capitalize(s), out);
  if (name == "swapcase") return make_string(str_swapcase(s), out);
  if (name == "replace") {
    const Value *o, *n;
    QWEN35_TRY(str_arg(0, "old", &o));
    QWEN35_TRY(str_arg(1, "new", &n));
    if (!o || !n) return error("replace() needs two string arguments");
    const Value* cnt = args.get(2, "count");
    int64_t count = cnt && is_plain_int(*cnt) ? cnt->i() : -1;
    const std::string& from = o->str();
    const std::string& to = n->str();
    if (from.empty()) {   // Python inserts `to` at every character boundary
      std::string r;
      int64_t done = 0;
      size_t i = 0;
      for (;;) {
        if (count < 0 || done < count) {
          QWEN35_TRY(check_size(r.size() + to.size() + s.size()));
          r += to;
          ++done;
        }
        if (i >= s.size()) break;
        uint32_t cp;
        size_t len = utf8_next(s, i, &cp);
        r.append(s, i, len);
        i += len;
      }
      return make_string(std::move(r), out);
    }
    size_t hits = 0;
    for (size_t p = s.find(from); p != std::string::npos && (count < 0 || int64_t(hits) < count);
         p = s.find(from, p + from.size()))
      ++hits;
    QWEN35_TRY(check_size(s.size() + hits * to.size()));
    std::string r;
    size_t p = 0, done = 0;
    for (;;) {
      size_t q = done < hits ? s.find(from, p) : std::string::npos;
      if (q == std::string::npos) {
        r.append(s, p, std::string::npos);
        break;
      }
      r.append(s, p, q - p);
      r += to;
      p = q + from.size();
      ++done;
    }
    return make_string(std::move(r), out);
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    const Value* sub;
    QWEN35_TRY(str_arg(0, "sub", &sub));
    if (!sub) return error(fmt::format("{}() needs a string argument", name));
    if (args.pos.size() > 1) return unsupported(fmt::format("{}() with start/end", name));
    const std::string& t = sub->str();
    if (name == "count") {
      if (t.empty()) {
        *out = Value::integer(int64_t(cp_count(s)) + 1);
        return Status::Ok();
      }
      int64_t c = 0;
      for (size_t p = s.find(t); p != std::string::npos; p = s.find(t, p + t.size())) ++c;
      *out = Value::integer(c);
      return Status::Ok();
    }
    size_t p = name[0] == 'r' ? s.rfind(t) : s.find(t);
    if (p == std::string::npos) {
      if (name == "index" || name == "rindex") return error("substring not found");
      *out = Value::integer(-1);
      return Status::Ok();
    }
    *out = Value::integer(int64_t(cp_count(std::string_view(s).substr(0, p))));   // code-point index
    return Status::Ok();
  }
  if (name == "join") {
    const Value* seq = args.get(0, "iterable");
    if (!seq) return error("join() needs an argument");
    std::vector<Value> items;
    QWEN35_TRY(iterate(*seq, &items));
    size_t total = 0;
    for (size_t k = 0; k < items.size(); ++k) {
      if (!items[k].is_string())
        return error(fmt::format("sequence item {}: expected str instance, {} found", k, items[k].type_name()));
      total += items[k].str().size() + (k ? s.size() : 0);
    }
    QWEN35_TRY(check_size(total));
    std::string r;
    for (size_t k = 0; k < items.size(); ++k) {
      if (k) r += s;
      r += items[k].str();
    }
    return make_string(std::move(r), out);
  }
  if (name == "splitlines") {
    const Value* keep = args.get(0, "keepends");
    bool keepends = keep && keep->truthy();
    std::vector<Value> items;
    size_t start = 0, i = 0;
    while (i < s.size()) {
      uint32_t cp;
      size_t n = utf8_next(s, i, &cp);
      bool brk = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || (cp >= 0x1C && cp <= 0x1E) ||
                 cp == 0x85 || cp == 0x2028 || cp == 0x2029;
      if (!brk) {
        i += n;
        continue;
      }
      size_t end = i;
      i += n;
      if (cp == '\r' && i < s.size() && s[i] == '\n') ++i;
      items.push_back(Value::string(s.substr(start, (keepends ? i : end) - start)));
      start = i;
    }
    if (start < s.size()) items.push_back(Value::string(s.substr(start)));
    QWEN35_TRY(charge(s.size()));
    return make_list(std::move(items), out);
  }
  if (name == "removeprefix" || name == "removesuffix") {
    const Value* a;
    QWEN35_TRY(str_arg(0, nullptr, &a));
    if (!a) return error(fmt::format("{}() needs a string argument", name));
    const std::string& t = a->str();
    if (name == "removeprefix" && s.compare(0, t.size(), t) == 0) return make_string(s.substr(t.size()), out);
    if (name == "removesuffix" && t.size() <= s.size() && s.compare(s.size() - t.size(), t.size(), t) == 0 &&
        !t.empty())
      return make_string(s.substr(0, s.size() - t.size()), out);
    *out = self;
    return Status::Ok();
  }
  if (name == "islower" || name == "isupper") {
    *out = Value::boolean(name == "islower" ? str_islower(s) : str_isupper(s));
    return Status::Ok();
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace") {
    // Python's Unicode predicates, approximated: ASCII digits; letters are
    // ASCII letters and cased characters; whitespace is Python's set.
    bool r = !s.empty();
    for (size_t i = 0; i < s.size() && r;) {
      uint32_t cp;
      i += utf8_next(s, i, &cp);
      bool d = cp >= '0' && cp <= '9';
      bool a = cp < 0x80 ? is_alpha(char(cp)) : cp_is_cased(cp);
      if (name == "isdigit") r = d;
      else if (name == "isalpha") r = a;
      else if (name == "isalnum") r = a || d;
      else r = py_isspace(cp);
    }
    *out = Value::boolean(r);
    return Status::Ok();
  }
  if (name == "ljust" || name == "rjust" || name == "center" || name == "zfill") {
    const Value* w = args.get(0, "width");
    if (!w || !is_plain_int(*w)) return error(fmt::format("{}() needs an integer width", name));
    int64_t len = int64_t(cp_count(s));
    int64_t pad = std::max<int64_t>(0, w->i() - len);
    QWEN35_TRY(check_size(s.size() + size_t(pad)));
    std::string fill = " ";
    if (const Value* f = args.get(1, "fillchar"); f && f->is_string() && cp_count(f->str()) == 1) fill = f->str();
    auto rep = [&](int64_t n) {
      std::string r;
      for (int64_t k = 0; k < n; ++k) r += fill;
      return r;
    };
    if (name == "ljust") return make_string(s + rep(pad), out);
    if (name == "rjust") return make_string(rep(pad) + s, out);
    if (name == "zfill") {
      fill = "0";
      bool sign = !s.empty() && (s[0] == '-' || s[0] == '+');
      return make_string(sign ? s.substr(0, 1) + rep(pad) + s.substr(1) : rep(pad) + s, out);
    }
    // Python center(): the extra space goes left when the padding is odd and the width is odd.
    int64_t left = pad / 2 + (pad & w->i() & 1);
    return make_string(rep(left) + s + rep(pad - left), out);
  }
  return unsupported(fmt::format("the string method '{}'", name));
}

// ---------------------------------------------------------------------------
// printf-style formatting ("%s: %d" % (a, b)), Python semantics for the
// conversions s r d i u x X o c f F e E g G and the flags - + space 0.

Status Interp::percent_format(const std::string& f, const Value& args, Value* out) {
  // A tuple supplies positional arguments, a mapping %(name)s lookups (and
  // itself as the single positional argument), anything else is one argument.
  // Python treats any argument with __getitem__ (list, dict, Jinja's
  // Undefined; not str or tuple) as a mapping: unused arguments are fine then.
  std::vector<Value> pos;
  const Value* mapping = args.is_dict() ? &args : nullptr;
  const bool mapping_like = args.is_dict() || (args.is_list() && !args.is_tuple()) || args.is_undefined();
  if (args.is_tuple()) pos = args.items();
  else pos.push_back(args);
  size_t next = 0;
  std::string r;
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] != '%') {
      r.push_back(f[i]);
      continue;
    }
    if (++i >= f.size()) return error("incomplete format");
    if (f[i] == '%') {
      r.push_back('%');
      continue;
    }
    const Value* arg = nullptr;
    if (f[i] == '(') {
      size_t close = f.find(')', i);
      if (close == std::string::npos) return error("incomplete format key");
      if (!mapping) return error("format requires a mapping");
      arg = mapping->dict().find(f.substr(i + 1, close - i - 1));
      if (!arg) return error(fmt::format("format key '{}' not found", f.substr(i + 1, close - i - 1)));
      i = close + 1;
    }
    bool left = false, plus = false, space = false, zero = false;
    for (; i < f.size() && std::strchr("-+ #0", f[i]) && f[i]; ++i) {
      left |= f[i] == '-';
      plus |= f[i] == '+';
      space |= f[i] == ' ';
      zero |= f[i] == '0';
      if (f[i] == '#') return unsupported("the '#' flag in '%' formatting");
    }
    size_t width = 0, prec = SIZE_MAX;
    if (i < f.size() && f[i] == '*') return unsupported("'*' widths in '%' formatting");
    for (; i < f.size() && f[i] >= '0' && f[i] <= '9'; ++i) width = std::min<size_t>(width * 10 + size_t(f[i] - '0'), 100000);
    if (i < f.size() && f[i] == '.') {
      prec = 0;
      for (++i; i < f.size() && f[i] >= '0' && f[i] <= '9'; ++i) prec = std::min<size_t>(prec * 10 + size_t(f[i] - '0'), 1000);
    }
    if (i < f.size() && (f[i] == 'l' || f[i] == 'h' || f[i] == 'L')) ++i;   // length modifiers are ignored
    if (i >= f.size()) return error("incomplete format");
    const char conv = f[i];
    if (!arg) {
      if (next >= pos.size()) return error("not enough arguments for format string");
      arg = &pos[next++];
    }
    if (arg->is_undefined() && conv != 's') return undefined_error(*arg);
    std::string body, sign;
    bool numeric = false;
    switch (conv) {
      case 's':
      case 'r': {
        QWEN35_TRY(conv == 's' ? stringify(*arg, &body) : reprify(*arg, &body));
        if (prec != SIZE_MAX) {   // precision truncates to that many characters
          size_t b = 0;
          for (size_t n = 0; b < body.size() && n < prec; ++n) {
            uint32_t cp;
            b += utf8_next(body, b, &cp);
          }
          body.resize(b);
        }
        break;
      }
      case 'd': case 'i': case 'u': case 'x': case 'X': case 'o': case 'c': {
        int64_t v;
        if (is_plain_int(*arg)) v = arg->i();
        else if (arg->kind() == Value::Kind::Float && (conv == 'd' || conv == 'i' || conv == 'u') &&
                 std::isfinite(arg->f()) && std::fabs(arg->f()) < 9.2e18)
          v = int64_t(arg->f());
        else if (conv == 'c' && arg->is_string() && cp_count(arg->str()) == 1) {
          body = arg->str();
          break;
        } else
          return error(fmt::format("%{} format: a number is required, not {}", conv, arg->type_name()));
        if (conv == 'c') {
          if (v < 0 || v > 0x10FFFF) return error("%c arg not in range(0x110000)");
          body.clear();
          append_utf8(uint32_t(v), &body);
          break;
        }
        numeric = true;
        uint64_t mag = v < 0 ? uint64_t(0) - uint64_t(v) : uint64_t(v);
        body = conv == 'x' ? fmt::format("{:x}", mag) : conv == 'X' ? fmt::format("{:X}", mag)
                           : conv == 'o' ? fmt::format("{:o}", mag) : std::to_string(mag);
        if (prec != SIZE_MAX && body.size() < prec) body.insert(0, prec - body.size(), '0');
        sign = v < 0 ? "-" : plus ? "+" : space ? " " : "";
        break;
      }
      case 'f': case 'F': case 'e': case 'E': case 'g': case 'G': {
        if (!arg->is_number()) return error(fmt::format("must be real number, not {}", arg->type_name()));
        double v = arg->f();
        int p = int(prec == SIZE_MAX ? 6 : prec);
        double mag = std::fabs(v);
        if (std::isnan(v)) body = conv >= 'a' ? "nan" : "NAN";
        else if (std::isinf(v)) body = conv >= 'a' ? "inf" : "INF";
        else if (conv == 'f' || conv == 'F') body = fmt::format("{:.{}f}", mag, p);
        else if (conv == 'e') body = fmt::format("{:.{}e}", mag, p);
        else if (conv == 'E') body = fmt::format("{:.{}E}", mag, p);
        else if (conv == 'g') body = fmt::format("{:.{}g}", mag, std::max(p, 1));
        else body = fmt::format("{:.{}G}", mag, std::max(p, 1));
        numeric = true;
        sign = std::signbit(v) && !std::isnan(v) ? "-" : plus ? "+" : space ? " " : "";
        break;
      }
      default: return unsupported(fmt::format("the '%{}' conversion", conv));
    }
    size_t len = cp_count(body) + sign.size();
    QWEN35_TRY(check_size(r.size() + body.size() + sign.size() + width));
    if (len >= width) {
      r += sign + body;
    } else if (left) {
      r += sign + body + std::string(width - len, ' ');
    } else if (zero && numeric) {
      r += sign + std::string(width - len, '0') + body;
    } else {
      r += std::string(width - len, ' ') + sign + body;
    }
  }
  if (!mapping_like && next < pos.size()) return error("not all arguments converted during string formatting");
  return make_string(std::move(r), out);
}

}  // namespace qwen35::jinja
