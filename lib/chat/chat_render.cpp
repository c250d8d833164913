// Rendering a conversation into a prompt (spec tokenizer-chat.md §5):
// request normalisation (§5.4), the template's variables, the fallbacks
// when a template cannot run, and prompt facts the generation code needs.
#include <algorithm>

#include "chat/chat.h"
#include "chat/jinja_lexer.h"
#include "chat/sha256.h"
#include "model.h"
#include "tokenizer.h"

namespace qwen35 {

using jinja::Value;

namespace {

// §5.4: developer -> system, OpenAI string arguments -> objects, null
// content -> "", tools rebuilt as {"type","function":{"name","description",
// "parameters"}}.
Status normalize_tool_call(const Json& tc, size_t mi, size_t k, Json* out) {
  auto where = [&]() { return fmt::format("message {}: tool call {}: ", mi, k); };
  if (!tc.is_object()) return Error(QWEN35_ERR_INVALID_ARG, "{}must be a JSON object", where());
  Json r = tc;
  Json* f = r.find("function");
  Json* target = f && f->is_object() ? f : &r;
  if (Json* a = target->find("arguments"); a && a->is_string()) {
    Json parsed;
    Status st = Json::Parse(a->as_string(), &parsed);
    if (!st.ok()) return Error(QWEN35_ERR_INVALID_ARG, "{}arguments are not valid JSON ({})", where(), st.message());
    if (!parsed.is_object()) return Error(QWEN35_ERR_INVALID_ARG, "{}arguments must be a JSON object", where());
    *a = std::move(parsed);
  }
  *out = std::move(r);
  return Status::Ok();
}

Status normalize_tools(const Json& tools, Json* out) {
  if (tools.is_null()) {
    *out = Json();
    return Status::Ok();
  }
  if (!tools.is_array()) return Error(QWEN35_ERR_INVALID_ARG, "tools must be a JSON array");
  Json r = Json::array();
  for (size_t k = 0; k < tools.size(); ++k) {
    const Json& t = tools.as_array()[k];
    const Json* f = t.find("function");
    if (!f || !f->is_object()) f = &t;
    const Json* name = f->find("name");
    if (!name || !name->is_string())
      return Error(QWEN35_ERR_INVALID_ARG, "tool {}: needs a \"name\" (or \"function\": {{\"name\": ...}})", k);
    const Json* desc = f->find("description");
    const Json* params = f->find("parameters");
    Json fn = Json::object({{"name", *name},
                            {"description", desc ? *desc : Json("")},
                            {"parameters", params ? *params : Json::object()}});
    r.push_back(Json::object({{"type", Json("function")}, {"function", std::move(fn)}}));
  }
  *out = std::move(r);
  return Status::Ok();
}

Status normalize(const std::vector<ChatMessage>& in, const ChatOptions& opt, std::vector<ChatMessage>* msgs,
                 Json* tools) {
  *msgs = in;
  if (!opt.normalize) {
    *tools = opt.tools;
    return Status::Ok();
  }
  for (size_t i = 0; i < msgs->size(); ++i) {
    ChatMessage& m = (*msgs)[i];
    if (m.role == "developer") m.role = "system";
    if (!m.content && m.parts.empty()) m.content = std::string();
    if (m.tool_calls.is_null()) continue;
    if (!m.tool_calls.is_array()) return Error(QWEN35_ERR_INVALID_ARG, "message {}: tool_calls must be a JSON array", i);
    Json calls = Json::array();
    for (size_t k = 0; k < m.tool_calls.size(); ++k) {
      Json c;
      QWEN35_TRY(normalize_tool_call(m.tool_calls.as_array()[k], i, k, &c));
      calls.push_back(std::move(c));
    }
    m.tool_calls = std::move(calls);
  }
  return normalize_tools(opt.tools, tools);
}

Value part_value(const ContentPart& p) {
  switch (p.type) {
    case ContentPart::Type::Text:
      return Value::dict({{"type", Value::string("text")}, {"text", Value::string(p.text)}});
    case ContentPart::Type::Image: return Value::dict({{"type", Value::string("image")}});
    case ContentPart::Type::Video: return Value::dict({{"type", Value::string("video")}});
  }
  return Value::none();
}

Value message_value(const ChatMessage& m) {
  std::vector<std::pair<std::string, Value>> d;
  d.emplace_back("role", Value::string(m.role));
  if (!m.parts.empty()) {
    std::vector<Value> parts;
    for (const ContentPart& p : m.parts) parts.push_back(part_value(p));
    d.emplace_back("content", Value::list(std::move(parts)));
  } else {
    d.emplace_back("content", m.content ? Value::string(*m.content) : Value::none());
  }
  if (m.reasoning_content) d.emplace_back("reasoning_content", Value::string(*m.reasoning_content));
  if (!m.tool_calls.is_null()) d.emplace_back("tool_calls", Value::from_json(m.tool_calls));
  if (!m.name.empty()) d.emplace_back("name", Value::string(m.name));
  if (!m.tool_call_id.empty()) d.emplace_back("tool_call_id", Value::string(m.tool_call_id));
  return Value::dict(std::move(d));
}

ChatTemplate::Vars template_vars(const std::vector<ChatMessage>& msgs, const Json& tools, const ChatOptions& opt,
                                 const Vocab* vocab) {
  ChatTemplate::Vars v;
  std::vector<Value> list;
  for (const ChatMessage& m : msgs) list.push_back(message_value(m));
  v.emplace_back("messages", Value::list(std::move(list)));
  v.emplace_back("tools", Value::from_json(tools));
  v.emplace_back("documents", Value::none());
  v.emplace_back("add_generation_prompt", Value::boolean(opt.add_generation_prompt));
  if (opt.enable_thinking >= 0) v.emplace_back("enable_thinking", Value::boolean(opt.enable_thinking != 0));
  if (opt.add_vision_id) v.emplace_back("add_vision_id", Value::boolean(true));
  if (vocab) {
    if (vocab->bos() >= 0) v.emplace_back("bos_token", Value::string(std::string(vocab->text(vocab->bos()))));
    if (vocab->eos() >= 0) v.emplace_back("eos_token", Value::string(std::string(vocab->text(vocab->eos()))));
  }
  if (opt.extra_vars.is_object())
    for (const auto& kv : opt.extra_vars.as_object()) v.emplace_back(kv.first, Value::from_json(kv.second));
  return v;
}

// Does the generation start inside an open <think> block?
bool ends_in_think(const std::string& p) {
  size_t k = p.rfind("<think>");
  if (k == std::string::npos) return false;
  return p.find("</think>", k) == std::string::npos && p.find("<|im_end|>", k) == std::string::npos;
}

bool looks_like_qwen35(std::string_view src) {
  for (const char* marker : {"<|im_start|>", "<function=", "render_content", "enable_thinking"})
    if (src.find(marker) == std::string_view::npos) return false;
  return true;
}

std::string render_parts_chatml(const ChatMessage& m) {
  if (m.parts.empty()) return m.content.value_or("");
  std::string s;
  for (const ContentPart& p : m.parts) {
    if (p.type == ContentPart::Type::Text) s += p.text;
    else if (p.type == ContentPart::Type::Image) s += "<|vision_start|><|image_pad|><|vision_end|>";
    else s += "<|vision_start|><|video_pad|><|vision_end|>";
  }
  return s;
}

Status render_chatml(const std::vector<ChatMessage>& msgs, const Json& tools, const ChatOptions& opt,
                     std::string* out) {
  if (tools.is_array() && tools.size() > 0)
    return Error(QWEN35_ERR_UNSUPPORTED, "the chat template cannot be run and the ChatML fallback cannot present tools");
  std::string s;
  for (const ChatMessage& m : msgs) s += "<|im_start|>" + m.role + "\n" + render_parts_chatml(m) + "<|im_end|>\n";
  if (opt.add_generation_prompt) {
    s += "<|im_start|>assistant\n";
    if (opt.enable_thinking == 0) s += "<think>\n\n</think>\n\n";
  }
  *out = std::move(s);
  return Status::Ok();
}

}  // namespace

bool ExtractQwen35ToolLiterals(std::string_view src, std::string* t_head, std::string* t_instr) {
  std::vector<jinja::Token> toks;
  if (!jinja::Lex(src, jinja::LexOptions{}, &toks).ok()) return false;
  bool head = false, instr = false;
  for (const jinja::Token& t : toks) {
    if (t.type != jinja::Tok::String) continue;
    const std::string& s = t.text;
    if (!head && s.compare(0, 7, "# Tools") == 0 && s.size() >= 7 && s.compare(s.size() - 7, 7, "<tools>") == 0) {
      *t_head = s;
      head = true;
    } else if (!instr && s.compare(0, 2, "\n\n") == 0 && s.find("<function=example_function_name>") != std::string::npos) {
      *t_instr = s;
      instr = true;
    }
  }
  return head && instr;
}

Status RenderChatWithTemplate(std::string_view template_source, const Vocab* vocab, const Logger& log,
                              const std::vector<ChatMessage>& messages, const ChatOptions& options,
                              RenderedChat* out) {
  std::vector<ChatMessage> msgs;
  Json tools;
  QWEN35_TRY(normalize(messages, options, &msgs, &tools));
  if (!options.extra_vars.is_null() && !options.extra_vars.is_object())
    return Error(QWEN35_ERR_INVALID_ARG, "extra template variables must be a JSON object");

  RenderedChat r;
  for (const ChatMessage& m : msgs)
    for (const ContentPart& p : m.parts)
      if (p.type != ContentPart::Type::Text) r.media.push_back(p);

  const bool override = !options.template_override.empty();
  std::string_view src = override ? std::string_view(options.template_override) : template_source;
  Status why;   // the reason for falling back
  if (src.empty()) {
    why = Error(QWEN35_ERR_UNSUPPORTED, "the model has no chat template");
  } else {
    std::unique_ptr<ChatTemplate> tmpl;
    why = ChatTemplate::Parse(src, &tmpl);
    if (why.ok()) why = tmpl->Render(template_vars(msgs, tools, options, vocab), options.limits, &r.prompt);
    if (why.ok()) {
      r.renderer = RenderedChat::Renderer::Template;
    } else if (override || why.code() == QWEN35_ERR_INVALID_ARG) {
      return why;   // an explicit template, or a conversation the template rejects
    }
  }
  if (!why.ok()) {
    if (src.empty() || looks_like_qwen35(src)) {
      std::string head, instr;
      if (!src.empty()) {
        ExtractQwen35ToolLiterals(src, &head, &instr);
        std::string digest = chat::sha256_hex(src);
        if (digest != kQwen35TemplateSha256)
          log.warn("chat template (sha256 {}) differs from the Qwen3.5-4B template (sha256 {}); the built-in "
                   "renderer reproduces the latter",
                   digest, kQwen35TemplateSha256);
      }
      log.warn("{}; using the built-in Qwen3.5 chat renderer", why.message());
      ChatOptions o = options;
      o.tools = tools;
      QWEN35_TRY(RenderQwen35Builtin(msgs, o, head, instr, &r.prompt));
      r.renderer = RenderedChat::Renderer::Qwen35;
    } else {
      log.warn("{}; falling back to plain ChatML", why.message());
      QWEN35_TRY(render_chatml(msgs, tools, options, &r.prompt));
      r.renderer = RenderedChat::Renderer::ChatML;
    }
  }
  r.thinking = ends_in_think(r.prompt);
  *out = std::move(r);
  return Status::Ok();
}

Status RenderChat(const Model& model, const std::vector<ChatMessage>& messages, const ChatOptions& options,
                  RenderedChat* out) {
  std::string_view src;
  if (model.vocab) {
    src = model.vocab->chat_template();
  } else if (model.file) {
    bool found = false;
    QWEN35_TRY(model.file->get_string("tokenizer.chat_template", &src, &found));
  }
  return RenderChatWithTemplate(src, model.vocab.get(), model.log, messages, options, out);
}

}  // namespace qwen35
