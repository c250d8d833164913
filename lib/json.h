// A small JSON value type with a strict parser and the serializers the chat
// layer needs (spec tokenizer-chat.md §5.5):
//  - dump():   compact, separators "," and ":" (tool-call arguments, C API).
//  - tojson(): Python json.dumps(x, ensure_ascii=False) as Hugging Face's
//              chat templates call it: separators ", " and ": ", floats as
//              Python repr, keys in insertion order, non-ASCII written raw.
// Objects keep their keys in insertion order; a duplicate key in parsed text
// replaces the earlier value in place (Python dict semantics).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "status.h"

namespace qwen35 {

class Json {
 public:
  enum class Type : uint8_t { Null, Bool, Int, Double, String, Array, Object };
  using Array = std::vector<Json>;
  using Member = std::pair<std::string, Json>;
  using Object = std::vector<Member>;

  Json() = default;                         // null
  Json(std::nullptr_t) {}
  Json(bool b) : type_(Type::Bool), b_(b) {}
  Json(int v) : type_(Type::Int), i_(v) {}
  Json(int64_t v) : type_(Type::Int), i_(v) {}
  Json(double v) : type_(Type::Double), d_(v) {}
  Json(const char* s) : type_(Type::String), s_(s) {}
  Json(std::string_view s) : type_(Type::String), s_(s) {}
  Json(std::string s) : type_(Type::String), s_(std::move(s)) {}
  static Json array(Array items = {});
  static Json object(Object members = {});
  // An integer outside int64 range, kept exactly as its decimal digits
  // (Python ints are unbounded; printing must reproduce them).
  static Json big_int(std::string digits);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_int() const { return type_ == Type::Int; }        // includes big integers
  bool is_big_int() const { return type_ == Type::Int && big_; }
  bool is_double() const { return type_ == Type::Double; }
  bool is_number() const { return is_int() || is_double(); }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }                      // 0 for big integers
  double as_double() const;                                   // any number
  const std::string& as_string() const { return s_; }        // string, or digits of a big integer
  const Array& as_array() const { return arr_; }
  Array& as_array() { return arr_; }
  const Object& as_object() const { return obj_; }
  Object& as_object() { return obj_; }

  // Object member lookup (nullptr if absent or not an object).
  const Json* find(std::string_view key) const;
  Json* find(std::string_view key);
  // Set an object member: replaces an existing key in place, else appends.
  void set(std::string key, Json value);
  void push_back(Json value) { arr_.push_back(std::move(value)); }
  size_t size() const;   // elements, members, or 0

  // Strict RFC 8259 parsing of a whole text (surrounding whitespace allowed).
  // Errors name the byte offset: "JSON: expected ',' or '}' at byte 17".
  // Rejects invalid UTF-8, unescaped control characters, lone surrogate
  // escapes, NaN/Infinity, trailing commas and nesting deeper than max_depth.
  static Status Parse(std::string_view text, Json* out, int max_depth = 256);

  struct DumpOptions {
    bool python_spacing = false;   // ", " and ": " (json.dumps defaults) instead of "," ":"
    int indent = -1;               // >= 0: pretty-print like json.dumps(indent=n)
    bool ensure_ascii = false;     // escape non-ASCII as \uXXXX (surrogate pairs)
    bool sort_keys = false;
  };
  std::string dump() const;                       // compact
  std::string dump(const DumpOptions& o) const;
  std::string tojson() const;                     // Python / HF `tojson`

  bool operator==(const Json& o) const;
  bool operator!=(const Json& o) const { return !(*this == o); }

 private:
  void dump_to(const DumpOptions& o, int level, std::string* out) const;

  Type type_ = Type::Null;
  bool b_ = false;
  bool big_ = false;
  int64_t i_ = 0;
  double d_ = 0.0;
  std::string s_;
  Array arr_;
  Object obj_;
};

// Python repr() of a float: shortest round-trip digits, "1.0", "1e-05",
// "1e+16", "-0.0", "inf", "nan".
std::string py_float_repr(double v);
// The same as json.dumps writes it ("Infinity", "-Infinity", "NaN" for the
// non-finite values, which strict JSON cannot express).
std::string json_float(double v);
// The value of a decimal integer text too large for int64 (big integers).
double digits_to_double(const std::string& digits);
// Append s as a JSON string literal (quotes included), escaping like Python's
// json module: \" \\ \n \r \t \b \f, other controls as \u00xx.
void json_escape(std::string_view s, bool ensure_ascii, std::string* out);

}  // namespace qwen35
