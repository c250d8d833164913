// C API: chat rendering and reply parsing (the Chat section of qwen35.h).
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <vector>

#include "bindings/c/handles.h"
#include "chat/chat.h"

using namespace qwen35;

// The streaming reply parser, and the storage of the last delta it handed
// out (the qwen35_reply_delta points into it).
struct qwen35_reply_parser {
  explicit qwen35_reply_parser(ReplyParseOptions o) : parser(std::move(o)) {}
  ReplyParser parser;
  bool finished = false;
  ChatReplyDelta delta;
  std::vector<qwen35_tool_call_delta> calls;   // views of delta.tool_calls
};

namespace {

Status parse_json_arg(const char* text, const char* what, Json* out) {
  Status st = Json::Parse(text, out);
  if (!st.ok()) return Error(QWEN35_ERR_INVALID_ARG, "{}: {}", what, st.message());
  return Status::Ok();
}

Status convert_message(const qwen35_chat_message& in, size_t i, ChatMessage* out) {
  if (!in.role) return Error(QWEN35_ERR_INVALID_ARG, "message {}: role is NULL", i);
  out->role = in.role;
  if (in.n_parts > 0) {
    if (!in.parts) return Error(QWEN35_ERR_INVALID_ARG, "message {}: n_parts is {} but parts is NULL", i, in.n_parts);
    for (size_t k = 0; k < in.n_parts; ++k) {
      const qwen35_content_part& p = in.parts[k];
      ContentPart part;
      switch (raw_enum(p.type)) {
        case QWEN35_PART_TEXT:
          if (!p.text) return Error(QWEN35_ERR_INVALID_ARG, "message {}: text part {} has a NULL text", i, k);
          part.type = ContentPart::Type::Text;
          part.text = p.text;
          break;
        case QWEN35_PART_IMAGE:
          part.type = ContentPart::Type::Image;
          part.media = p.image;   // NULL: the placeholder only
          break;
        case QWEN35_PART_VIDEO:
          part.type = ContentPart::Type::Video;
          part.media = p.image;
          break;
        default: return Error(QWEN35_ERR_INVALID_ARG, "message {}: part {} has an unknown type {}", i, k, raw_enum(p.type));
      }
      out->parts.push_back(std::move(part));
    }
  } else if (in.content) {
    out->content = std::string(in.content);
  }
  if (in.reasoning_content) out->reasoning_content = std::string(in.reasoning_content);
  if (in.tool_calls_json) {
    QWEN35_TRY(parse_json_arg(in.tool_calls_json, fmt::format("message {}: tool_calls_json", i).c_str(),
                              &out->tool_calls));
    if (!out->tool_calls.is_array())
      return Error(QWEN35_ERR_INVALID_ARG, "message {}: tool_calls_json must be a JSON array", i);
  }
  if (in.name) out->name = in.name;
  return Status::Ok();
}

char* dup_string(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (!p) return nullptr;
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = 0;
  return p;
}

void clear_delta(qwen35_reply_delta* d) {
  if (!d) return;
  d->reasoning_content = "";
  d->reasoning_content_len = 0;
  d->content = "";
  d->content_len = 0;
  d->tool_calls = nullptr;
  d->n_tool_calls = 0;
}

// Point `out` at the delta the parser just produced.
void expose_delta(qwen35_reply_parser* p, qwen35_reply_delta* out) {
  const ChatReplyDelta& d = p->delta;
  p->calls.clear();
  for (const ChatReplyDelta::ToolCallDelta& tc : d.tool_calls) {
    qwen35_tool_call_delta c;
    c.index = int32_t(tc.index);
    c.id = tc.id.empty() ? nullptr : tc.id.c_str();   // set exactly when the call is announced
    c.name = tc.id.empty() ? nullptr : tc.name.c_str();
    c.arguments = tc.arguments.c_str();
    c.arguments_len = tc.arguments.size();
    p->calls.push_back(c);
  }
  out->reasoning_content = d.reasoning_content.c_str();
  out->reasoning_content_len = d.reasoning_content.size();
  out->content = d.content.c_str();
  out->content_len = d.content.size();
  out->tool_calls = p->calls.empty() ? nullptr : p->calls.data();
  out->n_tool_calls = p->calls.size();
}

// push (text != nullptr) or finish (text == nullptr).
qwen35_status feed(qwen35_reply_parser* p, const char* text, size_t len, qwen35_reply_delta* delta,
                   const char* fn) {
  clear_delta(delta);
  if (!p) return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: parser is NULL", fn));
  if (p->finished)
    return set_error(QWEN35_ERR_STATE, fmt::format("{}: the parser was already finished", fn));
  try {
    p->delta = ChatReplyDelta();
    p->calls.clear();
    ChatReplyDelta* d = delta ? &p->delta : nullptr;
    if (text) {
      p->parser.push(std::string_view(text, len), d);
    } else {
      p->parser.finish(d);
      p->finished = true;
    }
    if (delta) expose_delta(p, delta);
    return QWEN35_OK;
  } catch (const std::bad_alloc&) {
    clear_delta(delta);
    return set_error(QWEN35_ERR_OUT_OF_MEMORY, fmt::format("{}: out of memory", fn));
  } catch (...) {
    clear_delta(delta);
    return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: unexpected failure", fn));
  }
}

}  // namespace

namespace qwen35 {
namespace {

// A parsed reply in the C form (qwen35_chat_parse and
// qwen35_reply_parser_result): the first n_calls tool calls go into
// tool_calls_json. `out` is zeroed by the caller; on failure it is freed.
qwen35_status reply_to_c(const ChatReply& r, size_t n_calls, qwen35_chat_reply* out, const char* fn) {
  std::string calls;
  if (n_calls > 0) {
    calls = "[";
    for (size_t k = 0; k < n_calls; ++k) {
      if (k) calls += ",";
      calls += "{\"name\":";
      json_escape(r.tool_calls[k].name, false, &calls);
      calls += ",\"arguments\":" + r.tool_calls[k].arguments + "}";
    }
    calls += "]";
  }
  out->content = dup_string(r.content);
  out->reasoning_content = r.reasoning_content.empty() ? nullptr : dup_string(r.reasoning_content);
  out->tool_calls_json = calls.empty() ? nullptr : dup_string(calls);
  out->n_tool_calls = int32_t(n_calls);
  if (!out->content || (!r.reasoning_content.empty() && !out->reasoning_content) ||
      (!calls.empty() && !out->tool_calls_json)) {
    qwen35_chat_reply_free(out);
    return set_error(QWEN35_ERR_OUT_OF_MEMORY, fmt::format("{}: out of memory", fn));
  }
  return QWEN35_OK;
}

}  // namespace

Status ConvertChatRequest(const qwen35_chat_message* messages, size_t n, const qwen35_chat_params* params,
                          std::vector<ChatMessage>* msgs, ChatOptions* opt) {
  if (n > 0 && !messages) return Error(QWEN35_ERR_INVALID_ARG, "messages is NULL");
  qwen35_chat_params p = read_params(params, qwen35_chat_default_params());
  if (p.enable_thinking < -1 || p.enable_thinking > 1)
    return Error(QWEN35_ERR_INVALID_ARG, "enable_thinking must be -1, 0 or 1 (got {})", p.enable_thinking);
  msgs->assign(n, ChatMessage());
  for (size_t i = 0; i < n; ++i) QWEN35_TRY(convert_message(messages[i], i, &(*msgs)[i]));
  if (p.tools_json) {
    QWEN35_TRY(parse_json_arg(p.tools_json, "tools_json", &opt->tools));
    if (!opt->tools.is_array()) return Error(QWEN35_ERR_INVALID_ARG, "tools_json must be a JSON array");
  }
  opt->add_generation_prompt = p.add_generation_prompt;
  opt->enable_thinking = p.enable_thinking;
  if (p.template_override) opt->template_override = p.template_override;
  return Status::Ok();
}

}  // namespace qwen35

extern "C" {

qwen35_chat_params qwen35_chat_default_params(void) {
  qwen35_chat_params p;
  std::memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.tools_json = nullptr;
  p.add_generation_prompt = true;
  p.enable_thinking = -1;
  p.template_override = nullptr;
  return p;
}

int32_t qwen35_chat_render(const qwen35_model* model, const qwen35_chat_message* messages, size_t n,
                           const qwen35_chat_params* params, char* buf, size_t buf_size, size_t* needed) {
  try {
    if (!model || !model->m) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_chat_render: model is NULL");
    if (!buf && buf_size > 0) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_chat_render: buf is NULL");
    std::vector<ChatMessage> msgs;
    ChatOptions opt;
    Status cst = ConvertChatRequest(messages, n, params, &msgs, &opt);
    if (!cst.ok()) return set_error(cst.prefix("qwen35_chat_render: "));
    RenderedChat r;
    Status st = RenderChat(*model->m, msgs, opt, &r);
    if (!st.ok()) return set_error(st);
    const size_t len = r.prompt.size();
    if (len > size_t(INT32_MAX))
      return set_error(QWEN35_ERR_UNSUPPORTED, fmt::format("the rendered prompt has {} bytes (more than 2^31-1)", len));
    if (needed) *needed = len + 1;
    if (len > buf_size)
      return set_error(QWEN35_ERR_BUFFER_TOO_SMALL,
                       fmt::format("qwen35_chat_render: the prompt needs {} bytes, buf has {}", len + 1, buf_size));
    if (len) std::memcpy(buf, r.prompt.data(), len);
    if (len < buf_size) buf[len] = 0;
    return int32_t(len);
  } catch (const std::bad_alloc&) {
    return set_error(QWEN35_ERR_OUT_OF_MEMORY, "qwen35_chat_render: out of memory");
  } catch (...) {
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_chat_render: unexpected failure");
  }
}

qwen35_status qwen35_chat_parse(const char* text, size_t len, bool thinking, bool tools_offered,
                                qwen35_chat_reply* out) {
  if (!out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_chat_parse: out is NULL");
  std::memset(out, 0, sizeof *out);
  if (!text && len > 0) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_chat_parse: text is NULL");
  try {
    ReplyParseOptions o;
    o.thinking = thinking;
    o.parse_tool_calls = tools_offered;
    ChatReply r = ParseReply(std::string_view(text ? text : "", len), o);
    return reply_to_c(r, r.tool_calls.size(), out, "qwen35_chat_parse");
  } catch (const std::bad_alloc&) {
    qwen35_chat_reply_free(out);
    return set_error(QWEN35_ERR_OUT_OF_MEMORY, "qwen35_chat_parse: out of memory");
  } catch (...) {
    qwen35_chat_reply_free(out);
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_chat_parse: unexpected failure");
  }
}

void qwen35_chat_reply_free(qwen35_chat_reply* reply) {
  if (!reply) return;
  std::free(reply->reasoning_content);
  std::free(reply->content);
  std::free(reply->tool_calls_json);
  reply->reasoning_content = nullptr;
  reply->content = nullptr;
  reply->tool_calls_json = nullptr;
  reply->n_tool_calls = 0;
}

qwen35_status qwen35_reply_parser_create(bool thinking, bool tools_offered, const char* tools_json, uint64_t id_seed,
                                         qwen35_reply_parser** out) {
  if (!out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_reply_parser_create: out is NULL");
  *out = nullptr;
  try {
    ReplyParseOptions o;
    o.thinking = thinking;
    o.parse_tool_calls = tools_offered;
    o.id_seed = id_seed;
    if (tools_json) {
      Status st = parse_json_arg(tools_json, "tools_json", &o.tools);
      if (!st.ok()) return set_error(st.prefix("qwen35_reply_parser_create: "));
      if (!o.tools.is_array())
        return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_reply_parser_create: tools_json must be a JSON array");
    }
    *out = new qwen35_reply_parser(std::move(o));
    return QWEN35_OK;
  } catch (const std::bad_alloc&) {
    return set_error(QWEN35_ERR_OUT_OF_MEMORY, "qwen35_reply_parser_create: out of memory");
  } catch (...) {
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_reply_parser_create: unexpected failure");
  }
}

void qwen35_reply_parser_free(qwen35_reply_parser* p) { delete p; }

qwen35_status qwen35_reply_parser_push(qwen35_reply_parser* p, const char* text, size_t len,
                                       qwen35_reply_delta* delta) {
  if (!text && len > 0) {
    clear_delta(delta);
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_reply_parser_push: text is NULL");
  }
  return feed(p, text ? text : "", len, delta, "qwen35_reply_parser_push");
}

qwen35_status qwen35_reply_parser_finish(qwen35_reply_parser* p, qwen35_reply_delta* delta) {
  return feed(p, nullptr, 0, delta, "qwen35_reply_parser_finish");
}

qwen35_status qwen35_reply_parser_result(const qwen35_reply_parser* p, qwen35_chat_reply* out) {
  if (!out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_reply_parser_result: out is NULL");
  std::memset(out, 0, sizeof *out);
  if (!p) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_reply_parser_result: parser is NULL");
  try {
    const ChatReply& r = p->parser.reply();
    size_t n_calls = r.tool_calls.size();
    if (n_calls > 0 && p->parser.call_open()) --n_calls;   // its arguments are not valid JSON yet
    return reply_to_c(r, n_calls, out, "qwen35_reply_parser_result");
  } catch (const std::bad_alloc&) {
    qwen35_chat_reply_free(out);
    return set_error(QWEN35_ERR_OUT_OF_MEMORY, "qwen35_reply_parser_result: out of memory");
  } catch (...) {
    qwen35_chat_reply_free(out);
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_reply_parser_result: unexpected failure");
  }
}

}  // extern "C"
