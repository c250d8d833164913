// Matrix products y = W x on the device for every weight type, in the GGUF
// layout (the generic path; lib/cpu/matmul.h is the CPU twin):
//
//   x: [n, ldx] F32 rows (the first cols of each row are used)
//   y: [n, ldy] F32 rows:  y[t][r] (= or +=) scale * sum_k W[r][k] * x[t][k]
//
// matvec_generic serves small n (decode, MTP verify): one warp per output
// row, the row dequantized 32 elements at a time in registers. Each output
// is summed in an order that does not depend on n, so a row's result is the
// same in a batch of 1 or 8. dequant_rows writes rows of W as F32 or BF16 for
// the GEMM path (gemm.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qwen35::cuda {

// A weight matrix as the kernels see it: `rows` rows of `cols` elements of
// GGUF type `type`, `row_bytes` apart, in device memory.
struct MatView {
  uint32_t type = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  uint64_t row_bytes = 0;
  const uint8_t* data = nullptr;
  float scale = 1.0f;  // per-tensor output scale (X.scale tensors)
};

enum class Accum { Store, Add };

constexpr int kMatvecMaxCols = 8;

// Whether the device kernels support this weight type.
bool device_type_supported(uint32_t type);

// y = W x for n <= kMatvecMaxCols activation rows. x must be 16-byte aligned
// with ldx % 4 == 0; cols % 32 == 0.
cudaError_t matvec_generic(const MatView& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                           cudaStream_t stream);

// Rows r0 .. r0+nr-1 of W, dequantized, row-major [nr, cols], times w.scale
// is NOT applied (the GEMM applies it as alpha).
cudaError_t dequant_rows_f32(const MatView& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream);
cudaError_t dequant_rows_bf16(const MatView& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream);

// F32 -> BF16 (round to nearest even) of an [n, cols] block with source row
// stride lds; dst is dense [n, cols].
cudaError_t convert_rows_bf16(const float* src, int64_t lds, int64_t n, int64_t cols, uint16_t* dst,
                              cudaStream_t stream);

}  // namespace qwen35::cuda
