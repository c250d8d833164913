// Q8_0 decode products on the tensor cores (matvec_q8.cu), on weights
// repacked once into the tiled layout of q8_tiled.h: a repack from GGUF, a
// matrix-vector product for up to 8 activation rows, and row dequantization
// (the GEMM path of batches) and embedding rows. CPU twin: vec_dot_ref() / dequantize_row() in
// lib/quants.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "fusion.h"
#include "matmul.h"
#include "q8_tiled.h"

namespace qwen35::cuda {

// GGUF Q8_0 rows r0 .. r0+nr-1 (device memory at src, row_bytes apart, row
// r0 first) -> the same rows of dst (buffers of code_bytes() /
// scale_bytes()). r0 is a multiple of 16 and so is nr, except that the last
// range ends at dst.rows (the padding rows of the last tile are zeroed).
cudaError_t q8t_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const Q8Tiled& dst,
                       cudaStream_t stream);

// How many warps of a block share one tile, each taking a slice of the
// kgroups (1, 2, 4 or 8; their sums are added in slice order in shared
// memory, so the result does not depend on n): enough warps in all for a
// device with `sms` multiprocessors.
int q8t_slices(const Q8Tiled& w, int sms);

// y[j][r] (= or +=) scale * W[r] . x[j] for j < n <= 8, with x rounded to
// F16 per 16-column chunk (like the NVFP4 and Q6_K kernels). x rows 16-byte
// aligned, ldx % 4 == 0; a block keeps the whole activation rows in shared
// memory (tc_x_bytes(cols/16, n), at most the device's opt-in limit:
// q8t_matvec_fits; else use the GEMM path).
bool q8t_matvec_fits(const Q8Tiled& w, int n);
cudaError_t q8t_matvec(const Q8Tiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc, int sms,
                       cudaStream_t stream, const TilesFusion& f = {});

// Rows r0 .. r0+nr-1 dequantized, [nr, cols] (the scale is not applied).
cudaError_t q8t_dequant_rows_f32(const Q8Tiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream);
cudaError_t q8t_dequant_rows_bf16(const Q8Tiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream);
// out[t] = row tokens[t] for t < n (tokens: device; rows with a negative id
// are left alone), the scale not applied (as embedding_rows).
cudaError_t q8t_embedding_rows(const Q8Tiled& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                               cudaStream_t stream);

}  // namespace qwen35::cuda
