// qwen35-tokenize: tokenize text with a model's tokenizer (C API only).
//
//   qwen35-tokenize -m MODEL --in CASES.bin [--no-special] [--add-special]
//   qwen35-tokenize -m MODEL -p TEXT [--no-special] [--add-special]
//   qwen35-tokenize -m MODEL --bench FILE [--no-special] [--seconds S]
//
// --in: CASES.bin holds strings separated by single NUL bytes; prints one
//       line per string: its token ids separated by single spaces (an empty
//       line for an empty result), each line ending with '\n'.
// -p:   the same for one string given on the command line.
// --bench: tokenizes the whole file repeatedly for about S seconds (default
//       2) and reports the model load time, the token count, the throughput
//       in MB/s (1 MB = 10^6 bytes) and whether detokenizing gives the text back.
// Special tokens such as <|im_start|> are parsed by default; --no-special
// treats them as text (user-defined tokens such as <think> always match).
// MODEL may be a vocabulary-only GGUF.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "qwen35/qwen35.h"

namespace {

using Clock = std::chrono::steady_clock;

int usage(int code = 2) {
  // --help: the text on stdout and exit 0; a usage error: stderr and exit 2.
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: qwen35-tokenize -m MODEL (--in CASES.bin | -p TEXT | --bench FILE)\n"
               "                       [--no-special] [--add-special] [--seconds S]\n");
  return code;
}

int fail(const char* what) {
  std::fprintf(stderr, "qwen35-tokenize: %s: %s\n", what, qwen35_errmsg());
  return 1;
}

bool read_all(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

// Tokenize with the size query of qwen35_tokenize (negative = needed).
bool tokenize(const qwen35_model* m, const std::string& text, bool add_special, bool parse_special,
              std::vector<qwen35_token>* ids) {
  ids->resize(text.size() + 16);
  int32_t n = qwen35_tokenize(m, text.data(), text.size(), ids->data(), int32_t(ids->size()), add_special,
                              parse_special);
  if (n == INT32_MIN) return false;
  if (n < 0) {
    ids->resize(size_t(-n));
    n = qwen35_tokenize(m, text.data(), text.size(), ids->data(), int32_t(ids->size()), add_special, parse_special);
    if (n < 0) return false;
  }
  ids->resize(size_t(n));
  return true;
}

void append_line(const std::vector<qwen35_token>& ids, std::string* out) {
  char buf[16];
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out->push_back(' ');
    out->append(buf, size_t(std::snprintf(buf, sizeof buf, "%d", ids[i])));
  }
  out->push_back('\n');
}

int bench(const qwen35_model* m, const std::string& path, bool add_special, bool parse_special, double seconds,
          double load_ms) {
  std::string text;
  if (!read_all(path, &text)) {
    std::fprintf(stderr, "qwen35-tokenize: cannot read '%s'\n", path.c_str());
    return 1;
  }
  std::vector<qwen35_token> ids;
  if (!tokenize(m, text, add_special, parse_special, &ids)) return fail("tokenize");  // warm-up
  int reps = 0;
  double best = 1e30, total = 0;
  while (total < seconds || reps < 3) {
    const auto t0 = Clock::now();
    if (!tokenize(m, text, add_special, parse_special, &ids)) return fail("tokenize");
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::min(best, s);
    total += s;
    ++reps;
  }
  std::vector<char> back(text.size() * 2 + 64);
  const int32_t n = qwen35_detokenize(m, ids.data(), int32_t(ids.size()), back.data(), int32_t(back.size()), true);
  const bool round_trip = n >= 0 && std::string(back.data(), size_t(n)) == text;
  std::printf("model load: %.1f ms\n", load_ms);
  std::printf("text: %zu bytes, %zu tokens (%.2f bytes/token)\n", text.size(), ids.size(),
              ids.empty() ? 0.0 : double(text.size()) / double(ids.size()));
  std::printf("tokenize: %d runs, mean %.2f MB/s, best %.2f MB/s\n", reps, double(text.size()) * reps / total / 1e6,
              double(text.size()) / best / 1e6);
  std::printf("detokenize(tokenize(text)) == text: %s\n", round_trip ? "yes" : "no");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, in_path, bench_path, prompt;
  bool have_prompt = false, parse_special = true, add_special = false;
  double seconds = 2.0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "qwen35-tokenize: %s needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "-m" || a == "--model") model_path = next("-m");
    else if (a == "--in") in_path = next("--in");
    else if (a == "--bench") bench_path = next("--bench");
    else if (a == "-p" || a == "--prompt") {
      prompt = next("-p");
      have_prompt = true;
    } else if (a == "--no-special") parse_special = false;
    else if (a == "--add-special") add_special = true;
    else if (a == "--seconds") seconds = std::atof(next("--seconds"));
    else if (a == "-h" || a == "--help") return usage(0);
    else {
      std::fprintf(stderr, "qwen35-tokenize: unknown argument '%s'\n", a.c_str());
      return usage();
    }
  }
  if (model_path.empty() || int(!in_path.empty()) + int(!bench_path.empty()) + int(have_prompt) != 1) return usage();

  qwen35_model_params mp = qwen35_model_default_params();
  mp.device = QWEN35_DEVICE_CPU;  // tokenization never needs the GPU
  qwen35_model* m = nullptr;
  const auto t0 = Clock::now();
  if (qwen35_model_load(model_path.c_str(), &mp, &m) != QWEN35_OK) return fail("loading the model");
  const double load_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();

  int rc = 0;
  if (!bench_path.empty()) {
    rc = bench(m, bench_path, add_special, parse_special, seconds, load_ms);
  } else {
    std::string data = prompt;
    if (!in_path.empty() && !read_all(in_path, &data)) {
      std::fprintf(stderr, "qwen35-tokenize: cannot read '%s'\n", in_path.c_str());
      qwen35_model_free(m);
      return 1;
    }
    std::string out;
    std::vector<qwen35_token> ids;
    // Strings separated by NUL: k NULs give k + 1 strings.
    for (size_t pos = 0;;) {
      size_t end = data.find('\0', pos);
      if (end == std::string::npos || have_prompt) end = data.size();
      if (!tokenize(m, data.substr(pos, end - pos), add_special, parse_special, &ids)) {
        rc = fail("tokenize");
        break;
      }
      append_line(ids, &out);
      if (end >= data.size()) break;
      pos = end + 1;
    }
    if (rc == 0 && std::fwrite(out.data(), 1, out.size(), stdout) != out.size()) rc = 1;
  }
  qwen35_model_free(m);
  return rc;
}
