#include "cpu/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/kernels.h"
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

void* alloc64(size_t bytes) { return std::aligned_alloc(64, (bytes + 63) & ~size_t(63)); }

}  // namespace

void matmul_ref(const Weight& w, const float* x, int64_t n, float* y, ThreadPool& tp) {
  matmul_rows_dequant(w, x, n, y, tp);
}

MatmulScratch::~MatmulScratch() {
  std::free(acts_);
  std::free(rowbuf_);
  std::free(work_);
}

Status MatmulScratch::reserve(int64_t rows, int64_t K_max, int n_types, int n_threads) {
  const size_t want = size_t(std::max<int64_t>(rows, 1)) * cpu::act_layout(K_max).stride * size_t(std::max(n_types, 1));
  if (want > acts_bytes_) {
    void* p = alloc64(want);
    if (!p) return Error(QWEN35_ERR_OUT_OF_MEMORY, "cannot allocate {} MiB for quantized activations", want >> 20);
    std::free(acts_);
    acts_ = static_cast<uint8_t*>(p);
    acts_bytes_ = want;
  }
  const size_t wb = (cpu::gemm_work_bytes(K_max) + 63) & ~size_t(63);
  if (K_max > rowbuf_len_ || n_threads > rowbuf_threads_ || wb > work_bytes_) {
    const int64_t len = std::max(K_max, rowbuf_len_);
    const int th = std::max(n_threads, rowbuf_threads_);
    const size_t wlen = std::max(wb, work_bytes_);
    void* p = alloc64(size_t(len) * size_t(th) * sizeof(float));
    void* q = alloc64(wlen * size_t(th));
    if (!p || !q) {
      std::free(p);
      std::free(q);
      return Error(QWEN35_ERR_OUT_OF_MEMORY, "cannot allocate matmul work buffers");
    }
    std::free(rowbuf_);
    std::free(work_);
    rowbuf_ = static_cast<float*>(p);
    work_ = static_cast<uint8_t*>(q);
    rowbuf_len_ = len;
    rowbuf_threads_ = th;
    work_bytes_ = wlen;
  }
  return Status::Ok();
}

namespace {

// Weight rows per work item: about 64 KiB of weights (short enough that the
// last items finish together on all threads, long enough to amortize the
// hand-out), at least 8 items per thread, a multiple of 4 (the kernels'
// row tile).
int64_t chunk_rows(int64_t total_rows, uint64_t row_bytes, int n_threads) {
  const int64_t by_bytes = int64_t((64u << 10) / std::max<uint64_t>(row_bytes, 1));
  const int64_t by_count = total_rows / (int64_t(n_threads) * 8);
  const int64_t rows = std::min(by_bytes, by_count);
  return std::clamp<int64_t>((rows + 3) & ~int64_t(3), 4, 64);
}

// Types without a kernel (MXFP4): dequantize a row into the thread's buffer
// and dot it with every activation row.
void gemm_fallback(const cpu::KernelSet& ks, const Weight& w, const float* x, int64_t n, float* y, int64_t r0,
                   int64_t r1, float* row) {
  for (int64_t r = r0; r < r1; ++r) {
    dequantize_row(w.type, w.row(r), row, w.cols);
    for (int64_t t = 0; t < n; ++t) y[t * w.rows + r] = ks.dot(row, x + t * w.cols, w.cols) * w.scale;
  }
}

}  // namespace

void matmul_multi(const MatmulOut* outs, int count, const float* x, int64_t n, ThreadPool& tp, MatmulScratch& s) {
  const cpu::KernelSet& ks = cpu::kernels();
  const int64_t K = outs[0].w->cols;
  const cpu::ActLayout L = cpu::act_layout(K);

  // One converted copy of x per distinct weight type that wants one.
  uint32_t types[kMaxMatmulOuts];
  int slot[kMaxMatmulOuts];
  int n_types = 0;
  for (int i = 0; i < count; ++i) {
    slot[i] = -1;
    const uint32_t t = outs[i].w->type;
    if (!ks.converts_acts(t)) continue;
    for (int j = 0; j < n_types; ++j)
      if (types[j] == t) slot[i] = j;
    if (slot[i] < 0) {
      types[n_types] = t;
      slot[i] = n_types++;
    }
  }
  // Activation rows per slice (all of them unless the reservation is short).
  int64_t rows_per_slice = n;
  if (n_types > 0) rows_per_slice = std::min<int64_t>(n, int64_t(s.acts_bytes() / (L.stride * size_t(n_types))));
  if (rows_per_slice < 1) rows_per_slice = 1;  // reserve() guarantees one row of K_max

  int64_t total_rows = 0;
  uint64_t max_row_bytes = 0;
  for (int i = 0; i < count; ++i) {
    total_rows += outs[i].w->rows;
    max_row_bytes = std::max(max_row_bytes, outs[i].w->row_bytes);
  }
  const int64_t crows = chunk_rows(total_rows, max_row_bytes, tp.size());
  int64_t first_chunk[kMaxMatmulOuts + 1];
  first_chunk[0] = 0;
  for (int i = 0; i < count; ++i) first_chunk[i + 1] = first_chunk[i] + (outs[i].w->rows + crows - 1) / crows;
  const int64_t n_chunks = first_chunk[count];

  for (int64_t t0 = 0; t0 < n; t0 += rows_per_slice) {
    const int64_t nt = std::min(rows_per_slice, n - t0);
    const float* xs = x + t0 * K;
    // Quantize: slot-major, rows of a slot contiguous.
    auto quantize = [&](int64_t job) {
      const int64_t j = job / nt, t = job % nt;
      ks.quantize_act(types[j], xs + t * K, K, s.acts() + (size_t(j) * size_t(nt) + size_t(t)) * L.stride);
    };
    const int64_t q_jobs = int64_t(n_types) * nt;
    if (q_jobs <= 2) {
      for (int64_t j = 0; j < q_jobs; ++j) quantize(j);
    } else {
      tp.parallel_chunks(q_jobs, 1, [&](int64_t j, int64_t, int) { quantize(j); });
    }

    cpu::GemmArgs args[kMaxMatmulOuts];
    for (int i = 0; i < count; ++i) {
      const Weight& w = *outs[i].w;
      cpu::GemmArgs& a = args[i];
      a.type = w.type;
      a.w = w.data;
      a.w_stride = w.row_bytes;
      a.K = K;
      if (slot[i] >= 0) {
        a.x = s.acts() + size_t(slot[i]) * size_t(nt) * L.stride;
        a.x_stride = L.stride;
      } else {
        a.x = xs;
        a.x_stride = size_t(K) * sizeof(float);
      }
      a.n = nt;
      a.y = outs[i].y + t0 * w.rows;
      a.ldy = w.rows;
      a.scale = w.scale;
    }
    tp.parallel_chunks(n_chunks, 1, [&](int64_t c, int64_t, int ith) {
      int i = 0;
      while (c >= first_chunk[i + 1]) ++i;
      const int64_t r0 = (c - first_chunk[i]) * crows;
      const int64_t r1 = std::min(r0 + crows, outs[i].w->rows);
      cpu::GemmArgs a = args[i];
      a.work = s.work(ith);
      a.work_bytes = s.work_bytes();
      if (!ks.gemm(a, r0, r1)) gemm_fallback(ks, *outs[i].w, xs, nt, a.y, r0, r1, s.row_buf(ith));
    });
  }
}

void matmul(const Weight& w, const float* x, int64_t n, float* y, ThreadPool& tp, MatmulScratch& s) {
  const MatmulOut o{&w, y};
  matmul_multi(&o, 1, x, n, tp, s);
}

}  // namespace qwen35
