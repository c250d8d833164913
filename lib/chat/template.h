// A parsed Jinja chat template (spec tokenizer-chat.md §5.1, option 1).
// Parsing happens once; Render() is const and may run concurrently.
//
// Semantics are those of Hugging Face transformers' apply_chat_template:
// Jinja2 ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks,
// the loopcontrols extension, a `tojson` filter that is Python's json.dumps
// (ensure_ascii=False) and the globals raise_exception() and strftime_now().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/jinja_value.h"
#include "json.h"
#include "status.h"

namespace qwen35::jinja {
struct Stmt;
}

namespace qwen35 {

// Bounds that make hostile templates fail with an error instead of running
// out of time, memory or stack.
struct RenderLimits {
  size_t max_output_bytes = size_t(32) << 20;   // the result, and any single string
  size_t max_total_bytes = size_t(512) << 20;   // all strings and lists created, cumulatively
  uint64_t max_steps = 5'000'000;               // statements + expressions evaluated
  int max_depth = 400;                          // nested evaluation (blocks, expressions, macro calls)
  size_t max_list = size_t(1) << 20;            // elements of one list (range(), +, *)
};

class ChatTemplate {
 public:
  // Errors: QWEN35_ERR_FORMAT for syntax errors, QWEN35_ERR_UNSUPPORTED for
  // Jinja features outside the supported subset; both name the line.
  static Status Parse(std::string_view source, std::unique_ptr<ChatTemplate>* out);
  ~ChatTemplate();

  // Render with the given global variables. Errors:
  //  - QWEN35_ERR_INVALID_ARG: the template rejected the input
  //    (raise_exception) or failed on it (type error, undefined value), or a
  //    limit was exceeded;
  //  - QWEN35_ERR_UNSUPPORTED: the template used a filter, test or method
  //    outside the supported subset.
  using Vars = std::vector<std::pair<std::string, jinja::Value>>;
  Status Render(const Vars& vars, const RenderLimits& limits, std::string* out) const;
  // Convenience: variables from a JSON object.
  Status Render(const Json& vars, const RenderLimits& limits, std::string* out) const;

  const std::string& source() const { return source_; }

 private:
  ChatTemplate() = default;
  std::string source_;
  std::vector<std::unique_ptr<jinja::Stmt>> body_;
};

}  // namespace qwen35
