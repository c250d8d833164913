// The chat layer (spec tokenizer-chat.md §5-§6): render a conversation with
// the model's own Jinja chat template, and parse a generated reply into
// reasoning, content and tool calls (complete or streaming).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat/template.h"
#include "json.h"
#include "log.h"
#include "status.h"

namespace qwen35 {

struct Model;
class Vocab;

// ---------------------------------------------------------------------------
// Rendering

struct ContentPart {
  enum class Type { Text, Image, Video };
  Type type = Type::Text;
  std::string text;              // Text
  const void* media = nullptr;   // Image/Video: the caller's handle (e.g. a qwen35_image_embed); may be null
};

struct ChatMessage {
  std::string role;                              // "system", "user", "assistant", "tool" ("developer" = system)
  std::optional<std::string> content;            // text content; nullopt = null (used when parts is empty)
  std::vector<ContentPart> parts;                // multi-part content; used instead of content when non-empty
  std::optional<std::string> reasoning_content;  // assistant
  Json tool_calls;                               // assistant: null or an array of {"name","arguments"} or
                                                 // OpenAI {"type":"function","function":{...}} objects
  std::string name;                              // optional
  std::string tool_call_id;                      // optional (tool results)
};

struct ChatOptions {
  Json tools;                       // null or an array of tool definitions (OpenAI or bare function objects)
  bool add_generation_prompt = true;
  int enable_thinking = -1;         // -1: template default (variable left undefined), 0: off, 1: on
  bool add_vision_id = false;       // "Picture N: " / "Video N: " labels
  std::string template_override;    // non-empty: render this Jinja template instead of the model's
  Json extra_vars;                  // null or an object of extra template variables (chat_template_kwargs)
  bool normalize = true;            // request normalisation of §5.4 (llama.cpp's, recommended)
  RenderLimits limits;
};

struct RenderedChat {
  enum class Renderer {
    Template,   // the Jinja template ran
    Qwen35,     // built-in Qwen3.5 renderer (§5.3), because the template could not run
    ChatML,     // plain ChatML, because the template could not run and is not a Qwen3.5 template
  };
  std::string prompt;               // tokenize with parse_special = true
  // The prompt ends inside an open <think> block: generation starts in
  // reasoning (the reply parser's `thinking`, and the sampling preset).
  bool thinking = false;
  // Image and video parts in the order their placeholders
  // (<|vision_start|><|image_pad|><|vision_end|>, one per part) appear in
  // the prompt; the generation code expands each pad into the image's rows.
  std::vector<ContentPart> media;
  Renderer renderer = Renderer::Template;
};

// Render with the model's template (tokenizer.chat_template), or
// options.template_override. If the model's template cannot be run (syntax
// or features outside the supported Jinja subset) the built-in Qwen3.5
// renderer (or ChatML for other templates) is used and a warning is logged.
// Errors: QWEN35_ERR_INVALID_ARG for conversations the template rejects
// (empty, misplaced system message, no user query, unknown role, bad tool
// call arguments, ...), with the template's own message.
Status RenderChat(const Model& model, const std::vector<ChatMessage>& messages, const ChatOptions& options,
                  RenderedChat* out);
// The same with an explicit template source and logger (vocabulary-only
// files, tests). `vocab` may be null (no bos_token/eos_token variables).
Status RenderChatWithTemplate(std::string_view template_source, const Vocab* vocab, const Logger& log,
                              const std::vector<ChatMessage>& messages, const ChatOptions& options,
                              RenderedChat* out);

// The built-in renderer of §5.3. t_head / t_instr are the two literals of
// the tools block (§5.2); empty means unknown (tools are then refused).
Status RenderQwen35Builtin(const std::vector<ChatMessage>& messages, const ChatOptions& options,
                           std::string_view t_head, std::string_view t_instr, std::string* out);
// Pull T_HEAD and T_INSTR out of a template's string literals. Returns false
// if either is missing.
bool ExtractQwen35ToolLiterals(std::string_view template_source, std::string* t_head, std::string* t_instr);

// SHA-256 of the Qwen3.5-4B template this renderer reproduces (§5.1).
constexpr const char* kQwen35TemplateSha256 = "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715";

// ---------------------------------------------------------------------------
// Reply parsing (§6)

struct ToolCall {
  std::string id;          // generated ("call_" + 24 alphanumerics); stable while streaming
  std::string name;
  std::string arguments;   // a JSON object, compact, keys in the order the model wrote them
};

struct ChatReply {
  std::string reasoning_content;
  std::string content;
  std::vector<ToolCall> tool_calls;
  std::vector<std::string> warnings;   // lenient repairs of malformed output
};

struct ReplyParseOptions {
  bool thinking = false;            // the prompt ended inside <think> (RenderedChat::thinking)
  bool extract_reasoning = true;    // false: reasoning stays in content, "<think>\n" put back (§6.1 case C)
  bool parse_tool_calls = false;    // tools were offered and tool choice is not "none"
  Json tools;                       // the tool definitions (typing of string parameters); may be null
  uint64_t id_seed = 0;             // tool-call id generator seed; 0 = random
};

// What one push() added. Text fields are appended to the reply's fields;
// a tool-call entry announces a new call (id and name set) and/or appends
// to the arguments of call `index`.
struct ChatReplyDelta {
  struct ToolCallDelta {
    size_t index = 0;
    std::string id;          // set when the call is announced
    std::string name;        // set when the call is announced
    std::string arguments;   // appended JSON text
  };
  std::string reasoning_content;
  std::string content;
  std::vector<ToolCallDelta> tool_calls;
  bool empty() const { return reasoning_content.empty() && content.empty() && tool_calls.empty(); }
};

// Incremental parser (§6.4). Feed generated text as it arrives (any
// chunking; detokenized with render_special = false); text that might be
// the start of a marker is held back until it is resolved. Fields only
// grow, and after finish() the reply equals ParseReply() of the whole text.
class ReplyParser {
 public:
  explicit ReplyParser(ReplyParseOptions options);
  void push(std::string_view text, ChatReplyDelta* delta = nullptr);
  void finish(ChatReplyDelta* delta = nullptr);
  const ChatReply& reply() const { return reply_; }
  // The last tool call's arguments are still growing (not yet valid JSON).
  bool call_open() const { return !args_closed_; }

 private:
  enum class State { Reasoning, ContentLead, Content, CallOpen, Body, Value, CallClose, AfterCall, Done };
  bool step(bool final, ChatReplyDelta* d);   // false: blocked until more text (or done)
  void run(bool final, ChatReplyDelta* d);
  void set_state(State s);
  size_t find_marker(std::string_view marker);   // from pos_, remembering where it cannot start
  void warn(const std::string& w);
  void emit_reasoning(std::string_view s, ChatReplyDelta* d);
  void emit_content(std::string_view s, ChatReplyDelta* d);
  void emit_args(std::string_view s, ChatReplyDelta* d);
  void open_call(std::string name, ChatReplyDelta* d);
  void close_args(ChatReplyDelta* d);
  bool param_is_string(const std::string& fn, const std::string& param) const;
  void stream_string_value(std::string_view v, ChatReplyDelta* d);
  void finish_value(std::string_view raw, ChatReplyDelta* d);
  std::string next_id();

  ReplyParseOptions opt_;
  ChatReply reply_;
  std::string buf_;                  // all text received
  size_t pos_ = 0;                   // consumed (emitted or dropped) up to here
  size_t searched_ = 0;              // the current marker cannot start before this
  size_t ws_scanned_ = 0;            // leading reasoning whitespace checked up to here
  State st_ = State::ContentLead;
  bool prefix_pending_ = false;      // case C: "<think>\n" still to report in a delta
  bool reasoning_started_ = false;   // non-whitespace reasoning seen (and emitted)
  bool first_param_ = true;
  bool args_closed_ = true;
  bool value_is_string_ = false;
  size_t value_lead_ = SIZE_MAX;     // bytes skipped at the value start (grammar newline + one blank); MAX = undecided
  size_t value_emitted_ = 0;         // bytes of the value text already emitted
  uint64_t rng_ = 0;
};

ChatReply ParseReply(std::string_view text, const ReplyParseOptions& options);

}  // namespace qwen35
