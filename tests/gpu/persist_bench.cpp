// qwen35-persist-bench: a decode step's NVFP4 products (the 4B's 128
// projections in decode order, 2.0 GB, one activation row, each reading
// the outputs of the one before) as one launch of the persistent kernel
// (persist_fp4.h) against 128 dependent kernel-3 launches (fp4_matvec,
// graph + PDL, as the decode step launches them), on random weights.
// Printed: microseconds per step (median of 7 after a warm-up), the weight
// bytes per second as a fraction of the device's copy bandwidth, and a
// check: every 8th stage of the persistent launch against kernel 3 on the
// same inputs (largest difference relative to the largest output; bar
// 1e-5: the same F16 chunks and products, other sums of the slices).
// Variants: blocks per multiprocessor (1 .. what fits), the waiters' poll
// interval, a probe without the waits for the stage before (wrong
// results: the weight stream and the arithmetic alone), and the kernel's
// instantiation for launches with attention stages on the same products
// (what its registers and smaller grid cost: QWEN35_CUDA_FP4_PERSIST=3);
// and both the persistent launch and the kernel-3 launches on the FP8
// tensor cores (QWEN35_CUDA_FP4_FP8: the codes' FP8 copy, random too).
// For the first variant of each arithmetic, `persist-tl` lines: the
// kernel's timeline probe per stage shape (how long a stage waits for the
// one before, how long its units take from their inputs to its last tile).
//
//   qwen35-persist-bench [--quick]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "copy_bandwidth.h"
#include "matvec_fp4.h"
#include "persist_fp4.h"
#include "persist_timeline.h"
#include "tuning.h"

using namespace qwen35::cuda;

namespace {

bool ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "qwen35-persist-bench: %s: %s\n", what, cudaGetErrorString(e));
  return false;
}
#define TRY(x)                    \
  do {                            \
    if (!ok((x), #x)) return 1;   \
  } while (0)

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Fills `bytes` at dst by repeating a host block of random bytes (scales:
// E4M3 bytes 0x30-0x37, i.e. 0.5 to 0.94, so that no value is NaN).
bool fill(uint8_t* dst, uint64_t bytes, bool scales, std::mt19937& rng) {
  std::vector<uint8_t> block(1 << 20);
  for (uint8_t& b : block) b = scales ? uint8_t(0x30 | (rng() & 7u)) : uint8_t(rng());
  for (uint64_t off = 0; off < bytes; off += block.size()) {
    const uint64_t n = std::min<uint64_t>(block.size(), bytes - off);
    if (!ok(cudaMemcpy(dst + off, block.data(), n, cudaMemcpyHostToDevice), "fill")) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: qwen35-persist-bench [--quick]\n");
      return 2;
    }
  }
  int dev = 0, sms = 0;
  TRY(cudaGetDevice(&dev));
  TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop;
  TRY(cudaGetDeviceProperties(&prop, dev));
  cudaStream_t s;
  TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  // The step: per layer the input projection (q/gate/k/v every fourth
  // layer), the output projection, FFN gate+up (as plain rows here) and
  // down.
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int layer = 0; layer < 32; ++layer) {
    shapes.push_back({layer % 4 == 3 ? 10240 : 12352, 2560});
    shapes.push_back({2560, 4096});
    shapes.push_back({18432, 2560});
    shapes.push_back({2560, 9216});
  }
  const int count = int(shapes.size());
  std::mt19937 rng(7);
  std::vector<PersistFp4Stage> table(static_cast<size_t>(count));
  std::vector<float*> act(static_cast<size_t>(count) + 1);
  uint64_t weight_bytes = 0;
  {
    std::vector<float> x0(2560);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (float& v : x0) v = nd(rng);
    TRY(cudaMalloc(&act[0], x0.size() * 4));
    TRY(cudaMemcpy(act[0], x0.data(), x0.size() * 4, cudaMemcpyHostToDevice));
  }
  for (int i = 0; i < count; ++i) {
    Fp4Tiled w;
    w.rows = shapes[size_t(i)].first;
    w.cols = shapes[size_t(i)].second;
    w.scale = float(1.0 / std::sqrt(double(w.cols) * 4.3));  // outputs of about the inputs' size
    uint8_t *codes = nullptr, *scales = nullptr, *codes8 = nullptr;
    TRY(cudaMalloc(&codes, w.code_bytes()));
    TRY(cudaMalloc(&scales, w.scale_bytes()));
    TRY(cudaMalloc(&codes8, w.code_bytes()));
    if (!fill(codes, w.code_bytes(), false, rng) || !fill(scales, w.scale_bytes(), true, rng) ||
        !fill(codes8, w.code_bytes(), false, rng))
      return 1;
    w.codes = codes;
    w.scales = scales;
    w.codes8 = codes8;
    weight_bytes += w.code_bytes() + w.scale_bytes();
    TRY(cudaMalloc(&act[size_t(i) + 1], size_t(w.rows) * 4));
    table[size_t(i)].w = w;
    table[size_t(i)].x = act[size_t(i)];
    table[size_t(i)].y = act[size_t(i) + 1];
  }

  // The copy bandwidth (read + write), as qwen35-bench's roofline.
  const double copy_gbs = qwen35::test::copy_bandwidth(size_t(1) << 30, s) / 1e9;
  cudaEvent_t e0, e1;
  TRY(cudaEventCreate(&e0));
  TRY(cudaEventCreate(&e1));
  std::printf("persist| %s, %d multiprocessors, copy %.0f GB/s; a step: %d NVFP4 products, %.3f GB\n", prop.name,
              sms, copy_gbs, count, double(weight_bytes) / 1e9);
  std::printf("persist| variant | us per step | GB/s | of the copy | worst rel. diff vs kernel 3 (every 8th stage)\n");
  auto report = [&](const char* what, double us, double diff) {
    const double gbs = double(weight_bytes) / (us * 1e3);
    std::printf("persist| %-44s | %8.1f | %6.0f | %5.1f%% | %s\n", what, us, gbs, 100.0 * gbs / copy_gbs,
                diff < 0 ? "-" : (std::to_string(diff) + (diff < 1e-5 ? " ok" : " OVER THE BAR")).c_str());
  };
  auto time_it = [&](auto&& run, double* us) -> bool {
    std::vector<float> ms;
    for (int r = 0; r < 8; ++r) {
      if (!ok(cudaEventRecord(e0, s), "record") || !run() || !ok(cudaEventRecord(e1, s), "record") ||
          !ok(cudaEventSynchronize(e1), "sync"))
        return false;
      float t = 0;
      if (!ok(cudaEventElapsedTime(&t, e0, e1), "elapsed")) return false;
      if (r > 0) ms.push_back(t);
    }
    *us = median(ms) * 1e3;
    return true;
  };

  // Kernel 3 on one stage's input (the persistent launch's), into tmp.
  const uint64_t k3_partial = [&] {
    uint64_t m = 1;
    for (const PersistFp4Stage& p : table) m = std::max<uint64_t>(m, fp4_partial_floats(p.w, sms));
    return m;
  }();
  const uint64_t k3_counters = [&] {
    uint64_t m = 1;
    for (const PersistFp4Stage& p : table) m = std::max<uint64_t>(m, fp4_counter_ints(p.w));
    return m;
  }();
  float *kpart = nullptr, *tmp = nullptr;
  int* kcnt = nullptr;
  TRY(cudaMalloc(&kpart, k3_partial * 4));
  TRY(cudaMalloc(&kcnt, k3_counters * 4));
  TRY(cudaMemset(kcnt, 0, k3_counters * 4));
  TRY(cudaMalloc(&tmp, 18432 * 4));
  // fp8: kernel 3's FP8 arithmetic (the tuning it reads at the launch).
  const DecodeTuning base = decode_tuning();
  DecodeTuning base8 = base;
  base8.fp4_fp8 = 1;
  auto kernel3 = [&](const PersistFp4Stage& p, float* y, cudaStream_t st, bool fp8 = false) {
    set_decode_tuning(fp8 ? base8 : base);
    Fp4MatvecArgs k;
    k.w = p.w;
    k.n = 1;
    k.x = p.x;
    k.ldx = p.w.cols;
    k.y = y;
    k.ldy = p.w.rows;
    k.partial = kpart;
    k.counters = kcnt;
    const cudaError_t e = fp4_matvec(k, sms, st);
    set_decode_tuning(base);
    return e;
  };
  auto check = [&](bool fp8) -> double {
    double worst = 0.0;
    for (int i = 0; i < count; i += 8) {
      const PersistFp4Stage& p = table[size_t(i)];
      std::vector<float> got(size_t(p.w.rows)), want(size_t(p.w.rows));
      if (!ok(kernel3(p, tmp, s, fp8), "kernel 3") || !ok(cudaStreamSynchronize(s), "sync") ||
          !ok(cudaMemcpy(got.data(), p.y, got.size() * 4, cudaMemcpyDeviceToHost), "download") ||
          !ok(cudaMemcpy(want.data(), tmp, want.size() * 4, cudaMemcpyDeviceToHost), "download"))
        return INFINITY;
      double big = 0.0, d = 0.0;
      for (size_t r = 0; r < got.size(); ++r) {
        big = std::max(big, std::fabs(double(want[r])));
        d = std::isfinite(got[r]) ? std::max(d, std::fabs(double(got[r]) - double(want[r]))) : INFINITY;
      }
      worst = std::max(worst, d / std::max(big, 1e-30));
    }
    return worst;
  };

  // The persistent kernel: blocks per multiprocessor, poll intervals.
  PersistFp4Sizes most;
  most.max_kg_per = kPersistMaxKgPer;
  const int fit = persist_fp4_blocks_per_sm(most);
  PersistFp4Stage* dtable = nullptr;
  int *done = nullptr, *tickets = nullptr, *fault = nullptr, *counters = nullptr;
  float* partial = nullptr;
  TRY(cudaMalloc(&dtable, sizeof(PersistFp4Stage) * size_t(count)));
  // (Counters: zero once; every launch leaves them at zero.)
  TRY(cudaMalloc(&done, sizeof(int) * size_t(count + 1) * kPersistDoneStride));
  TRY(cudaMemset(done, 0, sizeof(int) * size_t(count + 1) * kPersistDoneStride));
  TRY(cudaMalloc(&tickets, sizeof(int) * 2 * kPersistDoneStride));  // two, for launches in turn
  TRY(cudaMemset(tickets, 0, sizeof(int) * 2 * kPersistDoneStride));
  TRY(cudaMalloc(&fault, 2 * sizeof(int)));  // the flag, the report
  TRY(cudaMemset(fault, 0, 2 * sizeof(int)));
  struct Variant {
    int per_sm;
    unsigned poll_ns;
    bool no_waits = false;  // the probe: the streaming and arithmetic alone (wrong results)
    bool attn_kernel = false;  // the kernel's instantiation for launches with attention (its registers, its grid)
    bool fp8 = false;          // the FP8 arithmetic
    bool slices = false;       // stages wait by column slice (persist_fp4_plan's slice_waits)
  };
  PersistFp4Sizes most_attn = most;
  most_attn.attention = true;
  const int fit_attn = persist_fp4_blocks_per_sm(most_attn);
  PersistFp4Sizes most8 = most;
  most8.fp8 = true;
  const int fit8 = persist_fp4_blocks_per_sm(most8);
  // The timeline probe (PersistFp4Args::timeline, persist_timeline.h).
  unsigned long long* timeline = nullptr;
  const size_t tl_n = size_t(count) * kPersistTimeFields;
  TRY(cudaMalloc(&timeline, tl_n * sizeof(unsigned long long)));
  auto timeline_reset = [&] { return ok(cudaMemset(timeline, 0, tl_n * sizeof(unsigned long long)), "timeline"); };
  auto timeline_report = [&](const char* label) {
    std::vector<unsigned long long> raw(tl_n);
    if (!ok(cudaMemcpy(raw.data(), timeline, tl_n * sizeof(unsigned long long), cudaMemcpyDeviceToHost),
            "timeline"))
      return false;
    std::vector<PersistStageTime> st(static_cast<size_t>(count));
    for (int i = 0; i < count; ++i) {
      st[size_t(i)].rows = shapes[size_t(i)].first;
      st[size_t(i)].cols = shapes[size_t(i)].second;
    }
    persist_read_times(raw.data(), st);
    qwen35::test::print_persist_timeline(st, label);
    return true;
  };
  std::vector<Variant> variants;
  for (int b = fit; b >= 1; --b) variants.push_back({b, 64});
  variants.push_back({fit, 64, true});
  variants.push_back({fit, 64, false, false, false, true});
  if (fit_attn >= 1) variants.push_back({fit_attn, 64, false, true});
  if (fit8 >= 1) {
    variants.push_back({fit8, 64, false, false, true});
    variants.push_back({fit8, 64, true, false, true});
    variants.push_back({fit8, 64, false, false, true, true});
  }
  if (!quick)
    for (unsigned poll : {0u, 256u, 1024u}) variants.push_back({fit, poll});
  for (const Variant& v : variants) {
    const int blocks = sms * v.per_sm;
    if (!persist_fp4_plan(table.data(), count, blocks, v.slices)) {
      std::printf("persist| the plan for %d blocks failed\n", blocks);
      continue;
    }
    PersistFp4Sizes sizes = persist_fp4_sizes(table.data(), count, v.fp8);
    sizes.attention = v.attn_kernel;
    if (persist_fp4_blocks_per_sm(sizes) < v.per_sm) continue;
    if (partial) TRY(cudaFree(partial));
    if (counters) TRY(cudaFree(counters));
    TRY(cudaMalloc(&partial, 2 * sizes.partial_half * 4 + 4));
    TRY(cudaMalloc(&counters, 2 * sizes.counter_half * 4 + 4));
    TRY(cudaMemset(counters, 0, 2 * sizes.counter_half * 4 + 4));
    TRY(cudaMemcpy(dtable, table.data(), sizeof(PersistFp4Stage) * size_t(count), cudaMemcpyHostToDevice));
    PersistFp4Args a;
    a.stages = dtable;
    a.count = count;
    a.sizes = sizes;
    a.partial = partial;
    a.counters = counters;
    a.done = done;
    a.fault = fault;
    a.fault_report = fault + 1;
    a.poll_ns = v.poll_ns;
    a.no_waits = v.no_waits;
    double us = 0.0;
    int turn = 0;
    const auto one = [&] {
      a.tickets = tickets + (turn ^= 1) * kPersistDoneStride;
      return ok(persist_fp4(a, blocks, s), "persist_fp4");
    };
    if (!time_it(one, &us)) return 1;
    // One launch more with the timeline probe, for the first variant of
    // each arithmetic (a few atomics per unit: not in the timed launches).
    if (!v.no_waits && !v.attn_kernel && v.per_sm == (v.fp8 ? fit8 : fit) && v.poll_ns == 64) {
      a.timeline = timeline;
      if (!timeline_reset() || !one() || !ok(cudaStreamSynchronize(s), "sync") ||
          !timeline_report(v.fp8 ? (v.slices ? "FP8 slice waits" : "FP8") : v.slices ? "F16 slice waits" : "F16"))
        return 1;
      a.timeline = nullptr;
    }
    int f = 0;
    TRY(cudaMemcpy(&f, fault + 1, sizeof(int), cudaMemcpyDeviceToHost));
    char what[128];
    std::snprintf(what, sizeof what, "persistent%s%s%s, %d blocks/SM, poll %u ns%s%s",
                  v.attn_kernel ? " (attention kernel)" : "", v.fp8 ? " FP8" : "", v.slices ? " slice waits" : "",
                  v.per_sm, v.poll_ns,
                  v.no_waits ? ", PROBE: no waits" : "", f ? " (A WAIT GAVE UP)" : "");
    report(what, us, v.no_waits ? -1.0 : check(v.fp8));
    TRY(cudaMemset(fault, 0, 2 * sizeof(int)));
  }

  // The same products as dependent kernel-3 launches in a graph (PDL),
  // after one eager pass (each shape's shared-memory opt-in outside the
  // capture); with the F16 and the FP8 arithmetic.
  for (bool fp8 : {false, true}) {
    for (const PersistFp4Stage& p : table)
      if (!ok(kernel3(p, p.y, s, fp8), "kernel 3")) return 1;
    TRY(cudaStreamSynchronize(s));
    cudaGraph_t g;
    TRY(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (const PersistFp4Stage& p : table)
      if (!ok(kernel3(p, p.y, s, fp8), "kernel 3 (capture)")) return 1;
    TRY(cudaStreamEndCapture(s, &g));
    cudaGraphExec_t ge;
    TRY(cudaGraphInstantiate(&ge, g, 0));
    double us = 0.0;
    if (!time_it([&] { return ok(cudaGraphLaunch(ge, s), "graph launch"); }, &us)) return 1;
    report(fp8 ? "separate kernel-3 launches, FP8 (graph + PDL)" : "separate kernel-3 launches (graph + PDL)", us,
           -1.0);
    TRY(cudaGraphExecDestroy(ge));
    TRY(cudaGraphDestroy(g));
  }
  TRY(cudaGetLastError());
  return 0;
}
