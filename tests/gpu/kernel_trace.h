// Kernel timeline of a measured region (CUPTI activity records, real clocks,
// PDL overlap and CUDA graphs as they run), for qwen35-cuda-bench --trace.
// Built with CUPTI when CMake finds it (CUDA::cupti); otherwise start()
// says it is unavailable.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace qwen35::test {

struct KernelRecord {
  std::string name;  // demangled, namespaces and template arguments shortened; "memcpy DtoH (bytes)" etc.
  uint32_t grid[3] = {1, 1, 1};  // copies: {bytes, 0, 0}
  uint64_t start = 0, end = 0;  // ns
};

// Begins collecting kernel records; false (and *why) if CUPTI is missing or
// refuses.
bool trace_start(std::string* why);
// Waits for the device, stops, and returns the records sorted by start.
std::vector<KernelRecord> trace_stop();

// Prints "trace|" lines for a region of `steps` repetitions (decode steps,
// or 1 for a prefill): per step the span (first start to last end), the
// union of the kernels' busy intervals, the idle rest (gaps between kernels
// and, for decode steps, the host's time between graph launches); per kernel
// (name and grid) the launches per step, the mean duration (start to end:
// under PDL a kernel starts early and waits, so this includes the wait) and
// its share of the busy union per step (the part of its interval that no
// earlier kernel covers: the number to compare with a floor).
void trace_report(const std::vector<KernelRecord>& recs, int steps, FILE* out);

}  // namespace qwen35::test
