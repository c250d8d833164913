#include "quants.h"

#include <algorithm>
#include <cmath>

namespace qwen35 {

// ---- scalar conversions ----------------------------------------------------

float fp16_to_fp32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t man = h & 0x3FF;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400) == 0);
      u = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3FF) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7F800000u | man << 13;
  } else {
    u = sign | (exp + 112) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t fp32_to_fp16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  uint32_t abs = u & 0x7FFFFFFF;
  if (abs >= 0x7F800000u) return uint16_t(sign | 0x7C00 | (abs > 0x7F800000u ? 0x200 : 0));  // inf/nan
  if (abs >= 0x477FF000u) return uint16_t(sign | 0x7C00);  // rounds to >= 65520 -> inf
  if (abs < 0x38800000u) {  // below 2^-14: subnormal half (or zero)
    // value = abs_float; half subnormal unit = 2^-24
    float a;
    std::memcpy(&a, &abs, 4);
    float q = a * 16777216.0f;  // exact scaling by 2^24
    // round half to even
    float r = std::nearbyint(q);
    return uint16_t(sign | uint32_t(r));
  }
  uint32_t exp = (abs >> 23) - 112;
  uint32_t man = abs & 0x7FFFFF;
  uint32_t h = exp << 10 | man >> 13;
  uint32_t rest = man & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // may carry into exponent: fine
  return uint16_t(sign | h);
}

uint16_t fp32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFF) > 0x7F800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7FFF + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

const float kE2M1[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                         -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

float ue4m3_to_fp32(uint8_t code) {
  if (code == 0x00 || code == 0x7F) return 0.0f;
  int E = (code >> 3) & 0x0F;
  int M = code & 0x07;
  if (E == 0) return float(M) * (1.0f / 512.0f);
  return std::ldexp(1.0f + float(M) / 8.0f, E - 7);
}

uint8_t fp32_to_ue4m3(float v) {
  if (!(v > 0.0f)) return 0;
  if (v > 448.0f) v = 448.0f;
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  int e = int((bits >> 23) & 0xFF) - 127;
  int m3 = int((bits >> 20) & 7);
  int E = e + 7;
  if (E <= 0) {
    int M = int(v * 512.0f + 0.5f);
    if (M > 7) M = 7;
    return M < 1 ? 0 : uint8_t(M);
  }
  if (E >= 15) return 0x7E;
  int M = m3 + int((bits >> 19) & 1);
  if (M > 7) {
    M = 0;
    E = E + 1;
    if (E >= 15) return 0x7E;
  }
  return uint8_t(E << 3 | M);
}

float e8m0_to_fp32(uint8_t e) {
  if (e == 0) return std::ldexp(1.0f, -127);  // 2^-127 is subnormal in F32 but exact
  uint32_t u = uint32_t(e) << 23;
  if (e == 0xFF) u = 0x7FC00000u;  // NaN encoding in OCP E8M0
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- dequantization ----------------------------------------------------------

namespace {

void deq_q8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < 32; ++j) y[i * 32 + j] = d * float(b[i].qs[j]);
  }
}

void deq_q4_k(const BlockQ4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    float* out = y + i * 256;
    for (int p = 0; p < 4; ++p) {
      uint8_t sc0, m0, sc1, m1;
      q4k_scale_min(b[i].scales, 2 * p, &sc0, &m0);
      q4k_scale_min(b[i].scales, 2 * p + 1, &sc1, &m1);
      float d0 = d * sc0, mn0 = dmin * m0, d1 = d * sc1, mn1 = dmin * m1;
      for (int l = 0; l < 32; ++l) {
        uint8_t q = b[i].qs[32 * p + l];
        out[64 * p + l] = d0 * float(q & 0x0F) - mn0;
        out[64 * p + 32 + l] = d1 * float(q >> 4) - mn1;
      }
    }
  }
}

void deq_q6_k(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    float d = fp16_to_fp32(b[i].d);
    float* out = y + i * 256;
    for (int e = 0; e < 256; ++e) {
      int h = e / 128, r = e % 128, c = r / 32, l = r % 32;
      uint8_t qlb = b[i].ql[64 * h + 32 * (c & 1) + l];
      int low4 = (c < 2) ? (qlb & 0x0F) : (qlb >> 4);
      int high2 = (b[i].qh[32 * h + l] >> (2 * c)) & 3;
      int q = (low4 | (high2 << 4)) - 32;
      out[e] = d * float(b[i].scales[e / 16]) * float(q);
    }
  }
}

void deq_nvfp4(const BlockNVFP4* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    for (int s = 0; s < 4; ++s) {
      float sc = ue4m3_to_fp32(b[i].d[s]);
      float* out = y + i * 64 + 16 * s;
      for (int j = 0; j < 8; ++j) {
        uint8_t q = b[i].qs[8 * s + j];
        out[j] = kE2M1[q & 0x0F] * sc;
        out[j + 8] = kE2M1[q >> 4] * sc;
      }
    }
  }
}

void deq_mxfp4(const BlockMXFP4* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    float sc = e8m0_to_fp32(b[i].e);
    for (int j = 0; j < 16; ++j) {
      y[i * 32 + j] = kE2M1[b[i].qs[j] & 0x0F] * sc;
      y[i * 32 + j + 16] = kE2M1[b[i].qs[j] >> 4] * sc;
    }
  }
}

}  // namespace

bool dequantize_row(uint32_t t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case GGML_F32: std::memcpy(dst, src, size_t(n) * 4); return true;
    case GGML_F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(s[i]);
      return true;
    }
    case GGML_BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
      return true;
    }
    case GGML_Q8_0: deq_q8_0(static_cast<const BlockQ8_0*>(src), dst, n / 32); return true;
    case GGML_Q4_K: deq_q4_k(static_cast<const BlockQ4_K*>(src), dst, n / 256); return true;
    case GGML_Q6_K: deq_q6_k(static_cast<const BlockQ6_K*>(src), dst, n / 256); return true;
    case GGML_NVFP4: deq_nvfp4(static_cast<const BlockNVFP4*>(src), dst, n / 64); return true;
    case GGML_MXFP4: deq_mxfp4(static_cast<const BlockMXFP4*>(src), dst, n / 32); return true;
    default: return false;
  }
}

float vec_dot_ref(uint32_t t, const void* row, const float* x, int64_t n) {
  // Dequantize one block at a time (256 covers every block size) and
  // accumulate in element order, so the result equals dot(dequant(row), x)
  // computed naively in F32.
  const TypeInfo* ti = type_info(t);
  if (!ti || !ti->compute) return 0.0f;
  float buf[256];
  const int64_t chunk = ti->block >= 256 ? ti->block : (256 / ti->block) * ti->block;
  const uint8_t* p = static_cast<const uint8_t*>(row);
  float acc = 0.0f;
  for (int64_t i = 0; i < n; i += chunk) {
    int64_t m = std::min<int64_t>(chunk, n - i);
    dequantize_row(t, p + row_bytes(*ti, i), buf, m);
    for (int64_t j = 0; j < m; ++j) acc += buf[j] * x[i + j];
  }
  return acc;
}

// ---- quantization ------------------------------------------------------------

namespace {

int best_e2m1(float x, float sc) {
  int best = 0;
  float best_err = std::fabs(kE2M1[0] * sc - x);
  for (int code = 1; code < 16; ++code) {
    float err = std::fabs(kE2M1[code] * sc - x);
    if (err < best_err) {
      best = code;
      best_err = err;
    }
  }
  return best;
}

void quant_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[i * 32 + j]));
    float d = amax / 127.0f;
    float id = d ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < 32; ++j) y[i].qs[j] = int8_t(std::lround(x[i * 32 + j] * id));
  }
}

void quant_q4_k(const float* x, BlockQ4_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * 256;
    float scale[8], minv[8];
    for (int j = 0; j < 8; ++j) {
      float lo = 0, hi = 0;  // include 0 so that mins are >= 0
      for (int l = 0; l < 32; ++l) {
        lo = std::min(lo, xb[32 * j + l]);
        hi = std::max(hi, xb[32 * j + l]);
      }
      scale[j] = (hi - lo) / 15.0f;
      minv[j] = -lo;
    }
    float max_scale = *std::max_element(scale, scale + 8), max_min = *std::max_element(minv, minv + 8);
    float d = max_scale / 63.0f, dmin = max_min / 63.0f;
    y[i].d = fp32_to_fp16(d);
    y[i].dmin = fp32_to_fp16(dmin);
    d = fp16_to_fp32(y[i].d);
    dmin = fp16_to_fp32(y[i].dmin);
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 8; ++j) {
      sc[j] = uint8_t(d > 0 ? std::min(63L, std::lround(scale[j] / d)) : 0);
      mn[j] = uint8_t(dmin > 0 ? std::min(63L, std::lround(minv[j] / dmin)) : 0);
    }
    std::memset(y[i].scales, 0, 12);
    for (int j = 0; j < 4; ++j) {
      y[i].scales[j] = uint8_t(sc[j] | ((sc[j + 4] >> 4) << 6));
      y[i].scales[j + 4] = uint8_t(mn[j] | ((mn[j + 4] >> 4) << 6));
      y[i].scales[j + 8] = uint8_t((sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4));
    }
    for (int p = 0; p < 4; ++p) {
      for (int l = 0; l < 32; ++l) {
        int q[2];
        for (int h = 0; h < 2; ++h) {
          int j = 2 * p + h;
          float dd = d * sc[j], mm = dmin * mn[j];
          float v = xb[64 * p + 32 * h + l];
          q[h] = dd > 0 ? int(std::lround((v + mm) / dd)) : 0;
          q[h] = std::clamp(q[h], 0, 15);
        }
        y[i].qs[32 * p + l] = uint8_t(q[0] | (q[1] << 4));
      }
    }
  }
}

void quant_q6_k(const float* x, BlockQ6_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * 256;
    float s[16];
    float smax = 0;
    for (int g = 0; g < 16; ++g) {
      float amax = 0;
      for (int l = 0; l < 16; ++l) amax = std::max(amax, std::fabs(xb[16 * g + l]));
      s[g] = amax / 31.0f;
      smax = std::max(smax, s[g]);
    }
    float d = smax / 127.0f;
    y[i].d = fp32_to_fp16(d);
    d = fp16_to_fp32(y[i].d);
    for (int g = 0; g < 16; ++g) y[i].scales[g] = int8_t(d > 0 ? std::min(127L, std::lround(s[g] / d)) : 0);
    std::memset(y[i].ql, 0, sizeof(y[i].ql));
    std::memset(y[i].qh, 0, sizeof(y[i].qh));
    for (int e = 0; e < 256; ++e) {
      float dd = d * float(y[i].scales[e / 16]);
      int q = dd > 0 ? int(std::lround(xb[e] / dd)) : 0;
      q = std::clamp(q, -32, 31) + 32;
      int h = e / 128, r = e % 128, c = r / 32, l = r % 32;
      uint8_t& qlb = y[i].ql[64 * h + 32 * (c & 1) + l];
      if (c < 2) qlb = uint8_t(qlb | (q & 0x0F));
      else qlb = uint8_t(qlb | ((q & 0x0F) << 4));
      y[i].qh[32 * h + l] = uint8_t(y[i].qh[32 * h + l] | ((q >> 4) << (2 * c)));
    }
  }
}

void quant_mxfp4(const float* x, BlockMXFP4* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[i * 32 + j]));
    int e = amax > 0 ? int(std::floor(std::log2(amax))) - 2 + 127 : 0;
    e = std::clamp(e, 1, 254);
    y[i].e = uint8_t(e);
    float sc = e8m0_to_fp32(y[i].e);
    for (int j = 0; j < 16; ++j)
      y[i].qs[j] = uint8_t(best_e2m1(x[i * 32 + j], sc) | (best_e2m1(x[i * 32 + j + 16], sc) << 4));
  }
}

}  // namespace

void quantize_row_nvfp4_ref(const float* x, BlockNVFP4* y, int64_t n) {
  for (int64_t i = 0; i < n / 64; ++i) {
    for (int s = 0; s < 4; ++s) {
      const float* xb = x + i * 64 + 16 * s;
      float amax = 0.0f;
      for (int k = 0; k < 16; ++k) {
        float a = std::fabs(xb[k]);
        if (a > amax) amax = a;  // NaN never wins
      }
      uint8_t code = fp32_to_ue4m3(amax / 6.0f);
      y[i].d[s] = code;
      float sc = ue4m3_to_fp32(code);
      int q[16];
      for (int k = 0; k < 16; ++k) q[k] = best_e2m1(xb[k], sc);
      for (int j = 0; j < 8; ++j) y[i].qs[8 * s + j] = uint8_t(q[j] | (q[j + 8] << 4));
    }
  }
}

bool quantize_row(uint32_t t, const float* src, void* dst, int64_t n) {
  switch (t) {
    case GGML_F32: std::memcpy(dst, src, size_t(n) * 4); return true;
    case GGML_F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_fp16(src[i]);
      return true;
    }
    case GGML_BF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_bf16(src[i]);
      return true;
    }
    case GGML_Q8_0: quant_q8_0(src, static_cast<BlockQ8_0*>(dst), n / 32); return true;
    case GGML_Q4_K: quant_q4_k(src, static_cast<BlockQ4_K*>(dst), n / 256); return true;
    case GGML_Q6_K: quant_q6_k(src, static_cast<BlockQ6_K*>(dst), n / 256); return true;
    case GGML_NVFP4: quantize_row_nvfp4_ref(src, static_cast<BlockNVFP4*>(dst), n); return true;
    case GGML_MXFP4: quant_mxfp4(src, static_cast<BlockMXFP4*>(dst), n / 32); return true;
    default: return false;
  }
}

}  // namespace qwen35
