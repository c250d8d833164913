// A case of the persistent NVFP4 sequence (persist_fp4.h) for the GPU op
// test and the emulated kernels: each stage's outputs against the same
// product launched alone with fp4_matvec (kernel 3) on the inputs the
// persistent launch read, and against the CPU (double sums of the GGUF
// rows). Arr is a device-array template (DevArray on the GPU, a host
// vector in the emulation); rand(n, seed, lo, hi) gives n uniform floats.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "chain_case.h"
#include "delta_net.h"
#include "kernel_refs.h"
#include "ggml_types.h"
#include "matvec_fp4.h"
#include "persist_fp4.h"
#include "persist_timeline.h"
#include "quants.h"
#include "tuning.h"

namespace qwen35::test {

// Largest |got - ref| over the largest |ref| (infinite where got is not finite).
inline double worst_rel(const std::vector<float>& got, const std::vector<float>& ref) {
  double big = 0.0, d = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    big = std::max(big, std::fabs(double(ref[i])));
    d = std::isfinite(got[i]) ? std::max(d, std::fabs(double(got[i]) - double(ref[i]))) : INFINITY;
  }
  return d / std::max(big, 1e-30);
}

// Kernel 3 alone on the product a (its own split-K scratch), for `sms`
// multiprocessors (fp8: its FP8 arithmetic); false if the launch failed.
template <template <typename> class Arr>
bool kernel3_alone(cuda::Fp4MatvecArgs a, int sms, bool fp8 = false) {
  using namespace qwen35::cuda;
  Arr<float> part(std::vector<float>(size_t(fp4_partial_floats(a.w, sms) + 1), 0.0f));
  Arr<int> cnt(std::vector<int>(size_t(fp4_counter_ints(a.w) + 1), 0));
  a.partial = part.get();
  a.counters = cnt.get();
  const DecodeTuning saved = decode_tuning();
  DecodeTuning t = saved;
  t.fp4_kernel = 3;
  t.fp4_fp8 = fp8 ? 1 : 0;
  set_decode_tuning(t);
  const bool ok = fp4_matvec(a, sms, nullptr) == cudaSuccess;
  set_decode_tuning(saved);
  return ok;
}

// What persistent launches of one planned table share: the scratch, sized
// by the first launch's table, and the counters, which every launch must
// leave at zero for the next.
template <template <typename> class Arr>
struct PersistScratch {
  std::unique_ptr<Arr<float>> partial, squares;
  std::unique_ptr<Arr<int>> counters;
  std::unique_ptr<Arr<cuda::PersistFp4Stage>> table;
  std::unique_ptr<Arr<unsigned long long>> timeline;  // the next launch's timeline probe, if set (zeros)
  Arr<int> done, tickets, fault;  // tickets: two counters, for launches in turn; fault: the flag, then the report
  int turn = 0;
  explicit PersistScratch(int max_stages)
      : done(std::vector<int>(size_t(max_stages + 1) * cuda::kPersistDoneStride, 0)),
        tickets(std::vector<int>(2 * cuda::kPersistDoneStride, 0)),
        fault(std::vector<int>(2, 0)) {}
  // One launch of the planned stages on `blocks` blocks, in the launch's
  // parameters or from a table in device memory (fp8: the FP8 arithmetic).
  bool launch(const cuda::PersistFp4Stage* stages, int count, int blocks, bool inline_stages, bool fp8 = false) {
    using namespace qwen35::cuda;
    const PersistFp4Sizes sizes = persist_fp4_sizes(stages, count, fp8);
    if (fp8 && !sizes.fp8) return false;
    if (!partial) {
      partial = std::make_unique<Arr<float>>(std::vector<float>(size_t(2 * sizes.partial_half + 1), 0.0f));
      squares = std::make_unique<Arr<float>>(std::vector<float>(size_t(2 * sizes.squares_half + 1), NAN));
      counters = std::make_unique<Arr<int>>(std::vector<int>(size_t(2 * sizes.counter_half + 1), 0));
    }
    PersistFp4Args a;
    if (inline_stages) {
      if (count > kPersistInline) return false;
      std::copy(stages, stages + count, a.inline_stages);
    } else {
      table = std::make_unique<Arr<PersistFp4Stage>>(std::vector<PersistFp4Stage>(stages, stages + count));
      a.stages = table->get();
    }
    a.count = count;
    a.sizes = sizes;
    a.partial = partial->get();
    a.squares = squares->get();
    a.counters = counters->get();
    a.done = done.get();
    a.tickets = tickets.get() + (turn ^= 1) * cuda::kPersistDoneStride;
    a.fault = fault.get();
    a.fault_report = fault.get() + 1;
    a.timeline = timeline ? timeline->get() : nullptr;
    return persist_fp4(a, blocks, nullptr) == cudaSuccess;
  }

  int fault_report() const { return fault.download()[1]; }  // (the flag itself is back at zero)
};

struct PersistCaseResult {
  bool ok = false;
  int fault = 0;
  bool repeat_equal = false;   // a second launch gave the same bits
  double worst_kernel3 = 0.0;  // largest |difference| / largest |output| against kernel 3, over the stages
  double worst_cpu = 0.0;      // the same against the CPU
  std::vector<int> counters;   // split-K counters after the launches (all zero)
  std::vector<int> done;       // stage counters after the launches (all zero)
  std::vector<int> tickets;    // ticket counters after the launches (all zero)
  std::vector<int> splits;     // each stage's column slices as planned
  std::vector<int> slice_per;  // each stage's slice waits as planned (0: none)
  std::vector<std::vector<float>> acts;  // the first launch's input and stages' outputs
  std::vector<cuda::PersistStageTime> timeline;  // the first launch's timeline probe (PersistFp4Args::timeline)
};


// Stages of (rows, cols); stage s reads the first cols_s outputs of stage
// s-1 (rows_{s-1} >= cols_s). `blocks` blocks (the emulation runs them one
// after another), kernel 3's geometry for `sms` multiprocessors.
// launch_blocks: the grid launched, if not the one planned for.
// drop_units: units left out of stage 0 after the plan (a broken table:
// a tile of stage 0 is never finished, so stage 1's waits give up).
// fp8: the FP8 arithmetic (the persistent launch's and kernel 3's).
// slices: planned with slice waits (persist_fp4_plan).
template <template <typename> class Arr, typename Rand>
PersistCaseResult run_persist_case(const std::vector<std::pair<int64_t, int64_t>>& shapes, int blocks, int sms,
                                   Rand rand, int launch_blocks = 0, int64_t drop_units = 0, bool fp8 = false,
                                   bool slices = false) {
  using namespace qwen35::cuda;
  PersistCaseResult out;
  const int count = int(shapes.size());
  std::vector<std::vector<uint8_t>> rows_q;
  std::vector<std::unique_ptr<CaseTiled<Arr>>> w;
  // act[s]: the input of stage s; act[s + 1] its outputs (device arrays do not move: pointers).
  std::vector<std::unique_ptr<Arr<float>>> act;
  act.push_back(std::make_unique<Arr<float>>(rand(size_t(shapes[0].second), 5u, -2.0f, 2.0f)));
  for (int s = 0; s < count; ++s) {
    const auto [rows, cols] = shapes[size_t(s)];
    if (s > 0 && shapes[size_t(s - 1)].first < cols) return out;
    rows_q.push_back(random_nvfp4_rows(rows, cols, uint32_t(300 + s), rand));
    // Outputs of about the inputs' size (the rows' values are uniform in +-0.5).
    w.push_back(std::make_unique<CaseTiled<Arr>>(rows_q.back(), nullptr, rows, cols, float(std::sqrt(12.0 / cols))));
    if (!w.back()->ok) return out;
    act.push_back(std::make_unique<Arr<float>>(std::vector<float>(size_t(rows), NAN)));
  }
  std::vector<PersistFp4Stage> table(static_cast<size_t>(count));
  for (int s = 0; s < count; ++s) {
    table[size_t(s)].w = w[size_t(s)]->t;
    table[size_t(s)].x = act[size_t(s)]->get();
    table[size_t(s)].y = act[size_t(s) + 1]->get();
  }
  if (!persist_fp4_plan(table.data(), count, blocks, slices) || drop_units >= table[0].units) return out;
  for (const PersistFp4Stage& p : table) {
    out.splits.push_back(p.splits);
    out.slice_per.push_back(p.slice_per);
  }
  table[0].units -= drop_units;
  PersistScratch<Arr> scratch(count);
  std::vector<std::vector<float>> first;
  for (int launch = 0; launch < 2; ++launch) {
    const std::vector<unsigned long long> zeros(size_t(count) * kPersistTimeFields, 0ull);
    scratch.timeline = launch == 0 ? std::make_unique<Arr<unsigned long long>>(zeros) : nullptr;  // (the first)
    if (!scratch.launch(table.data(), count, launch_blocks ? launch_blocks : blocks, false, fp8)) return out;
    if (launch == 0) {
      out.timeline.resize(static_cast<size_t>(count));
      persist_read_times(scratch.timeline->download().data(), out.timeline);
    }
    std::vector<std::vector<float>> got;
    for (int s = 0; s <= count; ++s) got.push_back(act[size_t(s)]->download());
    if (launch == 0) first = std::move(got);
    else out.repeat_equal = got == first;
  }
  out.fault = scratch.fault_report();
  out.counters = scratch.counters->download();
  out.done = scratch.done.download();
  out.tickets = scratch.tickets.download();
  out.acts = first;

  // Each stage against kernel 3 and the CPU on the inputs it read.
  for (int s = 0; s < count; ++s) {
    const auto [rows, cols] = shapes[size_t(s)];
    const std::vector<float>& x = first[size_t(s)];
    const std::vector<float>& y = first[size_t(s) + 1];
    Fp4MatvecArgs k;
    k.w = w[size_t(s)]->t;
    k.n = 1;
    Arr<float> dx(x), dy(std::vector<float>(size_t(rows), NAN));
    k.x = dx.get();
    k.ldx = cols;
    k.y = dy.get();
    k.ldy = rows;
    if (!kernel3_alone<Arr>(k, sms, fp8)) return out;
    const std::vector<float> y3 = dy.download();
    const uint64_t rb = row_bytes(*type_info(GGML_NVFP4), cols);
    double big = 0.0, d3 = 0.0, dc = 0.0;
    std::vector<float> deq(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(GGML_NVFP4, rows_q[size_t(s)].data() + r * rb, deq.data(), cols);
      double ref = 0.0;
      for (int64_t c = 0; c < cols; ++c) ref += double(deq[size_t(c)]) * double(x[size_t(c)]);
      ref *= std::sqrt(12.0 / cols);
      big = std::max(big, std::fabs(ref));
      const double v = y[size_t(r)];
      d3 = std::isfinite(v) ? std::max(d3, std::fabs(v - double(y3[size_t(r)]))) : INFINITY;
      dc = std::isfinite(v) ? std::max(dc, std::fabs(v - ref)) : INFINITY;
    }
    out.worst_kernel3 = std::max(out.worst_kernel3, d3 / std::max(big, 1e-30));
    out.worst_cpu = std::max(out.worst_cpu, dc / std::max(big, 1e-30));
  }
  out.ok = true;
  return out;
}

struct PersistTailResult {
  bool ok = false;
  int fault = 0;
  bool repeat_equal = false;  // a second launch from the same inputs gave the same bits
  // Largest |difference| / largest |value| against the four products as
  // kernel-3 launches: the residual stream, the SwiGLU outputs, the input
  // projection's outputs, its conv window.
  double worst_h = 0.0, worst_act = 0.0, worst_mix = 0.0, worst_win = 0.0;
  // The input projection alone on the residual stream the persistent launch
  // left (its input there): the same inputs, so only the norm's factor and
  // the column slices differ.
  double worst_mix_same = 0.0, worst_win_same = 0.0;
  std::vector<int> counters, done;  // after the launches (all zero)
  std::vector<int> splits, kg_per, slice_per;  // as planned
  std::vector<bool> squares, norm_from_prev;
  std::vector<float> h, act, mix, window;  // what the persistent launch left
};

// A delta-net layer's tail for one activation row as one persistent launch
// (the backend's QWEN35_CUDA_FP4_PERSIST): the output projection with the
// gated RMSNorm (heads of dv) added into h, gate/up with the RMS norm and
// SwiGLU, down added into h, the next input projection (Nin rows) with the
// RMS norm and the causal conv over its first C outputs; against the same
// four products launched one by one with fp4_matvec (kernel 3). The norms'
// factors come from the sums of squares of the stage before there, from
// whole rows in kernel 3: the results agree to rounding, not bit for bit.
// inline_stages: the table travels in the launch's parameters (the
// backend's way), else in device memory. n: activation rows (1 or 2).
// slices: planned with slice waits.
template <template <typename> class Arr, typename Rand>
PersistTailResult run_persist_tail_case(int64_t D, int64_t F, int64_t Hv, int64_t dv, int64_t C, int64_t Nin,
                                        int blocks, int sms, Rand rand, bool inline_stages, int n = 1,
                                        bool slices = false) {
  using namespace qwen35::cuda;
  const int64_t Cv = Hv * dv, K = 4;
  CaseTiled<Arr> wout(random_nvfp4_rows(D, Cv, 21, rand), nullptr, D, Cv, 0.5f);
  CaseTiled<Arr> wgu(random_nvfp4_rows(F, D, 11, rand), &random_nvfp4_rows(F, D, 12, rand), F, D, 0.75f);
  CaseTiled<Arr> wdn(random_nvfp4_rows(D, F, 13, rand), nullptr, D, F, 0.5f);
  CaseTiled<Arr> win(random_nvfp4_rows(Nin, D, 25, rand), nullptr, Nin, D, 1.0f);
  PersistTailResult r;
  if (!wout.ok || !wgu.ok || !wdn.ok || !win.ok) return r;
  const std::vector<float> so = rand(size_t(n * Cv), 26, -1.0f, 1.0f), z = rand(size_t(n * Cv), 27, -2.0f, 2.0f),
                           gw = rand(size_t(dv), 28, 0.5f, 1.5f), h0 = rand(size_t(n * D), 29, -2.0f, 2.0f),
                           post = rand(size_t(D), 30, 0.5f, 1.5f), pre = rand(size_t(D), 31, 0.5f, 1.5f),
                           taps = rand(size_t(C * K), 32, -0.5f, 0.5f), win0 = rand(size_t((K - 1) * C), 33, -1.0f, 1.0f);
  Arr<float> dso(so), dz(z), dgw(gw), dpost(post), dpre(pre), dtaps(taps);
  // The four products as kernel 3 takes them.
  auto products = [&](float* h, float* act, float* mix, float* window) {
    std::vector<Fp4MatvecArgs> a(4);
    a[0].w = wout.t;
    a[0].x = dso.get();
    a[0].ldx = Cv;
    a[0].gate_z = dz.get();
    a[0].ldz = Cv;
    a[0].gate_w = dgw.get();
    a[0].gate_dv = int(dv);
    a[0].y = h;
    a[0].ldy = D;
    a[0].epilogue = Fp4Epilogue::Add;
    a[1].w = wgu.t;
    a[1].x = h;
    a[1].ldx = D;
    a[1].norm = dpost.get();
    a[1].y = act;
    a[1].ldy = F;
    a[1].epilogue = Fp4Epilogue::SwiGLU;
    a[2].w = wdn.t;
    a[2].x = act;
    a[2].ldx = F;
    a[2].y = h;
    a[2].ldy = D;
    a[2].epilogue = Fp4Epilogue::Add;
    a[3].w = win.t;
    a[3].x = h;
    a[3].ldx = D;
    a[3].norm = dpre.get();
    a[3].y = mix;
    a[3].ldy = Nin;
    a[3].epilogue = Fp4Epilogue::Conv;
    a[3].conv_taps = dtaps.get();
    a[3].conv_window = window;
    a[3].conv_channels = C;
    a[3].conv_k = int(K);
    for (Fp4MatvecArgs& s : a) {
      s.n = n;
      s.eps = 1e-6f;
    }
    return a;
  };
  const std::vector<float> nan_act(size_t(n * F), NAN), nan_mix(size_t(n * Nin), NAN);

  // Kernel 3, one launch per product.
  Arr<float> h3(h0), act3(nan_act), mix3(nan_mix), win3(win0);
  {
    uint64_t pf = 1, ci = 1;
    for (const Fp4Tiled* w : {&wout.t, &wgu.t, &wdn.t, &win.t}) {
      pf = std::max<uint64_t>(pf, fp4_partial_floats(*w, sms));
      ci = std::max<uint64_t>(ci, fp4_counter_ints(*w));
    }
    Arr<float> part(std::vector<float>(size_t(pf), 0.0f));
    Arr<int> cnt(std::vector<int>(size_t(ci), 0));
    for (Fp4MatvecArgs& s : products(h3.get(), act3.get(), mix3.get(), win3.get())) {
      s.partial = part.get();
      s.counters = cnt.get();
      if (fp4_matvec(s, sms, nullptr) != cudaSuccess) return r;
    }
  }
  const std::vector<float> h_k3 = h3.download(), act_k3 = act3.download(), mix_k3 = mix3.download(),
                           win_k3 = win3.download();

  // The persistent launch, twice from the same inputs (on the same counters).
  std::vector<PersistFp4Stage> table(4);
  PersistScratch<Arr> scratch(4);
  std::vector<float> first[4];
  for (int run = 0; run < 2; ++run) {
    Arr<float> h(h0), act(nan_act), mix(nan_mix), window(win0);
    const std::vector<Fp4MatvecArgs> k = products(h.get(), act.get(), mix.get(), window.get());
    for (int s = 0; s < 4; ++s)
      if (!persist_fp4_stage(k[size_t(s)], &table[size_t(s)])) return r;
    if (!persist_fp4_plan(table.data(), 4, blocks, slices)) return r;
    if (run == 0) {
      for (const PersistFp4Stage& p : table) {
        r.splits.push_back(p.splits);
        r.kg_per.push_back(p.kg_per);
        r.slice_per.push_back(p.slice_per);
        r.squares.push_back(p.squares);
        r.norm_from_prev.push_back(p.norm_from_prev);
      }
    }
    if (!scratch.launch(table.data(), 4, blocks, inline_stages)) return r;
    const std::vector<float> got[4] = {h.download(), act.download(), mix.download(), window.download()};
    if (run == 0) {
      for (int i = 0; i < 4; ++i) first[i] = got[i];
    } else {
      r.repeat_equal = true;
      for (int i = 0; i < 4; ++i) r.repeat_equal = r.repeat_equal && got[i] == first[i];
    }
  }
  r.fault = scratch.fault_report();
  r.counters = scratch.counters->download();
  r.done = scratch.done.download();
  {  // kernel 3's input projection on the h the persistent launch left
    Arr<float> h(first[0]), act(nan_act), mix(nan_mix), window(win0);
    if (!kernel3_alone<Arr>(products(h.get(), act.get(), mix.get(), window.get())[3], sms)) return r;
    r.worst_mix_same = worst_rel(first[2], mix.download());
    r.worst_win_same = worst_rel(first[3], window.download());
  }
  r.worst_h = worst_rel(first[0], h_k3);
  r.worst_act = worst_rel(first[1], act_k3);
  r.worst_mix = worst_rel(first[2], mix_k3);
  r.worst_win = worst_rel(first[3], win_k3);
  r.h = first[0];
  r.act = first[1];
  r.mix = first[2];
  r.window = first[3];
  r.ok = true;
  return r;
}

struct PersistDeltaResult {
  bool ok = false;
  int fault = 0;
  bool repeat_equal = false;  // a second launch from the same inputs gave the same bits
  // The delta rule against delta_net (8 elements per thread) on the inputs
  // the persistent launch's input projection left: the same bits.
  bool delta_equal = false;
  // Largest |difference| / largest |value|: the input projection (and its
  // window) against kernel 3 on the same input; the output projection's
  // residual stream against kernel 3 on the delta rule's outputs.
  double worst_mix = 0.0, worst_win = 0.0, worst_h = 0.0;
  std::vector<int> counters, done;  // after the launches (all zero)
  std::vector<int64_t> units;       // as planned
  std::vector<int> slice_per;       // as planned
  std::vector<float> h, mix, so;    // what the persistent launch left: [n, D], [n, Nin], [n, Hv dv]
};

// A delta-net layer's head for n rows (1 or 2) as one persistent launch: the input
// projection (RMS norm, causal conv over q|k|v) -> the delta rule -> the
// output projection (gated norm, added into h): the stages the backend's
// QWEN35_CUDA_FP4_PERSIST=2 puts between a layer's FFN and the next.
// slices: planned with slice waits (the output projection by heads).
template <template <typename> class Arr, typename Rand>
PersistDeltaResult run_persist_delta_case(int64_t D, int64_t Hk, int64_t Hv, int64_t dk, int64_t dv, int blocks,
                                          int sms, Rand rand, int n = 1, bool slices = false) {
  using namespace qwen35::cuda;
  const int64_t Cv = Hv * dv, C = 2 * Hk * dk + Cv, Nin = C + Cv + 2 * Hv, K = 4;
  CaseTiled<Arr> win(random_nvfp4_rows(Nin, D, 41, rand), nullptr, Nin, D, 1.0f);
  CaseTiled<Arr> wout(random_nvfp4_rows(D, Cv, 42, rand), nullptr, D, Cv, 0.5f);
  PersistDeltaResult r;
  if (!win.ok || !wout.ok) return r;
  // (Row 0's inputs do not depend on n: the rows are generated one by one.)
  std::vector<float> h0;
  for (int j = 0; j < n; ++j) {
    const std::vector<float> row = rand(size_t(D), 43 + 100 * j, -2.0f, 2.0f);
    h0.insert(h0.end(), row.begin(), row.end());
  }
  const std::vector<float> pre = rand(size_t(D), 44, 0.5f, 1.5f),
                           taps = rand(size_t(C * K), 45, -0.5f, 0.5f), win0 = rand(size_t((K - 1) * C), 46, -1.0f, 1.0f),
                           a_log = rand(size_t(Hv), 47, -2.0f, -0.1f), dtb = rand(size_t(Hv), 48, -1.0f, 1.0f),
                           st0 = rand(size_t(Hv * dv * dk), 49, -0.5f, 0.5f), gw = rand(size_t(dv), 50, 0.5f, 1.5f);
  Arr<float> dpre(pre), dtaps(taps), dalog(a_log), ddtb(dtb), dgw(gw);
  const std::vector<float> nan_mix(size_t(n * Nin), NAN), nan_so(size_t(n * Cv), NAN);
  const DeltaShape ds{Hk, Hv, dk, dv};
  auto in_args = [&](float* h, float* mix, float* window) {
    Fp4MatvecArgs a;
    a.w = win.t;
    a.n = n;
    a.x = h;
    a.ldx = D;
    a.norm = dpre.get();
    a.y = mix;
    a.ldy = Nin;
    a.epilogue = Fp4Epilogue::Conv;
    a.conv_taps = dtaps.get();
    a.conv_window = window;
    a.conv_channels = C;
    a.conv_k = int(K);
    return a;
  };
  auto delta = [&](float* mix, float* state, float* so) {
    DeltaNetArgs d = delta_args(ds, n, mix, Nin, mix + C + Cv, mix + C + Cv + Hv, Nin, dalog.get(), ddtb.get(), state,
                                so);
    d.elems_per_thread = 8;
    return d;
  };
  auto out_args = [&](float* so, const float* mix, float* h) {
    Fp4MatvecArgs a;
    a.w = wout.t;
    a.n = n;
    a.x = so;
    a.ldx = Cv;
    a.gate_z = mix + C;
    a.ldz = Nin;
    a.gate_w = dgw.get();
    a.gate_dv = int(dv);
    a.y = h;
    a.ldy = D;
    a.epilogue = Fp4Epilogue::Add;
    return a;
  };

  PersistScratch<Arr> scratch(3);
  std::vector<float> first[5];  // h, mix, window, state, so
  for (int run = 0; run < 2; ++run) {
    Arr<float> h(h0), mix(nan_mix), window(win0), state(st0), so(nan_so);
    PersistFp4Stage table[3];
    if (!persist_fp4_stage(in_args(h.get(), mix.get(), window.get()), &table[0]) ||
        !persist_delta_stage(delta(mix.get(), state.get(), so.get()), &table[1]) ||
        !persist_fp4_stage(out_args(so.get(), mix.get(), h.get()), &table[2]) ||
        !persist_fp4_plan(table, 3, blocks, slices))
      return r;
    if (run == 0) {
      for (const PersistFp4Stage& p : table) {
        r.units.push_back(p.units);
        r.slice_per.push_back(p.slice_per);
      }
    }
    if (!scratch.launch(table, 3, blocks, true)) return r;
    const std::vector<float> got[5] = {h.download(), mix.download(), window.download(), state.download(),
                                       so.download()};
    if (run == 0) {
      for (int i = 0; i < 5; ++i) first[i] = got[i];
    } else {
      r.repeat_equal = true;
      for (int i = 0; i < 5; ++i) r.repeat_equal = r.repeat_equal && got[i] == first[i];
    }
  }
  r.fault = scratch.fault_report();
  r.counters = scratch.counters->download();
  r.done = scratch.done.download();
  {  // the input projection: kernel 3 on the same h
    Arr<float> h(h0), mix(nan_mix), window(win0);
    if (!kernel3_alone<Arr>(in_args(h.get(), mix.get(), window.get()), sms)) return r;
    r.worst_mix = worst_rel(first[1], mix.download());
    r.worst_win = worst_rel(first[2], window.download());
  }
  {  // the delta rule: delta_net on the persistent launch's mix
    Arr<float> mix(first[1]), state(st0), so(nan_so);
    if (delta_net(delta(mix.get(), state.get(), so.get()), nullptr) != cudaSuccess) return r;
    r.delta_equal = state.download() == first[3] && so.download() == first[4];
  }
  {  // the output projection: kernel 3 on the persistent launch's delta outputs
    Arr<float> mix(first[1]), so(first[4]), h(h0);
    if (!kernel3_alone<Arr>(out_args(so.get(), mix.get(), h.get()), sms)) return r;
    r.worst_h = worst_rel(first[0], h.download());
  }
  r.h = first[0];
  r.mix = first[1];
  r.so = first[4];
  r.ok = true;
  return r;
}

// Every counter at zero (what each launch must leave for the next).
inline bool all_zero(const std::vector<int>& v) {
  return std::all_of(v.begin(), v.end(), [](int c) { return c == 0; });
}

// The same outputs and states, bit for bit (slice waits against whole-stage waits).
inline bool same_bits(const PersistTailResult& a, const PersistTailResult& b) {
  return a.h == b.h && a.act == b.act && a.mix == b.mix && a.window == b.window;
}
inline bool same_bits(const PersistDeltaResult& a, const PersistDeltaResult& b) {
  return a.h == b.h && a.mix == b.mix && a.so == b.so;
}

}  // namespace qwen35::test
