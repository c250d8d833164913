// The softmax of the sampler without top-k, defined so that the host and a
// device compute the same bits: weights from a fixed-operation exp (plain
// IEEE double operations, none fused, no library call) and the normalizer
// summed in a fixed 32-ary tree over token ids. Used by Sampler (lib) and by
// the CUDA sampling kernels (cuda/topk.cu), which must agree bit for bit so
// that sampling from device-selected candidates equals sampling the row.
//
// Files that include this on the host must not let the compiler contract
// a product and a sum into an FMA (sampler.cpp is built with
// -ffp-contract=off; the device code uses the _rn intrinsics).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define QWEN35_SN_HD __host__ __device__ __forceinline__
#else
#define QWEN35_SN_HD inline
#endif

namespace qwen35 {

QWEN35_SN_HD double sn_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
QWEN35_SN_HD double sn_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
QWEN35_SN_HD double sn_sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
QWEN35_SN_HD double sn_div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

// exp(x) for x <= 0 to about 1e-14 relative; 0 below -700 (and for NaN).
// Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, with k rounded by the
// 1.5 * 2^52 trick (k is then also in the low bits of the sum), a degree-11
// Taylor polynomial in Horner form, and 2^k built from its bits (exact: the
// result is normal). No branches, so host compilers vectorize it.
QWEN35_SN_HD double det_exp(double x) {
  const bool zero = !(x >= -700.0);
  const double xc = zero ? 0.0 : x > 0.0 ? 0.0 : x;
  const double kInvLn2 = 1.4426950408889634;          // 1/ln 2
  const double kLn2Hi = 6.93147180369123816490e-01;    // ln 2, upper bits (k * hi is exact)
  const double kLn2Lo = 1.90821492927058770002e-10;    // ln 2 - hi
  const double kRound = 6755399441055744.0;            // 1.5 * 2^52
  const double t = sn_add(sn_mul(xc, kInvLn2), kRound);
  const double kd = sn_sub(t, kRound);
  const double r = sn_sub(sn_sub(xc, sn_mul(kd, kLn2Hi)), sn_mul(kd, kLn2Lo));
  // 1/n! for n = 11 .. 2, then 1, 1 (truncation below 1e-14 relative).
  double p = 1.0 / 39916800.0;
  p = sn_add(sn_mul(p, r), 1.0 / 3628800.0);
  p = sn_add(sn_mul(p, r), 1.0 / 362880.0);
  p = sn_add(sn_mul(p, r), 1.0 / 40320.0);
  p = sn_add(sn_mul(p, r), 1.0 / 5040.0);
  p = sn_add(sn_mul(p, r), 1.0 / 720.0);
  p = sn_add(sn_mul(p, r), 1.0 / 120.0);
  p = sn_add(sn_mul(p, r), 1.0 / 24.0);
  p = sn_add(sn_mul(p, r), 1.0 / 6.0);
  p = sn_add(sn_mul(p, r), 0.5);
  p = sn_add(sn_mul(p, r), 1.0);
  p = sn_add(sn_mul(p, r), 1.0);
  int64_t tb, rb;
  std::memcpy(&tb, &t, sizeof tb);
  std::memcpy(&rb, &kRound, sizeof rb);
  const uint64_t bits = uint64_t(tb - rb + 1023) << 52;  // k = tb - rb in -1010 .. 0
  double two_k;
  std::memcpy(&two_k, &bits, sizeof two_k);
  const double v = sn_mul(p, two_k);
  return zero ? 0.0 : v;
}

// The weight of an adjusted logit l when the best adjusted logit is `best`
// (finite), at temperature T: det_exp(l * inv_temp - mx) with inv_temp =
// 1.0 / T and mx = best * inv_temp (doubles); 0 for a non-finite l.
QWEN35_SN_HD double det_weight(float l, double inv_temp, double mx) {
  const bool finite = l == l && l != float(INFINITY) && l != -float(INFINITY);
  const double w = det_exp(sn_sub(sn_mul(double(finite ? l : 0.0f), inv_temp), mx));
  return finite ? w : 0.0;
}

// Fan-out of the normalizer's tree: level 1 sums 32 consecutive ids in id
// order (each sum starts at 0.0), level 2 sums 32 consecutive level-1 sums,
// and so on until one value is left.
constexpr int kNormFan = 32;

// The normalizer over an adjusted row of n logits: the tree sum of
// det_weight(l, inv_temp, mx). `scratch` holds ceil(n / 32) doubles.
inline double softmax_normalizer(const float* l, int64_t n, double inv_temp, double mx, double* scratch) {
  int64_t m = (n + kNormFan - 1) / kNormFan;
  for (int64_t j = 0; j < m; ++j) {
    const int64_t i0 = kNormFan * j, cnt = n - i0 < kNormFan ? n - i0 : kNormFan;
    double w[kNormFan];
    for (int64_t i = 0; i < cnt; ++i) w[i] = det_weight(l[i0 + i], inv_temp, mx);  // vectorizable
    double s = 0.0;
    for (int64_t i = 0; i < cnt; ++i) s = sn_add(s, w[i]);
    scratch[j] = s;
  }
  while (m > 1) {
    const int64_t up = (m + kNormFan - 1) / kNormFan;
    for (int64_t j = 0; j < up; ++j) {
      double s = 0.0;
      for (int64_t i = kNormFan * j; i < m && i < kNormFan * (j + 1); ++i) s = sn_add(s, scratch[i]);
      scratch[j] = s;  // j <= i: each level reads ahead of its writes
    }
    m = up;
  }
  return m == 1 ? scratch[0] : 0.0;
}

}  // namespace qwen35
