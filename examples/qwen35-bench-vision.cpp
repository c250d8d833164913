// qwen35-bench-vision: time the vision encoder on the CPU or a CUDA GPU.
//
//   qwen35-bench-vision [--mmproj FILE] [--synth-path FILE] [--width 640 --height 480]
//                       [-t N] [--reps 3] [--profile lc|ref] [--kernel avx512|avx2|generic]
//                       [--device cpu|cuda] [--check]
//
// --device cuda runs the CUDA encoder (weights uploaded once, before the
// timed runs; the first run includes the scratch allocation). --check also
// encodes the image once with the CPU encoder and prints the largest
// per-token relative L2 difference of the two.
// Without --mmproj a random projector of the real Qwen3.5-4B shapes (C 1024,
// 24 blocks, 16 heads, FF 4096, 48x48 table, output 2560; F16 like the real
// file) is written to --synth-path (default /tmp/qwen35-bench-4b.mmproj.gguf,
// about 672 MB) and used. The image is synthetic (smooth colour waves).
// Prints the time of each encode (preprocessing included), the best time and
// the achieved GFLOP/s of the encoder's matrix products and attention.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "threadpool.h"
#include "vision/device_encoder.h"
#include "vision/kernels.h"
#include "vision/synth_mmproj.h"
#include "vision/vision.h"

using namespace qwen35;
using namespace qwen35::vision;

static int usage(int code = 2) {
  // --help: the text on stdout and exit 0; a usage error: stderr and exit 2.
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: qwen35-bench-vision [--mmproj FILE] [--synth-path FILE] [--width W --height H] [-t N]\n"
               "                           [--reps N] [--profile lc|ref] [--kernel avx512|avx2|generic]\n"
               "                           [--device cpu|cuda] [--check]\n");
  return code;
}

// Multiply-adds x 2 of the encoder for a gh x gw patch grid (spec §6.1).
static double encoder_flops(const VisionHParams& hp, int64_t gw, int64_t gh) {
  const double np = double(gw * gh), n = np / 4, C = hp.n_embd, FF = hp.n_ff;
  const double block = 2 * np * C * (3 * C + C + 2 * FF) + 4 * np * np * C;
  return 2 * np * hp.patch_dim() * C + hp.n_block * block + 2 * n * 4 * C * 4 * C + 2 * n * 4 * C * hp.proj_dim;
}

int main(int argc, char** argv) {
  std::string mmproj, synth_path = "/tmp/qwen35-bench-4b.mmproj.gguf", profile = "lc", kernel, device = "cpu";
  int width = 640, height = 480, n_threads = 0, reps = 3;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "qwen35-bench-vision: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--mmproj") mmproj = val();
    else if (a == "--synth-path") synth_path = val();
    else if (a == "--width") width = std::atoi(val());
    else if (a == "--height") height = std::atoi(val());
    else if (a == "-t") n_threads = std::atoi(val());
    else if (a == "--reps") reps = std::max(1, std::atoi(val()));
    else if (a == "--profile") profile = val();
    else if (a == "--kernel") kernel = val();
    else if (a == "--device") device = val();
    else if (a == "--check") check = true;
    else if (a == "-h" || a == "--help") return usage(0);
    else {
      std::fprintf(stderr, "qwen35-bench-vision: unknown argument '%s'\n", a.c_str());
      return usage();
    }
  }
  if (device != "cpu" && device != "cuda") return usage();
  if (!kernel.empty() && !select_gemm_kernel(kernel)) {
    std::fprintf(stderr, "qwen35-bench-vision: this CPU cannot run the '%s' kernel\n", kernel.c_str());
    return 2;
  }
  if (mmproj.empty()) {
    SynthMmprojConfig cfg;
    Status st = SynthMmprojPreset("4b", &cfg);
    if (st.ok()) st = WriteSynthMmproj(cfg, synth_path);
    if (!st.ok()) {
      std::fprintf(stderr, "qwen35-bench-vision: %s\n", st.message().c_str());
      return 1;
    }
    mmproj = synth_path;
  }
  std::unique_ptr<Mmproj> mp;
  Status st = LoadMmproj(mmproj, true, Logger{}, &mp);
  if (!st.ok()) {
    std::fprintf(stderr, "qwen35-bench-vision: %s\n", st.message().c_str());
    return 1;
  }
  Image img;
  std::vector<uint8_t> px(size_t(width) * size_t(height) * 3);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c)
        px[(size_t(y) * width + x) * 3 + c] = uint8_t(127.5 + 127.5 * std::sin(0.05 * x * (c + 1) + 0.07 * y));
  st = ImageFromPixels(px.data(), width, height, 3, 0, &img);
  if (!st.ok()) {
    std::fprintf(stderr, "qwen35-bench-vision: %s\n", st.message().c_str());
    return 1;
  }
  const VisionOptions vo = VisionOptions::ForProfile(profile == "ref" ? Profile::Ref : Profile::LlamaCpp);
  ThreadPool tp(n_threads > 0 ? n_threads : ThreadPool::default_threads());
  std::printf("mmproj: %s\n", mp->desc.c_str());
  if (device == "cuda") {
    const auto t0 = std::chrono::steady_clock::now();
    st = CreateCudaVisionEncoder(*mp, nullptr, &mp->device);
    if (!st.ok()) {
      std::fprintf(stderr, "qwen35-bench-vision: %s\n", st.message().c_str());
      return 1;
    }
    std::printf("%s; upload %.3f s\n", mp->device->describe().c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("host bytes allocated for weights: %.1f MiB (matrices stay in the mapped file)\n",
              double(mp->host_bytes) / (1 << 20));
  double best = 1e30;
  ImageEmbed e;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    st = EncodeImage(*mp, img, vo, tp, &e);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!st.ok()) {
      std::fprintf(stderr, "qwen35-bench-vision: %s\n", st.message().c_str());
      return 1;
    }
    best = std::min(best, s);
    std::printf("run %d: %.3f s\n", r + 1, s);
  }
  const double flops = encoder_flops(mp->hp, e.width / mp->hp.patch, e.height / mp->hp.patch);
  if (device == "cuda")
    std::printf("image %dx%d -> %dx%d (%s), %d tokens; CUDA encoder (preprocessing: %d CPU threads)\n", width, height,
                e.width, e.height, profile == "ref" ? "REF" : "LC", e.n_tokens(), tp.size());
  else
    std::printf("image %dx%d -> %dx%d (%s), %d tokens; kernel %s, %d threads\n", width, height, e.width, e.height,
                profile == "ref" ? "REF" : "LC", e.n_tokens(), gemm_kernel_name(), tp.size());
  std::printf("best %.3f s, %.1f GFLOP, %.1f GFLOP/s\n", best, flops / 1e9, flops / best / 1e9);
  if (check) {
    // The same image through the CPU encoder (its fast path).
    std::shared_ptr<DeviceEncoder> dev = std::move(mp->device);
    ImageEmbed c;
    st = EncodeImage(*mp, img, vo, tp, &c);
    mp->device = std::move(dev);
    if (!st.ok() || c.data.size() != e.data.size()) {
      std::fprintf(stderr, "qwen35-bench-vision: the CPU check failed: %s\n", st.ok() ? "sizes differ" : st.message().c_str());
      return 1;
    }
    double worst = 0;
    for (int32_t t = 0; t < e.n_tokens(); ++t) {
      double num = 0, den = 0;
      for (int32_t i = 0; i < e.n_embd; ++i) {
        const size_t k = size_t(t) * size_t(e.n_embd) + size_t(i);
        num += (double(e.data[k]) - c.data[k]) * (double(e.data[k]) - c.data[k]);
        den += double(c.data[k]) * c.data[k];
      }
      worst = std::max(worst, std::sqrt(num / std::max(den, 1e-30)));
    }
    std::printf("check vs the CPU encoder: max per-token rel %.3g\n", worst);
  }
  std::printf("vision|%s|%dx%d|%d tokens|best %.4f s|%.1f GFLOP/s\n", device.c_str(), width, height, e.n_tokens(), best,
              flops / best / 1e9);
  return 0;
}
