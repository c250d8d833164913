// ggml tensor type ids, block sizes and byte sizes (spec qwen35-text.md §1.7).
#pragma once

#include <cstdint>

namespace qwen35 {

enum GgmlType : uint32_t {
  GGML_F32 = 0,
  GGML_F16 = 1,
  GGML_Q4_0 = 2,
  GGML_Q4_1 = 3,
  GGML_Q5_0 = 6,
  GGML_Q5_1 = 7,
  GGML_Q8_0 = 8,
  GGML_Q8_1 = 9,
  GGML_Q2_K = 10,
  GGML_Q3_K = 11,
  GGML_Q4_K = 12,
  GGML_Q5_K = 13,
  GGML_Q6_K = 14,
  GGML_Q8_K = 15,
  GGML_I8 = 24,
  GGML_I16 = 25,
  GGML_I32 = 26,
  GGML_I64 = 27,
  GGML_F64 = 28,
  GGML_BF16 = 30,
  GGML_MXFP4 = 39,
  GGML_NVFP4 = 40,
  GGML_TYPE_COUNT = 42,
};

struct TypeInfo {
  const char* name;    // "NVFP4"; nullptr for ids that do not exist
  int32_t block;       // elements per block
  int32_t block_bytes; // bytes per block
  bool compute;        // this library can dequantize / multiply it
};

// nullptr if `t` is not a valid ggml type id.
const TypeInfo* type_info(uint32_t t);

// Bytes of one row of `n` elements (n must be a multiple of the block size).
inline uint64_t row_bytes(const TypeInfo& ti, int64_t n) {
  return uint64_t(n / ti.block) * uint64_t(ti.block_bytes);
}

}  // namespace qwen35
