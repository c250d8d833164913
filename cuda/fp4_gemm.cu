// Operand preparation for the block-scaled FP4 GEMM (see fp4_gemm.h).
#include "common.cuh"
#include "fp4_gemm.h"

namespace qwen35::cuda {

namespace {

// One thread per (row, 16-element block): 8 data bytes and one scale byte.
__global__ void fp4blas_repack_kernel(const uint8_t* __restrict__ src, uint64_t row_bytes, Fp4Blas dst,
                                      uint8_t* __restrict__ data, uint8_t* __restrict__ scales) {
  const int64_t blocks = dst.cols / 16;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= dst.rows * blocks) return;
  const int64_t r = i / blocks, c = i % blocks;
  uint8_t* d = data + uint64_t(r) * uint64_t(dst.cols / 2) + uint64_t(c) * 8;
  scales[blockscale_offset(r, c, dst.cols)] =
      fp4blas_pack_block(src + uint64_t(r) * row_bytes + uint64_t(c / 4) * 36, int(c % 4), d);
}

__global__ void amax_kernel(const float* __restrict__ x, int64_t ldx, int64_t n, int64_t K, unsigned* __restrict__ out) {
  __shared__ float red[32];
  float m = 0.0f;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n * K; i += int64_t(gridDim.x) * blockDim.x)
    m = fmaxf(m, fabsf(x[(i / K) * ldx + i % K]));
  m = block_max(m, red);
  // Non-negative floats order like their bit patterns.
  if (threadIdx.x == 0) atomicMax(out, __float_as_uint(m));
}

// One thread per (row, 16-element block).
__global__ void quantize_kernel(const float* __restrict__ x, int64_t ldx, int64_t n, int64_t K, float w_scale,
                                uint8_t* __restrict__ xq, uint8_t* __restrict__ xs, float* __restrict__ work) {
  const float amax = __uint_as_float(reinterpret_cast<const unsigned*>(work)[2]);
  // Block scales are E4M3 (<= 448) of values whose E2M1 codes reach 6.
  const float g = amax > 0.0f ? amax / (6.0f * 448.0f) : 1.0f;
  const int64_t blocks = K / 16;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i == 0) {
    work[0] = g;
    work[1] = g * w_scale;
  }
  if (i >= n * blocks) return;
  const int64_t r = i / blocks, c = i % blocks;
  const float* v = x + r * ldx + c * 16;
  float bmax = 0.0f;
  for (int k = 0; k < 16; ++k) bmax = fmaxf(bmax, fabsf(v[k]));
  const uint8_t sc = e4m3_from_positive(bmax / 6.0f / g);
  const float s = e4m3_value(sc) * g;
  const float inv = s > 0.0f ? 1.0f / s : 0.0f;
  uint8_t* d = xq + uint64_t(r) * uint64_t(K / 2) + uint64_t(c) * 8;
  for (int k = 0; k < 8; ++k) d[k] = uint8_t(e2m1_nearest(v[2 * k] * inv) | (e2m1_nearest(v[2 * k + 1] * inv) << 4));
  xs[blockscale_offset(r, c, K)] = sc;
}

}  // namespace

cudaError_t fp4blas_repack(const uint8_t* src, uint64_t row_bytes, const Fp4Blas& dst, cudaStream_t stream) {
  if (dst.cols % 64 != 0) return cudaErrorInvalidValue;
  const int64_t threads = dst.rows * (dst.cols / 16);
  fp4blas_repack_kernel<<<ceil_div(threads, 256), 256, 0, stream>>>(src, row_bytes, dst, const_cast<uint8_t*>(dst.data),
                                                                     const_cast<uint8_t*>(dst.scales));
  return cudaGetLastError();
}

cudaError_t fp4blas_quantize(const float* x, int64_t ldx, int64_t n, int64_t K, float w_scale, uint8_t* xq,
                             uint8_t* xs, float* work, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (K % 64 != 0) return cudaErrorInvalidValue;
  cudaError_t e = cudaMemsetAsync(xs, 0, blockscale_bytes(n, K), stream);
  if (e == cudaSuccess) e = cudaMemsetAsync(work + 2, 0, sizeof(unsigned), stream);
  if (e != cudaSuccess) return e;
  amax_kernel<<<std::min<unsigned>(1024, ceil_div(n * K, 256)), 256, 0, stream>>>(x, ldx, n, K,
                                                                                  reinterpret_cast<unsigned*>(work + 2));
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  quantize_kernel<<<ceil_div(n * (K / 16), 256), 256, 0, stream>>>(x, ldx, n, K, w_scale, xq, xs, work);
  return cudaGetLastError();
}

}  // namespace qwen35::cuda
