// The tokenizer through the public C API and the qwen35-tokenize tool: the
// fixture ids, buffer-size protocol, errors (NULL model, a model without a
// tokenizer, bad ids), streaming detokenization, the fixture models' real
// tokenizer and the vocabulary-only model file.
#include <doctest/doctest.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gguf.h"
#include "gguf_writer.h"
#include "qwen35/qwen35.h"
#include "test_util.h"

using namespace qwen35::test;

namespace {

struct Model {
  qwen35_model* m = nullptr;
  explicit Model(const std::string& path) {
    qwen35_model_params p = qwen35_model_default_params();
    p.device = QWEN35_DEVICE_CPU;
    const qwen35_status st = qwen35_model_load(path.c_str(), &p, &m);
    REQUIRE_MESSAGE(st == QWEN35_OK, qwen35_errmsg());
  }
  ~Model() { qwen35_model_free(m); }
};

const Model& vocab_model() {
  static Model m(fixture("tokenizer/qwen-vocab.gguf"));
  return m;
}

std::vector<qwen35_token> tokenize(const qwen35_model* m, const std::string& s, bool parse_special) {
  const int32_t need = qwen35_tokenize(m, s.data(), s.size(), nullptr, 0, false, parse_special);
  REQUIRE(need != INT32_MIN);
  std::vector<qwen35_token> ids(size_t(need < 0 ? -need : need));
  const int32_t n = qwen35_tokenize(m, s.data(), s.size(), ids.data(), int32_t(ids.size()), false, parse_special);
  REQUIRE(n == int32_t(ids.size()));
  return ids;
}

std::string detokenize(const qwen35_model* m, const std::vector<qwen35_token>& ids, bool render_special) {
  const int32_t need = qwen35_detokenize(m, ids.data(), int32_t(ids.size()), nullptr, 0, render_special);
  REQUIRE(need < 0);
  REQUIRE(need != INT32_MIN);
  std::vector<char> buf(size_t(-need));
  const int32_t n = qwen35_detokenize(m, ids.data(), int32_t(ids.size()), buf.data(), int32_t(buf.size()), render_special);
  REQUIRE(n == -need - 1);
  CHECK(buf[size_t(n)] == '\0');
  return std::string(buf.data(), size_t(n));
}

std::vector<std::string> read_cases() {
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
  return cases;
}

std::string read_text(const std::string& path) {
  const std::vector<uint8_t> b = read_file(path);
  return std::string(b.begin(), b.end());
}

// The fixture format: ids joined by single spaces, one line per case.
std::string format_lines(const qwen35_model* m, const std::vector<std::string>& cases, bool parse_special) {
  std::string out;
  for (const std::string& c : cases) {
    const auto ids = tokenize(m, c, parse_special);
    for (size_t i = 0; i < ids.size(); ++i) out += (i ? " " : "") + std::to_string(ids[i]);
    out += "\n";
  }
  return out;
}

// tiny-a-nvfp4.gguf without its tokenizer.* keys (tensors copied as they are).
std::string model_without_tokenizer() {
  const std::string path = tmp_path("no-tokenizer.gguf");
  std::unique_ptr<qwen35::GgufFile> f;
  REQUIRE(qwen35::GgufFile::Open(fixture("models/tiny-a-nvfp4.gguf"), true, &f).ok());
  qwen35::GgufWriter w;
  for (const qwen35::GgufKV& kv : f->kvs())
    if (kv.key.substr(0, 10) != "tokenizer.") w.copy_kv(*f, kv);
  for (const qwen35::GgufTensor& t : f->tensors()) {
    const uint8_t* src = t.data;
    w.add_tensor(std::string(t.name), t.type, std::vector<int64_t>(t.ne, t.ne + t.n_dims),
                 [src](uint8_t* dst, uint64_t n) { std::memcpy(dst, src, n); });
  }
  REQUIRE(w.write(path).ok());
  return path;
}

}  // namespace

TEST_CASE("C API: the fixture ids, special parsing on and off") {
  const qwen35_model* m = vocab_model().m;
  const std::vector<std::string> cases = read_cases();
  REQUIRE(cases.size() == 400);
  CHECK(format_lines(m, cases, true) == read_text(fixture("tokenizer/tok-expected.txt")));
  CHECK(format_lines(m, cases, false) == read_text(fixture("tokenizer/tok-expected-nospecial.txt")));
}

TEST_CASE("qwen35-tokenize reproduces the fixture files exactly") {
  const std::string tool = std::string(QWEN35_TOOLS_DIR) + "/qwen35-tokenize";
  REQUIRE(file_exists(tool));
  for (bool special : {true, false}) {
    const std::string out = tmp_path(special ? "tok-out.txt" : "tok-out-nospecial.txt");
    const std::string cmd = tool + " -m " + fixture("tokenizer/qwen-vocab.gguf") + " --in " +
                            fixture("tokenizer/tok-cases.bin") + (special ? "" : " --no-special") + " > " + out;
    REQUIRE(std::system(cmd.c_str()) == 0);
    CHECK(read_text(out) ==
          read_text(fixture(special ? "tokenizer/tok-expected.txt" : "tokenizer/tok-expected-nospecial.txt")));
  }
  // Usage errors exit non-zero.
  CHECK(std::system((tool + " --in x > /dev/null 2>&1").c_str()) != 0);
  CHECK(std::system((tool + " -m /no/such.gguf -p x > /dev/null 2>&1").c_str()) != 0);
}

TEST_CASE("C API: token queries") {
  const qwen35_model* m = vocab_model().m;
  CHECK(qwen35_model_n_vocab(m) == 151669);
  CHECK(qwen35_token_eos(m) == 151645);
  CHECK(qwen35_token_bos(m) == 151643);
  CHECK(qwen35_token_is_eog(m, 151645));
  CHECK(qwen35_token_is_eog(m, 151643));
  CHECK(!qwen35_token_is_eog(m, 151644));
  CHECK(!qwen35_token_is_eog(m, -5));
  CHECK(qwen35_token_is_control(m, 151644));
  CHECK(!qwen35_token_is_control(m, 151667));  // <think> is USER_DEFINED
  CHECK(!qwen35_token_is_control(m, 1 << 30));
  REQUIRE(qwen35_token_text(m, 198) != nullptr);
  CHECK(std::string(qwen35_token_text(m, 198)) == "Ċ");
  CHECK(std::string(qwen35_token_text(m, 151644)) == "<|im_start|>");
  CHECK(std::string(qwen35_token_text(m, 0)) == "!");
  CHECK(qwen35_token_text(m, -1) == nullptr);
  CHECK(qwen35_token_text(m, 151669) == nullptr);
  CHECK(qwen35_token_lookup(m, "<think>") == 151667);
  CHECK(qwen35_token_lookup(m, "Ġ") == 220);
  CHECK(qwen35_token_lookup(m, "not a token at all") == -1);
  CHECK(qwen35_token_lookup(m, nullptr) == -1);
  // Every id's text is NUL-terminated and looks up to itself (no duplicates here).
  for (qwen35_token t = 0; t < qwen35_model_n_vocab(m); t += 37) CHECK(qwen35_token_lookup(m, qwen35_token_text(m, t)) == t);
}

TEST_CASE("C API: buffer sizes and errors") {
  const qwen35_model* m = vocab_model().m;
  const std::string text = "Hello, how are you?";
  qwen35_token ids[16];
  CHECK(qwen35_tokenize(m, text.data(), text.size(), ids, 16, false, false) == 6);
  CHECK(ids[0] == 9707);
  CHECK(qwen35_tokenize(m, text.data(), text.size(), ids, 3, false, false) == -6);
  CHECK(qwen35_tokenize(m, text.data(), text.size(), nullptr, 0, false, false) == -6);
  CHECK(qwen35_tokenize(m, nullptr, 0, nullptr, 0, true, true) == 0);  // add_special: no BOS for Qwen
  CHECK(qwen35_tokenize(m, text.data(), text.size(), ids, 16, true, false) == 6);
  CHECK(qwen35_tokenize(m, nullptr, 5, ids, 16, false, false) == INT32_MIN);
  CHECK(std::string(qwen35_errmsg()).find("text is NULL") != std::string::npos);
  CHECK(qwen35_tokenize(m, text.data(), text.size(), nullptr, 4, false, false) == INT32_MIN);
  CHECK(qwen35_tokenize(m, text.data(), text.size(), ids, -1, false, false) == INT32_MIN);
  CHECK(qwen35_tokenize(nullptr, text.data(), text.size(), ids, 16, false, false) == INT32_MIN);
  CHECK(std::string(qwen35_errmsg()).find("model is NULL") != std::string::npos);

  char buf[32];
  CHECK(qwen35_token_to_piece(m, 9707, buf, sizeof buf, false) == 5);
  CHECK(std::string(buf, 5) == "Hello");
  CHECK(qwen35_token_to_piece(m, 9707, buf, 3, false) == -5);
  CHECK(qwen35_token_to_piece(m, 151645, buf, sizeof buf, false) == 0);
  CHECK(qwen35_token_to_piece(m, 151645, buf, sizeof buf, true) == 10);
  CHECK(std::string(buf, 10) == "<|im_end|>");
  CHECK(qwen35_token_to_piece(m, 151667, buf, sizeof buf, false) == 7);  // <think> always rendered
  CHECK(qwen35_token_to_piece(m, -1, buf, sizeof buf, false) == INT32_MIN);
  CHECK(std::string(qwen35_errmsg()).find("out of range") != std::string::npos);
  CHECK(qwen35_token_to_piece(m, 0, nullptr, 4, false) == INT32_MIN);

  const qwen35_token hello[] = {9707, 11, 151645};
  CHECK(qwen35_detokenize(m, hello, 3, buf, sizeof buf, false) == 6);
  CHECK(std::string(buf) == "Hello,");
  CHECK(qwen35_detokenize(m, hello, 3, buf, sizeof buf, true) == 16);
  CHECK(std::string(buf) == "Hello,<|im_end|>");
  CHECK(qwen35_detokenize(m, hello, 3, buf, 6, false) == -7);  // 6 bytes + NUL
  CHECK(qwen35_detokenize(m, hello, 3, buf, 7, false) == 6);
  CHECK(qwen35_detokenize(m, hello, 0, buf, 1, false) == 0);
  CHECK(buf[0] == '\0');
  CHECK(qwen35_detokenize(m, hello, 0, nullptr, 0, false) == -1);
  const qwen35_token bad[] = {9707, 999999};
  CHECK(qwen35_detokenize(m, bad, 2, buf, sizeof buf, false) == INT32_MIN);
  CHECK(qwen35_detokenize(m, nullptr, 2, buf, sizeof buf, false) == INT32_MIN);
  CHECK(qwen35_detokenize(nullptr, hello, 3, buf, sizeof buf, false) == INT32_MIN);

  CHECK(qwen35_token_eos(nullptr) == -1);
  CHECK(qwen35_token_bos(nullptr) == -1);
  CHECK(!qwen35_token_is_eog(nullptr, 0));
  CHECK(qwen35_token_text(nullptr, 0) == nullptr);
  CHECK(qwen35_token_lookup(nullptr, "a") == -1);
  qwen35_detok* d = reinterpret_cast<qwen35_detok*>(1);
  CHECK(qwen35_detok_create(nullptr, false, &d) == QWEN35_ERR_INVALID_ARG);
  CHECK(d == nullptr);
  CHECK(qwen35_detok_create(m, false, nullptr) == QWEN35_ERR_INVALID_ARG);
  qwen35_detok_free(nullptr);
  size_t len = 99;
  CHECK(qwen35_detok_push(nullptr, 0, &len) == nullptr);
  CHECK(len == 0);
  CHECK(qwen35_detok_flush(nullptr, &len) == nullptr);
}

TEST_CASE("C API: a model without a tokenizer gives clear errors") {
  Model nt(model_without_tokenizer());
  const qwen35_model* m = nt.m;
  qwen35_token ids[4];
  CHECK(qwen35_tokenize(m, "hi", 2, ids, 4, false, false) == INT32_MIN);
  CHECK(std::string(qwen35_errmsg()).find("has no tokenizer") != std::string::npos);
  char buf[8];
  CHECK(qwen35_token_to_piece(m, 0, buf, 8, false) == INT32_MIN);
  CHECK(qwen35_detokenize(m, ids, 0, buf, 8, false) == INT32_MIN);
  qwen35_detok* d = nullptr;
  CHECK(qwen35_detok_create(m, false, &d) == QWEN35_ERR_UNSUPPORTED);
  CHECK(std::string(qwen35_errmsg()).find("has no tokenizer") != std::string::npos);
  CHECK(d == nullptr);
  CHECK(qwen35_token_eos(m) == -1);
  CHECK(qwen35_token_text(m, 0) == nullptr);
  CHECK(qwen35_token_lookup(m, "!") == -1);
  CHECK(!qwen35_token_is_eog(m, 0));
}

TEST_CASE("C API: streaming detokenizer (spec 8.5)") {
  const qwen35_model* m = vocab_model().m;
  qwen35_detok* d = nullptr;
  REQUIRE(qwen35_detok_create(m, false, &d) == QWEN35_OK);
  // An emoji sequence split over byte-level tokens: nothing until each code point is complete.
  const std::string text = "😶\u200d🌫\ufe0f and <think>x</think><|im_end|>";
  const auto ids = tokenize(m, text, true);
  std::string got;
  for (qwen35_token t : ids) {
    size_t len = 99;
    const char* s = qwen35_detok_push(d, t, &len);
    REQUIRE(s != nullptr);
    CHECK(std::strlen(s) == len);
    got.append(s, len);
  }
  size_t len = 99;
  const char* rest = qwen35_detok_flush(d, &len);
  REQUIRE(rest != nullptr);
  CHECK(len == 0);
  CHECK(got == "😶\u200d🌫\ufe0f and <think>x</think>");  // <|im_end|> hidden
  // A lone continuation byte (token 222 = byte 0x80) then "a" (64): U+FFFD then "a", no stall.
  std::string s = qwen35_detok_push(d, 222, &len);
  s += qwen35_detok_push(d, 64, &len);
  CHECK(s == "\xEF\xBF\xBD" "a");
  // A truncated character at the end is flushed as U+FFFD.
  const auto e = tokenize(m, "é", false);
  REQUIRE(e.size() >= 1);
  std::string p(qwen35_detok_push(d, 1, &len));  // token 1 = '"'
  CHECK(p == "\"");
  CHECK(std::string(qwen35_detok_push(d, qwen35_token_lookup(m, "Ã"), &len)).empty());  // 0xC3: lead byte held
  CHECK(std::string(qwen35_detok_flush(d, &len)) == "\xEF\xBF\xBD");
  CHECK(qwen35_detok_push(d, -3, &len) == nullptr);
  CHECK(len == 0);
  qwen35_detok_free(d);

  REQUIRE(qwen35_detok_create(m, true, &d) == QWEN35_OK);
  CHECK(std::string(qwen35_detok_push(d, 151645, &len)) == "<|im_end|>");
  qwen35_detok_free(d);
}

TEST_CASE("C API: one model tokenizes from several threads at once") {
  const qwen35_model* m = vocab_model().m;
  const std::vector<std::string> cases = read_cases();
  const std::string expect = read_text(fixture("tokenizer/tok-expected.txt"));
  std::vector<std::string> got(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t)
    threads.emplace_back([&, t] {
      std::string out;
      for (const std::string& c : cases) {
        std::vector<qwen35_token> ids(c.size() + 8);
        const int32_t n = qwen35_tokenize(m, c.data(), c.size(), ids.data(), int32_t(ids.size()), false, true);
        for (int32_t i = 0; i < n; ++i) out += (i ? " " : "") + std::to_string(ids[size_t(i)]);
        out += "\n";
      }
      got[t] = out;
    });
  for (auto& th : threads) th.join();
  for (const std::string& g : got) CHECK(g == expect);
}

TEST_CASE("fixture models load with their real tokenizer") {
  for (const char* name : {"models/tiny-a-f32.gguf", "models/tiny-a-nvfp4.gguf", "models/tiny-m-nvfp4.gguf"}) {
    CAPTURE(name);
    Model mm(fixture(name));
    const qwen35_model* m = mm.m;
    CHECK(qwen35_model_n_vocab(m) == 4122);
    CHECK(std::string(qwen35_token_text(m, 0)) == "!");
    CHECK(std::string(qwen35_token_text(m, 4097)) == "<|im_start|>");
    CHECK(qwen35_token_eos(m) == 4098);
    CHECK(qwen35_token_bos(m) == 4096);
    for (qwen35_token t : {4096, 4098, 4115, 4116, 4117}) CHECK(qwen35_token_is_eog(m, t));
    CHECK(!qwen35_token_is_eog(m, 4097));
    const std::string chat = "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
    const auto ids = tokenize(m, chat, true);
    REQUIRE(ids.size() > 10);
    CHECK(ids.front() == 4097);
    CHECK(std::count(ids.begin(), ids.end(), 4120) == 1);  // <think>
    for (qwen35_token t : ids) CHECK(t < 4122);
    CHECK(detokenize(m, ids, true) == chat);
    CHECK(detokenize(m, tokenize(m, "Ünïcödé 😀 text\t\n", false), false) == "Ünïcödé 😀 text\t\n");
  }
}

TEST_CASE("a vocabulary-only file loads for the tokenizer but runs no context") {
  const qwen35_model* m = vocab_model().m;
  CHECK(std::string(qwen35_model_desc(m)).find("vocabulary only") != std::string::npos);
  qwen35_context* c = nullptr;
  CHECK(qwen35_context_create(const_cast<qwen35_model*>(m), nullptr, &c) == QWEN35_ERR_UNSUPPORTED);
  CHECK(c == nullptr);
  CHECK(std::string(qwen35_errmsg()).find("vocabulary-only") != std::string::npos);
}
