// A persistent kernel for a sequence of NVFP4 decode products (see
// persist_fp4.h).
//
// Warp (b, w) of a grid of G blocks owns units b + G*(w + 4k), k = 0, 1, ...
// of every stage (unit u = tile u / splits, column slice u % splits), in
// stage order. Lane 0 of the warp keeps kPersistStages ring stages of its
// weights requested ahead (cp.async.bulk, kernel 3's stages of 4 kgroups),
// walking its unit list with an issue cursor that runs ahead of the
// computation across units and stages: each slot the computation frees is
// refilled at once with the next stage of the list, whichever unit or
// stage of the sequence it belongs to. Weights are never written by a
// kernel, so nothing orders these requests but the ring.
//
// A unit of stage s > 0 first waits (the whole warp, polling through lane 0
// with acquire loads) until done[s-1] counts every tile of stage s-1; the
// warp that stores a tile's outputs (its last column slice to finish, which
// adds the slices' partials in slice order) counts it after a fence. A warp
// only waits for units of earlier stages, which warps of the same grid run
// before any unit of a later stage (every warp's list is in stage order), so
// with the whole grid resident the waits end; a wait gives up after about a
// second anyway (the fault flag; wrong results, no hang). In the emulation,
// where blocks run one after another, the grid is one block: its warps
// interleave at their warp-wide operations, the poll included.
//
// Split-K scratch: partials and per-tile counters alternate between two
// halves by stage parity. Stage s+2 starts only after stage s+1 has
// finished, which started only after every unit of stage s had reset its
// tile counter and stored, so a half is free when it is used again.
#include <algorithm>

#include "common.cuh"
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

// Shared memory per warp: the ring (stages and barriers) and the activation
// chunks of a slice: [nch][16] F16, then the multipliers [nch][8].
__host__ __device__ constexpr size_t x_bytes(int max_kg_per) { return size_t(4 * max_kg_per) * 64; }
__host__ __device__ constexpr size_t smem_bytes(int max_kg_per) {
  return bulk_ring_bytes(W, S) + size_t(W) * x_bytes(max_kg_per);
}

// A unit of the warp's list: stage s, list index k.
struct Unit {
  int s = 0, k = 0;
  int64_t u = 0;  // the unit within its stage
};

// The first unit of the warp's list at or after (s, k); false past the end.
__device__ __forceinline__ bool find_unit(const PersistFp4Stage* st, int count, int64_t first, int64_t step, Unit& c) {
  for (; c.s < count; ++c.s, c.k = 0) {
    c.u = first + step * c.k;
    if (c.u < st[c.s].units) return true;
  }
  return false;
}

// The weight run of a unit (kernel 3's BulkRun, its stages numbered from seq0).
__device__ __forceinline__ BulkRun unit_run(const PersistFp4Stage& st, int64_t u, uint8_t* ring, uint64_t* bars,
                                            uint32_t seq0) {
  const int64_t tile = u / st.splits, kg0 = (u % st.splits) * st.kg_per;
  const int nkg = int(min(st.w.kgroups(), kg0 + st.kg_per) - kg0);
  return bulk_run(ring, bars, st.w, tile, kg0, nkg, seq0);
}

// Lane 0's issue cursor: the next ring stage to request.
struct Issue {
  Unit c;
  bool valid = false;
  int st = 0;         // ring stage within the unit's run
  uint32_t seq0 = 0;  // the warp's ring sequence number of the unit's stage 0
};

__device__ __forceinline__ void issue_next(Issue& is, const PersistFp4Stage* st, int count, int64_t first,
                                           int64_t step, uint8_t* ring, uint64_t* bars) {
  if (!is.valid) return;
  const BulkRun r = unit_run(st[is.c.s], is.c.u, ring, bars, is.seq0);
  bulk_issue<S>(r, is.st);
  if (++is.st == r.nst) {  // on to the next unit of the list
    is.st = 0;
    is.seq0 += uint32_t(r.nst);
    ++is.c.k;
    is.valid = find_unit(st, count, first, step, is.c);
  }
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
    if (__shfl_sync(0xFFFFFFFFu, ok, 0)) return;
#ifndef QWEN35_CUDA_EMU
    if (poll_ns) __nanosleep(poll_ns);
#else
    (void)poll_ns;
    (void)t0;
#endif
  }
}

// The warp's slice of one activation row as kernel 3's prologue makes it
// (tc_load_x_impl, one row, no norm): chunk c (tc_store_chunk) and its
// multiplier 2^e (and 0 for the rows an mma computes beyond the one).
__device__ __forceinline__ void warp_load_x(const float* x, int nch, uint16_t* xs, float* mult, int lane) {
  for (int c = lane; c < nch; c += kWarp) {
    const float4* xp = reinterpret_cast<const float4*>(x + 16 * c);
    float v[16];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 f = __ldcg(xp + i);
      v[4 * i] = f.x;
      v[4 * i + 1] = f.y;
      v[4 * i + 2] = f.z;
      v[4 * i + 3] = f.w;
    }
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; ++i) amax = fmaxf(amax, fabsf(v[i]));
    const int e = tc_store_chunk(v, amax, xs + size_t(c) * 16);
#pragma unroll
    for (int j = 0; j < kMatvecMaxCols; ++j) mult[c * kMatvecMaxCols + j] = j == 0 ? pow2f(e) : 0.0f;
  }
}

__global__ void __launch_bounds__(W * kWarp) persist_fp4_kernel(PersistFp4Args a) {
  uint8_t* smem = dynamic_smem<uint8_t>();
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const PersistFp4Stage* st = a.stages;
  uint8_t* ring = smem + size_t(warp) * S * kBulkStageBytes;                                         // [S][2304]
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + size_t(W) * S * kBulkStageBytes) + warp * S;  // [S]
  uint8_t* xw = smem + bulk_ring_bytes(W, S) + size_t(warp) * x_bytes(a.sizes.max_kg_per);
  uint16_t* xs = reinterpret_cast<uint16_t*>(xw);                                   // [nch][16] F16
  float* mult = reinterpret_cast<float*>(xw + size_t(4 * a.sizes.max_kg_per) * 32);      // [nch][8]
  // The warp's units: first, first + step, ... of each stage.
  const int64_t first = blockIdx.x + int64_t(gridDim.x) * warp, step = int64_t(gridDim.x) * W;

  // The first ring stages (weights: before the PDL wait).
  Issue is;
  is.valid = find_unit(st, a.count, first, step, is.c);
  if (lane == 0) {
    for (int i = 0; i < S; ++i) mbar_init(smem_addr(bars + i), 1);
    for (int i = 0; i < S; ++i) issue_next(is, st, a.count, first, step, ring, bars);
  }
  __syncwarp();
  pdl_wait();
  pdl_trigger();

  uint32_t seq = 0;  // ring stages consumed
  int known = -1;    // stages this warp has seen finished (all of 0 .. known)
  Unit c;
  for (bool more = find_unit(st, a.count, first, step, c); more; ++c.k, more = find_unit(st, a.count, first, step, c)) {
    const PersistFp4Stage& p = st[c.s];
    const int64_t tiles = p.w.tiles(), tile = c.u / p.splits;
    const int slice = int(c.u % p.splits);
    const int64_t kg0 = int64_t(slice) * p.kg_per;
    const int nkg = int(min(p.w.kgroups(), kg0 + p.kg_per) - kg0);

    // 1. Stage s-1 finished (once per stage: a finished stage stays so),
    // then this slice of its outputs.
    if (c.s - 1 > known && !a.no_waits) {
      warp_wait(a.done + (c.s - 1) * kPersistDoneStride, int(st[c.s - 1].w.tiles()), a.fault, a.poll_ns, lane);
      known = c.s - 1;
    }
    warp_load_x(p.x + kg0 * kFp4GroupCols, 4 * nkg, xs, mult, lane);
    __syncwarp();

    // 2. The weights through the ring; each freed slot takes the next stage
    // of the warp's list.
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const BulkRun run = unit_run(p, c.u, ring, bars, seq);
    bulk_stream_refill<S, false, 1>(run, acc, xs + tc_b_row(g, 1) * 16 + t * 4, mult + 2 * t, 1, lane, g, false,
                                    [&](int) {
                                      if (!is.valid) return;
                                      fence_proxy_async_smem();
                                      issue_next(is, st, a.count, first, step, ring, bars);
                                    });
    seq += uint32_t(run.nst);

    // 3. The encoding's and the tensor's scale; the slices added in order by
    // the last of the tile's units; the store; the tile counted.
    float r0 = acc[0] * (16384.0f * p.w.scale), r1 = acc[2] * (16384.0f * p.w.scale);  // rows g, g + 8
    if (p.splits > 1) {
      float* part = a.partial + (c.s & 1) * a.sizes.partial_half;  // [splits][tiles][16]
      int* cnt = a.counters + (c.s & 1) * a.sizes.counter_half;    // [tiles]
      if (t == 0) {
        part[(int64_t(slice) * tiles + tile) * kFp4TileRows + g] = r0;
        part[(int64_t(slice) * tiles + tile) * kFp4TileRows + g + 8] = r1;
      }
      __threadfence();
      __syncwarp();
      int last = 0;
      if (lane == 0) last = atomicAdd(cnt + tile, 1) == p.splits - 1;
      if (!__shfl_sync(0xFFFFFFFFu, last, 0)) continue;
      __threadfence();
      if (t == 0) {
        r0 = r1 = 0.0f;
        for (int sl = 0; sl < p.splits; ++sl) {
          const float* q = part + (int64_t(sl) * tiles + tile) * kFp4TileRows + g;
          r0 += __ldcg(q);
          r1 += __ldcg(q + 8);
        }
      }
      if (lane == 0) cnt[tile] = 0;
    }
    const int64_t row = tile * kFp4TileRows + g;
    if (t == 0) {
      if (row < p.w.rows) p.y[row] = r0;
      if (row + 8 < p.w.rows) p.y[row + 8] = r1;
    }
    __threadfence();
    __syncwarp();
    if (lane == 0) atomicAdd(a.done + c.s * kPersistDoneStride, 1);
  }
}


// What a unit costs besides its kgroups (the wait, the activation chunks,
// the combine), in kgroups: a guess that keeps slices from getting tiny.
constexpr int64_t kUnitCost = 4;

// The busiest warp's work in a stage with `splits` slices on `warps` warps.
int64_t warp_work(int64_t tiles, int64_t kgs, int64_t splits, int64_t warps, int64_t* kg_per, int64_t* sp) {
  *kg_per = (kgs + splits - 1) / splits;
  *sp = (kgs + *kg_per - 1) / *kg_per;
  return (tiles * *sp + warps - 1) / warps * (*kg_per + kUnitCost);
}

}  // namespace

bool persist_fp4_plan(PersistFp4Stage* stages, int count, int blocks) {
  if (!stages || count < 1 || blocks < 1) return false;
  const int64_t warps = int64_t(blocks) * W;
  for (int s = 0; s < count; ++s) {
    PersistFp4Stage& p = stages[s];
    const Fp4Tiled& w = p.w;
    const auto misaligned = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15u) != 0; };
    if (!w.present() || w.pairing != Fp4Pairing::Plain || w.rows < 1 || w.cols < kFp4GroupCols ||
        w.cols % kFp4GroupCols != 0 || !p.x || !p.y || misaligned(w.codes) || misaligned(w.scales) || misaligned(p.x))
      return false;
    const int64_t tiles = w.tiles(), kgs = w.kgroups();
    int64_t best = -1, best_kg = 0, best_sp = 0;
    for (int64_t sp = (kgs + kPersistMaxKgPer - 1) / kPersistMaxKgPer; sp <= std::min<int64_t>(kgs, 64); ++sp) {
      int64_t kg = 0, real = 0;
      const int64_t work = warp_work(tiles, kgs, sp, warps, &kg, &real);
      if (kg <= kPersistMaxKgPer && (best < 0 || work < best)) best = work, best_kg = kg, best_sp = real;
    }
    if (best < 0) return false;
    p.kg_per = int(best_kg);
    p.splits = int(best_sp);
    p.units = tiles * best_sp;
  }
  return true;
}

PersistFp4Sizes persist_fp4_sizes(const PersistFp4Stage* stages, int count) {
  PersistFp4Sizes z;
  for (int s = 0; s < count; ++s) {
    const PersistFp4Stage& p = stages[s];
    z.max_kg_per = std::max(z.max_kg_per, p.kg_per);
    if (p.splits > 1) {
      z.partial_half = std::max<uint64_t>(z.partial_half, uint64_t(p.splits) * uint64_t(p.w.tiles()) * kFp4TileRows);
      z.counter_half = std::max<uint64_t>(z.counter_half, uint64_t(p.w.tiles()));
    }
  }
  return z;
}

int persist_fp4_blocks_per_sm(const PersistFp4Sizes& sizes) {
#ifdef QWEN35_CUDA_EMU
  (void)sizes;
  return 1;
#else
  const size_t smem = smem_bytes(sizes.max_kg_per);
  if (allow_dynamic_smem(persist_fp4_kernel, smem) != cudaSuccess) return 0;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, persist_fp4_kernel, W * kWarp, smem) != cudaSuccess) return 0;
  return n;
#endif
}

cudaError_t persist_fp4(const PersistFp4Args& a, int blocks, cudaStream_t stream) {
  if (!a.stages || a.count < 1 || blocks < 1 || !a.done || !a.fault || a.sizes.max_kg_per < 1 ||
      a.sizes.max_kg_per > kPersistMaxKgPer || (a.sizes.partial_half && (!a.partial || !a.counters)))
    return cudaErrorInvalidValue;
  static SmemOptIn opt_in;
  const size_t smem = smem_bytes(a.sizes.max_kg_per);
  if (const cudaError_t e = opt_in.ensure(persist_fp4_kernel, smem); e != cudaSuccess) return e;
  // The counters start at zero (the kernel leaves them there too, unless a
  // wait gave up and the stages ran out of order).
  if (const cudaError_t e = cudaMemsetAsync(a.done, 0, size_t(a.count) * kPersistDoneStride * sizeof(int), stream);
      e != cudaSuccess)
    return e;
  if (a.sizes.counter_half) {
    const cudaError_t e = cudaMemsetAsync(a.counters, 0, 2 * a.sizes.counter_half * sizeof(int), stream);
    if (e != cudaSuccess) return e;
  }
  return launch(persist_fp4_kernel, dim3(unsigned(blocks)), dim3(W * kWarp), smem, stream, a);
}

}  // namespace qwen35::cuda
