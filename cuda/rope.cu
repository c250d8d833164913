// q/k norm + RoPE + KV cache write (see rope.h).
#include "launch.cuh"
#include "rope.cuh"

namespace qwen35::cuda {

namespace {

constexpr int kRopeThreads = 128;

// Block (t, job): job < Hq is query head job, then Hkv key heads, then Hkv
// value heads.
__global__ void __launch_bounds__(kRopeThreads) qkv_norm_rope_kernel(QkvRopeArgs a) {
  pdl_prologue();
  __shared__ float buf[kMaxHeadDim];
  __shared__ float red[32];
  const int64_t t = blockIdx.x;
  const int64_t job = blockIdx.y;
  const int64_t Dh = a.head_dim, Hq = a.n_head, Hkv = a.n_head_kv;
  const int64_t kvd = Hkv * Dh;
  const int64_t row = int64_t(*a.n_past) + t;

  if (job >= Hq + Hkv) {  // value head: F32 -> F16 copy into the cache
    const int64_t g = job - Hq - Hkv;
    const float* src = a.v + t * a.ldv + g * Dh;
    uint16_t* dst = a.v_cache + row * kvd + g * Dh;
    for (int64_t i = threadIdx.x; i < Dh; i += blockDim.x) dst[i] = __half_as_ushort(__float2half_rn(src[i]));
    return;
  }
  const bool is_q = job < Hq;
  const float* src = is_q ? a.qg + t * a.ldqg + job * 2 * Dh : a.k + t * a.ldk + (job - Hq) * Dh;
  head_rmsnorm(src, is_q ? a.q_norm : a.k_norm, Dh, a.eps, buf, red);
  const int32_t* pos = a.pos + 3 * t;
  const float* cs = a.rope_cs ? a.rope_cs + t * a.rope.n_rot : nullptr;
  for (int64_t i = threadIdx.x; i < Dh; i += blockDim.x) {
    const float out = rope_element(buf, i, pos, a.rope, cs);
    if (is_q) a.q_out[t * Hq * Dh + job * Dh + i] = out;
    else a.k_cache[row * kvd + (job - Hq) * Dh + i] = __half_as_ushort(__float2half_rn(out));
  }
}

}  // namespace

cudaError_t qkv_norm_rope(const QkvRopeArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  if (a.head_dim > kMaxHeadDim || a.rope.n_rot > a.head_dim) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(a.n), unsigned(a.n_head + 2 * a.n_head_kv));
  return launch(qkv_norm_rope_kernel, dim3(grid), dim3(kRopeThreads), 0, stream, a);
}

}  // namespace qwen35::cuda
