// Portable kernels: plain C++ for any CPU. The quantized matrix products
// follow the same integer math as the SIMD kernels (exact integer sums per
// group of 16, scaled in F32), so every kernel set computes the same
// quantity and differs only in F32 rounding.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/kernels.h"
#include "ggml_types.h"
#include "quants.h"

namespace qwen35::cpu {
namespace generic {

// ---- SIMD wrapper for vecops.inc: four lanes as a plain array --------------

constexpr int W = 4;
struct F {
  float v[W];
};
inline F vzero() { return F{{0, 0, 0, 0}}; }
inline F vset1(float a) { return F{{a, a, a, a}}; }
inline F vload(const float* p) { return F{{p[0], p[1], p[2], p[3]}}; }
inline void vstore(float* p, F a) { std::memcpy(p, a.v, sizeof(a.v)); }
inline F vloadn(const float* p, int64_t n) {
  F r = vzero();
  for (int64_t i = 0; i < n; ++i) r.v[i] = p[i];
  return r;
}
inline void vstoren(float* p, F a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = a.v[i];
}
#define QWEN35_LANEWISE(name, expr)          \
  inline F name(F a, F b) {                  \
    F r;                                     \
    for (int i = 0; i < W; ++i) r.v[i] = (expr); \
    return r;                                \
  }
QWEN35_LANEWISE(vadd, a.v[i] + b.v[i])
QWEN35_LANEWISE(vsub, a.v[i] - b.v[i])
QWEN35_LANEWISE(vmul, a.v[i] * b.v[i])
QWEN35_LANEWISE(vdiv, a.v[i] / b.v[i])
QWEN35_LANEWISE(vmax, a.v[i] > b.v[i] ? a.v[i] : b.v[i])
#undef QWEN35_LANEWISE
inline F vfma(F a, F b, F c) {
  F r;
  for (int i = 0; i < W; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
  return r;
}
inline float vhsum(F a) { return (a.v[0] + a.v[2]) + (a.v[1] + a.v[3]); }
inline F vexp(F a) {
  F r;
  for (int i = 0; i < W; ++i) r.v[i] = std::exp(a.v[i]);
  return r;
}

#include "cpu/vecops.inc"

// ---- quantized matrix products ------------------------------------------------

namespace {

struct ActRow {
  const int8_t* q;
  const float* xs;
  const float* s32;
};

ActRow act_row(const GemmArgs& a, int64_t t) {
  const ActLayout L = act_layout(a.K);
  const uint8_t* base = static_cast<const uint8_t*>(a.x) + size_t(t) * a.x_stride;
  return {reinterpret_cast<const int8_t*>(base), reinterpret_cast<const float*>(base + L.xs),
          reinterpret_cast<const float*>(base + L.s32)};
}

// Doubled E2M1 values: small integers, so products with int8 are exact.
const int8_t kE2M1x2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

float dot_nvfp4(const uint8_t* row, const ActRow& x, int64_t K) {
  const BlockNVFP4* b = reinterpret_cast<const BlockNVFP4*>(row);
  float acc = 0.0f;
  for (int64_t i = 0; i < K / 64; ++i) {
    const int8_t* xq = x.q + i * 64;
    for (int s = 0; s < 4; ++s) {
      int32_t sum = 0;
      for (int j = 0; j < 8; ++j) {
        const uint8_t v = b[i].qs[8 * s + j];
        sum += kE2M1x2[v & 15] * xq[8 * s + j] + kE2M1x2[v >> 4] * xq[32 + 8 * s + j];
      }
      acc += 0.5f * ue4m3_to_fp32(b[i].d[s]) * x.xs[4 * i + s] * float(sum);
    }
  }
  return acc;
}

float dot_q8_0(const uint8_t* row, const ActRow& x, int64_t K) {
  const BlockQ8_0* b = reinterpret_cast<const BlockQ8_0*>(row);
  float acc = 0.0f;
  for (int64_t i = 0; i < K / 32; ++i) {
    int32_t s0 = 0, s1 = 0;
    for (int j = 0; j < 16; ++j) {
      s0 += b[i].qs[j] * x.q[32 * i + j];
      s1 += b[i].qs[16 + j] * x.q[32 * i + 16 + j];
    }
    acc += fp16_to_fp32(b[i].d) * (x.xs[2 * i] * float(s0) + x.xs[2 * i + 1] * float(s1));
  }
  return acc;
}

float dot_q4_k(const uint8_t* row, const ActRow& x, int64_t K) {
  const BlockQ4_K* b = reinterpret_cast<const BlockQ4_K*>(row);
  float acc = 0.0f;
  for (int64_t i = 0; i < K / 256; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    const int8_t* xq = x.q + i * 256;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      q4k_scale_min(b[i].scales, j, &sc, &m);
      // Group of 32 j: elements 32j..32j+31 = nibble (j&1) of qs[32(j/2) + l].
      const uint8_t* qs = b[i].qs + 32 * (j / 2);
      const int shift = 4 * (j & 1);
      int32_t s0 = 0, s1 = 0;
      for (int l = 0; l < 16; ++l) {
        s0 += ((qs[l] >> shift) & 15) * xq[32 * j + l];
        s1 += ((qs[16 + l] >> shift) & 15) * xq[32 * j + 16 + l];
      }
      const float* xs = x.xs + i * 16 + 2 * j;
      acc += d * float(sc) * (xs[0] * float(s0) + xs[1] * float(s1)) - dmin * float(m) * x.s32[i * 8 + j];
    }
  }
  return acc;
}

float dot_q6_k(const uint8_t* row, const ActRow& x, int64_t K) {
  const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(row);
  float acc = 0.0f;
  for (int64_t i = 0; i < K / 256; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    const int8_t* xq = x.q + i * 256;
    for (int g = 0; g < 16; ++g) {
      int32_t sum = 0;
      for (int l16 = 0; l16 < 16; ++l16) {
        const int e = 16 * g + l16;
        const int h = e / 128, r = e % 128, c = r / 32, l = r % 32;
        const uint8_t qlb = b[i].ql[64 * h + 32 * (c & 1) + l];
        const int low4 = c < 2 ? (qlb & 15) : (qlb >> 4);
        const int high2 = (b[i].qh[32 * h + l] >> (2 * c)) & 3;
        sum += ((low4 | (high2 << 4)) - 32) * xq[e];
      }
      acc += d * float(b[i].scales[g]) * x.xs[i * 16 + g] * float(sum);
    }
  }
  return acc;
}

// Float weights with float activations.
float dot_float(uint32_t type, const uint8_t* row, const float* x, int64_t K) {
  float acc[4] = {0, 0, 0, 0};
  for (int64_t k = 0; k < K; ++k) {
    float w;
    if (type == GGML_F32) std::memcpy(&w, row + 4 * k, 4);
    else {
      uint16_t h;
      std::memcpy(&h, row + 2 * k, 2);
      w = type == GGML_F16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
    }
    acc[k & 3] += w * x[k];
  }
  return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

bool gemm(const GemmArgs& a, int64_t r0, int64_t r1) {
  using DotQ = float (*)(const uint8_t*, const ActRow&, int64_t);
  DotQ dq = nullptr;
  switch (a.type) {
    case GGML_NVFP4: dq = dot_nvfp4; break;
    case GGML_Q8_0: dq = dot_q8_0; break;
    case GGML_Q4_K: dq = dot_q4_k; break;
    case GGML_Q6_K: dq = dot_q6_k; break;
    case GGML_F32:
    case GGML_F16:
    case GGML_BF16: break;
    default: return false;
  }
  for (int64_t t = 0; t < a.n; ++t) {
    if (dq) {
      const ActRow x = act_row(a, t);
      for (int64_t r = r0; r < r1; ++r) a.y[t * a.ldy + r] = dq(a.w + r * a.w_stride, x, a.K) * a.scale;
    } else {
      const float* x = reinterpret_cast<const float*>(static_cast<const uint8_t*>(a.x) + size_t(t) * a.x_stride);
      for (int64_t r = r0; r < r1; ++r) a.y[t * a.ldy + r] = dot_float(a.type, a.w + r * a.w_stride, x, a.K) * a.scale;
    }
  }
  return true;
}

}  // namespace
}  // namespace generic

const KernelSet& kernels_generic() {
  static const KernelSet ks = {
      "generic",
      uses_quantized_acts,
      generic::quantize_act_impl,
      generic::gemm,
      generic::dot,
      generic::rmsnorm_impl,
      generic::l2norm_impl,
      generic::silu_mul_impl,
      generic::mul_sigmoid_impl,
      generic::gated_rmsnorm_impl,
      generic::conv_silu_impl,
      generic::rope_impl,
      generic::attend_impl,
      generic::delta_rule_impl,
      generic::delta_rule_chunked_impl,
  };
  return ks;
}

}  // namespace qwen35::cpu
