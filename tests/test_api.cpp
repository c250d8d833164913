// The C API contract: version, status strings, NULL handles and bad
// arguments give errors (never crashes), *_free(NULL) is a no-op, metadata.
#include <doctest/doctest.h>

#include <cstring>
#include <string>

#include "qwen35/qwen35.h"
#include "test_util.h"

using namespace qwen35::test;

TEST_CASE("version and status strings") {
  CHECK(std::string(qwen35_version()) == QWEN35_VERSION_STRING);
  CHECK(qwen35_version_number() == QWEN35_VERSION_NUMBER);
  for (int s = 0; s >= -10; --s) CHECK(std::strlen(qwen35_status_str(qwen35_status(s))) > 0);
}

TEST_CASE("NULL handles and bad arguments") {
  qwen35_model_free(nullptr);
  qwen35_context_free(nullptr);
  qwen35_model* m = nullptr;
  CHECK(qwen35_model_load(nullptr, nullptr, &m) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_model_load("x", nullptr, nullptr) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_model_load("/no/such/file.gguf", nullptr, &m) == QWEN35_ERR_IO);
  CHECK(m == nullptr);
  CHECK(std::string(qwen35_errmsg()).find("/no/such/file.gguf") != std::string::npos);
  CHECK(qwen35_model_n_vocab(nullptr) == 0);
  CHECK(qwen35_model_meta(nullptr, "x", nullptr, 0) == -1);
  qwen35_context* c = nullptr;
  CHECK(qwen35_context_create(nullptr, nullptr, &c) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_context_decode(nullptr, nullptr, 1, QWEN35_LOGITS_LAST) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_context_logits(nullptr, 0) == nullptr);
  CHECK(qwen35_context_truncate(nullptr, 0) == QWEN35_ERR_INVALID_ARG);
  qwen35_context_abort(nullptr);
  qwen35_context_reset(nullptr);
}

TEST_CASE("model facts, metadata and context basics") {
  qwen35_model* m = nullptr;
  qwen35_model_params mp = qwen35_model_default_params();
  mp.device = QWEN35_DEVICE_CPU;
  REQUIRE(qwen35_model_load(fixture("models/tiny-m-nvfp4.gguf").c_str(), &mp, &m) == QWEN35_OK);
  CHECK(qwen35_model_n_vocab(m) == 4122);
  CHECK(qwen35_model_n_embd(m) == 256);
  CHECK(qwen35_model_n_layer(m) == 4);
  CHECK(qwen35_model_has_mtp(m));
  CHECK(qwen35_model_device(m) == QWEN35_DEVICE_CPU);
  CHECK(qwen35_model_host_bytes(m) == 0);
  char buf[64];
  CHECK(qwen35_model_meta(m, "general.architecture", buf, sizeof buf) == 6);
  CHECK(std::string(buf) == "qwen35");
  CHECK(qwen35_model_meta(m, "qwen35.block_count", buf, sizeof buf) == 1);
  CHECK(std::string(buf) == "5");
  CHECK(qwen35_model_meta(m, "no.such.key", buf, sizeof buf) == -1);
  // Truncated output still reports the full length.
  CHECK(qwen35_model_meta(m, "general.architecture", buf, 3) == 6);
  CHECK(std::string(buf) == "qw");
  CHECK(qwen35_model_meta_count(m) > 10);
  const char* k0 = qwen35_model_meta_key(m, 0);
  const char* k1 = qwen35_model_meta_key(m, 1);
  REQUIRE(k0 != nullptr);
  REQUIRE(k1 != nullptr);
  CHECK(std::string(k0) != std::string(k1));  // each key keeps its own storage
  CHECK(qwen35_model_meta(m, k0, nullptr, 0) >= 0);
  CHECK(qwen35_model_meta_key(m, 100000) == nullptr);
  CHECK(qwen35_model_meta_key(m, -1) == nullptr);

  // Older callers pass a smaller struct: the rest keeps its defaults.
  qwen35_context_params cp = qwen35_context_default_params();
  cp.n_ctx = 64;
  cp.struct_size = offsetof(qwen35_context_params, n_batch);
  qwen35_context* c = nullptr;
  REQUIRE(qwen35_context_create(m, &cp, &c) == QWEN35_OK);
  CHECK(qwen35_context_n_ctx(c) == 64);
  CHECK(qwen35_context_memory_bytes(c) > 0);
  int32_t t[2] = {1, 2};
  CHECK(qwen35_context_decode(c, t, 0, QWEN35_LOGITS_LAST) == QWEN35_ERR_INVALID_ARG);
  REQUIRE(qwen35_context_decode(c, t, 2, QWEN35_LOGITS_LAST) == QWEN35_OK);
  CHECK(qwen35_context_logits(c, 0) == nullptr);  // only the last row has logits
  CHECK(qwen35_context_logits(c, 1) != nullptr);
  CHECK(qwen35_context_logits(c, 2) == nullptr);
  CHECK(qwen35_context_logits(c, -1) == qwen35_context_logits(c, 1));
  CHECK(qwen35_context_logits(c, -2) == nullptr);  // only -1 means "last"
  CHECK(qwen35_context_hidden(c, 0) != nullptr);
  CHECK(qwen35_context_hidden(c, -3) == nullptr);
  int32_t toks[4];
  CHECK(qwen35_context_tokens(c, toks, 4) == 2);
  CHECK(toks[1] == 2);
  qwen35_context_params bad = qwen35_context_default_params();
  bad.n_ctx = -5;
  qwen35_context* c2 = nullptr;
  CHECK(qwen35_context_create(m, &bad, &c2) == QWEN35_ERR_INVALID_ARG);
  qwen35_context_free(c);
  qwen35_model_free(m);
}

TEST_CASE("a progress callback can cancel loading") {
  qwen35_model_params mp = qwen35_model_default_params();
  mp.progress_callback = [](float p, void*) { return p < 0.5f; };
  qwen35_model* m = nullptr;
  CHECK(qwen35_model_load(fixture("models/tiny-a-nvfp4.gguf").c_str(), &mp, &m) == QWEN35_ERR_CANCELLED);
  CHECK(m == nullptr);
}

// The streaming reply parser's C surface (its parsing is tested in
// test_chat_parse.cpp); here under ASan in scripts/test.sh: deltas read
// right after each call, misuse answered with errors.
TEST_CASE("reply parser: deltas, misuse and NULL arguments") {
  const std::string text =
      "r\n</think>\n\nOk <tool_call>\n<function=f>\n<parameter=a>\nx y\n</parameter>\n</function>\n</tool_call>";
  qwen35_reply_parser* p = nullptr;
  REQUIRE(qwen35_reply_parser_create(true, true, "[]", 1, &p) == QWEN35_OK);
  std::string reasoning, content, args, name;
  for (char ch : text) {
    qwen35_reply_delta d;
    REQUIRE(qwen35_reply_parser_push(p, &ch, 1, &d) == QWEN35_OK);
    reasoning.append(d.reasoning_content, d.reasoning_content_len);
    content.append(d.content, d.content_len);
    for (size_t i = 0; i < d.n_tool_calls; ++i) {
      if (d.tool_calls[i].name) name = d.tool_calls[i].name;
      args.append(d.tool_calls[i].arguments, d.tool_calls[i].arguments_len);
    }
  }
  qwen35_reply_delta d;
  REQUIRE(qwen35_reply_parser_finish(p, &d) == QWEN35_OK);
  content.append(d.content, d.content_len);
  CHECK(reasoning == "r");
  CHECK(content == "Ok ");
  CHECK(name == "f");
  CHECK(args == R"({"a":"x y"})");
  CHECK(qwen35_reply_parser_push(p, "x", 1, &d) == QWEN35_ERR_STATE);
  CHECK(qwen35_reply_parser_finish(p, &d) == QWEN35_ERR_STATE);
  qwen35_chat_reply r;
  REQUIRE(qwen35_reply_parser_result(p, &r) == QWEN35_OK);
  CHECK(std::string(r.tool_calls_json) == R"([{"name":"f","arguments":{"a":"x y"}}])");
  qwen35_chat_reply_free(&r);
  qwen35_reply_parser_free(p);
  qwen35_reply_parser_free(nullptr);
  CHECK(qwen35_reply_parser_create(false, false, "{", 0, &p) == QWEN35_ERR_INVALID_ARG);
  CHECK(p == nullptr);
  CHECK(qwen35_reply_parser_create(false, false, nullptr, 0, nullptr) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_reply_parser_push(nullptr, "x", 1, nullptr) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_reply_parser_finish(nullptr, nullptr) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_reply_parser_result(nullptr, &r) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_reply_parser_result(nullptr, nullptr) == QWEN35_ERR_INVALID_ARG);
}

TEST_CASE("out-of-range enum values from C callers are refused, not undefined") {
  qwen35_model_params mp = qwen35_model_default_params();
  const int bad_device = 9;
  std::memcpy(&mp.device, &bad_device, sizeof bad_device);  // what a C caller can store
  qwen35_model* m = nullptr;
  CHECK(qwen35_model_load(fixture("models/tiny-a-nvfp4.gguf").c_str(), &mp, &m) == QWEN35_ERR_INVALID_ARG);
  CHECK(m == nullptr);
  CHECK(std::string(qwen35_errmsg()).find("bad device 9") != std::string::npos);
  mp = qwen35_model_default_params();
  mp.device = QWEN35_DEVICE_CPU;
  REQUIRE(qwen35_model_load(fixture("models/tiny-a-nvfp4.gguf").c_str(), &mp, &m) == QWEN35_OK);
  qwen35_content_part part{};
  const int bad_type = 42;
  std::memcpy(&part.type, &bad_type, sizeof bad_type);
  qwen35_chat_message msg{};
  msg.role = "user";
  msg.parts = &part;
  msg.n_parts = 1;
  char buf[256];
  size_t needed = 0;
  CHECK(qwen35_chat_render(m, &msg, 1, nullptr, buf, sizeof buf, &needed) < 0);
  CHECK(std::string(qwen35_errmsg()).find("unknown type 42") != std::string::npos);
  qwen35_context* c = nullptr;
  qwen35_context_params cp = qwen35_context_default_params();
  cp.n_ctx = 16;
  REQUIRE(qwen35_context_create(m, &cp, &c) == QWEN35_OK);
  qwen35_logits_mode mode;
  const int bad_mode = 7;
  std::memcpy(&mode, &bad_mode, sizeof bad_mode);
  const qwen35_token t = 1;
  CHECK(qwen35_context_decode(c, &t, 1, mode) == QWEN35_ERR_INVALID_ARG);
  qwen35_context_free(c);
  qwen35_model_free(m);
}
