// A persistent decode kernel for a sequence of NVFP4 products: the first
// piece of a persistent decoder (docs/cuda.md, "A persistent decoder").
//
// Stage s multiplies its weight with one activation row that stage s-1
// wrote (or the caller, for stage 0) and stores its outputs. One launch
// runs every stage with a grid that stays resident: the stages' (tile,
// column slice) units are dealt out to the warps of all blocks before the
// launch (unit u of a stage to block u % G, warp u / G % 4, in stage
// order), so each warp knows its whole list of weight runs, and it streams
// them through its ring of shared-memory stages without regard to the
// stages' boundaries: while it waits for stage s-1 to finish, the first
// stages of its stage-s weights are already arriving. A unit waits for all
// of stage s-1 (a counter of finished tiles), converts its slice of the
// activations (as kernel 3's prologue, the same F16 chunks), streams its
// weights through kernel 3's arithmetic (fp4_kgroup) and combines its
// column slices through global memory (the last of a tile's units adds
// them in slice order).
//
// What it leaves out for now: the RMS norm and gated norm prologues, the
// SwiGLU / Add / conv epilogues, more than one activation row, the delta
// rule and attention stages; the backend does not use it. It exists to be
// measured against separate kernel-3 launches of the same products
// (qwen35-persist-bench) and tested against them (tests/gpu/persist_case.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "matvec_fp4.h"

namespace qwen35::cuda {

constexpr int kPersistWarps = 4;     // warps per block
constexpr int kPersistStages = 4;    // ring stages of 4 kgroups per warp
constexpr int kPersistMaxKgPer = 24; // kgroups of a unit's column slice (its activation chunks' shared memory)
// Ints per stage counter: a 128-byte line each, so that the warps polling
// one stage's counter and those adding to the next one's do not share it.
constexpr int kPersistDoneStride = 32;

struct PersistFp4Stage {
  Fp4Tiled w;             // Plain pairing
  const float* x = nullptr;  // [w.cols] F32: read through L2 (another block may have written it in this launch)
  float* y = nullptr;        // [w.rows] F32
  // Set by persist_fp4_plan:
  int splits = 0;            // column slices
  int kg_per = 0;            // kgroups per slice
  int64_t units = 0;         // tiles x splits
};

// Chooses each stage's column slices for a grid of `blocks` blocks (the
// least work for the busiest warp, counting each unit's fixed costs as a
// few kgroups; then the fewest slices; at most kPersistMaxKgPer kgroups per
// slice). False if a stage is not supported (not Plain, no columns, weights
// not 16-byte aligned).
bool persist_fp4_plan(PersistFp4Stage* stages, int count, int blocks);

// What a planned sequence needs besides its table: split-K partials
// (2 x partial_half floats) and per-tile counters (2 x counter_half ints,
// zeroed by each launch), and the largest slice (its activation chunks'
// shared memory).
struct PersistFp4Sizes {
  uint64_t partial_half = 0;
  uint64_t counter_half = 0;
  int max_kg_per = 0;
};
PersistFp4Sizes persist_fp4_sizes(const PersistFp4Stage* stages, int count);

// Blocks of the kernel one multiprocessor holds for these sizes (the grid
// must be resident as a whole: at most sms times this; 1 in the emulation).
int persist_fp4_blocks_per_sm(const PersistFp4Sizes& sizes);

struct PersistFp4Args {
  const PersistFp4Stage* stages = nullptr;  // device copy of the planned table [count]
  int count = 0;
  PersistFp4Sizes sizes;     // persist_fp4_sizes of the table
  float* partial = nullptr;  // [2 x sizes.partial_half]
  int* counters = nullptr;   // [2 x sizes.counter_half] (zeroed by the launch)
  int* done = nullptr;       // [count x kPersistDoneStride] finished tiles per stage (zeroed by the launch)
  int* fault = nullptr;      // set to 1 if a wait gave up (~1 s; the outputs are then wrong)
  unsigned poll_ns = 64;     // a waiting warp's sleep between polls
  bool no_waits = false;     // a timing probe: units do not wait for the stage before (WRONG results)
};

// One launch of `blocks` blocks (the count the table was planned for; all
// of them must be resident at once, or waits give up) on `stream`.
cudaError_t persist_fp4(const PersistFp4Args& a, int blocks, cudaStream_t stream);

}  // namespace qwen35::cuda
