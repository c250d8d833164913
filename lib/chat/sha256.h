// SHA-256 (FIPS 180-4), used to recognise the chat template a file carries.
#pragma once

#include <string>
#include <string_view>

namespace qwen35::chat {

// Lower-case hex digest of `data`.
std::string sha256_hex(std::string_view data);

}  // namespace qwen35::chat
