// CPU stand-ins for the library pieces the CUDA vision encoder calls besides
// its own kernels (test_cuda_vision_emu, which links no other CUDA file):
// the weight dequantization of matmul.cu (dequantize_row), which types it
// covers, and CudaAvailable (upload.cpp).
#include "backend.h"
#include "ggml_types.h"
#include "matmul.h"
#include "quants.h"

namespace qwen35 {

bool CudaAvailable() { return true; }

namespace cuda {

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
