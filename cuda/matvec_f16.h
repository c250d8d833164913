// F16 decode products on the tensor cores (matvec_f16.cu), on weights
// repacked once into the tiled layout of f16_tiled.h: a repack from GGUF, a
// matrix-vector product for up to 8 activation rows, row dequantization
// (the GEMM path of batches) and embedding rows. CPU twin: vec_dot_ref() /
// dequantize_row() in lib/quants.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "f16_tiled.h"
#include "fusion.h"
#include "matmul.h"

namespace qwen35::cuda {

// GGUF F16 rows r0 .. r0+nr-1 (device memory at src, row_bytes apart, row
// r0 first) -> the same rows of dst (a buffer of code_bytes()). r0 is a
// multiple of 16 and so is nr, except that the last range ends at dst.rows;
// a paired stack in one range.
cudaError_t f16t_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const F16Tiled& dst,
                        cudaStream_t stream);

// Warps per tile for a device with `sms` multiprocessors (tiles_matvec.cuh).
int f16t_slices(const F16Tiled& w, int sms);

// y[j][r] (= or +=) scale * W[r] . x[j] for j < n <= 8, with x rounded to
// F16 per 16-column chunk (F16 x F16 products are exact in the F32 sums);
// norm, swiglu: as ktiles_matvec (ktiles.h).
bool f16t_matvec_fits(const F16Tiled& w, int n);
cudaError_t f16t_matvec(const F16Tiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                        int sms, cudaStream_t stream, const TilesFusion& f = {});

// Rows r0 .. r0+nr-1 as F32 / BF16, [nr, cols] (the scale is not applied).
cudaError_t f16t_dequant_rows_f32(const F16Tiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream);
cudaError_t f16t_dequant_rows_bf16(const F16Tiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream);
// out[t] = row tokens[t] for t < n (tokens: device; rows with a negative id
// are left alone), the scale not applied.
cudaError_t f16t_embedding_rows(const F16Tiled& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                                cudaStream_t stream);

}  // namespace qwen35::cuda
