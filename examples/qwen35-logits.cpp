// qwen35-logits: evaluate token sequences and write logits in the fixture
// format (../shared/fixtures/README.md).
//
//   qwen35-logits -m MODEL --tokens FILE -o OUT [--step] [--reference] [--mtp]
//                 [-t THREADS] [--device auto|cpu|cuda]
//
// Each line of FILE is one sequence of token ids, evaluated from an empty
// state: all at once (default) or one token at a time (--step). Writes
// OUT.json, OUT.main.f32 and, with --mtp, OUT.mtp.f32.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "qwen35/qwen35.h"

static int usage(int code = 2) {
  // --help: the text on stdout and exit 0; a usage error: stderr and exit 2.
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: qwen35-logits -m MODEL --tokens FILE -o OUT [--step] [--reference] [--mtp]\n"
               "                     [-t THREADS] [--device auto|cpu|cuda]\n");
  return code;
}

static int fail(const char* what) {
  std::fprintf(stderr, "qwen35-logits: %s: %s\n", what, qwen35_errmsg());
  return 1;
}

int main(int argc, char** argv) {
  std::string model_path, tokens_path, out;
  bool step = false, reference = false, mtp = false;
  int threads = 0;
  qwen35_device device = QWEN35_DEVICE_AUTO;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "qwen35-logits: %s needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "-m" || a == "--model") model_path = next("-m");
    else if (a == "--tokens") tokens_path = next("--tokens");
    else if (a == "-o" || a == "--out") out = next("-o");
    else if (a == "--step") step = true;
    else if (a == "--reference") reference = true;
    else if (a == "--mtp") mtp = true;
    else if (a == "-t" || a == "--threads") threads = std::atoi(next("-t"));
    else if (a == "--device") {
      std::string d = next("--device");
      if (d == "cpu") device = QWEN35_DEVICE_CPU;
      else if (d == "cuda") device = QWEN35_DEVICE_CUDA;
      else if (d == "auto") device = QWEN35_DEVICE_AUTO;
      else return usage();
    } else if (a == "-h" || a == "--help") return usage(0);
    else {
      std::fprintf(stderr, "qwen35-logits: unknown argument '%s'\n", a.c_str());
      return usage();
    }
  }
  if (model_path.empty() || tokens_path.empty() || out.empty()) return usage();

  std::vector<std::vector<qwen35_token>> seqs;
  {
    std::ifstream in(tokens_path);
    if (!in) {
      std::fprintf(stderr, "qwen35-logits: cannot read '%s'\n", tokens_path.c_str());
      return 1;
    }
    // One sequence per line: decimal token ids separated by blanks.
    // Anything else (a word, an id outside int32) is an error, not a cut.
    std::string line;
    for (long line_no = 1; std::getline(in, line); ++line_no) {
      std::vector<qwen35_token> s;
      const char* p = line.c_str();
      for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r') ++p;
        if (!*p) break;
        char* end = nullptr;
        errno = 0;
        const long long t = std::strtoll(p, &end, 10);
        if (end == p || errno == ERANGE || t < INT32_MIN || t > INT32_MAX ||
            (*end && *end != ' ' && *end != '\t' && *end != '\r')) {
          std::fprintf(stderr, "qwen35-logits: %s:%ld: not a token id: '%.*s'\n", tokens_path.c_str(), line_no,
                       int(std::strcspn(p, " \t\r")), p);
          return 1;
        }
        s.push_back(qwen35_token(t));
        p = end;
      }
      if (!s.empty()) seqs.push_back(std::move(s));
    }
  }
  if (seqs.empty()) {
    std::fprintf(stderr, "qwen35-logits: no sequences in '%s'\n", tokens_path.c_str());
    return 1;
  }
  size_t max_len = 0;
  for (auto& s : seqs) max_len = std::max(max_len, s.size());

  qwen35_model_params mp = qwen35_model_default_params();
  mp.device = reference ? QWEN35_DEVICE_CPU : device;
  qwen35_model* model = nullptr;
  if (qwen35_model_load(model_path.c_str(), &mp, &model) != QWEN35_OK) return fail("loading the model");
  if (mtp && !qwen35_model_has_mtp(model)) {
    std::fprintf(stderr, "qwen35-logits: --mtp: the model has no MTP layer\n");
    return 1;
  }
  qwen35_context_params cp = qwen35_context_default_params();
  cp.n_ctx = int32_t(max_len) + 1;
  cp.reference = reference;
  cp.use_mtp = mtp;
  cp.mtp_logits = mtp;
  if (threads > 0) cp.n_threads = threads;
  qwen35_context* ctx = nullptr;
  if (qwen35_context_create(model, &cp, &ctx) != QWEN35_OK) return fail("creating the context");

  const int32_t V = qwen35_model_n_vocab(model);
  FILE* fmain = std::fopen((out + ".main.f32").c_str(), "wb");
  FILE* fmtp = mtp ? std::fopen((out + ".mtp.f32").c_str(), "wb") : nullptr;
  if (!fmain || (mtp && !fmtp)) {
    std::fprintf(stderr, "qwen35-logits: cannot write '%s.*'\n", out.c_str());
    return 1;
  }
  // Logit rows go to the .f32 files; a short write (disk full) is an error.
  bool write_ok = true;
  auto put_row = [&](const float* l, FILE* f) { write_ok = write_ok && std::fwrite(l, 4, size_t(V), f) == size_t(V); };
  std::string json = "{\"n_vocab\": " + std::to_string(V) + ", \"cases\": [";
  long row = 0, mtp_row = 0;
  for (size_t c = 0; c < seqs.size(); ++c) {
    const auto& s = seqs[c];
    qwen35_context_reset(ctx);
    json += (c ? ", " : "") + std::string("{\"row\": ") + std::to_string(row) + ", \"tokens\": [";
    for (size_t i = 0; i < s.size(); ++i) json += (i ? ", " : "") + std::to_string(s[i]);
    json += "]";
    if (mtp) json += ", \"mtp_row\": " + std::to_string(mtp_row);
    json += "}";
    const int32_t n = int32_t(s.size());
    if (!step) {
      if (qwen35_context_decode(ctx, s.data(), n, QWEN35_LOGITS_ALL) != QWEN35_OK) return fail("decode");
      for (int32_t i = 0; i < n; ++i) put_row(qwen35_context_logits(ctx, i), fmain);
      if (mtp)
        for (int32_t i = 0; i + 1 < n; ++i) {
          const float* l = qwen35_context_mtp_logits(ctx, i);
          if (!l) return fail("MTP logits missing");
          put_row(l, fmtp);
        }
    } else {
      for (int32_t i = 0; i < n; ++i) {
        if (qwen35_context_decode(ctx, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) != QWEN35_OK) return fail("decode");
        put_row(qwen35_context_logits(ctx, 0), fmain);
        // Decoding token i fills MTP row i-1 (hidden i-1 paired with token i).
        if (mtp && i >= 1) {
          const float* l = qwen35_context_mtp_logits(ctx, i - 1);
          if (!l) return fail("MTP logits missing");
          put_row(l, fmtp);
        }
      }
    }
    row += n;
    mtp_row += n - 1;
  }
  json += "]}";
  write_ok = std::fclose(fmain) == 0 && write_ok;
  if (fmtp) write_ok = std::fclose(fmtp) == 0 && write_ok;
  if (!write_ok) {
    std::fprintf(stderr, "qwen35-logits: cannot write '%s.*.f32'\n", out.c_str());
    return 1;
  }
  FILE* fj = std::fopen((out + ".json").c_str(), "wb");
  if (!fj || std::fwrite(json.data(), 1, json.size(), fj) != json.size()) {
    std::fprintf(stderr, "qwen35-logits: cannot write '%s.json'\n", out.c_str());
    return 1;
  }
  if (std::fclose(fj) != 0) {
    std::fprintf(stderr, "qwen35-logits: cannot write '%s.json'\n", out.c_str());
    return 1;
  }
  qwen35_context_free(ctx);
  qwen35_model_free(model);
  return 0;
}
