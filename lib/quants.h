// Weight formats: element conversion, dequantization, scalar reference dot
// products and reference quantizers (spec qwen35-text.md §6).
//
// Everything here is plain portable code: it is the oracle that SIMD and CUDA
// kernels are tested against.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ggml_types.h"

namespace qwen35 {

// ---- scalar conversions ----------------------------------------------------

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even

inline float bf16_to_fp32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t fp32_to_bf16(float f);  // round to nearest even, NaN kept

// E2M1 code (0..15) -> value: {0, .5, 1, 1.5, 2, 3, 4, 6} with sign bit 3.
extern const float kE2M1[16];
// UE4M3 scale byte -> value, llama.cpp's decoder (0x00 and 0x7F -> 0, bit 7 ignored).
float ue4m3_to_fp32(uint8_t code);
// llama.cpp's fp32 -> UE4M3 rounding (spec §6.7), including its quirks.
uint8_t fp32_to_ue4m3(float v);
// E8M0 exponent byte -> 2^(e-127) (MXFP4).
float e8m0_to_fp32(uint8_t e);

// ---- block layouts -----------------------------------------------------------

struct BlockQ8_0 {   // 32 elements, 34 bytes
  uint16_t d;        // F16 scale
  int8_t qs[32];
};
struct BlockQ4_K {   // 256 elements, 144 bytes
  uint16_t d;        // F16 super-scale of the 6-bit scales
  uint16_t dmin;     // F16 super-scale of the 6-bit mins
  uint8_t scales[12];
  uint8_t qs[128];
};
struct BlockQ6_K {   // 256 elements, 210 bytes
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;        // F16
};
struct BlockNVFP4 {  // 64 elements, 36 bytes: 4 sub-blocks of 16
  uint8_t d[4];      // UE4M3 scale per sub-block
  uint8_t qs[32];    // sub-block s: qs[8s+j] low nibble = elem 16s+j, high = 16s+j+8
};
struct BlockMXFP4 {  // 32 elements, 17 bytes
  uint8_t e;         // E8M0
  uint8_t qs[16];    // qs[j] low nibble = elem j, high = elem j+16
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 layout");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K layout");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K layout");
static_assert(sizeof(BlockNVFP4) == 36, "NVFP4 layout");
static_assert(sizeof(BlockMXFP4) == 17, "MXFP4 layout");

// Q4_K 6-bit scale/min of sub-block j (0..7).
inline void q4k_scale_min(const uint8_t* scales, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *m = scales[j + 4] & 63;
  } else {
    *sc = uint8_t((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4));
    *m = uint8_t((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// ---- rows --------------------------------------------------------------------

// Dequantize n elements (n a multiple of the block size) of type t.
// Returns false for types without compute support.
bool dequantize_row(uint32_t t, const void* src, float* dst, int64_t n);

// Reference dot product of one quantized row with a float vector, F32
// accumulation in element order. Same support as dequantize_row.
float vec_dot_ref(uint32_t t, const void* row, const float* x, int64_t n);

// Quantize n floats to type t. NVFP4 is llama.cpp's reference quantizer,
// bit-exact (spec §6.7). The others are simple round-to-nearest quantizers
// (used to synthesize test models; not bit-compatible with llama-quantize).
bool quantize_row(uint32_t t, const float* src, void* dst, int64_t n);
void quantize_row_nvfp4_ref(const float* x, BlockNVFP4* y, int64_t n);

}  // namespace qwen35
