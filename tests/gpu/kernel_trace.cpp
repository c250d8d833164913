// CUPTI kernel timeline (see kernel_trace.h).
#include "kernel_trace.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

#ifdef QWEN35_HAVE_CUPTI
#include <cupti.h>
#include <cuda_runtime.h>
#include <cxxabi.h>
#endif

namespace qwen35::test {

namespace {

// "void qwen35::cuda::(anonymous namespace)::fp4_bulk_kernel<4, false, 1, false>(...)"
// -> "fp4_bulk_kernel<4, false, 1, false>".
std::string short_name(std::string s) {
  if (s.compare(0, 5, "void ") == 0) s.erase(0, 5);
  int depth = 0;
  size_t cut = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '<') {
      ++depth;
    } else if (c == '>') {
      --depth;
    } else if (depth == 0 && c == '(') {
      if (s.compare(i, 21, "(anonymous namespace)") == 0) {
        i += 20;
        continue;
      }
      s.resize(i);  // the parameter list
      break;
    } else if (depth == 0 && c == ':' && i + 1 < s.size() && s[i + 1] == ':') {
      cut = i + 2;
    }
  }
  return s.substr(cut);
}

#ifdef QWEN35_HAVE_CUPTI
std::mutex g_mu;
std::vector<KernelRecord> g_recs;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t(8) << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* rec = nullptr;
  std::vector<KernelRecord> got;
  while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      // Copies appear as "memcpy DtoH" etc. with the byte count as the grid.
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
      KernelRecord r;
      const char* dir = m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_HTOD   ? "HtoD"
                        : m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOH ? "DtoH"
                        : m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOD ? "DtoD"
                                                                         : "other";
      r.name = std::string("memcpy ") + dir + " (bytes)";
      r.grid[0] = uint32_t(std::min<uint64_t>(m->bytes, UINT32_MAX));
      r.grid[1] = r.grid[2] = 0;
      r.start = m->start;
      r.end = m->end;
      got.push_back(std::move(r));
      continue;
    }
    if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && rec->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
    KernelRecord r;
    int status = 0;
    char* dem = abi::__cxa_demangle(k->name, nullptr, nullptr, &status);
    r.name = short_name(status == 0 && dem ? dem : k->name);
    std::free(dem);
    r.grid[0] = uint32_t(k->gridX);
    r.grid[1] = uint32_t(k->gridY);
    r.grid[2] = uint32_t(k->gridZ);
    r.start = k->start;
    r.end = k->end;
    got.push_back(std::move(r));
  }
  std::free(buffer);
  std::lock_guard<std::mutex> lock(g_mu);
  g_recs.insert(g_recs.end(), got.begin(), got.end());
}
#endif

}  // namespace

bool trace_start(std::string* why) {
#ifdef QWEN35_HAVE_CUPTI
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_recs.clear();
  }
  static bool registered = false;
  if (!registered) {
    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS) {
      *why = "cuptiActivityRegisterCallbacks failed";
      return false;
    }
    registered = true;
  }
  CUptiResult r = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  if (r == CUPTI_SUCCESS) r = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  if (r != CUPTI_SUCCESS) {
    const char* s = nullptr;
    cuptiGetResultString(r, &s);
    *why = std::string("cuptiActivityEnable: ") + (s ? s : "error");
    return false;
  }
  return true;
#else
  *why = "built without CUPTI";
  return false;
#endif
}

std::vector<KernelRecord> trace_stop() {
  std::vector<KernelRecord> out;
#ifdef QWEN35_HAVE_CUPTI
  cudaDeviceSynchronize();
  cuptiActivityFlushAll(1);
  cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityDisable(CUPTI_ACTIVITY_KIND_MEMCPY);
  std::lock_guard<std::mutex> lock(g_mu);
  out.swap(g_recs);
#endif
  std::sort(out.begin(), out.end(), [](const KernelRecord& a, const KernelRecord& b) { return a.start < b.start; });
  return out;
}

void trace_report(const std::vector<KernelRecord>& recs, int steps, FILE* out) {
  if (recs.empty() || steps < 1) {
    std::fprintf(out, "trace| no kernel records\n");
    return;
  }
  // The union of the kernels' busy intervals, and each kernel's share of it.
  struct Agg {
    int count = 0;
    double dur = 0, adds = 0;
  };
  std::map<std::tuple<std::string, uint32_t, uint32_t, uint32_t>, Agg> by;
  std::vector<std::tuple<std::string, uint32_t, uint32_t, uint32_t>> order;
  uint64_t latest_end = recs.front().start, busy = 0, cover_end = recs.front().start;
  for (const KernelRecord& r : recs) {
    const auto key = std::make_tuple(r.name, r.grid[0], r.grid[1], r.grid[2]);
    Agg& a = by[key];
    if (a.count == 0) order.push_back(key);
    ++a.count;
    a.dur += double(r.end - r.start);
    // Its share of the union of the busy intervals (walked in start order).
    if (r.end > cover_end) {
      const uint64_t add = r.end - std::max(r.start, cover_end);
      a.adds += double(add);
      busy += add;
      cover_end = r.end;
    }
    latest_end = std::max(latest_end, r.end);
  }
  const double span = double(latest_end - recs.front().start) / 1e3 / steps;
  const double busy_us = double(busy) / 1e3 / steps;
  std::fprintf(out,
               "trace| per step: %.1f us from the first kernel's start to the last end, %zu kernels, busy %.1f us, "
               "idle %.1f us\n",
               span, recs.size() / size_t(steps), busy_us, span - busy_us);
  std::fprintf(out, "trace| %-44s %-14s %9s %9s %9s\n", "kernel", "grid", "per step", "mean us", "busy us");
  // Heaviest first by the time they add.
  std::stable_sort(order.begin(), order.end(), [&](const auto& x, const auto& y) { return by[x].adds > by[y].adds; });
  for (const auto& key : order) {
    const Agg& a = by[key];
    char grid[48];
    std::snprintf(grid, sizeof grid, "(%u,%u,%u)", std::get<1>(key), std::get<2>(key), std::get<3>(key));
    std::string name = std::get<0>(key);
    if (name.size() > 44) name = name.substr(0, 41) + "...";
    std::fprintf(out, "trace| %-44s %-14s %9.1f %9.2f %9.1f\n", name.c_str(), grid, double(a.count) / steps,
                 a.dur / a.count / 1e3, a.adds / steps / 1e3);
  }
}

}  // namespace qwen35::test
