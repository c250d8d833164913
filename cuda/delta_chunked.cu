// Chunked gated delta rule (see delta_chunked.h).
//
// Per value head and chunk of C rows (t, s chunk-local; S the state with
// S[kappa][nu] = M[nu][kappa]):
//   A[t][s] = beta_t (k_t . k_s) e^(gam_t - gam_s)  (s < t)
//   P[t][s] = (q_t . k_s) e^(gam_t - gam_s)          (s <= t)
//   (I + A) U = beta V,  (I + A) W = beta e^gam K    (forward substitution)
//   V' = U - W S,  O = e^gam (Q S) + P V',  S <- e^gam_C S + (e^(gam_C - gam) K)^T V'
// The prep kernel computes Q, Kd = e^(gam_C - gam) K, W, U, P and e^gam for
// every (head, chunk) at once; the scan kernel applies them to the state
// chunk by chunk. Both are plain CUDA-core F32 (the emulation in tests/emu
// runs them).
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "delta_chunked.h"
#include "launch.cuh"

namespace qwen35::cuda {

namespace {

constexpr int C = int(kDeltaChunkRows);
constexpr int kPrepThreads = 256;
constexpr int kScanThreads = 256;
constexpr int kCols = 32;  // value dims per scan block

// Scratch of one (head, chunk): Q [C][DK], Kd [C][DK], W [C][DK], U [C][dv],
// P [C][C], eg [C].
__host__ __device__ inline int64_t chunk_floats(int64_t dk, int64_t dv) { return 3 * C * dk + C * dv + C * C + C; }

template <int DK>
__global__ void __launch_bounds__(kPrepThreads) delta_chunk_prep_kernel(DeltaNetArgs p, float* scratch) {
  pdl_prologue();
  constexpr int LD = DK + 4;  // padded rows: float4 reads of different rows hit different banks
  float* smem = dynamic_smem<float>();
  float* Qr = smem;             // [C][LD] q, then q * rq (scaled, normalized)
  float* Kr = Qr + C * LD;      // [C][LD] k, then k * rk
  float* A = Kr + C * LD;       // [C][C]
  float* P = A + C * C;         // [C][C]
  float* X = P + C * C;         // [C][dv + DK]: U columns, then W columns
  __shared__ double s_egr[C];
  __shared__ float s_rq[C], s_rk[C], s_beta[C], s_eg[C];

  const int64_t j = blockIdx.x, chunk = blockIdx.y, c0 = chunk * C;
  const int64_t Hk = p.Hk, dv = p.dv, kh = j % Hk;
  const int L = int(min(int64_t(C), p.n - c0));
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, n_warps = blockDim.x / kWarp;
  float* out = scratch + (j * ((p.n + C - 1) / C) + chunk) * chunk_floats(DK, dv);
  float* gQ = out;
  float* gKd = gQ + C * DK;
  float* gW = gKd + C * DK;
  float* gU = gW + C * DK;
  float* gP = gU + C * dv;
  float* gEg = gP + C * C;

  for (int e = tid; e < L * DK; e += blockDim.x) {
    const int t = e / DK, i = e % DK;
    const float* row = p.uc + (c0 + t) * p.ldu;
    Qr[t * LD + i] = row[kh * DK + i];
    Kr[t * LD + i] = row[Hk * DK + kh * DK + i];
  }
  __syncthreads();
  // Norms and gates, a warp per row.
  const float qscale = rsqrtf(float(DK));
  const float a_log = p.ssm_a[j], dtb = p.dt_bias[j];
  for (int t = warp; t < L; t += n_warps) {
    float sq = 0.0f, sk = 0.0f;
    for (int i = lane; i < DK; i += kWarp) {
      sq = fmaf(Qr[t * LD + i], Qr[t * LD + i], sq);
      sk = fmaf(Kr[t * LD + i], Kr[t * LD + i], sk);
    }
    sq = warp_sum(sq);
    sk = warp_sum(sk);
    if (lane == 0) {
      s_rq[t] = qscale / fmaxf(sqrtf(sq), p.eps);
      s_rk[t] = 1.0f / fmaxf(sqrtf(sk), p.eps);
      s_beta[t] = sigmoid_f(p.b[(c0 + t) * p.ldb + j]);
      s_egr[t] = exp(double(a_log * softplus_f(p.a[(c0 + t) * p.lda + j] + dtb)));
    }
  }
  __syncthreads();
  if (tid == 0) {  // e^gam_t: decay from the chunk start through row t
    double prod = 1.0;
    for (int t = 0; t < L; ++t) {
      prod *= s_egr[t];
      s_eg[t] = float(prod);
    }
  }
  for (int e = tid; e < L * DK; e += blockDim.x) {
    const int t = e / DK, i = e % DK;
    Qr[t * LD + i] *= s_rq[t];
    Kr[t * LD + i] *= s_rk[t];
  }
  __syncthreads();

  // K K^T (s < t) and Q K^T (s <= t): 4x4 tiles, one per thread.
  {
    const int t0 = (tid / 16) * 4, s0 = (tid % 16) * 4;
    float ak[4][4] = {}, pq[4][4] = {};
    if (s0 <= t0 + 3 && t0 < L && s0 < L) {
      for (int kk = 0; kk < DK; kk += 4) {
        float4 kt[4], qt[4], ks[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          kt[r] = *reinterpret_cast<const float4*>(Kr + (t0 + r) * LD + kk);
          qt[r] = *reinterpret_cast<const float4*>(Qr + (t0 + r) * LD + kk);
          ks[r] = *reinterpret_cast<const float4*>(Kr + (s0 + r) * LD + kk);
        }
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            ak[r][c] = fmaf(kt[r].x, ks[c].x, ak[r][c]);
            ak[r][c] = fmaf(kt[r].y, ks[c].y, ak[r][c]);
            ak[r][c] = fmaf(kt[r].z, ks[c].z, ak[r][c]);
            ak[r][c] = fmaf(kt[r].w, ks[c].w, ak[r][c]);
            pq[r][c] = fmaf(qt[r].x, ks[c].x, pq[r][c]);
            pq[r][c] = fmaf(qt[r].y, ks[c].y, pq[r][c]);
            pq[r][c] = fmaf(qt[r].z, ks[c].z, pq[r][c]);
            pq[r][c] = fmaf(qt[r].w, ks[c].w, pq[r][c]);
          }
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int t = t0 + r, s = s0 + c;
        A[t * C + s] = s < t && t < L ? ak[r][c] : 0.0f;
        P[t * C + s] = s <= t && t < L ? pq[r][c] : 0.0f;
      }
  }
  __syncthreads();
  // The decays e^(gam_t - gam_s) as products of the rows' factors (from
  // s = t down), as the CPU's chunked form forms them; a thread per row.
  if (tid < L) {
    const int t = tid;
    double dec = 1.0;
    for (int s = t; s >= 0; --s) {
      A[t * C + s] *= s_beta[t] * float(dec);
      P[t * C + s] *= float(dec);
      dec *= s_egr[s];
    }
  }
  __syncthreads();
  for (int e = tid; e < C * C; e += blockDim.x) gP[e] = P[e];
  for (int t = tid; t < C; t += blockDim.x) gEg[t] = t < L ? s_eg[t] : 0.0f;
  // Forward substitution, a thread per column of [U | W]:
  // x_t = b_t - sum_{s<t} A[t][s] x_s.
  const int ncol = int(dv) + DK;
  for (int col = tid; col < ncol; col += blockDim.x) {
    const bool is_u = col < dv;
    for (int t = 0; t < L; ++t) {
      float x0 = is_u ? s_beta[t] * p.uc[(c0 + t) * p.ldu + 2 * Hk * DK + j * dv + col]
                      : (s_beta[t] * s_eg[t]) * Kr[t * LD + (col - int(dv))];
      // Two interleaved sums halve the dependency chain.
      float x1 = 0.0f;
      int s = 0;
      for (; s + 1 < t; s += 2) {
        x0 = fmaf(-A[t * C + s], X[s * ncol + col], x0);
        x1 = fmaf(-A[t * C + s + 1], X[(s + 1) * ncol + col], x1);
      }
      if (s < t) x0 = fmaf(-A[t * C + s], X[s * ncol + col], x0);
      const float x = x0 + x1;
      X[t * ncol + col] = x;
      if (is_u) gU[t * dv + col] = x;
      else gW[t * DK + (col - int(dv))] = x;
    }
  }
  // Q and Kd = e^(gam_L - gam_s) k_s for the scan.
  __syncthreads();
  if (tid < L) {  // e^(gam_L - gam_s) of row s = tid (into s_rk: the norms are applied)
    double dec = 1.0;
    for (int s = L - 1; s >= 0; --s) {
      if (s == tid) s_rk[s] = float(dec);
      dec *= s_egr[s];
    }
  }
  __syncthreads();
  for (int e = tid; e < L * DK / 4; e += blockDim.x) {  // float4 groups
    const int t = e / (DK / 4), i = 4 * (e % (DK / 4));
    const float4 q = *reinterpret_cast<const float4*>(Qr + t * LD + i);
    float4 k = *reinterpret_cast<const float4*>(Kr + t * LD + i);
    const float f = s_rk[t];
    k.x *= f;
    k.y *= f;
    k.z *= f;
    k.w *= f;
    *reinterpret_cast<float4*>(gQ + t * DK + i) = q;
    *reinterpret_cast<float4*>(gKd + t * DK + i) = k;
  }
}

template <int DK>
__global__ void __launch_bounds__(kScanThreads) delta_chunk_scan_kernel(DeltaNetArgs p, const float* scratch) {
  constexpr int LD = DK + 4;
  float* smem = dynamic_smem<float>();
  float* S = smem;                 // [DK][kCols]: columns v0.. of the state
  float* Vp = S + DK * kCols;      // [C][kCols]
  float* Wc = Vp + C * kCols;      // [C][LD]
  float* Qc = Wc + C * LD;         // [C][LD]
  float* Kc = Qc + C * LD;         // [C][LD]
  float* Uc = Kc + C * LD;         // [C][kCols]
  float* Pc = Uc + C * kCols;      // [C][C]
  float* Eg = Pc + C * C;          // [C]
  const int64_t j = blockIdx.x, v0 = int64_t(blockIdx.y) * kCols, dv = p.dv;
  const int tid = threadIdx.x, c = tid % kCols, g = tid / kCols;  // g: 0..7
  constexpr int kGroups = kScanThreads / kCols;
  float* M = p.state + j * dv * DK;  // [dv][DK]
  for (int e = tid; e < DK * kCols; e += blockDim.x) {
    const int kk = e % DK, col = e / DK;
    S[kk * kCols + col] = M[(v0 + col) * DK + kk];
  }
  pdl_prologue();
  const int64_t n_chunks = (p.n + C - 1) / C;
  for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
    const int64_t c0 = chunk * C;
    const int L = int(min(int64_t(C), p.n - c0));
    const float* in = scratch + (j * n_chunks + chunk) * chunk_floats(DK, dv);
    const float* gQ = in;
    const float* gKd = gQ + C * DK;
    const float* gW = gKd + C * DK;
    const float* gU = gW + C * DK;
    const float* gP = gU + C * dv;
    const float* gEg = gP + C * C;
    for (int e = tid; e < L * DK / 4; e += blockDim.x) {  // float4 groups (rows are 16-byte aligned)
      const int t = e / (DK / 4), i = 4 * (e % (DK / 4));
      *reinterpret_cast<float4*>(Wc + t * LD + i) = *reinterpret_cast<const float4*>(gW + t * DK + i);
      *reinterpret_cast<float4*>(Qc + t * LD + i) = *reinterpret_cast<const float4*>(gQ + t * DK + i);
      *reinterpret_cast<float4*>(Kc + t * LD + i) = *reinterpret_cast<const float4*>(gKd + t * DK + i);
    }
    for (int e = tid; e < L * kCols; e += blockDim.x) Uc[e] = gU[(e / kCols) * dv + v0 + e % kCols];
    for (int e = tid; e < C * C; e += blockDim.x) Pc[e] = gP[e];
    for (int t = tid; t < C; t += blockDim.x) Eg[t] = gEg[t];
    __syncthreads();

    // V' = U - W S and Q S for rows t = g, g + 8, ... of column c.
    constexpr int kRows = C / kGroups;
    float ws[kRows], qs[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) ws[i] = qs[i] = 0.0f;
    for (int kk = 0; kk < DK; kk += 4) {
      const float s0 = S[kk * kCols + c], s1 = S[(kk + 1) * kCols + c], s2 = S[(kk + 2) * kCols + c],
                  s3 = S[(kk + 3) * kCols + c];
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int t = g + kGroups * i;
        if (t >= L) break;
        const float4 w = *reinterpret_cast<const float4*>(Wc + t * LD + kk);
        const float4 q = *reinterpret_cast<const float4*>(Qc + t * LD + kk);
        ws[i] = fmaf(w.x, s0, ws[i]);
        ws[i] = fmaf(w.y, s1, ws[i]);
        ws[i] = fmaf(w.z, s2, ws[i]);
        ws[i] = fmaf(w.w, s3, ws[i]);
        qs[i] = fmaf(q.x, s0, qs[i]);
        qs[i] = fmaf(q.y, s1, qs[i]);
        qs[i] = fmaf(q.z, s2, qs[i]);
        qs[i] = fmaf(q.w, s3, qs[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int t = g + kGroups * i;
      if (t < L) Vp[t * kCols + c] = Uc[t * kCols + c] - ws[i];
    }
    __syncthreads();  // V' complete; every read of S done
    // O = e^gam (Q S) + P V'.
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int t = g + kGroups * i;
      if (t >= L) break;
      float o = Eg[t] * qs[i];
      for (int s = 0; s <= t; ++s) o = fmaf(Pc[t * C + s], Vp[s * kCols + c], o);
      p.out[(c0 + t) * p.Hv * dv + j * dv + v0 + c] = o;
    }
    // S <- e^gam_L S + Kd^T V' for rows kk = 4g + 32m + e of column c.
    const float el = Eg[L - 1];
    for (int m = 0; m < DK / 32; ++m) {
      const int kb = 4 * g + 32 * m;
      float acc[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[e] = el * S[(kb + e) * kCols + c];
      for (int s = 0; s < L; ++s) {
        const float vp = Vp[s * kCols + c];
        const float4 k = *reinterpret_cast<const float4*>(Kc + s * LD + kb);
        acc[0] = fmaf(k.x, vp, acc[0]);
        acc[1] = fmaf(k.y, vp, acc[1]);
        acc[2] = fmaf(k.z, vp, acc[2]);
        acc[3] = fmaf(k.w, vp, acc[3]);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) S[(kb + e) * kCols + c] = acc[e];
    }
    __syncthreads();  // the staged chunk and S are rewritten next
  }
  for (int e = tid; e < DK * kCols; e += blockDim.x) {
    const int kk = e % DK, col = e / DK;
    M[(v0 + col) * DK + kk] = S[kk * kCols + col];
  }
}

size_t prep_smem(int64_t dk, int64_t dv) { return size_t(2 * C * (dk + 4) + 2 * C * C + C * (dv + dk)) * 4; }
size_t scan_smem(int64_t dk) { return size_t(dk * kCols + C * kCols + 3 * C * (dk + 4) + C * kCols + C * C + C) * 4; }

template <int DK>
cudaError_t launch_chunked(const DeltaNetArgs& a, float* scratch, cudaStream_t stream) {
  const int64_t n_chunks = (a.n + C - 1) / C;
  const size_t ps = prep_smem(DK, a.dv), ss = scan_smem(DK);
  cudaError_t e = allow_dynamic_smem(delta_chunk_prep_kernel<DK>, ps);
  if (e == cudaSuccess) e = allow_dynamic_smem(delta_chunk_scan_kernel<DK>, ss);
  if (e == cudaSuccess)
    e = launch(delta_chunk_prep_kernel<DK>, dim3(unsigned(a.Hv), unsigned(n_chunks)), dim3(kPrepThreads), ps, stream,
               a, scratch);
  if (e == cudaSuccess)
    e = launch(delta_chunk_scan_kernel<DK>, dim3(unsigned(a.Hv), unsigned(a.dv / kCols)), dim3(kScanThreads), ss,
               stream, a, static_cast<const float*>(scratch));
  return e;
}

}  // namespace

bool delta_chunked_supported(int64_t dk, int64_t dv) {
  if (!(dk == 32 || dk == 64 || dk == 128) || dv < kCols || dv % kCols != 0 || dv > 128) return false;
  return std::max(prep_smem(dk, dv), scan_smem(dk)) <= max_dynamic_smem();
}

size_t delta_chunked_scratch_floats(int64_t n, int64_t Hv, int64_t dk, int64_t dv) {
  return size_t(Hv * ((n + C - 1) / C) * chunk_floats(dk, dv));
}

cudaError_t delta_net_chunked(const DeltaNetArgs& a, float* scratch, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  if (!delta_chunked_supported(a.dk, a.dv) || a.snapshot_row >= 0 || !scratch) return cudaErrorInvalidValue;
  switch (a.dk) {
    case 32: return launch_chunked<32>(a, scratch, stream);
    case 64: return launch_chunked<64>(a, scratch, stream);
    default: return launch_chunked<128>(a, scratch, stream);
  }
}

}  // namespace qwen35::cuda
