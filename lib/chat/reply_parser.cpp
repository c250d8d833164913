// Parsing a generated reply into reasoning, content and tool calls (spec
// tokenizer-chat.md §6), as one incremental state machine: the complete
// parse is the streaming parse fed everything at once, so the two always
// agree. Lenient on malformed output (§6.2), equal to llama.cpp on
// well-formed output.
#include <algorithm>
#include <random>

#include "chat/chat.h"

namespace qwen35 {

namespace {

constexpr std::string_view kThinkEnd = "</think>";
constexpr std::string_view kToolOpen = "<tool_call>";
constexpr std::string_view kToolClose = "</tool_call>";
constexpr std::string_view kFnOpen = "<function=";
constexpr std::string_view kFnClose = "</function>";
constexpr std::string_view kParamOpen = "<parameter=";
constexpr std::string_view kParamClose = "</parameter>";
// Function and parameter names longer than this end a tag attempt (so a
// stray "<function=" cannot hold back text forever).
constexpr size_t kMaxName = 1024;

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

bool all_ws(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; });
}

std::string_view trim_ws(std::string_view s) {
  while (!s.empty() && is_ws(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ws(s.back())) s.remove_suffix(1);
  return s;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Length of the longest suffix of s that is a proper prefix of marker.
size_t partial_suffix(std::string_view s, std::string_view marker) {
  for (size_t k = std::min(s.size(), marker.size() - 1); k > 0; --k)
    if (s.substr(s.size() - k) == marker.substr(0, k)) return k;
  return 0;
}

// s is non-empty and could still grow into marker.
bool is_partial(std::string_view s, std::string_view marker) {
  return !s.empty() && s.size() < marker.size() && marker.substr(0, s.size()) == s;
}

// JSON string escaping without the quotes.
std::string escape_body(std::string_view s) {
  std::string q;
  json_escape(s, false, &q);
  return q.substr(1, q.size() - 2);
}

// Python-style container text -> JSON: 'single-quoted' strings become
// "double-quoted", bare True/False/None become true/false/null.
std::string python_to_json(std::string_view s) {
  std::string out;
  size_t i = 0;
  auto word = [&](std::string_view w) {
    if (s.substr(i, w.size()) != w) return false;
    auto ident = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; };
    if (i > 0 && ident(s[i - 1])) return false;
    if (i + w.size() < s.size() && ident(s[i + w.size()])) return false;
    return true;
  };
  while (i < s.size()) {
    char c = s[i];
    if (c == '"') {   // copy a JSON string as is
      size_t j = i + 1;
      while (j < s.size() && s[j] != '"') j += s[j] == '\\' ? 2 : 1;
      out.append(s.substr(i, std::min(j + 1, s.size()) - i));
      i = j + 1;
    } else if (c == '\'') {
      out.push_back('"');
      size_t j = i + 1;
      for (; j < s.size() && s[j] != '\''; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          if (s[j + 1] == '\'') out.push_back('\'');
          else out.append(s.substr(j, 2));
          ++j;
        } else if (s[j] == '"') {
          out.append("\\\"");
        } else {
          out.push_back(s[j]);
        }
      }
      out.push_back('"');
      i = j + 1;
    } else if (word("True")) {
      out += "true";
      i += 4;
    } else if (word("False")) {
      out += "false";
      i += 5;
    } else if (word("None")) {
      out += "null";
      i += 4;
    } else {
      out.push_back(c);
      ++i;
    }
  }
  return out;
}

// A non-string parameter value as JSON text (§6.2, lenient).
std::string typed_value(std::string_view raw) {
  std::string_view v = trim_ws(raw);
  if (v == "True") return "true";
  if (v == "False") return "false";
  if (v == "None") return "null";
  std::string cand(v);
  if (!v.empty() && (v[0] == '[' || v[0] == '{')) cand = python_to_json(v);
  Json j;
  if (!cand.empty() && Json::Parse(cand, &j).ok()) return cand;
  std::string q;
  json_escape(v, false, &q);
  return q;
}

uint64_t splitmix64(uint64_t* s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

ReplyParser::ReplyParser(ReplyParseOptions options) : opt_(std::move(options)) {
  if (opt_.thinking && opt_.extract_reasoning) {
    st_ = State::Reasoning;
  } else if (opt_.thinking) {
    // Case C: reasoning stays in the content, with the prompt's opening tag.
    reply_.content = "<think>\n";
    prefix_pending_ = true;
    st_ = State::Content;
  } else {
    st_ = State::ContentLead;
  }
  if (opt_.id_seed != 0) {
    rng_ = opt_.id_seed;
  } else {
    std::random_device rd;
    rng_ = (uint64_t(rd()) << 32) ^ rd();
  }
}

std::string ReplyParser::next_id() {
  static const char kAlnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string id = "call_";
  for (int k = 0; k < 24; ++k) id.push_back(kAlnum[splitmix64(&rng_) % 62]);
  return id;
}

void ReplyParser::push(std::string_view text, ChatReplyDelta* d) {
  if (st_ == State::Done) return;
  buf_.append(text);
  run(false, d);
}

void ReplyParser::finish(ChatReplyDelta* d) {
  if (st_ == State::Done) return;
  run(true, d);
  st_ = State::Done;
}

void ReplyParser::run(bool final, ChatReplyDelta* d) {
  if (prefix_pending_) {
    prefix_pending_ = false;
    if (d) d->content += reply_.content;
  }
  while (step(final, d)) {
  }
}

void ReplyParser::set_state(State s) {
  st_ = s;
  searched_ = 0;
}

size_t ReplyParser::find_marker(std::string_view marker) {
  size_t from = std::max(pos_, searched_);
  size_t k = buf_.find(marker, from);
  if (k == std::string::npos && buf_.size() >= marker.size())
    searched_ = std::max(from, buf_.size() - marker.size() + 1);
  return k;
}

void ReplyParser::warn(const std::string& w) {
  if (reply_.warnings.empty() || reply_.warnings.back() != w) reply_.warnings.push_back(w);
}

void ReplyParser::emit_reasoning(std::string_view s, ChatReplyDelta* d) {
  if (s.empty()) return;
  reply_.reasoning_content.append(s);
  if (d) d->reasoning_content.append(s);
}

void ReplyParser::emit_content(std::string_view s, ChatReplyDelta* d) {
  if (s.empty()) return;
  reply_.content.append(s);
  if (d) d->content.append(s);
}

void ReplyParser::emit_args(std::string_view s, ChatReplyDelta* d) {
  if (s.empty() || reply_.tool_calls.empty()) return;
  size_t idx = reply_.tool_calls.size() - 1;
  reply_.tool_calls.back().arguments.append(s);
  if (!d) return;
  if (d->tool_calls.empty() || d->tool_calls.back().index != idx) {
    ChatReplyDelta::ToolCallDelta td;
    td.index = idx;
    d->tool_calls.push_back(std::move(td));
  }
  d->tool_calls.back().arguments.append(s);
}

void ReplyParser::open_call(std::string name, ChatReplyDelta* d) {
  ToolCall tc;
  tc.id = next_id();
  tc.name = std::move(name);
  if (d) {
    ChatReplyDelta::ToolCallDelta td;
    td.index = reply_.tool_calls.size();
    td.id = tc.id;
    td.name = tc.name;
    d->tool_calls.push_back(std::move(td));
  }
  reply_.tool_calls.push_back(std::move(tc));
  args_closed_ = false;
  first_param_ = true;
  emit_args("{", d);
}

void ReplyParser::close_args(ChatReplyDelta* d) {
  if (args_closed_) return;
  emit_args("}", d);
  args_closed_ = true;
}

bool ReplyParser::param_is_string(const std::string& fn, const std::string& param) const {
  if (!opt_.tools.is_array()) return false;
  for (const Json& t : opt_.tools.as_array()) {
    const Json* f = t.find("function");
    if (!f || !f->is_object()) f = &t;
    const Json* name = f->find("name");
    if (!name || !name->is_string() || name->as_string() != fn) continue;
    const Json* params = f->find("parameters");
    const Json* props = params ? params->find("properties") : nullptr;
    const Json* p = props ? props->find(param) : nullptr;
    if (!p) return false;
    const Json* type = p->find("type");
    if (type && type->is_string()) return type->as_string() == "string";
    if (type && type->is_array()) {   // ["string", "null"]
      bool str = false, other = false;
      for (const Json& x : type->as_array()) {
        if (x.is_string() && x.as_string() == "string") str = true;
        else if (!(x.is_string() && x.as_string() == "null")) other = true;
      }
      return str && !other;
    }
    if (const Json* e = p->find("enum"); e && e->is_array() && e->size() > 0)
      return std::all_of(e->as_array().begin(), e->as_array().end(), [](const Json& x) { return x.is_string(); });
    return false;
  }
  return false;
}

// Emit what is certain of a string-typed value. `v` is the raw value text
// so far (the "</parameter>" prefix that may be arriving is excluded). The
// value drops the grammar newline, then at most one leading and one
// trailing blank, so those stay undecided until more text arrives.
void ReplyParser::stream_string_value(std::string_view v, ChatReplyDelta* d) {
  if (value_lead_ == SIZE_MAX) {
    size_t i = !v.empty() && v[0] == '\n' ? 1 : 0;
    if (v.size() <= i) return;
    value_lead_ = i + (is_ws(v[i]) ? 1 : 0);
  }
  size_t end = v.size();
  if (end > value_lead_ && is_ws(v[end - 1])) --end;
  if (end > value_lead_ + value_emitted_) {
    emit_args(escape_body(v.substr(value_lead_ + value_emitted_, end - value_lead_ - value_emitted_)), d);
    value_emitted_ = end - value_lead_;
  }
}

void ReplyParser::finish_value(std::string_view raw, ChatReplyDelta* d) {
  std::string_view v = raw;
  if (!v.empty() && v[0] == '\n') v.remove_prefix(1);   // the grammar's newline
  if (!v.empty() && is_ws(v[0])) v.remove_prefix(1);    // at most one blank each side (llama.cpp)
  if (!v.empty() && is_ws(v.back())) v.remove_suffix(1);
  if (value_is_string_) {
    emit_args(escape_body(v.substr(std::min(value_emitted_, v.size()))) + "\"", d);
  } else {
    emit_args(typed_value(v), d);
  }
}

bool ReplyParser::step(bool final, ChatReplyDelta* d) {
  const size_t n = buf_.size();
  auto view = [&](size_t p) { return std::string_view(buf_).substr(p); };
  auto skip_ws = [&](size_t p) {
    while (p < n && is_ws(buf_[p])) ++p;
    return p;
  };
  switch (st_) {
    case State::Reasoning: {
      size_t k = find_marker(kThinkEnd);
      if (k != std::string::npos) {
        std::string_view r = std::string_view(buf_).substr(pos_, k - pos_);
        if (!r.empty() && r.back() == '\n') r.remove_suffix(1);
        if (!reasoning_started_ && all_ws(r)) r = {};
        emit_reasoning(r, d);
        pos_ = k + kThinkEnd.size();
        set_state(State::ContentLead);
        return true;
      }
      std::string_view rest = view(pos_);
      if (final) {   // truncated while thinking: drop only a partial "\n</think>\n\n"
        emit_reasoning(rest.substr(0, rest.size() - partial_suffix(rest, "\n</think>\n\n")), d);
        pos_ = n;
        set_state(State::Done);
        return false;
      }
      size_t hold = std::max(partial_suffix(rest, "\n</think>"), partial_suffix(rest, kThinkEnd));
      std::string_view avail = rest.substr(0, rest.size() - hold);
      if (!reasoning_started_) {
        // Whitespace-only reasoning becomes "" if </think> follows; hold it.
        size_t from = std::max(pos_, ws_scanned_);
        if (all_ws(std::string_view(buf_).substr(from, pos_ + avail.size() - std::min(from, pos_ + avail.size())))) {
          ws_scanned_ = pos_ + avail.size();
          return false;
        }
        reasoning_started_ = true;
      }
      emit_reasoning(avail, d);
      pos_ += avail.size();
      return false;
    }
    case State::ContentLead:
      pos_ = skip_ws(pos_);
      if (pos_ == n) return false;
      set_state(State::Content);
      return true;
    case State::Content: {
      if (!opt_.parse_tool_calls) {
        emit_content(view(pos_), d);
        pos_ = n;
        return false;
      }
      size_t k = find_marker(kToolOpen);
      if (k != std::string::npos) {
        emit_content(std::string_view(buf_).substr(pos_, k - pos_), d);
        pos_ = k;
        set_state(State::CallOpen);
        return true;
      }
      std::string_view rest = view(pos_);
      size_t keep = rest.size() - (final ? 0 : partial_suffix(rest, kToolOpen));
      emit_content(rest.substr(0, keep), d);
      pos_ += keep;
      return false;
    }
    case State::CallOpen: {
      // "<tool_call>" WS "<function=" NAME ">"; anything else leaves the
      // tag in the content as text.
      auto fail = [&]() {
        warn("a <tool_call> without a <function=...> header was left in the content");
        emit_content(kToolOpen, d);
        pos_ += kToolOpen.size();
        set_state(State::Content);
        return true;
      };
      size_t p = skip_ws(pos_ + kToolOpen.size());
      std::string_view rest = view(p);
      if (rest.size() < kFnOpen.size()) {
        if (final || !(rest.empty() || is_partial(rest, kFnOpen))) return fail();
        return false;
      }
      if (!starts_with(rest, kFnOpen)) return fail();
      size_t q = p + kFnOpen.size();
      size_t gt = buf_.find_first_of(">\n", q);
      if (gt == std::string::npos) {
        if (final || n - q > kMaxName) return fail();
        return false;
      }
      std::string_view name = trim_ws(std::string_view(buf_).substr(q, gt - q));
      if (buf_[gt] == '\n' || name.empty()) return fail();
      open_call(std::string(name), d);
      pos_ = gt + 1;
      set_state(State::Body);
      return true;
    }
    case State::Body: {
      size_t p = skip_ws(pos_);
      std::string_view rest = view(p);
      auto end_call = [&]() {
        close_args(d);
        set_state(State::Done);
        return false;
      };
      if (rest.empty()) {
        pos_ = p;
        return final ? end_call() : false;
      }
      if (starts_with(rest, kParamOpen)) {
        size_t q = p + kParamOpen.size();
        size_t gt = buf_.find_first_of(">\n", q);
        if (gt == std::string::npos && (final || n - q <= kMaxName)) {
          pos_ = p;
          return final ? end_call() : false;
        }
        if (gt != std::string::npos && buf_[gt] == '>') {
          std::string pname(trim_ws(std::string_view(buf_).substr(q, gt - q)));
          value_is_string_ = param_is_string(reply_.tool_calls.back().name, pname);
          std::string head = first_param_ ? "" : ",";
          json_escape(pname, false, &head);
          head += value_is_string_ ? ":\"" : ":";
          emit_args(head, d);
          first_param_ = false;
          value_lead_ = SIZE_MAX;
          value_emitted_ = 0;
          pos_ = gt + 1;
          set_state(State::Value);
          return true;
        }
      } else if (starts_with(rest, kFnClose)) {
        close_args(d);
        pos_ = p + kFnClose.size();
        set_state(State::CallClose);
        return true;
      } else if (starts_with(rest, kToolClose)) {
        warn("a tool call without </function> was closed at </tool_call>");
        close_args(d);
        pos_ = p + kToolClose.size();
        set_state(State::AfterCall);
        return true;
      } else if (!final && (is_partial(rest, kParamOpen) || is_partial(rest, kFnClose) || is_partial(rest, kToolClose))) {
        pos_ = p;
        return false;
      }
      // Text that is not a parameter: skip to the next tag.
      warn("text inside a tool call that is not a <parameter=...> was ignored");
      size_t next = buf_.find('<', p + 1);
      pos_ = next == std::string::npos ? n : next;
      return next != std::string::npos || final;
    }
    case State::Value: {
      size_t k = find_marker(kParamClose);
      if (k != std::string::npos) {
        finish_value(std::string_view(buf_).substr(pos_, k - pos_), d);
        pos_ = k + kParamClose.size();
        set_state(State::Body);
        return true;
      }
      std::string_view rest = view(pos_);
      std::string_view v = rest.substr(0, rest.size() - partial_suffix(rest, kParamClose));
      if (final) {   // truncated inside a value: keep what there is
        warn("the reply ended inside a tool call");
        finish_value(v, d);
        close_args(d);
        pos_ = n;
        set_state(State::Done);
        return false;
      }
      if (value_is_string_) stream_string_value(v, d);
      return false;
    }
    case State::CallClose: {
      size_t p = skip_ws(pos_);
      std::string_view rest = view(p);
      if (starts_with(rest, kToolClose)) {
        pos_ = p + kToolClose.size();
        set_state(State::AfterCall);
        return true;
      }
      if (rest.empty() || (!final && is_partial(rest, kToolClose))) {
        pos_ = p;
        return false;
      }
      warn("a tool call without </tool_call> ended at </function>");
      pos_ = p;
      set_state(State::AfterCall);
      return true;
    }
    case State::AfterCall: {
      pos_ = skip_ws(pos_);
      std::string_view rest = view(pos_);
      if (rest.empty()) return false;
      if (starts_with(rest, kToolOpen)) {
        set_state(State::CallOpen);
        return true;
      }
      if (!final && is_partial(rest, kToolOpen)) return false;
      warn("text after the tool calls was appended to the content");
      set_state(State::Content);
      return true;
    }
    case State::Done: return false;
  }
  return false;
}

ChatReply ParseReply(std::string_view text, const ReplyParseOptions& options) {
  ReplyParser p(options);
  p.push(text);
  p.finish();
  return p.reply();
}

}  // namespace qwen35
