// Built when the CUDA backend is not: every GPU request gets a clear answer.
#include "backend.h"
#include "vision/device_encoder.h"

namespace qwen35 {

Status CreateCudaBackend(const Model&, const BackendParams&, std::unique_ptr<Backend>* out) {
  out->reset();
  return Error(QWEN35_ERR_UNSUPPORTED, "this build of qwen35 has no CUDA backend");
}

Status UploadModelToCuda(Model&, int, bool required) {
  if (required) return Error(QWEN35_ERR_UNSUPPORTED, "this build of qwen35 has no CUDA backend");
  return Status::Ok();
}

bool CudaAvailable() { return false; }

Status CudaMemoryInfo(int, uint64_t* free_bytes, uint64_t* total_bytes) {
  *free_bytes = *total_bytes = 0;
  return Error(QWEN35_ERR_UNSUPPORTED, "this build of qwen35 has no CUDA backend");
}

Status CudaCopyBandwidth(int, uint64_t, double* gb_per_s) {
  *gb_per_s = 0;
  return Error(QWEN35_ERR_UNSUPPORTED, "this build of qwen35 has no CUDA backend");
}

Status vision::CreateCudaVisionEncoder(const vision::Mmproj&, const Model*, std::shared_ptr<vision::DeviceEncoder>* out) {
  out->reset();
  return Error(QWEN35_ERR_UNSUPPORTED, "this build of qwen35 has no CUDA backend (no CUDA vision encoder)");
}

}  // namespace qwen35
