// Bias add + activation (+ conversion for the next GEMM) of the vision
// encoder (see vision_kernels.h). CPU twins: gelu_tanh_ref() and gelu_erf()
// in lib/vision/kernels.h.
#include <algorithm>

#include "common.cuh"
#include "launch.cuh"
#include "vision_kernels.h"
#include "vision_store.cuh"

namespace qwen35::cuda {

namespace {

constexpr int kBiasThreads = 256;

template <VisionAct A>
__device__ __forceinline__ float act_f(float v) {
  if constexpr (A == VisionAct::GeluTanh) {
    // 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))), as gelu_tanh_ref.
    return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * fmaf(0.044715f * v, v * v, v)));
  } else if constexpr (A == VisionAct::GeluErf) {
    return 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
  } else {
    return v;
  }
}

// Grid-stride over the n x cols elements; each element is read once and
// written once by the same thread, so y may be x.
template <VisionAct A, typename Out>
__global__ void vision_bias_act_kernel(const float* x, int64_t ldx, const float* __restrict__ bias, int64_t n,
                                       int64_t cols, Out* y, int64_t ldy) {
  pdl_prologue();
  const int64_t total = n * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / cols, i = e % cols;
    const float v = x[t * ldx + i] + (bias ? bias[i] : 0.0f);
    store_act(y + t * ldy + i, act_f<A>(v));
  }
}

template <VisionAct A, typename Out>
cudaError_t launch_ba(const float* x, int64_t ldx, const float* bias, int64_t n, int64_t cols, void* y, int64_t ldy,
                      cudaStream_t stream) {
  // Enough blocks to fill any current GPU; the grid-stride loop does the rest.
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(n * cols, kBiasThreads), 4096));
  return launch(vision_bias_act_kernel<A, Out>, dim3(blocks), dim3(kBiasThreads), 0, stream, x, ldx, bias, n, cols,
                static_cast<Out*>(y), ldy);
}

template <VisionAct A>
cudaError_t dispatch_out(const float* x, int64_t ldx, const float* bias, int64_t n, int64_t cols, void* y,
                         int64_t ldy, ActType yt, cudaStream_t stream) {
  switch (yt) {
    case ActType::F32: return launch_ba<A, float>(x, ldx, bias, n, cols, y, ldy, stream);
    case ActType::F16: return launch_ba<A, __half>(x, ldx, bias, n, cols, y, ldy, stream);
    case ActType::BF16: return launch_ba<A, __nv_bfloat16>(x, ldx, bias, n, cols, y, ldy, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t vision_bias_act(const float* x, int64_t ldx, const float* bias, int64_t n, int64_t cols, VisionAct act,
                            void* y, int64_t ldy, ActType yt, cudaStream_t stream) {
  if (n <= 0 || cols <= 0) return cudaSuccess;
  switch (act) {
    case VisionAct::None: return dispatch_out<VisionAct::None>(x, ldx, bias, n, cols, y, ldy, yt, stream);
    case VisionAct::GeluTanh: return dispatch_out<VisionAct::GeluTanh>(x, ldx, bias, n, cols, y, ldy, yt, stream);
    case VisionAct::GeluErf: return dispatch_out<VisionAct::GeluErf>(x, ldx, bias, n, cols, y, ldy, yt, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace qwen35::cuda
