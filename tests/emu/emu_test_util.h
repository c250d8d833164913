// Helpers of the emulated kernel tests (test_cuda_emu*.cpp).
#pragma once

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace qwen35::test {

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// ||a - b|| / ||b||; NaN never passes.
inline double rel(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline uint16_t to_f16(float x) { return __half_as_ushort(__float2half_rn(x)); }
inline float from_f16(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// "Device" arrays of the emulation: host vectors.
template <typename T>
struct HostArray {
  std::vector<T> v;
  explicit HostArray(const std::vector<T>& h) : v(h) {}
  T* get() { return v.data(); }
  std::vector<T> download() const { return v; }
};

}  // namespace qwen35::test
