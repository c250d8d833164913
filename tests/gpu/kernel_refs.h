// CPU references of whole kernel calls, composed of the CPU twins in
// lib/cpu/ops.h: shared by the GPU op tests (test_cuda_ops.cpp) and the
// emulated kernels (tests/emu/test_cuda_emu.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/ops.h"
#include "delta_net.h"

namespace qwen35::test {

// Causal conv + SiLU over n rows of u ([n, ldu], C channels), the window
// ([K-1, C], oldest first) slid one row at a time and updated; snap gets the
// window after row snapshot_row (if in range).
inline void conv_reference(const std::vector<float>& u, int64_t ldu, const std::vector<float>& taps, int64_t C,
                           int64_t K, int64_t n, int64_t snapshot_row, std::vector<float>& window,
                           std::vector<float>& out, std::vector<float>& snap) {
  out.assign(size_t(n * C), 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    conv_silu_step(window.data(), u.data() + t * ldu, taps.data(), C, K, out.data() + t * C);
    for (int64_t k = 0; k + 2 < K; ++k)
      for (int64_t c = 0; c < C; ++c) window[size_t(k * C + c)] = window[size_t((k + 1) * C + c)];
    if (K > 1)
      for (int64_t c = 0; c < C; ++c) window[size_t((K - 2) * C + c)] = u[size_t(t * ldu + c)];
    if (t == snapshot_row) snap = window;
  }
}

struct DeltaShape {
  int64_t Hk, Hv, dk, dv;
};

// The launch arguments for the inputs delta_reference reads (device
// pointers, the same layouts); no snapshot.
inline cuda::DeltaNetArgs delta_args(const DeltaShape& s, int64_t n, const float* uc, int64_t ldu, const float* b,
                                     const float* al, int64_t ldb, const float* a_log, const float* dtb, float* state,
                                     float* out) {
  cuda::DeltaNetArgs p;
  p.n = n;
  p.Hk = s.Hk;
  p.Hv = s.Hv;
  p.dk = s.dk;
  p.dv = s.dv;
  p.eps = 1e-6f;
  p.uc = uc;
  p.ldu = ldu;
  p.b = b;
  p.ldb = ldb;
  p.a = al;
  p.lda = ldb;
  p.ssm_a = a_log;
  p.dt_bias = dtb;
  p.state = state;
  p.out = out;
  return p;
}

// The gated delta rule over n rows (spec §4.5.3-4.5.4): uc [n, ldu] post-conv
// q|k|v, b and al [n, ldb] raw gate inputs; M [Hv, dv, dk] updated; out
// [n, Hv*dv]; snap gets M after row snapshot_row.
inline void delta_reference(const DeltaShape& s, int64_t n, const std::vector<float>& uc, int64_t ldu,
                            const std::vector<float>& b, const std::vector<float>& al, int64_t ldb,
                            const std::vector<float>& a_log, const std::vector<float>& dtb, float eps,
                            std::vector<float>& M, std::vector<float>& out, int64_t snapshot_row,
                            std::vector<float>& snap) {
  const int64_t Cqk = s.Hk * s.dk, Cv = s.Hv * s.dv, C = 2 * Cqk + Cv;
  out.assign(size_t(n * Cv), 0.0f);
  const float qscale = 1.0f / std::sqrt(float(s.dk));
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> row(uc.begin() + t * ldu, uc.begin() + t * ldu + C);
    for (int64_t h = 0; h < s.Hk; ++h) {
      l2norm(row.data() + h * s.dk, s.dk, eps);
      l2norm(row.data() + Cqk + h * s.dk, s.dk, eps);
      for (int64_t i = 0; i < s.dk; ++i) row[size_t(h * s.dk + i)] *= qscale;
    }
    for (int64_t j = 0; j < s.Hv; ++j) {
      const int64_t kh = j % s.Hk;
      const float beta = sigmoidf(b[size_t(t * ldb + j)]);
      const float g = a_log[size_t(j)] * softplusf(al[size_t(t * ldb + j)] + dtb[size_t(j)]);
      delta_rule_step(M.data() + j * s.dv * s.dk, row.data() + kh * s.dk, row.data() + Cqk + kh * s.dk,
                      row.data() + 2 * Cqk + j * s.dv, beta, g, s.dk, s.dv, out.data() + t * Cv + j * s.dv);
    }
    if (t == snapshot_row) snap = M;
  }
}

// Gated causal GQA attention of n query rows at positions n_past .. (the
// cache holds F32 copies of the F16 rows): out[t][h] = attend(q[t][h]) *
// sigmoid(gate[t*ldgate + h*gate_stride ..]).
inline void attention_reference(const std::vector<float>& q, const std::vector<float>& kf,
                                const std::vector<float>& vf, const std::vector<float>& gate, int64_t ldgate,
                                int64_t gate_stride, int64_t n, int64_t n_past, int64_t Hq, int64_t Hkv, int64_t Dh,
                                float scale, std::vector<float>& out) {
  const int64_t qd = Hq * Dh, kvd = Hkv * Dh, group = Hq / Hkv;
  out.assign(size_t(n * qd), 0.0f);
  std::vector<float> sc(size_t(n_past + n));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < Hq; ++h) {
      float* oh = out.data() + t * qd + h * Dh;
      attend_one(q.data() + t * qd + h * Dh, kf.data() + (h / group) * Dh, vf.data() + (h / group) * Dh,
                 n_past + t + 1, kvd, Dh, scale, sc.data(), oh);
      for (int64_t i = 0; i < Dh; ++i) oh[i] *= sigmoidf(gate[size_t(t * ldgate + h * gate_stride + i)]);
    }
}

}  // namespace qwen35::test
