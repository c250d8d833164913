// A random quantized matrix on the host and the device, for the GPU op
// tests (test_cuda_ops*.cpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "gpu_test_util.h"
#include "matmul.h"
#include "quants.h"
#include "test_util.h"

namespace qwen35::test {

// A random quantized matrix on the host and the device.
struct QMat {
  uint32_t type;
  int64_t rows, cols;
  uint64_t row_bytes;
  std::vector<uint8_t> host;
  DevArray<uint8_t> dev;
  QMat(uint32_t t, int64_t r, int64_t c, uint32_t seed) : type(t), rows(r), cols(c) {
    row_bytes = row_bytes_of(t, c);
    host.resize(size_t(rows) * row_bytes);
    auto v = random_floats(size_t(rows * cols), seed, -0.5f, 0.5f);
    for (int64_t i = 0; i < rows; ++i) quantize_row(t, v.data() + i * cols, host.data() + i * row_bytes, cols);
    dev.alloc(host.size());
    dev.upload(host);
  }
  static uint64_t row_bytes_of(uint32_t t, int64_t c) { return qwen35::row_bytes(*type_info(t), c); }
  cuda::MatView view(float scale = 1.0f) const {
    cuda::MatView m;
    m.type = type;
    m.rows = rows;
    m.cols = cols;
    m.row_bytes = row_bytes;
    m.data = dev.get();
    m.scale = scale;
    return m;
  }
  std::vector<float> row(int64_t r) const {
    std::vector<float> out(static_cast<size_t>(cols));
    dequantize_row(type, host.data() + r * row_bytes, out.data(), cols);
    return out;
  }
};

inline double max_rel(const std::vector<float>& a, const std::vector<float>& b) { return rel_err(a.data(), b.data(), a.size()); }

// Whether rows r0 .. r0+nr-1 of w, as downloaded F32 (or BF16, rounded to
// nearest even) rows of w.cols values, equal the CPU's dequantized rows.
inline bool rows_equal_f32(const std::vector<float>& got, const QMat& w, int64_t r0, int64_t nr) {
  bool same = true;
  for (int64_t r = 0; r < nr; ++r) {
    auto row = w.row(r0 + r);
    same &= std::memcmp(got.data() + r * w.cols, row.data(), size_t(w.cols) * 4) == 0;
  }
  return same;
}
inline bool rows_equal_bf16(const std::vector<uint16_t>& got, const QMat& w, int64_t r0, int64_t nr) {
  bool same = true;
  for (int64_t r = 0; r < nr; ++r) {
    auto row = w.row(r0 + r);
    for (int64_t k = 0; k < w.cols; ++k) same &= got[size_t(r * w.cols + k)] == fp32_to_bf16(row[size_t(k)]);
  }
  return same;
}

}  // namespace qwen35::test
