// The gated delta rule in its chunked (parallel) form (spec §4.5.6) for
// batches: the same arguments and results as delta_net() (delta_net.h) to
// F32 rounding, without the state snapshot. CPU twins: the sequential
// delta_rule_step() (the reference the tests compare with) and
// cpu::delta_rule_chunked (the same formulas: decays as products of the
// per-row factors in double, so a gate that wipes the state stays exact).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "delta_net.h"

namespace qwen35::cuda {

// Rows per chunk.
constexpr int64_t kDeltaChunkRows = 64;

// dk 32, 64 or 128; dv a multiple of 32 up to 128.
bool delta_chunked_supported(int64_t dk, int64_t dv);

// Device scratch for a batch of n rows (per value head and chunk: the
// normalized queries, the keys with their decays to the chunk's end, W, U,
// the decayed Q K^T and the decays).
size_t delta_chunked_scratch_floats(int64_t n, int64_t Hv, int64_t dk, int64_t dv);

// Two launches: one block per (value head, chunk) computes everything that
// does not depend on the state (norms, gates, the triangular solve); one
// block per (value head, 32 value dims) walks the chunks in order, keeping
// its columns of the state in shared memory. a.snapshot_row must be < 0.
cudaError_t delta_net_chunked(const DeltaNetArgs& a, float* scratch, cudaStream_t stream);

}  // namespace qwen35::cuda
