// The JSON library (lib/json.h): strict parsing with byte offsets, compact
// and Python-compatible serialisation (spec tokenizer-chat.md §5.5).
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "json.h"

using namespace qwen35;

namespace {

Json parse(const std::string& text) {
  Json j;
  Status st = Json::Parse(text, &j);
  REQUIRE_MESSAGE(st.ok(), st.message());
  return j;
}

std::string parse_error(const std::string& text) {
  Json j = Json("untouched");
  Status st = Json::Parse(text, &j);
  CHECK(st.code() == QWEN35_ERR_INVALID_ARG);
  CHECK(j == Json("untouched"));   // the output is left alone on failure
  return st.message();
}

}  // namespace

TEST_CASE("round trips: compact and Python tojson") {
  const std::string text = R"({"a":[1,2.5,"x\u00e9\n",null,true,false],"b":{},"c":[],"d":{"k":-3}})";
  Json j = parse(text);
  CHECK(j.dump() == "{\"a\":[1,2.5,\"xé\\n\",null,true,false],\"b\":{},\"c\":[],\"d\":{\"k\":-3}}");
  CHECK(j.tojson() == "{\"a\": [1, 2.5, \"xé\\n\", null, true, false], \"b\": {}, \"c\": [], \"d\": {\"k\": -3}}");
  CHECK(parse(j.dump()) == j);
  CHECK(parse(j.tojson()) == j);
  CHECK(parse("  [ 1 ,\t2 ]\r\n").dump() == "[1,2]");
  // Key order is kept, a duplicate key keeps its first position and last value.
  CHECK(parse(R"({"z":1,"a":2,"z":3})").dump() == R"({"z":3,"a":2})");
  std::string big = "{";
  for (int i = 0; i < 40; ++i) big += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
  big += "\"k7\":\"dup\"}";
  Json b = parse(big);
  CHECK(b.size() == 40);
  CHECK(b.as_object()[7].second == Json("dup"));
}

TEST_CASE("numbers follow Python") {
  CHECK(parse("1").is_int());
  CHECK(parse("1.0").is_double());
  CHECK(parse("1.0").tojson() == "1.0");
  CHECK(parse("1e2").tojson() == "100.0");
  CHECK(parse("-0").tojson() == "0");
  CHECK(parse("-0.0").tojson() == "-0.0");
  CHECK(parse("1E400").tojson() == "Infinity");
  CHECK(parse("-1e400").tojson() == "-Infinity");
  CHECK(parse("1e-400").tojson() == "0.0");
  CHECK(parse("-9223372036854775808").as_int() == INT64_MIN);
  CHECK(parse("9223372036854775808").is_big_int());
  CHECK(parse("123456789012345678901234567890").dump() == "123456789012345678901234567890");
  CHECK(parse("[1, 1.0]").as_array()[0] == parse("1.0"));
  struct R {
    double v;
    const char* repr;
  };
  const R reprs[] = {{0.5, "0.5"},
                     {100.0, "100.0"},
                     {1e-05, "1e-05"},
                     {1e20, "1e+20"},
                     {-0.0, "-0.0"},
                     {0.1, "0.1"},
                     {1e16, "1e+16"},
                     {1e15, "1000000000000000.0"},
                     {0.0001, "0.0001"},
                     {123456789.123, "123456789.123"},
                     {5e-324, "5e-324"},
                     {1.7976931348623157e+308, "1.7976931348623157e+308"},
                     {1.0 / 3.0, "0.3333333333333333"},
                     {2.5e-7, "2.5e-07"},
                     {-1.5e300, "-1.5e+300"},
                     {0.1 + 0.2, "0.30000000000000004"}};
  for (const R& r : reprs) {
    CAPTURE(r.repr);
    CHECK(py_float_repr(r.v) == r.repr);
    CHECK(parse(r.repr).as_double() == r.v);
  }
  CHECK(py_float_repr(HUGE_VAL) == "inf");
  CHECK(py_float_repr(NAN) == "nan");
  CHECK(json_float(NAN) == "NaN");
}

TEST_CASE("string escaping like Python's json module") {
  Json s(std::string("q\"b\\s/\b\f\n\r\t\x01\x1f\x7f\u00e9\u2028\xF0\x9F\x98\x80"));
  CHECK(s.dump() == std::string("\"q\\\"b\\\\s/\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\u00e9\u2028\xF0\x9F\x98\x80\""));
  Json::DumpOptions ascii;
  ascii.ensure_ascii = true;
  CHECK(s.dump(ascii) == "\"q\\\"b\\\\s/\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\\u00e9\\u2028\\ud83d\\ude00\"");
  CHECK(parse(R"("\ud83d\ude00 \u00e9 \/")") == Json("\xF0\x9F\x98\x80 \u00e9 /"));
}

TEST_CASE("pretty printing and sorted keys") {
  Json j = parse(R"({"a":[1,2],"b":{},"c":[]})");
  Json::DumpOptions o;
  o.indent = 2;
  CHECK(j.dump(o) == "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {},\n  \"c\": []\n}");
  Json::DumpOptions sorted;
  sorted.python_spacing = true;
  sorted.sort_keys = true;
  CHECK(parse(R"({"b":1,"a":{"d":1,"c":2}})").dump(sorted) == R"({"a": {"c": 2, "d": 1}, "b": 1})");
}

TEST_CASE("building values") {
  Json o = Json::object();
  o.set("x", Json(1));
  o.set("y", Json::array({Json("a"), Json()}));
  o.set("x", Json(2.5));
  CHECK(o.dump() == R"({"x":2.5,"y":["a",null]})");
  CHECK(o.find("y")->size() == 2);
  CHECK(o.find("nope") == nullptr);
  CHECK(Json(3).find("x") == nullptr);
  CHECK(parse(R"({"a":1,"b":2})") == parse(R"({"b":2,"a":1})"));
  CHECK(parse("[1,2]") != parse("[2,1]"));
}

TEST_CASE("strict parsing errors name the byte offset") {
  CHECK(parse_error("[1,]") == "JSON: unexpected character ']' at byte 3");
  CHECK(parse_error(R"({"a" 1})") == "JSON: expected ':' after an object key at byte 5");
  CHECK(parse_error("01") == "JSON: leading zero in a number at byte 1");
  CHECK(parse_error("NaN").find("at byte 0") != std::string::npos);
  CHECK(parse_error("[1 2]") == "JSON: expected ',' or ']' at byte 3");
  CHECK(parse_error("\"\x01\"") == "JSON: unescaped control character in a string at byte 1");
  CHECK(parse_error("\"\xff\"") == "JSON: invalid UTF-8 at byte 1");
  CHECK(parse_error("\"\xC0\x80\"") == "JSON: invalid UTF-8 at byte 1");
  CHECK(parse_error("\"\xED\xA0\x80\"") == "JSON: invalid UTF-8 at byte 1");
  CHECK(parse_error(R"("\ud800")") == "JSON: lone surrogate escape at byte 1");
  CHECK(parse_error(R"("\udc00x")") == "JSON: lone surrogate escape at byte 1");
  CHECK(parse_error(R"("\q")") == "JSON: bad escape '\\q' at byte 2");
  CHECK(parse_error(R"("\u12")").find("\\u escape") != std::string::npos);
  CHECK(parse_error("") == "JSON: unexpected end of text, expected a value at byte 0");
  CHECK(parse_error("{} x") == "JSON: unexpected text after the JSON value at byte 3");
  CHECK(parse_error(R"({"a":1,})") == "JSON: expected a string key at byte 7");
  CHECK(parse_error("[1.]") == "JSON: expected a digit after '.' at byte 3");
  CHECK(parse_error("[1e]") == "JSON: expected a digit in the exponent at byte 3");
  CHECK(parse_error("tru") == "JSON: unexpected character 't' at byte 0");
  CHECK(parse_error("\"abc") == "JSON: unterminated string at byte 4");
  // Nesting is bounded (no stack overflow on hostile input).
  CHECK(parse_error(std::string(100000, '[')).find("nesting deeper than 256 levels") != std::string::npos);
  Json deep;
  CHECK(Json::Parse(std::string(256, '[') + std::string(256, ']'), &deep).ok());
  CHECK_FALSE(Json::Parse(std::string(257, '[') + std::string(257, ']'), &deep).ok());
}
