// AVX-512 kernels (F, BW, VL and VNNI; also uses AVX2/FMA/F16C; BF16 in the
// functions marked for it). This file is compiled with those instruction sets
// enabled and only ever called after cpu_has_avx512() (kernels.cpp); see
// kernels.h for the rules it follows.
//
// Quantized matrix products: 64 weights per ZMM register are decoded to
// unsigned bytes (weight integer + offset), multiplied with the int8
// activations by vpdpbusd into 16 int32 lanes of 4 products each (the lanes
// start at the activation row's offset correction, so they end exact), then
// converted and scaled per lane by weight scale * activation scale and
// accumulated in F32. A tile of 4 weight rows x up to 4 activation rows
// shares every decoded weight and every activation load.
// GCC 12's AVX-512 headers trip its own uninitialized-value warnings
// (_mm512_undefined_*, GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include <type_traits>

#include "cpu/kernels.h"
#include "ggml_types.h"
#include "quants.h"  // block layouts only: no function from it is called here

namespace qwen35::cpu {
namespace avx512 {

// ---- SIMD wrapper for vecops.inc ----------------------------------------------

constexpr int W = 16;
struct F {
  __m512 v;
};
inline __mmask16 first_n(int64_t n) { return __mmask16((1u << n) - 1u); }
inline F vzero() { return {_mm512_setzero_ps()}; }
inline F vset1(float a) { return {_mm512_set1_ps(a)}; }
inline F vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void vstore(float* p, F a) { _mm512_storeu_ps(p, a.v); }
inline F vloadn(const float* p, int64_t n) { return {_mm512_maskz_loadu_ps(first_n(n), p)}; }
inline void vstoren(float* p, F a, int64_t n) { _mm512_mask_storeu_ps(p, first_n(n), a.v); }
inline F vadd(F a, F b) { return {_mm512_add_ps(a.v, b.v)}; }
inline F vsub(F a, F b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline F vmul(F a, F b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline F vdiv(F a, F b) { return {_mm512_div_ps(a.v, b.v)}; }
inline F vmax(F a, F b) { return {_mm512_max_ps(a.v, b.v)}; }
inline F vfma(F a, F b, F c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline float vhsum(F a) {
  // 16 -> 8 -> 4 -> 2 -> 1, always in this order.
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a.v), hi);
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}
inline F vexp(F a) {
  // Cephes expf: e^x = 2^n e^r, r = x - n ln2 in [-ln2/2, ln2/2].
  __m512 x = _mm512_min_ps(_mm512_max_ps(a.v, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  return {_mm512_scalef_ps(p, n)};
}

#include "cpu/vecops.inc"

// ---- quantized matrix products --------------------------------------------------

namespace {

constexpr int RT = 4;  // weight rows per tile
constexpr int TB = 64; // activation rows per cache block

// One activation row of the tile: int8 values, offset corrections, scales.
struct XRow {
  const int8_t* q;
  const int32_t* corr;
  const float* xs;
  const float* s32;
};

inline float f16(uint16_t h) { return _cvtsh_ss(h); }

// Lane l of a 64-element step covers positions 4l..4l+3; its group of 16 in
// natural order is l/4, in NVFP4 nibble order (l%8)/2.
inline __m512 xs_lanes_nat(const float* xs4) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(xs4)));
}
inline __m512 xs_lanes_nv(const float* xs4) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(xs4)));
}
// The low nibbles of 32 bytes, then their high nibbles.
inline __m512i nibbles(__m256i b) {
  const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4), 1);
  return _mm512_and_si512(both, _mm512_set1_epi8(0x0F));
}

// Each format decodes one "unit" of weights (kVecs ZMM steps of 64
// elements) per row: per-unit setup (scales), then per step the unsigned
// weight bytes and the per-lane weight scales.

// NVFP4: unit = one block of 64 = one step, elements in nibble order.
struct Nvfp4 {
  static constexpr int kElems = 64, kVecs = 1, kUnitBytes = 36;
  static constexpr bool kCorr = true, kMins = false;
  // Scales are decoded through F16: UE4M3 code << 7 is an F16 with the same
  // mantissa and an exponent 8 lower (subnormals included, handled exactly
  // by vcvtph2ps), so lanes carry ue4m3 * 2^-8; with the doubled E2M1 table
  // the product is off by 2^-7, restored once per output (kOutScale).
  static constexpr float kOutScale = 128.0f;
  struct Unit {
    const BlockNVFP4* b;
  };
  static void setup(const uint8_t* row, int64_t u, Unit* s) { s->b = reinterpret_cast<const BlockNVFP4*>(row) + u; }
  static void step(const Unit& s, int, __m512i* w, __m512* ws) {
    const __m512i table = _mm512_broadcast_i32x4(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    *w = _mm512_shuffle_epi8(table, nibbles(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.b->qs))));
    uint32_t d4;
    memcpy(&d4, s.b->d, 4);
    // 16-bit lane i gets scale byte (i % 8) / 2.
    const __m256i sel = _mm256_setr_epi8(0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1,  //
                                         0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1);
    const __m256i raw = _mm256_shuffle_epi8(_mm256_set1_epi32(int(d4)), sel);
    // As llama.cpp's decoder (our reference): the byte 0x7F (NaN in E4M3)
    // reads as 0, otherwise bit 7 is ignored.
    const __mmask16 keep = _mm256_cmpneq_epi16_mask(raw, _mm256_set1_epi16(0x7F));
    *ws = _mm512_maskz_cvtph_ps(keep, _mm256_slli_epi16(_mm256_and_si256(raw, _mm256_set1_epi16(0x7F)), 7));
  }
  static __m512 xs_lanes(const float* xs4) { return xs_lanes_nv(xs4); }
};

// Q8_0: unit = two blocks of 32 = one step (a last odd block is zero-padded:
// the activations beyond K are 0 with zero correction).
struct Q8_0 {
  static constexpr int kElems = 64, kVecs = 1, kUnitBytes = 68;
  static constexpr bool kCorr = true, kMins = false;
  static constexpr float kOutScale = 1.0f;
  struct Unit {
    const BlockQ8_0* b;
    bool pair;
  };
  static void setup(const uint8_t* row, int64_t u, Unit* s) { s->b = reinterpret_cast<const BlockQ8_0*>(row) + 2 * u; }
  static void step(const Unit& s, int, __m512i* w, __m512* ws) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.b[0].qs));
    const __m256i hi = s.pair ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.b[1].qs)) : _mm256_setzero_si256();
    *w = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), _mm512_set1_epi8(char(0x80)));
    const __m256i d = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(short(s.b[0].d))),
                                              _mm_set1_epi16(short(s.pair ? s.b[1].d : s.b[0].d)), 1);
    *ws = _mm512_cvtph_ps(d);
  }
  static __m512 xs_lanes(const float* xs4) { return xs_lanes_nat(xs4); }
};

// Q4_K: unit = super-block of 256 = four steps; step v covers elements
// 64v..64v+63 = low then high nibbles of qs[32v..32v+31] (groups 2v, 2v+1).
struct Q4K {
  static constexpr int kElems = 256, kVecs = 4, kUnitBytes = 144;
  static constexpr bool kCorr = false, kMins = true;
  static constexpr float kOutScale = 1.0f;
  struct Unit {
    const BlockQ4_K* b;
    __m512 sc;    // lanes 0-7: d * scale of group j
    __m512 mins;  // lanes 0-7: dmin * min of group j, lanes 8-15: 0
  };
  static void setup(const uint8_t* row, int64_t u, Unit* s) {
    const BlockQ4_K* b = reinterpret_cast<const BlockQ4_K*>(row) + u;
    s->b = b;
    // The 12 scale bytes hold eight 6-bit scales and eight 6-bit mins.
    uint32_t a[3];
    memcpy(a, b->scales, 12);
    const uint32_t m1 = 0x3f3f3f3f, m2 = 0x0f0f0f0f, m3 = 0x03030303;
    const uint32_t sc_lo = a[0] & m1, mn_lo = a[1] & m1;
    const uint32_t sc_hi = (a[2] & m2) | (((a[0] >> 6) & m3) << 4);
    const uint32_t mn_hi = ((a[2] >> 4) & m2) | (((a[1] >> 6) & m3) << 4);
    const __m128i scb = _mm_setr_epi32(int(sc_lo), int(sc_hi), 0, 0), mnb = _mm_setr_epi32(int(mn_lo), int(mn_hi), 0, 0);
    s->sc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(scb)), _mm512_set1_ps(f16(b->d)));
    s->mins = _mm512_maskz_mul_ps(0x00FF, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mnb)), _mm512_set1_ps(f16(b->dmin)));
  }
  static void step(const Unit& s, int v, __m512i* w, __m512* ws) {
    *w = nibbles(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.b->qs + 32 * v)));
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(2 * v),
                                         _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
    *ws = _mm512_permutexvar_ps(idx, s.sc);
  }
  static __m512 xs_lanes(const float* xs4) { return xs_lanes_nat(xs4); }
};

// Q6_K: unit = super-block of 256 = four steps; step v covers elements
// 64v..64v+63: half h = v/2 of ql (low nibbles for even v, high for odd)
// with two bits each from qh.
struct Q6K {
  static constexpr int kElems = 256, kVecs = 4, kUnitBytes = 210;
  static constexpr bool kCorr = true, kMins = false;
  static constexpr float kOutScale = 1.0f;
  struct Unit {
    const BlockQ6_K* b;
    __m512 sc;  // d * scale of each group of 16
  };
  static void setup(const uint8_t* row, int64_t u, Unit* s) {
    const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(row) + u;
    s->b = b;
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b->scales));
    s->sc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc8)), _mm512_set1_ps(f16(b->d)));
  }
  static void step(const Unit& s, int v, __m512i* w, __m512* ws) {
    const __m512i ql = _mm512_loadu_si512(s.b->ql + 64 * (v / 2));
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i lo = _mm512_and_si512(v % 2 == 0 ? ql : _mm512_srli_epi16(ql, 4), m4);
    *w = _mm512_or_si512(lo, high_bits(s.b->qh, v));
    *ws = scale_lanes(s.sc, v);
  }
  // The high 2 bits of step v's codes, at bits 4-5 of each byte; qh: the
  // block's 64 qh bytes. Bytes 0-31 take bits (2c) for c = 0 or 2, bytes
  // 32-63 bits (2c) for c = 1 or 3.
  static __m512i high_bits(const uint8_t* qh, int v) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh + 32 * (v / 2)));
    const __m512i q2 = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 2), 1);
    return _mm512_and_si512(v % 2 == 0 ? _mm512_slli_epi16(q2, 4) : q2, _mm512_set1_epi8(0x30));
  }
  // Lane scales of step v from the 16 group scales sc.
  static __m512 scale_lanes(__m512 sc, int v) {
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(4 * v),
                                         _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
    return _mm512_permutexvar_ps(idx, sc);
  }
  static __m512 xs_lanes(const float* xs4) { return xs_lanes_nat(xs4); }
};

// The Q6_K screen (kernels.h, kQ6kScreen): blocks of qh[64], scales[16], d;
// Q6K's decoding with the low 4 bits of every code taken as 8.
struct Q6KScreen {
  static constexpr int kElems = 256, kVecs = 4, kUnitBytes = kQ6kScreenBlockBytes;
  static constexpr bool kCorr = true, kMins = false;
  static constexpr float kOutScale = 1.0f;
  struct Unit {
    const uint8_t* b;
    __m512 sc;  // d * scale of each group of 16
  };
  static void setup(const uint8_t* row, int64_t u, Unit* s) {
    const uint8_t* b = row + u * kUnitBytes;
    s->b = b;
    uint16_t d;
    memcpy(&d, b + 80, 2);
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 64));
    s->sc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc8)), _mm512_set1_ps(f16(d)));
  }
  static void step(const Unit& s, int v, __m512i* w, __m512* ws) {
    *w = _mm512_or_si512(Q6K::high_bits(s.b, v), _mm512_set1_epi8(0x08));  // qh is the block's first 64 bytes
    *ws = Q6K::scale_lanes(s.sc, v);
  }
  static __m512 xs_lanes(const float* xs4) { return xs_lanes_nat(xs4); }
};

// A tile of RT weight rows x TT activation rows over the whole of K.
// Weights of a tile, decoded as the tile runs. Decode streams 4 rows at
// once; the hardware prefetcher barely trains on such short interleaved
// streams, so each unit also prefetches the same bytes of the next tile's
// rows (rows are contiguous: that is the next stretch of the matrix).
template <class Fmt>
struct LiveWeights {
  const uint8_t* const* rows;
  uint64_t stride;
  int64_t K;
  typename Fmt::Unit s[RT];
  void unit(int64_t u) {
    for (int r = 0; r < RT; ++r) Fmt::setup(rows[r], u, &s[r]);
    for (int r = 0; r < RT; ++r)
      for (int l = 0; l < Fmt::kUnitBytes; l += 64)
        _mm_prefetch(reinterpret_cast<const char*>(rows[r] + RT * stride + u * Fmt::kUnitBytes + l), _MM_HINT_T0);
    if constexpr (std::is_same_v<Fmt, Q8_0>)
      for (int r = 0; r < RT; ++r) s[r].pair = (u + 1) * 64 <= K;
  }
  void step(int v, __m512i* w, __m512* ws) {
    for (int r = 0; r < RT; ++r) Fmt::step(s[r], v, &w[r], &ws[r]);
  }
  __m512 mins(int r) const {
    if constexpr (Fmt::kMins) return s[r].mins;
    return _mm512_setzero_ps();
  }
};

// Weights of a tile decoded once into a buffer (prefill: reused by every
// activation tile): per unit, per step and row the weight bytes and lane
// scales, then per row the mins. Reads back exactly what LiveWeights makes.
template <class Fmt>
struct BufferedWeights {
  static constexpr int64_t kUnit = Fmt::kVecs * RT * 128 + (Fmt::kMins ? RT * 64 : 0);
  static size_t bytes(int64_t K) { return size_t((K + Fmt::kElems - 1) / Fmt::kElems * kUnit); }
  const uint8_t* buf;
  const uint8_t* cur = nullptr;
  void unit(int64_t u) { cur = buf + u * kUnit; }
  void step(int v, __m512i* w, __m512* ws) {
    for (int r = 0; r < RT; ++r) {
      const uint8_t* p = cur + (v * RT + r) * 128;
      w[r] = _mm512_load_si512(p);
      ws[r] = _mm512_load_ps(reinterpret_cast<const float*>(p + 64));
    }
  }
  __m512 mins(int r) const { return _mm512_load_ps(reinterpret_cast<const float*>(cur + Fmt::kVecs * RT * 128 + r * 64)); }
  static void fill(LiveWeights<Fmt>& src, int64_t K, uint8_t* dst) {
    for (int64_t u = 0; u < (K + Fmt::kElems - 1) / Fmt::kElems; ++u) {
      uint8_t* p = dst + u * kUnit;
      src.unit(u);
      for (int v = 0; v < Fmt::kVecs; ++v) {
        __m512i w[RT];
        __m512 ws[RT];
        src.step(v, w, ws);
        for (int r = 0; r < RT; ++r) {
          _mm512_store_si512(p + (v * RT + r) * 128, w[r]);
          _mm512_store_ps(reinterpret_cast<float*>(p + (v * RT + r) * 128 + 64), ws[r]);
        }
      }
      if constexpr (Fmt::kMins)
        for (int r = 0; r < RT; ++r) _mm512_store_ps(reinterpret_cast<float*>(p + Fmt::kVecs * RT * 128 + r * 64), src.mins(r));
    }
  }
};

// A tile of RT weight rows x TT activation rows over the whole of K. Both
// weight sources feed the same arithmetic, so results are identical.
template <class Fmt, int TT, class Weights>
void qtile(Weights& wt, const XRow* x, int64_t K, float out[RT][4]) {
  __m512 acc[RT][TT];
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t units = (K + Fmt::kElems - 1) / Fmt::kElems;
  for (int64_t u = 0; u < units; ++u) {
    wt.unit(u);
    for (int v = 0; v < Fmt::kVecs; ++v) {
      const int64_t e0 = u * Fmt::kElems + v * 64;  // first element (position) of this step
      __m512i w[RT];
      __m512 ws[RT];
      wt.step(v, w, ws);
      for (int t = 0; t < TT; ++t) {
        const __m512i xq = _mm512_loadu_si512(x[t].q + e0);
        const __m512i c0 = Fmt::kCorr ? _mm512_loadu_si512(x[t].corr + e0 / 4) : _mm512_setzero_si512();
        const __m512 xs = Fmt::xs_lanes(x[t].xs + e0 / 16);
        for (int r = 0; r < RT; ++r) {
          const __m512i isum = _mm512_dpbusd_epi32(c0, w[r], xq);
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(ws[r], xs), acc[r][t]);
        }
      }
    }
    if constexpr (Fmt::kMins) {
      for (int t = 0; t < TT; ++t) {
        const __m512 s32 = _mm512_maskz_loadu_ps(0x00FF, x[t].s32 + u * 8);
        for (int r = 0; r < RT; ++r) acc[r][t] = _mm512_fnmadd_ps(wt.mins(r), s32, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < TT; ++t) out[r][t] = vhsum(F{acc[r][t]});
}

// Float weights (F32, F16, BF16) with F32 activations, 16 per step.
template <uint32_t kType>
inline __m512 load_w(const uint8_t* row, int64_t k, __mmask16 m) {
  if constexpr (kType == GGML_F32) return _mm512_maskz_loadu_ps(m, row + 4 * k);
  const __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * k);
  if constexpr (kType == GGML_F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <uint32_t kType, int TT>
void ftile(const uint8_t* const* rows, const float* const* x, int64_t K, float out[RT][4]) {
  __m512 acc[RT][TT];
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? __mmask16(0xFFFF) : first_n(K - k);
    __m512 w[RT];
    for (int r = 0; r < RT; ++r) w[r] = load_w<kType>(rows[r], k, m);
    for (int t = 0; t < TT; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x[t] + k);
      for (int r = 0; r < RT; ++r) acc[r][t] = _mm512_fmadd_ps(w[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < TT; ++t) out[r][t] = vhsum(F{acc[r][t]});
}

// Rows [r0, r1) in tiles of RT (a short last tile repeats its last row),
// activation rows in blocks of TB (so a block stays in cache while the rows
// stream) and tiles of 4 (remainder one at a time).
// Rows [r0, r1) in tiles of RT (a short last tile repeats its last row),
// activation rows in blocks of TB (so a block stays in cache while the rows
// stream) and tiles of 4 (remainder one at a time). prepare(rows) runs once
// per weight tile and activation block, before its tiles.
template <class Prepare, class Tile>
void drive(const GemmArgs& a, int64_t r0, int64_t r1, float out_scale, Prepare prepare, Tile tile) {
  float out[RT][4];
  for (int64_t tb = 0; tb < a.n; tb += TB) {
    const int64_t te = tb + TB < a.n ? tb + TB : a.n;
    for (int64_t r = r0; r < r1; r += RT) {
      const int nr = r1 - r < RT ? int(r1 - r) : RT;
      const uint8_t* rows[RT];
      for (int i = 0; i < RT; ++i) rows[i] = a.w + uint64_t(r + (i < nr ? i : nr - 1)) * a.w_stride;
      prepare(rows);
      for (int64_t t = tb; t < te;) {
        // 4, 2 or 1 activation rows share each decoded weight tile (2: the
        // MTP verify pass decodes its weights once, not twice).
        const int tt = te - t >= 4 ? 4 : te - t >= 2 ? 2 : 1;
        tile(rows, t, tt, out);
        for (int i = 0; i < nr; ++i)
          for (int j = 0; j < tt; ++j) a.y[(t + j) * a.ldy + r + i] = out[i][j] * out_scale * a.scale;
        t += tt;
      }
    }
  }
}

// Batches of at least this many rows decode each weight tile once into the
// caller's work buffer instead of once per activation tile.
constexpr int64_t kPredecodeRows = 8;

template <class Fmt>
void gemm_q(const GemmArgs& a, int64_t r0, int64_t r1) {
  const ActLayout L = act_layout(a.K);
  auto xrows = [&](int64_t t, int tt, XRow* x) {
    for (int j = 0; j < tt; ++j) {
      const uint8_t* base = static_cast<const uint8_t*>(a.x) + size_t(t + j) * a.x_stride;
      x[j] = {reinterpret_cast<const int8_t*>(base), reinterpret_cast<const int32_t*>(base + L.corr),
              reinterpret_cast<const float*>(base + L.xs), reinterpret_cast<const float*>(base + L.s32)};
    }
  };
  uint8_t* buf = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(a.work) + 63) & ~uintptr_t(63));
  const bool predecode = a.n >= kPredecodeRows && a.work &&
                         BufferedWeights<Fmt>::bytes(a.K) + size_t(buf - a.work) <= a.work_bytes;
  if (predecode) {
    drive(
        a, r0, r1, Fmt::kOutScale,
        [&](const uint8_t* const* rows) {
          LiveWeights<Fmt> live{rows, a.w_stride, a.K, {}};
          BufferedWeights<Fmt>::fill(live, a.K, buf);
        },
        [&](const uint8_t* const*, int64_t t, int tt, float out[RT][4]) {
          XRow x[4];
          xrows(t, tt, x);
          BufferedWeights<Fmt> wt{buf};
          if (tt == 4) qtile<Fmt, 4>(wt, x, a.K, out);
          else if (tt == 2) qtile<Fmt, 2>(wt, x, a.K, out);
          else qtile<Fmt, 1>(wt, x, a.K, out);
        });
    return;
  }
  drive(
      a, r0, r1, Fmt::kOutScale, [](const uint8_t* const*) {},
      [&](const uint8_t* const* rows, int64_t t, int tt, float out[RT][4]) {
        XRow x[4];
        xrows(t, tt, x);
        LiveWeights<Fmt> wt{rows, a.w_stride, a.K, {}};
        if (tt == 4) qtile<Fmt, 4>(wt, x, a.K, out);
        else if (tt == 2) qtile<Fmt, 2>(wt, x, a.K, out);
        else qtile<Fmt, 1>(wt, x, a.K, out);
      });
}

template <uint32_t kType>
void gemm_f(const GemmArgs& a, int64_t r0, int64_t r1) {
  drive(a, r0, r1, 1.0f, [](const uint8_t* const*) {}, [&](const uint8_t* const* rows, int64_t t, int tt, float out[RT][4]) {
    const float* x[4];
    for (int j = 0; j < tt; ++j)
      x[j] = reinterpret_cast<const float*>(static_cast<const uint8_t*>(a.x) + size_t(t + j) * a.x_stride);
    if (tt == 4) ftile<kType, 4>(rows, x, a.K, out);
    else if (tt == 2) ftile<kType, 2>(rows, x, a.K, out);
    else ftile<kType, 1>(rows, x, a.K, out);
  });
}

// Activation quantization (see quantize_act_impl, which it matches bit for
// bit: the same amax, scale and round-half-to-even), 64 elements at a time:
// one ZMM per group of 16, the lane sums by vpdpbusd with ones.
void quantize_act_fast(uint32_t type, const float* x, int64_t K, uint8_t* dst) {
  const ActLayout L = act_layout(K);
  int8_t* q = reinterpret_cast<int8_t*>(dst);
  int32_t* corr = reinterpret_cast<int32_t*>(dst + L.corr);
  float* xs = reinterpret_cast<float*>(dst + L.xs);
  float* s32 = reinterpret_cast<float*>(dst + L.s32);
  memset(dst, 0, L.stride);
  const bool nv = type == GGML_NVFP4;
  const __m512i neg_c = _mm512_set1_epi32(-weight_offset(type));
  for (int64_t b = 0; b < K; b += 64) {
    const int64_t groups = K - b >= 64 ? 4 : (K - b) / 16;  // K % 32 == 0: 2 or 4
    int32_t gsum[4];
    for (int g = 0; g < groups; ++g) {
      const __m512 v = _mm512_loadu_ps(x + b + 16 * g);
      const float amax = _mm512_reduce_max_ps(_mm512_abs_ps(v));
      const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
      xs[(b + 16 * g) / 16] = amax / 127.0f;
      const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(id)));
      gsum[g] = _mm512_reduce_add_epi32(qi);
      const __m128i q8 = _mm512_cvtsepi32_epi8(qi);
      if (nv) {  // nibble order: elements 0-7 of group g at 8g, 8-15 at 32+8g
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + b + 8 * g), q8);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + b + 32 + 8 * g), _mm_unpackhi_epi64(q8, q8));
      } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b + 16 * g), q8);
      }
    }
    for (int g = 1; g < groups; g += 2) {
      const int64_t j = (b + 16 * g) / 16;
      s32[j / 2] = xs[j - 1] * float(gsum[g - 1]) + xs[j] * float(gsum[g]);
    }
    const __m512i sum4 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), _mm512_loadu_si512(q + b));
    _mm512_mask_storeu_epi32(corr + b / 4, first_n(groups * 4), _mm512_mullo_epi32(sum4, neg_c));
  }
}

// BF16 weights on CPUs with AVX-512 BF16: activations rounded to BF16 once
// per row, then vdpbf16ps (32 products per instruction, pairs accumulated in
// F32). These functions carry the extra instruction set themselves and run
// only after cpu_has_avx512_bf16().
#define QWEN35_BF16 __attribute__((target("avx512bf16")))

QWEN35_BF16 void convert_bf16(const float* x, int64_t K, uint16_t* dst) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + k)));
  if (k < K) {
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(first_n(K - k), x + k));
    _mm256_mask_storeu_epi16(dst + k, first_n(K - k), h);
  }
}

template <int TT>
QWEN35_BF16 void bf16tile(const uint8_t* const* rows, const uint16_t* const* x, int64_t K, float out[RT][4]) {
  __m512 acc[RT][TT];
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 m = K - k >= 32 ? ~__mmask32(0) : __mmask32((1ull << (K - k)) - 1);
    __m512i w[RT];
    for (int r = 0; r < RT; ++r) w[r] = _mm512_maskz_loadu_epi16(m, rows[r] + 2 * k);
    for (int t = 0; t < TT; ++t) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, x[t] + k);
      for (int r = 0; r < RT; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)w[r], xv);
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < TT; ++t) out[r][t] = vhsum(F{acc[r][t]});
}

QWEN35_BF16 void gemm_bf16(const GemmArgs& a, int64_t r0, int64_t r1) {
  drive(a, r0, r1, 1.0f, [](const uint8_t* const*) {}, [&](const uint8_t* const* rows, int64_t t, int tt, float out[RT][4]) {
    const uint16_t* x[4];
    for (int j = 0; j < tt; ++j)
      x[j] = reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(a.x) + size_t(t + j) * a.x_stride);
    if (tt == 4) bf16tile<4>(rows, x, a.K, out);
    else if (tt == 2) bf16tile<2>(rows, x, a.K, out);
    else bf16tile<1>(rows, x, a.K, out);
  });
}

const bool kHasBf16 = cpu_has_avx512_bf16();

bool converts_acts(uint32_t type) {
  return uses_quantized_acts(type) || (type == GGML_BF16 && kHasBf16) || type == kQ6kScreen;
}

void convert_act(uint32_t type, const float* x, int64_t K, uint8_t* dst) {
  if (type == kQ6kScreen) type = GGML_Q6_K;  // the same activations as the exact product
  if (type != GGML_BF16) {
    quantize_act_fast(type, x, K, dst);
    return;
  }
  const ActLayout L = act_layout(K);
  memset(dst, 0, L.stride);
  convert_bf16(x, K, reinterpret_cast<uint16_t*>(dst));
}

bool gemm(const GemmArgs& a, int64_t r0, int64_t r1) {
  switch (a.type) {
    case GGML_NVFP4: gemm_q<Nvfp4>(a, r0, r1); return true;
    case GGML_Q8_0: gemm_q<Q8_0>(a, r0, r1); return true;
    case GGML_Q4_K: gemm_q<Q4K>(a, r0, r1); return true;
    case GGML_Q6_K: gemm_q<Q6K>(a, r0, r1); return true;
    case kQ6kScreen: gemm_q<Q6KScreen>(a, r0, r1); return true;
    case GGML_F32: gemm_f<GGML_F32>(a, r0, r1); return true;
    case GGML_F16: gemm_f<GGML_F16>(a, r0, r1); return true;
    case GGML_BF16:
      if (kHasBf16) gemm_bf16(a, r0, r1);
      else gemm_f<GGML_BF16>(a, r0, r1);
      return true;
    default: return false;
  }
}

}  // namespace
}  // namespace avx512

const KernelSet& kernels_avx512() {
  static const KernelSet ks = {
      "avx512",
      avx512::converts_acts,
      avx512::convert_act,
      avx512::gemm,
      avx512::dot,
      avx512::rmsnorm_impl,
      avx512::l2norm_impl,
      avx512::silu_mul_impl,
      avx512::mul_sigmoid_impl,
      avx512::gated_rmsnorm_impl,
      avx512::conv_silu_impl,
      avx512::rope_impl,
      avx512::attend_impl,
      avx512::delta_rule_impl,
      avx512::delta_rule_chunked_impl,
  };
  return ks;
}

}  // namespace qwen35::cpu
