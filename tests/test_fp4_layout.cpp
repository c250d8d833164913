// The weight layouts of the CUDA decode kernels, checked on the CPU (they are
// plain host/device functions in cuda/*.h, so CI runs this without a GPU):
// the tiled NVFP4 layout and its bit-level E2M1 -> F16 decoding, the
// tensor-core fragment mapping (emulated from the PTX fragment tables), and
// the row-interleaved and tiled Q6_K layouts, and the tiled Q8_0, Q4_K and F16 layouts.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "fp4_blockscale.h"
#include "fp4_tiled.h"
#include "ggml_types.h"
#include "q6k_rows32.h"
#include "q6k_tiled.h"
#include "f16_tiled.h"
#include "q4k_tiled.h"
#include "q8_tiled.h"
#include "quants.h"
#include "test_util.h"

using namespace qwen35;
using namespace qwen35::cuda;

namespace {

// A random NVFP4 matrix in GGUF layout (random codes and scale bytes,
// including the special scale codes 0x00 and 0x7F).
std::vector<uint8_t> random_nvfp4(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> m(size_t(rows * (cols / 64) * 36));
  for (size_t i = 0; i < m.size(); ++i) {
    const size_t in_block = i % 36;
    if (in_block < 4) {
      const uint32_t r = rng() % 100;
      m[i] = r == 0 ? 0x00 : r == 1 ? 0x7F : uint8_t(1 + rng() % 0x7E);
    } else {
      m[i] = uint8_t(rng());
    }
  }
  return m;
}

float half_bits_value(uint32_t h16) { return fp16_to_fp32(uint16_t(h16)); }

// The 16 block pointers of a tile-kgroup.
void tile_blocks(const std::vector<uint8_t>& a, const std::vector<uint8_t>* b, int64_t rows, int64_t cols,
                 Fp4Pairing pairing, int64_t tile, int64_t kg, const uint8_t** block) {
  const uint64_t rb = uint64_t(cols / 64) * 36;
  for (int r = 0; r < kFp4TileRows; ++r) {
    bool second = false;
    const int64_t src = fp4_source_row(pairing, tile, r, &second);
    block[r] = src < rows ? (second ? b->data() : a.data()) + uint64_t(src) * rb + uint64_t(kg) * 36 : nullptr;
  }
}

// Every code at every position of a word's eight, 20 times with random
// codes at the others: check(codes) for each.
template <typename Check>
void each_code_at_each_position(uint32_t seed, Check&& check) {
  std::mt19937 rng(seed);
  for (int p = 0; p < 8; ++p) {
    for (int code = 0; code < 16; ++code) {
      for (int trial = 0; trial < 20; ++trial) {
        uint8_t codes[8];
        for (uint8_t& c : codes) c = uint8_t(rng() % 16);
        codes[p] = uint8_t(code);
        check(codes);
      }
    }
  }
}

}  // namespace

TEST_CASE("fp4 words: every code at every position decodes to E2M1 * 2^-14, the others unchanged") {
  each_code_at_each_position(1, [](const uint8_t* codes) {
    uint32_t a[4];
    fp4_unpack_word(fp4_pack_word(codes), a);
    for (int q = 0; q < 8; ++q) {
      const float got = half_bits_value((a[q >> 1] >> (16 * (q & 1))) & 0xFFFFu) * 16384.0f;
      REQUIRE(got == kE2M1[codes[q]]);
      // -0 keeps its sign bit: the F16 pattern is exact, not just the value.
      REQUIRE(std::signbit(got) == std::signbit(kE2M1[codes[q]]));
    }
  });
}

TEST_CASE("fp4_x_index permutes each 16-column chunk into per-lane B fragments") {
  for (int chunk = 0; chunk < 3; ++chunk) {
    std::vector<int> seen(16, 0);
    for (int k = 0; k < 16; ++k) {
      const int idx = fp4_x_index(16 * chunk + k);
      REQUIRE(idx / 16 == chunk);
      seen[size_t(idx % 16)]++;
    }
    for (int s : seen) CHECK(s == 1);
  }
  // Lane t's four values: k = 2t, 2t+1, 2t+8, 2t+9.
  for (int t = 0; t < 4; ++t) {
    CHECK(fp4_x_index(2 * t) == 4 * t);
    CHECK(fp4_x_index(2 * t + 1) == 4 * t + 1);
    CHECK(fp4_x_index(2 * t + 8) == 4 * t + 2);
    CHECK(fp4_x_index(2 * t + 9) == 4 * t + 3);
  }
}

TEST_CASE("tiled NVFP4 repack keeps every value at its mapped position (plain, gate/up, padding rows)") {
  const int64_t cols = 192;
  for (Fp4Pairing pairing : {Fp4Pairing::Plain, Fp4Pairing::GateUp}) {
    const int64_t rows = pairing == Fp4Pairing::Plain ? 40 : 24;  // 40: a partial last tile
    auto a = random_nvfp4(rows, cols, 3);
    auto b = random_nvfp4(rows, cols, 4);
    const uint64_t rb = uint64_t(cols / 64) * 36;
    const int64_t tiles = fp4_tiles(pairing, rows);
    for (int64_t tile = 0; tile < tiles; ++tile) {
      for (int64_t kg = 0; kg < cols / 64; ++kg) {
        const uint8_t* block[16];
        tile_blocks(a, &b, rows, cols, pairing, tile, kg, block);
        uint8_t scales[64];
        for (int g = 0; g < 8; ++g) fp4_g_scales(block, g, scales + 8 * g);
        for (int lane = 0; lane < 32; ++lane) {
          uint32_t words[4];
          fp4_lane_words(block, lane, words);
          for (int w = 0; w < 4; ++w) {
            uint32_t ar[4];
            fp4_unpack_word(words[w], ar);
            for (int p = 0; p < 8; ++p) {
              int row, col;
              fp4_code_position(lane, w, p, &row, &col);
              const float v = half_bits_value((ar[p >> 1] >> (16 * (p & 1))) & 0xFFFFu) * 16384.0f *
                              ue4m3_to_fp32(scales[fp4_scale_byte(row, w)]);
              bool second = false;
              const int64_t src = fp4_source_row(pairing, tile, row, &second);
              float want = 0.0f;
              if (src < rows) {
                std::vector<float> deq(64);
                const auto& m = second ? b : a;
                dequantize_row(GGML_NVFP4, m.data() + uint64_t(src) * rb + uint64_t(kg) * 36, deq.data(), 64);
                want = deq[size_t(col)];
              }
              REQUIRE(v == want);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("emulated tensor-core matvec on the tiled layout equals the CPU dot products") {
  // The kernel's arithmetic per tile-kgroup, with the m16n8k16 fragments
  // taken from the PTX tables (not from fp4_code_position): A rows g / g+8,
  // columns 2t+{0,1} (+8); B rows 2t+{0,1} (+8), column g; C rows g / g+8,
  // columns 2t+{0,1}.
  const int64_t rows = 48, cols = 256, n = 3;
  auto w = random_nvfp4(rows, cols, 7);
  const uint64_t rb = uint64_t(cols / 64) * 36;
  std::mt19937 rng(9);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (float& v : x) v = float(int(rng() % 257) - 128) / 64.0f;  // exact in F16
  std::vector<uint16_t> xs(static_cast<size_t>(n * cols));  // the kernel's shared-memory copy
  for (int64_t j = 0; j < n; ++j)
    for (int64_t k = 0; k < cols; ++k) xs[size_t(j * cols + fp4_x_index(int(k)))] = fp32_to_fp16(x[size_t(j * cols + k)]);

  std::vector<double> y(static_cast<size_t>(n * rows), 0.0);
  for (int64_t tile = 0; tile < fp4_tiles(Fp4Pairing::Plain, rows); ++tile) {
    double acc[32][4] = {};
    for (int64_t kg = 0; kg < cols / 64; ++kg) {
      const uint8_t* block[16];
      tile_blocks(w, nullptr, rows, cols, Fp4Pairing::Plain, tile, kg, block);
      uint8_t scales[64];
      for (int g = 0; g < 8; ++g) fp4_g_scales(block, g, scales + 8 * g);
      uint32_t words[32][4];
      for (int lane = 0; lane < 32; ++lane) fp4_lane_words(block, lane, words[lane]);
      for (int wd = 0; wd < 4; ++wd) {
        float A[16][16], B[16][8] = {};
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane >> 2, t = lane & 3;
          uint32_t ar[4];
          fp4_unpack_word(words[lane][wd], ar);
          for (int reg = 0; reg < 4; ++reg)
            for (int hi = 0; hi < 2; ++hi)
              A[g + 8 * (reg & 1)][2 * t + hi + 8 * (reg >> 1)] = half_bits_value((ar[reg] >> (16 * hi)) & 0xFFFFu);
          if (g < n) {
            const uint16_t* xb = xs.data() + g * cols + (kg * 4 + wd) * 16 + t * 4;
            B[2 * t][g] = fp16_to_fp32(xb[0]);
            B[2 * t + 1][g] = fp16_to_fp32(xb[1]);
            B[2 * t + 8][g] = fp16_to_fp32(xb[2]);
            B[2 * t + 9][g] = fp16_to_fp32(xb[3]);
          }
        }
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane >> 2, t = lane & 3;
          for (int e = 0; e < 4; ++e) {
            const int r = g + 8 * (e >> 1), c = 2 * t + (e & 1);
            double d = 0;
            for (int k = 0; k < 16; ++k) d += double(A[r][k]) * B[k][c];
            acc[lane][e] += d * ue4m3_to_fp32(scales[fp4_scale_byte(r, wd)]);
          }
        }
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      for (int e = 0; e < 4; ++e) {
        const int64_t r = tile * 16 + g + 8 * (e >> 1);
        const int c = 2 * t + (e & 1);
        if (r < rows && c < n) y[size_t(c * rows + r)] = acc[lane][e] * 16384.0;
      }
    }
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < rows; ++r) {
      const double want = vec_dot_ref(GGML_NVFP4, w.data() + uint64_t(r) * rb, x.data() + j * cols, cols);
      REQUIRE(std::fabs(y[size_t(j * rows + r)] - want) <= 1e-4 * (1.0 + std::fabs(want)));
    }
}

namespace {

// A signed E4M3 byte's value (no NaN codes reach it here; fp4_blockscale.h's
// e4m3_value takes the positive scale bytes).
double e4m3_signed(uint32_t b) {
  const int e = int((b >> 3) & 15u), m = int(b & 7u);
  const double mag = e == 0 ? std::ldexp(double(m), -9) : std::ldexp(1.0 + m / 8.0, e - 7);
  return (b & 0x80u) ? -mag : mag;
}

// Round to the nearest E4M3 value (ties to the even code), |v| < 464.
uint8_t e4m3_nearest(double v) {
  uint8_t best = 0;
  double best_err = 1e300;
  for (uint32_t b = 0; b < 0x7F; ++b) {  // the non-negative finite codes
    const double err = std::fabs(e4m3_signed(b) - std::fabs(v));
    if (err < best_err || (err == best_err && (b & 1u) == 0)) {
      best = uint8_t(b);
      best_err = err;
    }
  }
  return uint8_t(best | (v < 0 && best != 0 ? 0x80u : 0u));
}

}  // namespace

TEST_CASE("fp8 words: every code at every position decodes to the E4M3 byte of E2M1 * 2^-6, the others unchanged") {
  each_code_at_each_position(2, [](const uint8_t* codes) {
    uint32_t a[2];
    fp8_unpack_word(fp8_pack_word(codes), a);
    for (int q = 0; q < 8; ++q) {
      const uint32_t byte = (a[q >> 2] >> (8 * (q & 3))) & 0xFFu;
      REQUIRE(e4m3_signed(byte) * 64.0 == double(kE2M1[codes[q]]));
      REQUIRE(((byte >> 7) != 0) == std::signbit(kE2M1[codes[q]]));  // -0 keeps its sign bit
    }
  });
}

TEST_CASE("fp8 B fragment bytes: each (sub-block, term, column) has its own byte, in register blk of its lane") {
  std::vector<int> seen(256, 0);
  for (int blk = 0; blk < 2; ++blk)
    for (int term = 0; term < 3; ++term)
      for (int col = 0; col < 16; ++col) {
        const int b = fp8_b_byte(blk, term, col);
        REQUIRE(b >= 0);
        REQUIRE(b < 256);
        seen[size_t(b)]++;
        const int lane = b / 8, reg = (b % 8) / 4;
        CHECK(lane / 4 == term + 4 * blk);  // B column: the term's
        CHECK(reg == blk);                  // fragment rows 16*blk ..
        CHECK(4 * (lane % 4) + b % 4 == col);
      }
  for (int c : seen) CHECK(c <= 1);
}

TEST_CASE("emulated FP8 tensor-core matvec (m16n8k32, three E4M3 terms) on the FP8 words equals the CPU dot products") {
  // The kernel's arithmetic (fp8_kgroup, fp8_quad_sum) with the fragments
  // taken from the PTX tables for m16n8k32 with 8-bit inputs: A rows g / g+8
  // (registers 0, 2 / 1, 3), columns 4c+b (+16 for registers 2, 3); B rows
  // 4c+b (+16 for b1), column g; C rows g / g+8, columns 2c, 2c+1.
  const int64_t rows = 48, cols = 256;
  for (Fp4Pairing pairing : {Fp4Pairing::Plain, Fp4Pairing::GateUp}) {
    auto w = random_nvfp4(rows, cols, 11);
    auto w2 = random_nvfp4(rows, cols, 12);
    const uint64_t rb = uint64_t(cols / 64) * 36;
    std::mt19937 rng(13);
    std::uniform_real_distribution<float> ud(-3.0f, 3.0f);
    std::vector<float> x(static_cast<size_t>(cols));
    for (float& v : x) v = ud(rng);
    // Per chunk: the exponent and the three terms in B-fragment bytes.
    const int64_t nch = cols / 16;
    std::vector<uint8_t> bfrag(size_t(nch / 2) * 256, 0);
    std::vector<double> mult(static_cast<size_t>(nch));
    for (int64_t c = 0; c < nch; ++c) {
      float amax = 0.0f;
      for (int i = 0; i < 16; ++i) amax = std::max(amax, std::fabs(x[size_t(16 * c + i)]));
      const int e = tc_chunk_exponent(amax) + 7;
      mult[size_t(c)] = std::ldexp(1.0, e - 8);
      for (int i = 0; i < 16; ++i) {
        double r = std::ldexp(double(x[size_t(16 * c + i)]), -e);
        for (int term = 0; term < 3; ++term) {
          const uint8_t q = e4m3_nearest(r);
          r -= e4m3_signed(q);
          bfrag[size_t(c / 2) * 256 + size_t(fp8_b_byte(int(c % 2), term, i))] = q;
        }
      }
    }
    const int64_t tiles = fp4_tiles(pairing, rows);
    for (int64_t tile = 0; tile < tiles; ++tile) {
      double acc[32][4] = {};
      for (int64_t kg = 0; kg < cols / 64; ++kg) {
        const uint8_t* block[16];
        tile_blocks(w, &w2, rows, cols, pairing, tile, kg, block);
        uint8_t scales[64];
        for (int g = 0; g < 8; ++g) fp4_g_scales(block, g, scales + 8 * g);
        uint32_t words[32][4];
        for (int lane = 0; lane < 32; ++lane) fp8_lane_words(block, lane, words[lane]);
        for (int pr = 0; pr < 2; ++pr) {
          double A[16][32], B[32][8];
          for (int lane = 0; lane < 32; ++lane) {
            const int g = lane >> 2, c = lane & 3;
            uint32_t ar[4];
            fp8_unpack_word(words[lane][2 * pr], ar);
            fp8_unpack_word(words[lane][2 * pr + 1], ar + 2);
            for (int reg = 0; reg < 4; ++reg)
              for (int b = 0; b < 4; ++b)
                A[g + 8 * (reg & 1)][4 * c + b + 16 * (reg >> 1)] = e4m3_signed((ar[reg] >> (8 * b)) & 0xFFu);
            const uint8_t* xb = bfrag.data() + size_t(2 * kg + pr) * 256 + size_t(lane) * 8;
            for (int b = 0; b < 4; ++b) {
              B[4 * c + b][g] = e4m3_signed(xb[b]);
              B[16 + 4 * c + b][g] = e4m3_signed(xb[4 + b]);
            }
          }
          for (int lane = 0; lane < 32; ++lane) {
            const int g = lane >> 2, c = lane & 3, blk = c >> 1;
            const int64_t chunk = 4 * kg + 2 * pr + blk;
            for (int e = 0; e < 4; ++e) {
              const int r = g + 8 * (e >> 1), col = 2 * c + (e & 1);
              double d = 0;
              for (int k = 0; k < 32; ++k) d += A[r][k] * B[k][col];
              acc[lane][e >> 1] += d * ue4m3_to_fp32(scales[fp4_scale_byte(r, 2 * pr + blk)]) * mult[size_t(chunk)];
            }
          }
        }
      }
      for (int g = 0; g < 8; ++g)
        for (int half = 0; half < 2; ++half) {
          double sum = 0;
          for (int c = 0; c < 4; ++c) sum += acc[4 * g + c][half];  // the quad's sums
          bool second = false;
          const int64_t src = fp4_source_row(pairing, tile, g + 8 * half, &second);
          if (src >= rows) continue;
          const auto& m = second ? w2 : w;
          const double want = vec_dot_ref(GGML_NVFP4, m.data() + uint64_t(src) * rb, x.data(), cols);
          // Each x within 2^-12 of its terms' sum (relative): the bound over |w| |x|.
          std::vector<float> deq(static_cast<size_t>(cols));
          dequantize_row(GGML_NVFP4, m.data() + uint64_t(src) * rb, deq.data(), cols);
          double mag = 0;
          for (int64_t k = 0; k < cols; ++k) mag += std::fabs(double(deq[size_t(k)]) * x[size_t(k)]);
          REQUIRE(std::fabs(sum * 16384.0 - want) <= std::ldexp(mag, -12) + 1e-6 * (1.0 + std::fabs(want)));
        }
    }
  }
}

TEST_CASE("Q6_K rows32 units decode to the GGUF values") {
  const int64_t cols = 512, rows = 3;
  std::vector<float> src(static_cast<size_t>(rows * cols));
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (float& v : src) v = nd(rng);
  const uint64_t rb = row_bytes(*type_info(GGML_Q6_K), cols);
  std::vector<uint8_t> q(size_t(rows) * rb);
  for (int64_t r = 0; r < rows; ++r) quantize_row(GGML_Q6_K, src.data() + r * cols, q.data() + r * rb, cols);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> want(static_cast<size_t>(cols));
    dequantize_row(GGML_Q6_K, q.data() + r * rb, want.data(), cols);
    for (int64_t c = 0; c < cols / 32; ++c) {
      uint32_t l4[4], h2[2];
      int8_t sc[2];
      uint16_t d;
      q6k_pack_unit(q.data() + r * rb + (c / 8) * 210, int(c % 8), l4, h2, sc, &d);
      for (int i = 0; i < 32; ++i) {
        const float v = fp16_to_fp32(d) * float(sc[i / 16]) * float(int(q6k_rows32_code(l4, h2, i)) - 32);
        REQUIRE(v == want[size_t(c * 32 + i)]);
      }
    }
  }
  // Unit indexing: 32 rows interleaved per group.
  Q6kRows32 L;
  L.rows = 70;
  L.cols = 512;
  CHECK(L.groups() == 3);
  CHECK(L.unit(0, 0) == 0);
  CHECK(L.unit(1, 0) == 1);
  CHECK(L.unit(0, 1) == 32);
  CHECK(L.unit(33, 2) == (1 * 16 + 2) * 32 + 1);
  CHECK(L.d_index(33, 9) == (1 * 2 + 1) * 32 + 1);
}

TEST_CASE("cuBLASLt block-scale layout: published anchors, tiles, bijection") {
  // nvmath-python's example for a 128 x 128 NVFP4 operand: scale (5, 2) at
  // offset 82 and (5, 5) at 593.
  CHECK(blockscale_offset(5, 2, 128) == 82);
  CHECK(blockscale_offset(5, 5, 128) == 593);
  // 128 x 4 tiles of 512 bytes; column tiles innermost.
  CHECK(blockscale_offset(0, 4, 256) == 512);
  CHECK(blockscale_offset(128, 0, 256) == 4 * 512);  // 16 blocks: 4 column tiles per row tile
  CHECK(blockscale_offset(32, 0, 256) == 4);
  CHECK(blockscale_offset(1, 0, 256) == 16);
  CHECK(blockscale_offset(0, 1, 256) == 1);
  // Every (row, block) of a padded operand has its own byte.
  for (int64_t k : {64, 320, 2560}) {
    const int64_t rows = 300;
    CAPTURE(k);
    REQUIRE(blockscale_bytes(rows, k) == uint64_t(384 * ((k / 16 + 3) / 4 * 4)));
    std::vector<int> seen(blockscale_bytes(rows, k), 0);
    for (int64_t r = 0; r < blockscale_rows_padded(rows); ++r)
      for (int64_t c = 0; c < blockscale_cols_padded(k); ++c) {
        const uint64_t off = blockscale_offset(r, c, k);
        REQUIRE(off < seen.size());
        seen[off]++;
      }
    for (int v : seen) REQUIRE(v == 1);
  }
}

TEST_CASE("cuBLASLt FP4 packing keeps every element and scale of a GGUF block") {
  auto m = random_nvfp4(3, 256, 11);
  const uint64_t rb = 4 * 36;
  for (int64_t r = 0; r < 3; ++r) {
    std::vector<float> want(256);
    dequantize_row(GGML_NVFP4, m.data() + r * rb, want.data(), 256);
    for (int c = 0; c < 16; ++c) {
      uint8_t packed[8];
      const uint8_t sc = fp4blas_pack_block(m.data() + r * rb + (c / 4) * 36, c % 4, packed);
      for (int e = 0; e < 16; ++e) {
        const uint8_t code = e % 2 == 0 ? (packed[e / 2] & 0x0F) : (packed[e / 2] >> 4);
        REQUIRE(kE2M1[code] * e4m3_value(sc) == want[size_t(c * 16 + e)]);
      }
    }
  }
}

TEST_CASE("activation quantization helpers: E2M1 rounding and E4M3 scales") {
  // Exact values map to their codes; midpoints go to the even code.
  for (int code = 0; code < 16; ++code) {
    if (code == 8) continue;  // -0 encodes as +0
    CHECK(e2m1_nearest(kE2M1[code]) == code);
  }
  CHECK(e2m1_nearest(-0.0f) == 0);
  CHECK(e2m1_nearest(0.25f) == 0);
  CHECK(e2m1_nearest(0.26f) == 1);
  CHECK(e2m1_nearest(0.75f) == 2);
  CHECK(e2m1_nearest(1.25f) == 2);
  CHECK(e2m1_nearest(1.75f) == 4);
  CHECK(e2m1_nearest(2.5f) == 4);
  CHECK(e2m1_nearest(3.5f) == 6);
  CHECK(e2m1_nearest(5.0f) == 6);
  CHECK(e2m1_nearest(5.1f) == 7);
  CHECK(e2m1_nearest(100.0f) == 7);
  CHECK(e2m1_nearest(-2.9f) == 13);
  // E4M3: every finite positive code round-trips; values round to the
  // nearest code; the decoder agrees with the UE4M3 one of the weights.
  for (int c = 1; c <= 0x7E; ++c) {
    CHECK(e4m3_value(uint8_t(c)) == ue4m3_to_fp32(uint8_t(c)));
    CHECK(e4m3_from_positive(e4m3_value(uint8_t(c))) == c);
  }
  for (int c = 1; c < 0x7E; ++c) {
    const float lo = e4m3_value(uint8_t(c)), hi = e4m3_value(uint8_t(c + 1));
    CHECK(e4m3_from_positive(lo + (hi - lo) * 0.3f) == c);
    CHECK(e4m3_from_positive(lo + (hi - lo) * 0.7f) == c + 1);
  }
  CHECK(e4m3_from_positive(0.0f) == 0);
  CHECK(e4m3_from_positive(1e-6f) == 0);
  CHECK(e4m3_from_positive(1000.0f) == 0x7E);
}

namespace {

// A random Q6_K matrix in GGUF layout (quantized normal values).
std::vector<uint8_t> random_q6k(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> src(static_cast<size_t>(rows * cols));
  for (float& v : src) v = nd(rng);
  const uint64_t rb = row_bytes(*type_info(GGML_Q6_K), cols);
  std::vector<uint8_t> q(size_t(rows) * rb);
  for (int64_t r = 0; r < rows; ++r) quantize_row(GGML_Q6_K, src.data() + r * cols, q.data() + r * rb, cols);
  return q;
}

// The kernel's view of one tile-kgroup of a tiled Q6_K matrix: block
// pointers of the 16 rows' GGUF blocks holding the kgroup.
void q6k_tile_blocks(const std::vector<uint8_t>& m, int64_t rows, int64_t cols, int64_t tile, int64_t kg,
                     const uint8_t** block) {
  const uint64_t rb = row_bytes(*type_info(GGML_Q6_K), cols);
  for (int r = 0; r < kFp4TileRows; ++r) {
    const int64_t src = tile * kFp4TileRows + r;
    block[r] = src < rows ? m.data() + uint64_t(src) * rb + uint64_t(kg / 4) * 210 : nullptr;
  }
}

}  // namespace

TEST_CASE("tiled Q6_K: registers decode to q - 32, codes and positions invert, values equal the GGUF ones") {
  const int64_t rows = 40, cols = 512;  // a partial last tile, two blocks per row
  const auto m = random_q6k(rows, cols, 21);
  const uint64_t rb = row_bytes(*type_info(GGML_Q6_K), cols);
  for (int64_t tile = 0; tile < (rows + 15) / 16; ++tile) {
    for (int64_t kg = 0; kg < cols / 64; ++kg) {
      const uint8_t* block[16];
      q6k_tile_blocks(m, rows, cols, tile, kg, block);
      int8_t sc[64];
      uint32_t dd[8];
      for (int g = 0; g < 8; ++g) {
        q6kt_g_scales(block, int(kg % 4), g, sc + 8 * g);
        dd[g] = q6kt_g_d(block, g);
      }
      for (int lane = 0; lane < 32; ++lane) {
        uint32_t lo[4], hi[2] = {0, 0};
        for (int w = 0; w < 4; ++w) {
          uint32_t h = 0;
          q6kt_lane_words(block, int(kg % 4), lane, w, &lo[w], &h);
          hi[w / 2] |= h;
        }
        for (int w = 0; w < 4; ++w) {
          for (int p = 0; p < 8; ++p) {
            int row, col;
            fp4_code_position(lane, w, p, &row, &col);
            const uint32_t reg = q6kt_reg(lo[w], hi[w / 2], w, p >> 1);
            const uint32_t half = (reg >> (16 * (p & 1))) & 0xFFFFu;
            const float hv = fp16_to_fp32(uint16_t(half));
            const uint32_t code = q6kt_code(lo[w], hi[w / 2], w, p);
            REQUIRE(hv == 1024.0f + float(code));
            // The F16 subtraction of 1056 is exact.
            REQUIRE(fp16_to_fp32(fp32_to_fp16(hv - 1056.0f)) == float(int(code) - 32));
            int l2, w2, p2;
            q6kt_position(row, col, &l2, &w2, &p2);
            REQUIRE(l2 == lane);
            REQUIRE(w2 == w);
            REQUIRE(p2 == p);
            const int64_t src = tile * 16 + row;
            const int g = row & 7;
            const uint16_t d16 = uint16_t(row < 8 ? dd[g] & 0xFFFFu : dd[g] >> 16);
            const float v = fp16_to_fp32(d16) * float(sc[fp4_scale_byte(row, w)]) * float(int(code) - 32);
            float want = 0.0f;
            if (src < rows) {
              std::vector<float> deq(static_cast<size_t>(cols));
              dequantize_row(GGML_Q6_K, m.data() + uint64_t(src) * rb, deq.data(), cols);
              want = deq[size_t(kg * 64 + col)];
            }
            REQUIRE(v == want);
          }
        }
      }
    }
  }
  Q6kTiled t;
  t.rows = 40;
  t.cols = 512;
  CHECK(t.tiles() == 3);
  CHECK(t.bytes() == 3 * 8 * (512 + 256 + 64) + 3 * 2 * 32);
  CHECK(t.bytes() == uint64_t(48) * 2 * 210);  // exactly the GGUF bytes of the padded rows
}

TEST_CASE("streaming kernels: per-chunk scaled F16 activations give the dot products (emulated)") {
  // tc_chunk_exponent puts each chunk's largest magnitude in [2^14, 2^15).
  for (float a : {1.0f, 3.5f, 1e-3f, 65504.0f, 1e6f, 1e-20f}) {
    const int e = tc_chunk_exponent(a);
    const float s = std::ldexp(a, -e);
    CHECK(s >= 16384.0f);
    CHECK(s < 32768.0f);
  }
  CHECK(tc_chunk_exponent(0.0f) == 0);
  CHECK(tc_chunk_exponent(7e-30f) == -100);  // clamped: 2^100 stays a normal float
  CHECK(tc_chunk_exponent(1e38f) == 100);
  // The chunk copy order is fp4_x_index's.
  for (int q = 0; q < 8; ++q) {
    CHECK(fp4_x_index(tc_pair_col(q)) == 2 * q);
    CHECK(fp4_x_index(tc_pair_col(q) + 1) == 2 * q + 1);
  }
  // Emulation of kernel 2 on the tiled Q6_K layout: per chunk, an exact dot
  // product of q - 32 with the F16 chunk, times d * sc * 2^e.
  const int64_t rows = 20, cols = 256, n = 2;
  const auto m = random_q6k(rows, cols, 31);
  const uint64_t rb = row_bytes(*type_info(GGML_Q6_K), cols);
  std::mt19937 rng(33);
  std::uniform_real_distribution<float> ud(-3.0f, 3.0f);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (size_t i = 0; i < x.size(); ++i) x[i] = ud(rng) * (i % 37 == 0 ? 100.0f : 1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> deq(static_cast<size_t>(cols));
    dequantize_row(GGML_Q6_K, m.data() + uint64_t(r) * rb, deq.data(), cols);
    for (int64_t j = 0; j < n; ++j) {
      double got = 0, want = 0, mag = 0;
      for (int64_t c = 0; c < cols / 16; ++c) {
        const float* xc = x.data() + j * cols + c * 16;
        float amax = 0;
        for (int k = 0; k < 16; ++k) amax = std::max(amax, std::fabs(xc[k]));
        const int e = tc_chunk_exponent(amax);
        double chunk = 0;
        for (int k = 0; k < 16; ++k) chunk += double(deq[size_t(c * 16 + k)]) * fp16_to_fp32(fp32_to_fp16(std::ldexp(xc[k], -e)));
        got += std::ldexp(chunk, e);
        for (int k = 0; k < 16; ++k) {
          want += double(deq[size_t(c * 16 + k)]) * xc[k];
          mag += std::fabs(double(deq[size_t(c * 16 + k)]) * xc[k]);
        }
      }
      REQUIRE(std::fabs(got - want) <= 1e-3 * mag);  // F16 rounding: 2^-11 relative per product
    }
  }
}

TEST_CASE("kernel 3's L2 prefetch shares: disjoint 16-byte pieces in block order, inside the run") {
  for (uint64_t bytes : {uint64_t(0), uint64_t(16), uint64_t(100), uint64_t(5898240), uint64_t(13271040), uint64_t(37)}) {
    for (int64_t nb : {int64_t(1), int64_t(7), int64_t(320), int64_t(576), int64_t(4000)}) {
      CAPTURE(bytes);
      CAPTURE(nb);
      uint64_t covered = 0, end = 0;
      for (int64_t b = 0; b < nb; ++b) {
        uint64_t off = 0, n = 0;
        qwen35::cuda::fp4_prefetch_share(bytes, b, nb, &off, &n);
        if (n == 0) continue;
        CHECK(off % 16 == 0);
        CHECK(n % 16 == 0);
        CHECK(off >= end);  // after the previous share
        CHECK(off + n <= bytes);
        end = off + n;
        covered += n;
      }
      CHECK(covered == bytes / 16 * 16);  // every whole 16-byte piece
    }
  }
}

TEST_CASE("tiled Q8_0: registers decode to q, offsets invert the lane bytes, values equal the GGUF ones") {
  const int64_t rows = 40, cols = 192;  // a partial last tile, three kgroups (six blocks) per row
  const uint64_t rb = row_bytes(*type_info(GGML_Q8_0), cols);
  std::vector<uint8_t> m(size_t(rows) * rb);
  {
    std::mt19937 rng(33);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (float& x : v) x = nd(rng);
      v[size_t(r % cols)] = -127.0f * 3.0f;  // a code of -127 in some block
      REQUIRE(quantize_row(GGML_Q8_0, v.data(), m.data() + uint64_t(r) * rb, cols));
    }
  }
  std::vector<float> deq(static_cast<size_t>(cols));
  for (int64_t tile = 0; tile < (rows + 15) / 16; ++tile) {
    for (int64_t kg = 0; kg < cols / 64; ++kg) {
      const uint8_t* row[16];
      for (int r = 0; r < 16; ++r) {
        const int64_t src = tile * 16 + r;
        row[r] = src < rows ? m.data() + uint64_t(src) * rb + uint64_t(kg) * 68 : nullptr;
      }
      // The unit as the repack writes it.
      uint8_t codes[kQ8CodeBytes];
      uint16_t scales[32];
      for (int lane = 0; lane < 32; ++lane)
        for (int h = 0; h < 2; ++h) q8t_lane_bytes(row, lane, h, codes + 512 * h + 16 * lane);
      for (int g = 0; g < 8; ++g) q8t_g_scales(row, g, scales + 4 * g);
      // Registers: each half is the F16 number 1024 + q + 128.
      for (int lane = 0; lane < 32; ++lane) {
        for (int w = 0; w < 4; ++w) {
          const uint8_t* b = codes + 512 * (w / 2) + 16 * lane + 8 * (w % 2);
          uint32_t word[2];
          std::memcpy(word, b, 8);
          for (int p = 0; p < 8; ++p) {
            const uint32_t reg = q8t_reg(word[p / 4], p >> 1);
            const float hv = fp16_to_fp32(uint16_t((reg >> (16 * (p & 1))) & 0xFFFFu));
            REQUIRE(hv == 1024.0f + float(b[p]));
            REQUIRE(fp16_to_fp32(fp32_to_fp16(hv - 1152.0f)) == float(int(b[p]) - 128));  // exact
            int r, col;
            fp4_code_position(lane, w, p, &r, &col);
            REQUIRE(q8t_code_offset(r, col) == int(b - codes) + p);
          }
        }
      }
      // Every element through the offsets: d * q, the GGUF value.
      for (int r = 0; r < 16; ++r) {
        const int64_t src = tile * 16 + r;
        if (src < rows) dequantize_row(GGML_Q8_0, m.data() + uint64_t(src) * rb, deq.data(), cols);
        for (int cc = 0; cc < 64; ++cc) {
          const float d = fp16_to_fp32(scales[q8t_scale_index(r, cc)]);
          const float v = d * float(int(codes[q8t_code_offset(r, cc)]) - 128);
          REQUIRE(v == (src < rows ? deq[size_t(kg * 64 + cc)] : 0.0f));
        }
      }
    }
  }
}

TEST_CASE("tiled Q4_K: registers decode to q, positions invert the lane words, values equal the GGUF ones") {
  const int64_t rows = 40, cols = 512;  // a partial last tile, two blocks (eight kgroups) per row
  const uint64_t rb = row_bytes(*type_info(GGML_Q4_K), cols);
  std::vector<uint8_t> m(size_t(rows) * rb);
  {
    std::mt19937 rng(35);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (float& x : v) x = nd(rng) + (r % 3 == 0 ? 2.0f : 0.0f);  // some rows without negative values
      REQUIRE(quantize_row(GGML_Q4_K, v.data(), m.data() + uint64_t(r) * rb, cols));
    }
  }
  std::vector<float> deq(static_cast<size_t>(cols));
  for (int64_t tile = 0; tile < (rows + 15) / 16; ++tile) {
    for (int64_t kg = 0; kg < cols / 64; ++kg) {
      const uint8_t* block[16];
      for (int r = 0; r < 16; ++r) {
        const int64_t src = tile * 16 + r;
        block[r] = src < rows ? m.data() + uint64_t(src) * rb + uint64_t(kg / 4) * 144 : nullptr;
      }
      const int kg4 = int(kg % 4);
      uint32_t words[32][4];
      uint8_t sm[8][8];
      uint16_t dm[8][4];
      for (int lane = 0; lane < 32; ++lane)
        for (int w = 0; w < 4; ++w) words[lane][w] = q4kt_lane_word(block, kg4, lane, w);
      for (int g = 0; g < 8; ++g) {
        q4kt_g_sm(block, kg4, g, sm[g]);
        q4kt_g_dm(block, g, dm[g]);
      }
      // Registers: each half is the F16 number 1024 + q, and the code is
      // the GGUF one of the position fp4_code_position gives.
      for (int lane = 0; lane < 32; ++lane)
        for (int w = 0; w < 4; ++w)
          for (int p = 0; p < 8; ++p) {
            int r, col;
            fp4_code_position(lane, w, p, &r, &col);
            const uint32_t reg = q4kt_reg(words[lane][w], p >> 1);
            const float hv = fp16_to_fp32(uint16_t((reg >> (16 * (p & 1))) & 0xFFFFu));
            const uint32_t want = block[r] ? q4kt_gguf_code(block[r], 64 * kg4 + col) : 0u;
            REQUIRE(hv == 1024.0f + float(want));
            int l2, w2, bit;
            q4kt_position(r, col, &l2, &w2, &bit);
            REQUIRE(l2 == lane);
            REQUIRE(w2 == w);
            REQUIRE(((words[lane][w] >> bit) & 15u) == want);
          }
      // Every element: (d*sc) * q - (dmin*m), the GGUF value.
      for (int r = 0; r < 16; ++r) {
        const int64_t src = tile * 16 + r;
        if (src < rows) dequantize_row(GGML_Q4_K, m.data() + uint64_t(src) * rb, deq.data(), cols);
        const int g = r & 7, up = r >> 3;
        for (int cc = 0; cc < 64; ++cc) {
          int lane, w, bit;
          q4kt_position(r, cc, &lane, &w, &bit);
          const int sb = cc / 32;
          const float ds = fp16_to_fp32(dm[g][up]) * float(sm[g][2 * sb + up]);
          const float mn = fp16_to_fp32(dm[g][2 + up]) * float(sm[g][4 + 2 * sb + up]);
          const float v = ds * float((words[lane][w] >> bit) & 15u) - mn;
          REQUIRE(v == (src < rows ? deq[size_t(kg * 64 + cc)] : 0.0f));
        }
      }
    }
  }
}

TEST_CASE("tiled F16: each lane's registers hold the GGUF values of their fragment positions; offsets invert them") {
  const int64_t rows = 24, cols = 128;  // a partial last tile, two kgroups
  std::vector<uint16_t> m(size_t(rows * cols));
  std::mt19937 rng(37);
  for (uint16_t& h : m) h = fp32_to_fp16(std::normal_distribution<float>(0.0f, 1.0f)(rng));
  for (int64_t tile = 0; tile < (rows + 15) / 16; ++tile) {
    for (int64_t kg = 0; kg < cols / 64; ++kg) {
      const uint8_t* row[16];
      for (int r = 0; r < 16; ++r) {
        const int64_t src = tile * 16 + r;
        row[r] = src < rows ? reinterpret_cast<const uint8_t*>(m.data() + src * cols + kg * 64) : nullptr;
      }
      uint8_t unit[kF16CodeBytes];
      for (int lane = 0; lane < 32; ++lane)
        for (int w = 0; w < 4; ++w)
          for (int reg = 0; reg < 4; ++reg) {
            const uint32_t word = f16t_lane_word(row, lane, w, reg);
            std::memcpy(unit + 512 * w + 16 * lane + 4 * reg, &word, 4);
            for (int hi = 0; hi < 2; ++hi) {
              int r, col;
              fp4_code_position(lane, w, 2 * reg + hi, &r, &col);
              const int64_t src = tile * 16 + r;
              const uint16_t want = src < rows ? m[size_t(src * cols + kg * 64 + col)] : uint16_t(0);
              REQUIRE(uint16_t(word >> (16 * hi)) == want);
            }
          }
      for (int r = 0; r < 16; ++r)
        for (int cc = 0; cc < 64; ++cc) {
          const int64_t src = tile * 16 + r;
          uint16_t got;
          std::memcpy(&got, unit + f16t_offset(r, cc), 2);
          REQUIRE(got == (src < rows ? m[size_t(src * cols + kg * 64 + cc)] : uint16_t(0)));
        }
    }
  }
}
