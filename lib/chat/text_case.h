// Case mapping for the template string functions (upper, lower, title,
// capitalize, islower, isupper): Python's rules over ASCII, Latin-1, Latin
// Extended-A and Additional, Greek, Cyrillic, Armenian and fullwidth Latin.
// Other scripts pass through unchanged (documented approximation; no final
// sigma rule).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace qwen35::jinja {

uint32_t cp_upper(uint32_t cp);
uint32_t cp_lower(uint32_t cp);
bool cp_is_cased(uint32_t cp);
void append_utf8(uint32_t cp, std::string* out);

std::string str_upper(std::string_view s);
std::string str_lower(std::string_view s);
std::string str_swapcase(std::string_view s);
std::string str_title(std::string_view s);        // Python str.title()
std::string str_capitalize(std::string_view s);   // Python str.capitalize()
std::string jinja_title(std::string_view s);      // Jinja's |title filter (words split at - space ( { [ <)
bool str_islower(std::string_view s);
bool str_isupper(std::string_view s);

}  // namespace qwen35::jinja
