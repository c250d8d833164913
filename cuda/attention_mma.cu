// Tensor-core attention for batches (see attention.h: attention_mma).
//
// Flash attention on mma.sync m16n8k16 (F16 x F16 -> F32; fragment mapping
// in tc_common.cuh). A block of kFlashWarps warps takes kFlashRows query rows of
// one head (16 per warp) and walks key tiles of kFlashKeys keys through shared
// memory; each warp keeps, for its rows g and g+8, the running maximum m,
// the sum l (a partial per lane, added over the row's four lanes at the end)
// and the unnormalized output in its accumulators (online softmax, as the
// F32 kernels):
//   scores  S = Q K^T: the queries are split into F16 hi + lo parts (q = hi
//           + lo to about 22 bits) and the cache keys are F16, so two mma per
//           step give the products to F32 precision; scaled and masked in F32;
//   values  O += P V: the probabilities come straight from the score
//           accumulators (the D layout of two 8-key tiles is the A layout of
//           one 16-key step), again as hi + lo; the values are transposed
//           into shared memory so a B fragment is one 32-bit load.
// Row strides are padded by 8 halves: the fragment loads of a warp fall on
// 32 distinct banks. Keys past the last one the block's rows see are loaded
// as zeros and masked; a warp skips the tiles none of its rows sees.
#include "attention.h"
#include "common.cuh"
#include "launch.cuh"
#include "flash_mma.cuh"

namespace qwen35::cuda {

namespace {

template <int DH>
struct MmaLayout {  // offsets in halves
  static constexpr int QS = flash_row_stride(DH);
  static constexpr int VS = kFlashVtStride;
  static constexpr int qh = 0;
  static constexpr int ql = kFlashRows * QS;
  static constexpr int k = 2 * kFlashRows * QS;
  static constexpr int vt = k + kFlashKeys * QS;
  static constexpr size_t bytes = size_t(vt + DH * VS) * sizeof(uint16_t);
};

template <int DH>
__global__ void __launch_bounds__(kFlashWarps * kWarp) attention_mma_kernel(AttnArgs a) {
  using L = MmaLayout<DH>;
  constexpr int QS = L::QS, VS = L::VS, NT = kFlashKeys / 8, DT = DH / 8;
  uint16_t* smem = dynamic_smem<uint16_t>();
  uint16_t* sqh = smem + L::qh;  // [kFlashRows, QS] queries, F16 hi parts
  uint16_t* sql = smem + L::ql;  // [kFlashRows, QS] lo parts
  uint16_t* sk = smem + L::k;    // [kFlashKeys, QS] keys
  uint16_t* svt = smem + L::vt;  // [DH, VS] values, transposed
  pdl_prologue();
  const int tid = threadIdx.x, warp = tid / kWarp, lane = tid % kWarp, g = lane >> 2, t = lane & 3;
  const int64_t h = blockIdx.x, Hq = a.n_head, kvh = h / (Hq / a.n_head_kv), kvd = a.n_head_kv * DH;
  const int64_t t0 = (int64_t(gridDim.y) - 1 - blockIdx.y) * kFlashRows;  // the longest tiles start first
  const int64_t n_past = *a.n_past;
  const int64_t kv_end = n_past + min(t0 + kFlashRows, a.n);  // keys [0, kv_end) are seen by some row

  for (int e = tid; e < kFlashRows * DH / 4; e += blockDim.x) {
    const int r = e / (DH / 4), c = 4 * (e % (DH / 4));
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t0 + r < a.n) v = *reinterpret_cast<const float4*>(a.q + (t0 + r) * Hq * DH + h * DH + c);
    uint32_t h0, l0, h1, l1;
    split_f16x2(v.x, v.y, h0, l0);
    split_f16x2(v.z, v.w, h1, l1);
    *reinterpret_cast<uint2*>(sqh + r * QS + c) = make_uint2(h0, h1);
    *reinterpret_cast<uint2*>(sql + r * QS + c) = make_uint2(l0, l1);
  }

  // This lane's rows (tile rows 16*warp + g and + 8) and the last key each
  // sees; rows past the batch act as the last row (their results are not
  // written).
  const int r0 = 16 * warp + g;
  int64_t last[2];
  for (int hr = 0; hr < 2; ++hr) last[hr] = n_past + min(t0 + r0 + 8 * hr, a.n - 1);
  const int64_t warp_last = n_past + min(t0 + 16 * warp + 15, a.n - 1);
  float o[DT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;

  for (int64_t j0 = 0; j0 < kv_end; j0 += kFlashKeys) {
    __syncthreads();  // the previous tile is no longer read (and the queries are stored)
    for (int e = tid; e < kFlashKeys * DH / 8; e += blockDim.x) {
      const int r = e / (DH / 8), c = 8 * (e % (DH / 8));
      const int64_t key = j0 + r;
      uint4 kw = make_uint4(0, 0, 0, 0), vw = make_uint4(0, 0, 0, 0);
      if (key < kv_end) {
        kw = *reinterpret_cast<const uint4*>(a.k_cache + key * kvd + kvh * DH + c);
        vw = *reinterpret_cast<const uint4*>(a.v_cache + key * kvd + kvh * DH + c);
      }
      *reinterpret_cast<uint4*>(sk + r * QS + c) = kw;
      const uint32_t vv[4] = {vw.x, vw.y, vw.z, vw.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        svt[(c + 2 * i) * VS + r] = uint16_t(vv[i] & 0xFFFFu);
        svt[(c + 2 * i + 1) * VS + r] = uint16_t(vv[i] >> 16);
      }
    }
    __syncthreads();
    if (j0 > warp_last) continue;  // no row of this warp sees these keys

    // Scores of rows g, g+8 (accumulators e < 2, e >= 2) and keys j0 + 8nt + 2t + e%2.
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll 4
    for (int ks = 0; ks < DH / 16; ++ks) {
      const int col = 16 * ks + 2 * t;
      uint32_t ah[4], al[4];
      load_a_frag(sqh + r0 * QS + col, QS, ah);
      load_a_frag(sql + r0 * QS + col, QS, al);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint16_t* kp = sk + (8 * nt + g) * QS + col;
        const uint32_t b0 = ld_pair(kp), b1 = ld_pair(kp + 8);
        mma_f16_acc(s[nt], ah, b0, b1);
        mma_f16_acc(s[nt], al, b0, b1);
      }
    }

    // Online softmax per row (flash_mma.cuh): keys past a row's last are masked.
    online_softmax_tile<NT, DT>(
        s, a.scale, [&](int hr, int nt, int e) { return j0 + 8 * nt + 2 * t + e > last[hr]; }, m, l, o);

    // O += P V over the tile's keys, 16 per step.
#pragma unroll
    for (int kc = 0; kc < NT / 2; ++kc) {
      uint32_t ph[4], pl[4];
      p_frags<NT>(s, kc, ph, pl);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        const uint16_t* vp = svt + (8 * dt + g) * VS + 16 * kc + 2 * t;
        const uint32_t b0 = ld_pair(vp), b1 = ld_pair(vp + 8);
        mma_f16_acc(o[dt], ph, b0, b1);
        mma_f16_acc(o[dt], pl, b0, b1);
      }
    }
  }

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const float lt = finish_row_sum(l[hr]);
    const int64_t row = t0 + r0 + 8 * hr;
    if (row >= a.n) continue;
    const float inv = 1.0f / lt;
    const float* gate = a.gate + row * a.ldgate + h * a.gate_stride;
    float* out = a.o + row * Hq * DH + h * DH;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      const int d = 8 * dt + 2 * t;
      out[d] = o[dt][2 * hr] * inv * sigmoid_f(gate[d]);
      out[d + 1] = o[dt][2 * hr + 1] * inv * sigmoid_f(gate[d + 1]);
    }
  }
}

template <int DH>
cudaError_t launch_mma(const AttnArgs& a, cudaStream_t stream) {
  using L = MmaLayout<DH>;
  if (L::bytes > max_dynamic_smem()) return cudaErrorNotSupported;
  const cudaError_t e = allow_dynamic_smem(attention_mma_kernel<DH>, L::bytes);
  if (e != cudaSuccess) return e;
  const dim3 grid(unsigned(a.n_head), ceil_div(a.n, kFlashRows));
  return launch(attention_mma_kernel<DH>, grid, dim3(kFlashWarps * kWarp), L::bytes, stream, a);
}

}  // namespace

bool attention_mma_supported(int64_t head_dim) {
  switch (head_dim) {
    case 64: return MmaLayout<64>::bytes <= max_dynamic_smem();
    case 128: return MmaLayout<128>::bytes <= max_dynamic_smem();
    case 256: return MmaLayout<256>::bytes <= max_dynamic_smem();
    default: return false;
  }
}

cudaError_t attention_mma(const AttnArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  if (a.n_head % a.n_head_kv != 0) return cudaErrorInvalidValue;
  switch (a.head_dim) {
    case 64: return launch_mma<64>(a, stream);
    case 128: return launch_mma<128>(a, stream);
    case 256: return launch_mma<256>(a, stream);
    default: return cudaErrorNotSupported;
  }
}

}  // namespace qwen35::cuda
