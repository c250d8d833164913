// Reply parsing (spec tokenizer-chat.md §6, §8.7): the worked parses, the
// lenient divergences, and streaming (every chunking gives the complete
// parse, deltas only grow, markers are held back).
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "chat/chat.h"
#include "qwen35/qwen35.h"

using namespace qwen35;

namespace {

const char* kTools =
    R"([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties":)"
    R"( {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}])";

ReplyParseOptions opts(bool thinking, bool tools = true) {
  ReplyParseOptions o;
  o.thinking = thinking;
  o.parse_tool_calls = tools;
  if (tools) REQUIRE(Json::Parse(kTools, &o.tools).ok());
  o.id_seed = 42;
  return o;
}

// Feed `text` in the given chunk sizes, check every delta's invariants, and
// return the reply rebuilt from the deltas alone.
ChatReply stream(const std::string& text, const ReplyParseOptions& o, const std::vector<size_t>& chunks) {
  ReplyParser p(o);
  ChatReply acc;
  auto apply = [&](const ChatReplyDelta& d) {
    acc.reasoning_content += d.reasoning_content;
    acc.content += d.content;
    for (const auto& tc : d.tool_calls) {
      if (!tc.name.empty()) {
        REQUIRE(tc.index == acc.tool_calls.size());   // announced once, in order
        acc.tool_calls.push_back(ToolCall{tc.id, tc.name, ""});
      }
      REQUIRE(tc.index < acc.tool_calls.size());
      acc.tool_calls[tc.index].arguments += tc.arguments;
    }
    // What was emitted so far is exactly what the parser reports.
    CHECK(acc.reasoning_content == p.reply().reasoning_content);
    CHECK(acc.content == p.reply().content);
    REQUIRE(acc.tool_calls.size() == p.reply().tool_calls.size());
  };
  size_t pos = 0, k = 0;
  while (pos < text.size()) {
    size_t n = chunks.empty() ? text.size() : std::max<size_t>(1, chunks[k++ % chunks.size()]);
    ChatReplyDelta d;
    p.push(std::string_view(text).substr(pos, n), &d);
    apply(d);
    pos += n;
  }
  ChatReplyDelta d;
  p.finish(&d);
  apply(d);
  acc.warnings = p.reply().warnings;
  return acc;
}

// The reply in qwen35_chat_parse's form, built from a C++ reply.
std::string calls_json(const std::vector<ToolCall>& calls) {
  if (calls.empty()) return "";
  std::string j = "[";
  for (size_t k = 0; k < calls.size(); ++k) {
    if (k) j += ",";
    j += "{\"name\":";
    json_escape(calls[k].name, false, &j);
    j += ",\"arguments\":" + calls[k].arguments + "}";
  }
  return j + "]";
}

std::string str_or_empty(const char* s) { return s ? s : ""; }

// Stream `text` through the C API parser in the given chunk sizes (empty:
// all at once). Checks every delta and every intermediate result, and
// returns the final result plus the reply rebuilt from the deltas alone.
struct CStream {
  std::string reasoning, content, calls_json;
  int32_t n_calls = 0;
  ChatReply from_deltas;
};

CStream c_stream(const std::string& text, bool thinking, bool tools_offered, const char* tools_json, uint64_t seed,
                 const std::vector<size_t>& chunks) {
  qwen35_reply_parser* p = nullptr;
  REQUIRE(qwen35_reply_parser_create(thinking, tools_offered, tools_json, seed, &p) == QWEN35_OK);
  REQUIRE(p != nullptr);
  CStream out;
  ChatReply& acc = out.from_deltas;
  auto apply = [&](const qwen35_reply_delta& d) {
    REQUIRE(d.reasoning_content != nullptr);
    REQUIRE(d.content != nullptr);
    CHECK(std::strlen(d.reasoning_content) <= d.reasoning_content_len);   // NUL-terminated (text may hold NULs)
    CHECK(d.reasoning_content[d.reasoning_content_len] == 0);
    CHECK(d.content[d.content_len] == 0);
    acc.reasoning_content.append(d.reasoning_content, d.reasoning_content_len);
    acc.content.append(d.content, d.content_len);
    CHECK((d.tool_calls == nullptr) == (d.n_tool_calls == 0));
    for (size_t i = 0; i < d.n_tool_calls; ++i) {
      const qwen35_tool_call_delta& tc = d.tool_calls[i];
      CHECK((tc.id == nullptr) == (tc.name == nullptr));
      if (tc.id) {
        REQUIRE(size_t(tc.index) == acc.tool_calls.size());   // announced once, in order
        CHECK(std::strlen(tc.id) == 29);
        acc.tool_calls.push_back(ToolCall{tc.id, tc.name, ""});
      }
      REQUIRE(tc.index >= 0);
      REQUIRE(size_t(tc.index) < acc.tool_calls.size());
      REQUIRE(tc.arguments != nullptr);
      CHECK(tc.arguments[tc.arguments_len] == 0);
      acc.tool_calls[size_t(tc.index)].arguments.append(tc.arguments, tc.arguments_len);
    }
    // The result so far agrees with the deltas, and its JSON is valid.
    qwen35_chat_reply r;
    REQUIRE(qwen35_reply_parser_result(p, &r) == QWEN35_OK);
    CHECK(str_or_empty(r.reasoning_content) == acc.reasoning_content);
    REQUIRE(r.content != nullptr);
    CHECK(std::string(r.content) == acc.content);
    if (r.tool_calls_json) {
      Json j;
      CHECK(Json::Parse(r.tool_calls_json, &j).ok());
      CHECK(j.size() == size_t(r.n_tool_calls));
    }
    CHECK(size_t(r.n_tool_calls) <= acc.tool_calls.size());
    qwen35_chat_reply_free(&r);
  };
  size_t pos = 0, k = 0;
  while (pos < text.size()) {
    size_t n = chunks.empty() ? text.size() : std::max<size_t>(1, chunks[k++ % chunks.size()]);
    n = std::min(n, text.size() - pos);
    qwen35_reply_delta d;
    REQUIRE(qwen35_reply_parser_push(p, text.data() + pos, n, &d) == QWEN35_OK);
    apply(d);
    pos += n;
  }
  qwen35_reply_delta d;
  REQUIRE(qwen35_reply_parser_finish(p, &d) == QWEN35_OK);
  apply(d);
  qwen35_chat_reply r;
  REQUIRE(qwen35_reply_parser_result(p, &r) == QWEN35_OK);
  out.reasoning = str_or_empty(r.reasoning_content);
  out.content = r.content;
  out.calls_json = str_or_empty(r.tool_calls_json);
  out.n_calls = r.n_tool_calls;
  qwen35_chat_reply_free(&r);
  qwen35_reply_parser_free(p);
  CHECK(out.reasoning == acc.reasoning_content);
  CHECK(out.content == acc.content);
  CHECK(out.calls_json == calls_json(acc.tool_calls));
  CHECK(size_t(out.n_calls) == acc.tool_calls.size());
  return out;
}

// The C API streaming parser on `text`, with random chunkings: without tool
// definitions its result equals qwen35_chat_parse; with them it equals the
// C++ parse `full` (same ids for the same seed).
void check_c_api(const std::string& text, const ReplyParseOptions& o, const ChatReply& full) {
  if (!o.extract_reasoning) return;   // case C has no C API switch
  std::mt19937 rng(uint32_t(text.size()) + 7);
  std::vector<std::vector<size_t>> chunkings = {{1}, {}};
  for (int r = 0; r < 3; ++r) {
    std::vector<size_t> c;
    for (int i = 0; i < 16; ++i) c.push_back(1 + rng() % 12);
    chunkings.push_back(c);
  }
  qwen35_chat_reply ref;
  REQUIRE(qwen35_chat_parse(text.data(), text.size(), o.thinking, o.parse_tool_calls, &ref) == QWEN35_OK);
  for (const auto& c : chunkings) {
    CStream s = c_stream(text, o.thinking, o.parse_tool_calls, nullptr, 0, c);
    CHECK(s.reasoning == str_or_empty(ref.reasoning_content));
    CHECK(s.content == ref.content);
    CHECK(s.calls_json == str_or_empty(ref.tool_calls_json));
    CHECK(s.n_calls == ref.n_tool_calls);
    if (o.tools.is_null()) continue;
    CStream t = c_stream(text, o.thinking, o.parse_tool_calls, kTools, o.id_seed, c);
    CHECK(t.reasoning == full.reasoning_content);
    CHECK(t.content == full.content);
    CHECK(t.calls_json == calls_json(full.tool_calls));
    REQUIRE(t.from_deltas.tool_calls.size() == full.tool_calls.size());
    for (size_t k = 0; k < full.tool_calls.size(); ++k) CHECK(t.from_deltas.tool_calls[k].id == full.tool_calls[k].id);
  }
  qwen35_chat_reply_free(&ref);
}

struct Expect {
  const char* reasoning;
  const char* content;
  std::vector<std::pair<const char*, const char*>> calls;   // name, arguments
};

// The complete parse, byte-at-a-time streaming and random chunkings must
// all give `e`.
void check_parse(const std::string& text, const ReplyParseOptions& o, const Expect& e) {
  CAPTURE(text);
  ChatReply full = ParseReply(text, o);
  CHECK(full.reasoning_content == e.reasoning);
  CHECK(full.content == e.content);
  REQUIRE(full.tool_calls.size() == e.calls.size());
  for (size_t k = 0; k < e.calls.size(); ++k) {
    CHECK(full.tool_calls[k].name == e.calls[k].first);
    CHECK(full.tool_calls[k].arguments == e.calls[k].second);
    CHECK(full.tool_calls[k].id.size() == 29);
    Json args;
    CHECK(Json::Parse(full.tool_calls[k].arguments, &args).ok());
  }
  std::mt19937 rng(uint32_t(text.size()));
  std::vector<std::vector<size_t>> chunkings = {{1}, {2}, {3, 1, 7}, {}};
  for (int r = 0; r < 4; ++r) {
    std::vector<size_t> c;
    for (int i = 0; i < 16; ++i) c.push_back(1 + rng() % 12);
    chunkings.push_back(c);
  }
  check_c_api(text, o, full);
  for (const auto& c : chunkings) {
    ChatReply s = stream(text, o, c);
    CHECK(s.reasoning_content == full.reasoning_content);
    CHECK(s.content == full.content);
    REQUIRE(s.tool_calls.size() == full.tool_calls.size());
    for (size_t k = 0; k < s.tool_calls.size(); ++k) {
      CHECK(s.tool_calls[k].id == full.tool_calls[k].id);
      CHECK(s.tool_calls[k].name == full.tool_calls[k].name);
      CHECK(s.tool_calls[k].arguments == full.tool_calls[k].arguments);
    }
  }
}

}  // namespace

TEST_CASE("worked parses of §6.3") {
  ReplyParseOptions on = opts(true);
  check_parse("I'm\nthinking\n</think>\n\nHello, world!", on, {"I'm\nthinking", "Hello, world!", {}});
  check_parse("\n\nLead newlines\n\n</think>\n\nAnswer", on, {"\n\nLead newlines\n", "Answer", {}});
  check_parse("reason\n\n</think>\n\n\n\nAnswer\n\n", on, {"reason\n", "Answer\n\n", {}});
  check_parse("No close tag, truncated reasoning", on, {"No close tag, truncated reasoning", "", {}});
  check_parse("reason\n</think>", on, {"reason", "", {}});
  check_parse("\n</think>\n\nAnswer", on, {"", "Answer", {}});
  check_parse("reason\n</think>\n\nfirst\n</think>\n\nsecond", on, {"reason", "first\n</think>\n\nsecond", {}});
  check_parse(
      "Need weather.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
      "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
      on, {"Need weather.", "", {{"get_weather", R"({"city":"Paris","days":2})"}}});
  check_parse(
      "r\n</think>\n\nLet me check.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
      "</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nLyon\n</parameter>\n"
      "</function>\n</tool_call>",
      on, {"r", "Let me check.\n\n", {{"get_weather", R"({"city":"Paris"})"}, {"get_weather", R"({"city":"Lyon"})"}}});
  check_parse(
      "r\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\n\nNew York\n\n</parameter>\n</function>\n"
      "</tool_call>",
      on, {"r", "", {{"get_weather", R"({"city":"New York\n"})"}}});
  check_parse(
      "<tool_call>\n<function=get_weather>\n<parameter=city>\nA \"quoted\" \\ value\n</parameter>\n</function>\n"
      "</tool_call>",
      opts(false), {"", "", {{"get_weather", R"({"city":"A \"quoted\" \\ value"})"}}});
}

TEST_CASE("lenient divergences of §8.7") {
  ReplyParseOptions on = opts(true);
  check_parse("reason\n</think>\nAnswer", on, {"reason", "Answer", {}});
  check_parse("reason</think>Answer", on, {"reason", "Answer", {}});
  check_parse("</think>\n\nDirect answer", on, {"", "Direct answer", {}});
  const char* call_fmt = "r\n</think>\n\n<tool_call>\n<function=%s>\n%s</function>\n</tool_call>%s";
  auto call = [&](const char* fn, const char* params, const char* after = "") {
    char buf[512];
    std::snprintf(buf, sizeof buf, call_fmt, fn, params, after);
    return std::string(buf);
  };
  check_parse(call("unknown_fn", "<parameter=x>\n1\n</parameter>\n"), on, {"r", "", {{"unknown_fn", R"({"x":1})"}}});
  check_parse(call("get_weather", "<parameter=days>\ntwo\n</parameter>\n"), on, {"r", "", {{"get_weather", R"({"days":"two"})"}}});
  check_parse(call("get_weather", "<parameter=days>\n3\n</parameter>\n<parameter=city>\nRome\n</parameter>\n"), on,
              {"r", "", {{"get_weather", R"({"days":3,"city":"Rome"})"}}});
  ChatReply with_trailing = ParseReply(call("get_weather", "<parameter=city>\nRome\n</parameter>\n", "\nDone."), on);
  CHECK(with_trailing.content == "Done.");
  CHECK_FALSE(with_trailing.warnings.empty());
  check_parse(call("get_weather", "<parameter=city>\nRome\n</parameter>\n", "\nDone."), on,
              {"r", "Done.", {{"get_weather", R"({"city":"Rome"})"}}});
  check_parse("r\n</think>\n\n<tool_call><function=get_weather><parameter=city>Paris</parameter></function></tool_call>", on,
              {"r", "", {{"get_weather", R"({"city":"Paris"})"}}});
  // Thinking off.
  ReplyParseOptions off = opts(false);
  check_parse("Hello there.", off, {"", "Hello there.", {}});
  check_parse("\n\nLeading", off, {"", "Leading", {}});
  check_parse("<think>\nunexpected\n</think>\n\nHi", off, {"", "<think>\nunexpected\n</think>\n\nHi", {}});
}

TEST_CASE("tool-call typing and edge cases (§6.2)") {
  ReplyParseOptions off = opts(false);
  auto one = [&](const char* params) {
    return std::string("<tool_call>\n<function=get_weather>\n") + params + "</function>\n</tool_call>";
  };
  check_parse(one("<parameter=city>\n\n</parameter>\n"), off, {"", "", {{"get_weather", R"({"city":""})"}}});
  check_parse("<tool_call>\n<function=noargs>\n</function>\n</tool_call>", off, {"", "", {{"noargs", "{}"}}});
  // Undeclared parameters: JSON when it parses (verbatim), Python literals, else a string.
  check_parse(one("<parameter=unit>\n{\"unit\": \"C\"}\n</parameter>\n<parameter=flag>\nTrue\n</parameter>\n"
                  "<parameter=none>\nNone\n</parameter>\n<parameter=py>\n{'a': 'it\\'s', 'b': [True, None]}\n</parameter>\n"
                  "<parameter=word>\n  hello world \n</parameter>\n<parameter=num>\n-1.5e3\n</parameter>\n"),
              off,
              {"", "", {{"get_weather", R"({"unit":{"unit": "C"},"flag":true,"none":null,"py":{"a": "it's", "b": [true, null]},"word":"hello world","num":-1.5e3})"}}});
  // A string parameter keeps inner whitespace and escapes control characters.
  check_parse(one("<parameter=city>\n  two  spaces\ttab\n</parameter>\n"), off,
              {"", "", {{"get_weather", R"({"city":" two  spaces\ttab"})"}}});
  // Tool calls are not parsed inside reasoning, nor when tools were not offered.
  check_parse("<tool_call>\n<function=f>\n</function>\n</tool_call>\n</think>\n\nok", opts(true),
              {"<tool_call>\n<function=f>\n</function>\n</tool_call>", "ok", {}});
  check_parse(one("<parameter=city>\nParis\n</parameter>\n"), opts(false, false),
              {"", one("<parameter=city>\nParis\n</parameter>\n").c_str(), {}});
  // A <tool_call> that is not a call stays in the content, and parsing continues.
  check_parse("a <tool_call> b <tool_call>\n<function=get_weather>\n</function>\n</tool_call>", off,
              {"", "a <tool_call> b ", {{"get_weather", "{}"}}});
  check_parse("x <tool_call>\n<func", off, {"", "x <tool_call>\n<func", {}});
  check_parse("<tool_call>\n<function=bad\nname>\n</function></tool_call>", off,
              {"", "<tool_call>\n<function=bad\nname>\n</function></tool_call>", {}});
  // Truncated inside a call: the call is kept with what was produced.
  check_parse("<tool_call>\n<function=get_weather>\n<parameter=city>\nPar", off,
              {"", "", {{"get_weather", R"({"city":"Par"})"}}});
  check_parse("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</param", off,
              {"", "", {{"get_weather", R"({"city":"Paris"})"}}});
  check_parse("<tool_call>\n<function=get_weather>\n<parameter=days>\n1", off,
              {"", "", {{"get_weather", R"({"days":1})"}}});
  check_parse("<tool_call>\n<function=get_weather>\n<parameter=ci", off, {"", "", {{"get_weather", "{}"}}});
  // Missing closing tags are tolerated; junk inside a call is skipped.
  check_parse("<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</tool_call>", off,
              {"", "", {{"get_weather", R"({"city":"Oslo"})"}}});
  check_parse("<tool_call>\n<function=get_weather>\nsome words\n<parameter=city>\nOslo\n</parameter>\n</function>\n"
              "</tool_call>",
              off, {"", "", {{"get_weather", R"({"city":"Oslo"})"}}});
  // Reasoning extraction off (§6.1 case C).
  ReplyParseOptions c = opts(true);
  c.extract_reasoning = false;
  check_parse("thought\n</think>\n\nAnswer", c, {"", "<think>\nthought\n</think>\n\nAnswer", {}});
  // Ids differ between calls and are random without a seed.
  ChatReply two = ParseReply(one("") + "\n" + one(""), off);
  REQUIRE(two.tool_calls.size() == 2);
  CHECK(two.tool_calls[0].id != two.tool_calls[1].id);
  ReplyParseOptions rnd = off;
  rnd.id_seed = 0;
  CHECK(ParseReply(one(""), rnd).tool_calls[0].id != ParseReply(one(""), rnd).tool_calls[0].id);
}

TEST_CASE("streaming holds back possible markers (§6.4)") {
  ReplyParser p(opts(true));
  ChatReplyDelta d;
  p.push("reason\n</think>\n\nSure <tool_ca", &d);
  CHECK(p.reply().reasoning_content == "reason");
  CHECK(p.reply().content == "Sure ");
  p.push("ll>\n<function=get_weather>\n", &d);
  REQUIRE(p.reply().tool_calls.size() == 1);
  CHECK(p.reply().tool_calls[0].name == "get_weather");
  CHECK(p.reply().tool_calls[0].arguments == "{");
  p.push("<parameter=city>\nPar", &d);
  CHECK(p.reply().tool_calls[0].arguments == R"({"city":"Par)");
  p.push("is\n</parameter>\n<parameter=days>\n1", &d);
  CHECK(p.reply().tool_calls[0].arguments == R"({"city":"Paris",)" R"("days":)");
  p.push("0\n</parameter>\n</function>\n</tool_call>", &d);
  CHECK(p.reply().tool_calls[0].arguments == R"({"city":"Paris","days":10})");
  p.finish(&d);
  CHECK(p.reply().content == "Sure ");
  // Whitespace-only reasoning is held until it is known not to be empty.
  ReplyParser q(opts(true));
  q.push("\n\n");
  CHECK(q.reply().reasoning_content.empty());
  q.push("x");
  CHECK(q.reply().reasoning_content == "\n\nx");
  // A trailing "\n" is held (it may start "\n</think>"), then released.
  ReplyParser r(opts(true));
  r.push("a\n");
  CHECK(r.reply().reasoning_content == "a");
  r.push("b</th");
  CHECK(r.reply().reasoning_content == "a\nb");
  r.finish();
  CHECK(r.reply().reasoning_content == "a\nb</th");
  // Long outputs stream in linear time (no re-parsing of the whole text).
  ReplyParser big(opts(true));
  std::string chunk(64, 'x');
  for (int i = 0; i < 20000; ++i) big.push(chunk);
  big.push("\n</think>\n\n");
  for (int i = 0; i < 20000; ++i) big.push(chunk);
  big.finish();
  CHECK(big.reply().reasoning_content.size() == 64 * 20000);
  CHECK(big.reply().content.size() == 64 * 20000);
}

TEST_CASE("render then parse: a tool call survives the round trip") {
  const char* generated =
      "I need the weather.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
      "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>";
  ChatReply r = ParseReply(generated, opts(true));
  REQUIRE(r.tool_calls.size() == 1);
  ChatMessage a;
  a.role = "assistant";
  a.content = r.content;
  a.reasoning_content = r.reasoning_content;
  REQUIRE(Json::Parse("[{\"name\": \"get_weather\", \"arguments\": " + r.tool_calls[0].arguments + "}]", &a.tool_calls).ok());
  ChatMessage u;
  u.role = "user";
  u.content = "Weather in Paris?";
  ChatOptions o;
  o.add_generation_prompt = false;
  RenderedChat out;
  REQUIRE(RenderQwen35Builtin({u, a}, o, "", "", &out.prompt).ok());
  CHECK(out.prompt == std::string("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<think>\n") +
                          generated + "<|im_end|>\n");
}

TEST_CASE("C API: qwen35_chat_parse") {
  const char* text =
      "Need weather.\n</think>\n\nOk.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
      "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>";
  qwen35_chat_reply r;
  REQUIRE(qwen35_chat_parse(text, std::strlen(text), true, true, &r) == QWEN35_OK);
  REQUIRE(r.reasoning_content != nullptr);
  CHECK(std::string(r.reasoning_content) == "Need weather.");
  CHECK(std::string(r.content) == "Ok.\n\n");
  REQUIRE(r.tool_calls_json != nullptr);
  CHECK(std::string(r.tool_calls_json) == R"([{"name":"get_weather","arguments":{"city":"Paris","days":2}}])");
  CHECK(r.n_tool_calls == 1);
  qwen35_chat_reply_free(&r);
  CHECK(r.content == nullptr);
  qwen35_chat_reply_free(nullptr);
  // No tools offered, thinking off: everything is content.
  REQUIRE(qwen35_chat_parse(text, std::strlen(text), false, false, &r) == QWEN35_OK);
  CHECK(r.reasoning_content == nullptr);
  CHECK(std::string(r.content) == text);
  CHECK(r.tool_calls_json == nullptr);
  CHECK(r.n_tool_calls == 0);
  qwen35_chat_reply_free(&r);
  // Embedded NUL bytes and empty input.
  REQUIRE(qwen35_chat_parse("a\0b", 3, false, false, &r) == QWEN35_OK);
  CHECK(std::string(r.content, 3) == std::string("a\0b", 3));
  qwen35_chat_reply_free(&r);
  REQUIRE(qwen35_chat_parse(nullptr, 0, true, false, &r) == QWEN35_OK);
  CHECK(std::string(r.content).empty());
  qwen35_chat_reply_free(&r);
  CHECK(qwen35_chat_parse(nullptr, 5, true, false, &r) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_chat_parse("x", 1, true, false, nullptr) == QWEN35_ERR_INVALID_ARG);
}

TEST_CASE("C API: qwen35_reply_parser streams tool calls") {
  const std::string text =
      "Need weather.\n</think>\n\nOk.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
      "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>";
  qwen35_reply_parser* p = nullptr;
  REQUIRE(qwen35_reply_parser_create(true, true, kTools, 7, &p) == QWEN35_OK);
  qwen35_reply_delta d;
  const size_t announced = text.find("<function=") + std::strlen("<function=get_weather>");
  REQUIRE(qwen35_reply_parser_push(p, text.data(), announced, &d) == QWEN35_OK);
  CHECK(std::string(d.reasoning_content) == "Need weather.");
  CHECK(std::string(d.content) == "Ok.\n\n");
  REQUIRE(d.n_tool_calls == 1);
  CHECK(d.tool_calls[0].index == 0);
  REQUIRE(d.tool_calls[0].name != nullptr);
  CHECK(std::string(d.tool_calls[0].name) == "get_weather");
  CHECK(std::string(d.tool_calls[0].id).rfind("call_", 0) == 0);
  CHECK(std::string(d.tool_calls[0].arguments) == "{");
  // The open call is not in the result yet (its JSON is incomplete).
  qwen35_chat_reply r;
  REQUIRE(qwen35_reply_parser_result(p, &r) == QWEN35_OK);
  CHECK(r.tool_calls_json == nullptr);
  CHECK(r.n_tool_calls == 0);
  qwen35_chat_reply_free(&r);
  const size_t at = text.find("Paris") + 3;
  REQUIRE(qwen35_reply_parser_push(p, text.data() + announced, at - announced, &d) == QWEN35_OK);
  REQUIRE(d.n_tool_calls == 1);
  CHECK(d.tool_calls[0].id == nullptr);
  CHECK(d.tool_calls[0].name == nullptr);
  CHECK(std::string(d.tool_calls[0].arguments) == R"("city":"Par)");
  REQUIRE(qwen35_reply_parser_push(p, text.data() + at, text.size() - at, nullptr) == QWEN35_OK);
  REQUIRE(qwen35_reply_parser_finish(p, &d) == QWEN35_OK);
  CHECK(d.content_len == 0);
  REQUIRE(qwen35_reply_parser_result(p, &r) == QWEN35_OK);
  CHECK(std::string(r.tool_calls_json) == R"([{"name":"get_weather","arguments":{"city":"Paris","days":2}}])");
  qwen35_chat_reply_free(&r);
  // One finish per parser; the result stays available.
  CHECK(qwen35_reply_parser_push(p, "x", 1, &d) == QWEN35_ERR_STATE);
  CHECK(std::string(qwen35_errmsg()).find("finished") != std::string::npos);
  CHECK(d.content_len == 0);
  CHECK(qwen35_reply_parser_finish(p, nullptr) == QWEN35_ERR_STATE);
  REQUIRE(qwen35_reply_parser_result(p, &r) == QWEN35_OK);
  CHECK(r.n_tool_calls == 1);
  qwen35_chat_reply_free(&r);
  qwen35_reply_parser_free(p);
  // Same seed, same ids; string typing follows tools_json.
  auto first_id = [&](uint64_t seed, const char* tools) {
    qwen35_reply_parser* q = nullptr;
    REQUIRE(qwen35_reply_parser_create(true, true, tools, seed, &q) == QWEN35_OK);
    qwen35_reply_delta e;
    REQUIRE(qwen35_reply_parser_push(q, text.data(), text.size(), &e) == QWEN35_OK);
    REQUIRE(e.n_tool_calls >= 1);
    std::string id = e.tool_calls[0].id;
    qwen35_reply_parser_free(q);
    return id;
  };
  CHECK(first_id(7, kTools) == first_id(7, nullptr));
  CHECK(first_id(7, kTools) != first_id(8, kTools));
}

TEST_CASE("C API: qwen35_reply_parser argument errors") {
  qwen35_reply_parser* p = reinterpret_cast<qwen35_reply_parser*>(1);
  CHECK(qwen35_reply_parser_create(false, true, "{\"not\": \"an array\"}", 0, &p) == QWEN35_ERR_INVALID_ARG);
  CHECK(p == nullptr);
  CHECK(std::string(qwen35_errmsg()).find("tools_json") != std::string::npos);
  CHECK(qwen35_reply_parser_create(false, true, "[oops", 0, &p) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_reply_parser_create(false, true, nullptr, 0, nullptr) == QWEN35_ERR_INVALID_ARG);
  qwen35_reply_delta d;
  CHECK(qwen35_reply_parser_push(nullptr, "x", 1, &d) == QWEN35_ERR_INVALID_ARG);
  CHECK(std::string(qwen35_errmsg()).find("parser is NULL") != std::string::npos);
  CHECK(d.content != nullptr);
  CHECK(d.content_len == 0);
  CHECK(qwen35_reply_parser_finish(nullptr, &d) == QWEN35_ERR_INVALID_ARG);
  qwen35_chat_reply r;
  CHECK(qwen35_reply_parser_result(nullptr, &r) == QWEN35_ERR_INVALID_ARG);
  CHECK(r.content == nullptr);
  qwen35_reply_parser_free(nullptr);
  REQUIRE(qwen35_reply_parser_create(false, false, nullptr, 0, &p) == QWEN35_OK);
  CHECK(qwen35_reply_parser_push(p, nullptr, 3, &d) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_reply_parser_result(p, nullptr) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_reply_parser_push(p, nullptr, 0, &d) == QWEN35_OK);
  CHECK(qwen35_reply_parser_push(p, "\n\nHi", 4, nullptr) == QWEN35_OK);
  REQUIRE(qwen35_reply_parser_finish(p, &d) == QWEN35_OK);
  REQUIRE(qwen35_reply_parser_result(p, &r) == QWEN35_OK);
  CHECK(std::string(r.content) == "Hi");
  CHECK(r.reasoning_content == nullptr);
  qwen35_chat_reply_free(&r);
  qwen35_reply_parser_free(p);
}
