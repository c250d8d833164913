// Logging through the embedder's callback. Never prints on its own.
#pragma once

#include <string>
#include <utility>

#include <fmt/format.h>

#include "qwen35/qwen35.h"

namespace qwen35 {

struct Logger {
  qwen35_log_callback cb = nullptr;
  void* user_data = nullptr;

  void log(qwen35_log_level level, const std::string& msg) const {
    if (cb) cb(level, msg.c_str(), user_data);
  }
  template <typename... Args>
  void info(fmt::format_string<Args...> f, Args&&... args) const {
    if (cb) log(QWEN35_LOG_INFO, fmt::format(f, std::forward<Args>(args)...));
  }
  template <typename... Args>
  void warn(fmt::format_string<Args...> f, Args&&... args) const {
    if (cb) log(QWEN35_LOG_WARN, fmt::format(f, std::forward<Args>(args)...));
  }
  template <typename... Args>
  void debug(fmt::format_string<Args...> f, Args&&... args) const {
    if (cb) log(QWEN35_LOG_DEBUG, fmt::format(f, std::forward<Args>(args)...));
  }
};

// Process-wide default, used when a model has no callback of its own. Set by
// qwen35_log_set(); reads and writes are atomic.
Logger default_logger();

}  // namespace qwen35
