// The tiled NVFP4 layout of the decode matrix-vector kernel (matvec_fp4.cu),
// as host/device functions so that tests/test_fp4_layout.cpp can check the
// packing, the bit-level decoding and the fragment mapping on the CPU.
//
// The kernel multiplies 16-row tiles of W with x on the tensor cores
// (mma.sync m16n8k16, F16 inputs, F32 accumulation), one NVFP4 sub-block of
// 16 elements per instruction. Weights are repacked once at upload so that
// each lane loads exactly its A-fragment values with one 16-byte load per 64
// columns, already arranged for a cheap E2M1 -> F16 conversion:
//
//   codes:  [tiles][kgroups][32 lanes][4 words]     (512 bytes per tile-kgroup)
//   scales: [tiles][kgroups][8 g][4 chunks][2]      (64 bytes per tile-kgroup)
//
// kgroup = 64 columns = 4 chunks of 16 (one NVFP4 sub-block, one mma). Lane
// L = 4g + t holds, for chunk w, the word with the 8 codes of rows g and g+8
// at columns 2t, 2t+1, 2t+8, 2t+9 (the m16n8k16 A fragment). In a word, the
// code for A-register `reg` (0..3) and half `hi` (0 = lower column) keeps its
// 3 magnitude bits at bit 16*hi + kMagOff[reg] and its sign at bit
// 16*hi + kSignOff[reg]; then each register is one or two shifts and masks:
// the magnitude lands on bits 9-11 and the sign on bit 15 of each half, i.e.
// the F16 number E2M1 * 2^-14 (exactly; 0.5 becomes the subnormal 2^-15).
// Scale bytes are the UE4M3 codes, normalized to plain E4M3 (0x7F -> 0, bit 7
// cleared), byte 8g + 2w + (row >= 8) for row g or g+8 of chunk w.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define QWEN35_HD __host__ __device__ __forceinline__
#else
#define QWEN35_HD inline
#endif

namespace qwen35::cuda {

constexpr int kFp4TileRows = 16;
constexpr int kFp4GroupCols = 64;
constexpr int kFp4CodeBytes = 512;   // per tile and kgroup
constexpr int kFp4ScaleBytes = 64;   // per tile and kgroup

// Kernel 3's L2 prefetch of the next projection: block b of nb takes bytes
// [*off, *off + *n) of a `bytes`-long run: 16-byte pieces (the tail past the
// last whole piece is left out: it is a hint), disjoint, in block order.
QWEN35_HD void fp4_prefetch_share(uint64_t bytes, int64_t b, int64_t nb, uint64_t* off, uint64_t* n) {
  const uint64_t per = ((bytes + uint64_t(nb) - 1) / uint64_t(nb) + 15) / 16 * 16;
  *off = uint64_t(b) * per;
  *n = 0;
  if (*off >= bytes) return;
  const uint64_t left = bytes - *off;
  *n = (per < left ? per : left) / 16 * 16;
}

// Bit offsets of register reg's magnitude (3 bits) and sign inside a half.
QWEN35_HD int fp4_mag_off(int reg) { return reg == 0 ? 9 : reg == 1 ? 6 : reg == 2 ? 0 : 3; }
QWEN35_HD int fp4_sign_off(int reg) { return reg == 0 ? 15 : reg == 1 ? 12 : reg == 2 ? 13 : 14; }

// Tile row and kgroup column held by code p (p = 2*reg + hi) of word w of lane.
QWEN35_HD void fp4_code_position(int lane, int w, int p, int* row, int* col) {
  const int g = lane >> 2, t = lane & 3, reg = p >> 1, hi = p & 1;
  *row = g + ((reg & 1) ? 8 : 0);
  *col = 16 * w + 2 * t + hi + ((reg & 2) ? 8 : 0);
}

// Pack 8 E2M1 codes (code[2*reg + hi]) into one word.
QWEN35_HD uint32_t fp4_pack_word(const uint8_t* code) {
  uint32_t w = 0;
  for (int p = 0; p < 8; ++p) {
    const int reg = p >> 1, base = 16 * (p & 1);
    w |= uint32_t(code[p] & 7u) << (base + fp4_mag_off(reg));
    w |= uint32_t((code[p] >> 3) & 1u) << (base + fp4_sign_off(reg));
  }
  return w;
}

// The four A registers (F16x2 bit patterns) of one word: what the kernel runs.
QWEN35_HD void fp4_unpack_word(uint32_t w, uint32_t* a) {
  a[0] = w & 0x8E008E00u;
  a[1] = (w << 3) & 0x8E008E00u;
  a[2] = ((w << 9) & 0x0E000E00u) | ((w << 2) & 0x80008000u);
  a[3] = ((w << 6) & 0x0E000E00u) | ((w << 1) & 0x80008000u);
}

// ---- the FP8 arrangement of the codes (kernel 3 with tuning fp4_fp8) ----
//
// Hopper has no FP4 tensor cores but has FP8 ones (mma.sync m16n8k32 with
// E4M3 inputs, sm_89 and later): an E2M1 code becomes the E4M3 byte of the
// same value times 2^-6 by moving its bits (sign to bit 7, magnitude to bits
// 2-4), which takes 5 instructions per word of 8 codes against 13 for the
// F16 pairs above, and one mma covers 32 columns (two NVFP4 sub-blocks)
// instead of 16. The same tiles, kgroups and scale bytes; only the words
// differ: lane L = 4g + c holds, for chunk w, the codes of rows g and g+8 at
// columns 4c .. 4c+3 of the chunk (the k32 A fragment: chunk 2i gives its
// registers 0-1, chunk 2i+1 registers 2-3). Row g's code for column 4c + b
// keeps its sign at bit 8b+7 and its magnitude at bits 8b+2..8b+4, so its
// register is one mask; row g+8's has its sign at bit 8b+5 and magnitude
// bits m0, m1, m2 at 8b+0, 8b+1, 8b+6: a shift and mask each way.
//
// The activations (B, 32 x 8) carry the two sub-blocks in different
// columns, so that each has its own scale: column 4*blk + term holds term
// `term` (0-2) of sub-block blk's 16 values (rows 16*blk .. 16*blk + 15 of
// the fragment, zero elsewhere); columns 3 and 7 are zero. The three terms
// are E4M3 roundings of the chunk's values, of what the first leaves and of
// what the first two leave: their sum carries 12 significant bits, more
// than F16's 11 (subnormal terms aside, which only the chunk's far smaller
// values reach).

// Tile row and chunk column of code p (0-3: row g, 4-7: row g+8) of lane's word.
QWEN35_HD void fp8_code_position(int lane, int p, int* row, int* col) {
  *row = (lane >> 2) + (p >= 4 ? 8 : 0);
  *col = 4 * (lane & 3) + (p & 3);
}

QWEN35_HD uint32_t fp8_pack_word(const uint8_t* code) {
  uint32_t w = 0;
  for (int b = 0; b < 4; ++b) {
    const uint32_t lo = code[b], hi = code[4 + b];
    w |= (((lo >> 3) & 1u) << 7 | (lo & 7u) << 2) << (8 * b);
    w |= (((hi >> 3) & 1u) << 5 | (hi & 3u) | ((hi >> 2) & 1u) << 6) << (8 * b);
  }
  return w;
}

// Registers of rows g and g+8 (four E4M3 bytes each, E2M1 * 2^-6).
QWEN35_HD void fp8_unpack_word(uint32_t w, uint32_t* a) {
  a[0] = w & 0x9C9C9C9Cu;
  a[1] = ((w << 2) & 0x8C8C8C8Cu) | ((w >> 2) & 0x10101010u);
}

// Byte of the 256-byte B fragment of a chunk pair (32 lanes x 8 bytes, the
// lane's two registers) that holds term `term` of sub-block blk's column col.
QWEN35_HD int fp8_b_byte(int blk, int term, int col) { return 8 * (16 * blk + 4 * term + col / 4) + 4 * blk + col % 4; }

// The 4 words (chunks 0-3) of `lane` in one tile-kgroup, as fp4_lane_words.
QWEN35_HD void fp8_lane_words(const uint8_t* const* block, int lane, uint32_t* words) {
  for (int w = 0; w < 4; ++w) {
    uint8_t code[8];
    for (int p = 0; p < 8; ++p) {
      int row, col;
      fp8_code_position(lane, p, &row, &col);
      const uint8_t* b = block[row];
      const int c = 16 * w + col;
      code[p] = !b ? uint8_t(0) : (c % 16) < 8 ? uint8_t(b[4 + 8 * (c / 16) + c % 8] & 0x0F)
                                                : uint8_t(b[4 + 8 * (c / 16) + c % 8] >> 4);
    }
    words[w] = fp8_pack_word(code);
  }
}

// UE4M3 as llama.cpp decodes it -> the E4M3 byte with the same value.
// 0xFF (480) has no E4M3 equivalent: tensors holding it are not repacked.
QWEN35_HD uint8_t fp4_normalize_scale(uint8_t b) { return b == 0x7F ? 0 : uint8_t(b & 0x7F); }

// Byte of the scale of tile row `row`, chunk w inside a tile-kgroup block.
QWEN35_HD int fp4_scale_byte(int row, int w) { return 8 * (row & 7) + 2 * w + (row >> 3); }

// How tile rows map to source rows. Plain: row 16*tile + i of the source
// (zero beyond `rows`). Paired (gate/up of SwiGLU): rows 0-7 of tile t are
// rows 8t..8t+7 of the first source, rows 8-15 the same rows of the second,
// so one lane holds a gate output and its up output.
enum class Fp4Pairing { Plain, GateUp };

QWEN35_HD int64_t fp4_tiles(Fp4Pairing pairing, int64_t rows) {
  return pairing == Fp4Pairing::GateUp ? rows / 8 : (rows + kFp4TileRows - 1) / kFp4TileRows;
}

// Source row of tile row i: for GateUp, *second says which source.
QWEN35_HD int64_t fp4_source_row(Fp4Pairing pairing, int64_t tile, int i, bool* second) {
  if (pairing == Fp4Pairing::GateUp) {
    *second = i >= 8;
    return 8 * tile + (i & 7);
  }
  *second = false;
  return kFp4TileRows * tile + i;
}

// The shape of a weight in the tiles of ktiles.h (q8_tiled.h, q4k_tiled.h,
// q6k_tiled.h, f16_tiled.h), whose layouts add their arrays to it: 16-row
// tiles, 64-column kgroups, a unit per tile and kgroup.
struct TileShape {
  int64_t rows = 0, cols = 0;  // cols a multiple of 64 (of 256 for Q4_K and Q6_K)
  bool paired = false;         // a gate/up stack in pairs (tiles_paired_row: the SwiGLU epilogue)
  float scale = 1.0f;          // per-tensor output scale
  QWEN35_HD int64_t tiles() const { return (rows + kFp4TileRows - 1) / kFp4TileRows; }
  QWEN35_HD int64_t kgroups() const { return cols / kFp4GroupCols; }
  QWEN35_HD uint64_t units() const { return uint64_t(tiles()) * uint64_t(kgroups()); }
};

// The tiles of ktiles.h (q8_tiled.h, q4k_tiled.h, q6k_tiled.h, f16_tiled.h)
// of a paired gate/up stack ([gate; up], F rows each): tile t holds gate
// rows 8t..8t+7 as its rows 0-7 and the same up rows as its rows 8-15, so a
// lane holds a gate output and its up output (the SwiGLU epilogue). The
// stack row of tile row i, and the tile row (16 * tile + i) of stack row r.
QWEN35_HD int64_t tiles_paired_row(int64_t tile, int i, int64_t F) {
  return i < 8 ? 8 * tile + i : F + 8 * tile + (i - 8);
}
QWEN35_HD int64_t tiles_paired_pos(int64_t r, int64_t F) {
  return r < F ? (r / 8) * 16 + r % 8 : ((r - F) / 8) * 16 + 8 + (r - F) % 8;
}

// The 4 code words of `lane` in one tile-kgroup, from the GGUF NVFP4 blocks
// (36 bytes: d[4], qs[32]) of the 16 tile rows (null for padding rows).
// Element e of a block is in sub-block e/16, byte qs[8*(e/16) + e%8], low
// nibble for e%16 < 8 (spec §6.5).
QWEN35_HD void fp4_lane_words(const uint8_t* const* block, int lane, uint32_t* words) {
  for (int w = 0; w < 4; ++w) {
    uint8_t code[8];
    for (int p = 0; p < 8; ++p) {
      int row, col;
      fp4_code_position(lane, w, p, &row, &col);
      const uint8_t* b = block[row];
      if (!b) {
        code[p] = 0;
        continue;
      }
      const uint8_t q = b[4 + 8 * (col / 16) + (col % 8)];
      code[p] = (col % 16) < 8 ? uint8_t(q & 0x0F) : uint8_t(q >> 4);
    }
    words[w] = fp4_pack_word(code);
  }
}

// The 8 scale bytes of rows g and g+8 of a tile-kgroup (bytes 8g .. 8g+7).
QWEN35_HD void fp4_g_scales(const uint8_t* const* block, int g, uint8_t* out8) {
  for (int up = 0; up < 2; ++up) {
    const uint8_t* b = block[g + 8 * up];
    for (int w = 0; w < 4; ++w) out8[fp4_scale_byte(g + 8 * up, w) - 8 * g] = b ? fp4_normalize_scale(b[w]) : 0;
  }
}

// Position of column k (within a slice starting at a kgroup boundary) in the
// kernel's shared-memory copy of x: per chunk of 16, lane t's four B values
// (k = 2t, 2t+1, 2t+8, 2t+9) are contiguous. Returns the F16 index.
QWEN35_HD int fp4_x_index(int k) {
  const int chunk = k >> 4, r = k & 15, hi = r >> 3, t = (r & 7) >> 1;
  return chunk * 16 + t * 4 + hi * 2 + (r & 1);
}

// ---- activations of the streaming kernels (matvec_fp4.cu kernel 2, matvec_q6k.cu) ----
//
// x is kept in shared memory per 16-column chunk (one mma k-step) as F16
// values scaled by 2^-e, where e = tc_chunk_exponent(largest magnitude in
// the chunk): the chunk then lies below 2^15 (no overflow, full F16
// precision for its large values) and its product is multiplied back by 2^e
// together with the weight scale. Chunks are independent, so no reduction
// over the row is needed before the conversion. In a chunk's copy, F16 pair
// q (positions 2q, 2q+1, one 32-bit word) holds columns tc_pair_col(q) and
// tc_pair_col(q) + 1, which is the order of fp4_x_index.

QWEN35_HD uint32_t tc_float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

// e for a chunk whose largest magnitude is amax (>= 0, finite): 2^-e * amax
// is in [2^14, 2^15); clamped to [-100, 100] so that 2^e, 2^-e and 2^(e+14)
// are normal floats. 0 for an all-zero chunk.
QWEN35_HD int tc_chunk_exponent(float amax) {
  if (!(amax > 0.0f)) return 0;
  const int e = int((tc_float_bits(amax) >> 23) & 0xFFu) - 127 - 14;
  return e < -100 ? -100 : e > 100 ? 100 : e;
}

QWEN35_HD int tc_pair_col(int q) { return 8 * (q & 1) + 2 * (q >> 1); }

}  // namespace qwen35::cuda
