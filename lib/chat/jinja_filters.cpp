// Jinja filters (jinja2.filters, plus Hugging Face's `tojson`).
#include <algorithm>
#include <charconv>
#include <cmath>

#include "chat/jinja_eval.h"
#include "chat/jinja_lexer.h"
#include "chat/text_case.h"

namespace qwen35::jinja {

namespace {

bool is_plain_int(const Value& v) { return v.kind() == Value::Kind::Int || v.kind() == Value::Kind::Bool; }

std::string ascii_lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return s;
}

size_t cp_count(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); ++n) {
    uint32_t cp;
    i += utf8_next(s, i, &cp);
  }
  return n;
}

// Python int(str): optional sign, digits with single '_' separators,
// surrounding whitespace.
bool parse_py_int(std::string_view s, int64_t* out) {
  s = py_strip(s, true, true);
  if (s.empty()) return false;
  bool neg = false;
  size_t i = 0;
  if (s[0] == '+' || s[0] == '-') {
    neg = s[0] == '-';
    ++i;
  }
  if (i >= s.size()) return false;
  uint64_t v = 0;
  bool prev_digit = false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (c == '_' && prev_digit && i + 1 < s.size()) {
      prev_digit = false;
      continue;
    }
    if (c < '0' || c > '9') return false;
    if (v > (uint64_t(INT64_MAX) - uint64_t(c - '0')) / 10) return false;
    v = v * 10 + uint64_t(c - '0');
    prev_digit = true;
  }
  if (!prev_digit) return false;
  *out = neg ? -int64_t(v) : int64_t(v);
  return true;
}

bool parse_py_float(std::string_view s, double* out) {
  std::string t(py_strip(s, true, true));
  if (t.empty()) return false;
  std::string l = ascii_lower(t);
  if (l == "inf" || l == "+inf" || l == "infinity" || l == "+infinity") return *out = HUGE_VAL, true;
  if (l == "-inf" || l == "-infinity") return *out = -HUGE_VAL, true;
  if (l == "nan" || l == "+nan" || l == "-nan") return *out = NAN, true;
  for (char c : t)
    if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) return false;
  size_t start = t[0] == '+' ? 1 : 0;   // from_chars takes no '+' (and ignores the locale, unlike strtod)
  auto r = std::from_chars(t.data() + start, t.data() + t.size(), *out);
  if (r.ec == std::errc::result_out_of_range) return false;
  return r.ec == std::errc() && r.ptr == t.data() + t.size();
}

}  // namespace

Status Interp::call_filter(const std::string& name, const Value& in, const Args& args, const ScopePtr& scope,
                           Value* out) {
  QWEN35_TRY(step());
  auto as_string = [&](std::string* s) { return stringify(in, s); };
  auto flag = [&](size_t i, const char* kw) {
    const Value* v = args.get(i, kw);
    return v && v->truthy();
  };
  // Jinja's attribute getter: "a.b.0" walks getitem() part by part.
  auto attr_of = [&](const Value& item, const std::string& path, Value* r) -> Status {
    Value cur = item;
    size_t p = 0;
    while (p <= path.size()) {
      size_t q = path.find('.', p);
      if (q == std::string::npos) q = path.size();
      std::string part = path.substr(p, q - p);
      int64_t idx;
      Value next;
      bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (digits && parse_py_int(part, &idx)) QWEN35_TRY(getitem(cur, Value::integer(idx), &next));
      else QWEN35_TRY(getitem(cur, Value::string(part), &next));
      cur = std::move(next);
      p = q + 1;
    }
    *r = std::move(cur);
    return Status::Ok();
  };

  if (name == "safe" || name == "string") {
    std::string s;
    QWEN35_TRY(as_string(&s));
    return make_string(std::move(s), out);
  }
  if (name == "trim") {
    std::string s;
    QWEN35_TRY(as_string(&s));
    if (const Value* chars = args.get(0, "chars"); chars && !chars->is_none()) {
      Args a;
      a.pos.push_back(*chars);
      CallableObj m;
      m.kind = CallableObj::Kind::Method;
      m.name = "strip";
      m.self = Value::string(std::move(s));
      return call_method(m, a, out);
    }
    return make_string(std::string(py_strip(s, true, true)), out);
  }
  if (name == "tojson") {
    DumpOpts o;
    o.ensure_ascii = flag(0, "ensure_ascii");
    if (const Value* ind = args.get(1, "indent"); ind && !ind->is_none()) {
      if (!is_plain_int(*ind)) return unsupported("a non-integer tojson indent");
      o.indent = int(std::clamp<int64_t>(ind->i(), 0, 64));
      o.item_sep = ",";
    }
    if (const Value* sep = args.get(2, "separators"); sep && !sep->is_none()) {
      if (!sep->is_list() || sep->items().size() != 2 || !sep->items()[0].is_string() ||
          !sep->items()[1].is_string())
        return error("tojson separators must be a pair of strings");
      o.item_sep = sep->items()[0].str();
      o.key_sep = sep->items()[1].str();
    }
    o.sort_keys = flag(3, "sort_keys");
    std::string s;
    QWEN35_TRY(to_json(in, o, &s));
    return make_string(std::move(s), out);
  }
  if (name == "length" || name == "count") {
    switch (in.kind()) {
      case Value::Kind::Undefined: *out = Value::integer(0); return Status::Ok();
      case Value::Kind::String: *out = Value::integer(int64_t(cp_count(in.str()))); return Status::Ok();
      case Value::Kind::List: *out = Value::integer(int64_t(in.items().size())); return Status::Ok();
      case Value::Kind::Dict: *out = Value::integer(int64_t(in.dict().items.size())); return Status::Ok();
      default: return error(fmt::format("object of type '{}' has no len()", in.type_name()));
    }
  }
  if (name == "items") {
    if (in.is_undefined()) return make_list({}, out);
    if (!in.is_dict()) return error("Can only get item pairs from a mapping.");
    std::vector<Value> r;
    for (const auto& kv : in.dict().items) r.push_back(Value::list({Value::string(kv.first), kv.second}, true));
    return make_list(std::move(r), out);
  }
  if (name == "default" || name == "d") {
    const Value* dv = args.get(0, "default_value");
    bool boolean = flag(1, "boolean");
    if (in.is_undefined() || (boolean && !in.truthy())) {
      if (dv) *out = *dv;
      else *out = Value::string("");
    } else {
      *out = in;
    }
    return Status::Ok();
  }
  if (name == "list") {
    std::vector<Value> items;
    QWEN35_TRY(iterate(in, &items));
    return make_list(std::move(items), out);
  }
  if (name == "first" || name == "last") {
    std::vector<Value> items;
    QWEN35_TRY(iterate(in, &items));
    if (items.empty()) {
      *out = Value::undefined(fmt::format("No {} item, sequence was empty.", name));
      return Status::Ok();
    }
    *out = name == "first" ? items.front() : items.back();
    return Status::Ok();
  }
  if (name == "join") {
    const Value* sep = args.get(0, "d");
    const Value* attr = args.get(1, "attribute");
    std::string d;
    if (sep) QWEN35_TRY(stringify(*sep, &d));
    std::vector<Value> items;
    QWEN35_TRY(iterate(in, &items));
    std::string r;
    for (size_t k = 0; k < items.size(); ++k) {
      if (k) r += d;
      Value v = items[k];
      if (attr && !attr->is_none()) QWEN35_TRY(attr_of(items[k], attr->to_str(), &v));
      QWEN35_TRY(stringify(v, &r));
    }
    return make_string(std::move(r), out);
  }
  if (name == "title") {   // Jinja's own title(): words start after - space ( { [ <
    std::string s;
    QWEN35_TRY(as_string(&s));
    return make_string(jinja_title(s), out);
  }
  if (name == "upper" || name == "lower" || name == "capitalize" || name == "center" || name == "replace") {
    std::string s;
    QWEN35_TRY(as_string(&s));
    CallableObj m;
    m.kind = CallableObj::Kind::Method;
    m.name = name;
    m.self = Value::string(std::move(s));
    if (name == "center" && args.pos.empty()) {
      Args a = args;
      if (!a.get(0, "width")) a.pos.push_back(Value::integer(80));
      return call_method(m, a, out);
    }
    return call_method(m, args, out);
  }
  if (name == "escape" || name == "e" || name == "forceescape") {
    std::string s;
    QWEN35_TRY(as_string(&s));
    std::string r;
    for (char c : s) {
      switch (c) {
        case '&': r += "&amp;"; break;
        case '<': r += "&lt;"; break;
        case '>': r += "&gt;"; break;
        case '"': r += "&#34;"; break;
        case '\'': r += "&#39;"; break;
        default: r.push_back(c);
      }
    }
    return make_string(std::move(r), out);
  }
  if (name == "pprint") {
    std::string s;
    QWEN35_TRY(reprify(in, &s));
    return make_string(std::move(s), out);
  }
  if (name == "indent") {
    std::string s;
    QWEN35_TRY(as_string(&s));
    std::string pad = "    ";
    if (const Value* w = args.get(0, "width")) {
      if (w->is_string()) pad = w->str();
      else if (is_plain_int(*w)) pad = std::string(size_t(std::clamp<int64_t>(w->i(), 0, 1024)), ' ');
    }
    bool first = flag(1, "first"), blank = flag(2, "blank");
    // Jinja 3.1: split on "\n" lines (a trailing newline is kept).
    std::string r;
    size_t p = 0;
    bool first_line = true;
    for (;;) {
      size_t q = s.find('\n', p);
      std::string line = s.substr(p, q == std::string::npos ? std::string::npos : q - p);
      bool add = first_line ? first : (blank || !py_strip(line, true, true).empty());
      if (first_line && first && !blank && line.empty() && q == std::string::npos) add = true;
      if (add) r += pad;
      r += line;
      first_line = false;
      if (q == std::string::npos) break;
      r += '\n';
      p = q + 1;
      QWEN35_TRY(check_size(r.size()));
    }
    return make_string(std::move(r), out);
  }
  if (name == "wordcount") {
    std::string s;
    QWEN35_TRY(as_string(&s));
    int64_t n = 0;
    bool in_word = false;
    for (size_t i = 0; i < s.size();) {
      uint32_t cp;
      size_t len = utf8_next(s, i, &cp);
      bool w = cp == '_' || (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               (cp >= 0x80 && !py_isspace(cp));
      if (w && !in_word) ++n;
      in_word = w;
      i += len;
    }
    *out = Value::integer(n);
    return Status::Ok();
  }
  if (name == "reverse") {
    if (in.is_string()) {
      std::vector<std::pair<size_t, size_t>> cps;
      const std::string& s = in.str();
      for (size_t i = 0; i < s.size();) {
        uint32_t cp;
        size_t n = utf8_next(s, i, &cp);
        cps.emplace_back(i, n);
        i += n;
      }
      std::string r;
      for (auto it = cps.rbegin(); it != cps.rend(); ++it) r.append(s, it->first, it->second);
      return make_string(std::move(r), out);
    }
    std::vector<Value> items;
    QWEN35_TRY(iterate(in, &items));
    std::reverse(items.begin(), items.end());
    return make_list(std::move(items), out);
  }
  if ((name == "int" || name == "float") && in.is_undefined()) return undefined_error(in);
  if (name == "int") {
    const Value* dv = args.get(0, "default");
    Value d = dv ? *dv : Value::integer(0);
    if (const Value* b = args.get(1, "base"); b && !(is_plain_int(*b) && b->i() == 10))
      return unsupported("the int filter with a base other than 10");
    if (in.kind() == Value::Kind::BigInt) {
      *out = in;
    } else if (is_plain_int(in)) {
      *out = Value::integer(in.i());
    } else if (in.kind() == Value::Kind::Float) {
      double f = in.f();
      *out = std::isfinite(f) && std::fabs(f) < 9.2e18 ? Value::integer(int64_t(f)) : d;
    } else if (in.is_string()) {
      int64_t v;
      double f;
      if (parse_py_int(in.str(), &v)) *out = Value::integer(v);
      else if (parse_py_float(in.str(), &f) && std::isfinite(f) && std::fabs(f) < 9.2e18) *out = Value::integer(int64_t(f));
      else *out = d;
    } else {
      *out = d;
    }
    return Status::Ok();
  }
  if (name == "float") {
    const Value* dv = args.get(0, "default");
    double f;
    if (in.is_number()) *out = Value::number(in.f());
    else if (in.is_string() && parse_py_float(in.str(), &f)) *out = Value::number(f);
    else *out = dv ? *dv : Value::number(0.0);
    return Status::Ok();
  }
  if (name == "abs") {
    if (is_plain_int(in)) {
      if (in.i() == INT64_MIN) return error("integer overflow");
      *out = Value::integer(in.i() < 0 ? -in.i() : in.i());
    } else if (in.kind() == Value::Kind::Float) {
      *out = Value::number(std::fabs(in.f()));
    } else {
      return error(fmt::format("bad operand type for abs(): '{}'", in.type_name()));
    }
    return Status::Ok();
  }
  if (name == "round") {
    if (!in.is_number()) return error(fmt::format("cannot round '{}'", in.type_name()));
    const Value* pv = args.get(0, "precision");
    const Value* mv = args.get(1, "method");
    int64_t prec = pv && is_plain_int(*pv) ? std::clamp<int64_t>(pv->i(), -300, 300) : 0;
    std::string method = mv ? mv->to_str() : "common";
    if (method == "common" && is_plain_int(in)) {   // Python round(int, n) stays an int
      int64_t v = in.i();
      if (prec < 0) {
        if (prec < -18) {
          v = 0;
        } else {
          int64_t m = 1;
          for (int64_t k = 0; k < -prec; ++k) m *= 10;
          int64_t q = v / m, r = v % m;
          if (r < 0) {
            r += m;
            --q;
          }
          if (2 * r > m || (2 * r == m && (q & 1))) ++q;   // half to even
          if (__builtin_mul_overflow(q, m, &v)) return error("integer overflow");
        }
      }
      *out = Value::integer(v);
      return Status::Ok();
    }
    double scale = std::pow(10.0, double(prec));
    double x = in.f() * scale, r;
    if (method == "common") r = std::nearbyint(x);   // Python round(): half to even
    else if (method == "ceil") r = std::ceil(x);
    else if (method == "floor") r = std::floor(x);
    else return error("round method must be 'common', 'ceil' or 'floor'");
    *out = Value::number(r / scale);
    return Status::Ok();
  }
  if (name == "attr") {
    const Value* a = args.get(0, "name");
    if (!a || !a->is_string()) return error("attr() needs an attribute name");
    return getattr(in, a->str(), out);
  }

  // ---- filters over sequences
  std::vector<Value> items;
  if (name == "map" || name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr" ||
      name == "sort" || name == "unique" || name == "min" || name == "max" || name == "sum" || name == "dictsort") {
    if (name == "dictsort") {
      if (!in.is_dict()) return error("dictsort needs a mapping");
      for (const auto& kv : in.dict().items) items.push_back(Value::list({Value::string(kv.first), kv.second}, true));
    } else {
      QWEN35_TRY(iterate(in, &items));
    }
  }
  if (name == "map") {
    std::vector<Value> r;
    const Value* attr = nullptr;
    for (const auto& kv : args.kw)
      if (kv.first == "attribute") attr = &kv.second;
    if (attr) {
      const Value* dflt = nullptr;
      for (const auto& kv : args.kw)
        if (kv.first == "default") dflt = &kv.second;
      for (const Value& it : items) {
        Value v;
        QWEN35_TRY(attr_of(it, attr->to_str(), &v));
        if (v.is_undefined() && dflt) v = *dflt;
        r.push_back(std::move(v));
      }
      return make_list(std::move(r), out);
    }
    if (args.pos.empty() || !args.pos[0].is_string()) return error("map() needs a filter name or attribute=");
    Args rest;
    rest.pos.assign(args.pos.begin() + 1, args.pos.end());
    rest.kw = args.kw;
    for (const Value& it : items) {
      Value v;
      QWEN35_TRY(call_filter(args.pos[0].str(), it, rest, scope, &v));
      r.push_back(std::move(v));
    }
    return make_list(std::move(r), out);
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    bool by_attr = name.size() > 6;
    bool want = name[0] == 's';
    size_t tpos = by_attr ? 1 : 0;
    std::string attr;
    if (by_attr) {
      if (args.pos.empty()) return error(fmt::format("{}() needs an attribute name", name));
      attr = args.pos[0].to_str();
    }
    std::string test;
    if (args.pos.size() > tpos) test = args.pos[tpos].to_str();
    Args targs;
    if (args.pos.size() > tpos + 1) targs.pos.assign(args.pos.begin() + long(tpos) + 1, args.pos.end());
    std::vector<Value> r;
    for (const Value& it : items) {
      Value v = it;
      if (by_attr) QWEN35_TRY(attr_of(it, attr, &v));
      bool ok;
      if (test.empty()) ok = v.truthy();
      else QWEN35_TRY(call_test(test, v, targs, &ok));
      if (ok == want) r.push_back(it);
    }
    return make_list(std::move(r), out);
  }
  if (name == "sort" || name == "dictsort" || name == "unique" || name == "min" || name == "max") {
    bool dict_by_value = false;
    bool reverse = false, case_sensitive = false;
    const Value* attr = nullptr;
    if (name == "sort") {
      reverse = flag(0, "reverse");
      case_sensitive = flag(1, "case_sensitive");
      attr = args.get(2, "attribute");
    } else if (name == "dictsort") {
      case_sensitive = flag(0, "case_sensitive");
      const Value* by = args.get(1, "by");
      dict_by_value = by && by->is_string() && by->str() == "value";
      reverse = flag(2, "reverse");
    } else {
      case_sensitive = flag(0, "case_sensitive");
      attr = args.get(1, "attribute");
    }
    auto key_of = [&](const Value& v, Value* k) -> Status {
      Value x = v;
      if (name == "dictsort") x = v.items()[dict_by_value ? 1 : 0];
      else if (attr && !attr->is_none()) QWEN35_TRY(attr_of(v, attr->to_str(), &x));
      if (!case_sensitive && x.is_string()) x = Value::string(str_lower(x.str()));
      *k = std::move(x);
      return Status::Ok();
    };
    std::vector<std::pair<Value, Value>> keyed;
    for (const Value& v : items) {
      Value k;
      QWEN35_TRY(key_of(v, &k));
      keyed.emplace_back(std::move(k), v);
    }
    if (name == "unique") {
      std::vector<Value> r;
      std::vector<Value> seen;
      for (auto& kv : keyed) {
        bool dup = false;
        for (const Value& s : seen) dup |= s.equals(kv.first);
        if (!dup) {
          seen.push_back(kv.first);
          r.push_back(kv.second);
        }
      }
      return make_list(std::move(r), out);
    }
    Status failed;
    auto less = [&](const std::pair<Value, Value>& a, const std::pair<Value, Value>& b) {
      bool r = false;
      if (failed.ok()) failed = compare("<", a.first, b.first, &r);
      return failed.ok() && r;
    };
    if (name == "min" || name == "max") {
      if (keyed.empty()) {
        *out = Value::undefined(fmt::format("No aggregated item, sequence was empty."));
        return Status::Ok();
      }
      size_t best = 0;
      for (size_t k = 1; k < keyed.size(); ++k) {
        bool better = name == "min" ? less(keyed[k], keyed[best]) : less(keyed[best], keyed[k]);
        QWEN35_TRY(failed);
        if (better) best = k;
      }
      *out = keyed[best].second;
      return Status::Ok();
    }
    std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
      return reverse ? less(b, a) : less(a, b);
    });
    QWEN35_TRY(failed);
    std::vector<Value> r;
    for (auto& kv : keyed) r.push_back(kv.second);
    return make_list(std::move(r), out);
  }
  if (name == "sum") {
    const Value* attr = args.get(0, "attribute");
    const Value* start = args.get(1, "start");
    Value acc = start ? *start : Value::integer(0);
    for (const Value& it : items) {
      Value v = it;
      if (attr && !attr->is_none()) QWEN35_TRY(attr_of(it, attr->to_str(), &v));
      Value next;
      QWEN35_TRY(step());
      // Reuse the + operator through a tiny expression-free path.
      if (!(acc.is_number() && v.is_number())) return error("sum() supports numbers only");
      if (is_plain_int(acc) && is_plain_int(v)) {
        int64_t r;
        if (__builtin_add_overflow(acc.i(), v.i(), &r)) return error("integer overflow");
        next = Value::integer(r);
      } else {
        next = Value::number(acc.f() + v.f());
      }
      acc = std::move(next);
    }
    *out = std::move(acc);
    return Status::Ok();
  }
  return unsupported(fmt::format("the filter '{}'", name));
}

}  // namespace qwen35::jinja
