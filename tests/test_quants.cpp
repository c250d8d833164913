// Weight formats: the NVFP4 reference quantizer test vector (spec §6.7),
// dequantization anchors, round trips and the reference dot product.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "quants.h"

using namespace qwen35;

TEST_CASE("NVFP4 reference quantizer reproduces the spec test vector bit for bit") {
  float x[64];
  for (int k = -8; k < 8; ++k) x[k + 8] = float(k) / 64.0f;
  const float s1[16] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5, -0.25f, -0.75f, -1.25f, -1.75f, -2.5f, -3.5f, -5, 6, -6};
  for (int i = 0; i < 16; ++i) x[16 + i] = s1[i];
  for (int i = 0; i < 16; ++i) x[32 + i] = 0;
  x[32 + 5] = std::ldexp(1.0f, -10);
  x[32 + 9] = -std::ldexp(1.0f, -10);
  const float s3[16] = {100, -37.5f, 0.5f, -8, 24, -24, 47.5f, 3, 0, -100, 56, -56, 12, -12, 80, -0.25f};
  for (int i = 0; i < 16; ++i) x[48 + i] = s3[i];

  BlockNVFP4 b;
  quantize_row_nvfp4_ref(x, &b, 64);
  const uint8_t want[36] = {0x0B, 0x38, 0x00, 0x58, 0x0F, 0x1F, 0x3E, 0x4E, 0x5D, 0x6C, 0x6B, 0x79,
                            0x90, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0x76, 0xF0, 0x00, 0x00, 0x00, 0x00,
                            0x00, 0x00, 0x00, 0x00, 0x07, 0xFC, 0x50, 0xD9, 0x13, 0x9B, 0x65, 0x00};
  const uint8_t* got = reinterpret_cast<const uint8_t*>(&b);
  for (int i = 0; i < 36; ++i) CHECK_MESSAGE(got[i] == want[i], "byte " << i);

  float y[64];
  REQUIRE(dequantize_row(GGML_NVFP4, &b, y, 64));
  const float sub1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 0, -0.5f, -1, -1.5f, -2, -3, -4, 6, -6};
  const float sub3[16] = {96, -32, 0, -8, 24, -24, 48, 0, 0, -96, 48, -48, 8, -8, 64, 0};
  for (int i = 0; i < 16; ++i) {
    CHECK(y[16 + i] == sub1[i]);
    CHECK(y[32 + i] == 0.0f);
    CHECK(y[48 + i] == sub3[i]);
  }
  CHECK(y[0] == -0.12890625f);
  CHECK(y[9] == 0.0107421875f);
}

TEST_CASE("UE4M3 decoding anchors") {
  CHECK(ue4m3_to_fp32(0x00) == 0.0f);
  CHECK(ue4m3_to_fp32(0x7F) == 0.0f);
  CHECK(ue4m3_to_fp32(0x01) == std::ldexp(1.0f, -9));
  CHECK(ue4m3_to_fp32(0x07) == 0.013671875f);
  CHECK(ue4m3_to_fp32(0x08) == 0.015625f);
  CHECK(ue4m3_to_fp32(0x38) == 1.0f);
  CHECK(ue4m3_to_fp32(0x39) == 1.125f);
  CHECK(ue4m3_to_fp32(0x40) == 2.0f);
  CHECK(ue4m3_to_fp32(0x7E) == 448.0f);
  CHECK(ue4m3_to_fp32(0x80) == 0.0f);
  CHECK(ue4m3_to_fp32(0xFF) == 480.0f);
}

TEST_CASE("NVFP4 re-quantization round trip (spec §7.3)") {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> x(64 * 64);
  for (auto& v : x) v = nd(rng);
  std::vector<BlockNVFP4> q(64), q2(64);
  quantize_row_nvfp4_ref(x.data(), q.data(), int64_t(x.size()));
  std::vector<float> y(x.size());
  dequantize_row(GGML_NVFP4, q.data(), y.data(), int64_t(y.size()));
  quantize_row_nvfp4_ref(y.data(), q2.data(), int64_t(y.size()));
  for (size_t b = 0; b < q.size(); ++b)
    for (int s = 0; s < 4; ++s) {
      if (q[b].d[s] >= 0x01 && q[b].d[s] <= 0x07) continue;  // subnormal scales may shrink
      CHECK(q[b].d[s] == q2[b].d[s]);
      for (int j = 0; j < 8; ++j) CHECK(q[b].qs[8 * s + j] == q2[b].qs[8 * s + j]);
    }
}

TEST_CASE("F16 and BF16 conversions") {
  CHECK(fp16_to_fp32(0x3C00) == 1.0f);
  CHECK(fp16_to_fp32(0xC000) == -2.0f);
  CHECK(fp16_to_fp32(0x0001) == std::ldexp(1.0f, -24));
  CHECK(fp16_to_fp32(0x7BFF) == 65504.0f);
  CHECK(std::isinf(fp16_to_fp32(0x7C00)));
  CHECK(std::isnan(fp16_to_fp32(0x7E00)));
  // Every half value survives a round trip.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue;  // NaN payloads
    CHECK_MESSAGE(fp32_to_fp16(fp16_to_fp32(uint16_t(h))) == h, "half " << h);
  }
  CHECK(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);  // tie to even
  CHECK(fp32_to_fp16(1e6f) == 0x7C00);
  CHECK(bf16_to_fp32(fp32_to_bf16(3.0f)) == 3.0f);
}

TEST_CASE("every computable type: quantize, dequantize and the reference dot agree") {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t n = 512;
  std::vector<float> x(n), v(n), y(n);
  for (auto& a : x) a = nd(rng);
  for (auto& a : v) a = nd(rng);
  for (uint32_t t : {GGML_F32, GGML_F16, GGML_BF16, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K, GGML_NVFP4, GGML_MXFP4}) {
    const TypeInfo* ti = type_info(t);
    CAPTURE(ti->name);
    std::vector<uint8_t> q(row_bytes(*ti, n));
    REQUIRE(quantize_row(t, x.data(), q.data(), n));
    REQUIRE(dequantize_row(t, q.data(), y.data(), n));
    double err = 0, ref = 0;
    for (int64_t i = 0; i < n; ++i) {
      err += (x[i] - y[i]) * (x[i] - y[i]);
      ref += x[i] * x[i];
    }
    // Quantization error bounded by the format's precision.
    CHECK(std::sqrt(err / ref) < 0.2);
    float dot = 0;
    for (int64_t i = 0; i < n; ++i) dot += y[i] * v[i];
    CHECK(vec_dot_ref(t, q.data(), v.data(), n) == doctest::Approx(dot).epsilon(1e-5));
  }
}

TEST_CASE("Q6_K and Q4_K layouts decode the documented bit positions") {
  // Q6_K: put q = 5 (stored 37) at element 200 with scale 2 and d = 1.
  BlockQ6_K b{};
  b.d = fp32_to_fp16(1.0f);
  for (auto& s : b.scales) s = 2;
  // All other elements stored as 32 (q = 0).
  for (int e = 0; e < 256; ++e) {
    int q = (e == 200) ? 37 : 32;
    int h = e / 128, r = e % 128, c = r / 32, l = r % 32;
    uint8_t& ql = b.ql[64 * h + 32 * (c & 1) + l];
    ql = uint8_t(c < 2 ? (ql & 0xF0) | (q & 15) : (ql & 0x0F) | ((q & 15) << 4));
    b.qh[32 * h + l] = uint8_t((b.qh[32 * h + l] & ~(3 << (2 * c))) | ((q >> 4) << (2 * c)));
  }
  float y[256];
  dequantize_row(GGML_Q6_K, &b, y, 256);
  for (int e = 0; e < 256; ++e) CHECK(y[e] == (e == 200 ? 10.0f : 0.0f));

  // Q4_K: sub-block 5 scale 3, min 1; element 64*2+32+7 = 167 has q = 9.
  BlockQ4_K k{};
  k.d = fp32_to_fp16(0.5f);
  k.dmin = fp32_to_fp16(0.25f);
  // sc_5 = (scales[9] & 15) | ((scales[1] >> 6) << 4); m_5 = (scales[9] >> 4) | ((scales[5] >> 6) << 4)
  k.scales[9] = uint8_t(3 | (1 << 4));
  k.qs[32 * 2 + 7] = uint8_t(9 << 4);
  dequantize_row(GGML_Q4_K, &k, y, 256);
  CHECK(y[167] == 0.5f * 3 * 9 - 0.25f * 1);
  CHECK(y[160] == -0.25f);
}
