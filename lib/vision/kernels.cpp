#include "vision/kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "ggml_types.h"
#include "quants.h"

// Per-ISA code from one source: GCC/Clang vector extensions give every
// vector width. On x86 the micro-kernel is compiled for AVX-512, AVX2+FMA and
// baseline and picked with __builtin_cpu_supports; the element-wise loops are
// GCC ifunc clones (target_clones), left out of sanitizer builds so that
// those see plain functions.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QWEN35_X86_CLONES 1
#else
#define QWEN35_X86_CLONES 0
#endif
#if QWEN35_X86_CLONES && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define QWEN35_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define QWEN35_CLONES
#endif
#define QWEN35_INLINE inline __attribute__((always_inline))
// Vector values are only passed between always-inline helpers, so the
// "ABI changes without AVX" note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace qwen35::vision {

namespace {

template <int V>
struct VecT;
template <>
struct VecT<4> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct VecT<8> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecT<16> {
  typedef float type __attribute__((vector_size(64)));
};
using v8 = VecT<8>::type;

QWEN35_INLINE v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// ---- micro-kernel ------------------------------------------------------------

// tile[MR][V*NV] = A[0..MR)[0..K) . B[0..K)[0..V*NV): MR x NV vector
// accumulators stay in registers; per k one row of B is loaded and each A
// element is broadcast against it.
template <int MR, int V, int NV>
QWEN35_INLINE void tile_body(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float* tile) {
  using vf = typename VecT<V>::type;
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = vf{};
  for (int64_t k = 0; k < K; ++k) {
    vf b[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) std::memcpy(&b[j], B + k * ldb + j * V, sizeof(vf));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const float a = A[i * lda + k];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] += a * b[j];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) std::memcpy(tile + i * V * NV + j * V, &acc[i][j], sizeof(vf));
}

using TileFn = void (*)(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float* tile);

struct KernelSet {
  int mr, nr;
  TileFn tile;
  const char* name;
};

#if QWEN35_X86_CLONES
__attribute__((target("avx512f,avx512vl,avx512dq,fma"))) void tile_avx512(const float* A, int64_t lda,
                                                                           const float* B, int64_t ldb, int64_t K,
                                                                           float* tile) {
  tile_body<8, 16, 2>(A, lda, B, ldb, K, tile);
}
__attribute__((target("avx2,fma"))) void tile_avx2(const float* A, int64_t lda, const float* B, int64_t ldb,
                                                   int64_t K, float* tile) {
  tile_body<6, 8, 2>(A, lda, B, ldb, K, tile);
}
#endif
void tile_generic(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float* tile) {
  tile_body<4, 4, 2>(A, lda, B, ldb, K, tile);
}

// Variants this CPU can run, best first.
std::vector<KernelSet> supported_kernels() {
  std::vector<KernelSet> v;
#if QWEN35_X86_CLONES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    v.push_back(KernelSet{8, 32, tile_avx512, "avx512"});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) v.push_back(KernelSet{6, 16, tile_avx2, "avx2"});
#endif
  v.push_back(KernelSet{4, 8, tile_generic, "generic"});
  return v;
}

const std::vector<KernelSet>& kernel_list() {
  static const std::vector<KernelSet> v = supported_kernels();
  return v;
}

std::atomic<const KernelSet*> g_kernel{nullptr};

const KernelSet& kernels() {
  const KernelSet* k = g_kernel.load(std::memory_order_acquire);
  return k ? *k : kernel_list().front();
}

// Convert elements [k0, k0 + n) of weight row r to F32. k0 and n are
// multiples of the type's block size.
void weight_row_f32(const Weight& W, int64_t r, int64_t k0, int64_t n, float* dst) {
  const uint8_t* row = W.row(r);
  switch (W.type) {
    case GGML_F32:
      std::memcpy(dst, row + k0 * 4, size_t(n) * 4);
      return;
    case GGML_F16:
      fp16_to_fp32_row(reinterpret_cast<const uint16_t*>(row) + k0, dst, n);
      return;
    default: {
      const TypeInfo* ti = type_info(W.type);
      dequantize_row(W.type, row + uint64_t(k0 / ti->block) * uint64_t(ti->block_bytes), dst, n);
      return;
    }
  }
}

// Loop tiling of gemm_weight (see kernels.h): a group of kPanels weight
// panels, KC inputs deep, is packed (kPanels * KC * NR floats, L2 sized) and
// every MR-row block of X is run against each panel (the X block stays in
// L1 across the group).
constexpr int64_t kKC = 256;
constexpr int64_t kPanels = 4;

}  // namespace

// ---- element-wise -------------------------------------------------------------

QWEN35_CLONES void fp16_to_fp32_row(const uint16_t* src, float* dst, int64_t n) {
  // Branch-free conversion (after Maratyszcza's FP16 library) so that it
  // vectorizes: normals by exponent rebias, subnormals via a float subtract.
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t w = uint32_t(src[i]) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    uint32_t nb = (two_w >> 4) + (0xE0u << 23);
    float normalized;
    std::memcpy(&normalized, &nb, 4);
    normalized *= 0x1.0p-112f;
    uint32_t db = (two_w >> 17) | (126u << 23);
    float denormalized;
    std::memcpy(&denormalized, &db, 4);
    denormalized -= 0.5f;
    uint32_t nbits, dbits;
    std::memcpy(&nbits, &normalized, 4);
    std::memcpy(&dbits, &denormalized, 4);
    const uint32_t bits = sign | (two_w < (1u << 27) ? dbits : nbits);
    std::memcpy(dst + i, &bits, 4);
  }
}

namespace {

// exp(x) to about 1 ulp for x in [-87, 88] (clamped outside), vectorizable:
// Cody-Waite reduction by ln 2 and Cephes' degree-6 polynomial.
QWEN35_INLINE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t e = uint32_t(int32_t(n) + 127) << 23;
  float s;
  std::memcpy(&s, &e, 4);
  return p * s;
}

// Row sum with 4 x 8 independent accumulators and row max over 8 lanes: a
// fixed order (reproducible results) without relying on -ffast-math.
QWEN35_INLINE float row_sum(const float* x, int64_t n) {
  v8 a0{}, a1{}, a2{}, a3{};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 += load8(x + i);
    a1 += load8(x + i + 8);
    a2 += load8(x + i + 16);
    a3 += load8(x + i + 24);
  }
  v8 a = (a0 + a1) + (a2 + a3);
  float s = 0.0f;
  for (int j = 0; j < 8; ++j) s += a[j];
  for (; i < n; ++i) s += x[i];
  return s;
}

QWEN35_INLINE float row_max(const float* x, int64_t n) {
  float m = x[0];
  int64_t i = 0;
  if (n >= 8) {
    v8 a = load8(x);
    for (i = 8; i + 8 <= n; i += 8) {
      v8 b = load8(x + i);
      a = a > b ? a : b;
    }
    for (int j = 0; j < 8; ++j) m = a[j] > m ? a[j] : m;
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

}  // namespace

QWEN35_CLONES void layer_norm(const float* x, const float* g, const float* b, int64_t n, float eps, float* y) {
  const float mean = row_sum(x, n) / float(n);
  v8 a0{}, a1{};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    v8 d0 = load8(x + i) - mean, d1 = load8(x + i + 8) - mean;
    a0 += d0 * d0;
    a1 += d1 * d1;
  }
  v8 a = a0 + a1;
  float var = 0.0f;
  for (int j = 0; j < 8; ++j) var += a[j];
  for (; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= float(n);
  const float inv = 1.0f / std::sqrt(var + eps);
  for (int64_t k = 0; k < n; ++k) y[k] = (x[k] - mean) * inv * g[k] + b[k];
}

void layer_norm_ref(const float* x, const float* g, const float* b, int64_t n, float eps, float* y) {
  double mean = 0.0;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= double(n);
  double var = 0.0;
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= double(n);
  const double inv = 1.0 / std::sqrt(var + double(eps));
  for (int64_t i = 0; i < n; ++i) y[i] = float((x[i] - mean) * inv * g[i] + b[i]);
}

QWEN35_CLONES void gelu_tanh(float* x, int64_t n) {
  // 0.5 x (1 + tanh(u)) == x * sigmoid(2u): one exp, no cancellation.
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    x[i] = v / (1.0f + exp_approx(-2.0f * u));
  }
}

void gelu_tanh_ref(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    x[i] = float(0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))));
  }
}

void gelu_erf(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    x[i] = float(0.5 * v * (1.0 + std::erf(v * 0.7071067811865476)));
  }
}

void rope2d_head(float* v, const float* cs, const float* sn, int64_t half) {
  for (int64_t d = 0; d < half; ++d) {
    const float a = v[d], b = v[d + half];
    v[d] = a * cs[d] - b * sn[d];
    v[d + half] = b * cs[d] + a * sn[d];
  }
}

QWEN35_CLONES void softmax(float* x, int64_t n) {
  const float m = row_max(x, n);
  for (int64_t i = 0; i < n; ++i) x[i] = exp_approx(x[i] - m);
  const float inv = 1.0f / row_sum(x, n);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void softmax_ref(float* x, int64_t n) {
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += (x[i] = std::exp(x[i] - m));
  const float inv = float(1.0 / s);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

const char* gemm_kernel_name() { return kernels().name; }

std::vector<std::string> gemm_kernel_names() {
  std::vector<std::string> names;
  for (const KernelSet& k : kernel_list()) names.push_back(k.name);
  return names;
}

bool select_gemm_kernel(const std::string& name) {
  if (name.empty()) {
    g_kernel.store(nullptr, std::memory_order_release);
    return true;
  }
  for (const KernelSet& k : kernel_list())
    if (name == k.name) {
      g_kernel.store(&k, std::memory_order_release);
      return true;
    }
  return false;
}

// ---- matrix products -----------------------------------------------------------

void gemm_weight(const float* X, int64_t M, int64_t ldx, const Weight& W, const float* bias, float* Y, int64_t ldy,
                 ThreadPool& tp) {
  const KernelSet& ks = kernels();
  const int64_t MR = ks.mr, NR = ks.nr, K = W.cols, N = W.rows;
  const int64_t n_panels = (N + NR - 1) / NR;
  tp.parallel_for(n_panels, 1, [&](int64_t p_begin, int64_t p_end) {
    std::vector<float> pack(static_cast<size_t>(kPanels * kKC * NR));  // [kPanels][KC][NR]
    std::vector<float> row(static_cast<size_t>(kKC));
    std::vector<float> a_tail(static_cast<size_t>(MR * kKC), 0.0f);    // [MR][KC] zero-padded last row block
    std::vector<float> tile(static_cast<size_t>(MR * NR));
    for (int64_t pg = p_begin; pg < p_end; pg += kPanels) {
      const int64_t np = std::min(kPanels, p_end - pg);
      for (int64_t k0 = 0; k0 < K; k0 += kKC) {
        const int64_t kc = std::min(kKC, K - k0);
        // Pack: panel p holds weight rows n0..n0+NR-1 transposed, [kc][NR].
        for (int64_t p = 0; p < np; ++p) {
          float* panel = pack.data() + p * kKC * NR;
          for (int64_t r = 0; r < NR; ++r) {
            const int64_t n = (pg + p) * NR + r;
            if (n < N) weight_row_f32(W, n, k0, kc, row.data());
            else std::fill(row.begin(), row.begin() + kc, 0.0f);
            for (int64_t k = 0; k < kc; ++k) panel[k * NR + r] = row[size_t(k)];
          }
        }
        for (int64_t m0 = 0; m0 < M; m0 += MR) {
          const int64_t mr = std::min(MR, M - m0);
          const float* A = X + m0 * ldx + k0;
          int64_t lda = ldx;
          if (mr < MR) {
            std::fill(a_tail.begin(), a_tail.end(), 0.0f);
            for (int64_t i = 0; i < mr; ++i) std::memcpy(&a_tail[size_t(i * kc)], A + i * ldx, size_t(kc) * 4);
            A = a_tail.data();
            lda = kc;
          }
          for (int64_t p = 0; p < np; ++p) {
            ks.tile(A, lda, pack.data() + p * kKC * NR, NR, kc, tile.data());
            const int64_t n0 = (pg + p) * NR, nn = std::min(NR, N - n0);
            for (int64_t i = 0; i < mr; ++i) {
              float* y = Y + (m0 + i) * ldy + n0;
              const float* t = tile.data() + i * NR;
              if (k0 == 0) {
                for (int64_t j = 0; j < nn; ++j) y[j] = t[j];
              } else {
                for (int64_t j = 0; j < nn; ++j) y[j] += t[j];
              }
            }
          }
        }
      }
      // Per-tensor scale and bias once the sums are complete.
      const int64_t n_begin = pg * NR, n_end = std::min(N, (pg + np) * NR);
      if (W.scale != 1.0f || bias)
        for (int64_t m = 0; m < M; ++m) {
          float* y = Y + m * ldy;
          for (int64_t n = n_begin; n < n_end; ++n) y[n] = y[n] * W.scale + (bias ? bias[n] : 0.0f);
        }
    }
  });
}

void gemm_weight_ref(const float* X, int64_t M, int64_t ldx, const Weight& W, const float* bias, float* Y,
                     int64_t ldy, ThreadPool& tp) {
  const int64_t K = W.cols;
  tp.parallel_for(W.rows, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row(W.type, W.row(r), row.data(), K);
      for (int64_t m = 0; m < M; ++m) {
        const float* x = X + m * ldx;
        float acc = 0.0f;
        for (int64_t k = 0; k < K; ++k) acc += row[size_t(k)] * x[k];
        Y[m * ldy + r] = acc * W.scale + (bias ? bias[r] : 0.0f);
      }
    }
  });
}

void gemm_f32_kn(const float* A, int64_t M, int64_t lda, const float* B, int64_t ldb, int64_t N, int64_t K,
                 float alpha, float* C, int64_t ldc) {
  const KernelSet& ks = kernels();
  const int64_t MR = ks.mr, NR = ks.nr;
  std::vector<float> b_tail, a_tail, tile(size_t(MR * NR));
  for (int64_t n0 = 0; n0 < N; n0 += NR) {
    const int64_t nn = std::min(NR, N - n0);
    const float* Bp = B + n0;
    int64_t ldbp = ldb;
    if (nn < NR) {  // last columns: zero-padded copy [K][NR]
      b_tail.assign(size_t(K * NR), 0.0f);
      for (int64_t k = 0; k < K; ++k) std::memcpy(&b_tail[size_t(k * NR)], B + k * ldb + n0, size_t(nn) * 4);
      Bp = b_tail.data();
      ldbp = NR;
    }
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int64_t mr = std::min(MR, M - m0);
      const float* Ap = A + m0 * lda;
      int64_t ldap = lda;
      if (mr < MR) {  // last rows: zero-padded copy [MR][K]
        a_tail.assign(size_t(MR * K), 0.0f);
        for (int64_t i = 0; i < mr; ++i) std::memcpy(&a_tail[size_t(i * K)], Ap + i * lda, size_t(K) * 4);
        Ap = a_tail.data();
        ldap = K;
      }
      ks.tile(Ap, ldap, Bp, ldbp, K, tile.data());
      for (int64_t i = 0; i < mr; ++i)
        for (int64_t j = 0; j < nn; ++j) C[(m0 + i) * ldc + n0 + j] = alpha * tile[size_t(i * NR + j)];
    }
  }
}

void gemm_f32_kn_ref(const float* A, int64_t M, int64_t lda, const float* B, int64_t ldb, int64_t N, int64_t K,
                     float alpha, float* C, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += A[m * lda + k] * B[k * ldb + n];
      C[m * ldc + n] = alpha * acc;
    }
}

}  // namespace qwen35::vision
