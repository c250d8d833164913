// The device's copy bandwidth, the benchmarks' roofline (as qwen35-bench's):
// bytes read plus written per second by a device-to-device copy of `bytes`
// on stream s, the median of 4 copies after a warm-up; 0 if a call fails.
// For the GPU tools (and the emulated matvec bench, whose runtime stand-ins
// time nothing).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <vector>

namespace qwen35::test {

inline double copy_bandwidth(size_t bytes, cudaStream_t s) {
  void *a = nullptr, *b = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  bool good = cudaMalloc(&a, bytes) == cudaSuccess && cudaMalloc(&b, bytes) == cudaSuccess &&
              cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess;
  std::vector<float> ms;
  for (int r = 0; good && r < 5; ++r) {
    float t = 0.0f;
    good = cudaEventRecord(e0, s) == cudaSuccess &&
           cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s) == cudaSuccess &&
           cudaEventRecord(e1, s) == cudaSuccess && cudaEventSynchronize(e1) == cudaSuccess &&
           cudaEventElapsedTime(&t, e0, e1) == cudaSuccess;
    if (good && r > 0 && t > 0.0f) ms.push_back(t);
  }
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (a) cudaFree(a);
  if (b) cudaFree(b);
  if (!good || ms.empty()) return 0.0;
  std::sort(ms.begin(), ms.end());
  return 2.0 * double(bytes) / (double(ms[ms.size() / 2]) * 1e-3);
}

}  // namespace qwen35::test
