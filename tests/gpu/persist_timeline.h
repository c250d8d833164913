// The persistent kernel's timeline probe (PersistFp4Args::timeline) in
// `persist-tl` lines, for qwen35-persist-bench and qwen35-cuda-bench: per
// stage kind and shape, the mean wait from the stage before's last tile to
// the stage's first unit with its inputs (the dependency's latency;
// negative where stages wait by column slice and start early), the mean
// span from there to the stage's last tile (its units' work, the split-K
// combine, the epilogue), the mean spread of its units' ready times, and
// the mean time from the stage before's last tile to the stage's (wait +
// span: the stage's share of the sequence's critical path); then the whole
// sequence.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "persist_fp4.h"

namespace qwen35::test {

// Whether a probe's stage times are ordered as the waits make them: per
// stage, every time written, the first unit started before any had its
// inputs, the first had them before the last, and the last tile was done
// after; and no unit of a stage had its inputs before the stage before was
// done (strictly, where the clock counts every reading: the emulation's).
// by_slice: the stages wait by column slice, so a stage's units have their
// inputs after the stage before's first unit had its, and its last tile is
// done after the stage before's.
inline bool timeline_ordered(const std::vector<cuda::PersistStageTime>& st, bool strict, bool by_slice = false) {
  using namespace qwen35::cuda;
  for (size_t s = 0; s < st.size(); ++s) {
    const unsigned long long* t = st[s].t;
    for (int f = 0; f < kPersistTimeFields; ++f)
      if (t[f] == 0) return false;  // (not written)
    if (t[kTimeFirstStart] > t[kTimeFirstReady] || t[kTimeFirstReady] > t[kTimeLastReady] ||
        t[kTimeLastReady] > t[kTimeLastDone])
      return false;
    if (s == 0) continue;
    const unsigned long long* b = st[s - 1].t;
    const auto after = [&](unsigned long long later, unsigned long long earlier) {
      return strict ? later > earlier : later >= earlier;
    };
    if (by_slice ? !after(t[kTimeFirstReady], b[kTimeFirstReady]) || !after(t[kTimeLastDone], b[kTimeLastDone])
                 : !after(t[kTimeFirstReady], b[kTimeLastDone]))
      return false;
  }
  return !st.empty();
}

inline void print_persist_timeline(const std::vector<cuda::PersistStageTime>& st, const char* label) {
  using namespace qwen35::cuda;
  struct Sum {
    std::string what;
    int n = 0;
    double wait = 0, span = 0, spread = 0, step = 0;
  };
  std::vector<Sum> groups;
  Sum all;
  auto us = [&](size_t s, int f) { return double(st[s].t[f]) / 1e3; };
  for (size_t s = 1; s < st.size(); ++s) {
    const char* kind = st[s].kind == PersistKind::Product     ? "product"
                       : st[s].kind == PersistKind::DeltaRule ? "delta rule"
                                                              : "attention";
    const std::string what = std::string(kind) + " " + std::to_string(st[s].rows) + " x " + std::to_string(st[s].cols);
    Sum* g = nullptr;
    for (Sum& e : groups)
      if (e.what == what) g = &e;
    if (!g) {
      groups.push_back({what});
      g = &groups.back();
    }
    const double wait = us(s, kTimeFirstReady) - us(s - 1, kTimeLastDone),
                 span = us(s, kTimeLastDone) - us(s, kTimeFirstReady),
                 spread = us(s, kTimeLastReady) - us(s, kTimeFirstReady);
    for (Sum* m : {g, &all}) {
      ++m->n;
      m->wait += wait;
      m->span += span;
      m->spread += spread;
      m->step += wait + span;
    }
  }
  std::printf("persist-tl| %s | stage | count | wait for the stage before, us | span, us | ready spread, us | "
              "last tile after the stage before's, us\n",
              label);
  for (const Sum& m : groups)
    std::printf("persist-tl| %s | %s | %d | %.2f | %.2f | %.2f | %.2f\n", label, m.what.c_str(), m.n, m.wait / m.n,
                m.span / m.n, m.spread / m.n, m.step / m.n);
  if (!st.empty())
    std::printf("persist-tl| %s | %zu stages: %.1f us from the first unit to the last tile; waits %.1f us, "
                "spans %.1f us\n",
                label, st.size(), us(st.size() - 1, kTimeLastDone) - us(0, kTimeFirstStart), all.wait, all.span);
}

}  // namespace qwen35::test
