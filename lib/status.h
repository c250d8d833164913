// Internal status type: a code from qwen35_status plus a readable message.
// Library code returns these instead of throwing across module boundaries,
// aborting or printing.
#pragma once

#include <string>
#include <utility>

#include <fmt/format.h>

#include "qwen35/qwen35.h"

namespace qwen35 {

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(qwen35_status code, std::string msg) : code_(code), msg_(std::move(msg)) {}

  static Status Ok() { return {}; }
  bool ok() const { return code_ == QWEN35_OK; }
  qwen35_status code() const { return code_; }
  const std::string& message() const { return msg_; }

  // Prefix the message with context ("loading blk.3: " + msg).
  Status& prefix(const std::string& p) {
    msg_ = p + msg_;
    return *this;
  }

 private:
  qwen35_status code_ = QWEN35_OK;
  std::string msg_;
};

template <typename... Args>
Status Error(qwen35_status code, fmt::format_string<Args...> f, Args&&... args) {
  return Status(code, fmt::format(f, std::forward<Args>(args)...));
}

#define QWEN35_TRY(expr)              \
  do {                                \
    ::qwen35::Status _st = (expr);    \
    if (!_st.ok()) return _st;        \
  } while (0)

}  // namespace qwen35
