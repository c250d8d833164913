// 2-D vision RoPE in place on the QKV rows (see vision_kernels.h). CPU twin:
// rope2d_head() in lib/vision/kernels.h.
#include <algorithm>

#include "common.cuh"
#include "launch.cuh"
#include "vision_kernels.h"

namespace qwen35::cuda {

namespace {

constexpr int kRopeThreads = 256;

// One thread per (row, q or k, head, pair d < head_dim/2): reads v[d] and
// v[d + half] and writes both, so threads never share an element.
__global__ void vision_rope_kernel(float* qkv, int64_t ld, int64_t n, int64_t n_head, int64_t half,
                                   int64_t k_offset, const float* __restrict__ cos, const float* __restrict__ sin) {
  pdl_prologue();
  const int64_t per_row = 2 * n_head * half, total = n * per_row;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / per_row, r = e % per_row;
    const int64_t part = r / (n_head * half), h = (r / half) % n_head, d = r % half;
    float* v = qkv + t * ld + part * k_offset + h * 2 * half;
    const float c = cos[t * half + d], s = sin[t * half + d];
    const float a = v[d], b = v[d + half];
    v[d] = a * c - b * s;
    v[d + half] = b * c + a * s;
  }
}

}  // namespace

cudaError_t vision_rope(float* qkv, int64_t ld, int64_t n, int64_t n_head, int64_t head_dim, int64_t k_offset,
                        const float* cos, const float* sin, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (head_dim % 2) return cudaErrorInvalidValue;
  const int64_t half = head_dim / 2;
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(n * 2 * n_head * half, kRopeThreads), 4096));
  return launch(vision_rope_kernel, dim3(blocks), dim3(kRopeThreads), 0, stream, qkv, ld, n, n_head, half, k_offset,
                cos, sin);
}

}  // namespace qwen35::cuda
