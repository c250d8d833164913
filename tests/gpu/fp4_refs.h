// CPU expectations of the NVFP4 decode kernels' fused prologues and
// epilogues, shared by the GPU op test and the emulated kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/ops.h"

namespace qwen35::test {

// The causal-conv epilogue: u [n, N] are the projection's rows; channels
// below C go through conv + SiLU row by row (window [Kc-1, C], oldest first,
// updated; *snap gets it after row 0), the others are stored as they are.
// Returns [n, N].
inline std::vector<float> conv_epilogue_reference(const std::vector<float>& u, int n, int64_t N, int64_t C,
                                                  int64_t Kc, const std::vector<float>& taps, std::vector<float>& win,
                                                  std::vector<float>* snap) {
  std::vector<float> out(static_cast<size_t>(n * N));
  for (int j = 0; j < n; ++j) {
    std::vector<float> o(static_cast<size_t>(C));
    conv_silu_step(win.data(), u.data() + j * N, taps.data(), C, Kc, o.data());
    for (int64_t k = 0; k + 2 < Kc; ++k)
      for (int64_t c = 0; c < C; ++c) win[size_t(k * C + c)] = win[size_t((k + 1) * C + c)];
    for (int64_t c = 0; c < C; ++c) win[size_t((Kc - 2) * C + c)] = u[size_t(j * N + c)];
    if (j == 0 && snap) *snap = win;
    for (int64_t r = 0; r < N; ++r) out[size_t(j * N + r)] = r < C ? o[size_t(r)] : u[size_t(j * N + r)];
  }
  return out;
}

// The gated-RMSNorm prologue's input row j: each head of dv values of
// o [n, K] normalized with w and multiplied by silu(z) (z [n, ldz]).
inline std::vector<float> gated_prologue_row(const std::vector<float>& o, const std::vector<float>& z, int64_t ldz,
                                             const std::vector<float>& w, int j, int64_t K, int64_t dv) {
  std::vector<float> xr(o.begin() + j * K, o.begin() + (j + 1) * K);
  for (int64_t h = 0; h < K / dv; ++h) {
    float* oh = xr.data() + h * dv;
    rmsnorm(oh, w.data(), dv, 1e-6f, oh);
    for (int64_t i = 0; i < dv; ++i) oh[i] *= siluf(z[size_t(j * ldz + h * dv + i)]);
  }
  return xr;
}

}  // namespace qwen35::test
