// Chat requests built from Python message dicts, shared by chat_render and
// the chat generation.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "common.h"

namespace qwen35py {

// A conversation in C API form. Owns every string and keeps the image
// embeddings alive; the qwen35_* structs point into it, so it is built once
// on the heap and never moved.
struct ChatRequest {
  std::vector<qwen35_chat_message> messages;
  qwen35_chat_params params{};

  ChatRequest() = default;
  ChatRequest(const ChatRequest&) = delete;
  ChatRequest& operator=(const ChatRequest&) = delete;

  std::deque<std::string> strings;                       // stable addresses
  std::vector<std::vector<qwen35_content_part>> parts;   // one list per message
  std::vector<EmbedPtr> embeds;
  const char* keep(const std::string& s) {
    strings.push_back(s);
    return strings.back().c_str();
  }
};

// messages: list of dicts with "role" (str) and optionally "content" (str or
// None), "parts" (list of ("text", str) / ("image", ImageEmbed or None)),
// "reasoning_content", "tool_calls_json", "name" (str or None). The Python
// layer has already turned OpenAI messages into this form. Needs the GIL.
std::unique_ptr<ChatRequest> build_chat_request(const py::list& messages, const py::object& tools_json,
                                                bool add_generation_prompt, int enable_thinking,
                                                const py::object& template_override);

}  // namespace qwen35py
