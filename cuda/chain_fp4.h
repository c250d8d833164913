// A chain of NVFP4 decode projections in one launch: up to 5 stages, each
// reading what the one before it wrote, as the tasks of one grid of
// kernel-3 blocks. The decode FFN (gate/up with the RMS norm prologue and
// SwiGLU epilogue, then down added into the residual stream) is a chain of
// two; a layer's tail (output projection, gate/up, down, the next layer's
// input projection) a chain of four, five with the delta net's recurrent
// step in front (the delta rule as stage 0) or with the fused decode
// attention in front (an attention layer's tail). A stage's weights stream in
// while the stages before it still run, and the kernel boundaries between
// them (the PDL wait for a whole grid, its drain and ramp) go away. Each
// stage adds the same column slices in the same order as a kernel-3 launch
// of it (fp4_bulk_geometry, the global combine), and the delta rule does
// the arithmetic of delta_net.cu, so the results equal those of the stages
// launched one after another, bit for bit; likewise the attention stage,
// the fused decode attention's blocks (attention_decode.cuh).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "attention.h"
#include "delta_net.h"
#include "matvec_fp4.h"

namespace qwen35::cuda {

// How stage s > 0 waits for stage s-1.
enum class Fp4Dep {
  // Stage s-1 is a gate/up product (SwiGLU) and stage s reads its outputs
  // (x = y of s-1, no prologue): each column slice of stage s starts once
  // the tile groups that wrote those columns are done, and once every task
  // of stage s-1 has read its input (stage s may write it: down adds into
  // the residual stream gate/up read).
  Slice,
  // Stage s starts when stage s-1 is done (and with it, every earlier
  // stage): for a prologue over whole rows (the RMS norm) or any other use.
  Full,
  // Stage s-1's outputs are plain rows (Store or Add, no pairing) and stage
  // s reads them (x = y of s-1, the RMS norm prologue or none, no gated
  // norm): each column slice of stage s loads its activations and streams
  // its weights once the tile groups that wrote those columns are done,
  // then waits for all of stage s-1 before the norm factor (whole rows),
  // the split-K combine and the epilogue, so that everything stage s
  // writes comes after stage s-1 as with Full.
  SliceNorm,
  // Stage 0 is the delta rule and stage 1 the output projection with its
  // gated norm (x = the delta rule's outputs, heads of gate_dv; its column
  // slices hold whole heads), or stage 0 is the fused attention and stage
  // 1 the output projection with no prologue (x = the attention's outputs,
  // heads of head_dim, which may straddle slices): each column slice of
  // stage 1 starts once the stage-0 tasks of the heads in its columns are
  // done.
  Heads,
};

constexpr int kFp4ChainMaxStages = 5;
constexpr int kFp4ChainFaultInts = 5;

struct Fp4ChainArgs {
  int stages = 0;
  // Each stage as fp4_matvec would run it (kernel 3's checks apply), with
  // its own partial and counters buffers (the stages run at the same time).
  Fp4MatvecArgs stage[kFp4ChainMaxStages];
  // Stage 0 is the delta rule instead (as delta_net would run it: 1-8 rows,
  // 8 state elements per thread, no snapshot restrictions; stage[0] unused),
  // and stage 1 waits for it whole (dep[1] = Full) or by heads (Heads).
  bool delta = false;
  DeltaNetArgs delta_args;
  // Or stage 0 is the fused decode attention (as attention_fused would run
  // it: 1-kFusedAttnRows rows, head_dim 64-256; stage[0] unused), and stage
  // 1 waits for it whole or by heads. Not both.
  bool attn = false;
  FusedAttnArgs attn_args;
  Fp4Dep dep[kFp4ChainMaxStages] = {};  // dep[s] for s >= 1
  // fp4_chain_sync_ints() ints of device memory, zero before the first
  // launch and left at zero by every launch (task tickets, readiness
  // counters). One set per call site: a launch takes its first ticket before
  // waiting for the previous kernel, so the launch before the previous one
  // on the same counters must have completed (other kernels between them:
  // every kernel of this library waits for its predecessor).
  int* sync = nullptr;
  // kFp4ChainFaultInts ints: [0] set to 1 (never cleared by the kernel)
  // when a task gave up waiting for its inputs (after about a second: a
  // hardware or scheduling fault, never expected), the outputs of that
  // launch then being wrong; the first such task of a launch writes its
  // stage [1], its task index within the stage [2] (-1: a SliceNorm
  // task's wait for the whole stage before), the counter's value [3] and
  // what it waited for [4]. Memory the device can write and the
  // host can read after a synchronization (pinned).
  int* fault = nullptr;
};

// Whether stage 0 is the delta rule or attention rather than an NVFP4 product.
inline bool fp4_chain_has_head(const Fp4ChainArgs& a) { return a.delta || a.attn; }

// Whether fp4_chain can run these arguments (stage checks, dependencies,
// alignment, shared memory); the caller launches the stages one by one
// otherwise.
bool fp4_chain_supported(const Fp4ChainArgs& a, int sms);
uint64_t fp4_chain_sync_ints();

cudaError_t fp4_chain(const Fp4ChainArgs& a, int sms, cudaStream_t stream);

}  // namespace qwen35::cuda
