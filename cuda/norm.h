// RMSNorm variants on the device (spec §4.2, §4.5.5). CPU twin: rmsnorm()
// in lib/cpu/ops.h. Rows are F32 with explicit row strides.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qwen35::cuda {

// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w   for t < n rows of D elements.
// y may alias x. w may be null (ones).
cudaError_t rmsnorm_rows(const float* x, int64_t ldx, const float* w, int64_t n, int64_t D, float eps, float* y,
                         int64_t ldy, cudaStream_t stream);

// Two rmsnorm_rows calls of n rows each in one launch (the MTP pass's
// embedding and hidden-state norms): the same results. The two must not
// overlap except each y with its own x.
struct NormRows {
  const float* x = nullptr;
  int64_t ldx = 0;
  const float* w = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
};
cudaError_t rmsnorm_rows_pair(const NormRows& a, const NormRows& b, int64_t n, int64_t D, float eps,
                              cudaStream_t stream);

// The same rounded to BF16 (as convert_rows_bf16 rounds): the activations
// of a BF16 GEMM in one pass. y: [n, ldy] BF16 bits.
cudaError_t rmsnorm_rows_bf16(const float* x, int64_t ldx, const float* w, int64_t n, int64_t D, float eps,
                              uint16_t* y, int64_t ldy, cudaStream_t stream);

// h[t] += d[t] (residual add), then y[t] = rmsnorm(h[t]) * w. y may be null
// (only the add).
cudaError_t add_rmsnorm_rows(float* h, const float* d, int64_t ldd, const float* w, int64_t n, int64_t D, float eps,
                             float* y, cudaStream_t stream);

// Gated RMSNorm of the delta net: for each row t and head j of `dv`
// elements, o[t][j] = rmsnorm(o[t][j]) * w * silu(z[t][j]) in place.
// o: [n, heads*dv] dense; z: [n, ldz] with head j at z + j*dv.
cudaError_t gated_rmsnorm(float* o, const float* z, int64_t ldz, const float* w, int64_t n, int64_t heads, int64_t dv,
                          float eps, cudaStream_t stream);
// The same written to y ([n, heads*dv] BF16 bits, as convert_rows_bf16
// rounds), o unchanged.
cudaError_t gated_rmsnorm_bf16(const float* o, const float* z, int64_t ldz, const float* w, int64_t n, int64_t heads,
                               int64_t dv, float eps, uint16_t* y, cudaStream_t stream);

}  // namespace qwen35::cuda
