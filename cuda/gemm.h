// cuBLASLt matrix products for the batched (prefill) path:
//
//   y[t][r] (= or +=) alpha * sum_k A[r][k] * X[t][k]     t < n, r < N
//
// A: [N, K] row-major (a dequantized weight), X: [n, ldx] row-major, both
// F32, both BF16 or both F16 (the vision encoder's F16 weights); y: F32
// [n, ldy]. Accumulation is F32 in every case. In cuBLAS's column-major terms this is
// D(N x n) = op_T(A) * X with A read as a K x N matrix, the "TN" layout.
// Plans (descriptors and the chosen algorithm) are cached per shape.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "status.h"

struct cublasLtContext;

namespace qwen35::cuda {

enum class GemmType { F32, BF16, F16 };

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Create the cuBLASLt handle and a workspace on the current device.
  Status init(size_t workspace_bytes);

  Status run(GemmType type, const void* A, int64_t N, int64_t K, const void* X, int64_t ldx, int64_t n, float* y,
             int64_t ldy, float alpha, bool add, cudaStream_t stream);

  // Block-scaled FP4 (Blackwell): A = w [N][K/2] E2M1 with VEC16_UE4M3
  // scales a_scales, X = [n][K/2] with scales x_scales (fp4_blockscale.h);
  // alpha and beta are device pointers. UNSUPPORTED when cuBLASLt has no
  // algorithm for it on this device.
  Status run_fp4(const uint8_t* A, const uint8_t* a_scales, int64_t N, int64_t K, const uint8_t* X,
                 const uint8_t* x_scales, int64_t n, float* y, int64_t ldy, const float* alpha, const float* beta,
                 cudaStream_t stream);

  uint64_t workspace_bytes() const { return ws_bytes_; }

 private:
  struct Plan;
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, bool, int, int, int>;
  Status plan(const Key& key, Plan** out);

  cublasLtContext* handle_ = nullptr;
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
  std::map<Key, std::unique_ptr<Plan>> plans_;
  std::map<Key, std::unique_ptr<Plan>> fp4_plans_;
};

}  // namespace qwen35::cuda
