// A case of the persistent NVFP4 sequence (persist_fp4.h) for the GPU op
// test and the emulated kernels: each stage's outputs against the same
// product launched alone with fp4_matvec (kernel 3) on the inputs the
// persistent launch read, and against the CPU (double sums of the GGUF
// rows). Arr is a device-array template (DevArray on the GPU, a host
// vector in the emulation); rand(n, seed, lo, hi) gives n uniform floats.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "chain_case.h"
#include "ggml_types.h"
#include "matvec_fp4.h"
#include "persist_fp4.h"
#include "quants.h"

namespace qwen35::test {

struct PersistCaseResult {
  bool ok = false;
  int fault = 0;
  bool repeat_equal = false;   // a second launch gave the same bits
  double worst_kernel3 = 0.0;  // largest |difference| / largest |output| against kernel 3, over the stages
  double worst_cpu = 0.0;      // the same against the CPU
  std::vector<int> counters;   // after the launches (all zero)
  std::vector<int> splits;     // each stage's column slices as planned
};

// Stages of (rows, cols); stage s reads the first cols_s outputs of stage
// s-1 (rows_{s-1} >= cols_s). `blocks` blocks (1 in the emulation), kernel
// 3's geometry for `sms` multiprocessors.
template <template <typename> class Arr, typename Rand>
PersistCaseResult run_persist_case(const std::vector<std::pair<int64_t, int64_t>>& shapes, int blocks, int sms,
                                   Rand rand) {
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
  if (!persist_fp4_plan(table.data(), count, blocks)) return out;
  for (const PersistFp4Stage& p : table) out.splits.push_back(p.splits);
  const PersistFp4Sizes sizes = persist_fp4_sizes(table.data(), count);
  Arr<PersistFp4Stage> dtable(table);
  Arr<float> partial(std::vector<float>(size_t(2 * sizes.partial_half + 1), 0.0f));
  Arr<int> counters(std::vector<int>(size_t(2 * sizes.counter_half + 1), 0));
  Arr<int> done(std::vector<int>(size_t(count) * kPersistDoneStride, 0)), fault(std::vector<int>(1, 0));
  PersistFp4Args a;
  a.stages = dtable.get();
  a.count = count;
  a.sizes = sizes;
  a.partial = partial.get();
  a.counters = counters.get();
  a.done = done.get();
  a.fault = fault.get();
  std::vector<std::vector<float>> first;
  for (int launch = 0; launch < 2; ++launch) {
    if (persist_fp4(a, blocks, nullptr) != cudaSuccess) return out;
    std::vector<std::vector<float>> got;
    for (int s = 0; s <= count; ++s) got.push_back(act[size_t(s)]->download());
    if (launch == 0) first = std::move(got);
    else out.repeat_equal = got == first;
  }
  out.fault = fault.download()[0];
  out.counters = counters.download();

  // Each stage against kernel 3 and the CPU on the inputs it read.
  for (int s = 0; s < count; ++s) {
    const auto [rows, cols] = shapes[size_t(s)];
    const std::vector<float>& x = first[size_t(s)];
    const std::vector<float>& y = first[size_t(s) + 1];
    Fp4MatvecArgs k;
    k.w = w[size_t(s)]->t;
    k.n = 1;
    Arr<float> dx(x), dy(std::vector<float>(size_t(rows), NAN));
    Arr<float> kp(std::vector<float>(size_t(fp4_partial_floats(k.w, sms) + 1), 0.0f));
    Arr<int> kc(std::vector<int>(size_t(fp4_counter_ints(k.w) + 1), 0));
    k.x = dx.get();
    k.ldx = cols;
    k.y = dy.get();
    k.ldy = rows;
    k.partial = kp.get();
    k.counters = kc.get();
    if (fp4_matvec(k, sms, nullptr) != cudaSuccess) return out;
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

}  // namespace qwen35::test
