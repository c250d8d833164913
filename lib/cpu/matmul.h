// Matrix products y = W x for every weight type, on the CPU.
//
//   x: [n, K] row-major activations (F32)
//   y: [n, N] row-major outputs:  y[t][r] = scale * sum_k W[r][k] * x[t][k]
//
// matmul_ref is the oracle: each weight row is dequantized exactly and
// multiplied in F32 in element order. matmul is the fast path: activations
// are quantized to int8 groups of 16 for quantized weights (see
// cpu/kernels.h) and the best kernel set for this CPU runs on all threads.
// Every output element is computed in a fixed order, so the fast path is
// bitwise reproducible across thread counts and a row's result does not
// depend on the other rows of the batch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "model.h"
#include "status.h"
#include "threadpool.h"

namespace qwen35 {

void matmul_ref(const Weight& w, const float* x, int64_t n, float* y, ThreadPool& tp);

// Working memory of the fast path, sized once (reserve) so that products
// never allocate; a batch larger than the reservation is processed in
// slices that fit.
class MatmulScratch {
 public:
  MatmulScratch() = default;
  ~MatmulScratch();
  MatmulScratch(const MatmulScratch&) = delete;
  MatmulScratch& operator=(const MatmulScratch&) = delete;

  // Room for `rows` activation rows of up to K_max columns for `n_types`
  // weight types at once, and per-thread rows for types without a kernel.
  Status reserve(int64_t rows, int64_t K_max, int n_types, int n_threads);

  uint8_t* acts() { return acts_; }
  size_t acts_bytes() const { return acts_bytes_; }
  float* row_buf(int thread) { return rowbuf_ + size_t(thread) * size_t(rowbuf_len_); }
  int64_t row_buf_len() const { return rowbuf_len_; }
  // Kernel scratch of a thread (cpu::gemm_work_bytes(K_max) bytes).
  uint8_t* work(int thread) { return work_ + size_t(thread) * work_bytes_; }
  size_t work_bytes() const { return work_bytes_; }
  uint64_t bytes() const {
    return acts_bytes_ + uint64_t(rowbuf_len_) * uint64_t(rowbuf_threads_) * sizeof(float) +
           uint64_t(work_bytes_) * uint64_t(rowbuf_threads_);
  }

 private:
  uint8_t* acts_ = nullptr;
  size_t acts_bytes_ = 0;
  float* rowbuf_ = nullptr;
  int64_t rowbuf_len_ = 0;
  int rowbuf_threads_ = 0;
  uint8_t* work_ = nullptr;  // [rowbuf_threads_][work_bytes_]
  size_t work_bytes_ = 0;
};

// One product of a multi-product: y = W x with y [n, W.rows].
struct MatmulOut {
  const Weight* w = nullptr;
  float* y = nullptr;
};
constexpr int kMaxMatmulOuts = 8;

// Several products that share the input x [n, K] (same K): one pass over the
// threads, activations quantized once per weight type. count <= kMaxMatmulOuts.
void matmul_multi(const MatmulOut* outs, int count, const float* x, int64_t n, ThreadPool& tp, MatmulScratch& s);
void matmul(const Weight& w, const float* x, int64_t n, float* y, ThreadPool& tp, MatmulScratch& s);

}  // namespace qwen35
