// The Blackwell block-scaled FP4 GEMM's entry points for the emulated
// backend (test_cuda_backend_emu): the emulated device reports compute
// capability 9.0, so the backend never takes that path; these only satisfy
// the linker and fail if called.
#include "fp4_gemm.h"

namespace qwen35::cuda {

cudaError_t fp4blas_repack(const uint8_t*, uint64_t, const Fp4Blas&, cudaStream_t) { return cudaErrorNotSupported; }

cudaError_t fp4blas_quantize(const float*, int64_t, int64_t, int64_t, float, uint8_t*, uint8_t*, float*, cudaStream_t) {
  return cudaErrorNotSupported;
}

}  // namespace qwen35::cuda
