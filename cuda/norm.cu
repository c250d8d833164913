// RMSNorm kernels (see norm.h).
#include "common.cuh"
#include "launch.cuh"
#include "norm.h"

namespace qwen35::cuda {

namespace {

constexpr int kNormThreads = 256;

// F32 results, or BF16 ones rounded as convert_rows_bf16() rounds (the
// activations of the BF16 GEMMs).
__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(uint16_t* p, float v) { *p = __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

// A row, by the whole block.
template <typename Out>
__device__ __forceinline__ void rmsnorm_row(const float* xr, const float* w, int64_t D, float eps, Out* yr,
                                            float* red) {
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  ss = block_sum(ss, red);
  const float scale = rsqrtf(ss / float(D) + eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) store_out(yr + i, xr[i] * scale * (w ? w[i] : 1.0f));
}

// One block per row.
template <typename Out>
__global__ void rmsnorm_kernel(const float* __restrict__ x, int64_t ldx, const float* __restrict__ w, int64_t D,
                               float eps, Out* y, int64_t ldy) {
  pdl_prologue();
  __shared__ float red[32];
  rmsnorm_row(x + blockIdx.x * ldx, w, D, eps, y + blockIdx.x * ldy, red);
}

// Blocks [0, n) take the rows of a, [n, 2n) those of b.
__global__ void rmsnorm_pair_kernel(NormRows a, NormRows b, int64_t n, int64_t D, float eps) {
  pdl_prologue();
  __shared__ float red[32];
  const int64_t t = blockIdx.x;
  const NormRows& r = t < n ? a : b;
  const int64_t row = t < n ? t : t - n;
  rmsnorm_row(r.x + row * r.ldx, r.w, D, eps, r.y + row * r.ldy, red);
}

__global__ void add_rmsnorm_kernel(float* __restrict__ h, const float* __restrict__ d, int64_t ldd,
                                   const float* __restrict__ w, int64_t D, float eps, float* __restrict__ y) {
  pdl_prologue();
  __shared__ float red[32];
  float* hr = h + blockIdx.x * D;
  const float* dr = d + blockIdx.x * ldd;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = hr[i] + dr[i];
    hr[i] = v;
    ss = fmaf(v, v, ss);
  }
  if (!y) return;
  ss = block_sum(ss, red);
  const float scale = rsqrtf(ss / float(D) + eps);
  float* yr = y + blockIdx.x * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = hr[i] * scale * w[i];
}

// One warp per (row, head); the result goes to y ([n, heads*dv]; may be o).
template <typename Out>
__global__ void gated_rmsnorm_kernel(const float* o, const float* __restrict__ z, int64_t ldz,
                                     const float* __restrict__ w, int64_t n, int64_t heads, int64_t dv, float eps,
                                     Out* y) {
  pdl_prologue();
  const int64_t job = int64_t(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (job >= n * heads) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t t = job / heads, j = job % heads;
  const float* oh = o + t * heads * dv + j * dv;
  Out* yh = y + t * heads * dv + j * dv;
  const float* zh = z + t * ldz + j * dv;
  float ss = 0.0f;
  for (int64_t i = lane; i < dv; i += kWarp) ss = fmaf(oh[i], oh[i], ss);
  const float scale = rsqrtf(warp_sum(ss) / float(dv) + eps);
  for (int64_t i = lane; i < dv; i += kWarp) store_out(yh + i, oh[i] * scale * w[i] * silu_f(zh[i]));
}

}  // namespace

cudaError_t rmsnorm_rows(const float* x, int64_t ldx, const float* w, int64_t n, int64_t D, float eps, float* y,
                         int64_t ldy, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch(rmsnorm_kernel<float>, dim3(unsigned(n)), dim3(kNormThreads), 0, stream, x, ldx, w, D, eps, y, ldy);
}

cudaError_t rmsnorm_rows_pair(const NormRows& a, const NormRows& b, int64_t n, int64_t D, float eps,
                              cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch(rmsnorm_pair_kernel, dim3(unsigned(2 * n)), dim3(kNormThreads), 0, stream, a, b, n, D, eps);
}

cudaError_t rmsnorm_rows_bf16(const float* x, int64_t ldx, const float* w, int64_t n, int64_t D, float eps,
                              uint16_t* y, int64_t ldy, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch(rmsnorm_kernel<uint16_t>, dim3(unsigned(n)), dim3(kNormThreads), 0, stream, x, ldx, w, D, eps, y,
                ldy);
}

cudaError_t add_rmsnorm_rows(float* h, const float* d, int64_t ldd, const float* w, int64_t n, int64_t D, float eps,
                             float* y, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch(add_rmsnorm_kernel, dim3(unsigned(n)), dim3(kNormThreads), 0, stream, h, d, ldd, w, D, eps, y);
}

cudaError_t gated_rmsnorm(float* o, const float* z, int64_t ldz, const float* w, int64_t n, int64_t heads, int64_t dv,
                          float eps, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int warps = 8;
  return launch(gated_rmsnorm_kernel<float>, dim3(ceil_div(n * heads, warps)), dim3(warps * kWarp), 0, stream,
                static_cast<const float*>(o), z, ldz, w, n, heads, dv, eps, o);
}

cudaError_t gated_rmsnorm_bf16(const float* o, const float* z, int64_t ldz, const float* w, int64_t n, int64_t heads,
                               int64_t dv, float eps, uint16_t* y, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int warps = 8;
  return launch(gated_rmsnorm_kernel<uint16_t>, dim3(ceil_div(n * heads, warps)), dim3(warps * kWarp), 0, stream, o,
                z, ldz, w, n, heads, dv, eps, y);
}

}  // namespace qwen35::cuda
