// Vision attention on tensor cores (see vision_kernels.h:
// vision_attention_mma). The same flash-attention structure as the text
// model's attention_mma.cu (mma.sync m16n8k16, 4 warps x 16 query rows, key
// tiles of 32 in shared memory, the score accumulators reused as the A
// operand of P V), for full bidirectional attention over F32 Q, K and V:
// every operand is split into F16 hi + lo parts and each product takes three
// mma (hi x hi + hi x lo + lo x hi; lo x lo is below F32 rounding), so the
// results match the F32 kernel to rounding. Keys past n are masked; rows
// past n are not written.
#include "common.cuh"
#include "launch.cuh"
#include "flash_mma.cuh"
#include "vision_kernels.h"

namespace qwen35::cuda {

namespace {

template <int DH>
struct VmLayout {  // offsets in halves (the hi and lo parts of each tile)
  static constexpr int QS = flash_row_stride(DH);
  static constexpr int VS = kFlashVtStride;
  static constexpr int qh = 0, ql = kFlashRows * QS;
  static constexpr int kh = 2 * kFlashRows * QS, kl = kh + kFlashKeys * QS;
  static constexpr int vh = kl + kFlashKeys * QS, vl = vh + DH * VS;
  static constexpr size_t bytes = size_t(vl + DH * VS) * sizeof(uint16_t);
};

template <int DH>
__global__ void __launch_bounds__(kFlashWarps * kWarp)
    vision_attention_mma_kernel(const float* __restrict__ qkv, int64_t ld, int64_t k_offset, int64_t v_offset,
                                int64_t n, float scale, float* __restrict__ o, int64_t ldo) {
  using L = VmLayout<DH>;
  constexpr int QS = L::QS, VS = L::VS, NT = kFlashKeys / 8, DT = DH / 8;
  uint16_t* smem = dynamic_smem<uint16_t>();
  uint16_t *sqh = smem + L::qh, *sql = smem + L::ql;  // [kFlashRows, QS] scaled queries
  uint16_t *skh = smem + L::kh, *skl = smem + L::kl;  // [kFlashKeys, QS] keys
  uint16_t *svh = smem + L::vh, *svl = smem + L::vl;  // [DH, VS] values, transposed
  pdl_prologue();
  const int tid = threadIdx.x, warp = tid / kWarp, lane = tid % kWarp, g = lane >> 2, t = lane & 3;
  const int64_t q0 = int64_t(blockIdx.x) * kFlashRows, h = blockIdx.y;
  const float* qb = qkv + h * DH;
  const float* kb = qkv + k_offset + h * DH;
  const float* vb = qkv + v_offset + h * DH;

  for (int e = tid; e < kFlashRows * DH / 4; e += blockDim.x) {
    const int r = e / (DH / 4), c = 4 * (e % (DH / 4));
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (q0 + r < n) v = *reinterpret_cast<const float4*>(qb + (q0 + r) * ld + c);
    const float x[4] = {v.x * scale, v.y * scale, v.z * scale, v.w * scale};
    for (int i = 0; i < 4; ++i) split_f16(x[i], sqh[r * QS + c + i], sql[r * QS + c + i]);
  }

  const int r0 = 16 * warp + g;
  float acc[DT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;

  for (int64_t j0 = 0; j0 < n; j0 += kFlashKeys) {
    __syncthreads();  // the previous tile is no longer read (and the queries are stored)
    for (int e = tid; e < kFlashKeys * DH / 4; e += blockDim.x) {
      const int r = e / (DH / 4), c = 4 * (e % (DH / 4));
      float4 kv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vv = kv;
      if (j0 + r < n) {
        kv = *reinterpret_cast<const float4*>(kb + (j0 + r) * ld + c);
        vv = *reinterpret_cast<const float4*>(vb + (j0 + r) * ld + c);
      }
      const float kx[4] = {kv.x, kv.y, kv.z, kv.w}, vx[4] = {vv.x, vv.y, vv.z, vv.w};
      for (int i = 0; i < 4; ++i) {
        split_f16(kx[i], skh[r * QS + c + i], skl[r * QS + c + i]);
        split_f16(vx[i], svh[(c + i) * VS + r], svl[(c + i) * VS + r]);
      }
    }
    __syncthreads();

    // Scores of rows g, g+8 (accumulators e < 2, e >= 2), keys j0 + 8nt + 2t + e%2.
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks) {
      const int col = 16 * ks + 2 * t;
      uint32_t ah[4], al[4];
      load_a_frag(sqh + r0 * QS + col, QS, ah);
      load_a_frag(sql + r0 * QS + col, QS, al);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int off = (8 * nt + g) * QS + col;
        const uint32_t bh0 = ld_pair(skh + off), bh1 = ld_pair(skh + off + 8);
        const uint32_t bl0 = ld_pair(skl + off), bl1 = ld_pair(skl + off + 8);
        mma_f16_acc(s[nt], ah, bh0, bh1);
        mma_f16_acc(s[nt], ah, bl0, bl1);
        mma_f16_acc(s[nt], al, bh0, bh1);
      }
    }

    // Online softmax (flash_mma.cuh; the queries carry the scale): keys
    // past n are masked. Key 0 is in the first tile.
    online_softmax_tile<NT, DT>(
        s, 1.0f, [&](int, int nt, int e) { return j0 + 8 * nt + 2 * t + e >= n; }, m, l, acc);

    // acc += P V, 16 keys per step.
#pragma unroll
    for (int kc = 0; kc < NT / 2; ++kc) {
      uint32_t ph[4], pl[4];
      p_frags<NT>(s, kc, ph, pl);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        const int off = (8 * dt + g) * VS + 16 * kc + 2 * t;
        const uint32_t bh0 = ld_pair(svh + off), bh1 = ld_pair(svh + off + 8);
        const uint32_t bl0 = ld_pair(svl + off), bl1 = ld_pair(svl + off + 8);
        mma_f16_acc(acc[dt], ph, bh0, bh1);
        mma_f16_acc(acc[dt], ph, bl0, bl1);
        mma_f16_acc(acc[dt], pl, bh0, bh1);
      }
    }
  }

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const float lt = finish_row_sum(l[hr]);
    const int64_t row = q0 + r0 + 8 * hr;
    if (row >= n) continue;
    const float inv = 1.0f / lt;
    float* out = o + row * ldo + h * DH;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      const int d = 8 * dt + 2 * t;
      out[d] = acc[dt][2 * hr] * inv;
      out[d + 1] = acc[dt][2 * hr + 1] * inv;
    }
  }
}

template <int DH>
cudaError_t launch_vm(const float* qkv, int64_t ld, int64_t k_offset, int64_t v_offset, int64_t n, int64_t n_head,
                      float scale, float* o, int64_t ldo, cudaStream_t stream) {
  using L = VmLayout<DH>;
  if (L::bytes > max_dynamic_smem()) return cudaErrorNotSupported;
  const cudaError_t e = allow_dynamic_smem(vision_attention_mma_kernel<DH>, L::bytes);
  if (e != cudaSuccess) return e;
  return launch(vision_attention_mma_kernel<DH>, dim3(ceil_div(n, kFlashRows), unsigned(n_head)),
                dim3(kFlashWarps * kWarp), L::bytes, stream, qkv, ld, k_offset, v_offset, n, scale, o, ldo);
}

}  // namespace

cudaError_t vision_attention_mma(const float* qkv, int64_t ld, int64_t k_offset, int64_t v_offset, int64_t n,
                                 int64_t n_head, int64_t head_dim, float scale, float* o, int64_t ldo,
                                 cudaStream_t stream) {
  if (n <= 0 || n_head <= 0) return cudaSuccess;
  // float4 loads of q, k and v rows.
  if (ld % 4 != 0 || k_offset % 4 != 0 || v_offset % 4 != 0 || (reinterpret_cast<uintptr_t>(qkv) & 15u) != 0)
    return cudaErrorInvalidValue;
  switch (head_dim) {
    case 32: return launch_vm<32>(qkv, ld, k_offset, v_offset, n, n_head, scale, o, ldo, stream);
    case 64: return launch_vm<64>(qkv, ld, k_offset, v_offset, n, n_head, scale, o, ldo, stream);
    case 128: return launch_vm<128>(qkv, ld, k_offset, v_offset, n, n_head, scale, o, ldo, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace qwen35::cuda
