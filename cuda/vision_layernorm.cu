// LayerNorm rows of the vision encoder (see vision_kernels.h). CPU twin:
// layer_norm_ref() in lib/vision/kernels.h.
#include "common.cuh"
#include "launch.cuh"
#include "vision_kernels.h"
#include "vision_store.cuh"

namespace qwen35::cuda {

namespace {

constexpr int kLnThreads = 256;

// One block per row: the mean, then the variance around it (two passes over
// the row, which stays in L1/L2; no E[x^2] - E[x]^2 cancellation).
template <typename Out>
__global__ void vision_layer_norm_kernel(const float* x, int64_t ldx, const float* __restrict__ g,
                                         const float* __restrict__ b, int64_t C, float eps, Out* y, int64_t ldy) {
  pdl_prologue();
  __shared__ float red[32];
  const float* xr = x + int64_t(blockIdx.x) * ldx;
  Out* yr = y + int64_t(blockIdx.x) * ldy;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) s += xr[i];
  const float mean = block_sum(s, red) / float(C);
  float v = 0.0f;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    const float d = xr[i] - mean;
    v = fmaf(d, d, v);
  }
  const float inv = rsqrtf(block_sum(v, red) / float(C) + eps);
  // Every thread has read its elements of the row before any writes (the
  // barrier in block_sum), so y may alias x.
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) store_act(yr + i, (xr[i] - mean) * inv * g[i] + b[i]);
}

template <typename Out>
cudaError_t launch_ln(const float* x, int64_t ldx, const float* g, const float* b, int64_t n, int64_t C, float eps,
                      void* y, int64_t ldy, cudaStream_t stream) {
  return launch(vision_layer_norm_kernel<Out>, dim3(unsigned(n)), dim3(kLnThreads), 0, stream, x, ldx, g, b, C, eps,
                static_cast<Out*>(y), ldy);
}

}  // namespace

cudaError_t vision_layer_norm(const float* x, int64_t ldx, const float* g, const float* b, int64_t n, int64_t C,
                              float eps, void* y, int64_t ldy, ActType yt, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  switch (yt) {
    case ActType::F32: return launch_ln<float>(x, ldx, g, b, n, C, eps, y, ldy, stream);
    case ActType::F16: return launch_ln<__half>(x, ldx, g, b, n, C, eps, y, ldy, stream);
    case ActType::BF16: return launch_ln<__nv_bfloat16>(x, ldx, g, b, n, C, eps, y, ldy, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace qwen35::cuda
