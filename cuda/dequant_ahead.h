// Prefill GEMMs with the weights dequantized one projection ahead (Hopper
// and other GPUs without the FP4 GEMM, and every projection that the FP4
// GEMM does not take: k-quant tiles, GGUF layouts).
//
// The batched path multiplies BF16 weights with cuBLASLt; dequantizing a
// weight (tiled NVFP4, k-quant tiles, GGUF rows) to BF16 is memory-bound
// work that, done just before each GEMM on the same stream, adds its full
// time to the prefill. Here it
// runs on a second stream into one of two buffers, each holding a whole
// projection: while projection i is multiplied from one buffer (and while
// the attention or delta-rule kernels after it run), projection i+1, the
// next in the model's fixed order, is dequantized into the other. Events
// order the two streams: a dequantization waits for the last GEMM that read
// its buffer; a GEMM waits for the dequantization of its buffer. Results are
// those of the row-block path up to the GEMM's own rounding (one GEMM per
// projection, or per run of parts with one scale, instead of row blocks).
//
// Opt-in (QWEN35_CUDA_DEQ_CACHE=1): every such projection is dequantized
// once, at context creation, and kept (about 7.5 GB for the 4B per context):
// prefill GEMMs then read BF16 weights only.
#pragma once

#include <cuda_runtime_api.h>

#include <map>

#include "cuda_util.h"
#include "device_model.h"
#include "gemm.h"

namespace qwen35::cuda {

class DequantAhead {
 public:
  DequantAhead() = default;
  ~DequantAhead();
  DequantAhead(const DequantAhead&) = delete;
  DequantAhead& operator=(const DequantAhead&) = delete;

  // Buffers for the largest projection of dm whose prefill GEMMs read BF16
  // weights (every one, but NVFP4 stacks that the FP4 GEMM takes when
  // fp4_gemm), and the order in which a forward pass uses them (layers,
  // then the MTP layer, then around). cache: keep every projection
  // dequantized instead (see above).
  Status init(const DeviceModel& dm, bool cache, bool fp4_gemm);
  bool fits(const DevLinear& W) const { return cached_.empty() ? next_.count(&W) > 0 : cached_.count(&W) > 0; }
  uint64_t bytes() const { return buf_.bytes(); }

  // y[n, ldy] (= or +=) W x with X the BF16 activations [n, ldx], on `stream`
  // (W must fit). Queues the dequantization of W's successor.
  Status gemm(const DevLinear& W, const uint16_t* X, int64_t ldx, int64_t n, float* y, int64_t ldy, bool add,
              Gemm& gemm, cudaStream_t stream);

 private:
  struct Slot {
    uint16_t* buf = nullptr;          // [rows, cols] BF16
    const DevLinear* tag = nullptr;   // whose weights it holds (or is receiving)
    cudaEvent_t ready = nullptr;      // its dequantization is done
    cudaEvent_t free = nullptr;       // the last GEMM reading it is done
  };
  Status dequant_into(const DevLinear& W, int slot);
  // y (+)= W x from W's BF16 rows at w: one GEMM for a stack in one
  // layout, else one per run of parts with the same scale.
  static Status run_gemms(const DevLinear& W, const uint16_t* w, const uint16_t* X, int64_t ldx, int64_t n, float* y,
                          int64_t ldy, bool add, Gemm& gemm, cudaStream_t stream);
  int slot_of(const DevLinear* W) const { return slots_[0].tag == W ? 0 : slots_[1].tag == W ? 1 : -1; }

  DeviceBuffer buf_;
  int64_t elems_ = 0;
  cudaStream_t side_ = nullptr;
  Slot slots_[2];
  std::map<const DevLinear*, const DevLinear*> next_;
  std::map<const DevLinear*, const uint16_t*> cached_;  // cache mode: every projection's BF16 copy
  cudaEvent_t cache_ready_ = nullptr;
};

}  // namespace qwen35::cuda
