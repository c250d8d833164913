// The host side of a CUDA program run on the CPU, for emulating a whole
// device pipeline (test_cuda_vision_emu): "device" memory is host memory,
// streams are the calling thread (every call completes before it returns),
// and the library pieces that are not plain kernels get CPU stand-ins:
// cuBLASLt (Gemm: the same y = A X^T contract, F32 accumulation over
// F32/F16/BF16 inputs), the weight dequantization of matmul.cu
// (dequantize_row) and CudaAvailable. The kernels themselves run through
// the emulation of cuda_emu.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>

#include "backend.h"
#include "gemm.h"
#include "ggml_types.h"
#include "matmul.h"
#include "quants.h"

extern "C" {

cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(n ? n : 1);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  std::memcpy(d, s, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(d, s, n);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  static int dummy;
  *s = reinterpret_cast<cudaStream_t>(&dummy);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p);
  std::strcpy(p->name, "CPU emulation");
  return cudaSuccess;
}
// (cudaGetLastError: cuda_emu.cpp, which every emulated test links)
const char* cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }
const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }

}  // extern "C"

namespace qwen35 {

bool CudaAvailable() { return true; }

namespace cuda {

struct Gemm::Plan {};
Gemm::Gemm() = default;
Gemm::~Gemm() = default;
Status Gemm::init(size_t workspace_bytes) {
  ws_bytes_ = workspace_bytes;
  return Status::Ok();
}

namespace {
float load(GemmType t, const void* p, int64_t i) {
  switch (t) {
    case GemmType::F32: return static_cast<const float*>(p)[i];
    case GemmType::F16: return __half2float(static_cast<const __half*>(p)[i]);
    case GemmType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
  return 0.0f;
}
}  // namespace

Status Gemm::run(GemmType type, const void* A, int64_t N, int64_t K, const void* X, int64_t ldx, int64_t n, float* y,
                 int64_t ldy, float alpha, bool add, cudaStream_t) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < N; ++r) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += load(type, A, r * K + k) * load(type, X, t * ldx + k);
      y[t * ldy + r] = alpha * acc + (add ? y[t * ldy + r] : 0.0f);
    }
  return Status::Ok();
}

bool device_type_supported(uint32_t type) {
  const TypeInfo* ti = type_info(type);
  return ti && ti->compute;
}

cudaError_t dequant_rows_f32(const MatView& w, int64_t r0, int64_t nr, float* dst, cudaStream_t) {
  for (int64_t r = 0; r < nr; ++r) dequantize_row(w.type, w.data + uint64_t(r0 + r) * w.row_bytes, dst + r * w.cols, w.cols);
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace qwen35
