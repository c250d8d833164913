// Run-time choices of the decode kernels, so that one device session can
// compare variants without rebuilding. Process-wide; read from the
// environment on first use:
//
//   QWEN35_CUDA_FP4_KERNEL  1: the first NVFP4 kernel (one prologue per block
//                           over the whole activation row), 2: the streaming
//                           kernel, 3: the streaming kernel with bulk copies
//                           into shared memory (default)
//   QWEN35_CUDA_FP4_WARPS   row tiles (warps) per block of kernel 2: 4 or 8
//   QWEN35_CUDA_FP4_BPS     blocks per multiprocessor that kernel 2's split-K
//                           choice aims at (1..32)
//   QWEN35_CUDA_FP4_DEPTH   kgroups each warp of kernel 2 keeps in flight:
//                           4, 8 or 16
//   QWEN35_CUDA_FP4_STAGES  kernel 3: stages of 4 kgroups in flight per warp:
//                           2, 4 or 8 (8 not in lean mode)
//   QWEN35_CUDA_FP4_LEAN    kernel 3: 1 = one activation scale per row and
//                           column slice (fewer instructions per mma)
//   QWEN35_CUDA_FP4_CLUSTER kernel 3: 1 = the split-K slices of a tile group
//                           form a thread block cluster and are added
//                           through distributed shared memory (at most 8;
//                           default), 0 = through global memory (fence,
//                           counter, the last block adds)
//   QWEN35_CUDA_FP4_LATE_PDL kernel 3: 1 = each block triggers the next
//                           kernel's launch after its stream instead of at
//                           its start (fewer of the next kernel's blocks
//                           competing for the multiprocessors meanwhile)
//   QWEN35_CUDA_FP4_PREFETCH kernel 3: 1 = each block, after its stream,
//                           asks L2 for its share of the next projection's
//                           weights (cp.async.bulk.prefetch.L2); 2 = right
//                           after requesting its own first stages
//   QWEN35_CUDA_FP4_X_L1    kernel 3: 1 = with the RMS norm, the block first
//                           asks L1 for the whole activation rows, so that
//                           the slice load and the rows' sums of squares
//                           wait for L2 once (not yet measured)
//   QWEN35_CUDA_FP4_PROBE   kernel 3: 1 = skip the stream's arithmetic: wrong
//                           results, for timing what the rest costs
//   QWEN35_CUDA_FP4_CHAIN   kernel 3: chains of decode projections in one
//                           launch (chain_fp4.h; read when a context is
//                           created): 1 = each FFN (gate/up and down), 2 =
//                           also each layer's tail (output projection, FFN,
//                           the next layer's input projection), 3 = with
//                           the delta net's delta rule in front (8 state
//                           elements per thread), 4 = also with the fused
//                           decode attention in front; 0 = none
//   QWEN35_CUDA_FP4_CHAIN_POLL_NS chains and persistent tails: how long
//                           (ns, 0..4096, default 64) a waiting block (warp)
//                           sleeps between two polls of a counter; hundreds
//                           poll the same few L2 lines that the producers
//                           add to
//   QWEN35_CUDA_FP4_PERSIST kernel 3, the products of steps of 1-2 rows
//                           (decode, MTP verify) as launches
//                           of the persistent kernel (persist_fp4.h, the
//                           poll interval above): 1 = each layer's tail
//                           (output projection, FFN, the next layer's input
//                           projection), 2 = also the delta rule, so a run
//                           of delta-net layers up to the next attention is
//                           one launch, 3 = also the fused decode attention
//                           (launches of up to 20 stages, across attention
//                           layers); steps of more rows: one launch per
//                           product. Overrides QWEN35_CUDA_FP4_CHAIN (read
//                           when a context is created)
//   (kernel 3 always uses 4 warps per block: QWEN35_CUDA_FP4_WARPS is
//   kernel 2's)
//   QWEN35_CUDA_Q6K_KERNEL  1: one thread per row (Q6kRows32 layout),
//                           2: tensor cores on the tiled Q6_K layout (default;
//                           chosen at upload, see upload.cpp), 3: the same
//                           with the weights moved by bulk copies into
//                           shared memory (persistent blocks)
//   QWEN35_CUDA_Q6K_ARGMAX  1: greedy decoding takes the argmax in the tiled
//                           Q6_K LM head's epilogue (HeadArgmax, kernels 2
//                           and 3) instead of a separate argmax kernel
//   QWEN35_CUDA_DELTA_EPT   delta rule (decode and prefill): state elements
//                           per thread, 8 (default), 16 or 32 (the first
//                           kernel's split); read when a context is created
//
// set_decode_tuning() changes them for kernels launched afterwards; contexts
// that already captured CUDA graphs keep the shapes they captured, so change
// them only between contexts (qwen35-cuda-bench --sweep does).
#pragma once

#include <string>

namespace qwen35::cuda {

// Defaults from the H100 sweeps of 2026-11-26 (qwen35-cuda-bench --sweep,
// 4B NVFP4 file): kernel 2 w4 bps4 d4 decoded at 348.5 tok/s (run 2, the
// previous default w4 bps8 d8 at 316.7); kernel 3 w4 bps4 s4 at 404.6-409
// tok/s against kernel 2's 352-355 in the same runs (runs 5 and 6,
// docs/gpu-runs/2026-11-26-h100-run5.txt to -run7.txt). Lean mode, 8 warps
// per block and a 64-register cap did not help there. Since run 10
// (2026-11-27): the cluster combine (427 / 444 tok/s against 419 / 431
// without it in runs 9 / 10) and 8 delta-rule state elements per thread
// (prefill 21,000-24,402 tok/s against 18,397-22,607 with 16 in runs 8-10;
// decode the same).
struct DecodeTuning {
  int fp4_kernel = 3;
  int fp4_warps = 4;
  int fp4_blocks_per_sm = 4;
  int fp4_depth = 4;
  int fp4_stages = 4;  // kernel 3: shared-memory stages of 4 kgroups per warp (2, 4 or 8)
  int fp4_lean = 0;    // kernel 3: one activation scale per row and slice (1) or per chunk (0)
  int fp4_probe = 0;   // kernel 3, timing probes (WRONG results), bits: 1 = leave out the stream's arithmetic,
                       // 2 = the activation load (and row norms), 4 = the split-K combine and the stores
  int fp4_cluster = 1;  // kernel 3: 1 = combine the split-K slices in a thread block cluster (<= 8 slices)
  int fp4_late_pdl = 0;  // kernel 3: 1 = let the next kernel launch only after a block's stream (not at its start)
  int fp4_prefetch = 0;  // kernel 3: prefetch the next projection's weights into L2: 1 after the stream, 2 at the start
  int fp4_x_l1 = 0;      // kernel 3: 1 = the activation rows into L1 before the slice load and row norms
  int fp4_chain = 0;     // kernel 3, chained in one launch (chain_fp4.h): 1 = FFNs, 2 = layer tails,
                         // 3 = + delta rule, 4 = + attention
  int fp4_chain_early = 1;  // chains: a stage with the RMS norm after a plain one starts by column slice
                            // (Fp4Dep::SliceNorm), the output projection after the delta rule or attention
                            // by heads (Fp4Dep::Heads), instead of after the whole stage before (0)
  int fp4_chain_poll_ns = 64;  // chains: sleep between two polls of a counter by a waiting block (0..4096 ns)
  int fp4_persist = 0;  // kernel 3, steps of 1-2 rows as persistent launches (persist_fp4.h): 1 = layer tails,
                        // 2 = runs of delta-net layers (with their delta rules), 3 = also attention (launches
                        // of kPersistInline stages), 4 = as 3 from a stage table in device memory (a step's
                        // layers in one launch)
  int fp4_persist_slices = 0;  // persistent launches: 1 = stages wait for the stage before by column slice, and
                               // for all of it only before they store (PersistFp4Stage::slice_per; the same bits)
  int fp4_persist_timeline = 0;  // persistent launches: 1 = the timeline probe of each step's launches
                                 // (persist_timeline_last(); the steps without CUDA graphs)
  int fp4_fp8 = 0;  // kernel 3: 1 = the FP8 arithmetic for 1-2 rows (a second copy of the codes, arranged at load;
                    // sm_89 or later: fp4_tiled.h)
  int q6k_kernel = 2;
  int q6k_persist = 0;  // kernel 2: 0 = a warp per tile; N = persistent, N blocks per multiprocessor
  int q6k_argmax = 0;   // kernels 2 and 3: 1 = the greedy argmax in the LM head's epilogue
  int delta_ept = 8;
};

constexpr int kFp4MaxBlocksPerSm = 32;
constexpr int kFp4ProbeNoMath = 1, kFp4ProbeNoX = 2, kFp4ProbeNoCombine = 4;  // fp4_probe's bits

DecodeTuning decode_tuning();
// Values out of range are clamped to the nearest supported one.
void set_decode_tuning(const DecodeTuning& t);
// "fp4 v2 w4 bps8 d8, q6k v2, dn e16": for logs and tables.
std::string describe(const DecodeTuning& t);
// The QWEN35_CUDA_* settings that give t from the defaults
// ("QWEN35_CUDA_FP4_CHAIN=4 QWEN35_CUDA_Q6K_ARGMAX=1"; empty for the
// defaults).
std::string env_settings(const DecodeTuning& t);

}  // namespace qwen35::cuda
