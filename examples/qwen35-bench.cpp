// qwen35-bench: prefill and decode speed, load time, memory, and the fraction
// of the memory-bandwidth roofline reached by decode.
//
//   qwen35-bench -m MODEL [-p N] [-n N] [-t N] [-r N] [--mtp on|off]
//                [--device auto|cpu|cuda] [--ctx N] [--sampler greedy|recommended|topp] [--json]
//
//   -p N   prompt tokens per prefill measurement (default 256; 0 skips prefill)
//   -n N   tokens generated per decode measurement (default 32; 0 skips decode)
//   -t N   CPU threads (default: physical cores)
//   -r N   repetitions; the reported speeds are medians (default 3)
//   --mtp  on: speculative decoding with the model's MTP layer (qwen35_generate with use_mtp)
//   --sampler  greedy (default), recommended: Qwen3.5's non-thinking
//          settings (temperature 0.7, top-k 20, top-p 0.8, presence 1.5; seed 1),
//          or topp: no top-k (temperature 1.0, top-p 0.95; seed 1), the
//          softmax over the whole vocabulary
//   --json print one JSON object instead of text
//
// Each repetition starts from an empty context, prefills N pseudo-random
// tokens (timed), then generates with the sampler (timed). A warm-up pass before the
// first repetition pages the mapped weights in.
//
// Roofline: decode must read every weight of the main model (all trunk
// matrices and the LM head) once per token, so tokens/s can never exceed
// read_bandwidth / weight_bytes_per_token. The tool measures the read
// bandwidth of this machine with the same thread count (a streaming sum over
// a buffer much larger than the caches, before and after the runs) and
// reports decode tokens/s as a fraction of that bound. On a GPU the bound
// uses the device's copy bandwidth (a 1 GiB device-to-device copy, bytes read
// plus written). Weight bytes are counted from the GGUF tensor table
// and the CPU kernel set is named through internal headers; everything else
// uses the public C API.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backend.h"
#include "cpu/kernels.h"
#include "gguf.h"
#include "qwen35/qwen35.h"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

struct Options {
  std::string model;
  int prompt = 256;
  int gen = 32;
  int threads = 0;
  int reps = 3;
  int n_ctx = 0;
  bool mtp = false;
  bool json = false;
  std::string sampler = "greedy";  // --sampler greedy|recommended|topp
  qwen35_device device = QWEN35_DEVICE_AUTO;
};

int usage(int code = 2) {
  // --help: the text on stdout and exit 0; a usage error: stderr and exit 2.
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: qwen35-bench -m MODEL [-p N] [-n N] [-t N] [-r N] [--mtp on|off]\n"
               "                    [--device auto|cpu|cuda] [--ctx N] [--sampler greedy|recommended|topp] [--json]\n");
  return code;
}

bool parse_args(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    auto number = [&](int* out, int lo) {
      const char* v = value();
      if (!v) return false;
      char* end = nullptr;
      const long x = std::strtol(v, &end, 10);
      if (!*v || *end || x < lo || x > (1 << 24)) return false;
      *out = int(x);
      return true;
    };
    bool ok = true;
    if (a == "-m" || a == "--model") {
      const char* v = value();
      ok = v != nullptr;
      if (ok) o->model = v;
    } else if (a == "-p") ok = number(&o->prompt, 0);
    else if (a == "-n") ok = number(&o->gen, 0);
    else if (a == "-t" || a == "--threads") ok = number(&o->threads, 1);
    else if (a == "-r" || a == "--reps") ok = number(&o->reps, 1);
    else if (a == "--ctx") ok = number(&o->n_ctx, 1);
    else if (a == "--json") o->json = true;
    else if (a == "-h" || a == "--help") std::exit(usage(0));
    else if (a == "--mtp") {
      const char* v = value();
      ok = v && (std::strcmp(v, "on") == 0 || std::strcmp(v, "off") == 0);
      if (ok) o->mtp = std::strcmp(v, "on") == 0;
    } else if (a == "--sampler") {
      const char* v = value();
      ok = v && (std::strcmp(v, "greedy") == 0 || std::strcmp(v, "recommended") == 0 || std::strcmp(v, "topp") == 0);
      if (ok) o->sampler = v;
    } else if (a == "--device") {
      const char* v = value();
      ok = v != nullptr;
      if (ok && std::strcmp(v, "auto") == 0) o->device = QWEN35_DEVICE_AUTO;
      else if (ok && std::strcmp(v, "cpu") == 0) o->device = QWEN35_DEVICE_CPU;
      else if (ok && std::strcmp(v, "cuda") == 0) o->device = QWEN35_DEVICE_CUDA;
      else ok = false;
    } else ok = false;
    if (!ok) {
      std::fprintf(stderr, "qwen35-bench: bad or incomplete argument '%s'\n", a.c_str());
      return false;
    }
  }
  return !o->model.empty();
}

// Bytes of weights one decode step reads: every tensor of the main layers,
// the final norm and the LM head (the embedding row lookup is negligible).
// With MTP, the MTP block is read on every pass as well.
uint64_t weight_bytes_per_token(const std::string& path, int n_layer, bool with_mtp) {
  std::unique_ptr<qwen35::GgufFile> f;
  if (!qwen35::GgufFile::Open(path, true, &f).ok()) return 0;
  const bool has_output = f->find_tensor("output.weight") != nullptr;
  uint64_t bytes = 0;
  for (const qwen35::GgufTensor& t : f->tensors()) {
    const std::string name(t.name);
    if (name.rfind("blk.", 0) == 0) {
      const int il = std::atoi(name.c_str() + 4);
      if (il < n_layer || with_mtp) bytes += t.nbytes;
    } else if (name == "output_norm.weight" || name == (has_output ? "output.weight" : "token_embd.weight")) {
      bytes += t.nbytes;
    }
  }
  return bytes;
}

// Read bandwidth with `threads` threads: each sums its slice of a buffer far
// larger than the last-level cache, as one sequential stream and as four
// interleaved streams (which keeps more misses in flight on some machines).
// The roofline uses the best pass of either pattern: the most this machine
// was seen to deliver, so it is not flattered. *one_stream gets the best of
// the one-stream passes alone (what a plain read loop sees).
double measure_read_bandwidth(int threads, double* one_stream) {
  size_t bytes = size_t(1) << 30;
  std::unique_ptr<uint64_t[]> buf;
  while (!buf && bytes >= (size_t(64) << 20)) {
    buf.reset(new (std::nothrow) uint64_t[bytes / 8]);
    if (!buf) bytes /= 2;
  }
  *one_stream = 0.0;
  if (!buf) return 0.0;
  const size_t n = bytes / 8;
  std::atomic<uint64_t> sink{0};
  auto pass = [&](int mode) {  // 0: first touch, 1: one stream, 2: four streams
    std::vector<std::thread> ts;
    const auto t0 = Clock::now();
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        const size_t b = n * size_t(t) / size_t(threads), e = n * size_t(t + 1) / size_t(threads);
        uint64_t* p = buf.get();
        if (mode == 0) {
          for (size_t i = b; i < e; ++i) p[i] = i;
          return;
        }
        // Four independent sums so the loop is limited by loads, not adds.
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        if (mode == 1) {
          for (size_t i = b; i + 4 <= e; i += 4) {
            s0 += p[i];
            s1 += p[i + 1];
            s2 += p[i + 2];
            s3 += p[i + 3];
          }
        } else {
          const size_t q = (e - b) / 4;
          for (size_t i = b; i < b + q; ++i) {
            s0 += p[i];
            s1 += p[i + q];
            s2 += p[i + 2 * q];
            s3 += p[i + 3 * q];
          }
        }
        sink += s0 + s1 + s2 + s3;
      });
    for (auto& th : ts) th.join();
    return ms_since(t0);
  };
  pass(0);  // first touch, from the threads that will read
  double best[3] = {0, 1e30, 1e30};
  for (int r = 0; r < 6; ++r)
    for (int mode : {1, 2}) best[mode] = std::min(best[mode], pass(mode));
  *one_stream = double(bytes) / (best[1] * 1e-3) / 1e9;
  return double(bytes) / (std::min(best[1], best[2]) * 1e-3) / 1e9;
}

uint64_t peak_rss_bytes() {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return uint64_t(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

// Generation of n tokens after the context's last decoded row, through
// qwen35_generate (so --mtp on measures speculative decoding with the MTP
// head: drafts, 2-token verification, rollback).
bool generate_n(qwen35_context* ctx, qwen35_sampler* sampler, int n, bool mtp, qwen35_generate_stats* st) {
  qwen35_generate_params gp = qwen35_generate_default_params();
  gp.max_tokens = n;
  gp.ignore_eos = true;
  gp.use_mtp = mtp ? 1 : 0;
  return qwen35_generate(ctx, sampler, nullptr, 0, &gp, st) == QWEN35_OK && st->n_generated == n;
}

struct Results {
  double load_ms = 0;
  double bandwidth_gbs = 0, bandwidth_one_stream_gbs = 0;
  uint64_t weight_bytes = 0;
  std::vector<double> prefill_tps, decode_tps;
  int64_t drafted = 0, accepted = 0, passes = 0, generated = 0;
  uint64_t context_bytes = 0, rss_bytes = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse_args(argc, argv, &o)) return usage();

  auto fail = [&](const char* what) {
    std::fprintf(stderr, "qwen35-bench: %s: %s\n", what, qwen35_errmsg());
    return 1;
  };

  Results r;
  qwen35_model_params mp = qwen35_model_default_params();
  mp.device = o.device;
  qwen35_model* model = nullptr;
  const auto t_load = Clock::now();
  if (qwen35_model_load(o.model.c_str(), &mp, &model) != QWEN35_OK) return fail("cannot load the model");
  r.load_ms = ms_since(t_load);
  const bool on_cpu = qwen35_model_device(model) == QWEN35_DEVICE_CPU;
  const int32_t V = qwen35_model_n_vocab(model);

  qwen35_context_params cp = qwen35_context_default_params();
  const int need = std::max(o.prompt, 1) + o.gen + 8;
  cp.n_ctx = o.n_ctx > 0 ? o.n_ctx : need;
  if (cp.n_ctx < need) {
    std::fprintf(stderr, "qwen35-bench: --ctx %d is smaller than -p + -n\n", cp.n_ctx);
    return 2;
  }
  cp.n_batch = std::max(1, std::min(o.prompt, 512));
  if (o.threads > 0) cp.n_threads = o.threads;
  cp.use_mtp = o.mtp;
  qwen35_context* ctx = nullptr;
  if (qwen35_context_create(model, &cp, &ctx) != QWEN35_OK) {
    qwen35_model_free(model);
    return fail("cannot create a context");
  }
  const int threads = o.threads > 0 ? o.threads : qwen35_context_default_params().n_threads;
  qwen35_sampler_params sp = o.sampler == "greedy" ? qwen35_sampler_greedy_params() : qwen35_sampler_default_params(false);
  if (o.sampler == "topp") {
    sp.temperature = 1.0f;
    sp.top_k = 0;
    sp.top_p = 0.95f;
    sp.presence_penalty = 0.0f;
  }
  sp.seed = 1;
  qwen35_sampler* sampler = nullptr;
  if (qwen35_sampler_create(model, &sp, &sampler) != QWEN35_OK) return fail("cannot create a sampler");
  qwen35_generate_stats gst;

  r.weight_bytes = weight_bytes_per_token(o.model, qwen35_model_n_layer(model), o.mtp && qwen35_model_has_mtp(model));
  if (on_cpu) r.bandwidth_gbs = measure_read_bandwidth(threads, &r.bandwidth_one_stream_gbs);
  // On a GPU: a 1 GiB device-to-device copy (bytes read plus written), the
  // rate a weight stream can at best approach.
  if (!on_cpu && !qwen35::CudaCopyBandwidth(0, uint64_t(1) << 30, &r.bandwidth_gbs).ok()) r.bandwidth_gbs = 0;

  // Pseudo-random prompt (an LCG: the same tokens on every run).
  std::vector<qwen35_token> prompt(size_t(std::max(o.prompt, 1)));
  uint64_t s = 12345;
  for (auto& t : prompt) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t = qwen35_token((s >> 33) % uint64_t(V));
  }

  // Warm-up: one short prefill and one decode step touch every weight.
  qwen35_context_reset(ctx);
  if (qwen35_context_decode(ctx, prompt.data(), std::min<int>(int(prompt.size()), 4), QWEN35_LOGITS_LAST) !=
          QWEN35_OK ||
      !generate_n(ctx, sampler, 1, o.mtp, &gst))
    return fail("warm-up decode failed");

  for (int rep = 0; rep < o.reps; ++rep) {
    qwen35_context_reset(ctx);
    const int np = o.prompt > 0 ? o.prompt : 1;
    const auto t0 = Clock::now();
    if (qwen35_context_decode(ctx, prompt.data(), np, QWEN35_LOGITS_LAST) != QWEN35_OK)
      return fail("prefill failed");
    const double pms = ms_since(t0);
    if (o.prompt > 0) r.prefill_tps.push_back(double(np) / (pms * 1e-3));
    if (o.gen > 0) {
      const auto t1 = Clock::now();
      qwen35_sampler_reset(sampler, 1);
      if (!generate_n(ctx, sampler, o.gen, o.mtp, &gst)) return fail("decode failed");
      r.decode_tps.push_back(double(o.gen) / (ms_since(t1) * 1e-3));
      r.drafted += gst.n_drafted;
      r.accepted += gst.n_accepted;
      r.passes += gst.n_main_passes;
      r.generated += gst.n_generated;
    }
  }
  // Peak memory of the runs, before the bandwidth buffer below adds to it.
  r.rss_bytes = peak_rss_bytes();
  // Bandwidth again after the runs: the best of both measurements, so that
  // a burst of load from other programs during one of them does not lower
  // the roofline (and inflate the fraction).
  if (on_cpu) {
    double one = 0.0;
    r.bandwidth_gbs = std::max(r.bandwidth_gbs, measure_read_bandwidth(threads, &one));
    r.bandwidth_one_stream_gbs = std::max(r.bandwidth_one_stream_gbs, one);
  }
  r.context_bytes = qwen35_context_memory_bytes(ctx);

  const double prefill = median(r.prefill_tps), decode = median(r.decode_tps);
  const double roofline = r.weight_bytes && r.bandwidth_gbs > 0 ? r.bandwidth_gbs * 1e9 / double(r.weight_bytes) : 0;
  const double fraction = roofline > 0 ? decode / roofline : 0;
  const char* dev = on_cpu ? "cpu" : "cuda";
  const char* kernels = on_cpu ? qwen35::cpu::kernels().name : "cuda";
  if (o.json) {
    std::printf(
        "{\"model\": \"%s\", \"desc\": \"%s\", \"device\": \"%s\", \"kernels\": \"%s\", \"threads\": %d, \"mtp\": %s, "
        "\"sampler\": \"%s\", \"reps\": %d, "
        "\"load_ms\": %.1f, \"prompt_tokens\": %d, \"gen_tokens\": %d, \"prefill_tokens_per_s\": %.3f, "
        "\"decode_tokens_per_s\": %.3f, \"read_bandwidth_gb_s\": %.2f, \"read_bandwidth_one_stream_gb_s\": %.2f, "
        "\"weight_bytes_per_token\": %llu, "
        "\"roofline_tokens_per_s\": %.3f, \"roofline_fraction\": %.3f, \"model_host_bytes\": %llu, "
        "\"context_bytes\": %llu, "
        "\"mtp_drafted\": %lld, \"mtp_accepted\": %lld, \"tokens_per_main_pass\": %.3f, "
        "\"peak_rss_bytes\": %llu}\n",
        o.model.c_str(), qwen35_model_desc(model), dev, kernels, threads, o.mtp ? "true" : "false",
        o.sampler.c_str(), o.reps, r.load_ms, o.prompt,
        o.gen, prefill, decode, r.bandwidth_gbs, r.bandwidth_one_stream_gbs, (unsigned long long)r.weight_bytes, roofline,
        fraction, (unsigned long long)qwen35_model_host_bytes(model), (unsigned long long)r.context_bytes,
        (long long)r.drafted, (long long)r.accepted, r.passes ? double(r.generated) / double(r.passes) : 0.0,
        (unsigned long long)r.rss_bytes);
  } else {
    std::printf("model        %s (%s)\n", o.model.c_str(), qwen35_model_desc(model));
    std::printf("device       %s (%s kernels), %d threads, mtp %s, %s sampler, %d repetitions (medians)\n", dev, kernels,
                threads, o.mtp ? "on" : "off", o.sampler.c_str(), o.reps);
    std::printf("load_ms      %.1f (weights mapped, %.1f MiB copied or converted)\n", r.load_ms,
                double(qwen35_model_host_bytes(model)) / 1048576.0);
    if (o.prompt > 0) std::printf("prefill      %d tokens: %.2f tok/s\n", o.prompt, prefill);
    if (o.gen > 0) std::printf("decode       %d tokens: %.2f tok/s\n", o.gen, decode);
    if (r.drafted > 0)
      std::printf("mtp          %lld drafts, %lld accepted (%.1f%%), %.2f tokens per main pass\n", (long long)r.drafted,
                  (long long)r.accepted, 100.0 * double(r.accepted) / double(r.drafted),
                  double(r.generated) / double(std::max<int64_t>(r.passes, 1)));
    if (on_cpu)
      std::printf("bandwidth    %.1f GB/s read (%d threads; one stream per thread: %.1f GB/s)\n", r.bandwidth_gbs, threads,
                  r.bandwidth_one_stream_gbs);
    else if (r.bandwidth_gbs > 0)
      std::printf("bandwidth    %.1f GB/s (device-to-device copy, read + write)\n", r.bandwidth_gbs);
    if (roofline > 0)
      std::printf("roofline     %.3f GB of weights per token -> %.2f tok/s; decode reaches %.0f%%\n",
                  double(r.weight_bytes) / 1e9, roofline, 100.0 * fraction);
    std::printf("memory       context %.1f MiB, peak RSS %.1f MiB (mapped weights count once touched)\n",
                double(r.context_bytes) / 1048576.0, double(r.rss_bytes) / 1048576.0);
  }
  qwen35_sampler_free(sampler);
  qwen35_context_free(ctx);
  qwen35_model_free(model);
  return 0;
}
