// qwen35-synth: write a random-weight qwen35 GGUF of any shape.
//
//   qwen35-synth -o FILE [--preset 4b|tiny] [--seed N] [--no-mtp] [dims...]
//
// dims: --n-vocab N --n-embd N --n-layer N --n-ff N --n-head N --n-head-kv N
//       --head-dim N --n-rot N --ssm-state N --ssm-heads-k N --ssm-heads-v N
//       --ssm-dv N --ssm-conv N --attn-interval N --ctx N --sections T,H,W,E
// types: --type T (matrices) --embd-type T --untied [--output-type T] --mixed
//        (T one of F32 F16 BF16 Q8_0 Q4_K Q6_K NVFP4 MXFP4)
// other: --mtp-mirror (MTP reproduces the trunk: 100% greedy acceptance)
//        --vocab-from GGUF (copy that file's tokenizer, padded to --n-vocab)
//        -t THREADS
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ggml_types.h"
#include "synth.h"

using namespace qwen35;

static int usage(int code = 2) {
  // --help: the text on stdout and exit 0; a usage error: stderr and exit 2.
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: qwen35-synth -o FILE [--preset 4b|tiny] [--seed N] [--no-mtp] [dims...]\n"
               "  dims:  --n-vocab --n-embd --n-layer --n-ff --n-head --n-head-kv --head-dim --n-rot\n"
               "         --ssm-state --ssm-heads-k --ssm-heads-v --ssm-dv --ssm-conv --attn-interval --ctx\n"
               "         --sections T,H,W,E (M-RoPE pairs; default 11,11,10,0 scaled to --n-rot)\n"
               "  types: --type T --embd-type T --untied --output-type T --mixed\n"
               "         (T: F32 F16 BF16 Q8_0 Q4_K Q6_K NVFP4 MXFP4)\n"
               "  other: --mtp-mirror --vocab-from GGUF -t THREADS\n");
  return code;
}

static bool parse_type(const char* s, uint32_t* t) {
  for (uint32_t i = 0; i < GGML_TYPE_COUNT; ++i) {
    const TypeInfo* ti = type_info(i);
    if (ti && ti->compute && std::strcmp(ti->name, s) == 0) {
      *t = i;
      return true;
    }
  }
  return false;
}

int main(int argc, char** argv) {
  SynthConfig cfg;
  std::string out, preset = "tiny";
  // The preset is applied first, then the other flags override it.
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--preset") == 0) preset = argv[i + 1];
  Status st = SynthPreset(preset, &cfg);
  if (!st.ok()) {
    std::fprintf(stderr, "qwen35-synth: %s\n", st.message().c_str());
    return 2;
  }
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "qwen35-synth: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    auto num = [&]() -> int32_t {
      const char* v = val();
      char* end = nullptr;
      long x = std::strtol(v, &end, 10);
      if (!*v || *end || x < 0 || x > (1L << 30)) {
        std::fprintf(stderr, "qwen35-synth: %s: bad number '%s'\n", a.c_str(), v);
        std::exit(2);
      }
      return int32_t(x);
    };
    auto type = [&](uint32_t* t) {
      const char* v = val();
      if (!parse_type(v, t)) {
        std::fprintf(stderr, "qwen35-synth: %s: unknown type '%s'\n", a.c_str(), v);
        std::exit(2);
      }
    };
    if (a == "-o") out = val();
    else if (a == "--preset") val();
    else if (a == "--seed") cfg.seed = std::strtoull(val(), nullptr, 10);
    else if (a == "--no-mtp") cfg.n_mtp = 0;
    else if (a == "--n-vocab") cfg.n_vocab = num();
    else if (a == "--n-embd") cfg.n_embd = num();
    else if (a == "--n-layer") cfg.n_layer = num();
    else if (a == "--n-ff") cfg.n_ff = num();
    else if (a == "--n-head") cfg.n_head = num();
    else if (a == "--n-head-kv") cfg.n_head_kv = num();
    else if (a == "--head-dim") cfg.head_dim = num();
    else if (a == "--n-rot") cfg.n_rot = num();
    else if (a == "--ssm-state") cfg.ssm_state = num();
    else if (a == "--ssm-heads-k") cfg.ssm_heads_k = num();
    else if (a == "--ssm-heads-v") cfg.ssm_heads_v = num();
    else if (a == "--ssm-dv") cfg.ssm_dv = num();
    else if (a == "--ssm-conv") cfg.ssm_conv = num();
    else if (a == "--attn-interval") cfg.full_attn_interval = num();
    else if (a == "--ctx") cfg.n_ctx_train = num();
    else if (a == "--sections") {
      // Comma-separated M-RoPE sections, e.g. 11,11,10,0.
      cfg.sections.clear();
      std::string v = val();
      for (size_t p = 0; p <= v.size();) {
        size_t q = v.find(',', p);
        if (q == std::string::npos) q = v.size();
        cfg.sections.push_back(std::atoi(v.substr(p, q - p).c_str()));
        p = q + 1;
      }
    }
    else if (a == "--type") type(&cfg.matrix_type);
    else if (a == "--embd-type") type(&cfg.embd_type);
    else if (a == "--output-type") type(&cfg.output_type);
    else if (a == "--untied") cfg.untied = true;
    else if (a == "--mixed") cfg.mixed = true;
    else if (a == "--mtp-mirror") cfg.mtp_mirror = true;
    else if (a == "--vocab-from") cfg.vocab_from = val();
    else if (a == "-t") cfg.n_threads = num();
    else if (a == "-h" || a == "--help") return usage(0);
    else {
      std::fprintf(stderr, "qwen35-synth: unknown argument '%s'\n", a.c_str());
      return usage();
    }
  }
  if (out.empty()) return usage();
  if (cfg.mtp_mirror && cfg.n_mtp == 0) {
    std::fprintf(stderr, "qwen35-synth: --mtp-mirror needs the MTP layer (drop --no-mtp)\n");
    return 2;
  }
  st = WriteSynthModel(cfg, out);
  if (!st.ok()) {
    std::fprintf(stderr, "qwen35-synth: %s\n", st.message().c_str());
    return 1;
  }
  return 0;
}
