// AVX2 + FMA + F16C kernels. Compiled with those instruction sets enabled and
// only called after cpu_has_avx2() (kernels.cpp); see kernels.h for the rules
// this file follows.
//
// Quantized matrix products: 32 weights per YMM register are decoded to
// unsigned bytes, multiplied with the int8 activations by vpmaddubsw (pairs
// to int16; every format keeps |pair| < 2^15) and vpmaddwd (to int32 groups
// of 4), corrected by the activation row's offset term, then converted and
// scaled per lane in F32. Q8_0 uses the sign trick (|w| times x with w's
// sign) instead of an offset, which would overflow int16.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "cpu/kernels.h"
#include "ggml_types.h"
#include "quants.h"  // block layouts only: no function from it is called here

namespace qwen35::cpu {
namespace avx2 {

// ---- SIMD wrapper for vecops.inc ----------------------------------------------

constexpr int W = 8;
struct F {
  __m256 v;
};
inline __m256i first_n(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline F vzero() { return {_mm256_setzero_ps()}; }
inline F vset1(float a) { return {_mm256_set1_ps(a)}; }
inline F vload(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void vstore(float* p, F a) { _mm256_storeu_ps(p, a.v); }
inline F vloadn(const float* p, int64_t n) { return {_mm256_maskload_ps(p, first_n(n))}; }
inline void vstoren(float* p, F a, int64_t n) { _mm256_maskstore_ps(p, first_n(n), a.v); }
inline F vadd(F a, F b) { return {_mm256_add_ps(a.v, b.v)}; }
inline F vsub(F a, F b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline F vmul(F a, F b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline F vdiv(F a, F b) { return {_mm256_div_ps(a.v, b.v)}; }
inline F vmax(F a, F b) { return {_mm256_max_ps(a.v, b.v)}; }
inline F vfma(F a, F b, F c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline float vhsum(F a) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}
inline F vexp(F a) {
  // Cephes expf: e^x = 2^n e^r; 2^n built in the exponent field (n in [-126, 127]).
  __m256 x = _mm256_min_ps(_mm256_max_ps(a.v, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return {_mm256_mul_ps(p, _mm256_castsi256_ps(e))};
}

#include "cpu/vecops.inc"

// ---- quantized matrix products --------------------------------------------------

namespace {

constexpr int RT = 2;  // weight rows per tile (16 YMM registers)
constexpr int TB = 64; // activation rows per cache block

struct XRow {
  const int8_t* q;
  const int32_t* corr;
  const float* xs;
  const float* s32;
};

inline float f16(uint16_t h) { return _cvtsh_ss(h); }

// Lane l of a 32-element step covers positions 4l..4l+3.
inline __m256 xs_lanes_pairs(const float* xs4) {  // groups l/2 (NVFP4 nibble order)
  return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(xs4)), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
}
inline __m256 xs_lanes_halves(const float* xs2) {  // groups l/4 (natural order)
  const __m128 two = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(xs2)));
  return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}
inline __m256i mask_nibble_lo(__m256i b) { return _mm256_and_si256(b, _mm256_set1_epi8(0x0F)); }
inline __m256i mask_nibble_hi(__m256i b) { return _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi8(0x0F)); }

// Integer sums of 4 products per lane: u8 weights times s8 activations.
inline __m256i dot4(__m256i wu, __m256i x) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(wu, x), _mm256_set1_epi16(1));
}

// Each format: per unit (a block or super-block) a setup, then kSteps steps
// of 32 elements: the unsigned weight bytes and per-lane weight scales
// (wstep), the activation scales per lane, and the exact int32 lane sums.
struct Nvfp4 {
  static constexpr int kElems = 64, kSteps = 2, kUnitBytes = 36;
  static constexpr bool kMins = false;
  static constexpr float kOutScale = 128.0f;  // UE4M3 read through F16 (see the AVX-512 kernels)
  struct Unit {
    const BlockNVFP4* b;
    __m256 ws;  // lanes [d0 d0 d1 d1 d2 d2 d3 d3], same for both steps
  };
  static void setup(const uint8_t* row, int64_t u, Unit* s) {
    s->b = reinterpret_cast<const BlockNVFP4*>(row) + u;
    uint32_t d4;
    memcpy(&d4, s->b->d, 4);
    const __m128i sel = _mm_setr_epi8(0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1);
    const __m128i raw = _mm_shuffle_epi8(_mm_set1_epi32(int(d4)), sel);
    // As llama.cpp's decoder: the byte 0x7F reads as 0, otherwise bit 7 is ignored.
    const __m128i code = _mm_andnot_si128(_mm_cmpeq_epi16(raw, _mm_set1_epi16(0x7F)),
                                          _mm_and_si128(raw, _mm_set1_epi16(0x7F)));
    s->ws = _mm256_cvtph_ps(_mm_slli_epi16(code, 7));
  }
  static void wstep(const Unit& s, int v, __m256i* w, __m256* ws) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.b->qs));
    *w = _mm256_shuffle_epi8(table, v == 0 ? mask_nibble_lo(qs) : mask_nibble_hi(qs));
    *ws = s.ws;
  }
  // Scales of the block's four groups, in nibble order; e0 is the step's first position.
  static __m256 xs_lanes(const float* xs, int64_t e0, int v) { return xs_lanes_pairs(xs + (e0 - 32 * v) / 16); }
  static __m256i isum(__m256i w, __m256i xq, const int32_t* corr) {
    return _mm256_add_epi32(dot4(w, xq), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr)));
  }
};

struct Q8_0 {
  static constexpr int kElems = 32, kSteps = 1, kUnitBytes = 34;
  static constexpr bool kMins = false;
  static constexpr float kOutScale = 1.0f;
  struct Unit {
    const BlockQ8_0* b;
    __m256 ws;
  };
  static void setup(const uint8_t* row, int64_t u, Unit* s) {
    s->b = reinterpret_cast<const BlockQ8_0*>(row) + u;
    s->ws = _mm256_set1_ps(f16(s->b->d));
  }
  static void wstep(const Unit& s, int, __m256i* w, __m256* ws) {
    *w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.b->qs));
    *ws = s.ws;
  }
  static __m256 xs_lanes(const float* xs, int64_t e0, int) { return xs_lanes_halves(xs + e0 / 16); }
  static __m256i isum(__m256i w, __m256i xq, const int32_t*) {
    return dot4(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w));
  }
};

struct Q4K {
  static constexpr int kElems = 256, kSteps = 8, kUnitBytes = 144;
  static constexpr bool kMins = true;
  static constexpr float kOutScale = 1.0f;
  struct Unit {
    const BlockQ4_K* b;
    float sc[8];
    __m256 mins;  // dmin * min of group j
  };
  static void setup(const uint8_t* row, int64_t u, Unit* s) {
    const BlockQ4_K* b = reinterpret_cast<const BlockQ4_K*>(row) + u;
    s->b = b;
    uint32_t a[3];
    memcpy(a, b->scales, 12);
    const uint32_t m1 = 0x3f3f3f3f, m2 = 0x0f0f0f0f, m3 = 0x03030303;
    const uint32_t sc[2] = {a[0] & m1, (a[2] & m2) | (((a[0] >> 6) & m3) << 4)};
    const uint32_t mn[2] = {a[1] & m1, ((a[2] >> 4) & m2) | (((a[1] >> 6) & m3) << 4)};
    uint8_t scb[8], mnb[8];
    memcpy(scb, sc, 8);
    memcpy(mnb, mn, 8);
    const float d = f16(b->d), dmin = f16(b->dmin);
    for (int j = 0; j < 8; ++j) s->sc[j] = d * float(scb[j]);
    s->mins = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mnb)))),
                            _mm256_set1_ps(dmin));
  }
  static void wstep(const Unit& s, int v, __m256i* w, __m256* ws) {
    const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.b->qs + 32 * (v / 2)));
    *w = v % 2 == 0 ? mask_nibble_lo(qs) : mask_nibble_hi(qs);
    *ws = _mm256_set1_ps(s.sc[v]);
  }
  static __m256 xs_lanes(const float* xs, int64_t e0, int) { return xs_lanes_halves(xs + e0 / 16); }
  static __m256i isum(__m256i w, __m256i xq, const int32_t*) { return dot4(w, xq); }
};

struct Q6K {
  static constexpr int kElems = 256, kSteps = 8, kUnitBytes = 210;
  static constexpr bool kMins = false;
  static constexpr float kOutScale = 1.0f;
  struct Unit {
    const BlockQ6_K* b;
    __m256 sc[2];  // d * scale of groups 0-7 and 8-15
  };
  static void setup(const uint8_t* row, int64_t u, Unit* s) {
    s->b = reinterpret_cast<const BlockQ6_K*>(row) + u;
    const __m256 d = _mm256_set1_ps(f16(s->b->d));
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s->b->scales));
    s->sc[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc8)), d);
    s->sc[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc8, 8))), d);
  }
  // Step v: elements 32v..32v+31; half h = v/4, c = v%4: ql[64h + 32(c&1) + l]
  // (low nibble for c < 2) and bits 2c of qh[32h + l]; groups 2v and 2v+1.
  static void wstep(const Unit& s, int v, __m256i* w, __m256* ws) {
    const int h = v / 4, c = v % 4;
    const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.b->ql + 64 * h + 32 * (c & 1)));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.b->qh + 32 * h));
    const __m256i lo = c < 2 ? mask_nibble_lo(ql) : mask_nibble_hi(ql);
    const __m256i hb = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * c), 4), _mm256_set1_epi8(0x30));
    *w = _mm256_or_si256(lo, hb);
    const int g = (2 * v) % 8;
    *ws = _mm256_permutevar8x32_ps(s.sc[v / 4], _mm256_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1));
  }
  static __m256 xs_lanes(const float* xs, int64_t e0, int) { return xs_lanes_halves(xs + e0 / 16); }
  static __m256i isum(__m256i w, __m256i xq, const int32_t* corr) {
    return _mm256_add_epi32(dot4(w, xq), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr)));
  }
};

// Weights of a tile, decoded as the tile runs. Each unit also prefetches the
// same bytes of the next tile's rows: the hardware prefetcher barely trains
// on such short interleaved streams.
template <class Fmt>
struct LiveWeights {
  const uint8_t* const* rows;
  uint64_t stride;
  typename Fmt::Unit s[RT];
  void unit(int64_t u) {
    for (int r = 0; r < RT; ++r) Fmt::setup(rows[r], u, &s[r]);
    for (int r = 0; r < RT; ++r)
      for (int l = 0; l < Fmt::kUnitBytes; l += 64)
        _mm_prefetch(reinterpret_cast<const char*>(rows[r] + RT * stride + u * Fmt::kUnitBytes + l), _MM_HINT_T0);
  }
  void step(int v, __m256i* w, __m256* ws) {
    for (int r = 0; r < RT; ++r) Fmt::wstep(s[r], v, &w[r], &ws[r]);
  }
  __m256 mins(int r) const {
    if constexpr (Fmt::kMins) return s[r].mins;
    return _mm256_setzero_ps();
  }
};

// Weights of a tile decoded once into a buffer (prefill), read back exactly
// as LiveWeights makes them: per unit, per step and row the weight bytes and
// lane scales, then per row the mins.
template <class Fmt>
struct BufferedWeights {
  static constexpr int64_t kUnit = Fmt::kSteps * RT * 64 + (Fmt::kMins ? RT * 32 : 0);
  static size_t bytes(int64_t K) { return size_t(K / Fmt::kElems * kUnit); }
  const uint8_t* buf;
  const uint8_t* cur = nullptr;
  void unit(int64_t u) { cur = buf + u * kUnit; }
  void step(int v, __m256i* w, __m256* ws) {
    for (int r = 0; r < RT; ++r) {
      const uint8_t* p = cur + (v * RT + r) * 64;
      w[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
      ws[r] = _mm256_load_ps(reinterpret_cast<const float*>(p + 32));
    }
  }
  __m256 mins(int r) const { return _mm256_load_ps(reinterpret_cast<const float*>(cur + Fmt::kSteps * RT * 64 + r * 32)); }
  static void fill(LiveWeights<Fmt>& src, int64_t K, uint8_t* dst) {
    for (int64_t u = 0; u < K / Fmt::kElems; ++u) {
      uint8_t* p = dst + u * kUnit;
      src.unit(u);
      for (int v = 0; v < Fmt::kSteps; ++v) {
        __m256i w[RT];
        __m256 ws[RT];
        src.step(v, w, ws);
        for (int r = 0; r < RT; ++r) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(p + (v * RT + r) * 64), w[r]);
          _mm256_store_ps(reinterpret_cast<float*>(p + (v * RT + r) * 64 + 32), ws[r]);
        }
      }
      if constexpr (Fmt::kMins)
        for (int r = 0; r < RT; ++r) _mm256_store_ps(reinterpret_cast<float*>(p + Fmt::kSteps * RT * 64 + r * 32), src.mins(r));
    }
  }
};

// A tile of RT weight rows x TT activation rows over the whole of K; both
// weight sources feed the same arithmetic.
template <class Fmt, int TT, class Weights>
void qtile(Weights& wt, const XRow* x, int64_t K, float out[RT][4]) {
  __m256 acc[RT][TT];
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int64_t u = 0; u < K / Fmt::kElems; ++u) {
    wt.unit(u);
    for (int v = 0; v < Fmt::kSteps; ++v) {
      const int64_t e0 = u * Fmt::kElems + 32 * v;
      __m256i w[RT];
      __m256 ws[RT];
      wt.step(v, w, ws);
      for (int t = 0; t < TT; ++t) {
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t].q + e0));
        const __m256 xs = Fmt::xs_lanes(x[t].xs, e0, v);
        for (int r = 0; r < RT; ++r) {
          const __m256i isum = Fmt::isum(w[r], xq, x[t].corr + e0 / 4);
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(ws[r], xs), acc[r][t]);
        }
      }
    }
    if constexpr (Fmt::kMins) {
      for (int t = 0; t < TT; ++t) {
        const __m256 s32 = _mm256_loadu_ps(x[t].s32 + u * 8);
        for (int r = 0; r < RT; ++r) acc[r][t] = _mm256_fnmadd_ps(wt.mins(r), s32, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < TT; ++t) out[r][t] = vhsum(F{acc[r][t]});
}

template <uint32_t kType>
inline __m256 load_w(const uint8_t* row, int64_t k, int64_t n) {
  if (n >= 8) {
    if constexpr (kType == GGML_F32) return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k));
    if constexpr (kType == GGML_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  if constexpr (kType == GGML_F32) return _mm256_maskload_ps(reinterpret_cast<const float*>(row) + k, first_n(n));
  uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  memcpy(tmp, row + 2 * k, size_t(n) * 2);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tmp));
  if constexpr (kType == GGML_F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <uint32_t kType, int TT>
void ftile(const uint8_t* const* rows, const float* const* x, int64_t K, float out[RT][4]) {
  __m256 acc[RT][TT];
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {
    const int64_t m = K - k;
    __m256 w[RT];
    for (int r = 0; r < RT; ++r) w[r] = load_w<kType>(rows[r], k, m);
    for (int t = 0; t < TT; ++t) {
      const __m256 xv = m >= 8 ? _mm256_loadu_ps(x[t] + k) : _mm256_maskload_ps(x[t] + k, first_n(m));
      for (int r = 0; r < RT; ++r) acc[r][t] = _mm256_fmadd_ps(w[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < TT; ++t) out[r][t] = vhsum(F{acc[r][t]});
}

// Rows [r0, r1) in tiles of RT (a short last tile repeats its last row),
// activation rows in blocks of TB and tiles of 4 (remainder one at a time).
// prepare(rows) runs once per weight tile and activation block.
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

// Batches of at least this many rows decode each weight tile once.
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
          LiveWeights<Fmt> live{rows, a.w_stride, {}};
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
        LiveWeights<Fmt> wt{rows, a.w_stride, {}};
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

bool gemm(const GemmArgs& a, int64_t r0, int64_t r1) {
  switch (a.type) {
    case GGML_NVFP4: gemm_q<Nvfp4>(a, r0, r1); return true;
    case GGML_Q8_0: gemm_q<Q8_0>(a, r0, r1); return true;
    case GGML_Q4_K: gemm_q<Q4K>(a, r0, r1); return true;
    case GGML_Q6_K: gemm_q<Q6K>(a, r0, r1); return true;
    case GGML_F32: gemm_f<GGML_F32>(a, r0, r1); return true;
    case GGML_F16: gemm_f<GGML_F16>(a, r0, r1); return true;
    case GGML_BF16: gemm_f<GGML_BF16>(a, r0, r1); return true;
    default: return false;
  }
}

}  // namespace
}  // namespace avx2

const KernelSet& kernels_avx2() {
  static const KernelSet ks = {
      "avx2",
      uses_quantized_acts,
      avx2::quantize_act_impl,
      avx2::gemm,
      avx2::dot,
      avx2::rmsnorm_impl,
      avx2::l2norm_impl,
      avx2::silu_mul_impl,
      avx2::mul_sigmoid_impl,
      avx2::gated_rmsnorm_impl,
      avx2::conv_silu_impl,
      avx2::rope_impl,
      avx2::attend_impl,
      avx2::delta_rule_impl,
      avx2::delta_rule_chunked_impl,
  };
  return ks;
}

}  // namespace qwen35::cpu
