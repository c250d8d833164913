// Matrix products y = W x for every weight type, on the CPU.
//
//   x: [n, K] row-major activations (F32)
//   y: [n, N] row-major outputs:  y[t][r] = scale * sum_k W[r][k] * x[t][k]
//
// matmul_ref is the oracle: each weight row is dequantized exactly and
// multiplied in F32 in element order. matmul is the fast path (dispatches to
// the best kernel for this CPU) and is tested against matmul_ref.
#pragma once

#include <cstdint>

#include "model.h"
#include "threadpool.h"

namespace qwen35 {

void matmul_ref(const Weight& w, const float* x, int64_t n, float* y, ThreadPool& tp);
void matmul(const Weight& w, const float* x, int64_t n, float* y, ThreadPool& tp);

}  // namespace qwen35
