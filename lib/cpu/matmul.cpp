#include "cpu/matmul.h"

#include <algorithm>
#include <vector>

#include "quants.h"

namespace qwen35 {

namespace {

// Dequantize each row once, then dot it with every activation row. Rows are
// split across threads; each output element is produced by one thread in a
// fixed order, so results do not depend on the thread count.
void matmul_rows_dequant(const Weight& w, const float* x, int64_t n, float* y, ThreadPool& tp) {
  const int64_t K = w.cols, N = w.rows;
  tp.parallel_for(N, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row(w.type, w.row(r), row.data(), K);
      for (int64_t t = 0; t < n; ++t) {
        const float* xt = x + t * K;
        float acc = 0.0f;
        for (int64_t k = 0; k < K; ++k) acc += row[size_t(k)] * xt[k];
        y[t * N + r] = acc * w.scale;
      }
    }
  });
}

}  // namespace

void matmul_ref(const Weight& w, const float* x, int64_t n, float* y, ThreadPool& tp) {
  matmul_rows_dequant(w, x, n, y, tp);
}

void matmul(const Weight& w, const float* x, int64_t n, float* y, ThreadPool& tp) {
  matmul_rows_dequant(w, x, n, y, tp);
}

}  // namespace qwen35
