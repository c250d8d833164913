// A chain of NVFP4 decode projections in one grid (see chain_fp4.h).
//
// Tasks: the stages' (tile group, column slice) blocks of kernel 3, stage
// after stage; within a stage tile group major, except for a stage that
// waits by slice (Fp4Dep::Slice), which goes slice major. A delta-rule
// stage 0 has a task per delta_rows(dk) state rows of a head (8 for dk =
// 128; delta_task), an attention stage 0 a task per block of the fused
// decode attention (attention_task). The grid has one block per task;
// each block takes a ticket (an atomic counter, so tasks go to blocks in
// the order the blocks start, not by block index) and runs that task like
// a kernel-3 block: its weight stages requested before the PDL wait, then
// the activation slice, the stream, the split-K combine through global
// memory and the epilogue.
// On top of that, per stage s:
//  * read[s] counts the tasks past their prologue, when the next stage
//    waits by slice (it may write what stage s read);
//  * the block that stores a tile group's outputs (the last of its slices)
//    publishes them after a fence: in ready[s][slice of s+1 that reads
//    those columns] for a Slice successor, else in done[s];
//  * a task of stage s > 0, its weights requested, waits (thread 0,
//    polling with acquire loads) for ready[s-1][its slice] and read[s-1]
//    (Slice), for ready[s-1][its slice] (SliceNorm), or for done[s-1]
//    (Full), then reads its inputs through L2 (other blocks of this launch
//    wrote them); a SliceNorm task, its slice streamed, then waits for
//    done[s-1] before the row norms, the combine and the epilogue.
// By induction a Full stage starts after every earlier stage has finished,
// a SliceNorm stage writes only after that, and a Slice stage starts after
// every earlier stage but its producer has finished and after its
// producer's prologues: the same order as separate launches, except that
// Slice and SliceNorm stages overlap their producers.
// Deadlock freedom: a task only waits for tasks with lower tickets, which
// running blocks took and which never wait for higher tickets, so the waits
// end whatever number of blocks is resident. (The emulation, which runs
// blocks one after another, hands the tickets out in order.) The waits are
// bounded anyway: after about a second a block gives up, raises the fault
// flag and goes on (wrong results, no hang). The last block to leave
// resets the counters. They belong to one call site, so the ticket may be taken before
// the PDL wait: the previous launch on these counters was a step earlier.
#include <algorithm>

#include "attention_decode.cuh"
#include "chain_fp4.h"
#include "common.cuh"
#include "delta_rule.cuh"
#include "fp4_kernels.cuh"
#include "launch.cuh"
#include "tc_common.cuh"
#include "tuning.h"

namespace qwen35::cuda {

namespace {

constexpr int kMaxStages = kFp4ChainMaxStages;
constexpr int kMaxSlices = 64;                  // column slices of a Slice stage
constexpr int kStages = 4;                      // kernel 3's default ring
constexpr int kGroupOutputs = kBulkWarps * 8;   // SwiGLU outputs of a gate/up tile group
// The sync ints: the ticket counter, blocks gone, a fault seen in this
// launch; then per stage read, done and ready[kMaxSlices]. Each group on
// 128-byte lines of its own, so that the pollers and producers of one
// counter do not queue behind those of another at the same L2 slice.
constexpr int kLineInts = 32;
constexpr int kSyncTicket = 0, kSyncExited = kLineInts, kSyncFault = 2 * kLineInts, kSyncStages = 3 * kLineInts;
constexpr int kSyncRead = 0, kSyncDone = kLineInts, kSyncReady = 2 * kLineInts;  // within a stage's ints
constexpr int kSyncPerStage = kSyncReady + kMaxSlices;
static_assert(kMaxSlices % kLineInts == 0, "whole lines per stage");
// How long a wait may take before its task gives up: 2^30 ns (about a
// second, by the global timer). In the emulation blocks run one at a time,
// so an unmet wait never ends: it gives up at once.
constexpr uint64_t kMaxWaitNs = 1ull << 30;

enum : int { kDepNone = 0, kDepSlice = 1, kDepFull = 2, kDepSliceNorm = 3, kDepHeads = 4 };

// The delta-rule stage: 8 state elements per thread (the default split of
// delta_net.cu, so the same sums), a task = delta_rows(dk) state rows of
// one head in the block's 128 threads.
constexpr int kDeltaEpt = 8;
__host__ __device__ constexpr int delta_rows(int dk) { return kBulkWarps * kWarp / (dk / kDeltaEpt); }

// The launch's task list (host-computed).
struct ChainPlan {
  int stages = 0;
  bool head = false;                // stage 0 is the delta rule or attention
  int start[kMaxStages + 1] = {};   // first ticket of each stage; start[stages] = tasks
  int64_t kg_per[kMaxStages] = {};  // kgroups per column slice
  int splits[kMaxStages] = {};
  int groups[kMaxStages] = {};      // tile groups (kBulkWarps tiles each); delta rule, attention: its tasks
  int outputs[kMaxStages] = {};     // outputs of a tile group (kBulkWarps * 8 with SwiGLU, else * 16)
  // A head stage 0 (delta rule, attention): the columns of stage 1's
  // input per head (dv, Dh), its tasks per head, its heads.
  int head_cols = 0, head_tasks = 0, heads = 0;
  int dep[kMaxStages] = {};         // how stage s waits for s-1
  bool skip_math = false;           // tuning fp4_probe: timing only
  unsigned poll_ns = 64;            // tuning fp4_chain_poll_ns: a waiter's sleep between two polls
};

__device__ __forceinline__ int* stage_sync(int* sync, int s) { return sync + kSyncStages + s * kSyncPerStage; }
// stage_sync(s)[kSyncRead] = read, [kSyncDone] = done, [kSyncReady + slice] = ready.

// Thread 0 of task `task` of stage `stage`: until *a >= na and *b >= nb (b
// may be null), bounded. Another task's fault is looked at every 64 polls
// (one more line every waiter polls otherwise). The first task of the
// launch to give up records where (fault[1..4], see Fp4ChainArgs::fault).
__device__ __forceinline__ void wait_counts(int* sync, const int* a, int na, const int* b, int nb, int* fault,
                                            int stage, int task, unsigned poll_ns) {
  const uint64_t t0 = global_ns();
  for (uint32_t i = 1;; ++i) {
#ifdef QWEN35_CUDA_EMU
    // Blocks run one after another in ticket order, so every task waited
    // for has run: the counts must be exact (more would mean a producer
    // publishing where this task does not look, or a wrong count here).
    if (ld_acquire(a) == na && (!b || ld_acquire(b) == nb)) return;
#else
    if (ld_acquire(a) >= na && (!b || ld_acquire(b) >= nb)) return;
#endif
#ifdef QWEN35_CUDA_EMU
    const bool give_up = true;
#else
    const bool give_up = global_ns() - t0 > kMaxWaitNs;
#endif
    if (give_up || (i % 64 == 0 && ld_acquire(sync + kSyncFault) != 0)) {
      // The launch's flag (the other blocks stop waiting too); the first to
      // set it says where in the host's record.
      if (atomicCAS(sync + kSyncFault, 0, 1) == 0) {
        volatile int* f = fault;
        const int have_a = ld_acquire(a);
        f[1] = stage;
        f[2] = task;
        f[3] = have_a < na ? have_a : ld_acquire(b);
        f[4] = have_a < na ? na : nb;
        __threadfence_system();
      }
      *reinterpret_cast<volatile int*>(fault) = 1;
      return;
    }
#ifndef QWEN35_CUDA_EMU
    if (poll_ns) __nanosleep(poll_ns);
#else
    (void)poll_ns;
#endif
  }
}

// A SliceNorm task's second wait (thread 0): until *done >= na, as
// wait_counts but with less state live across the stream before it (the
// first task to give up records the stage and counts, task -1).
__device__ __forceinline__ void wait_done(int* sync, const int* done, int na, int* fault, int stage,
                                          unsigned poll_ns) {
  const uint64_t t0 = global_ns();
  for (;;) {
    const int have = ld_acquire(done);
#ifdef QWEN35_CUDA_EMU
    if (have == na) return;  // (exact: see wait_counts)
#else
    if (have >= na) return;
#endif
#ifdef QWEN35_CUDA_EMU
    const bool give = true;
#else
    const bool give = global_ns() - t0 > kMaxWaitNs || ld_acquire(sync + kSyncFault) != 0;
#endif
    if (give) {
      if (atomicCAS(sync + kSyncFault, 0, 1) == 0) {
        volatile int* f = fault;
        f[1] = stage;
        f[2] = -1;
        f[3] = have;
        f[4] = na;
        __threadfence_system();
      }
      *reinterpret_cast<volatile int*>(fault) = 1;
      return;
    }
#ifndef QWEN35_CUDA_EMU
    if (poll_ns) __nanosleep(poll_ns);
#else
    (void)poll_ns;
#endif
  }
}

// Tile groups of stage s-1 whose outputs a slice of a Slice or SliceNorm
// stage s reads.
__host__ __device__ __forceinline__ int groups_per_slice(const ChainPlan& p, int s) {
  return int(p.kg_per[s] * kFp4GroupCols / p.outputs[s - 1]);
}
__host__ __device__ __forceinline__ bool dep_by_slice(int dep) {
  return dep == kDepSlice || dep == kDepSliceNorm || dep == kDepHeads;
}
// Heads: the column slices of stage 1 that read head j of the head stage
// 0 (first .. last: one for the delta rule, whose slices hold whole heads
// of the gated norm; attention heads may straddle slices), and the stage-0
// tasks a slice waits for (those of every head it reads).
__host__ __device__ __forceinline__ int head_first_slice(const ChainPlan& p, int64_t j) {
  return int(j * p.head_cols / (p.kg_per[1] * kFp4GroupCols));
}
__host__ __device__ __forceinline__ int head_last_slice(const ChainPlan& p, int64_t j) {
  return int(((j + 1) * p.head_cols - 1) / (p.kg_per[1] * kFp4GroupCols));
}
__host__ __device__ __forceinline__ int head_slice_tasks(const ChainPlan& p, int split) {
  const int64_t cols = int64_t(p.heads) * p.head_cols, w = p.kg_per[1] * kFp4GroupCols;
  const int64_t c0 = split * w, c1 = c0 + w < cols ? c0 + w : cols;
  return int((c1 - 1) / p.head_cols - c0 / p.head_cols + 1) * p.head_tasks;
}
// Thread 0 of a head-stage task of head j: publishes its outputs to stage 1.
__device__ __forceinline__ void publish_head(const ChainPlan& p, int64_t j, int* sync) {
  int* me = stage_sync(sync, 0);
  if (p.dep[1] != kDepHeads) {
    atomicAdd(me + kSyncDone, 1);
    return;
  }
  const int last = head_last_slice(p, j);
  for (int sl = head_first_slice(p, j); sl <= last; ++sl) atomicAdd(me + kSyncReady + sl, 1);
}

// Task u (0-based within the stage) of stage kS, with argument block a.
template <int S, int kN, int kS>
__device__ __forceinline__ void chain_task(const Fp4MatvecArgs& a, const ChainPlan& p, int u, uint8_t* ring,
                                           uint64_t* bars, uint8_t* xbase, float (*ss_part)[kMatvecMaxCols],
                                           bool& is_last, int* sync, int* fault) {
  constexpr int W = kBulkWarps;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const Fp4Tiled& w = a.w;
  const int n = kN > 0 ? kN : a.n;
  const int splits = p.splits[kS];
  const int dep = kS > 0 ? p.dep[kS] : kDepNone;
  const bool by_slice = dep_by_slice(dep);
  const int64_t group = by_slice ? u % p.groups[kS] : u / splits;
  const int split = by_slice ? u / p.groups[kS] : u % splits;
  const int64_t kg0 = int64_t(split) * p.kg_per[kS];
  const int nkg = int(min(w.kgroups(), kg0 + p.kg_per[kS]) - kg0);  // >= 1
  const int nch = 4 * nkg;
  uint16_t* xs = reinterpret_cast<uint16_t*>(xbase);                           // [nch][n][16] F16
  float* mult = reinterpret_cast<float*>(xbase + size_t(nch) * size_t(n) * 32);  // [nch][8]
  const int64_t tile = group * W + warp;
  const bool active = tile < w.tiles();
  const int next_dep = kS + 1 < p.stages ? p.dep[kS + 1] : kDepNone;

  // 1. The first stages of this warp's weights (never written by a kernel:
  // before the PDL wait, as kernel 3).
  const BulkRun run = bulk_run(ring, bars, w, tile, kg0, nkg, 0u);
  if (active && lane == 0) bulk_start<S>(run);
  __syncwarp();
  pdl_wait();
  pdl_trigger();

  // 2. The inputs of stage kS > 0.
  if constexpr (kS > 0) {
    if (threadIdx.x == 0) {
      int* prev = stage_sync(sync, kS - 1);
      if (by_slice) {
        const int per = dep == kDepHeads ? 0 : groups_per_slice(p, kS);
        const int need = dep == kDepHeads ? head_slice_tasks(p, split)
                                          : min(p.groups[kS - 1], (split + 1) * per) - split * per;
        // (SliceNorm writes only after all of stage kS-1; Heads writes
        // nothing the delta rule reads.)
        const bool read = dep == kDepSlice;
        wait_counts(sync, prev + kSyncReady + split, need, read ? prev + kSyncRead : nullptr,
                    read ? p.start[kS] - p.start[kS - 1] : 0, fault, kS, u, p.poll_ns);
      } else {
        wait_counts(sync, prev + kSyncDone, p.groups[kS - 1], nullptr, 0, fault, kS, u, p.poll_ns);
      }
    }
    __syncthreads();
  }

  // 3. The activation slice (later stages: through L2).
  TcInput in = tc_input(a);
  in.n = n;
  tc_load_x_impl<false, (kS > 0)>(in, kg0 * kFp4GroupCols, nch, xs, mult, nullptr);
  __syncthreads();
  if (next_dep == kDepSlice && threadIdx.x == 0) {
    __threadfence();
    atomicAdd(stage_sync(sync, kS) + kSyncRead, 1);
  }

  // 4. Stream, combine, store.
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (active)
    bulk_stream<S, false, kN>(run, acc, xs + tc_b_row(g, n) * 16 + t * 4, mult + 2 * t, n, lane, g, p.skip_math);
  if constexpr (kS > 0) {
    if (dep == kDepSliceNorm) {  // all of the stage before: the rows' norms, then this stage's writes
      if (threadIdx.x == 0)
        wait_done(sync, stage_sync(sync, kS - 1) + kSyncDone, p.groups[kS - 1], fault, kS, p.poll_ns);
      __syncthreads();
    }
  }
  // The RMS norm's sums of squares over whole rows (after the stream: for
  // SliceNorm, the rows are whole only now).
  if (a.norm) {
    tc_row_squares<W, (kS > 0)>(in, w.cols, ss_part);
    __syncthreads();
  }
  const bool stored = fp4_finish<W>(a, splits, group, split, tile, active, g, t, acc, ss_part, is_last);

  // 5. Publish the tile group's outputs to the next stage.
  if (next_dep != kDepNone && stored) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      int* me = stage_sync(sync, kS);
      if (dep_by_slice(next_dep)) atomicAdd(me + kSyncReady + int(group / groups_per_slice(p, kS + 1)), 1);
      if (next_dep != kDepSlice) atomicAdd(me + kSyncDone, 1);
    }
  }
}

// Task u of the delta-rule stage (stage 0): state rows v0 .. v0+R-1 of
// value head j, the same arithmetic as delta_net.cu's kernel with 8
// elements per thread (delta_rule.cuh). Its 1-8 rows' inputs are staged in
// the ring's shared memory at once (the kernel pipelines longer batches).
template <int DK>
__device__ __forceinline__ void delta_task(const DeltaNetArgs& d, const ChainPlan& p, int u, uint8_t* smem, int* sync) {
  constexpr int TPR = DK / kDeltaEpt, NV = kDeltaEpt / 4, R = delta_rows(DK);
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int64_t per_head = d.dv / R, j = u / per_head, v0 = (u % per_head) * R, kh = j % d.Hk;
  const int v_local = tid / TPR, sub = tid % TPR;
  const int64_t v_row = v0 + v_local;
  const int n = int(d.n);
  // Shared memory: q|k [n][2*DK], v [n][R], then b, a, and per row the norm
  // factors and gates (6 x [n]).
  float* s_qk = reinterpret_cast<float*>(smem);
  float* s_v = s_qk + n * 2 * DK;
  float* s_b = s_v + n * R;
  float *s_a = s_b + n, *s_rq = s_a + n, *s_rk = s_rq + n, *s_beta = s_rk + n, *s_decay = s_beta + n;

  // The state rows, before the PDL wait (as the kernel: no kernel of the
  // step before this one writes them).
  float M[kDeltaEpt];
  float4* st = reinterpret_cast<float4*>(d.state + (j * d.dv + v_row) * DK);
  delta_load_row<TPR, NV>(M, st, sub);
  const float a_log = d.ssm_a[j], dtb = d.dt_bias[j];
  pdl_wait();
  pdl_trigger();

  for (int e = tid; e < n * 2 * DK; e += blockDim.x) {
    const int r = e / (2 * DK), c = e % (2 * DK), which = c / DK, i = c % DK;
    s_qk[e] = d.uc[r * d.ldu + (which ? d.Hk * DK : 0) + kh * DK + i];
  }
  for (int e = tid; e < n * R; e += blockDim.x) {
    const int r = e / R, c = e % R;
    s_v[e] = d.uc[r * d.ldu + 2 * d.Hk * DK + j * d.dv + v0 + c];
  }
  for (int r = tid; r < n; r += blockDim.x) {
    s_b[r] = d.b[r * d.ldb + j];
    s_a[r] = d.a[r * d.lda + j];
  }
  __syncthreads();
  const float qscale = rsqrtf(float(DK));
  for (int r = warp; r < n; r += kBulkWarps) {
    float sq, sk;
    delta_qk_squares<DK>(s_qk + r * 2 * DK, s_qk + r * 2 * DK + DK, lane, &sq, &sk);
    if (lane == 0)
      delta_gates(sq, sk, s_b[r], s_a[r], a_log, dtb, qscale, d.eps, &s_rq[r], &s_rk[r], &s_beta[r], &s_decay[r]);
  }
  __syncthreads();
  for (int t = 0; t < n; ++t) {
    const float4* q4 = reinterpret_cast<const float4*>(s_qk + t * 2 * DK);
    const float4* k4 = reinterpret_cast<const float4*>(s_qk + t * 2 * DK + DK);
    const float o = delta_row<TPR, NV>(M, q4, k4, sub, s_v[t * R + v_local], s_rq[t], s_rk[t], s_beta[t], s_decay[t]);
    if (sub == 0) d.out[t * d.Hv * d.dv + j * d.dv + v_row] = o;
    if (t == d.snapshot_row)
      delta_store_row<TPR, NV>(M, reinterpret_cast<float4*>(d.snapshot + (j * d.dv + v_row) * DK), sub);
  }
  delta_store_row<TPR, NV>(M, st, sub);

  // Publish to stage 1 (which waits for the whole stage, or by heads).
  if (p.stages > 1) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) publish_head(p, j, sync);
  }
}

// Task u of the attention stage (stage 0): block (head h, row t, split s)
// of the fused decode attention, tasks split-major within a head. Its
// shared memory is the ring's.
static_assert(kAttnWarps == kBulkWarps, "the attention stage runs in the chain's blocks");
template <int EPL>
__device__ __forceinline__ void attention_task(const FusedAttnArgs& f, const ChainPlan& p, int u, uint8_t* smem,
                                               int* sync) {
  const AttnArgs& a = f.attn;
  const int64_t s = u % a.splits, h = (u / a.splits) % a.n_head, t = u / (a.splits * a.n_head);
  // Two cache rows ahead per warp instead of four: no spills within the
  // chain's register budget.
  fused_attention_block<EPL, 2>(f, h, t, s, *reinterpret_cast<FusedAttnSmem<EPL>*>(smem));
  // Publish to stage 1 (which waits for the whole stage, or by heads:
  // once every task of a head has published, the last block of each of
  // its rows has merged them).
  if (p.stages > 1) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) publish_head(p, h, sync);
  }
}

// One task per block: a grid of exactly p.start[p.stages] blocks, each
// taking one ticket. (A loop over tickets in persistent blocks made ptxas
// keep the loop's invariants in registers and spill, even at 128
// registers.) Up to five stages: a switch over compile-time stage indices,
// so each stage's arguments stay in the parameter space. Kernel 3's 6
// blocks per multiprocessor, 5 for a run-time row count (which spilled a
// few registers at 6). kAttn: stage 0 is attention (an instantiation of
// its own, so that the attention's registers do not count in the others;
// 5 blocks, as it spills at 6).
template <int S, int kN, bool kAttn>
__global__ void __launch_bounds__(kBulkWarps * kWarp, kN > 0 && !kAttn ? 6 : 5)
    fp4_chain_kernel(Fp4MatvecArgs a0, Fp4MatvecArgs a1, Fp4MatvecArgs a2, Fp4MatvecArgs a3, Fp4MatvecArgs a4,
                     DeltaNetArgs d, FusedAttnArgs f, ChainPlan p, int* sync, int* fault) {
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
  // The ticket before the PDL wait (see above).
  if (threadIdx.x == 0) task_s = atomicAdd(sync + kSyncTicket, 1);
  __syncthreads();
  const int task = task_s;
  // Tickets past the last task only come from counters that were not reset
  // (a launch that never finished): nothing to do, and the waiting tasks
  // give up (the fault flag).
  if (task < p.start[1]) {
    if constexpr (kAttn) {
      switch (f.attn.head_dim) {
        case 64: attention_task<2>(f, p, task, smem_raw, sync); break;
        case 128: attention_task<4>(f, p, task, smem_raw, sync); break;
        default: attention_task<8>(f, p, task, smem_raw, sync); break;  // 256 (fp4_chain_supported)
      }
    } else if (p.head) {
      switch (d.dk) {
        case 32: delta_task<32>(d, p, task, smem_raw, sync); break;
        case 64: delta_task<64>(d, p, task, smem_raw, sync); break;
        case 128: delta_task<128>(d, p, task, smem_raw, sync); break;
        default: delta_task<256>(d, p, task, smem_raw, sync); break;
      }
    } else {
      chain_task<S, kN, 0>(a0, p, task, ring, bars, xbase, ss_part, is_last, sync, fault);
    }
  } else if (task < p.start[2]) {
    chain_task<S, kN, 1>(a1, p, task - p.start[1], ring, bars, xbase, ss_part, is_last, sync, fault);
  } else if (task < p.start[3]) {
    chain_task<S, kN, 2>(a2, p, task - p.start[2], ring, bars, xbase, ss_part, is_last, sync, fault);
  } else if (task < p.start[4]) {
    chain_task<S, kN, 3>(a3, p, task - p.start[3], ring, bars, xbase, ss_part, is_last, sync, fault);
  } else if (task < p.start[5]) {
    chain_task<S, kN, 4>(a4, p, task - p.start[4], ring, bars, xbase, ss_part, is_last, sync, fault);
  }
  // The last block to leave resets the counters (all its threads: the next
  // kernel waits for this one to complete).
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    is_last = atomicAdd(sync + kSyncExited, 1) == int(gridDim.x) - 1;
  }
  __syncthreads();
  if (is_last) {  // every other block has finished
    for (int i = threadIdx.x; i < p.stages * kSyncPerStage; i += blockDim.x) sync[kSyncStages + i] = 0;
    if (threadIdx.x == 0) {
      sync[kSyncTicket] = 0;
      sync[kSyncFault] = 0;
      sync[kSyncExited] = 0;
    }
  }
}

ChainPlan make_plan(const Fp4ChainArgs& a, int sms) {
  const DecodeTuning tune = decode_tuning();
  ChainPlan p;
  p.stages = a.stages;
  p.head = fp4_chain_has_head(a);
  for (int s = 0; s < a.stages; ++s) {
    if (s == 0 && a.delta) {  // a task per delta_rows state rows of a head
      p.kg_per[0] = 1;
      p.splits[0] = 1;
      p.head_cols = int(a.delta_args.dv);
      p.head_tasks = int(a.delta_args.dv / delta_rows(int(a.delta_args.dk)));
      p.heads = int(a.delta_args.Hv);
      p.groups[0] = p.heads * p.head_tasks;
      p.start[1] = p.groups[0];
      continue;
    }
    if (s == 0 && a.attn) {  // a task per block of the fused attention
      const AttnArgs& at = a.attn_args.attn;
      p.kg_per[0] = 1;
      p.splits[0] = 1;
      p.head_cols = int(at.head_dim);
      p.head_tasks = int(at.n * at.splits);
      p.heads = int(at.n_head);
      p.groups[0] = p.heads * p.head_tasks;
      p.start[1] = p.groups[0];
      continue;
    }
    const Fp4MatvecArgs& st = a.stage[s];
    const int align = st.gate_z ? st.gate_dv / kFp4GroupCols : 1;
    const Fp4BulkGeometry geo = fp4_bulk_geometry(st.w, sms, align, tune.fp4_blocks_per_sm, tune.fp4_cluster != 0);
    p.kg_per[s] = geo.kg_per;
    p.splits[s] = geo.splits;
    p.groups[s] = int((st.w.tiles() + kBulkWarps - 1) / kBulkWarps);
    p.outputs[s] = st.epilogue == Fp4Epilogue::SwiGLU ? kGroupOutputs : kBulkWarps * kFp4TileRows;
    p.dep[s] = s == 0                            ? kDepNone
               : a.dep[s] == Fp4Dep::Slice     ? kDepSlice
               : a.dep[s] == Fp4Dep::SliceNorm ? kDepSliceNorm
               : a.dep[s] == Fp4Dep::Heads     ? kDepHeads
                                               : kDepFull;
    p.start[s + 1] = p.start[s] + p.groups[s] * p.splits[s];
  }
  for (int s = a.stages; s < kMaxStages; ++s) p.start[s + 1] = p.start[s];
  p.skip_math = (tune.fp4_probe & kFp4ProbeNoMath) != 0;  // (the other probes: kernel 3 only)
  p.poll_ns = unsigned(tune.fp4_chain_poll_ns);
  return p;
}

size_t chain_smem(const ChainPlan& p, int n) {
  size_t x = 0;
  for (int s = p.head ? 1 : 0; s < p.stages; ++s) x = std::max(x, tc_x_bytes(int(4 * p.kg_per[s]), n));
  return bulk_ring_bytes(kBulkWarps, kStages) + x;
}

template <int kN, bool kAttn>
cudaError_t launch_chain(const Fp4ChainArgs& a, const ChainPlan& p, cudaStream_t stream) {
  static SmemOptIn opt_in;
  auto kernel = fp4_chain_kernel<kStages, kN, kAttn>;
  const int first = p.head ? 1 : 0;  // the first NVFP4 stage
  const size_t smem = chain_smem(p, a.stage[first].n);
  if (const cudaError_t e = opt_in.ensure(kernel, smem); e != cudaSuccess) return e;
  const Fp4MatvecArgs none = a.stage[first];  // unused stages: any valid block
  auto st = [&](int s) -> const Fp4MatvecArgs& { return s < a.stages && s >= first ? a.stage[s] : none; };
  return launch(kernel, dim3(unsigned(p.start[p.stages])), dim3(kBulkWarps * kWarp), smem, stream, st(0), st(1),
                st(2), st(3), st(4), a.delta_args, a.attn_args, p, a.sync, a.fault);
}

}  // namespace

uint64_t fp4_chain_sync_ints() { return kSyncStages + uint64_t(kMaxStages) * kSyncPerStage; }

bool fp4_chain_supported(const Fp4ChainArgs& a, int sms) {
  if (a.stages < 1 || a.stages > kMaxStages || !a.sync || !a.fault || (a.delta && a.attn)) return false;
  if (a.delta) {
    // The delta rule: 1-8 rows staged at once in the ring's shared memory
    // (not the barriers after it), then NVFP4 stages waiting for all of it.
    const DeltaNetArgs& d = a.delta_args;
    if (a.stages < 2 || (a.dep[1] != Fp4Dep::Full && a.dep[1] != Fp4Dep::Heads) ||
        !delta_net_shape_supported(d.dk, d.dv))
      return false;
    // By heads: stage 1 reads the delta rule's outputs through its gated
    // norm on heads of dv (its column slices whole heads).
    const Fp4MatvecArgs& o = a.stage[1];
    if (a.dep[1] == Fp4Dep::Heads && (!o.gate_z || o.gate_dv != d.dv || o.x != d.out || o.ldx != d.Hv * d.dv ||
                                      o.w.cols != d.Hv * d.dv))
      return false;
    if (d.n < 1 || d.n > kMatvecMaxCols || d.n != a.stage[1].n || d.elems_per_thread != kDeltaEpt) return false;
    const int R = delta_rows(int(d.dk));
    if (d.dv % R != 0 || size_t(d.n) * size_t(2 * d.dk + R + 6) * 4 > size_t(kBulkWarps) * kStages * kBulkStageBytes)
      return false;
    if (d.snapshot_row >= 0 && !d.snapshot) return false;
  }
  if (a.attn) {
    // The fused attention's blocks (head_dim up to 256: 512 needs more
    // registers), its shared memory in the rings, then NVFP4 stages waiting
    // for all of it, or stage 1 by heads (it reads the attention's outputs
    // with no prologue).
    const FusedAttnArgs& f = a.attn_args;
    const Fp4MatvecArgs& o = a.stage[1];
    const int64_t qd = f.attn.n_head * f.attn.head_dim;
    if (a.dep[1] == Fp4Dep::Heads && (o.norm || o.gate_z || o.x != f.attn.o || o.ldx != qd || o.w.cols != qd))
      return false;
    if (a.stages < 2 || (a.dep[1] != Fp4Dep::Full && a.dep[1] != Fp4Dep::Heads) || !attention_fused_supported(f))
      return false;
    if (f.attn.n < 1 || f.attn.n != a.stage[1].n ||
        (f.attn.head_dim != 64 && f.attn.head_dim != 128 && f.attn.head_dim != 256))
      return false;
    if (sizeof(FusedAttnSmem<8>) > size_t(kBulkWarps) * kStages * kBulkStageBytes) return false;
  }
  const int first = fp4_chain_has_head(a) ? 1 : 0;
  const int n = a.stage[first].n;
  for (int s = first; s < a.stages; ++s) {
    const Fp4MatvecArgs& st = a.stage[s];
    if (st.n != n || !fp4_bulk_supported(st)) return false;
    if (s > 0 && a.dep[s] == Fp4Dep::Slice) {
      // Reads the SwiGLU outputs of stage s-1, column slice by slice.
      const Fp4MatvecArgs& pr = a.stage[s - 1];
      if (pr.epilogue != Fp4Epilogue::SwiGLU || st.w.pairing != Fp4Pairing::Plain || st.norm || st.gate_z ||
          st.x != pr.y || st.ldx != pr.ldy || st.w.cols != pr.w.rows)
        return false;
    }
    if (s > 0 && a.dep[s] == Fp4Dep::SliceNorm) {
      // Reads the plain outputs of NVFP4 stage s-1, column slice by slice.
      const Fp4MatvecArgs& pr = a.stage[s - 1];
      if (s == first || (pr.epilogue != Fp4Epilogue::Store && pr.epilogue != Fp4Epilogue::Add) ||
          pr.w.pairing != Fp4Pairing::Plain || st.gate_z || st.x != pr.y || st.ldx != pr.ldy ||
          st.w.cols != pr.w.rows)
        return false;
    }
  }
  const ChainPlan p = make_plan(a, sms);
  for (int s = first; s < a.stages; ++s) {
    const Fp4MatvecArgs& st = a.stage[s];
    if (dep_by_slice(p.dep[s]) && p.splits[s] > kMaxSlices) return false;
    if (p.splits[s] > 1) {
      if (!st.partial || !st.counters) return false;
      for (int r = first; r < s; ++r)  // split-K scratch of its own (the stages run at the same time)
        if (p.splits[r] > 1 && (a.stage[r].partial == st.partial || a.stage[r].counters == st.counters)) return false;
    }
  }
  return chain_smem(p, n) <= max_dynamic_smem();
}

cudaError_t fp4_chain(const Fp4ChainArgs& a, int sms, cudaStream_t stream) {
  if (!fp4_chain_supported(a, sms)) return cudaErrorInvalidValue;
  const ChainPlan p = make_plan(a, sms);
  const bool one = a.stage[p.head ? 1 : 0].n == 1;
  if (a.attn) return one ? launch_chain<1, true>(a, p, stream) : launch_chain<0, true>(a, p, stream);
  return one ? launch_chain<1, false>(a, p, stream) : launch_chain<0, false>(a, p, stream);
}

}  // namespace qwen35::cuda
