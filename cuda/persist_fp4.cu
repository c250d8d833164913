// A persistent kernel for a sequence of NVFP4 decode products (see
// persist_fp4.h).
//
// Units: the stages' (tile u / splits, column slice u % splits) units, stage
// after stage, numbered by tickets (stage s's units follow stage s-1's).
// Lane 0 of each warp takes tickets from an atomic counter and queues them
// (a few per warp, in shared memory; the next one already requested), so
// units go to warps in the order they ask, and every warp's units are in
// ticket order. It keeps
// kPersistStages ring stages of its weights requested ahead (cp.async.bulk,
// kernel 3's stages of 4 kgroups), walking its queue with an issue cursor
// that runs ahead of the computation across units and stages: each slot the
// computation frees is refilled at once with the next stage of a queued
// unit, taking a new ticket when the queue has no stages left to request.
// (It takes none past a queued unit without weights, a delta-rule unit, so
// that one warp does not collect a stage of them.) Weights are never
// written by a kernel, so nothing orders these requests but the ring.
//
// A unit of stage s > 0 first waits (the whole warp, polling through lane 0
// with acquire loads) until done[s-1] counts every tile of stage s-1; the
// warp that stores a tile's outputs (its last column slice to finish, which
// adds the slices' partials in slice order) counts it after a fence.
// Deadlock freedom: a unit only waits for units with lower tickets, and the
// warp holding the lowest unfinished ticket is running (only running warps
// take tickets), has finished its lower ones, and waits for nothing
// unfinished; so the waits end whatever number of blocks is resident (other
// streams' kernels may hold multiprocessors). A wait gives up after about a
// second anyway (the fault flag; wrong results, no hang). In the emulation,
// which runs blocks one after another, the first block takes every ticket;
// its warps interleave at their warp-wide operations, the poll included.
// Where a unit's outputs go does not depend on who computes it, so neither
// do the bits.
//
// Slice waits (PersistFp4Stage::slice_per, planned where a product reads
// the outputs the stage before stored): a unit of stage s first waits only
// for the count of stage s-1's outputs in its columns (a counter per column
// slice of stage s on stage s-1's done line, added by the warp that counts
// a tile or delta-rule unit), loads them and streams its weights; the unit
// that stores (a tile's last slice) then waits for all of stage s-1 before
// the norm's factor, the epilogue and its count. So every count of stage s-1
// comes after all of stage s-2 (induction: a stage's stores come after the
// whole stage before, with or without slice waits), a unit of stage s starts
// after at least one such count, and the argument below for the scratch
// halves and for what a stage overwrites holds as with whole-stage waits;
// only the loads and the arithmetic move ahead, so the bits do not change.
//
// Scratch: split-K partials, per-tile counters and per-tile sums of squares
// (for the next stage's norm) alternate between two halves by stage
// parity. Stage s+2 starts only after stage s+1 has finished, which started
// only after every unit of stage s had reset its tile counter and stored,
// and every unit of stage s+1 read the sums of stage s before it counted
// its tile, so a half is free when it is used again. The counters (the
// tickets, the stages') are put back to zero by the last warp to leave (a
// count of the warps gone after the stages' counters), so a launch needs no
// memset node before it in a CUDA graph, which would cost the PDL overlap
// with the kernel before. The first tickets are taken before the PDL wait
// (so that the first weights arrive while the kernel before ends): the
// launch before on the same ticket counter must have completed, which holds
// when launches that follow each other in a stream alternate between two
// counters (kernels trigger only after their wait, so when a kernel starts,
// the kernel two launches before it has completed).
#include <algorithm>

#include "attention_warp.cuh"
#include "common.cuh"
#include "delta_rule.cuh"
#include "fp4_kernels.cuh"
#include "launch.cuh"
#include "persist_fp4.h"
#include "tc_common.cuh"

namespace qwen35::cuda {

namespace {

constexpr int W = kPersistWarps;
constexpr int S = kPersistStages;
constexpr uint64_t kMaxWaitNs = 1ull << 30;  // a wait gives up after ~1 s (by the global timer)
#ifdef QWEN35_CUDA_EMU
constexpr uint32_t kMaxEmuPolls = 1u << 14;  // (the emulation: warps interleave; a wait that never ends)
#endif

constexpr uint32_t kQueue = 8;  // tickets a warp holds (ring stages requested ahead of at most 4 units)

// Shared memory per warp: the ring (stages and barriers), the activation
// chunks of a slice: [nch][rows][16] F16 (the FP8 arithmetic: [nch][rows]
// [48 bytes], tc_load_x_impl's compact form), then the multipliers
// [nch][8]; after the warps' rings and chunks, their ticket queues
// [W][kQueue].
__host__ __device__ constexpr size_t x_chunk_bytes(const PersistFp4Sizes& z) {
  return size_t(4 * z.max_kg_per) * (z.fp8 ? 48 : 32) * size_t(z.max_rows);
}
__host__ __device__ constexpr size_t x_bytes(const PersistFp4Sizes& z) {
  return x_chunk_bytes(z) + size_t(4 * z.max_kg_per) * 32;
}
__host__ __device__ constexpr size_t smem_bytes(const PersistFp4Sizes& z) {
  return bulk_ring_bytes(W, S) + size_t(W) * (x_bytes(z) + kQueue * sizeof(int));
}

// A unit: stage s, the unit u within it, its ticket base + u.
struct Unit {
  int s = 0;
  int64_t base = 0;  // the ticket of stage s's unit 0
  int64_t u = 0;
};

// Moves c (at or before ticket t) to ticket t; false past the last stage.
__device__ __forceinline__ bool locate(const PersistFp4Stage* st, int count, int64_t t, Unit& c) {
  while (c.s < count && t >= c.base + st[c.s].units) c.base += st[c.s++].units;
  c.u = t - c.base;
  return c.s < count;
}

// The weight run of a unit (kernel 3's BulkRun, its stages numbered from seq0).
// fp8: the codes in the FP8 arrangement (st.w.codes8).
__device__ __forceinline__ BulkRun unit_run(const PersistFp4Stage& st, int64_t u, uint8_t* ring, uint64_t* bars,
                                            uint32_t seq0, bool fp8) {
  const int64_t tile = u / st.splits, kg0 = (u % st.splits) * st.kg_per;
  const int nkg = int(min(st.w.kgroups(), kg0 + st.kg_per) - kg0);
  BulkRun r = bulk_run(ring, bars, st.w, tile, kg0, nkg, seq0);
  if (fp8) r.codes = st.w.codes8 + (r.codes - st.w.codes);
  return r;
}

// Lane 0's issue cursor over the warp's ticket queue q[kQueue] (shared
// memory): tickets queued so far (tail; the computation has taken `head`
// of them), and the queued unit whose ring stages are being requested.
struct Issue {
  Unit c;                  // the last queued unit
  bool valid = false;      // c has weights with ring stages left to request
  bool weightless = false; // c has no weights (no more tickets until the computation takes it)
  bool ended = false;      // a ticket past the last unit was taken
  int st = 0;              // the next ring stage of c's run
  uint32_t next = 0;       // the warp's ring sequence number of the next request
  uint32_t tail = 0;
  // The next ticket, requested when the one before was taken: its atomic's
  // round trip to L2 overlaps the work in between instead of stalling lane
  // 0, and with it the warp, in the middle of a unit's stream. (The warp
  // holds one ticket more; it takes them in order all the same.)
  int pending = -1;
};

// Lane 0: a ticket for the queue, if the queue takes one (not full, no
// queued unit without weights, not ended). True if it queued a unit with
// weights.
__device__ __forceinline__ bool take_ticket(Issue& is, const PersistFp4Stage* st, int count, int* tickets, int* q,
                                            uint32_t head) {
  while (!is.ended && is.tail - head < kQueue && !(is.weightless && head < is.tail)) {
    const int t = is.pending;
    is.pending = atomicAdd(tickets, 1);
    if (!locate(st, count, t, is.c)) {
      is.ended = true;
      return false;
    }
    q[is.tail++ % kQueue] = t;
    is.weightless = st[is.c.s].kind != PersistKind::Product;
    if (!is.weightless) {
      is.valid = true;
      is.st = 0;
      return true;
    }
  }
  return false;
}

// Lane 0: requests ring stages (taking tickets as needed) while the ring
// has free slots (`consumed` stages of the warp's sequence are free again).
__device__ __forceinline__ void issue_ahead(Issue& is, const PersistFp4Stage* st, int count, int* tickets, int* q,
                                            uint32_t head, uint32_t consumed, uint8_t* ring, uint64_t* bars,
                                            bool fp8) {
  while (is.next - consumed < uint32_t(S)) {
    if (!is.valid && !take_ticket(is, st, count, tickets, q, head)) return;
    const BulkRun r = unit_run(st[is.c.s], is.c.u, ring, bars, is.next - uint32_t(is.st), fp8);
    fence_proxy_async_smem();  // (the slot's reads by this warp before the bulk copy's write)
    bulk_issue<S>(r, is.st);
    ++is.next;
    if (++is.st == r.nst) is.valid = false;
  }
}

// A probe's timeline (PersistFp4Args::timeline): the global time as field
// f of stage s, the earliest (kTimeFirst*, as the largest complement) or
// the latest (kTimeLast*).
__device__ __forceinline__ void note_time(unsigned long long* timeline, int s, int f) {
  const unsigned long long now = global_ns();
  atomicMax(timeline + int64_t(s) * kPersistTimeFields + f, persist_time_earliest(f) ? ~now : now);
}

// Lane 0: the conv epilogue's taps and window for the channels of a tile
// into L2 (weights and state that nothing in the launch writes before the
// tile's epilogue, which otherwise reads them from DRAM on the stage's
// critical path).
__device__ __forceinline__ void conv_prefetch(const PersistFp4Stage& p, int64_t tile) {
  const int64_t r0 = tile * kFp4TileRows, r1 = min(r0 + kFp4TileRows, p.conv_channels);
  if (r0 >= r1) return;
  constexpr int64_t kLine = 32;  // floats
  for (int64_t i = r0 * p.conv_k; i < r1 * p.conv_k; i += kLine) prefetch_l2(p.conv_taps + i);
  prefetch_l2(p.conv_taps + r1 * p.conv_k - 1);
  for (int k = 0; k + 1 < p.conv_k; ++k) {
    const float* w = p.conv_window + k * p.conv_channels;
    prefetch_l2(w + r0);
    prefetch_l2(w + r1 - 1);
  }
}

// Lane 0, count i of stage p stored (tile i, or delta-rule unit i): with
// slice waits after it, on the stage after's slice counter of those
// columns (on the stage's done line).
__device__ __forceinline__ void count_slice(const PersistFp4Stage& p, int* line, int64_t i) {
  const int64_t col0 = i * persist_count_cols(p);
  if (p.slice_cols && col0 < p.slice_limit) atomicAdd(line + 1 + col0 / p.slice_cols, 1);
}

// The whole warp: until `*p >= need` (bounded; see above). Once one wait
// of the launch has given up, the others end within 64 polls (the flag),
// so a broken launch costs about a second, not a second per stage.
__device__ __forceinline__ void warp_wait(const int* p, int need, int* fault, unsigned poll_ns, int lane) {
  const uint64_t t0 = global_ns();
  for (uint32_t i = 0;; ++i) {
    int ok = 0;
    if (lane == 0) {
      ok = ld_acquire(p) >= need;
#ifdef QWEN35_CUDA_EMU
      const bool give_up = i >= kMaxEmuPolls;
#else
      const bool give_up = global_ns() - t0 > kMaxWaitNs;
#endif
      if (!ok && give_up) {
        atomicMax(fault, 1);
        ok = 1;
      } else if (!ok && i % 64 == 63 && ld_acquire(fault) != 0) {
        ok = 1;
      }
    }
    if (__shfl_sync(0xFFFFFFFFu, ok, 0)) {
      // (The barrier orders lane 0's acquire before every lane's loads of
      // what the stage before wrote; a shuffle alone promises no ordering.)
      __syncwarp();
      return;
    }
#ifndef QWEN35_CUDA_EMU
    if (poll_ns) __nanosleep(poll_ns);
#else
    (void)poll_ns;
    (void)t0;
#endif
  }
}

// 1/rms of stage s's input row j for its RMS norm: from the per-tile sums of
// squares stage s-1 left (norm_from_prev), else from the whole row. Every
// lane gets the same value (a butterfly of commutative adds), every warp
// the same sums in the same order.
__device__ __forceinline__ float stage_rnorm(const PersistFp4Stage* st, int s, int j, const PersistFp4Args& a,
                                             int lane) {
  const PersistFp4Stage& p = st[s];
  float ss = 0.0f;
  if (p.norm_from_prev) {
    const int64_t tiles = st[s - 1].w.tiles();
    const float* sq = a.squares + ((s - 1) & 1) * a.sizes.squares_half + j * tiles;  // [rows][tiles of stage s-1]
#pragma unroll 4
    for (int64_t i = lane; i < tiles; i += kWarp) ss += __ldcg(sq + i);
  } else {
    const float4* xp = reinterpret_cast<const float4*>(p.x + j * p.ldx);
#pragma unroll 4
    for (int64_t i = lane; i < p.w.cols / 4; i += kWarp) {
      const float4 f = __ldcg(xp + i);
      ss = fmaf(f.x, f.x, ss);
      ss = fmaf(f.y, f.y, ss);
      ss = fmaf(f.z, f.z, ss);
      ss = fmaf(f.w, f.w, ss);
    }
  }
  ss = warp_sum(ss);
  return rsqrtf(ss / float(p.w.cols) + p.eps);
}

// The warp's slice (columns c0 .. c0 + 16 nch - 1) of the stage's
// activation rows as kernel 3's prologue makes it, by one warp
// (tc_load_x_impl: x through L2, chunk c of row j at xs[c][j], its
// multiplier at mult[c][j]). A gated head's chunks are aligned lanes of one
// pass (items j nch + c; slices start on head boundaries and hold whole
// heads).
// kFp8: in the compact FP8 form (tc_load_x_impl's kFp8 = 2).
template <bool kFp8>
__device__ __forceinline__ void warp_load_x(const PersistFp4Stage& p, int64_t c0, int nch, uint16_t* xs, float* mult) {
  const TcInput in = tc_input(p);
  tc_load_x_impl<false, true, true, kFp8 ? 2 : 0>(in, c0, nch, xs, mult, nullptr);
}

// A finished tile (lanes t = 0 hold r[e] = tile row g + 8 (e / 2) of
// activation row e % 2, scaled and normed): the epilogue, and with
// `squares` each row's sum of squares of its 16 stored values into
// sq[j][tile] (a fixed order: the next stage's norm adds them up). The
// whole warp calls it.
__device__ __forceinline__ void store_tile(const PersistFp4Stage& p, float* sq, int64_t tile, int g, int t, int lane,
                                           const float* r) {
  const int n = p.n;
  float ss[kPersistMaxRows] = {0.0f, 0.0f};
  if (t == 0) {
    if (p.epilogue == Fp4Epilogue::SwiGLU) {  // rows g (gate) and g + 8 (up): output 8 tile + g
      const int64_t out = 8 * tile + g;
      if (out < p.w.rows) {
#pragma unroll
        for (int j = 0; j < kPersistMaxRows; ++j)
          if (j < n) p.y[j * p.ldy + out] = silu_f(r[j]) * r[2 + j];
      }
    } else {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t row = tile * kFp4TileRows + g + 8 * half;
        if (row >= p.w.rows) continue;
        if (p.epilogue == Fp4Epilogue::Conv && row < p.conv_channels) {
          conv_silu_channel(p.conv_taps, p.conv_window, p.conv_channels, p.conv_k, n, row, r[2 * half],
                            r[2 * half + 1], p.y, p.ldy, p.conv_snapshot_row, p.conv_snapshot);
          continue;
        }
#pragma unroll
        for (int j = 0; j < kPersistMaxRows; ++j) {
          if (j >= n) continue;
          float v = r[2 * half + j];
          float* out = p.y + j * p.ldy + row;
          // (Through L2: another multiprocessor may have written this row of
          // the residual stream earlier in the launch.)
          if (p.epilogue == Fp4Epilogue::Add) v += __ldcg(out);
          *out = v;
          ss[j] = fmaf(v, v, ss[j]);
        }
      }
    }
  }
  if (p.squares) {
    const int64_t tiles = p.w.tiles();
#pragma unroll
    for (int j = 0; j < kPersistMaxRows; ++j) {
      if (j >= n) continue;  // (n is the same in every lane)
      const float s = warp_sum(ss[j]);
      if (lane == 0) sq[j * tiles + tile] = s;
    }
  }
}

// One unit of a delta-rule stage: R = 32 / TPR state rows of a head, TPR
// = DK / 8 lanes a row, as delta_net_kernel<DK, 8> walks the rows of input
// in order (the same functions, so the same bits). qk: the warp's shared
// memory for the key head's q and k of one input row (2 DK floats).
// wait(): the inputs' wait, after the state rows are loaded (only this
// unit touches them in a launch, and the launch before has completed).
template <int DK, typename Wait>
__device__ __forceinline__ void delta_unit(const DeltaNetArgs& d, int64_t u, float* qk, int lane, Wait&& wait) {
  constexpr int TPR = DK / 8, NV = 2, R = kWarp / TPR;
  const int64_t per_head = d.dv / R, j = u / per_head, kh = j % d.Hk;
  const int sub = lane % TPR;
  const int64_t v_row = (u % per_head) * R + lane / TPR;
  // What does not depend on the stage before (the state rows, the head's
  // weights) is requested before the wait.
  float M[8];
  float4* row = reinterpret_cast<float4*>(d.state + (j * d.dv + v_row) * DK);
  delta_load_row<TPR, NV>(M, row, sub);
  const float ssm_a = d.ssm_a[j], dt_bias = d.dt_bias[j];
  wait();
  for (int64_t t = 0; t < d.n; ++t) {
    // Row t's inputs (through L2: written earlier in this launch), all
    // requested before any is used: one round trip.
    const float* uc = d.uc + t * d.ldu;
    const float b = __ldcg(d.b + t * d.ldb + j), a = __ldcg(d.a + t * d.lda + j),
                v = __ldcg(uc + 2 * d.Hk * DK + j * d.dv + v_row);
    for (int i = lane; i < 2 * DK; i += kWarp) qk[i] = __ldcg(uc + (i < DK ? 0 : d.Hk * DK) + kh * DK + i % DK);
    __syncwarp();
    float sq, sk, rq, rk, beta, decay;
    delta_qk_squares<DK>(qk, qk + DK, lane, &sq, &sk);
    delta_gates(sq, sk, b, a, ssm_a, dt_bias, rsqrtf(float(DK)), d.eps, &rq, &rk, &beta, &decay);
    const float o = delta_row<TPR, NV>(M, reinterpret_cast<const float4*>(qk),
                                       reinterpret_cast<const float4*>(qk + DK), sub, v, rq, rk, beta, decay);
    if (sub == 0) d.out[t * d.Hv * d.dv + j * d.dv + v_row] = o;
    if (t == d.snapshot_row)
      delta_store_row<TPR, NV>(M, reinterpret_cast<float4*>(d.snapshot + (j * d.dv + v_row) * DK), sub);
    __syncwarp();  // (qk is the next row's)
  }
  delta_store_row<TPR, NV>(M, row, sub);
}

template <typename Wait>
__device__ __forceinline__ void delta_unit_dk(const DeltaNetArgs& d, int64_t u, float* qk, int lane, Wait&& wait) {
  switch (d.dk) {
    case 32: delta_unit<32>(d, u, qk, lane, wait); break;
    case 64: delta_unit<64>(d, u, qk, lane, wait); break;
    case 128: delta_unit<128>(d, u, qk, lane, wait); break;
    default: delta_unit<256>(d, u, qk, lane, wait); break;
  }
}

// A unit of an attention stage (warp_attention_unit for the head size).
template <typename Wait>
__device__ __forceinline__ void attention_unit_dh(const FusedAttnArgs& f, int64_t u, float* sm, int lane,
                                                  Wait&& wait) {
  switch (f.attn.head_dim) {
    case 64: warp_attention_unit<2>(f, u, sm, lane, wait); break;
    case 128: warp_attention_unit<4>(f, u, sm, lane, wait); break;
    default: warp_attention_unit<8>(f, u, sm, lane, wait); break;  // 256 (stage_ok)
  }
}

// kAttn: the launch has attention stages (an instantiation of its own: the
// attention unit's registers, 238 a thread against 154 on sm_90a, leave 2
// blocks a multiprocessor instead of 3). kFp8: the products on the FP8
// tensor cores (sizes.fp8; also its own: both arithmetics in one kernel
// took 168 registers and spilled).
template <bool kAttn, bool kFp8>
__global__ void __launch_bounds__(W * kWarp) persist_fp4_kernel(const __grid_constant__ PersistFp4Args a) {
  uint8_t* smem = dynamic_smem<uint8_t>();
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const PersistFp4Stage* st = a.stages ? a.stages : a.inline_stages;
  uint8_t* ring = smem + size_t(warp) * S * kBulkStageBytes;                                         // [S][2304]
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + size_t(W) * S * kBulkStageBytes) + warp * S;  // [S]
  PersistFp4Sizes z = a.sizes;
  z.fp8 = kFp8;  // (persist_kernel chose this instantiation by it)
  uint8_t* xw = smem + bulk_ring_bytes(W, S) + size_t(warp) * x_bytes(z);
  uint16_t* xs = reinterpret_cast<uint16_t*>(xw);                // [nch][n][16] F16 (kFp8: [nch][n][48 bytes])
  float* mult = reinterpret_cast<float*>(xw + x_chunk_bytes(z));  // [nch][8]
  int* queue = reinterpret_cast<int*>(smem + smem_bytes(z)) - (W - warp) * int(kQueue);  // [kQueue]

  // The first tickets and ring stages (weights: before the PDL wait).
  Issue is;
  if (lane == 0) {
    for (int i = 0; i < S; ++i) mbar_init(smem_addr(bars + i), 1);
    is.pending = atomicAdd(a.tickets, 1);
    issue_ahead(is, st, a.count, a.tickets, queue, 0, 0, ring, bars, kFp8);
  }
  __syncwarp();
  pdl_wait();
  pdl_trigger();

  uint32_t seq = 0;   // ring stages consumed
  uint32_t head = 0;  // queued tickets taken
  int known = -1;     // stages this warp has seen finished (all of 0 .. known)
  int norm_s = -1;    // the stage whose 1/rms the warp holds (for each row)
  float rnorm0 = 1.0f, rnorm1 = 1.0f;
  Unit c;
  for (;;) {
    // The ring filled up again (taking a ticket if the queue is empty: the
    // ring is empty then, every unit queued before computed), and the next
    // queued ticket; -1 when no units are left.
    int ticket = -1;
    if (lane == 0) {
      issue_ahead(is, st, a.count, a.tickets, queue, head, seq, ring, bars, kFp8);
      if (head != is.tail) ticket = queue[head % kQueue];
    }
    ticket = __shfl_sync(0xFFFFFFFFu, ticket, 0);
    if (ticket < 0) break;
    ++head;
    locate(st, a.count, ticket, c);
    const PersistFp4Stage& p = st[c.s];

    // 1. Stage s-1 finished (once per stage: a finished stage stays so),
    // the norm's factor (once per stage), then this slice of the inputs.
    if (a.timeline && lane == 0) note_time(a.timeline, c.s, kTimeFirstStart);
    const auto wait_whole = [&] {
      if (c.s - 1 > known && !a.no_waits) {
        warp_wait(a.done + (c.s - 1) * kPersistDoneStride, int(persist_stage_tiles(st[c.s - 1])), a.fault,
                  a.poll_ns, lane);
        known = c.s - 1;
      }
    };
    const auto note_ready = [&] {
      if (a.timeline && lane == 0) {
        note_time(a.timeline, c.s, kTimeFirstReady);
        note_time(a.timeline, c.s, kTimeLastReady);
      }
    };
    const auto wait_inputs = [&] {
      wait_whole();
      note_ready();
    };
    if (p.kind != PersistKind::Product) {  // (no weights, no ring stages)
      if (p.kind == PersistKind::Attention) {
        if constexpr (kAttn)  // (its first cache rows requested before the wait)
          attention_unit_dh(p.attn, c.u, reinterpret_cast<float*>(xw), lane, wait_inputs);
        else if (lane == 0)  // (sizes.attention was not set: the launch is wrong, and says so)
          atomicMax(a.fault, 1);
      }
      if (p.kind == PersistKind::DeltaRule)  // (its state rows loaded before the wait)
        delta_unit_dk(p.delta, c.u, reinterpret_cast<float*>(xw), lane, wait_inputs);
      __threadfence();
      __syncwarp();
      if (lane == 0) {
        if (a.timeline) note_time(a.timeline, c.s, kTimeLastDone);  // (before the count: a waiter sees it after)
        atomicAdd(a.done + c.s * kPersistDoneStride, 1);
        count_slice(p, a.done + c.s * kPersistDoneStride, c.u);  // (unit u: state rows u * 256 / dk on)
      }
      continue;
    }
    const int64_t tiles = p.w.tiles(), tile = c.u / p.splits;
    const int slice = int(c.u % p.splits);
    const int64_t kg0 = int64_t(slice) * p.kg_per;
    const int nkg = int(min(p.w.kgroups(), kg0 + p.kg_per) - kg0);
    // Weights the prologue and epilogue read, into L2 before the wait: the
    // norm's over this slice (a line a lane), the conv's for this tile.
    if (p.norm)
      for (int64_t i = kg0 * kFp4GroupCols + 32 * lane; i < (kg0 + nkg) * kFp4GroupCols; i += 32 * kWarp)
        prefetch_l2(p.norm + i);
    if (p.epilogue == Fp4Epilogue::Conv && slice == 0 && lane == 0) conv_prefetch(p, tile);
    // By slice: the outputs of stage s-1 in this unit's columns now, the
    // rest (and the norm's factor) before this unit stores.
    const bool by_slice = p.slice_per > 0;
    if (by_slice) {
      if (c.s - 1 > known && !a.no_waits) {
        const int64_t lo = kg0 * kFp4GroupCols, hi = min(p.w.cols, lo + int64_t(p.kg_per) * kFp4GroupCols);
        warp_wait(a.done + (c.s - 1) * kPersistDoneStride + 1 + slice,
                  int((hi + p.slice_per - 1) / p.slice_per - lo / p.slice_per), a.fault, a.poll_ns, lane);
      }
      note_ready();
    } else {
      wait_inputs();
    }
    const auto norm_factors = [&] {
      if (p.norm && norm_s != c.s) {
        rnorm0 = stage_rnorm(st, c.s, 0, a, lane);
        if (p.n > 1) rnorm1 = stage_rnorm(st, c.s, 1, a, lane);
        norm_s = c.s;
      }
    };
    if (!by_slice) norm_factors();
    warp_load_x<kFp8>(p, kg0 * kFp4GroupCols, 4 * nkg, xs, mult);
    __syncwarp();

    // 2. The weights through the ring; each freed slot takes the next stage
    // of the warp's list.
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const BulkRun run = unit_run(p, c.u, ring, bars, seq, kFp8);
    const auto refill = [&](int st_done) {
      issue_ahead(is, st, a.count, a.tickets, queue, head, seq + uint32_t(st_done + 1), ring, bars, kFp8);
    };
    if constexpr (kFp8) {  // (the quad's lanes hold different terms and sub-blocks: added, lane t = 0 as below)
      if (p.n == 1) bulk_stream_refill<S, false, 1, 2>(run, acc, xs, mult, 1, lane, g, false, refill);
      else bulk_stream_refill<S, false, 2, 2>(run, acc, xs, mult, 2, lane, g, false, refill);
      fp8_quad_sum(acc);
    } else {
      const uint16_t* xb = xs + tc_b_row(g, p.n) * 16 + t * 4;
      if (p.n == 1)  // (kernel 3's one-row arithmetic: the second accumulator column left out)
        bulk_stream_refill<S, false, 1>(run, acc, xb, mult + 2 * t, 1, lane, g, false, refill);
      else
        bulk_stream_refill<S, false, 0>(run, acc, xb, mult + 2 * t, p.n, lane, g, false, refill);
    }
    seq += uint32_t(run.nst);

    // 3. The encoding's and the tensor's scale; the slices added in order by
    // the last of the tile's units; the norm's factor, the epilogue; the
    // tile counted.
    // r[e]: tile row g + 8 (e / 2), activation row 2t + e % 2 (lanes t = 0 hold rows 0 and 1).
    float r[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) r[e] = acc[e] * (16384.0f * p.w.scale);
    if (p.splits > 1) {
      float* part = a.partial + (c.s & 1) * a.sizes.partial_half;  // [splits][tiles][16][kPersistMaxRows]
      int* cnt = a.counters + (c.s & 1) * a.sizes.counter_half;    // [tiles]
      float2* mine = reinterpret_cast<float2*>(part) + (int64_t(slice) * tiles + tile) * kFp4TileRows + g;
      if (t == 0) {
        mine[0] = make_float2(r[0], r[1]);
        mine[8] = make_float2(r[2], r[3]);
      }
      __threadfence();
      __syncwarp();
      int last = 0;
      if (lane == 0) last = atomicAdd(cnt + tile, 1) == p.splits - 1;
      if (!__shfl_sync(0xFFFFFFFFu, last, 0)) continue;
      __threadfence();
      if (t == 0) {
        r[0] = r[1] = r[2] = r[3] = 0.0f;
        for (int sl = 0; sl < p.splits; ++sl) {
          const float2* q = reinterpret_cast<const float2*>(part) + (int64_t(sl) * tiles + tile) * kFp4TileRows + g;
          const float2 lo = __ldcg(q), hi = __ldcg(q + 8);
          r[0] += lo.x;
          r[1] += lo.y;
          r[2] += hi.x;
          r[3] += hi.y;
        }
      }
      if (lane == 0) cnt[tile] = 0;
    }
    if (by_slice) {  // (this unit stores: everything it writes comes after all of stage s-1, as without)
      wait_whole();
      norm_factors();
    }
    if (p.norm) {
      r[0] *= rnorm0;
      r[2] *= rnorm0;
      r[1] *= rnorm1;
      r[3] *= rnorm1;
    }
    store_tile(p, a.squares + (c.s & 1) * a.sizes.squares_half, tile, g, t, lane, r);
    __threadfence();
    __syncwarp();
    if (lane == 0) {
      if (a.timeline) note_time(a.timeline, c.s, kTimeLastDone);
      atomicAdd(a.done + c.s * kPersistDoneStride, 1);
      count_slice(p, a.done + c.s * kPersistDoneStride, tile);
    }
  }

  // The last warp to leave puts the counters back to zero for the next
  // launch (every other warp is past its last wait), its lanes a stage
  // each; after a fault the split-K counters too (stages may have run out
  // of order), and it reports the fault.
  int* gone = a.done + a.count * kPersistDoneStride;
  int last = 0;
  if (lane == 0) {
    __threadfence();
    last = atomicAdd(gone, 1) == int(gridDim.x) * W - 1;
  }
  if (!__shfl_sync(0xFFFFFFFFu, last, 0)) return;
  __threadfence();
  for (int s = lane; s < a.count; s += kWarp) {
    int* line = a.done + s * kPersistDoneStride;
    atomicExch(line, 0);
    const PersistFp4Stage& p = st[s];
    if (p.slice_cols)
      for (int64_t k = 0; k <= (p.slice_limit - 1) / p.slice_cols; ++k) atomicExch(line + 1 + k, 0);
  }
  int faulted = 0;
  if (lane == 0) faulted = atomicExch(a.fault, 0);  // (the flag, cleared for the next launch, goes to the report)
  if (__shfl_sync(0xFFFFFFFFu, faulted, 0) != 0)
    for (uint64_t i = lane; i < 2 * a.sizes.counter_half; i += kWarp) atomicExch(a.counters + i, 0);
  __threadfence();
  __syncwarp();
  if (lane == 0) {
    atomicExch(a.tickets, 0);
    if (faulted) *reinterpret_cast<volatile int*>(a.fault_report) = 1;
    atomicExch(gone, 0);
  }
}


// What a unit costs besides its kgroups (the wait, the activation chunks,
// the combine), in kgroups: a guess that keeps slices from getting tiny.
constexpr int64_t kUnitCost = 4;

bool aligned16(const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15u) == 0; }

// Whether the kernel can run stage p (shapes, pairing and epilogue,
// prologue, alignment); *align: its slices' kgroups must be a multiple of
// it (whole heads of the gated norm).
bool stage_ok(const PersistFp4Stage& p, int64_t* align) {
  const Fp4Tiled& w = p.w;
  *align = 1;
  if (p.kind == PersistKind::DeltaRule) {
    const DeltaNetArgs& d = p.delta;
    return d.n >= 1 && d.n <= kPersistMaxRows && (d.dk == 32 || d.dk == 64 || d.dk == 128 || d.dk == 256) &&
           d.Hk >= 1 && d.Hv >= 1 &&
           d.dv >= 1 && d.dv % (256 / d.dk) == 0 && d.uc && d.b && d.a && d.ssm_a && d.dt_bias && d.out &&
           aligned16(d.state) && d.snapshot_row >= -1 && d.snapshot_row < d.n &&
           (d.snapshot_row < 0 || aligned16(d.snapshot)) && (d.n == 1 || (d.ldu >= 0 && d.ldb >= 0 && d.lda >= 0));
  }
  if (p.kind == PersistKind::Attention) {
    const AttnArgs& t = p.attn.attn;
    const QkvRopeArgs& r = p.attn.rope;
    return t.n >= 1 && t.n <= kPersistMaxRows && r.n == t.n && p.n == t.n &&
           (t.head_dim == 64 || t.head_dim == 128 || t.head_dim == 256) && r.head_dim == t.head_dim &&
           t.n_head_kv >= 1 && t.n_head % t.n_head_kv == 0 && r.n_head == t.n_head && r.n_head_kv == t.n_head_kv &&
           t.splits >= 1 && t.splits <= kPersistMaxAttnSplits && !t.tiled && t.n_past && t.k_cache && t.v_cache &&
           r.k_cache == t.k_cache && r.v_cache == t.v_cache && t.gate && t.o && t.part_m && t.part_l && t.part_o &&
           p.attn.counters && r.qg && r.k && r.v && r.q_norm && r.k_norm && r.pos &&
           (r.rope_cs || (r.rope.inv_freq && r.rope.comp) || r.rope.n_rot == 0) && aligned16(t.k_cache) &&
           aligned16(t.v_cache);
  }
  if (p.kind != PersistKind::Product) return false;
  if (!w.present() || w.rows < 1 || w.cols < kFp4GroupCols || w.cols % kFp4GroupCols != 0 || !p.x || !p.y ||
      !aligned16(w.codes) || !aligned16(w.scales) || !aligned16(p.x) || p.n < 1 || p.n > kPersistMaxRows)
    return false;
  // Rows after the first: 16-byte aligned, not overlapping the one before.
  if (p.n > 1 &&
      (p.ldx < w.cols || p.ldx % 4 != 0 || p.ldy < w.rows || (p.gate_z && (p.ldz < w.cols || p.ldz % 4 != 0))))
    return false;
  if ((w.pairing == Fp4Pairing::GateUp) != (p.epilogue == Fp4Epilogue::SwiGLU)) return false;
  if (w.pairing != Fp4Pairing::Plain && w.pairing != Fp4Pairing::GateUp) return false;
  if (p.epilogue == Fp4Epilogue::Conv &&
      (!p.conv_taps || !p.conv_window || p.conv_k < 1 || p.conv_channels < 1 || p.conv_channels > w.rows ||
       p.conv_snapshot_row < -1 || p.conv_snapshot_row >= p.n || (p.conv_snapshot_row >= 0 && !p.conv_snapshot)))
    return false;
  if (p.norm && (p.gate_z || !aligned16(p.norm))) return false;
  if (p.gate_z) {
    const int hc = p.gate_dv / 16;  // chunks per head: aligned lanes of one warp
    if (p.gate_dv % 16 != 0 || hc < 1 || hc > kWarp || (hc & (hc - 1)) != 0 || w.cols % p.gate_dv != 0 ||
        !p.gate_w || !aligned16(p.gate_z) || !aligned16(p.gate_w))
      return false;
    *align = std::max(1, hc / 4);  // (4 chunks per kgroup)
  }
  return true;
}

// The kernel's instantiation for a launch of these sizes.
auto persist_kernel(const PersistFp4Sizes& z) {
  if (z.fp8) return z.attention ? persist_fp4_kernel<true, true> : persist_fp4_kernel<false, true>;
  return z.attention ? persist_fp4_kernel<true, false> : persist_fp4_kernel<false, false>;
}

}  // namespace

bool persist_fp4_stage(const Fp4MatvecArgs& a, PersistFp4Stage* out) {
  if (!out || a.n < 1 || a.n > kPersistMaxRows) return false;
  PersistFp4Stage p;
  p.w = a.w;
  p.n = a.n;
  p.x = a.x;
  p.ldx = a.ldx;
  p.y = a.y;
  p.ldy = a.ldy;
  p.ldz = a.ldz;
  p.epilogue = a.epilogue;
  p.norm = a.norm;
  p.eps = a.eps;
  p.gate_z = a.gate_z;
  p.gate_w = a.gate_w;
  p.gate_dv = a.gate_dv;
  p.conv_taps = a.conv_taps;
  p.conv_window = a.conv_window;
  p.conv_channels = a.conv_channels;
  p.conv_k = a.conv_k;
  p.conv_snapshot_row = a.conv_snapshot_row;
  p.conv_snapshot = a.conv_snapshot;
  *out = p;
  return true;
}

bool persist_delta_stage(const DeltaNetArgs& d, PersistFp4Stage* out) {
  if (!out || d.n < 1 || d.n > kPersistMaxRows) return false;
  PersistFp4Stage p;
  p.kind = PersistKind::DeltaRule;
  p.delta = d;
  p.n = int(d.n);
  *out = p;
  return true;
}

bool persist_attention_stage(const FusedAttnArgs& f, PersistFp4Stage* out) {
  if (!out || f.attn.n < 1 || f.attn.n > kPersistMaxRows) return false;
  PersistFp4Stage p;
  p.kind = PersistKind::Attention;
  p.attn = f;
  p.n = int(f.attn.n);
  *out = p;
  return true;
}

bool persist_fp4_plan(PersistFp4Stage* stages, int count, int blocks, bool slice_waits) {
  if (!stages || count < 1 || blocks < 1) return false;
  const int64_t warps = int64_t(blocks) * W;
  for (int s = 0; s < count; ++s) {
    PersistFp4Stage& p = stages[s];
    int64_t align = 1;
    if (!stage_ok(p, &align)) return false;
    p.squares = false;
    p.norm_from_prev = false;
    p.slice_per = 0;
    p.slice_cols = p.slice_limit = 0;
    if (p.kind == PersistKind::DeltaRule) {  // a unit per 256 / dk state rows (a warp's lanes)
      p.splits = 1;
      p.kg_per = 0;
      p.units = p.delta.Hv * p.delta.dv / (256 / p.delta.dk);
      continue;
    }
    if (p.kind == PersistKind::Attention) {  // a unit per (row, head, key split)
      p.splits = 1;
      p.kg_per = 0;
      p.units = p.attn.attn.n * p.attn.attn.n_head * p.attn.attn.splits;
      continue;
    }
    const int64_t tiles = p.w.tiles(), kgs = p.w.kgroups();
    // The least work of the busiest warp over the split counts (the first,
    // the fewest slices, on ties).
    int64_t best = -1, best_kg = 0, best_sp = 0;
    for (int64_t sp = (kgs + kPersistMaxKgPer - 1) / kPersistMaxKgPer; sp <= std::min<int64_t>(kgs, 64); ++sp) {
      const int64_t kg = ((kgs + sp - 1) / sp + align - 1) / align * align;
      if (kg > kPersistMaxKgPer) continue;
      const int64_t real = (kgs + kg - 1) / kg;
      const int64_t work = (tiles * real + warps - 1) / warps * (kg + kUnitCost);
      if (best < 0 || work < best) best = work, best_kg = kg, best_sp = real;
    }
    if (best < 0) return false;
    p.kg_per = int(best_kg);
    p.splits = int(best_sp);
    p.units = tiles * best_sp;
  }
  // A norm over the plain outputs of the stage before: that stage leaves
  // its tiles' sums of squares.
  for (int s = 1; s < count; ++s) {
    PersistFp4Stage &p = stages[s], &q = stages[s - 1];
    if (p.kind == PersistKind::Product && q.kind == PersistKind::Product && p.norm &&
        q.w.pairing == Fp4Pairing::Plain &&
        (q.epilogue == Fp4Epilogue::Store || q.epilogue == Fp4Epilogue::Add) && q.y == p.x && q.w.rows == p.w.cols &&
        q.n == p.n && (p.n == 1 || q.ldy == p.ldx)) {
      q.squares = true;
      p.norm_from_prev = true;
    }
  }
  // Slice waits: a product reading the outputs the stage before stored,
  // one count of it per persist_count_cols columns (a tile's rows, a gate/up
  // tile's SwiGLU outputs, a delta-rule unit's state rows); not after attention
  // (a head's outputs come from the last of its splits) nor after the conv.
  for (int s = 1; slice_waits && s < count; ++s) {
    PersistFp4Stage &p = stages[s], &q = stages[s - 1];
    if (p.kind != PersistKind::Product || p.splits > kPersistMaxSliceWaits || p.n != q.n) continue;
    int64_t outputs = 0, ld = 0;
    const float* y = nullptr;
    if (q.kind == PersistKind::Product && q.epilogue != Fp4Epilogue::Conv) {
      outputs = q.w.rows;
      y = q.y;
      ld = q.ldy;
    } else if (q.kind == PersistKind::DeltaRule) {
      outputs = q.delta.Hv * q.delta.dv;
      y = q.delta.out;
      ld = outputs;
    }
    if (!y || y != p.x || p.w.cols > outputs || (p.n > 1 && ld != p.ldx)) continue;
    p.slice_per = int(persist_count_cols(q));
    q.slice_cols = int64_t(p.kg_per) * kFp4GroupCols;
    q.slice_limit = p.w.cols;
  }
  return true;
}

PersistFp4Sizes persist_fp4_sizes(const PersistFp4Stage* stages, int count, bool fp8) {
  PersistFp4Sizes z;
  z.fp8 = fp8;
  for (int s = 0; s < count; ++s) {
    const PersistFp4Stage& p = stages[s];
    if (p.kind == PersistKind::Product && !p.w.codes8) z.fp8 = false;
    z.max_rows = std::max(z.max_rows, p.n);
    if (p.kind == PersistKind::DeltaRule) {  // q and k in a warp's activation chunks (256 bytes a kgroup)
      z.max_kg_per = std::max(z.max_kg_per, int(p.delta.dk / 32));
      continue;
    }
    if (p.kind == PersistKind::Attention) {  // warp_attn_smem_floats in a warp's chunks (at least 256 bytes a kgroup)
      z.attention = true;
      const int64_t bytes = warp_attn_smem_floats(p.attn.attn.head_dim) * 4;
      z.max_kg_per = std::max(z.max_kg_per, int((bytes + 255) / 256));
      continue;
    }
    z.max_kg_per = std::max(z.max_kg_per, p.kg_per);
    if (p.splits > 1) {  // [splits][tiles][16][kPersistMaxRows]
      z.partial_half = std::max<uint64_t>(z.partial_half, uint64_t(p.splits) * uint64_t(p.w.tiles()) * kFp4TileRows *
                                                              uint64_t(kPersistMaxRows));
      z.counter_half = std::max<uint64_t>(z.counter_half, uint64_t(p.w.tiles()));
    }
    if (p.squares)  // [rows][tiles]
      z.squares_half = std::max<uint64_t>(z.squares_half, uint64_t(p.w.tiles()) * uint64_t(kPersistMaxRows));
  }
  return z;
}

int persist_fp4_blocks_per_sm(const PersistFp4Sizes& sizes) {
#ifdef QWEN35_CUDA_EMU
  (void)sizes;
  return 1;
#else
  const auto kernel = persist_kernel(sizes);
  const size_t smem = smem_bytes(sizes);
  if (allow_dynamic_smem(kernel, smem) != cudaSuccess) return 0;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, W * kWarp, smem) != cudaSuccess) return 0;
  return n;
#endif
}

#ifdef QWEN35_CUDA_EMU
namespace {
int g_emu_grid = 1;
}  // namespace
void persist_emu_set_grid(int blocks) { g_emu_grid = std::max(1, blocks); }
#endif

int persist_fp4_grid(const PersistFp4Sizes& sizes, int sms) {
#ifdef QWEN35_CUDA_EMU
  (void)sms;
  return persist_fp4_blocks_per_sm(sizes) > 0 ? g_emu_grid : 0;
#else
  return std::max(0, sms) * persist_fp4_blocks_per_sm(sizes);
#endif
}

cudaError_t persist_fp4(const PersistFp4Args& a, int blocks, cudaStream_t stream) {
  if (a.count < 1 || a.count > (a.stages ? kPersistTableMax : kPersistInline) || blocks < 1 || !a.done ||
      !a.tickets || !a.fault || !a.fault_report ||
      a.sizes.max_kg_per < 1 || a.sizes.max_kg_per > kPersistMaxKgPer || a.sizes.max_rows < 1 ||
      a.sizes.max_rows > kPersistMaxRows ||
      (a.sizes.partial_half && (!a.partial || !a.counters)) || (a.sizes.squares_half && !a.squares))
    return cudaErrorInvalidValue;
  static SmemOptIn opt_in[4];
  const auto kernel = persist_kernel(a.sizes);
  const size_t smem = smem_bytes(a.sizes);
  if (const cudaError_t e = opt_in[2 * a.sizes.fp8 + a.sizes.attention].ensure(kernel, smem); e != cudaSuccess)
    return e;
  return launch(kernel, dim3(unsigned(blocks)), dim3(W * kWarp), smem, stream, a);
}

}  // namespace qwen35::cuda
