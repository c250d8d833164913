// The built-in Qwen3.5 chat renderer (spec tokenizer-chat.md §5.3): the
// algorithm of the Qwen3.5-4B template written out in C++, used when the
// embedded template cannot be run. Its output is byte-identical to the
// template's (tests render every case both ways).
#include "chat/chat.h"
#include "chat/jinja_lexer.h"

namespace qwen35 {

namespace {

std::string trim(std::string_view s) { return std::string(jinja::py_strip(s, true, true)); }

std::string_view strip_newlines(std::string_view s, bool left, bool right) {
  if (left)
    while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  if (right)
    while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

Status template_error(const char* msg) { return Error(QWEN35_ERR_INVALID_ARG, "chat template: {}", msg); }

struct VisionCounter {
  bool add_vision_id = false;
  int images = 0;
  int videos = 0;
};

// render_content(content, do_vision_count, is_system_content)
Status render_content(const ChatMessage& m, bool count, bool is_system, VisionCounter* vc, std::string* out) {
  out->clear();
  if (m.parts.empty()) {
    *out = m.content.value_or("");
    return Status::Ok();
  }
  for (const ContentPart& p : m.parts) {
    switch (p.type) {
      case ContentPart::Type::Image:
        if (is_system) return template_error("System message cannot contain images.");
        if (count) ++vc->images;
        if (vc->add_vision_id) *out += "Picture " + std::to_string(vc->images) + ": ";
        *out += "<|vision_start|><|image_pad|><|vision_end|>";
        break;
      case ContentPart::Type::Video:
        if (is_system) return template_error("System message cannot contain videos.");
        if (count) ++vc->videos;
        if (vc->add_vision_id) *out += "Video " + std::to_string(vc->videos) + ": ";
        *out += "<|vision_start|><|video_pad|><|vision_end|>";
        break;
      case ContentPart::Type::Text: *out += p.text; break;
    }
  }
  return Status::Ok();
}

// S(v): a tool-call argument as the template prints it (Python str() for
// scalars, tojson for containers).
std::string arg_text(const Json& v) {
  switch (v.type()) {
    case Json::Type::Null: return "None";
    case Json::Type::Bool: return v.as_bool() ? "True" : "False";
    case Json::Type::Int: return v.is_big_int() ? v.as_string() : std::to_string(v.as_int());
    case Json::Type::Double: return py_float_repr(v.as_double());
    case Json::Type::String: return v.as_string();
    default: return v.tojson();
  }
}

Status render_tool_calls(const Json& calls, const std::string& content, std::string* out) {
  if (!calls.is_array()) return Status::Ok();   // the template only iterates sequences
  for (size_t k = 0; k < calls.size(); ++k) {
    const Json& tc = calls.as_array()[k];
    const Json* f = tc.find("function");
    if (!f) f = &tc;
    const Json* name = f->find("name");
    if (!name) return Error(QWEN35_ERR_INVALID_ARG, "chat template: tool call {} has no name", k);
    if (!name->is_string()) return Error(QWEN35_ERR_INVALID_ARG, "chat template: tool call {} name is not a string", k);
    if (k == 0) *out += trim(content).empty() ? "<tool_call>\n<function=" : "\n\n<tool_call>\n<function=";
    else *out += "\n<tool_call>\n<function=";
    *out += name->as_string() + ">\n";
    if (const Json* args = f->find("arguments")) {
      if (!args->is_object())
        return Error(QWEN35_ERR_INVALID_ARG, "chat template: Can only get item pairs from a mapping.");
      for (const auto& kv : args->as_object())
          *out += "<parameter=" + kv.first + ">\n" + arg_text(kv.second) + "\n</parameter>\n";
    }
    *out += "</function>\n</tool_call>";
  }
  return Status::Ok();
}

}  // namespace

Status RenderQwen35Builtin(const std::vector<ChatMessage>& msgs, const ChatOptions& opt, std::string_view t_head,
                           std::string_view t_instr, std::string* result) {
  if (msgs.empty()) return template_error("No messages provided.");
  VisionCounter vc;
  vc.add_vision_id = opt.add_vision_id;
  std::string out, c;
  const bool has_tools = opt.tools.is_array() && opt.tools.size() > 0;
  // (1) system block
  if (has_tools) {
    if (t_head.empty() || t_instr.empty())
      return Error(QWEN35_ERR_UNSUPPORTED,
                   "the chat template cannot be run and its tool instructions could not be extracted from it");
    out += "<|im_start|>system\n";
    out += t_head;
    for (const Json& t : opt.tools.as_array()) out += "\n" + t.tojson();
    out += "\n</tools>";
    out += t_instr;
    if (msgs[0].role == "system") {
      QWEN35_TRY(render_content(msgs[0], false, true, &vc, &c));
      c = trim(c);
      if (!c.empty()) out += "\n\n" + c;
    }
    out += "<|im_end|>\n";
  } else if (msgs[0].role == "system") {
    QWEN35_TRY(render_content(msgs[0], false, true, &vc, &c));
    out += "<|im_start|>system\n" + trim(c) + "<|im_end|>\n";
  }
  // (2) the last real user query (tool responses wrapped as user turns do not count)
  size_t last_q = SIZE_MAX;
  for (size_t i = msgs.size(); i-- > 0;) {
    if (msgs[i].role != "user") continue;
    QWEN35_TRY(render_content(msgs[i], false, false, &vc, &c));
    c = trim(c);
    bool wrapped = c.compare(0, 15, "<tool_response>") == 0 && c.size() >= 16 &&
                   c.compare(c.size() - 16, 16, "</tool_response>") == 0;
    if (!wrapped) {
      last_q = i;
      break;
    }
  }
  if (last_q == SIZE_MAX) return template_error("No user query found in messages.");
  // (3) the messages
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    QWEN35_TRY(render_content(m, true, false, &vc, &c));
    c = trim(c);
    if (m.role == "system") {
      if (i != 0) return template_error("System message must be at the beginning.");
    } else if (m.role == "user") {
      out += "<|im_start|>user\n" + c + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string r;
      if (m.reasoning_content) {
        r = *m.reasoning_content;
      } else if (c.find("</think>") != std::string::npos) {
        std::string_view before = std::string_view(c).substr(0, c.find("</think>"));
        before = strip_newlines(before, false, true);
        size_t open = before.rfind("<think>");
        if (open != std::string_view::npos) before = before.substr(open + 7);
        r = std::string(strip_newlines(before, true, false));
        c = std::string(strip_newlines(std::string_view(c).substr(c.rfind("</think>") + 8), true, false));
      }
      r = trim(r);
      if (i > last_q) out += "<|im_start|>assistant\n<think>\n" + r + "\n</think>\n\n" + c;
      else out += "<|im_start|>assistant\n" + c;
      QWEN35_TRY(render_tool_calls(m.tool_calls, c, &out));
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      if (i > 0 && msgs[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + c + "\n</tool_response>";
      if (i + 1 == msgs.size() || msgs[i + 1].role != "tool") out += "<|im_end|>\n";
    } else {
      return template_error("Unexpected message role.");
    }
  }
  // (4) generation prompt
  if (opt.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    out += opt.enable_thinking == 0 ? "<think>\n\n</think>\n\n" : "<think>\n";
  }
  *result = std::move(out);
  return Status::Ok();
}

}  // namespace qwen35
