// Device helpers of the tensor-core decode kernels (matvec_fp4.cu,
// matvec_q6k.cu): the m16n8k16 instruction, streaming loads, and the
// activation prologue of the streaming kernels. Included by .cu files only.
//
// Fragment mapping of mma.sync m16n8k16 (row.col, F16 inputs, F32
// accumulators), lane = 4g + t: A registers hold rows g and g+8 at columns
// 2t, 2t+1, 2t+8, 2t+9 of the 16-column k-step; B holds column g (one
// activation row) at the same four k; D holds rows g, g+8 at columns 2t,
// 2t+1 (activation rows 2t and 2t+1).
#pragma once

#include <cuda_fp8.h>

#ifdef QWEN35_CUDA_EMU
#include <atomic>
#endif

#include "common.cuh"
#include "fp4_tiled.h"
#include "matmul.h"

namespace qwen35::cuda {

#ifdef QWEN35_CUDA_EMU
// The emulation (tests/emu) of mma.sync m16n8k(8E) with E elements a
// register (F16: 2, E4M3: 4): the warp's fragments are gathered and each
// lane forms its four results from the fragment tables (k within a half of
// 4E: lane 4g + q holds E consecutive k from E q; A rows g, g+8; B column
// g), summing the exact products in double. value(reg, i): element i of a
// register, as a float.
template <int E, typename Value>
__device__ __forceinline__ void emu_mma(float* d, const uint32_t* a, uint32_t b0, uint32_t b1, Value value) {
  struct Frag {
    uint32_t a[4], b[2];
  };
  const Frag mine = {{a[0], a[1], a[2], a[3]}, {b0, b1}};
  Frag all[32];
  ::qwen35::emu::warp_allgather(&mine, sizeof mine, all);
  const int lane = ::qwen35::emu::lane_id(), g = lane >> 2, t = lane & 3;
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e >> 1), c = 2 * t + (e & 1);
    double s = 0;
    for (int k = 0; k < 8 * E; ++k) {
      const int q = (k % (4 * E)) / E, half = k / (4 * E), i = k % E;  // lane group, register pair, element
      const float av = value(all[(r & 7) * 4 + q].a[(r >> 3) + 2 * half], i);
      const float bv = value(all[c * 4 + q].b[half], i);
      s += double(av) * double(bv);
    }
    d[e] = float(s);
  }
}
// (The hardware keeps at least F32 precision.)
__device__ __forceinline__ void mma_f16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  emu_mma<2>(d, a, b0, b1,
             [](uint32_t reg, int i) { return __half2float(__ushort_as_half(uint16_t(reg >> (16 * i)))); });
}
#else
__device__ __forceinline__ void mma_f16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
}
#endif

// d += A B (the accumulating form: one instruction on the GPU).
#ifdef QWEN35_CUDA_EMU
__device__ __forceinline__ void mma_f16_acc(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  float p[4];
  mma_f16(p, a, b0, b1);
  for (int e = 0; e < 4; ++e) d[e] += p[e];
}
#else
__device__ __forceinline__ void mma_f16_acc(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

// mma.sync m16n8k32 with E4M3 inputs and F32 accumulators (sm_89 and
// later; the FP8 arrangement of fp4_tiled.h), d = A B: lane = 4g + c holds
// A rows g (registers 0, 2) and g+8 (1, 3) at columns 4c..4c+3 (registers
// 0-1) and 16+4c.. (2-3), one byte per column; B column g at rows 4c..4c+3
// (b0) and 16+4c.. (b1); D as m16n8k16's.
#ifdef QWEN35_CUDA_EMU
// (Exact F32 sums: the hardware's FP8 accumulation may be narrower.)
__device__ __forceinline__ void mma_e4m3(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  emu_mma<4>(d, a, b0, b1, [](uint32_t reg, int i) {
    const __half_raw h = __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t((reg >> (8 * i)) & 0xFFu), __NV_E4M3);
    return __half2float(__half(h));
  });
}
#else
__device__ __forceinline__ void mma_e4m3(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
#else
  d[0] = d[1] = d[2] = d[3] = 0.0f;  // (never launched below sm_89: no FP8 copy of the codes is made there)
#endif
}
#endif

// Two E4M3 bytes (low 16 bits) -> floats.
__device__ __forceinline__ float2 e4m3x2_to_float2(uint32_t pair) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(pair & 0xFFFFu), __NV_E4M3);
  return __half22float2(*reinterpret_cast<const __half2*>(&h));
}

// 2^e as a float for |e| < 126.
__device__ __forceinline__ float pow2f(int e) { return __int_as_float((e + 127) << 23); }

// Weight loads: read once per step, so they do not displace the small,
// reused data in L1 (read-only path, no L1 allocation). Plain C++ asm (not
// volatile): the compiler may move them, which is fine for constant data.
#ifdef QWEN35_CUDA_EMU
template <typename T>
__device__ __forceinline__ T ld_stream(const T* p) {
  return *p;
}
#else
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}
__device__ __forceinline__ uint2 ld_stream(const uint2* p) {
  uint2 v;
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}
__device__ __forceinline__ uint32_t ld_stream(const uint32_t* p) {
  uint32_t v;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}
#endif

// Bulk copies global -> shared completing on an mbarrier (sm_90+, the copy
// engine of cp.async.bulk): one instruction moves a contiguous run of bytes
// (16-byte aligned, a multiple of 16), so a warp can keep many kilobytes of
// weights in flight without holding them in registers. Used by the NVFP4
// decode kernel 3. `bar` and `dst` are shared-state-space addresses.
// (The emulation: offsets into the block's dynamic shared memory, where the
// kernels keep their barriers and stages; copies land at once and the
// barrier operations do nothing.)
#ifdef QWEN35_CUDA_EMU
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return uint32_t(static_cast<const unsigned char*>(p) - static_cast<const unsigned char*>(::qwen35::emu::dynamic_smem()));
}
#else
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }
#endif

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
  // Make the initialized barrier visible to the copy engine (async proxy).
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

// One arrival that also announces `bytes` more to come from bulk copies.
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
#endif
}

__device__ __forceinline__ void bulk_copy_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
#ifdef QWEN35_CUDA_EMU
  std::memcpy(static_cast<unsigned char*>(::qwen35::emu::dynamic_smem()) + dst, src, bytes);
  (void)bar;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
#endif
}

// Asks L2 to fetch `bytes` (a multiple of 16, 16-byte aligned) at src; no
// completion to wait for (a hint: sm_90+, nothing in the emulation).
__device__ __forceinline__ void bulk_prefetch_l2(const void* src, uint32_t bytes) {
#if !defined(QWEN35_CUDA_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(src), "r"(bytes) : "memory");
#else
  (void)src;
  (void)bytes;
#endif
}

// Asks L2 for the 128-byte line holding p: no register, nothing to wait
// for (a hint; the emulation reads the byte, so that a wrong address shows).
__device__ __forceinline__ void prefetch_l2(const void* p) {
#if defined(QWEN35_CUDA_EMU)
  (void)*static_cast<const volatile char*>(p);
#elif defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
  (void)p;
#endif
}

// Asks this multiprocessor's L1 for the 128-byte line holding p: no
// register, nothing to wait for (a hint; nothing in the emulation).
__device__ __forceinline__ void prefetch_l1(const void* p) {
#if !defined(QWEN35_CUDA_EMU) && defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
#else
  (void)p;
#endif
}

// The global timer in nanoseconds, for bounded waits and timing probes (in
// the emulation a count of the calls: it orders what the emulated threads
// did, and the waits there count polls instead).
__device__ __forceinline__ uint64_t global_ns() {
#ifdef QWEN35_CUDA_EMU
  static std::atomic<uint64_t> calls{0};
  return ++calls;
#else
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
#endif
}

// A load with acquire semantics at GPU scope: a counter another block
// published with a release (or a fence and an atomic).
__device__ __forceinline__ int ld_acquire(const int* p) {
#ifdef QWEN35_CUDA_EMU
  return *p;
#else
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
#endif
}

// Orders this thread's earlier shared-memory accesses (generic proxy) before
// its later bulk copies into the same bytes.
__device__ __forceinline__ void fence_proxy_async_smem() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// Waits until the barrier's phase with the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
#endif
}

// PDL halves (launch.cuh's pdl_prologue is both): the streaming kernels
// issue their first weight loads before waiting for the previous kernel
// (weights are never written by a kernel), so those loads overlap its end.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
__device__ __forceinline__ void pdl_wait_and_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// One 16-column chunk of an activation row as the streaming kernels keep
// it (fp4_tiled.h): v times 2^-e in F16, the pairs in tc_pair_col order, in
// the two 16-byte words at dst; e = tc_chunk_exponent(amax) is returned.
__device__ __forceinline__ int tc_store_chunk(const float* v, float amax, uint16_t* dst) {
  const int e = tc_chunk_exponent(amax);
  const float inv = pow2f(-e);
  uint32_t h[8];
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    const int k0 = tc_pair_col(q);
    const __half2 p = __floats2half2_rn(v[k0] * inv, v[k0 + 1] * inv);
    h[q] = *reinterpret_cast<const uint32_t*>(&p);
  }
  uint4* d = reinterpret_cast<uint4*>(dst);
  d[0] = make_uint4(h[0], h[1], h[2], h[3]);
  d[1] = make_uint4(h[4], h[5], h[6], h[7]);
  return e;
}

// tc_store_chunk for the FP8 arrangement (fp4_tiled.h): sub-block blk of a
// chunk pair, v times 2^-e with e = tc_chunk_exponent(amax) + 7 (so the
// chunk lies below 2^8, E4M3's largest binade), as three E4M3 terms (each
// the rounding of what the ones before leave: differences of floats within
// a factor of two, so exact) into its half of the pair's B fragment (dst:
// 256 bytes; this half's lanes 16*blk .. 16*blk + 15, the other register of
// each lane and the fourth column zero). Returns e.
// kCompact (the persistent kernel, whose warps each keep a slice): only the
// terms, 48 bytes at dst (term t's 16 columns at 16 t); the lanes put the
// zeros in themselves (fp8_kgroup).
template <bool kCompact = false>
__device__ __forceinline__ int tc_store_chunk8(const float* v, float amax, int blk, uint8_t* dst) {
  const int e = amax > 0.0f ? tc_chunk_exponent(amax) + 7 : 0;
  const float inv = pow2f(-e);
  float r[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) r[i] = v[i] * inv;
  uint32_t tw[4][4] = {};  // [term][column quad]; term 3 stays zero
#pragma unroll
  for (int term = 0; term < 3; ++term) {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const __nv_fp8x2_storage_t p =
          __nv_cvt_float2_to_fp8x2(make_float2(r[2 * q], r[2 * q + 1]), __NV_SATFINITE, __NV_E4M3);
      if (term < 2) {
        const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(p, __NV_E4M3);
        const float2 back = __half22float2(*reinterpret_cast<const __half2*>(&h));
        r[2 * q] -= back.x;
        r[2 * q + 1] -= back.y;
      }
      tw[term][q >> 1] |= uint32_t(p) << (16 * (q & 1));
    }
  }
  if constexpr (kCompact) {
    uint4* d = reinterpret_cast<uint4*>(dst);
#pragma unroll
    for (int term = 0; term < 3; ++term) d[term] = make_uint4(tw[term][0], tw[term][1], tw[term][2], tw[term][3]);
    return e;
  }
  uint4* d = reinterpret_cast<uint4*>(dst + 128 * blk);
#pragma unroll
  for (int term = 0; term < 4; ++term) {
    // Lanes 16*blk + 4*term + (0..3), 8 bytes each: the term in register blk.
    d[2 * term] = blk == 0 ? make_uint4(tw[term][0], 0u, tw[term][1], 0u) : make_uint4(0u, tw[term][0], 0u, tw[term][1]);
    d[2 * term + 1] = blk == 0 ? make_uint4(tw[term][2], 0u, tw[term][3], 0u) : make_uint4(0u, tw[term][2], 0u, tw[term][3]);
  }
  return e;
}

// Activation rows of a streaming matvec and how they are prepared.
struct TcInput {
  const float* x = nullptr;       // [n, ldx]
  int64_t ldx = 0;
  int n = 1;
  const float* norm = nullptr;    // optional per-column weights (the RMS norm's; its 1/rms is applied to the result)
  // Optional gated RMSNorm of the delta net: column c of head h = c / gate_dv
  // becomes x_c * rms_h^-1 * gate_w[c % gate_dv] * silu(gate_z[c]); rms_h^-1
  // goes into the chunk multipliers. gate_dv / 16 must be a power of two <= 32.
  const float* gate_z = nullptr;  // [n, ldz]
  int64_t ldz = 0;
  const float* gate_w = nullptr;
  int gate_dv = 0;
  float eps = 1e-6f;
};

// The 16 values of activation row j at columns col .. col + 15 as the
// prologue converts them: x times the RMS norm's weights, or, gated, times
// gate_w[col % gate_dv] * silu(z); *ss += the squares of x itself (the
// gated norm's head statistic, added up by the caller). kL2: x and z
// through L2 only.
template <bool kL2>
__device__ __forceinline__ void tc_chunk_values(const TcInput& in, int j, int64_t col, float* v, float* ss) {
  const float4* xp = reinterpret_cast<const float4*>(in.x + j * in.ldx + col);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float4 f = kL2 ? __ldcg(xp + i) : xp[i];
    v[4 * i] = f.x;
    v[4 * i + 1] = f.y;
    v[4 * i + 2] = f.z;
    v[4 * i + 3] = f.w;
  }
  if (in.gate_z) {
#pragma unroll
    for (int i = 0; i < 16; ++i) *ss = fmaf(v[i], v[i], *ss);
    const float4* zp = reinterpret_cast<const float4*>(in.gate_z + j * in.ldz + col);
    const float4* wp = reinterpret_cast<const float4*>(in.gate_w + col % in.gate_dv);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 z = kL2 ? __ldcg(zp + i) : zp[i], gw = wp[i];
      v[4 * i] *= gw.x * silu_f(z.x);
      v[4 * i + 1] *= gw.y * silu_f(z.y);
      v[4 * i + 2] *= gw.z * silu_f(z.z);
      v[4 * i + 3] *= gw.w * silu_f(z.w);
    }
  } else if (in.norm) {
    const float4* wp = reinterpret_cast<const float4*>(in.norm + col);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 nw = wp[i];
      v[4 * i] *= nw.x;
      v[4 * i + 1] *= nw.y;
      v[4 * i + 2] *= nw.z;
      v[4 * i + 3] *= nw.w;
    }
  }
}

// The activation row whose x values lane group g loads as its B column:
// its own for g < n; row 0 for the others, whose products land in
// accumulator columns >= n that the chunk multipliers (0 for rows >= n)
// zero and nothing reads. An unconditional shared-memory load instead of a
// divergent branch per mma (for n = 1, a constant row).
__device__ __forceinline__ int tc_b_row(int g, int n) { return g < n ? g : 0; }

// Shared-memory bytes of the prologue's output for a slice of nch chunks.
__host__ __device__ constexpr size_t tc_x_bytes(int nch, int n) { return size_t(nch) * 32 * size_t(n + 1); }
// The same for the FP8 arrangement (kFp8): 128 bytes per chunk and row.
__host__ __device__ constexpr size_t tc_x8_bytes(int nch, int n) { return size_t(nch) * (128 * size_t(n) + 32); }

// Writes the slice of columns c0 .. c0 + 16*nch - 1 of every activation row:
//   xs   [nch][n][16] F16 (each chunk permuted as fp4_x_index), times 2^-e
//   mult [nch][8]     float: 2^e (times the gated norm's factor); 0 for rows >= n
// x, ldx, gate_z, ldz, norm and gate_w must allow 16-byte loads at chunk
// starts. Every thread of the block must call it (warp shuffles). The caller
// synchronizes before reading the results.
//
// kRowScale (kernel 3's lean mode): one exponent per activation row over the
// whole slice instead of per chunk (a pass for the rows' largest magnitudes,
// reduced through `rmax`, 8 ints of shared memory, then the conversion), so
// mult[c][j] is the same for every chunk c and the kernel applies it once to
// its finished sums. The gated norm's head factor is then folded into the
// values before the conversion.
// kL2: x and gate_z are read through L2 only (ld.global.cg), for rows that
// other blocks of the same launch wrote (the later stages of a chain).
// kWarp1: one warp does it all (the persistent kernel's units: every lane of
// the calling warp must call it; not with kRowScale).
// kFp8: xs holds the chunks in the FP8 arrangement (fp4_tiled.h), 1: as B
// fragments, [nch/2 pairs][n][256 bytes] (tc_store_chunk8; nch even); 2:
// compact, [nch][n][48 bytes]; and mult[c][j] is 2^(e-8): the A encoding's
// 2^-6 against F16's 2^-14, so that the kernels' finish stays the same.
template <bool kRowScale, bool kL2 = false, bool kWarp1 = false, int kFp8 = 0>
__device__ __forceinline__ void tc_load_x_impl(const TcInput& in, int64_t c0, int nch, uint16_t* xs, float* mult,
                                               int* rmax) {
  static_assert(!(kRowScale && kWarp1), "the row scale's pass is block-wide");
  static_assert(!(kRowScale && kFp8), "the FP8 arrangement scales per chunk");
  const int n = in.n, total = n * nch;
  const int hc = in.gate_z ? in.gate_dv / 16 : 1;  // chunks per head of the gated norm
  if constexpr (kRowScale) {
    if (threadIdx.x < kMatvecMaxCols) rmax[threadIdx.x] = 0;
    __syncthreads();
  }
  for (int pass = kRowScale ? 0 : 1; pass < 2; ++pass) {
  for (int base = 0; base < total; base += kWarp1 ? unsigned(kWarp) : blockDim.x) {  // the same trip count in every thread
    const int item = base + int(kWarp1 ? threadIdx.x % kWarp : threadIdx.x);
    const bool valid = item < total;
    const int j = valid ? item / nch : 0, c = valid ? item % nch : 0;
    const int64_t col = c0 + 16 * int64_t(c);
    float v[16];
    float ss = 0.0f;
    if (valid) tc_chunk_values<kL2>(in, j, col, v, &ss);
    float head_scale = 1.0f;
    if (in.gate_z) {
      // A head's chunks are hc consecutive items (slices and rows start on
      // head boundaries), i.e. hc aligned lanes of one warp.
      for (int o = 1; o < hc; o <<= 1) ss += __shfl_xor_sync(0xFFFFFFFFu, ss, o);
      head_scale = rsqrtf(ss / float(in.gate_dv) + in.eps);
    }
    if (valid) {
      if constexpr (kRowScale) {
#pragma unroll
        for (int i = 0; i < 16; ++i) v[i] *= head_scale;
      }
      float amax = 0.0f;
#pragma unroll
      for (int i = 0; i < 16; ++i) amax = fmaxf(amax, fabsf(v[i]));
      if (kRowScale && pass == 0) {
        atomicMax(rmax + j, __float_as_int(amax));  // non-negative floats order as their bits
        continue;
      }
      if constexpr (kFp8 != 0) {
        uint8_t* x8 = reinterpret_cast<uint8_t*>(xs);
        const int e = kFp8 == 2 ? tc_store_chunk8<true>(v, amax, c & 1, x8 + (size_t(c) * n + j) * 48)
                                : tc_store_chunk8(v, amax, c & 1, x8 + (size_t(c >> 1) * n + j) * 256);
        mult[c * kMatvecMaxCols + j] = pow2f(e - 8) * head_scale;
        continue;
      }
      const int e = tc_store_chunk(v, kRowScale ? __int_as_float(rmax[j]) : amax, xs + (size_t(c) * n + j) * 16);
      mult[c * kMatvecMaxCols + j] = kRowScale ? pow2f(e) : pow2f(e) * head_scale;
    }
  }
  if constexpr (kRowScale) {
    if (pass == 0) __syncthreads();
  }
  }
  for (int i = int(kWarp1 ? threadIdx.x % kWarp : threadIdx.x); i < nch * kMatvecMaxCols;
       i += kWarp1 ? unsigned(kWarp) : blockDim.x)
    if (i % kMatvecMaxCols >= n) mult[i] = 0.0f;
}

__device__ __forceinline__ void tc_load_x(const TcInput& in, int64_t c0, int nch, uint16_t* xs, float* mult) {
  tc_load_x_impl<false>(in, c0, nch, xs, mult, nullptr);
}

// Per-warp sums of squares of whole activation rows (K columns) for the RMS
// norm: ss_part[warp][j]. Every block computes them in the same order, so
// all blocks (and all split counts) get the same norm factor. kL2: as in
// tc_load_x_impl.
template <int W, bool kL2 = false>
__device__ __forceinline__ void tc_row_squares(const TcInput& in, int64_t K, float (*ss_part)[kMatvecMaxCols]) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int j = 0; j < in.n; ++j) {
    const float4* xp = reinterpret_cast<const float4*>(in.x + j * in.ldx);
    float s = 0.0f;
    // Eight loads in flight per thread (one L2 round trip for a 4,096-wide
    // row with 4 warps: the 4B's 2,560 takes 5); the sum keeps the order of
    // a plain loop over i.
    constexpr int kStride = W * kWarp, kAhead = 8;
    for (int64_t i0 = threadIdx.x; i0 < K / 4; i0 += kAhead * kStride) {
      float4 f[kAhead];
#pragma unroll
      for (int u = 0; u < kAhead; ++u)
        f[u] = i0 + u * kStride < K / 4 ? (kL2 ? __ldcg(xp + i0 + u * kStride) : xp[i0 + u * kStride])
                                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
      for (int u = 0; u < kAhead; ++u) {
        if (i0 + u * kStride < K / 4) {
          s = fmaf(f[u].x, f[u].x, s);
          s = fmaf(f[u].y, f[u].y, s);
          s = fmaf(f[u].z, f[u].z, s);
          s = fmaf(f[u].w, f[u].w, s);
        }
      }
    }
    s = warp_sum(s);
    if (lane == 0) ss_part[warp][j] = s;
  }
}

// The block's threads ask L1 for every line of the n activation rows (K
// columns), a line each: for kernel 3 with the RMS norm (tuning fp4_x_l1),
// whose slice load and whole-row sums of squares are two passes over x
// after the PDL wait, so that both wait for L2 once instead of one after
// the other.
__device__ __forceinline__ void tc_prefetch_rows_l1(const TcInput& in, int64_t K) {
  for (int j = 0; j < in.n; ++j) {
    const uintptr_t first = reinterpret_cast<uintptr_t>(in.x + j * in.ldx) & ~uintptr_t(127);
    const uintptr_t end = reinterpret_cast<uintptr_t>(in.x + j * in.ldx + K);
    for (uintptr_t p = first + uintptr_t(threadIdx.x) * 128; p < end; p += uintptr_t(blockDim.x) * 128)
      prefetch_l1(reinterpret_cast<const void*>(p));
  }
}

// 1 / rms of activation row j from tc_row_squares (after a barrier).
template <int W>
__device__ __forceinline__ float tc_rnorm(const float (*ss_part)[kMatvecMaxCols], int j, int64_t K, float eps) {
  float s = 0.0f;
#pragma unroll
  for (int w = 0; w < W; ++w) s += ss_part[w][j];
  return rsqrtf(s / float(K) + eps);
}

// Whether the prologue's 16-byte loads are aligned for these inputs.
inline bool tc_input_aligned(const TcInput& in) {
  auto al = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  bool ok = al(in.x) && in.ldx % 4 == 0;
  if (in.norm) ok = ok && al(in.norm);
  if (in.gate_z) ok = ok && al(in.gate_z) && in.ldz % 4 == 0 && al(in.gate_w) && in.gate_dv % 16 == 0;
  return ok;
}

}  // namespace qwen35::cuda
