// Helpers for the GPU tests: skipping without a device, device arrays.
#pragma once

#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.h"

namespace qwen35::test {

// True when a usable CUDA device exists. Without one, every GPU test case
// returns early after saying so once: the tests pass (as skipped) on CPU-only
// CI machines.
inline bool gpu_available() {
  static const bool ok = [] {
    const bool a = CudaAvailable();
    if (!a) std::printf("GPU tests skipped: no usable CUDA device\n");
    return a;
  }();
  return ok;
}

#define QWEN35_REQUIRE_GPU()                  \
  do {                                        \
    if (!::qwen35::test::gpu_available()) {   \
      MESSAGE("skipped: no CUDA device");     \
      return;                                 \
    }                                         \
  } while (0)

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// A device array with host upload/download.
template <typename T>
class DevArray {
 public:
  DevArray() = default;
  explicit DevArray(size_t n) { alloc(n); }
  explicit DevArray(const std::vector<T>& h) {
    alloc(h.size());
    upload(h);
  }
  ~DevArray() {
    if (p_) cudaFree(p_);
  }
  DevArray(const DevArray&) = delete;
  DevArray& operator=(const DevArray&) = delete;

  void alloc(size_t n) {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = n;
    cuda_check(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc");
    cuda_check(cudaMemset(p_, 0, std::max<size_t>(n, 1) * sizeof(T)), "cudaMemset");
  }
  void upload(const std::vector<T>& h) {
    cuda_check(cudaMemcpy(p_, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    cuda_check(cudaDeviceSynchronize(), "kernel");
    cuda_check(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return h;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

}  // namespace qwen35::test
