// qwen35-embed-image: encode one image with a vision projector and write the
// embeddings in the format of the vision fixtures.
//
//   qwen35-embed-image --mmproj FILE --image FILE -o OUT [--profile lc|ref]
//                      [-t N] [--time] [--image-min-tokens N] [--image-max-tokens N]
//                      [--reference]
//   qwen35-embed-image --synth-mmproj OUT.gguf [--synth-preset 4b|tiny] [--seed N]
//
// Writes OUT.f32 (n_tokens x n_embd float32, little-endian, row-major, row m
// = merged cell (m / nx, m % nx)) and OUT.json (n_tokens, n_embd, nx, ny,
// preprocessed width/height and the fixture keys).
//
// --profile lc (the default here) reproduces llama.cpp, whose outputs the
// fixtures' expected files are; --profile ref is the transformers behaviour
// (the library's default). --time prints the encode time to stderr.
// --synth-mmproj writes a random projector of the real Qwen3.5-4B shapes
// (or the fixture's with --synth-preset tiny) for timing.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "threadpool.h"
#include "vision/synth_mmproj.h"
#include "vision/vision.h"

using namespace qwen35;
using namespace qwen35::vision;

static int usage(int code = 2) {
  // --help: the text on stdout and exit 0; a usage error: stderr and exit 2.
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: qwen35-embed-image --mmproj FILE --image FILE -o OUT [--profile lc|ref] [-t N] [--time]\n"
               "                          [--image-min-tokens N] [--image-max-tokens N] [--reference]\n"
               "       qwen35-embed-image --synth-mmproj OUT.gguf [--synth-preset 4b|tiny] [--seed N]\n");
  return code;
}

static std::string base_name(const std::string& p) {
  const size_t k = p.find_last_of('/');
  return k == std::string::npos ? p : p.substr(k + 1);
}

static std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    o += c;
  }
  return o;
}

static bool write_outputs(const std::string& out, const std::string& mmproj, const std::string& image,
                          const Mmproj& mp, const ImageEmbed& e, const VisionOptions& vo, bool lc) {
  const std::string f32 = out + ".f32", js = out + ".json";
  FILE* f = std::fopen(f32.c_str(), "wb");
  if (!f) {
    std::fprintf(stderr, "qwen35-embed-image: cannot create '%s': %s\n", f32.c_str(), std::strerror(errno));
    return false;
  }
  const bool ok = std::fwrite(e.data.data(), sizeof(float), e.data.size(), f) == e.data.size();
  if (std::fclose(f) != 0 || !ok) {
    std::fprintf(stderr, "qwen35-embed-image: write error on '%s'\n", f32.c_str());
    return false;
  }
  const int32_t G = mp.hp.pos_grid, gw = e.width / mp.hp.patch, gh = e.height / mp.hp.patch;
  const bool resampled = e.width != e.src_width || e.height != e.src_height;
  f = std::fopen(js.c_str(), "wb");
  if (!f) {
    std::fprintf(stderr, "qwen35-embed-image: cannot create '%s': %s\n", js.c_str(), std::strerror(errno));
    return false;
  }
  std::fprintf(f,
               "{\n"
               " \"mmproj\": \"%s\",\n"
               " \"image\": \"%s\",\n"
               " \"image_size\": [%d, %d],\n"
               " \"preprocessed_size\": [%d, %d],\n"
               " \"width\": %d,\n"
               " \"height\": %d,\n"
               " \"pixels_resampled\": %s,\n"
               " \"n_tokens\": %d,\n"
               " \"n_embd\": %d,\n"
               " \"nx\": %d,\n"
               " \"ny\": %d,\n"
               " \"grid\": {\"nx\": %d, \"ny\": %d},\n"
               " \"patch_grid\": {\"nx\": %d, \"ny\": %d},\n"
               " \"position_table_grid\": {\"nx\": %d, \"ny\": %d},\n"
               " \"position_resampling_involved\": %s,\n"
               " \"n_pos\": %d,\n"
               " \"token_order\": \"row-major over the merged grid: token m = (row m // grid.nx, col m %% grid.nx)\",\n"
               " \"profile\": \"%s\",\n"
               " \"position_resampling\": \"%s\",\n"
               " \"merger_activation\": \"%s\",\n"
               " \"file\": \"%s\"\n"
               "}\n",
               json_escape(base_name(mmproj)).c_str(), json_escape(base_name(image)).c_str(), e.src_width,
               e.src_height, e.width, e.height, e.width, e.height, resampled ? "true" : "false", e.n_tokens(),
               e.n_embd, e.nx, e.ny, e.nx, e.ny, gw, gh, G, G, (gw != G || gh != G) ? "true" : "false", e.n_pos(),
               lc ? "LC" : "REF",
               vo.pos_interp == PosInterp::AlignCorners ? "align-corners bilinear"
                                                        : "half-pixel bilinear with antialiasing",
               vo.merger_act == MergerAct::GeluErf ? "gelu_erf" : "gelu_tanh", json_escape(base_name(f32)).c_str());
  if (std::fclose(f) != 0) {
    std::fprintf(stderr, "qwen35-embed-image: write error on '%s'\n", js.c_str());
    return false;
  }
  return true;
}

int main(int argc, char** argv) {
  std::string mmproj, image, out, profile = "lc", synth_out, synth_preset = "4b";
  int n_threads = 0, min_tokens = 0, max_tokens = 0;
  uint64_t seed = 1;
  bool time_it = false, reference = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "qwen35-embed-image: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--mmproj") mmproj = val();
    else if (a == "--image") image = val();
    else if (a == "-o") out = val();
    else if (a == "--profile") profile = val();
    else if (a == "-t") n_threads = std::atoi(val());
    else if (a == "--time") time_it = true;
    else if (a == "--image-min-tokens") min_tokens = std::atoi(val());
    else if (a == "--image-max-tokens") max_tokens = std::atoi(val());
    else if (a == "--reference") reference = true;
    else if (a == "--synth-mmproj") synth_out = val();
    else if (a == "--synth-preset") synth_preset = val();
    else if (a == "--seed") seed = std::strtoull(val(), nullptr, 10);
    else if (a == "-h" || a == "--help") return usage(0);
    else {
      std::fprintf(stderr, "qwen35-embed-image: unknown argument '%s'\n", a.c_str());
      return usage();
    }
  }

  if (!synth_out.empty()) {
    SynthMmprojConfig cfg;
    Status st = SynthMmprojPreset(synth_preset, &cfg);
    cfg.seed = seed;
    if (st.ok()) st = WriteSynthMmproj(cfg, synth_out);
    if (!st.ok()) {
      std::fprintf(stderr, "qwen35-embed-image: %s\n", st.message().c_str());
      return 1;
    }
    return 0;
  }
  if (mmproj.empty() || image.empty() || out.empty()) return usage();
  if (profile != "lc" && profile != "ref") {
    std::fprintf(stderr, "qwen35-embed-image: --profile must be lc or ref\n");
    return 2;
  }
  if (n_threads < 0 || n_threads > 256 || min_tokens < 0 || max_tokens < 0) {
    std::fprintf(stderr, "qwen35-embed-image: bad -t or token bound\n");
    return 2;
  }
  const bool lc = profile == "lc";
  VisionOptions vo = VisionOptions::ForProfile(lc ? Profile::LlamaCpp : Profile::Ref);
  vo.pre.min_tokens = min_tokens;
  vo.pre.max_tokens = max_tokens;
  vo.reference = reference;

  std::unique_ptr<Mmproj> mp;
  Status st = LoadMmproj(mmproj, true, Logger{}, &mp);
  Image img;
  if (st.ok()) st = ImageFromFile(image, &img);
  ImageEmbed e;
  double secs = 0;
  if (st.ok()) {
    ThreadPool tp(n_threads > 0 ? n_threads : ThreadPool::default_threads());
    const auto t0 = std::chrono::steady_clock::now();
    st = EncodeImage(*mp, img, vo, tp, &e);
    secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (time_it)
      std::fprintf(stderr, "encode: %dx%d -> %dx%d, %d tokens, %.3f s (%d threads)\n", img.width, img.height, e.width,
                   e.height, e.n_tokens(), secs, tp.size());
  }
  if (!st.ok()) {
    std::fprintf(stderr, "qwen35-embed-image: %s\n", st.message().c_str());
    return 1;
  }
  return write_outputs(out, mmproj, image, *mp, e, vo, lc) ? 0 : 1;
}
