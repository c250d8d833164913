// The byte-level BPE tokenizer (spec tokenizer-chat.md §1-4, test cases of
// §8): Unicode tables, pre-tokenizer splits, special-token splitting,
// invalid UTF-8, ids against the fixtures, BPE forms, detokenization and
// streaming, and load errors for broken vocabularies. The C API and the
// qwen35-tokenize tool are covered in test_tokenizer_api.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "gguf.h"
#include "gguf_writer.h"
#include "pretokenizer.h"
#include "sha256.h"
#include "test_util.h"
#include "tokenizer.h"
#include "unicode.h"

using namespace qwen35;
using namespace qwen35::test;
using namespace std::string_view_literals;

namespace {

#include "tokenizer_cases.inc"

// The 151,669-token Qwen vocabulary of the fixtures, loaded once.
const Vocab& qwen() {
  static std::shared_ptr<Vocab> v = [] {
    std::unique_ptr<GgufFile> f;
    Status st = GgufFile::Open(fixture("tokenizer/qwen-vocab.gguf"), true, &f);
    REQUIRE_MESSAGE(st.ok(), st.message());
    std::shared_ptr<Vocab> out;
    st = Vocab::Load(*f, Logger(), &out);
    REQUIRE_MESSAGE(st.ok(), st.message());
    return out;
  }();
  return *v;
}

// Ids of the fixture vocabulary's added tokens (151643 + index in §1.3 order).
constexpr int32_t kEndOfText = 151643, kImStart = 151644, kImEnd = 151645, kToolCall = 151657,
                  kToolCallEnd = 151658, kToolResponse = 151665, kThink = 151667, kThinkEnd = 151668;

std::vector<std::string> split(PreType t, std::string_view s) {
  PreTokenizer p(t);
  std::vector<std::string> out;
  for (std::string_view piece : p.split(s)) out.emplace_back(piece);
  return out;
}

std::vector<std::string> strs(const std::vector<std::string_view>& v) { return {v.begin(), v.end()}; }

std::vector<int32_t> tok(const Vocab& v, std::string_view s, bool parse_special = false) {
  std::vector<int32_t> ids;
  Status st = v.tokenize(s, false, parse_special, &ids);
  REQUIRE_MESSAGE(st.ok(), st.message());
  return ids;
}

std::string detok(const Vocab& v, const std::vector<int32_t>& ids, bool render_special = false) {
  std::string s;
  for (int32_t id : ids) v.piece(id, render_special, &s);
  return s;
}

// Printable form for failure messages.
std::string show(std::string_view s) {
  std::string o;
  for (unsigned char c : s) {
    if (c < 0x20 || c >= 0x7F) o += fmt::format("\\x{:02X}", c);
    else o += char(c);
  }
  return o;
}
std::string show(const std::vector<std::string>& v) {
  std::string o = "[";
  for (const auto& s : v) o += "\"" + show(s) + "\" ";
  return o + "]";
}

}  // namespace

// ---- Unicode data (§4) ----------------------------------------------------------

TEST_CASE("unicode: class tables reproduce the reference hash and counts") {
  std::vector<uint8_t> flags(0x110000);
  size_t count[5] = {};
  for (uint32_t cp = 0; cp < 0x110000; ++cp) {
    flags[cp] = unicode::cp_class(cp);  // the class values are the spec's flag bytes
    count[flags[cp]]++;
  }
  CHECK(sha256_hex(flags.data(), flags.size()) == "8f2ad9e6c32eb2d62449b08688e7f2db73525e68f39ad83a8e30223b789453d4");
  CHECK(std::string(unicode::tables_sha256()) == sha256_hex(flags.data(), flags.size()));
  CHECK(count[unicode::CP_LETTER] == 136726);
  CHECK(count[unicode::CP_MARK] == 2450);
  CHECK(count[unicode::CP_NUMBER] == 1831);
  CHECK(count[unicode::CP_SPACE] == 25);
  CHECK(std::string(unicode::tables_version()).find("15.1") == 0);
  // Spot checks named in §2.4.1.
  for (uint32_t cp : {0x09u, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x1680u, 0x2000u, 0x200Au, 0x2028u, 0x2029u, 0x202Fu, 0x205Fu,
                      0x3000u})
    CHECK(unicode::is_white_space(cp));
  for (uint32_t cp : {0x200Bu, 0x200Du, 0xFEFFu, 0x180Eu, 0x1Cu, 0x1Fu, 0xFFFDu, 0x1F600u, 0xD800u, 0x110000u})
    CHECK(unicode::cp_class(cp) == unicode::CP_OTHER);
  CHECK(unicode::is_mark(0xFE0F));
  CHECK(unicode::is_mark(0x20E3));
  CHECK(unicode::is_mark(0x0301));
  CHECK(unicode::is_letter(0x2EBF0));  // CJK Extension I (Unicode 15.1)
  CHECK(unicode::is_letter(0x2EE5D));
  CHECK(!unicode::is_letter(0x1C89));  // a Unicode 16.0 letter: not in the reference
  CHECK(unicode::is_number(0x00BD));
  CHECK(unicode::is_number(0x1D7D8));
}

TEST_CASE("unicode: lenient decoder, byte map and UTF-8 repair") {
  auto dec = [](std::string_view s, size_t* len) {
    return unicode::decode_lenient(reinterpret_cast<const uint8_t*>(s.data()), s.size(), len);
  };
  size_t len = 0;
  CHECK(dec("\xC3\xA9", &len) == 0xE9);
  CHECK(len == 2);
  CHECK(dec("\xC0\x80", &len) == 0);  // overlong accepted
  CHECK(len == 2);
  CHECK(dec("\xED\xA0\x80", &len) == 0xD800);  // surrogate accepted
  CHECK(len == 3);
  CHECK(dec("\xF0\x9F\x98\x80", &len) == 0x1F600);
  CHECK(len == 4);
  CHECK(dec("\xF4\x90\x80\x80", &len) == 0xFFFD);  // > U+10FFFF: our documented choice, 4 x U+FFFD
  CHECK(len == 1);
  CHECK(dec("\xE2\x82", &len) == 0xFFFD);  // truncated
  CHECK(len == 1);
  CHECK(dec("\x80", &len) == 0xFFFD);
  CHECK(dec("\xFF", &len) == 0xFFFD);

  // GPT-2 byte map (§2.5).
  CHECK(unicode::byte_to_cp(0x21) == 0x21);
  CHECK(unicode::byte_to_cp(0x00) == 0x100);
  CHECK(unicode::byte_to_cp(0x0A) == 0x10A);
  CHECK(unicode::byte_to_cp(0x20) == 0x120);
  CHECK(unicode::byte_to_cp(0x7F) == 0x121);
  CHECK(unicode::byte_to_cp(0x80) == 0x122);
  CHECK(unicode::byte_to_cp(0xA0) == 0x142);
  CHECK(unicode::byte_to_cp(0xAD) == 0x143);
  for (int b = 0; b < 256; ++b) CHECK(unicode::cp_to_byte(unicode::byte_to_cp(uint8_t(b))) == b);
  CHECK(unicode::cp_to_byte(0x20) == -1);
  CHECK(unicode::cp_to_byte(0x144) == -1);

  // Maximal-subpart repair (what Python's errors="replace" gives).
  CHECK(unicode::sanitize_utf8("abc\xC3\xA9") == "abc\xC3\xA9");
  CHECK(unicode::sanitize_utf8("\x80" "a") == "\xEF\xBF\xBD" "a");
  CHECK(unicode::sanitize_utf8("\xE2\x82" "a") == "\xEF\xBF\xBD" "a");
  CHECK(unicode::sanitize_utf8("\xF0\x9F\x98") == "\xEF\xBF\xBD");
  CHECK(unicode::sanitize_utf8("\xC0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(unicode::sanitize_utf8("\xED\xA0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(unicode::sanitize_utf8("\xF4\x90\x80\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(unicode::is_valid_utf8("\xF4\x8F\xBF\xBF"));
  CHECK(!unicode::is_valid_utf8("\xF4\x90\x80\x80"));
}

// ---- pre-tokenizer (§2.3, §2.4, §8.1, §8.3) ----------------------------------------

TEST_CASE("pre-tokenizer qwen35: the splits of spec 8.1") {
  for (const SplitCase& c : kSpec81) {
    const auto got = split(PreType::Qwen35, c.text);
    CHECK_MESSAGE(got == strs(c.pieces), show(c.text), " -> ", show(got));
  }
}

TEST_CASE("pre-tokenizer: invalid UTF-8 (spec 8.3)") {
  const std::string_view R = "\xEF\xBF\xBD";
  auto S = [](std::initializer_list<std::string_view> v) { return std::vector<std::string>(v.begin(), v.end()); };
  const std::string fffd(R);
  CHECK(split(PreType::Qwen35, "caf\xC3\xA9\xA0" "bar") == S({"caf\xC3\xA9", fffd + "bar"}));
  CHECK(split(PreType::Qwen35, "\xFF\xFE" "abc") == S({fffd + fffd, "abc"}));
  CHECK(split(PreType::Qwen35, "\x80" "abc") == S({fffd + "abc"}));
  CHECK(split(PreType::Qwen35, "x\xE2\x82") == S({"x", fffd + fffd}));
  CHECK(split(PreType::Qwen35, "x\xE2\x82" "a") == S({"x", fffd + fffd, "a"}));
  CHECK(split(PreType::Qwen35, "a\xF0\x9F\x98") == S({"a", fffd + fffd + fffd}));
  CHECK(split(PreType::Qwen35, "a\xC0\x80" "b") == S({"a", std::string("\0b", 2)}));
  CHECK(split(PreType::Qwen35, "a\xED\xA0\x80" "b") == S({"a", "\xED\xA0\x80" "b"}));
  // Above U+10FFFF: four U+FFFD (llama.cpp fails the whole call; spec §2.3 and open question 7).
  CHECK(split(PreType::Qwen35, "a\xF4\x90\x80\x80" "b") == S({"a", fffd + fffd + fffd + fffd, "b"}));
  CHECK(split(PreType::Qwen35, "\xF8\x88\x80\x80\x80") == S({fffd + fffd + fffd + fffd + fffd}));
  // Each U+FFFD is byte-encoded and merged normally: never fails, and decodes to EF BF BD.
  const auto ids = tok(qwen(), "caf\xC3\xA9\xA0" "bar");
  CHECK(detok(qwen(), ids) == "caf\xC3\xA9" + fffd + "bar");
}

TEST_CASE("pre-tokenizer: qwen2 differs from qwen35 only in combining marks (spec 2.4.5)") {
  auto S = [](std::initializer_list<std::string_view> v) { return std::vector<std::string>(v.begin(), v.end()); };
  CHECK(split(PreType::Qwen2, "e\xCC\x81" "cole") == S({"e", "\xCC\x81" "cole"}));
  CHECK(split(PreType::Qwen35, "e\xCC\x81" "cole") == S({"e\xCC\x81" "cole"}));
  CHECK(split(PreType::Qwen2, "नमस्ते दुनिया") == S({"नमस", "्त", "े", " द", "ुन", "िय", "ा"}));
  CHECK(split(PreType::Qwen2, "สวัสดีครับ") == S({"สว", "ัสด", "ีคร", "ับ"}));
  CHECK(split(PreType::Qwen2, "مَرْحَبًا") == S({"م", "َر", "ْح", "َب", "ًا"}));
  CHECK(split(PreType::Qwen2, " 😶\u200d🌫\ufe0f") == S({" 😶\u200d🌫\ufe0f"}));
  CHECK(split(PreType::Qwen35, " 😶\u200d🌫\ufe0f") == S({" 😶\u200d🌫", "\ufe0f"}));
  // Without marks both agree on every §8.1 case.
  for (const SplitCase& c : kSpec81) {
    bool has_mark = false;
    PreTokenizer p(PreType::Qwen35);
    const uint8_t* s = reinterpret_cast<const uint8_t*>(c.text.data());
    for (size_t i = 0, len; i < c.text.size(); i += len)
      has_mark |= unicode::is_mark(unicode::decode_lenient(s + i, c.text.size() - i, &len));
    if (!has_mark) CHECK_MESSAGE(split(PreType::Qwen2, c.text) == strs(c.pieces), show(c.text));
  }
}

TEST_CASE("pre-tokenizer: pieces tile the input on random strings") {
  // An adversarial alphabet: every class, CR/LF, apostrophes and contraction letters.
  const std::vector<std::string> alphabet = {
      "a", "s", "T", "l", "L", "e", "R", "v", "'", " ", "  ", "\t", "\n", "\r", "1", "!", ".", "\xC2\xA0",
      "\xE3\x80\x80", "\xCC\x81", "\xEF\xB8\x8F", "é", "我", "١", "😶", "\xE2\x80\x8D", "\x00", "_", "\xC2\x85"};
  std::mt19937 rng(7);
  for (PreType t : {PreType::Qwen35, PreType::Qwen2}) {
    for (int it = 0; it < 2000; ++it) {
      std::string s;
      const int n = int(rng() % 24);
      for (int k = 0; k < n; ++k) s += alphabet[rng() % alphabet.size()];
      const auto pieces = split(t, s);
      std::string joined;
      for (const auto& p : pieces) {
        CHECK(!p.empty());
        joined += p;
      }
      CHECK_MESSAGE(joined == s, show(s));
    }
  }
}

// ---- vocabulary, special tokens and ids -----------------------------------------

TEST_CASE("vocab: load-time facts of the Qwen vocabulary") {
  const Vocab& v = qwen();
  CHECK(v.n_tokens() == 151669);
  CHECK(v.n_merges() == 151387);
  CHECK(v.pre() == PreType::Qwen35);
  CHECK(v.text(0) == "!");
  CHECK(v.text(198) == "Ċ");
  CHECK(v.text(220) == "Ġ");
  CHECK(std::strcmp(v.text_cstr(220), "Ġ") == 0);
  CHECK(v.find("Ġ") == 220);
  CHECK(v.find("no such token") == -1);
  CHECK(v.text(kImStart) == "<|im_start|>");
  CHECK(v.type(kImStart) == TOKEN_CONTROL);
  CHECK(v.type(kThink) == TOKEN_USER_DEFINED);
  CHECK(v.type(kToolCall) == TOKEN_USER_DEFINED);
  CHECK(v.eos() == kImEnd);
  CHECK(v.bos() == kEndOfText);
  CHECK(!v.add_bos());
  CHECK(!v.add_eos());
  // EOG (§1.3): <|endoftext|>, <|im_end|>, <|fim_pad|>, <|repo_name|>, <|file_sep|>.
  CHECK(v.eog_ids() == std::vector<int32_t>{kEndOfText, kImEnd, 151662, 151663, 151664});
  CHECK(v.text(151662) == "<|fim_pad|>");
  CHECK(v.text(151663) == "<|repo_name|>");
  CHECK(v.text(151664) == "<|file_sep|>");
  CHECK(v.is_eog(kImEnd));
  CHECK(!v.is_eog(kImStart));
  CHECK(!v.is_eog(-1));
  CHECK(v.is_control(kImStart));
  CHECK(!v.is_control(kThink));
  CHECK(!v.is_control(151669));
  CHECK(v.chat_template().size() == 7756);
  // Every byte has its single-character token (ids 0-255 in GPT-2 order).
  for (int b = 0; b < 256; ++b) {
    std::string s;
    unicode::append_utf8(unicode::byte_to_cp(uint8_t(b)), &s);
    const int32_t id = v.find(s);
    CHECK(id >= 0);
    CHECK(id < 256);
    std::string p;
    v.piece(id, false, &p);
    CHECK(p == std::string(1, char(b)));
  }
}

TEST_CASE("special-token splitting (spec 8.2)") {
  const Vocab& v = qwen();
  using F = Vocab::Fragment;
  auto frags = [&](std::string_view s, bool ps) {
    std::vector<F> out;
    v.split_special(s, ps, &out);
    std::vector<std::pair<int32_t, std::string>> r;
    for (const F& f : out) r.emplace_back(f.id, std::string(f.text));
    return r;
  };
  using R = std::vector<std::pair<int32_t, std::string>>;
  CHECK(frags("<|im_start|>user\nhi<|im_end|>", true) ==
        R{{kImStart, "<|im_start|>"}, {-1, "user\nhi"}, {kImEnd, "<|im_end|>"}});
  CHECK(frags("<|im_start|>user\nhi<|im_end|>", false) == R{{-1, "<|im_start|>user\nhi<|im_end|>"}});
  for (int32_t id : tok(v, "<|im_start|>user\nhi<|im_end|>", false)) CHECK(id < kEndOfText);
  CHECK(frags("a<think>b</think>c", false) ==
        R{{-1, "a"}, {kThink, "<think>"}, {-1, "b"}, {kThinkEnd, "</think>"}, {-1, "c"}});
  CHECK(tok(v, "<tool_call><tool_response></tool_call>", false) ==
        std::vector<int32_t>{kToolCall, kToolResponse, kToolCallEnd});
  for (bool ps : {false, true}) CHECK(frags("<<think>>", ps) == R{{-1, "<"}, {kThink, "<think>"}, {-1, ">"}});
  CHECK(tok(v, "<|im_start|><|im_start|>", true) == std::vector<int32_t>{kImStart, kImStart});
  for (int32_t id : tok(v, "<|IM_START|>", true)) CHECK(id < kEndOfText);
  CHECK(tok(v, "<|endoftext|>", true) == std::vector<int32_t>{kEndOfText});
  CHECK(tok(v, "", true).empty());
  // "Hi  <|im_end|>": the fragment ends before the special token, so A6
  // keeps both spaces in one piece.
  const auto hi = tok(v, "Hi  <|im_end|>", true);
  REQUIRE(hi.size() >= 2);
  CHECK(hi.back() == kImEnd);
  std::vector<int32_t> expect = tok(v, "Hi");
  std::vector<int32_t> spaces;
  v.bpe("  ", false, &spaces);
  expect.insert(expect.end(), spaces.begin(), spaces.end());
  expect.push_back(kImEnd);
  CHECK(hi == expect);
  CHECK(tok(v, "Hi  ", false) == std::vector<int32_t>(expect.begin(), expect.end() - 1));
}

TEST_CASE("ids: known Qwen2/Qwen3 vocabulary ids (spec §9) and the single-token cases") {
  const Vocab& v = qwen();
  CHECK(tok(v, "Hello, how are you?") == std::vector<int32_t>{9707, 11, 1246, 525, 498, 30});
  CHECK(tok(v, "\n") == std::vector<int32_t>{198});
  CHECK(tok(v, " ") == std::vector<int32_t>{220});
  CHECK(tok(v, ",") == std::vector<int32_t>{11});
  CHECK(tok(v, "?") == std::vector<int32_t>{30});
  CHECK(tok(v, ".") == std::vector<int32_t>{13});
  CHECK(tok(v, "1") == std::vector<int32_t>{16});
  CHECK(tok(v, "5") == std::vector<int32_t>{20});
  CHECK(tok(v, "Hello") == std::vector<int32_t>{9707});
  CHECK(tok(v, "assistant") == std::vector<int32_t>{77091});
  // 2.7's prompt: its structure with this vocabulary's ids.
  const auto ids = tok(v, "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", true);
  const std::vector<int32_t> nl2 = tok(v, "\n\n");
  REQUIRE(nl2.size() == 1);
  CHECK(ids == std::vector<int32_t>{kImStart, tok(v, "user")[0], 198, 9707, 11, 1246, 525, 498, 30, kImEnd, 198, kImStart,
                                    77091, 198, kThink, nl2[0], kThinkEnd, nl2[0]});
}

TEST_CASE("ids: the 400 fixture strings, special parsing on and off") {
  const std::vector<uint8_t> raw = read_file(fixture("tokenizer/tok-cases.bin"));
  const std::string data(raw.begin(), raw.end());
  std::vector<std::string> cases;
  for (size_t pos = 0;;) {
    size_t e = data.find('\0', pos);
    if (e == std::string::npos) e = data.size();
    cases.push_back(data.substr(pos, e - pos));
    if (e == data.size()) break;
    pos = e + 1;
  }
  REQUIRE(cases.size() == 400);
  for (bool ps : {true, false}) {
    const std::vector<std::vector<int32_t>> expect =
        [&] {
          std::vector<std::vector<int32_t>> out;
          const std::vector<uint8_t> t = read_file(fixture(ps ? "tokenizer/tok-expected.txt" : "tokenizer/tok-expected-nospecial.txt"));
          std::string line;
          for (uint8_t c : t) {
            if (c != '\n') {
              line.push_back(char(c));
              continue;
            }
            std::vector<int32_t> ids;
            for (size_t p = 0; p < line.size();) {
              size_t q = line.find(' ', p);
              if (q == std::string::npos) q = line.size();
              ids.push_back(std::stoi(line.substr(p, q - p)));
              p = q + 1;
            }
            out.push_back(ids);
            line.clear();
          }
          return out;
        }();
    REQUIRE(expect.size() == cases.size());
    int bad = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
      const auto got = tok(qwen(), cases[i], ps);
      if (got != expect[i] && ++bad <= 5) FAIL_CHECK("case ", i, " (parse_special ", ps, "): ", show(cases[i]));
    }
    CHECK(bad == 0);
    // Round trip where the text is valid UTF-8 (invalid bytes become U+FFFD by design).
    for (const std::string& c : cases)
      if (unicode::is_valid_utf8(c)) CHECK(detok(qwen(), tok(qwen(), c, ps), true) == c);
  }
}

TEST_CASE("ids: long runs (merge order) and pieces long enough for the heap form") {
  const Vocab& v = qwen();
  for (std::string s : {std::string(10, ' '), std::string(8, 'a'), std::string(8, '!'), std::string(5, '\n'),
                        std::string(1000, ' '), std::string(3000, 'a'), std::string(500, '='), std::string(64, '\n')}) {
    const auto ids = tok(v, s);
    CHECK(detok(v, ids) == s);
    std::vector<int32_t> small, heap;
    if (s.size() <= 48) v.bpe(s, false, &small);
    v.bpe(s, true, &heap);
    if (s.size() <= 48) CHECK(small == heap);
  }
  // A run of spaces merges pairwise from the left: runs of equal rank must
  // not depend on the BPE form (the heap form handles > 48 bytes).
  std::vector<int32_t> a, b;
  v.bpe(std::string(40, ' '), false, &a);
  v.bpe(std::string(40, ' '), true, &b);
  CHECK(a == b);
}

TEST_CASE("BPE: the array and heap forms agree on random pieces") {
  const Vocab& v = qwen();
  const std::vector<std::string> alphabet = {"a", "b", "e", "i", "n", "t", "s", " ", "Ġ", "\n", "=", "-", "0",
                                             "é", "我", "😀", "\xFF", "\x80", "ing", "the", "  "};
  std::mt19937 rng(11);
  for (int it = 0; it < 3000; ++it) {
    std::string s;
    const int n = 1 + int(rng() % 20);
    for (int k = 0; k < n; ++k) s += alphabet[rng() % alphabet.size()];
    if (s.size() > 48) s.resize(48);
    std::vector<int32_t> small, heap;
    v.bpe(s, false, &small);
    v.bpe(s, true, &heap);
    CHECK_MESSAGE(small == heap, show(s));
    CHECK(detok(v, small) == s);
  }
}

TEST_CASE("round trip: detokenize(tokenize(x)) == x for valid UTF-8") {
  const Vocab& v = qwen();
  for (const SplitCase& c : kSpec81) CHECK(detok(v, tok(v, c.text)) == c.text);
  // Random code points from many blocks (valid UTF-8, NFC or not).
  const std::vector<std::pair<uint32_t, uint32_t>> blocks = {
      {0x20, 0x7E}, {0x09, 0x0D}, {0xA0, 0x24F}, {0x300, 0x36F}, {0x370, 0x52F}, {0x590, 0x6FF}, {0x900, 0x97F},
      {0xE00, 0xE7F}, {0x1780, 0x17FF}, {0x2000, 0x206F}, {0x3000, 0x30FF}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3},
      {0xFE00, 0xFE0F}, {0xFF00, 0xFFEF}, {0x1F300, 0x1FAFF}, {0x20000, 0x2A6DF}, {0x0, 0x1F}};
  std::mt19937 rng(3);
  for (int it = 0; it < 1500; ++it) {
    std::string s;
    const int n = int(rng() % 40);
    for (int k = 0; k < n; ++k) {
      const auto& b = blocks[rng() % blocks.size()];
      unicode::append_utf8(b.first + rng() % (b.second - b.first + 1), &s);
    }
    CHECK_MESSAGE(detok(v, tok(v, s)) == s, show(s));
  }
}

TEST_CASE("random bytes: tokenization never fails and decodes to the lenient re-encoding (2.3)") {
  const Vocab& v = qwen();
  std::mt19937 rng(5);
  const std::vector<std::string> specials = {"<|im_start|>", "<think>", "<|im_end|>", "</tool_call>"};
  for (int it = 0; it < 1500; ++it) {
    std::string s;
    const int n = int(rng() % 48);
    for (int k = 0; k < n; ++k) {
      const uint32_t r = rng() % 100;
      if (r < 3) s += specials[rng() % specials.size()];
      else if (r < 40) s += char(0x80 + rng() % 0x80);  // continuation / lead bytes
      else s += char(rng() % 0x80);
    }
    // Expected text: each code point as decoded by llama.cpp's rules, in shortest form.
    std::string expect;
    const uint8_t* p = reinterpret_cast<const uint8_t*>(s.data());
    for (size_t i = 0, len; i < s.size(); i += len) unicode::append_utf8(unicode::decode_lenient(p + i, s.size() - i, &len), &expect);
    for (bool ps : {false, true}) {
      const auto ids = tok(v, s, ps);
      for (int32_t id : ids) CHECK((id >= 0 && id < v.n_tokens()));
      CHECK_MESSAGE(detok(v, ids, true) == expect, show(s));
    }
  }
}

// ---- detokenization and streaming (§3, §8.5) ------------------------------------

TEST_CASE("detokenization pieces (spec 8.5)") {
  const Vocab& v = qwen();
  auto piece = [&](int32_t id, bool render) {
    std::string s;
    v.piece(id, render, &s);
    return s;
  };
  CHECK(piece(kImEnd, false) == "");
  CHECK(piece(kImEnd, true) == "<|im_end|>");
  CHECK(piece(kThink, false) == "<think>");
  CHECK(piece(kThink, true) == "<think>");
  CHECK(piece(198, false) == "\n");
  CHECK(piece(220, false) == " ");
  CHECK(piece(222, false) == "\x80");
  CHECK(piece(-1, true) == "");
  CHECK(piece(v.n_tokens(), true) == "");
  // No space cleanup: decoding is the plain concatenation.
  CHECK(detok(v, tok(v, " Hello ,  world . ")) == " Hello ,  world . ");
}

TEST_CASE("streaming UTF-8: characters split across tokens (spec 3.2, 8.5)") {
  const Vocab& v = qwen();
  const std::string text = "😶\u200d🌫\ufe0f";
  const auto ids = tok(v, text);
  Utf8Stream st;
  std::string got;
  size_t n_partial = 0;
  for (int32_t id : ids) {
    std::string p;
    v.piece(id, false, &p);
    const std::string out = st.push(p);
    CHECK(unicode::is_valid_utf8(out));  // never a partial code point
    n_partial += out.empty();
    got += out;
  }
  got += st.flush();
  CHECK(got == text);
  CHECK(n_partial > 0);  // the emoji really are split over tokens in this vocabulary
  // A lone continuation byte is passed on at once, not held back.
  Utf8Stream s2;
  CHECK(s2.push("\x80") == "\x80");
  CHECK(s2.push("a") == "a");
  // An incomplete lead is held; a following ASCII byte releases it.
  CHECK(s2.push("\xE2\x82") == "");
  CHECK(s2.push("a") == "\xE2\x82" "a");
  CHECK(s2.push("\xF0\x9F") == "");
  CHECK(s2.push("\x98") == "");
  CHECK(s2.push("\x80!") == "😀!");
  CHECK(s2.push("\xC3") == "");
  CHECK(s2.flush() == "\xC3");
  CHECK(Utf8Stream::incomplete_tail_len("ab\xE2\x82") == 2);
  CHECK(Utf8Stream::incomplete_tail_len("ab\xE2\x82\xAC") == 0);
  CHECK(Utf8Stream::incomplete_tail_len("\xF0\x9F\x98") == 3);
  CHECK(Utf8Stream::incomplete_tail_len("") == 0);
}

// ---- load errors (§1) -------------------------------------------------------------

namespace {

// A small vocabulary in GGUF form that tests can break one key at a time.
struct MiniVocab {
  std::string model = "gpt2", pre = "qwen35";
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  bool has_tokens = true, has_types = true, has_merges = true, has_model = true, has_pre = true;
  int64_t eos = -1, bos = -1;
  int add_bos = -1, add_eos = -1;  // -1: key absent

  MiniVocab() {
    // The 256 byte tokens in GPT-2 order: bytes sorted by their image U(b).
    std::vector<int> bytes(256);
    for (int b = 0; b < 256; ++b) bytes[size_t(b)] = b;
    std::sort(bytes.begin(), bytes.end(),
              [](int a, int b) { return unicode::byte_to_cp(uint8_t(a)) < unicode::byte_to_cp(uint8_t(b)); });
    for (int b : bytes) {
      std::string s;
      unicode::append_utf8(unicode::byte_to_cp(uint8_t(b)), &s);
      tokens.push_back(s);
      types.push_back(TOKEN_NORMAL);
    }
    add("ab", TOKEN_NORMAL);        // 256
    add("abc", TOKEN_NORMAL);       // 257
    add("ĠĠ", TOKEN_NORMAL);        // 258
    add("bc", TOKEN_NORMAL);        // 259
    add("<|im_end|>", TOKEN_CONTROL);      // 260
    add("<think>", TOKEN_USER_DEFINED);    // 261
    add("<0x41>", TOKEN_BYTE);             // 262
    add("", TOKEN_NORMAL);                 // 263: empty -> "[EMPTY_263]"
    add("[PAD264]", TOKEN_UNUSED);         // 264
    merges = {"a b", "ab c", "Ġ Ġ", "b c", "a b"};  // the repeated "a b" keeps rank 0
    eos = 260;
  }
  void add(const std::string& t, int32_t type) {
    tokens.push_back(t);
    types.push_back(type);
  }
  Status load(std::shared_ptr<Vocab>* out) const {
    GgufWriter w;
    w.set_str("general.architecture", "qwen35");
    if (has_model) w.set_str("tokenizer.ggml.model", model);
    if (has_pre) w.set_str("tokenizer.ggml.pre", pre);
    if (has_tokens) w.set_arr_str("tokenizer.ggml.tokens", tokens);
    if (has_types) w.set_arr_i32("tokenizer.ggml.token_type", types);
    if (has_merges) w.set_arr_str("tokenizer.ggml.merges", merges);
    if (eos >= 0) w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(eos));
    if (bos >= 0) w.set_u32("tokenizer.ggml.bos_token_id", uint32_t(bos));
    if (add_bos >= 0) w.set_bool("tokenizer.ggml.add_bos_token", add_bos != 0);
    if (add_eos >= 0) w.set_bool("tokenizer.ggml.add_eos_token", add_eos != 0);
    const std::vector<uint8_t> img = w.header();
    std::unique_ptr<GgufFile> f;
    QWEN35_TRY(GgufFile::FromMemory(img.data(), img.size(), true, &f));
    return Vocab::Load(*f, Logger(), out);
  }
};

// Load must fail with `code` and a message containing `needle`.
void expect_error(const MiniVocab& mv, qwen35_status code, const std::string& needle) {
  std::shared_ptr<Vocab> v;
  const Status st = mv.load(&v);
  CHECK(!st.ok());
  CHECK(st.code() == code);
  CHECK_MESSAGE(st.message().find(needle) != std::string::npos, st.message());
  CHECK(!v);
}

}  // namespace

TEST_CASE("vocab: a small valid vocabulary (types, duplicates, empty text, out-of-range ids)") {
  MiniVocab mv;
  mv.bos = 100000;  // out of range: ignored, BOS stays "none"
  std::shared_ptr<Vocab> v;
  Status st = mv.load(&v);
  REQUIRE_MESSAGE(st.ok(), st.message());
  CHECK(v->n_tokens() == 265);
  CHECK(v->n_merges() == 5);
  CHECK(v->bos() == -1);
  CHECK(v->eos() == 260);
  CHECK(v->eog_ids() == std::vector<int32_t>{260});
  CHECK(v->text(263) == "[EMPTY_263]");
  CHECK(v->find("[EMPTY_263]") == 263);
  CHECK(tok(*v, "abc") == std::vector<int32_t>{257});   // "a b" (rank 0) before "b c" (rank 3)
  CHECK(tok(*v, "bc") == std::vector<int32_t>{259});
  CHECK(tok(*v, "  ") == std::vector<int32_t>{258});   // "Ġ Ġ"
  CHECK(tok(*v, "a<think>b") == std::vector<int32_t>{v->find("a"), 261, v->find("b")});
  CHECK(tok(*v, "<|im_end|>", true) == std::vector<int32_t>{260});
  std::string s;
  v->piece(262, false, &s);  // BYTE token <0x41>
  CHECK(s == "A");
  s.clear();
  v->piece(264, true, &s);   // UNUSED
  CHECK(s.empty());
  v->piece(261, false, &s);
  CHECK(s == "<think>");
  // add_special adds BOS / EOS only when the vocabulary asks for them.
  std::vector<int32_t> ids;
  REQUIRE(v->tokenize("ab", true, false, &ids).ok());
  CHECK(ids == std::vector<int32_t>{256});
  mv.bos = 261;
  mv.add_bos = 1;
  mv.add_eos = 1;
  REQUIRE(mv.load(&v).ok());
  REQUIRE(v->tokenize("ab", true, false, &ids).ok());
  CHECK(ids == std::vector<int32_t>{261, 256, 260});
  REQUIRE(v->tokenize("ab", false, false, &ids).ok());
  CHECK(ids == std::vector<int32_t>{256});
  mv.add_bos = mv.add_eos = -1;
  // pre = "qwen2" is accepted.
  mv.pre = "qwen2";
  REQUIRE(mv.load(&v).ok());
  CHECK(v->pre() == PreType::Qwen2);
  // Duplicate texts: the last id wins for lookups, as in llama.cpp.
  mv.add("ab", TOKEN_NORMAL);  // 265
  REQUIRE(mv.load(&v).ok());
  CHECK(v->find("ab") == 265);
  CHECK(tok(*v, "ab") == std::vector<int32_t>{265});
}

TEST_CASE("vocab: load errors for broken vocabularies") {
  {
    MiniVocab mv;
    mv.model = "llama";
    expect_error(mv, QWEN35_ERR_UNSUPPORTED, "tokenizer.ggml.model");
  }
  {
    MiniVocab mv;
    mv.has_model = false;
    expect_error(mv, QWEN35_ERR_FORMAT, "tokenizer.ggml.model is missing");
  }
  {
    MiniVocab mv;
    mv.pre = "llama-bpe";
    expect_error(mv, QWEN35_ERR_UNSUPPORTED, "tokenizer.ggml.pre");
  }
  {
    MiniVocab mv;
    mv.has_pre = false;
    expect_error(mv, QWEN35_ERR_FORMAT, "tokenizer.ggml.pre is missing");
  }
  {
    MiniVocab mv;
    mv.has_tokens = false;
    expect_error(mv, QWEN35_ERR_FORMAT, "tokenizer.ggml.tokens is missing");
  }
  {
    MiniVocab mv;
    mv.has_types = false;
    expect_error(mv, QWEN35_ERR_FORMAT, "tokenizer.ggml.token_type is missing");
  }
  {
    MiniVocab mv;
    mv.types.pop_back();
    expect_error(mv, QWEN35_ERR_FORMAT, "token_type has 264 entries but tokenizer.ggml.tokens has 265");
  }
  {
    MiniVocab mv;
    mv.types[100] = 9;
    expect_error(mv, QWEN35_ERR_FORMAT, "token 100 has type 9");
  }
  {
    MiniVocab mv;
    mv.has_merges = false;
    expect_error(mv, QWEN35_ERR_FORMAT, "tokenizer.ggml.merges is missing");
  }
  {
    MiniVocab mv;
    mv.merges.push_back("abc");
    expect_error(mv, QWEN35_ERR_FORMAT, "merge 5 'abc' is not two tokens");
  }
  {
    MiniVocab mv;
    mv.merges.push_back("ab ");
    expect_error(mv, QWEN35_ERR_FORMAT, "merge 5");
  }
  {
    MiniVocab mv;
    mv.merges.push_back("x yz");
    expect_error(mv, QWEN35_ERR_FORMAT, "'yz' is not a token");
  }
  {
    MiniVocab mv;
    mv.merges.push_back("c d");
    expect_error(mv, QWEN35_ERR_FORMAT, "the result 'cd' is not a token");
  }
  {
    MiniVocab mv;
    std::swap(mv.tokens[5], mv.tokens[256]);  // "ab" among the byte ids
    expect_error(mv, QWEN35_ERR_FORMAT, "ids 0-255 must be the 256 byte tokens");
  }
  {
    MiniVocab mv;
    mv.tokens[5] = mv.tokens[6];  // a byte token twice, another missing
    expect_error(mv, QWEN35_ERR_FORMAT, "token 6");
  }
  {
    MiniVocab mv;
    mv.add("a b", TOKEN_NORMAL);  // a literal space is not byte-level encoded
    expect_error(mv, QWEN35_ERR_FORMAT, "is NORMAL but its text is not byte-level BPE encoded");
  }
  {
    MiniVocab mv;
    mv.add("caf\xC3\xA9\xE2\x82\xAC", TOKEN_NORMAL);  // U+20AC is not one of the 256 byte images
    expect_error(mv, QWEN35_ERR_FORMAT, "not byte-level BPE encoded");
  }
  {
    MiniVocab mv;
    mv.add("<0xZZ>", TOKEN_BYTE);
    expect_error(mv, QWEN35_ERR_FORMAT, "has type BYTE but is not of the form <0xXX>");
  }
  {
    MiniVocab mv;
    mv.tokens.resize(200);
    mv.types.resize(200);
    expect_error(mv, QWEN35_ERR_FORMAT, "tokenizer.ggml.tokens has 200 entries");
  }
}
