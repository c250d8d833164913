// Jinja template lexer (subset of Jinja2 as Hugging Face configures it:
// trim_blocks, lstrip_blocks, no keep_trailing_newline). Produces template
// text (with whitespace control already applied) and the tokens inside
// {{ }} and {% %} tags; comments and {% raw %} are resolved here.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "status.h"

namespace qwen35::jinja {

enum class Tok : uint8_t {
  Text,        // template data between tags
  VarBegin,    // {{
  VarEnd,      // }}
  BlockBegin,  // {%
  BlockEnd,    // %}
  Name,        // identifier or keyword
  String,      // string literal (unescaped value in text)
  Int,         // integer literal (value in ival)
  Float,       // float literal (value in fval)
  Op,          // operator or punctuation, in text
  Eof,
};

struct Token {
  Tok type = Tok::Eof;
  std::string text;
  int64_t ival = 0;
  double fval = 0.0;
  int line = 1;
};

struct LexOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
};

// Tokenize a whole template. Errors (QWEN35_ERR_FORMAT) name the line.
Status Lex(std::string_view source, const LexOptions& opt, std::vector<Token>* out);

// Python str.isspace() for one code point (the 29 White_Space-like code
// points Python strips: ASCII whitespace, U+001C-U+001F, U+0085, U+00A0,
// U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000).
bool py_isspace(uint32_t cp);

// Decode one code point at s[i] leniently: a malformed byte counts as one
// code point of its own (value 0xFFFD) so text never gets lost. Returns the
// byte length (>= 1).
size_t utf8_next(std::string_view s, size_t i, uint32_t* cp);

// Python str.strip()/lstrip()/rstrip() with no argument.
std::string_view py_strip(std::string_view s, bool left, bool right);

}  // namespace qwen35::jinja
