// Chat rendering (spec tokenizer-chat.md §5 and §8.6): the worked examples
// byte for byte with the real Qwen3.5 template read from a fixture GGUF,
// the built-in fallback renderer against the template, normalisation,
// fallbacks, and the C API.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "chat/chat.h"
#include "chat/sha256.h"
#include "gguf.h"
#include "qwen35/qwen35.h"
#include "test_util.h"

using namespace qwen35;
using namespace qwen35::test;

namespace {

const std::string& fixture_template() {
  static const std::string t = [] {
    std::unique_ptr<GgufFile> f;
    Status st = GgufFile::Open(fixture("models/tiny-a-nvfp4.gguf"), true, &f);
    if (!st.ok()) throw std::runtime_error(st.message());
    std::string_view sv;
    bool found = false;
    st = f->get_string("tokenizer.chat_template", &sv, &found);
    if (!st.ok() || !found) throw std::runtime_error("fixture has no chat template");
    return std::string(sv);
  }();
  return t;
}

Json J(const char* text) {
  Json j;
  Status st = Json::Parse(text, &j);
  if (!st.ok()) throw std::runtime_error(st.message());
  return j;
}

ChatMessage M(const char* role, const char* content) {
  ChatMessage m;
  m.role = role;
  m.content = content;
  return m;
}

ChatMessage Asst(const char* content, const char* reasoning = nullptr, const char* calls = nullptr) {
  ChatMessage m = M("assistant", content);
  if (reasoning) m.reasoning_content = reasoning;
  if (calls) m.tool_calls = J(calls);
  return m;
}

const char* kWeatherTools =
    R"([{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city.",)"
    R"( "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},)"
    R"( "days": {"type": "integer"}}, "required": ["city"]}}}])";

struct Captured {
  std::vector<std::string> warnings;
  Logger logger() {
    Logger l;
    l.cb = [](qwen35_log_level lvl, const char* msg, void* ud) {
      if (lvl == QWEN35_LOG_WARN) static_cast<Captured*>(ud)->warnings.push_back(msg);
    };
    l.user_data = this;
    return l;
  }
};

Status render_with(const std::string& tmpl, const std::vector<ChatMessage>& msgs, const ChatOptions& opt,
                   RenderedChat* r, Captured* cap = nullptr) {
  Captured local;
  Captured* c = cap ? cap : &local;
  return RenderChatWithTemplate(tmpl, nullptr, c->logger(), msgs, opt, r);
}

// Render with the template and with the built-in renderer (reached by
// breaking the template so that it cannot be parsed); both must agree.
std::string render(const std::vector<ChatMessage>& msgs, const ChatOptions& opt = ChatOptions{}) {
  RenderedChat a, b;
  Status st = render_with(fixture_template(), msgs, opt, &a);
  REQUIRE_MESSAGE(st.ok(), st.message());
  CHECK(a.renderer == RenderedChat::Renderer::Template);
  Captured cap;
  st = render_with(fixture_template() + "{% include 'other.jinja' %}", msgs, opt, &b, &cap);
  REQUIRE_MESSAGE(st.ok(), st.message());
  CHECK(b.renderer == RenderedChat::Renderer::Qwen35);
  CHECK(b.prompt == a.prompt);
  CHECK(b.thinking == a.thinking);
  CHECK(cap.warnings.size() == 2);   // hash differs + fallback notice
  return a.prompt;
}

// Both renderers must reject the conversation with the same message.
std::string render_error(const std::vector<ChatMessage>& msgs, const ChatOptions& opt = ChatOptions{}) {
  RenderedChat a, b;
  Status st = render_with(fixture_template(), msgs, opt, &a);
  CHECK(st.code() == QWEN35_ERR_INVALID_ARG);
  Status st2 = render_with(fixture_template() + "{% include 'other.jinja' %}", msgs, opt, &b);
  CHECK(st2.code() == QWEN35_ERR_INVALID_ARG);
  CHECK(st2.message() == st.message());
  return st.message();
}

std::string t_head() {
  std::string h, i;
  REQUIRE(ExtractQwen35ToolLiterals(fixture_template(), &h, &i));
  return h;
}
std::string t_instr() {
  std::string h, i;
  REQUIRE(ExtractQwen35ToolLiterals(fixture_template(), &h, &i));
  return i;
}

const ChatMessage kSys = M("system", "You are a helpful assistant.");

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

TEST_CASE("sha256") {
  CHECK(chat::sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(chat::sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(chat::sha256_hex(std::string(1000, 'a')) ==
        "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

TEST_CASE("the fixture carries the Qwen3.5-4B template and its tool literals (§5.1, §5.2)") {
  const std::string& t = fixture_template();
  CHECK(t.size() == 7756);
  CHECK(chat::sha256_hex(t) == kQwen35TemplateSha256);
  std::string head, instr;
  REQUIRE(ExtractQwen35ToolLiterals(t, &head, &instr));
  CHECK(head.size() == 61);
  CHECK(chat::sha256_hex(head) == "c1ac20d770de32b1f158c730a299681c8cc51b3868454fbba102ac9aeacad7bf");
  CHECK(instr.size() == 817);
  CHECK(std::count(instr.begin(), instr.end(), '\n') == 23);
  CHECK(chat::sha256_hex(instr) == "c618bf70de036a3337fbf9cfaf7171d7b700d3e116d61b6f4a40511e1ab4e25b");
}

TEST_CASE("worked examples E1-E6 (§5.6)") {
  ChatOptions off;
  off.enable_thinking = 0;
  ChatOptions no_gen;
  no_gen.add_generation_prompt = false;
  // E1
  CHECK(render({kSys, M("user", "What is 2+2?")}) ==
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n");
  // E2
  CHECK(render({kSys, M("user", "What is 2+2?")}, off) ==
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n");
  // E3
  CHECK(render({M("user", "What is 2+2?")}, no_gen) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n");
  // E4: reasoning of a turn before the last user query is dropped.
  const char* e4 =
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
      "<|im_start|>assistant\n2+2 = 4.<|im_end|>\n<|im_start|>user\nAnd times 3?<|im_end|>\n"
      "<|im_start|>assistant\n<think>\n";
  CHECK(render({kSys, M("user", "What is 2+2?"), Asst("2+2 = 4.", "Simple arithmetic."), M("user", "And times 3?")}) ==
        e4);
  // E5: the same with the raw model output as content.
  CHECK(render({kSys, M("user", "What is 2+2?"), Asst("<think>\nSimple arithmetic.\n</think>\n\n2+2 = 4."),
                M("user", "And times 3?")}) == e4);
  // E6: reasoning after the last user query is kept.
  CHECK(render({M("user", "What is 2+2?"), Asst("2+2 = 4.", "Simple arithmetic.")}, no_gen) ==
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nSimple arithmetic.\n</think>\n\n"
        "2+2 = 4.<|im_end|>\n");
}

TEST_CASE("worked examples E7-E10: tools, tool calls and tool results (§5.6)") {
  ChatOptions tools;
  tools.tools = J(kWeatherTools);
  const std::string tool_json =
      R"({"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city.",)"
      R"( "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},)"
      R"( "days": {"type": "integer"}}, "required": ["city"]}}})";
  const std::string sys_block = "<|im_start|>system\n" + t_head() + "\n" + tool_json + "\n</tools>" + t_instr();
  // E7
  CHECK(render({kSys, M("user", "Weather in Paris?")}, tools) ==
        sys_block + "\n\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n");
  // Tools without a system message: the block ends right after T_INSTR.
  CHECK(render({M("user", "Weather in Paris?")}, tools) ==
        sys_block + "<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<think>\n");
  // E8
  std::vector<ChatMessage> e8 = {
      kSys, M("user", "Weather in Paris?"),
      Asst("", "Need the weather tool.",
           R"([{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}])"),
      M("tool", R"({"temp_c": 18, "sky": "cloudy"})")};
  CHECK(render(e8, tools) ==
        sys_block +
            "\n\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nNeed the weather tool.\n</think>\n\n<tool_call>\n<function=get_weather>\n"
            "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"
            "<|im_end|>\n<|im_start|>user\n<tool_response>\n{\"temp_c\": 18, \"sky\": \"cloudy\"}\n</tool_response>"
            "<|im_end|>\n<|im_start|>assistant\n<think>\n");
  // E8 with OpenAI-style string arguments (normalised into an object, §5.4).
  e8[2].tool_calls =
      J(R"([{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}}])");
  CHECK(render(e8, tools).find("<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>") !=
        std::string::npos);
  // E9: parallel calls (both shapes), grouped tool results, a final answer, a new turn.
  std::vector<ChatMessage> e9 = {
      kSys, M("user", "Weather in Paris?"),
      Asst("Let me check both.", nullptr,
           R"([{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},)"
           R"( {"name": "get_weather", "arguments": {"city": "Lyon", "days": 3}}])"),
      M("tool", "sunny"), M("tool", "rainy"), Asst("Paris is sunny, Lyon is rainy."), M("user", "ok")};
  CHECK(render(e9, tools) ==
        sys_block +
            "\n\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\nLet me check both.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
            "</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nLyon\n"
            "</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call><|im_end|>\n<|im_start|>user\n"
            "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrainy\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\nParis is sunny, Lyon is rainy.<|im_end|>\n<|im_start|>user\nok<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n");
  // E10: Python-style scalars, JSON for containers.
  ChatOptions e10 = tools;
  e10.add_generation_prompt = false;
  std::string out = render({M("user", "x"), Asst("", nullptr,
                                                  R"([{"name": "f", "arguments": {"flag": true, "n": 1.5, "obj": {"a": [1, 2]},)"
                                                  R"( "s": "multi\nline", "none": null, "lst": ["é", 2]}}])")},
                           e10);
  const std::string turn =
      "<|im_start|>assistant\n<think>\n\n</think>\n\n<tool_call>\n<function=f>\n<parameter=flag>\nTrue\n</parameter>\n"
      "<parameter=n>\n1.5\n</parameter>\n<parameter=obj>\n{\"a\": [1, 2]}\n</parameter>\n<parameter=s>\nmulti\nline\n"
      "</parameter>\n<parameter=none>\nNone\n</parameter>\n<parameter=lst>\n[\"é\", 2]\n</parameter>\n</function>\n"
      "</tool_call><|im_end|>\n";
  CHECK(ends_with(out, turn));
  // Python number formatting of other values.
  out = render({M("user", "x"), Asst("", nullptr,
                                     R"([{"name": "f", "arguments": {"a": 100.0, "b": 1e-05, "c": 1e20, "d": -0.0,)"
                                     R"( "e": 12345678901234567890123, "f": {"x": 0.1}}}])")},
               e10);
  CHECK(out.find("<parameter=a>\n100.0\n</parameter>\n<parameter=b>\n1e-05\n</parameter>\n<parameter=c>\n1e+20\n"
                 "</parameter>\n<parameter=d>\n-0.0\n</parameter>\n<parameter=e>\n12345678901234567890123\n</parameter>\n"
                 "<parameter=f>\n{\"x\": 0.1}\n</parameter>") != std::string::npos);
}

TEST_CASE("chat rendering cases of §8.6") {
  ChatOptions no_gen;
  no_gen.add_generation_prompt = false;
  // 12: wrapped tool responses in user messages do not count as the last query.
  CHECK(render({M("user", "<tool_response>\nfake\n</tool_response>"), M("user", "real"), Asst("A", "R"),
                M("user", "<tool_response>\nx\n</tool_response>")},
               no_gen) ==
        "<|im_start|>user\n<tool_response>\nfake\n</tool_response><|im_end|>\n<|im_start|>user\nreal<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR\n</think>\n\nA<|im_end|>\n<|im_start|>user\n<tool_response>\nx\n"
        "</tool_response><|im_end|>\n");
  // 13: trimming.
  CHECK(render({M("user", "  padded \n"), Asst("\n\nans\n")}, no_gen) ==
        "<|im_start|>user\npadded<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nans<|im_end|>\n");
  CHECK(render({M("system", "   "), M("user", "q")}, no_gen) ==
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nq<|im_end|>\n");
  ChatOptions tools_no_gen = no_gen;
  tools_no_gen.tools = J(kWeatherTools);
  std::string with_tools = render({M("system", "   "), M("user", "q")}, tools_no_gen);
  CHECK(with_tools.find(t_instr() + "<|im_end|>\n<|im_start|>user\nq<|im_end|>\n") != std::string::npos);
  // 14: Python's strip() set (NBSP, ideographic space).
  CHECK(render({M("user", "\u00a0x\u3000")}, no_gen) == "<|im_start|>user\nx<|im_end|>\n");
  // 15: inline think blocks in history: the text after the last </think>.
  CHECK(render({M("user", "q"), Asst("<think>r1</think>mid<think>r2</think>\n\nfinal"), M("user", "q2")}, no_gen) ==
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nfinal<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n");
  // 17: developer renders as system (normalisation).
  CHECK(render({M("developer", "Be brief."), M("user", "q")}) ==
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n");
  // 19: a first tool message gets no user header.
  CHECK(render({M("tool", "r"), M("user", "q")}) ==
        "\n<tool_response>\nr\n</tool_response><|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
        "<think>\n");
  // Assistant turn with only tool calls and null content.
  ChatMessage calls_only;
  calls_only.role = "assistant";
  calls_only.tool_calls = J(R"([{"name": "noargs"}])");
  CHECK(render({M("user", "q"), calls_only}, no_gen) ==
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<tool_call>\n<function=noargs>\n"
        "</function>\n</tool_call><|im_end|>\n");
}

TEST_CASE("errors of §8.6.16 and bad requests") {
  CHECK(render_error({}) == "chat template: No messages provided.");
  CHECK(render_error({M("user", "a"), kSys}) == "chat template: System message must be at the beginning.");
  CHECK(render_error({M("user", "<tool_response>\nx\n</tool_response>")}) ==
        "chat template: No user query found in messages.");
  CHECK(render_error({M("user", "a"), M("bogus", "x")}) == "chat template: Unexpected message role.");
  ChatMessage sys_img;
  sys_img.role = "system";
  sys_img.parts.push_back({ContentPart::Type::Image, "", nullptr});
  CHECK(render_error({sys_img, M("user", "a")}) == "chat template: System message cannot contain images.");
  ChatOptions raw;
  raw.normalize = false;
  CHECK(render_error({M("developer", "x"), M("user", "a")}, raw) == "chat template: Unexpected message role.");
  // Normalisation errors name the message and call.
  RenderedChat r;
  Status st = render_with(fixture_template(), {M("user", "q"), Asst("", nullptr, R"([{"name": "f", "arguments": "{bad"}])")},
                          ChatOptions{}, &r);
  CHECK(st.code() == QWEN35_ERR_INVALID_ARG);
  CHECK(st.message().find("message 1: tool call 0: arguments are not valid JSON") == 0);
  st = render_with(fixture_template(), {M("user", "q"), Asst("", nullptr, R"({"name": "f"})")}, ChatOptions{}, &r);
  CHECK(st.message() == "message 1: tool_calls must be a JSON array");
  ChatOptions bad_tools;
  bad_tools.tools = J(R"([{"description": "no name"}])");
  st = render_with(fixture_template(), {M("user", "q")}, bad_tools, &r);
  CHECK(st.code() == QWEN35_ERR_INVALID_ARG);
  CHECK(st.message().find("tool 0") == 0);
}

TEST_CASE("images and videos render as placeholders, in order (E11)") {
  ChatMessage u;
  u.role = "user";
  int a = 1, b = 2, c = 3;
  u.parts = {{ContentPart::Type::Image, "", &a}, {ContentPart::Type::Text, "Describe this.", nullptr}};
  CHECK(render({u}) == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this.<|im_end|>\n"
                       "<|im_start|>assistant\n<think>\n");
  ChatMessage v;
  v.role = "user";
  v.parts = {{ContentPart::Type::Image, "", &a},
             {ContentPart::Type::Image, "", &b},
             {ContentPart::Type::Video, "", &c},
             {ContentPart::Type::Text, "Compare.", nullptr}};
  ChatOptions ids;
  ids.add_vision_id = true;
  CHECK(render({v}, ids) ==
        "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|>"
        "<|image_pad|><|vision_end|>Video 1: <|vision_start|><|video_pad|><|vision_end|>Compare.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n");
  // Counting continues across messages; media come back in prompt order.
  RenderedChat r;
  REQUIRE(render_with(fixture_template(), {u, Asst("ok"), v}, ids, &r).ok());
  CHECK(r.prompt.find("Picture 3: ") != std::string::npos);
  REQUIRE(r.media.size() == 4);
  CHECK(r.media[0].media == &a);
  CHECK(r.media[1].media == &a);
  CHECK(r.media[2].media == &b);
  CHECK(r.media[3].type == ContentPart::Type::Video);
  CHECK(r.media[3].media == &c);
}

TEST_CASE("enable_thinking and the thinking flag") {
  std::vector<ChatMessage> m = {M("user", "hi")};
  RenderedChat r;
  ChatOptions o;
  for (int mode : {-1, 0, 1}) {
    o.enable_thinking = mode;
    REQUIRE(render_with(fixture_template(), m, o, &r).ok());
    CHECK(r.thinking == (mode != 0));
    CHECK(r.prompt == (mode == 0 ? "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
                                 : "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"));
  }
  o.add_generation_prompt = false;
  REQUIRE(render_with(fixture_template(), {M("user", "hi"), Asst("x<think>")}, o, &r).ok());
  CHECK_FALSE(r.thinking);
  // A template that thinks only when asked (the 0.8B/2B style).
  ChatOptions custom;
  custom.template_override =
      "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
      "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking %}"
      "<think>\n{% else %}<think>\n\n</think>\n\n{% endif %}{% endif %}";
  REQUIRE(render_with("", m, custom, &r).ok());
  CHECK_FALSE(r.thinking);
  custom.enable_thinking = 1;
  REQUIRE(render_with("", m, custom, &r).ok());
  CHECK(r.thinking);
}

TEST_CASE("multi-turn agentic loop keeps reasoning only after the last user query") {
  ChatOptions tools;
  tools.tools = J(kWeatherTools);
  std::vector<ChatMessage> m = {
      M("user", "first"), Asst("answer one", "old reasoning"), M("user", "Weather?"),
      Asst("", "call it", R"([{"name": "get_weather", "arguments": {"city": "Oslo"}}])"), M("tool", "cold"),
      Asst("It is cold.", "summarise")};
  ChatOptions o = tools;
  o.add_generation_prompt = false;
  std::string p = render(m, o);
  CHECK(p.find("old reasoning") == std::string::npos);
  CHECK(p.find("<|im_start|>assistant\nanswer one<|im_end|>") != std::string::npos);
  CHECK(p.find("<|im_start|>assistant\n<think>\ncall it\n</think>\n\n<tool_call>") != std::string::npos);
  CHECK(p.find("<|im_start|>user\n<tool_response>\ncold\n</tool_response><|im_end|>\n") != std::string::npos);
  CHECK(ends_with(p, "<|im_start|>assistant\n<think>\nsummarise\n</think>\n\nIt is cold.<|im_end|>\n"));
}

TEST_CASE("tool normalisation rebuilds tool objects (§5.4)") {
  ChatOptions o;
  o.tools = J(R"([{"function": {"parameters": {"type": "object"}, "name": "a", "strict": true}},)"
              R"( {"name": "b", "description": "bee"}])");
  RenderedChat r;
  REQUIRE(render_with(fixture_template(), {M("user", "q")}, o, &r).ok());
  CHECK(r.prompt.find("\n{\"type\": \"function\", \"function\": {\"name\": \"a\", \"description\": \"\", "
                      "\"parameters\": {\"type\": \"object\"}}}\n{\"type\": \"function\", \"function\": {\"name\": "
                      "\"b\", \"description\": \"bee\", \"parameters\": {}}}\n</tools>") != std::string::npos);
  // Without normalisation the objects render as given (Hugging Face behaviour).
  o.normalize = false;
  REQUIRE(render_with(fixture_template(), {M("user", "q")}, o, &r).ok());
  CHECK(r.prompt.find("\n{\"function\": {\"parameters\": {\"type\": \"object\"}, \"name\": \"a\", \"strict\": true}}\n") !=
        std::string::npos);
}

TEST_CASE("fallbacks when the template cannot run") {
  std::vector<ChatMessage> m = {kSys, M("user", "hi")};
  RenderedChat r;
  Captured cap;
  // No template at all: the built-in renderer, with a warning.
  REQUIRE(render_with("", m, ChatOptions{}, &r, &cap).ok());
  CHECK(r.renderer == RenderedChat::Renderer::Qwen35);
  CHECK(r.prompt == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n");
  CHECK(cap.warnings.size() == 1);
  // ... which cannot present tools without the template's literals.
  ChatOptions tools;
  tools.tools = J(kWeatherTools);
  CHECK(render_with("", m, tools, &r).code() == QWEN35_ERR_UNSUPPORTED);
  // A Qwen3.5 template using an unsupported filter at run time.
  std::string t = fixture_template();
  size_t k = t.find("{{- content }}");
  REQUIRE(k != std::string::npos);
  t.replace(k, 14, "{{- content|wordwrap }}");
  cap.warnings.clear();
  REQUIRE(render_with(t, m, tools, &r, &cap).ok());
  CHECK(r.renderer == RenderedChat::Renderer::Qwen35);
  RenderedChat ref;
  REQUIRE(render_with(fixture_template(), m, tools, &ref).ok());
  CHECK(r.prompt == ref.prompt);
  REQUIRE(cap.warnings.size() == 2);
  CHECK(cap.warnings[0].find("differs from the Qwen3.5-4B template") != std::string::npos);
  CHECK(cap.warnings[1].find("wordwrap") != std::string::npos);
  // Another family's template that cannot be parsed: plain ChatML.
  cap.warnings.clear();
  REQUIRE(render_with("{% for m in messages %}{% call foo() %}{% endcall %}{% endfor %}", m, ChatOptions{}, &r, &cap).ok());
  CHECK(r.renderer == RenderedChat::Renderer::ChatML);
  CHECK(r.prompt == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\n");
  CHECK(cap.warnings.size() == 1);
  // An explicit override is never replaced: its errors are returned.
  ChatOptions o;
  o.template_override = "{% if %}";
  CHECK(render_with(fixture_template(), m, o, &r).code() == QWEN35_ERR_FORMAT);
  o.template_override = "{{ messages|wordwrap }}";
  CHECK(render_with(fixture_template(), m, o, &r).code() == QWEN35_ERR_UNSUPPORTED);
  o.template_override = "{{ raise_exception('nope') }}";
  Status st = render_with(fixture_template(), m, o, &r);
  CHECK(st.code() == QWEN35_ERR_INVALID_ARG);
  CHECK(st.message() == "chat template: nope");
  // Extra variables reach the template.
  o.template_override = "{{ greeting }} {{ messages|length }}";
  o.extra_vars = J(R"({"greeting": "hello"})");
  REQUIRE(render_with("", m, o, &r).ok());
  CHECK(r.prompt == "hello 2");
}

// ---------------------------------------------------------------------------
// C API

namespace {

struct ModelHandle {
  qwen35_model* m = nullptr;
  explicit ModelHandle(const std::string& path) {
    qwen35_model_params p = qwen35_model_default_params();
    p.device = QWEN35_DEVICE_CPU;
    REQUIRE(qwen35_model_load(path.c_str(), &p, &m) == QWEN35_OK);
  }
  ~ModelHandle() { qwen35_model_free(m); }
};

std::string c_render(const qwen35_model* m, const std::vector<qwen35_chat_message>& msgs,
                     const qwen35_chat_params* p = nullptr) {
  size_t needed = 0;
  int32_t n = qwen35_chat_render(m, msgs.data(), msgs.size(), p, nullptr, 0, &needed);
  REQUIRE_MESSAGE(n == QWEN35_ERR_BUFFER_TOO_SMALL, qwen35_errmsg());
  std::vector<char> buf(needed);
  n = qwen35_chat_render(m, msgs.data(), msgs.size(), p, buf.data(), buf.size(), &needed);
  REQUIRE_MESSAGE(n >= 0, qwen35_errmsg());
  CHECK(size_t(n) + 1 == needed);
  CHECK(buf[size_t(n)] == 0);
  return std::string(buf.data(), size_t(n));
}

qwen35_chat_message cmsg(const char* role, const char* content) {
  qwen35_chat_message m;
  std::memset(&m, 0, sizeof m);
  m.role = role;
  m.content = content;
  return m;
}

}  // namespace

TEST_CASE("C API: qwen35_chat_render") {
  ModelHandle mh(fixture("models/tiny-a-nvfp4.gguf"));
  qwen35_chat_params p = qwen35_chat_default_params();
  CHECK(p.struct_size == sizeof(qwen35_chat_params));
  CHECK(p.add_generation_prompt);
  CHECK(p.enable_thinking == -1);
  std::vector<qwen35_chat_message> msgs = {cmsg("system", "You are a helpful assistant."), cmsg("user", "What is 2+2?")};
  CHECK(c_render(mh.m, msgs) ==
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n");
  p.enable_thinking = 0;
  CHECK(ends_with(c_render(mh.m, msgs, &p), "assistant\n<think>\n\n</think>\n\n"));
  // An exact-size buffer works without the NUL; a smaller one reports the size.
  std::string full = c_render(mh.m, msgs);
  std::vector<char> buf(full.size(), 'x');
  size_t needed = 0;
  CHECK(qwen35_chat_render(mh.m, msgs.data(), 2, nullptr, buf.data(), buf.size(), &needed) == int32_t(full.size()));
  CHECK(std::string(buf.data(), buf.size()) == full);
  CHECK(qwen35_chat_render(mh.m, msgs.data(), 2, nullptr, buf.data(), 10, &needed) == QWEN35_ERR_BUFFER_TOO_SMALL);
  CHECK(needed == full.size() + 1);
  // Parts (a NULL image renders the placeholder), tool calls in both shapes, tools.
  qwen35_content_part parts[2] = {{QWEN35_PART_IMAGE, nullptr, nullptr}, {QWEN35_PART_TEXT, "What is it?", nullptr}};
  qwen35_chat_message u = cmsg("user", nullptr);
  u.parts = parts;
  u.n_parts = 2;
  qwen35_chat_message a = cmsg("assistant", nullptr);
  a.reasoning_content = "look";
  a.tool_calls_json =
      R"([{"name": "get_weather", "arguments": {"city": "Paris"}}, {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\"}"}}])";
  qwen35_chat_message t = cmsg("tool", "sunny");
  t.name = "get_weather";
  qwen35_chat_params tp = qwen35_chat_default_params();
  tp.tools_json = kWeatherTools;
  std::string out = c_render(mh.m, {u, a, t}, &tp);
  CHECK(out.find("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n") !=
        std::string::npos);
  CHECK(out.find("<think>\nlook\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                 "</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nLyon\n</parameter>\n"
                 "</function>\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nsunny\n</tool_response>") !=
        std::string::npos);
  // Errors.
  char small[8];
  CHECK(qwen35_chat_render(nullptr, msgs.data(), 2, nullptr, small, sizeof small, nullptr) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_chat_render(mh.m, nullptr, 2, nullptr, small, sizeof small, nullptr) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_chat_render(mh.m, msgs.data(), 0, nullptr, small, sizeof small, nullptr) == QWEN35_ERR_INVALID_ARG);
  CHECK(std::string(qwen35_errmsg()) == "chat template: No messages provided.");
  tp.tools_json = "[{";
  CHECK(qwen35_chat_render(mh.m, msgs.data(), 2, &tp, small, sizeof small, nullptr) == QWEN35_ERR_INVALID_ARG);
  CHECK(std::string(qwen35_errmsg()).find("qwen35_chat_render: tools_json: JSON:") == 0);
  qwen35_chat_message bad = cmsg(nullptr, "x");
  CHECK(qwen35_chat_render(mh.m, &bad, 1, nullptr, small, sizeof small, nullptr) == QWEN35_ERR_INVALID_ARG);
  qwen35_chat_message badparts = cmsg("user", nullptr);
  badparts.n_parts = 1;
  CHECK(qwen35_chat_render(mh.m, &badparts, 1, nullptr, small, sizeof small, nullptr) == QWEN35_ERR_INVALID_ARG);
  qwen35_chat_params bp = qwen35_chat_default_params();
  bp.enable_thinking = 7;
  CHECK(qwen35_chat_render(mh.m, msgs.data(), 2, &bp, small, sizeof small, nullptr) == QWEN35_ERR_INVALID_ARG);
  bp = qwen35_chat_default_params();
  bp.template_override = "{{ messages[0].content }}!";
  CHECK(c_render(mh.m, msgs, &bp) == "You are a helpful assistant.!");
}

TEST_CASE("C API: the synthetic vocabulary's demo template renders") {
  SynthConfig cfg;
  cfg.n_vocab = 300;
  cfg.n_layer = 4;
  cfg.n_mtp = 0;
  ModelHandle mh(synth_model("chat-demo", cfg));
  std::vector<qwen35_chat_message> msgs = {cmsg("user", "hi")};
  CHECK(c_render(mh.m, msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  qwen35_chat_params p = qwen35_chat_default_params();
  p.enable_thinking = 0;
  CHECK(c_render(mh.m, msgs, &p) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  p.add_generation_prompt = false;
  CHECK(c_render(mh.m, msgs, &p) == "<|im_start|>user\nhi<|im_end|>\n");
}

TEST_CASE("rendered prompts tokenize with every chat marker as one special token") {
  ModelHandle mh(fixture("models/tiny-a-nvfp4.gguf"));
  qwen35_content_part parts[3] = {{QWEN35_PART_TEXT, "Look: ", nullptr},
                                  {QWEN35_PART_IMAGE, nullptr, nullptr},
                                  {QWEN35_PART_IMAGE, nullptr, nullptr}};
  qwen35_chat_message u = cmsg("user", nullptr);
  u.parts = parts;
  u.n_parts = 3;
  qwen35_chat_params p = qwen35_chat_default_params();
  p.enable_thinking = 0;
  std::string prompt = c_render(mh.m, {cmsg("system", "Be brief."), u}, &p);
  std::vector<qwen35_token> toks(4096);
  int32_t n = qwen35_tokenize(mh.m, prompt.data(), prompt.size(), toks.data(), int32_t(toks.size()), false, true);
  REQUIRE(n > 0);
  toks.resize(size_t(n));
  auto count = [&](const char* text) {
    qwen35_token id = qwen35_token_lookup(mh.m, text);
    REQUIRE(id >= 0);
    return std::count(toks.begin(), toks.end(), id);
  };
  CHECK(count("<|im_start|>") == 3);
  CHECK(count("<|im_end|>") == 2);
  CHECK(count("<|vision_start|>") == 2);
  CHECK(count("<|image_pad|>") == 2);
  CHECK(count("<|vision_end|>") == 2);
  CHECK(count("<think>") == 1);
  CHECK(count("</think>") == 1);
  // Detokenizing with special tokens gives the prompt back.
  std::vector<char> back(prompt.size() + 1);
  CHECK(qwen35_detokenize(mh.m, toks.data(), n, back.data(), int32_t(back.size()), true) == int32_t(prompt.size()));
  CHECK(std::string(back.data()) == prompt);
}
