// Dequantization one projection ahead for the prefill GEMMs (see dequant_ahead.h).
#include "dequant_ahead.h"

#include <algorithm>
#include <vector>

#include "ktiles.h"
#include "matvec_fp4.h"

namespace qwen35::cuda {

namespace {

float part_scale(const DevLinear& W, size_t i) {
  const KTiles* t = W.part_tiles(i);
  return t ? t->scale() : W.parts[i].scale;
}

// W's rows as BF16, [rows, cols] (the scales not applied).
cudaError_t dequant_linear_bf16(const DevLinear& W, uint16_t* dst, cudaStream_t stream) {
  if (W.fp4.present()) return fp4_dequant_rows_bf16(W.fp4, 0, W.rows, dst, stream);
  if (W.stack.present()) return ktiles_dequant_rows_bf16(W.stack, 0, W.rows, dst, stream);
  for (size_t i = 0; i < W.parts.size(); ++i) {
    uint16_t* out = dst + W.offsets[i] * W.cols;
    const KTiles* t = W.part_tiles(i);
    const cudaError_t e = t ? ktiles_dequant_rows_bf16(*t, 0, W.parts[i].rows, out, stream)
                            : dequant_rows_bf16(W.parts[i], 0, W.parts[i].rows, out, stream);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

bool bf16_gemm_weight(const DevLinear& W, bool fp4_gemm) {
  if (W.fp4.present()) return !(fp4_gemm && W.blas.present());
  return W.stack.present() || !W.parts.empty();
}

}  // namespace

DequantAhead::~DequantAhead() {
  if (side_) cudaStreamSynchronize(side_);
  for (Slot& s : slots_) {
    if (s.ready) cudaEventDestroy(s.ready);
    if (s.free) cudaEventDestroy(s.free);
  }
  if (cache_ready_) cudaEventDestroy(cache_ready_);
  if (side_) cudaStreamDestroy(side_);
}

Status DequantAhead::init(const DeviceModel& dm, bool cache, bool fp4_gemm) {
  // The forward order of the projections: every layer, the MTP layer (its
  // fill follows the main pass), then back to the first (the next chunk).
  std::vector<const DevLinear*> order;
  auto add_layer = [&](const DevLayer& L) {
    for (const DevLinear* W : {&L.in_proj, &L.out_proj, &L.gate_up, &L.down})
      if (bf16_gemm_weight(*W, fp4_gemm)) order.push_back(W);
  };
  for (const DevLayer& L : dm.layers) add_layer(L);
  if (dm.mtp) {
    if (bf16_gemm_weight(dm.mtp->eh_proj, fp4_gemm)) order.push_back(&dm.mtp->eh_proj);
    add_layer(dm.mtp->block);
  }
  if (order.empty()) return Status::Ok();
  QWEN35_CUDA_TRY(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking), "creating a CUDA stream");
  if (cache) {
    uint64_t total = 0;
    for (const DevLinear* W : order) total += uint64_t(W->rows * W->cols);
    QWEN35_TRY(buf_.alloc(total * sizeof(uint16_t), "the dequantized prefill weights (QWEN35_CUDA_DEQ_CACHE)"));
    uint16_t* p = buf_.as<uint16_t>();
    for (const DevLinear* W : order) {
      QWEN35_CUDA_TRY(dequant_linear_bf16(*W, p, side_), "dequantizing");
      cached_[W] = p;
      p += W->rows * W->cols;
    }
    QWEN35_CUDA_TRY(cudaEventCreateWithFlags(&cache_ready_, cudaEventDisableTiming), "creating a CUDA event");
    QWEN35_CUDA_TRY(cudaEventRecord(cache_ready_, side_), "ordering the prefill streams");
    return Status::Ok();
  }
  for (size_t i = 0; i < order.size(); ++i) {
    next_[order[i]] = order[(i + 1) % order.size()];
    elems_ = std::max(elems_, order[i]->rows * order[i]->cols);
  }
  QWEN35_TRY(buf_.alloc(size_t(2 * elems_) * sizeof(uint16_t), "the prefill weight buffers"));
  for (int i = 0; i < 2; ++i) {
    slots_[i].buf = buf_.as<uint16_t>() + i * elems_;
    QWEN35_CUDA_TRY(cudaEventCreateWithFlags(&slots_[i].ready, cudaEventDisableTiming), "creating a CUDA event");
    QWEN35_CUDA_TRY(cudaEventCreateWithFlags(&slots_[i].free, cudaEventDisableTiming), "creating a CUDA event");
  }
  return Status::Ok();
}

Status DequantAhead::dequant_into(const DevLinear& W, int slot) {
  Slot& s = slots_[slot];
  s.tag = nullptr;  // until its dequantization is queued
  // Events never recorded count as complete.
  QWEN35_CUDA_TRY(cudaStreamWaitEvent(side_, s.free, 0), "ordering the prefill streams");
  QWEN35_CUDA_TRY(dequant_linear_bf16(W, s.buf, side_), "dequantizing");
  QWEN35_CUDA_TRY(cudaEventRecord(s.ready, side_), "ordering the prefill streams");
  s.tag = &W;
  return Status::Ok();
}

Status DequantAhead::gemm(const DevLinear& W, const uint16_t* X, int64_t ldx, int64_t n, float* y, int64_t ldy,
                          bool add, Gemm& gemm, cudaStream_t stream) {
  if (!cached_.empty()) {
    const auto it = cached_.find(&W);
    if (it == cached_.end()) return Error(QWEN35_ERR_BACKEND, "internal: a projection missing from the weight cache");
    QWEN35_CUDA_TRY(cudaStreamWaitEvent(stream, cache_ready_, 0), "ordering the prefill streams");
    return run_gemms(W, it->second, X, ldx, n, y, ldy, add, gemm, stream);
  }
  const DevLinear* next = nullptr;
  if (auto it = next_.find(&W); it != next_.end() && it->second != &W && fits(*it->second)) next = it->second;
  int slot = slot_of(&W);
  if (slot < 0) {
    // Not prefetched: use the slot that does not hold the prefetched successor.
    slot = slot_of(next) == 0 ? 1 : 0;
    QWEN35_TRY(dequant_into(W, slot));
  }
  QWEN35_CUDA_TRY(cudaStreamWaitEvent(stream, slots_[slot].ready, 0), "ordering the prefill streams");
  QWEN35_TRY(run_gemms(W, slots_[slot].buf, X, ldx, n, y, ldy, add, gemm, stream));
  QWEN35_CUDA_TRY(cudaEventRecord(slots_[slot].free, stream), "ordering the prefill streams");
  if (next && slot_of(next) < 0) QWEN35_TRY(dequant_into(*next, 1 - slot));
  return Status::Ok();
}

Status DequantAhead::run_gemms(const DevLinear& W, const uint16_t* w, const uint16_t* X, int64_t ldx, int64_t n,
                               float* y, int64_t ldy, bool add, Gemm& gemm, cudaStream_t stream) {
  const int64_t K = W.cols;
  if (W.fp4.present()) return gemm.run(GemmType::BF16, w, W.rows, K, X, ldx, n, y, ldy, W.fp4.scale, add, stream);
  if (W.stack.present()) return gemm.run(GemmType::BF16, w, W.rows, K, X, ldx, n, y, ldy, W.stack.scale(), add, stream);
  for (size_t i = 0; i < W.parts.size();) {
    size_t j = i + 1;
    while (j < W.parts.size() && part_scale(W, j) == part_scale(W, i)) ++j;
    const int64_t r0 = W.offsets[i], r1 = j < W.parts.size() ? W.offsets[j] : W.rows;
    QWEN35_TRY(gemm.run(GemmType::BF16, w + r0 * K, r1 - r0, K, X, ldx, n, y + r0, ldy, part_scale(W, i), add, stream));
    i = j;
  }
  return Status::Ok();
}

}  // namespace qwen35::cuda
