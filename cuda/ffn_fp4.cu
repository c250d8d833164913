// The fused decode FFN (see ffn_fp4.h): gate/up and down in one grid.
//
// Tasks: tickets 0 .. gu_tasks-1 are the gate/up product's (tile group,
// column slice) blocks of kernel 3, tile group major; the down
// projection's follow, slice major. The grid has one block per task; each
// block takes a ticket (an atomic counter, so tickets go to blocks in the
// order they start, not by block index) and runs that task like a kernel-3
// block: its weight stages requested before the PDL wait, then the
// activation slice, the stream, the split-K combine through global memory.
// On top of that:
//  * a gate/up task counts itself in gu_read once it has read the residual
//    stream (the down tasks add into it);
//  * the block that stores a gate/up tile group's SwiGLU outputs (the last
//    of its slices) publishes them by counting the group in ready[s], s the
//    down slice that reads those columns;
//  * a down task, its weights requested, waits (thread 0, polling with
//    acquire loads) until gu_read counts every gate/up task and ready[s]
//    every tile group of its slice, then reads its activation slice
//    through L2 (written by other blocks of this launch).
// So the down projection's weights stream in while gate/up still runs, and
// a down task starts as soon as its slice's inputs are there.
// Deadlock freedom: a task only waits for tasks with lower tickets, which
// blocks that are running took and which never wait themselves, so the
// waits end whatever number of blocks is resident. (The emulation, which
// runs blocks one after another, hands the tickets out in order.) The
// waits are bounded anyway: after 2^24 polls a block gives up, raises the
// fault flag and goes on (wrong results, no hang). The last block to leave
// resets the counters. They belong to one call site (a layer's FFN), so
// the ticket may be taken before the PDL wait: the previous launch on these
// counters was a whole decode step earlier.
#include <algorithm>
#include <atomic>

#include "common.cuh"
#include "ffn_fp4.h"
#include "fp4_kernels.cuh"
#include "launch.cuh"
#include "tc_common.cuh"
#include "tuning.h"

namespace qwen35::cuda {

namespace {

// The sync ints: the ticket counter, gate/up tasks past their prologue,
// blocks gone, a fault seen in this launch, then ready[] per down slice.
constexpr int kSyncTicket = 0, kSyncRead = 1, kSyncExited = 2, kSyncFault = 3, kSyncReady = 4;
constexpr int kMaxDownSlices = 64;
constexpr int kStages = 4;                      // kernel 3's default ring
constexpr int kGroupOutputs = kBulkWarps * 8;   // SwiGLU outputs of a gate/up tile group
#ifdef QWEN35_CUDA_EMU
constexpr uint32_t kMaxPolls = 0;  // blocks run one at a time: an unmet wait never ends
#else
constexpr uint32_t kMaxPolls = 1u << 24;
#endif

// The launch's task list (host-computed).
struct FfnPlan {
  int64_t gu_kg_per = 1, dn_kg_per = 1;  // kgroups per column slice
  int gu_splits = 1, dn_splits = 1;
  int gu_groups = 0, dn_groups = 0;      // tile groups (kBulkWarps tiles each)
  int gu_tasks = 0, tasks = 0;
  bool skip_math = false;                // tuning fp4_probe: timing only
};

__device__ __forceinline__ int ld_acquire(const int* p) {
#ifdef QWEN35_CUDA_EMU
  return *p;
#else
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
#endif
}

// Thread 0 of a down task: until every gate/up task has read the residual
// stream and `need` tile groups have published into ready[slice].
__device__ __forceinline__ void wait_inputs(int* sync, int slice, int need, int reads, int* fault) {
  for (uint32_t i = 0;; ++i) {
    if (ld_acquire(sync + kSyncReady + slice) >= need && ld_acquire(sync + kSyncRead) >= reads) return;
    if (i >= kMaxPolls || ld_acquire(sync + kSyncFault) != 0) {
      *reinterpret_cast<volatile int*>(sync + kSyncFault) = 1;  // the other blocks stop waiting too
      *reinterpret_cast<volatile int*>(fault) = 1;
      return;
    }
#ifndef QWEN35_CUDA_EMU
    __nanosleep(64);
#endif
  }
}

// One task: tile group `group`, column slice `split` of product a (kGu:
// gate/up, else down).
template <int S, int kN, bool kGu>
__device__ __forceinline__ void ffn_task(const Fp4MatvecArgs& a, const FfnPlan& p, int64_t group, int split,
                                         uint8_t* ring, uint64_t* bars, uint8_t* xbase,
                                         float (*ss_part)[kMatvecMaxCols], bool& is_last, int* sync, int* fault) {
  constexpr int W = kBulkWarps;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const Fp4Tiled& w = a.w;
  const int n = kN > 0 ? kN : a.n;
  const int splits = kGu ? p.gu_splits : p.dn_splits;
  const int64_t kg0 = int64_t(split) * (kGu ? p.gu_kg_per : p.dn_kg_per);
  const int nkg = int(min(w.kgroups(), kg0 + (kGu ? p.gu_kg_per : p.dn_kg_per)) - kg0);  // >= 1
  const int nch = 4 * nkg;
  uint16_t* xs = reinterpret_cast<uint16_t*>(xbase);                           // [nch][n][16] F16
  float* mult = reinterpret_cast<float*>(xbase + size_t(nch) * size_t(n) * 32);  // [nch][8]
  const int64_t tile = group * W + warp;
  const bool active = tile < w.tiles();
  // Gate/up tile groups whose outputs one down slice reads.
  const int per_slice = int(p.dn_kg_per * kFp4GroupCols / kGroupOutputs);

  // 1. The first stages of this warp's weights (never written by a kernel:
  // before the PDL wait, as kernel 3).
  const BulkRun run = bulk_run(ring, bars, w, tile, kg0, nkg, 0u);
  if (active && lane == 0) bulk_start<S>(run);
  __syncwarp();
  pdl_wait();  // the residual stream
  pdl_trigger();

  // 2. Down: the inputs. Gate/up: nothing to wait for.
  if constexpr (!kGu) {
    if (threadIdx.x == 0) {
      const int need = min(p.gu_groups, (split + 1) * per_slice) - split * per_slice;
      wait_inputs(sync, split, need, p.gu_tasks, fault);
    }
    __syncthreads();
  }

  // 3. The activation slice (down: through L2).
  TcInput in = tc_input(a);
  in.n = n;
  tc_load_x_impl<false, !kGu>(in, kg0 * kFp4GroupCols, nch, xs, mult, nullptr);
  if (a.norm) tc_row_squares<W>(in, w.cols, ss_part);
  __syncthreads();
  if (kGu && threadIdx.x == 0) {
    __threadfence();
    atomicAdd(sync + kSyncRead, 1);
  }

  // 4. Stream, combine, store.
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (active) bulk_stream<S, false>(run, acc, xs + tc_b_row(g, n) * 16 + t * 4, mult + 2 * t, n, lane, g, p.skip_math);
  const bool stored = fp4_finish<W>(a, splits, group, split, tile, active, g, t, acc, ss_part, is_last);

  // 5. Gate/up: publish the tile group's outputs.
  if (kGu && stored) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(sync + kSyncReady + int(group / per_slice), 1);
  }
}

// One task per block: a grid of exactly p.tasks blocks, each taking one
// ticket. (A loop over tickets in persistent blocks made ptxas keep its
// loop invariants in registers and spill, even at 128 registers.)
template <int S, int kN>
__global__ void __launch_bounds__(kBulkWarps * kWarp, 6)
    fp4_ffn_kernel(Fp4MatvecArgs gu, Fp4MatvecArgs dn, FfnPlan p, int* sync, int* fault) {
  constexpr int W = kBulkWarps;
  uint8_t* smem_raw = dynamic_smem<uint8_t>();  // rings, barriers, the x slice (as kernel 3)
  __shared__ float ss_part[W][kMatvecMaxCols];
  __shared__ bool is_last;
  __shared__ int task_s;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  uint8_t* ring = smem_raw + size_t(warp) * S * kBulkStageBytes;                                        // [S][2304]
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem_raw + size_t(W) * S * kBulkStageBytes) + warp * S;  // [S]
  uint8_t* xbase = smem_raw + bulk_ring_bytes(W, S);
  if (lane == 0)
    for (int i = 0; i < S; ++i) mbar_init(smem_addr(bars + i), 1);
  // The ticket before the PDL wait: these counters belong to one call site
  // (one layer's FFN), last used a whole step ago and reset then.
  if (threadIdx.x == 0) task_s = atomicAdd(sync + kSyncTicket, 1);
  __syncthreads();
  const int task = task_s;
  if (task >= p.tasks) {
    // Only if the counters were not reset (a launch that never finished):
    // nothing to do; the down tasks then give up waiting (the fault flag).
  } else if (task < p.gu_tasks) {
    ffn_task<S, kN, true>(gu, p, task / p.gu_splits, task % p.gu_splits, ring, bars, xbase, ss_part, is_last, sync,
                          fault);
  } else {
    const int u = task - p.gu_tasks;
    ffn_task<S, kN, false>(dn, p, u % p.dn_groups, u / p.dn_groups, ring, bars, xbase, ss_part, is_last, sync, fault);
  }
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(sync + kSyncExited, 1) == int(gridDim.x) - 1) {
      // Every other block has finished.
      for (int s = 0; s < p.dn_splits; ++s) sync[kSyncReady + s] = 0;
      sync[kSyncTicket] = 0;
      sync[kSyncRead] = 0;
      sync[kSyncFault] = 0;
      sync[kSyncExited] = 0;
    }
  }
}

FfnPlan make_plan(const Fp4FfnArgs& a, int sms) {
  const DecodeTuning tune = decode_tuning();
  const Fp4BulkGeometry gg = fp4_bulk_geometry(a.gate_up.w, sms, 1, tune.fp4_blocks_per_sm, tune.fp4_cluster != 0);
  const Fp4BulkGeometry dg = fp4_bulk_geometry(a.down.w, sms, 1, tune.fp4_blocks_per_sm, tune.fp4_cluster != 0);
  FfnPlan p;
  p.gu_kg_per = gg.kg_per;
  p.gu_splits = gg.splits;
  p.dn_kg_per = dg.kg_per;
  p.dn_splits = dg.splits;
  p.gu_groups = int((a.gate_up.w.tiles() + kBulkWarps - 1) / kBulkWarps);
  p.dn_groups = int((a.down.w.tiles() + kBulkWarps - 1) / kBulkWarps);
  p.gu_tasks = p.gu_groups * p.gu_splits;
  p.tasks = p.gu_tasks + p.dn_groups * p.dn_splits;
  p.skip_math = tune.fp4_probe != 0;
  return p;
}

size_t ffn_smem(const FfnPlan& p, int n) {
  return bulk_ring_bytes(kBulkWarps, kStages) +
         std::max(tc_x_bytes(int(4 * p.gu_kg_per), n), tc_x_bytes(int(4 * p.dn_kg_per), n));
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <int kN>
cudaError_t launch_ffn(const Fp4FfnArgs& a, const FfnPlan& p, int sms, cudaStream_t stream) {
  static std::atomic<int> allowed{0};
  auto kernel = fp4_ffn_kernel<kStages, kN>;
  const size_t smem = ffn_smem(p, a.gate_up.n);
  if (smem > 48 * 1024 && int(smem) > allowed.load(std::memory_order_relaxed)) {
    const cudaError_t e = allow_dynamic_smem(kernel, smem);
    if (e != cudaSuccess) return e;
    allowed.store(int(smem), std::memory_order_relaxed);
  }
  return launch(kernel, dim3(unsigned(p.tasks)), dim3(kBulkWarps * kWarp), smem, stream, a.gate_up, a.down, p, a.sync,
                a.fault);
}

}  // namespace

uint64_t fp4_ffn_sync_ints() { return kSyncReady + kMaxDownSlices; }

bool fp4_ffn_supported(const Fp4FfnArgs& a, int sms) {
  const Fp4MatvecArgs &gu = a.gate_up, &dn = a.down;
  if (!a.sync || !a.fault || !gu.w.present() || !dn.w.present()) return false;
  if (gu.n < 1 || gu.n > kMatvecMaxCols || dn.n != gu.n) return false;
  if (gu.w.pairing != Fp4Pairing::GateUp || gu.epilogue != Fp4Epilogue::SwiGLU) return false;
  if (dn.w.pairing != Fp4Pairing::Plain || dn.epilogue != Fp4Epilogue::Add || dn.norm) return false;
  if (gu.gate_z || dn.gate_z) return false;
  // down reads the SwiGLU outputs and adds into gate/up's input.
  if (dn.x != gu.y || dn.ldx != gu.ldy || dn.y != gu.x || dn.ldy != gu.ldx || dn.w.cols != gu.w.rows) return false;
  if (!tc_input_aligned(tc_input(gu)) || !tc_input_aligned(tc_input(dn))) return false;
  for (const Fp4Tiled* w : {&gu.w, &dn.w})
    if (!aligned16(w->codes) || !aligned16(w->scales)) return false;
  const FfnPlan p = make_plan(a, sms);
  if (p.dn_splits > kMaxDownSlices) return false;
  if ((p.gu_splits > 1 && (!gu.partial || !gu.counters)) || (p.dn_splits > 1 && (!dn.partial || !dn.counters)))
    return false;
  if (p.gu_splits > 1 && p.dn_splits > 1 && (gu.partial == dn.partial || gu.counters == dn.counters)) return false;
  return ffn_smem(p, gu.n) <= max_dynamic_smem();
}

cudaError_t fp4_ffn(const Fp4FfnArgs& a, int sms, cudaStream_t stream) {
  if (!fp4_ffn_supported(a, sms)) return cudaErrorInvalidValue;
  const FfnPlan p = make_plan(a, sms);
  if (a.gate_up.n == 1) return launch_ffn<1>(a, p, sms, stream);
  if (a.gate_up.n == 2) return launch_ffn<2>(a, p, sms, stream);
  return launch_ffn<0>(a, p, sms, stream);
}

}  // namespace qwen35::cuda
