// qwen35-cli: chat with a qwen35 model from the terminal (in the spirit of
// llama-cli). With no -m it generates a small random demo model first, so
// the command always runs (the demo's replies are gibberish by design).
//
//   qwen35-cli [-m MODEL] [-p PROMPT] [-i] [options]   (see --help)
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "qwen35/qwen35.h"
#include "synth.h"

namespace {

const char* kUsage =
    "usage: qwen35-cli [-m MODEL] [-p PROMPT] [-i] [options]\n"
    "\n"
    "  -m, --model FILE        qwen35 GGUF model (default: a generated demo model)\n"
    "  -p, --prompt TEXT       user message (or plain text with --raw)\n"
    "  -i, --interactive       multi-turn chat on stdin (history kept; /reset, /exit)\n"
    "  -n, --n-predict N       max tokens to generate (default -1: until the end of turn)\n"
    "  -c, --ctx-size N        context size (default 4096)\n"
    "  -t, --threads N         CPU threads (default: physical cores)\n"
    "      --temp X            temperature (default: Qwen3.5 recommendation for the mode)\n"
    "      --top-k N           top-k (default 20)\n"
    "      --top-p X           top-p (default 0.95 thinking / 0.8 non-thinking)\n"
    "      --min-p X           min-p (default 0)\n"
    "      --repeat-penalty X  repetition penalty (default 1.0 = off)\n"
    "      --presence-penalty X presence penalty (default 1.5)\n"
    "  -s, --seed N            RNG seed\n"
    "      --system TEXT       system message\n"
    "      --no-think          disable thinking (enable_thinking = false)\n"
    "      --raw               no chat template: continue the prompt text as is\n"
    "      --stop TEXT         stop string (repeatable)\n"
    "      --device D          auto | cpu | cuda (default auto)\n"
    "  -ngl, --n-gpu-layers N  llama.cpp compatibility: 0 = CPU, otherwise GPU\n"
    "      --mtp on|off        MTP speculative decoding (default on when the model has it)\n"
    "      --mmproj FILE       vision projector GGUF\n"
    "      --image FILE        image for the (first) user message (repeatable; needs --mmproj)\n"
    "      --vision-profile P  ref | lc: vision preprocessing and encoder like transformers (ref, default)\n"
    "                          or llama.cpp (lc): token bounds, resize, position table, merger GELU\n"
    "      --image-min-tokens N fewest tokens an image is resized to (default ref 64, lc 8)\n"
    "      --image-max-tokens N most tokens an image is resized to (default ref 16384, lc 4096)\n"
    "      --timings           print prompt/generation speed and MTP stats to stderr\n"
    "  -v, --verbose           library log messages to stderr\n"
    "  -h, --help              this help\n";

struct Args {
  std::string model, prompt, system, mmproj;
  std::vector<std::string> images, stops;
  bool interactive = false, no_think = false, raw = false, timings = false, verbose = false;
  int n_predict = -1, ctx = 4096, threads = 0;
  bool has_temp = false, has_top_p = false;
  float temp = 0, top_p = 0, min_p = 0, repeat_penalty = 1.0f, presence_penalty = 1.5f;
  int top_k = 20;
  bool has_seed = false;
  uint64_t seed = 0;
  qwen35_device device = QWEN35_DEVICE_AUTO;
  int ngl = -1;
  int mtp = -1;
  bool vision_lc = false;                          // --vision-profile lc
  int image_min_tokens = 0, image_max_tokens = 0;  // 0: the profile's default
};

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "qwen35-cli: %s\n", msg.c_str());
  std::exit(1);
}

bool parse_args(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) die(s + " needs a value (see --help)");
      return argv[++i];
    };
    auto num = [&]() -> long {
      const std::string v = val();
      char* end = nullptr;
      errno = 0;
      long x = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || errno) die(s + ": '" + v + "' is not an integer");
      return x;
    };
    auto real = [&]() -> float {
      const std::string v = val();
      char* end = nullptr;
      float x = std::strtof(v.c_str(), &end);
      if (v.empty() || *end) die(s + ": '" + v + "' is not a number");
      return x;
    };
    if (s == "-m" || s == "--model") a->model = val();
    else if (s == "-p" || s == "--prompt") a->prompt = val();
    else if (s == "-i" || s == "--interactive") a->interactive = true;
    else if (s == "-n" || s == "--n-predict") a->n_predict = int(num());
    else if (s == "-c" || s == "--ctx-size") a->ctx = int(num());
    else if (s == "-t" || s == "--threads") a->threads = int(num());
    else if (s == "--temp") { a->temp = real(); a->has_temp = true; }
    else if (s == "--top-k") a->top_k = int(num());
    else if (s == "--top-p") { a->top_p = real(); a->has_top_p = true; }
    else if (s == "--min-p") a->min_p = real();
    else if (s == "--repeat-penalty") a->repeat_penalty = real();
    else if (s == "--presence-penalty") a->presence_penalty = real();
    else if (s == "-s" || s == "--seed") { a->seed = uint64_t(num()); a->has_seed = true; }
    else if (s == "--system") a->system = val();
    else if (s == "--no-think") a->no_think = true;
    else if (s == "--raw") a->raw = true;
    else if (s == "--stop") a->stops.push_back(val());
    else if (s == "--device") {
      const std::string d = val();
      if (d == "auto") a->device = QWEN35_DEVICE_AUTO;
      else if (d == "cpu") a->device = QWEN35_DEVICE_CPU;
      else if (d == "cuda" || d == "gpu") a->device = QWEN35_DEVICE_CUDA;
      else die("--device must be auto, cpu or cuda");
    } else if (s == "-ngl" || s == "--n-gpu-layers" || s == "--gpu-layers") a->ngl = int(num());
    else if (s == "--mtp") {
      const std::string v = val();
      if (v == "on") a->mtp = 1;
      else if (v == "off") a->mtp = 0;
      else die("--mtp must be on or off");
    } else if (s == "--mmproj") a->mmproj = val();
    else if (s == "--image") a->images.push_back(val());
    else if (s == "--vision-profile") {
      const std::string v = val();
      if (v == "lc") a->vision_lc = true;
      else if (v == "ref") a->vision_lc = false;
      else die("--vision-profile must be lc or ref");
    } else if (s == "--image-min-tokens") a->image_min_tokens = int(num());
    else if (s == "--image-max-tokens") a->image_max_tokens = int(num());
    else if (s == "--timings") a->timings = true;
    else if (s == "-v" || s == "--verbose") a->verbose = true;
    else if (s == "-h" || s == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else die("unknown argument '" + s + "' (see --help)");
  }
  if (a->ctx < 0) die("--ctx-size must be >= 0");
  if (a->threads < 0) die("--threads must be >= 0");
  if (a->image_min_tokens < 0 || a->image_max_tokens < 0) die("--image-min-tokens/--image-max-tokens must be >= 0");
  if (!a->images.empty() && a->mmproj.empty()) die("--image needs --mmproj");
  if (a->raw && a->prompt.empty()) die("--raw needs -p");
  return true;
}

// The demo model lives in the user's cache directory and is made once.
std::string demo_model_path() {
  std::string dir;
  const char* x = std::getenv("XDG_CACHE_HOME");
  const char* h = std::getenv("HOME");
  if (x && *x) dir = x;
  else if (h && *h) dir = std::string(h) + "/.cache";
  else dir = "/tmp";
  dir += "/qwen35";
  // mkdir -p
  for (size_t i = 1; i <= dir.size(); ++i)
    if (i == dir.size() || dir[i] == '/') ::mkdir(dir.substr(0, i).c_str(), 0755);
  const std::string path = dir + "/qwen35-demo.gguf";
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return path;
  std::fprintf(stderr, "qwen35-cli: no model given; writing a small random demo model to %s\n", path.c_str());
  qwen35::SynthConfig cfg;
  qwen35::Status s = qwen35::SynthPreset("tiny", &cfg);
  cfg.n_vocab = 512;
  cfg.n_embd = 256;
  cfg.n_layer = 4;
  cfg.seed = 35;
  const std::string part = path + ".part";
  s = qwen35::WriteSynthModel(cfg, part);
  if (!s.ok()) die("cannot write the demo model: " + s.message());
  if (std::rename(part.c_str(), path.c_str()) != 0) die("cannot write the demo model to " + path);
  return path;
}

void log_cb(qwen35_log_level level, const char* msg, void*) {
  static const char* names[] = {"error", "warn", "info", "debug"};
  std::fprintf(stderr, "[qwen35 %s] %s\n", names[level], msg);
}

bool print_piece(qwen35_token, const char* piece, size_t len, void*) {
  std::fwrite(piece, 1, len, stdout);
  std::fflush(stdout);
  return true;
}

struct Session {
  Args args;
  qwen35_model* model = nullptr;
  qwen35_context* ctx = nullptr;
  qwen35_sampler* sampler = nullptr;
  qwen35_mmproj* mmproj = nullptr;
  std::vector<qwen35_image_embed*> images;
  // Conversation history (owned strings).
  std::vector<std::pair<std::string, std::string>> history;  // role, content

  void print_timings(const qwen35_generate_stats& st) const {
    if (!args.timings) return;
    std::fprintf(stderr,
                 "\n[timings] prompt %d tokens, %.1f ms (%.2f tok/s) | generated %d tokens, %.1f ms (%.2f tok/s)",
                 st.n_prompt, st.t_prompt_ms, st.prompt_tokens_per_s, st.n_generated, st.t_generate_ms,
                 st.generate_tokens_per_s);
    if (st.n_drafted > 0)
      std::fprintf(stderr, " | MTP drafted %d accepted %d (%.1f%%), %.2f tokens per main pass", st.n_drafted,
                   st.n_accepted, 100.0 * st.n_accepted / st.n_drafted,
                   st.n_main_passes ? double(st.n_generated) / st.n_main_passes : 0.0);
    std::fprintf(stderr, " | context %d/%d tokens\n", qwen35_context_n_past(ctx), qwen35_context_n_ctx(ctx));
  }

  qwen35_generate_params gen_params(std::vector<const char*>* stops) const {
    qwen35_generate_params gp = qwen35_generate_default_params();
    gp.max_tokens = args.n_predict;
    gp.use_mtp = args.mtp;
    gp.on_token = print_piece;
    for (const auto& s : args.stops) stops->push_back(s.c_str());
    gp.stop = stops->data();
    gp.n_stop = stops->size();
    return gp;
  }

  // One chat turn: render the whole history, reuse the cached prefix, stream the reply.
  bool chat_turn(const std::string& user) {
    history.push_back({"user", user});
    std::vector<qwen35_chat_message> msgs;
    std::vector<qwen35_content_part> parts;
    bool first_user = true;
    for (const auto& [role, content] : history) {
      qwen35_chat_message m;
      std::memset(&m, 0, sizeof m);
      m.role = role.c_str();
      m.content = content.c_str();
      if (role == "user" && first_user && !images.empty()) {
        // Images go in front of the first user message's text.
        parts.clear();
        for (qwen35_image_embed* e : images) parts.push_back({QWEN35_PART_IMAGE, nullptr, e});
        parts.push_back({QWEN35_PART_TEXT, content.c_str(), nullptr});
        m.parts = parts.data();
        m.n_parts = parts.size();
      }
      if (role == "user") first_user = false;
      msgs.push_back(m);
    }
    qwen35_chat_params cp = qwen35_chat_default_params();
    cp.enable_thinking = args.no_think ? 0 : -1;
    std::vector<const char*> stops;
    qwen35_generate_params gp = gen_params(&stops);
    std::string reply;
    struct Cap {
      std::string* reply;
    } cap{&reply};
    gp.on_token = [](qwen35_token, const char* piece, size_t len, void* ud) {
      static_cast<Cap*>(ud)->reply->append(piece, len);
      std::fwrite(piece, 1, len, stdout);
      std::fflush(stdout);
      return true;
    };
    gp.user_data = &cap;
    qwen35_generate_stats st;
    qwen35_status s = qwen35_chat_generate(ctx, sampler, msgs.data(), msgs.size(), &cp, &gp, &st);
    std::printf("\n");
    if (s != QWEN35_OK) {
      std::fprintf(stderr, "qwen35-cli: %s\n", qwen35_context_errmsg(ctx));
      history.pop_back();
      return false;
    }
    // The template drops earlier turns' reasoning; keep only the answer.
    qwen35_chat_reply parsed;
    if (qwen35_chat_parse(reply.data(), reply.size(), !args.no_think, false, &parsed) == QWEN35_OK) {
      history.push_back({"assistant", parsed.content ? parsed.content : ""});
      qwen35_chat_reply_free(&parsed);
    } else {
      history.push_back({"assistant", reply});
    }
    print_timings(st);
    if (st.stop_reason == QWEN35_STOP_CONTEXT_FULL) std::fprintf(stderr, "qwen35-cli: the context is full\n");
    return true;
  }

  bool raw_completion() {
    std::vector<qwen35_token> toks(args.prompt.size() + 16);
    int32_t n = qwen35_tokenize(model, args.prompt.data(), args.prompt.size(), toks.data(), int32_t(toks.size()), true,
                                false);
    if (n < 0) die(std::string("tokenize: ") + qwen35_errmsg());
    toks.resize(size_t(n));
    std::fwrite(args.prompt.data(), 1, args.prompt.size(), stdout);
    std::vector<const char*> stops;
    qwen35_generate_params gp = gen_params(&stops);
    qwen35_generate_stats st;
    if (qwen35_generate(ctx, sampler, toks.data(), n, &gp, &st) != QWEN35_OK) {
      std::fprintf(stderr, "\nqwen35-cli: %s\n", qwen35_context_errmsg(ctx));
      return false;
    }
    std::printf("\n");
    print_timings(st);
    return true;
  }
};

}  // namespace

int main(int argc, char** argv) {
  Session s;
  parse_args(argc, argv, &s.args);
  Args& a = s.args;
  if (a.model.empty()) a.model = demo_model_path();

  qwen35_model_params mp = qwen35_model_default_params();
  mp.device = a.device;
  mp.n_gpu_layers = a.ngl;
  if (a.verbose) {
    mp.log_callback = log_cb;
    qwen35_log_set(log_cb, nullptr);
  }
  if (qwen35_model_load(a.model.c_str(), &mp, &s.model) != QWEN35_OK) die(qwen35_errmsg());
  if (a.verbose)
    std::fprintf(stderr, "qwen35-cli: %s on %s\n", qwen35_model_desc(s.model),
                 qwen35_model_device(s.model) == QWEN35_DEVICE_CUDA ? "CUDA" : "CPU");
  if (a.mtp == 1 && !qwen35_model_has_mtp(s.model)) die("--mtp on: the model has no MTP layer");

  qwen35_context_params cp = qwen35_context_default_params();
  cp.n_ctx = a.ctx;
  if (a.threads > 0) cp.n_threads = a.threads;
  cp.use_mtp = a.mtp != 0;
  if (qwen35_context_create(s.model, &cp, &s.ctx) != QWEN35_OK) die(qwen35_errmsg());

  qwen35_sampler_params sp = qwen35_sampler_default_params(!a.no_think);
  if (a.has_temp) sp.temperature = a.temp;
  if (a.has_top_p) sp.top_p = a.top_p;
  sp.top_k = a.top_k;
  sp.min_p = a.min_p;
  sp.repeat_penalty = a.repeat_penalty;
  sp.presence_penalty = a.presence_penalty;
  if (a.has_seed) sp.seed = a.seed;
  if (qwen35_sampler_create(s.model, &sp, &s.sampler) != QWEN35_OK) die(qwen35_errmsg());

  if (!a.mmproj.empty()) {
    qwen35_mmproj_params vp = qwen35_mmproj_default_params();
    vp.llamacpp_compat = a.vision_lc;
    vp.image_min_tokens = a.image_min_tokens;
    vp.image_max_tokens = a.image_max_tokens;
    if (a.threads > 0) vp.n_threads = a.threads;
    if (qwen35_mmproj_load(a.mmproj.c_str(), s.model, &vp, &s.mmproj) != QWEN35_OK) die(qwen35_errmsg());
    for (const auto& path : a.images) {
      qwen35_image* img = nullptr;
      if (qwen35_image_load_file(path.c_str(), &img) != QWEN35_OK) die(qwen35_errmsg());
      qwen35_image_embed* e = nullptr;
      qwen35_status st = qwen35_image_encode(s.mmproj, img, &e);
      qwen35_image_free(img);
      if (st != QWEN35_OK) die(qwen35_errmsg());
      s.images.push_back(e);
    }
  }
  if (!a.system.empty()) s.history.push_back({"system", a.system});

  bool ok = true;
  if (a.raw) {
    ok = s.raw_completion();
  } else {
    if (!a.prompt.empty()) ok = s.chat_turn(a.prompt);
    if (a.interactive) {
      std::string line;
      while (true) {
        std::printf("\n> ");
        std::fflush(stdout);
        if (!std::getline(std::cin, line)) break;
        if (line == "/exit" || line == "/quit") break;
        if (line == "/reset") {
          s.history.clear();
          if (!a.system.empty()) s.history.push_back({"system", a.system});
          qwen35_context_reset(s.ctx);
          continue;
        }
        if (line.empty()) continue;
        s.chat_turn(line);
      }
    } else if (a.prompt.empty()) {
      ok = s.chat_turn("Hello! Who are you?");
    }
  }
  for (qwen35_image_embed* e : s.images) qwen35_image_embed_free(e);
  qwen35_mmproj_free(s.mmproj);
  qwen35_sampler_free(s.sampler);
  qwen35_context_free(s.ctx);
  qwen35_model_free(s.model);
  return ok ? 0 : 1;
}
