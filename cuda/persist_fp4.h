// A persistent decode kernel for a sequence of NVFP4 products: the first
// piece of a persistent decoder (docs/cuda.md, "A persistent decoder").
//
// Stage s multiplies its weight with the activation rows that stage s-1
// wrote (or the caller, for stage 0) and stores its outputs. One launch
// runs every stage with a grid of persistent blocks: the warps take the
// stages' (tile, column slice) units in order from a ticket counter (a few
// ahead of their computation), and each streams its units' weights through
// its ring of shared-memory stages without regard to the stages'
// boundaries: while it waits for stage s-1 to finish, the first stages of
// its stage-s weights are already arriving. A unit only waits for units
// with lower tickets, so any number of resident blocks finishes the
// launch (other streams' kernels may hold multiprocessors). A unit waits for all
// of stage s-1 (a counter of finished tiles; or, with slice waits, for the
// tiles of stage s-1 its column slice reads, and for all of stage s-1 only
// before it stores), converts its slice of the
// activations (as kernel 3's prologue, the same F16 chunks), streams its
// weights through kernel 3's arithmetic (fp4_kgroup) and combines its
// column slices through global memory (the last of a tile's units adds
// them in slice order), then the epilogue.
//
// A stage does what kernel 3 does around a product for its rows:
// the RMS norm or the delta net's gated norm as its prologue, the Add,
// SwiGLU or causal-conv epilogue. A norm's 1/rms comes from per-tile sums
// of squares that the stage before left with its outputs (the planner
// arranges it where the stage reads them), else from the whole row. So a
// decode layer's tail (output projection, gate/up, down, the next input
// projection) is one launch (the backend's QWEN35_CUDA_FP4_PERSIST). A
// stage may also be the delta net's delta rule (no weights: units of state
// rows), so consecutive delta-net layers are one launch too, and decode
// attention (units of (row, head, key split)), so a whole decoder is. Up to
// two activation rows (an MTP verify step), each with the bits it gets
// alone.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "attention.h"
#include "delta_net.h"
#include "matvec_fp4.h"

namespace qwen35::cuda {

constexpr int kPersistWarps = 4;     // warps per block
constexpr int kPersistStages = 4;    // ring stages of 4 kgroups per warp
constexpr int kPersistMaxKgPer = 24; // kgroups of a unit's column slice (its activation chunks' shared memory)
// Ints per stage counter: a 128-byte line each, so that the warps polling
// one stage's counter and those adding to the next one's do not share it.
constexpr int kPersistDoneStride = 32;
// Activation rows a launch takes: one (decode) or two (an MTP verify step);
// each row gets the bits it would get alone.
constexpr int kPersistMaxRows = 2;
// Stages a launch can carry in its parameters (no table in device memory:
// what a CUDA graph captures with the launch): the 4B's stages from one
// attention layer to the next (output projection, FFN, three delta-net
// layers of five stages, the attention's input projection) are 19. (Over
// 4 KB of parameters: CUDA 12.1 or later.)
constexpr int kPersistInline = 20;
// Stages a launch from a table in device memory takes (what the backend
// queues with QWEN35_CUDA_FP4_PERSIST=4): a whole decode step of the 4B is
// 160 (32 layers of five stages), the MTP layer's pass 6.
constexpr int kPersistTableMax = 256;

// What a stage computes.
enum class PersistKind : int32_t {
  Product,    // an NVFP4 product with its prologue and epilogue (the fields below)
  DeltaRule,  // the delta net's gated delta rule for one row (`delta`), no weights
  Attention,  // decode attention with its q/k norm, RoPE and cache write (`attn`), no weights
};

struct PersistFp4Stage {
  PersistKind kind = PersistKind::Product;
  // kind DeltaRule: as delta_net() with these arguments (n <= 2; dk 32, 64,
  // 128 or 256; dv a multiple of 256 / dk; 8 state elements per thread, so
  // the bits of delta_net's default), a unit per 256 / dk state rows of a
  // head. Its inputs come through L2 (the input projection wrote them in
  // this launch).
  DeltaNetArgs delta;
  // kind Attention: as attention_fused() with these arguments (n <= 2;
  // head_dim 64, 128 or 256; attn.splits key splits of at least 16 keys,
  // at most 128), but a unit per (row, head, split) run by one warp (a
  // split's keys in order), so the outputs agree with attention_fused's to
  // rounding. part_m/part_l/part_o hold n x n_head x splits partials;
  // counters as there. Its inputs come through L2.
  FusedAttnArgs attn;
  Fp4Tiled w;                 // Plain, or GateUp with the SwiGLU epilogue
  int n = 1;                  // activation rows, 1..kPersistMaxRows (a delta rule's: delta.n)
  const float* x = nullptr;   // [n, ldx] F32: read through L2 (another block may have written it in this launch)
  int64_t ldx = 0;
  float* y = nullptr;         // [n, ldy] F32: w.rows outputs a row (GateUp: the w.rows SwiGLU outputs)
  int64_t ldy = 0;
  Fp4Epilogue epilogue = Fp4Epilogue::Store;  // Store, Add (y += W x), SwiGLU (GateUp), Conv (Plain)
  // Prologue, at most one: the RMS norm (x times these weights; 1/rms(x)
  // applied to the sums) ...
  const float* norm = nullptr;    // [w.cols]
  float eps = 1e-6f;              // (of either norm)
  // ... or the delta net's gated norm: column c of head h = c / gate_dv
  // becomes rmsnorm(x_h) * gate_w[c % gate_dv] * silu(gate_z[c]).
  const float* gate_z = nullptr;  // [n, ldz]
  int64_t ldz = 0;
  const float* gate_w = nullptr;  // [gate_dv]
  int gate_dv = 0;                // 16 * 2^i, at most 512
  // Conv epilogue (spec §4.5.2): outputs < conv_channels through the causal
  // conv + SiLU, the window moved on by the rows (and copied to the
  // snapshot after row conv_snapshot_row); the others stored.
  const float* conv_taps = nullptr;  // [conv_channels, conv_k]
  float* conv_window = nullptr;      // [conv_k - 1, conv_channels]
  int64_t conv_channels = 0;
  int conv_k = 0;
  int conv_snapshot_row = -1;
  float* conv_snapshot = nullptr;
  // Set by persist_fp4_plan:
  int splits = 0;            // column slices
  int kg_per = 0;            // kgroups per slice
  int64_t units = 0;         // tiles x splits
  bool squares = false;      // leaves per-tile sums of squares of its outputs (the next stage's norm reads them)
  bool norm_from_prev = false;  // its norm adds the stage before's per-tile sums (else it reads the whole row)
  // Waits by column slice (persist_fp4_plan's slice_waits): a unit of this
  // stage starts once the outputs of the stage before in its columns
  // [lo, hi) are stored (ceil(hi / slice_per) - lo / slice_per counts on
  // the stage before's slice counter), and waits for the whole stage
  // before only where it stores (the norm's factor over whole rows, the
  // combine's last slice, the epilogue), so its weights' stream and
  // arithmetic overlap the stage before's tail. 0: the whole stage before
  // first. slice_per: the columns one count of the stage before covers
  // (its persist_count_cols).
  int slice_per = 0;
  // The stage before's side (set on it): its outputs in columns below
  // slice_limit count on counter 1 + column / slice_cols of its done line.
  int64_t slice_cols = 0;
  int64_t slice_limit = 0;
};
// Column slices a stage that waits by slice may have (its counters share
// the stage before's done line).
constexpr int kPersistMaxSliceWaits = kPersistDoneStride - 1;

// Tiles (units, for the delta rule) a stage counts as finished when done.
QWEN35_HD int64_t persist_stage_tiles(const PersistFp4Stage& p) {
  return p.kind == PersistKind::Product ? p.w.tiles() : p.units;
}

// The output columns one count of a stage covers (a tile's 16 rows, a
// gate/up tile's 8 SwiGLU outputs, a delta-rule unit's 256 / dk state
// rows), so count i (tile i, unit i) is of columns from i times this on:
// what slice waits count and wait for (slice_per, slice_cols). 0 for
// attention, whose head outputs come from the last of its splits.
QWEN35_HD int64_t persist_count_cols(const PersistFp4Stage& p) {
  if (p.kind == PersistKind::DeltaRule) return 256 / p.delta.dk;
  if (p.kind != PersistKind::Product) return 0;
  return p.epilogue == Fp4Epilogue::SwiGLU ? kFp4TileRows / 2 : kFp4TileRows;
}

// The stage that does what fp4_matvec does with these arguments (the
// product, its prologue and epilogue; planned later). False where the
// persistent kernel cannot: more than kPersistMaxRows activation rows.
bool persist_fp4_stage(const Fp4MatvecArgs& a, PersistFp4Stage* out);
// The same for delta_net() (at most kPersistMaxRows rows).
bool persist_delta_stage(const DeltaNetArgs& d, PersistFp4Stage* out);
// The same for attention_fused() (at most kPersistMaxRows rows; f.attn.splits
// the stage's key splits, 1..kPersistMaxAttnSplits).
bool persist_attention_stage(const FusedAttnArgs& f, PersistFp4Stage* out);
constexpr int kPersistMaxAttnSplits = 128;

// Chooses each stage's column slices for a grid of `blocks` blocks (the
// least work for the busiest warp, counting each unit's fixed costs as a
// few kgroups; then the fewest slices; at most kPersistMaxKgPer kgroups per
// slice; whole heads of the gated norm) and where norms take the sums of
// squares of the stage before. False if a stage is not supported: no
// columns, pairing and epilogue do not match, both norms, a gated norm's
// heads the warps cannot reduce, a conv wider than the outputs, weights or
// activations not 16-byte aligned.
// slice_waits: where a stage reads the outputs the stage before stored
// (products of plain rows or SwiGLU outputs, the delta rule's outputs; at
// most kPersistMaxSliceWaits slices), it waits by column slice
// (PersistFp4Stage::slice_per); the same bits either way.
bool persist_fp4_plan(PersistFp4Stage* stages, int count, int blocks, bool slice_waits = false);

// What a planned sequence needs besides its table: split-K partials
// (2 x partial_half floats), per-tile counters (2 x counter_half ints) and
// per-tile sums of squares (2 x squares_half floats), and the largest slice
// and row count (the activation chunks' shared memory).
struct PersistFp4Sizes {
  uint64_t partial_half = 0;
  uint64_t counter_half = 0;
  uint64_t squares_half = 0;
  int max_kg_per = 0;
  int max_rows = 1;
  bool attention = false;  // an attention stage: the kernel's instantiation with it (more registers, fewer blocks)
  bool fp8 = false;        // the products on the FP8 tensor cores (their w.codes8; fp4_tiled.h): 48-byte chunks
};
// fp8: the products' FP8 arithmetic where every product stage has its codes
// in the FP8 arrangement (w.codes8, on a device with FP8 tensor cores).
PersistFp4Sizes persist_fp4_sizes(const PersistFp4Stage* stages, int count, bool fp8 = false);

// Blocks of the kernel one multiprocessor holds for these sizes (a grid of
// sms times this is resident as a whole on an idle GPU).
int persist_fp4_blocks_per_sm(const PersistFp4Sizes& sizes);
// The grid to plan for on `sms` multiprocessors: sms times the above (1 in
// the emulation, which runs blocks one after another); 0 if none fits.
int persist_fp4_grid(const PersistFp4Sizes& sizes, int sms);
#ifdef QWEN35_CUDA_EMU
// The emulation's answer to persist_fp4_grid (default 1). A test sets more
// to plan the stages for a larger grid (more column slices, as on a GPU);
// the launch's first block still takes every ticket there.
void persist_emu_set_grid(int blocks);
#endif

struct PersistFp4Args {
  // The planned stages: a device table [count] (count <= kPersistTableMax),
  // or (null) the first count of inline_stages, which travel with the launch
  // (count <= kPersistInline). A table must hold its stages until the
  // launch has completed (a CUDA graph's launch reads it at every replay).
  const PersistFp4Stage* stages = nullptr;
  PersistFp4Stage inline_stages[kPersistInline];
  int count = 0;
  PersistFp4Sizes sizes;     // persist_fp4_sizes of the table
  float* partial = nullptr;  // [2 x sizes.partial_half]
  float* squares = nullptr;  // [2 x sizes.squares_half]
  // Counters: zero before the first launch, left at zero by every launch
  // (the last warp to leave resets them), so a launch needs no memset.
  int* counters = nullptr;   // [2 x sizes.counter_half] split-K slices per tile
  // [(count + 1) x kPersistDoneStride] per stage: finished tiles, then (slice
  // waits) finished tiles per column slice of the stage after; then warps gone.
  int* done = nullptr;
  // [1] units handed out (on a 128-byte line of its own). Taken before the
  // PDL wait: launches that follow each other in a stream must use two
  // counters in turn (when a launch starts, the one two kernels before it
  // has completed and reset its counter).
  int* tickets = nullptr;
  int* fault = nullptr;      // [1] set when a wait gave up (~1 s), so the others give up too
  // Set to 1 (never cleared by the kernel) when a launch's wait gave up: its
  // outputs are wrong. Written once, by the last warp of such a launch, so
  // it may be pinned host memory.
  int* fault_report = nullptr;
  unsigned poll_ns = 64;     // a waiting warp's sleep between polls
  bool no_waits = false;     // a timing probe: units do not wait for the stage before (WRONG results)
  // A timing probe (null: off): [count][kPersistTimeFields] global times in
  // ns (%globaltimer) per stage, the kTime* fields below, zero before the
  // launch (a memset); lane 0 of each warp adds a few atomics per unit.
  // Read them with persist_time().
  unsigned long long* timeline = nullptr;
};
// The timeline's fields per stage: the first unit's start (its ticket
// located), the first and the last unit's inputs ready (the wait for the
// stage before over), the last tile finished (before its count, so the
// stage after sees its inputs ready later). Every field is an atomicMax
// (the earliest times as their complements), so zero is the start value.
constexpr int kPersistTimeFields = 4;
enum PersistTimeField : int { kTimeFirstStart = 0, kTimeFirstReady = 1, kTimeLastReady = 2, kTimeLastDone = 3 };
QWEN35_HD constexpr bool persist_time_earliest(int f) { return f == kTimeFirstStart || f == kTimeFirstReady; }
// Field f of stage s of a timeline (0 where no unit wrote it).
QWEN35_HD unsigned long long persist_time(const unsigned long long* timeline, int64_t s, int f) {
  const unsigned long long v = timeline[s * kPersistTimeFields + f];
  return persist_time_earliest(f) && v != 0 ? ~v : v;
}

// A stage's times from a timeline probe (persist_time's fields, in ns),
// with what the stage was: a product's weight shape, the delta rule's
// value heads x dv, attention's query heads x head size.
struct PersistStageTime {
  PersistKind kind = PersistKind::Product;
  int64_t rows = 0, cols = 0;
  unsigned long long t[kPersistTimeFields] = {};
};
// The stages of the last decode call's persistent launches, in order,
// where the backend's tuning fp4_persist_timeline is set (process-wide: a
// probe for qwen35-cuda-bench; the last call of any context).
std::vector<PersistStageTime> persist_timeline_last();
// Each stage's times (persist_time) from a probe's timeline of at least
// stages.size() stages.
inline void persist_read_times(const unsigned long long* timeline, std::vector<PersistStageTime>& stages) {
  for (size_t s = 0; s < stages.size(); ++s)
    for (int f = 0; f < kPersistTimeFields; ++f) stages[s].t[f] = persist_time(timeline, int64_t(s), f);
}
void set_persist_timeline_last(std::vector<PersistStageTime> stages);

// (A kernel's parameters: at most 32,764 bytes since CUDA 12.1.)
static_assert(sizeof(PersistFp4Args) <= 32000, "the inline stages must fit a launch's parameters");

// One launch of `blocks` blocks (the count the table was planned for; the
// results do not depend on it, nor on how many are resident) on `stream`,
// with PDL like every decode kernel: the first tickets are taken and the
// first weights requested before the wait for the previous kernel.
cudaError_t persist_fp4(const PersistFp4Args& a, int blocks, cudaStream_t stream);

}  // namespace qwen35::cuda
