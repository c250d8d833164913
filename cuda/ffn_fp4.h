// The decode FFN (spec §4.3) in one launch: the NVFP4 gate/up product
// (RMS norm prologue, SwiGLU epilogue) and the down projection added into
// the residual stream, as the tasks of one grid of kernel-3 blocks, so that
// the down projection's weights stream in while gate/up still runs and the
// kernel boundary between the two (the PDL wait, the grid's drain and
// ramp) goes away. Same sums in the same order as two kernel-3 launches
// with the same column slices (fp4_bulk_geometry), so the results are
// equal bit for bit. CPU twin: the two products of lib/quants.h with
// silu (tests compare against both).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "matvec_fp4.h"

namespace qwen35::cuda {

struct Fp4FfnArgs {
  // GateUp weight, Fp4Epilogue::SwiGLU, usually with the norm prologue; x
  // is the residual stream. 1..8 rows.
  Fp4MatvecArgs gate_up;
  // Plain weight, Fp4Epilogue::Add: x = gate_up.y (its SwiGLU outputs),
  // y = gate_up.x (the residual stream, updated in place). Its own partial
  // and counters buffers (the two products run at the same time).
  Fp4MatvecArgs down;
  // fp4_ffn_sync_ints() ints of device memory, zero before the first launch
  // and left at zero by every launch (the task tickets and the readiness of
  // each down slice). One set per call site (e.g. per layer): a launch takes
  // its first ticket before waiting for the previous kernel, so two
  // launches on the same counters must have other kernels between them
  // (the launch before the previous one must have completed).
  int* sync = nullptr;
  // Set to 1 (never cleared by the kernel) when a down task gave up
  // waiting for its inputs (after about a second: a hardware or scheduling
  // fault, never expected); the outputs of that launch are then wrong. Host
  // memory the device can write (pinned), so the host reads it after a
  // synchronization without a copy.
  int* fault = nullptr;
};

// Whether fp4_ffn can run these arguments (row count, shapes, alignment,
// shared memory); the caller launches the two products otherwise.
bool fp4_ffn_supported(const Fp4FfnArgs& a, int sms);
uint64_t fp4_ffn_sync_ints();

cudaError_t fp4_ffn(const Fp4FfnArgs& a, int sms, cudaStream_t stream);

}  // namespace qwen35::cuda
