// One case of the fused decode FFN (fp4_ffn, ffn_fp4.h) against the same
// FFN as two kernel-3 launches (gate/up with SwiGLU, then down added into
// the residual stream) and against the CPU products, for the GPU op test
// and the emulated kernels. Arr is a device-array template (DevArray on the
// GPU, a host vector in the emulation) with a vector constructor, get() and
// download(); rand(n, seed, lo, hi) gives n uniform floats.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include "cpu/ops.h"
#include "ffn_fp4.h"
#include "ggml_types.h"
#include "matvec_fp4.h"
#include "quants.h"

namespace qwen35::test {

struct FfnCaseResult {
  bool ok = false;
  std::vector<float> fused, twice, ref;      // [n, ldh] residual stream after the FFN
  std::vector<float> act_fused, act_twice;   // [n, lda] SwiGLU outputs
  std::vector<float> again;                  // a second fused launch from the same input
  std::vector<int> sync;                     // the fused kernel's counters afterwards (all zero)
  int fault = 0;
};

// D: model width, F: FFN width (a multiple of 64); n activation rows.
// layers > 1: the FFN applied that many times in a row on `stream` (the
// fused launches alternating between two sets of counters, as consecutive
// layers do; with PDL on a created stream), no CPU reference.
// first_ticket > 0: the fused kernel's ticket counter starts there (as if
// a launch had not finished: the tasks below it never run), which
// must end in the fault flag, not in a hang.
template <template <typename> class Arr, typename Rand>
FfnCaseResult run_ffn_case(int64_t D, int64_t F, int n, int sms, Rand rand, cudaStream_t stream = nullptr,
                           int layers = 1, int first_ticket = 0) {
  using namespace qwen35::cuda;
  const int64_t ldh = D + 4, lda = F + 8;
  const uint64_t rb_d = row_bytes(*type_info(GGML_NVFP4), D), rb_f = row_bytes(*type_info(GGML_NVFP4), F);
  // Random NVFP4 rows, kept between calls (quantizing the 4B's FFN takes seconds).
  static std::map<std::tuple<int64_t, int64_t, uint32_t>, std::vector<uint8_t>> cache;
  auto quant = [&](int64_t rows, int64_t cols, uint64_t rb, uint32_t seed) {
    std::vector<uint8_t>& q = cache[{rows, cols, seed}];
    if (q.empty()) {
      const std::vector<float> v = rand(size_t(rows * cols), seed, -0.5f, 0.5f);
      q.resize(size_t(rows) * rb);
      for (int64_t r = 0; r < rows; ++r) quantize_row(GGML_NVFP4, v.data() + r * cols, q.data() + r * rb, cols);
    }
    return q;
  };
  const std::vector<uint8_t> gate = quant(F, D, rb_d, 11), up = quant(F, D, rb_d, 12), down = quant(D, F, rb_f, 13);
  Arr<uint8_t> dgate(gate), dup(up), ddown(down);
  Fp4Tiled tgu, tdn;
  tgu.rows = F;
  tgu.cols = D;
  tgu.pairing = Fp4Pairing::GateUp;
  tgu.scale = 0.5f;
  tdn.rows = D;
  tdn.cols = F;
  tdn.scale = 0.75f;
  Arr<uint8_t> bgu(std::vector<uint8_t>(tgu.code_bytes() + tgu.scale_bytes()));
  Arr<uint8_t> bdn(std::vector<uint8_t>(tdn.code_bytes() + tdn.scale_bytes()));
  tgu.codes = bgu.get();
  tgu.scales = bgu.get() + tgu.code_bytes();
  tdn.codes = bdn.get();
  tdn.scales = bdn.get() + tdn.code_bytes();
  FfnCaseResult r;
  if (fp4_repack(dgate.get(), dup.get(), rb_d, tgu, nullptr) != cudaSuccess ||
      fp4_repack(ddown.get(), nullptr, rb_f, tdn, nullptr) != cudaSuccess)
    return r;

  const std::vector<float> h0 = rand(size_t(n * ldh), 14, -2.0f, 2.0f), nw = rand(size_t(D), 15, 0.5f, 1.5f);
  const std::vector<float> nan_act(size_t(n * lda), NAN);
  Arr<float> dnw(nw), part_gu(std::vector<float>(std::max<uint64_t>(1, fp4_partial_floats(tgu, sms)))),
      part_dn(std::vector<float>(std::max<uint64_t>(1, fp4_partial_floats(tdn, sms))));
  Arr<int> cnt_gu(std::vector<int>(std::max<uint64_t>(1, fp4_counter_ints(tgu)), 0)),
      cnt_dn(std::vector<int>(std::max<uint64_t>(1, fp4_counter_ints(tdn)), 0));
  auto products = [&](float* h, float* act) {
    Fp4FfnArgs a;
    Fp4MatvecArgs& gu = a.gate_up;
    gu.w = tgu;
    gu.n = n;
    gu.x = h;
    gu.ldx = ldh;
    gu.norm = dnw.get();
    gu.eps = 1e-6f;
    gu.y = act;
    gu.ldy = lda;
    gu.epilogue = Fp4Epilogue::SwiGLU;
    gu.partial = part_gu.get();
    gu.counters = cnt_gu.get();
    Fp4MatvecArgs& dn = a.down;
    dn.w = tdn;
    dn.n = n;
    dn.x = act;
    dn.ldx = lda;
    dn.y = h;
    dn.ldy = ldh;
    dn.epilogue = Fp4Epilogue::Add;
    dn.partial = part_dn.get();
    dn.counters = cnt_dn.get();
    return a;
  };

  // Two kernel-3 launches.
  Arr<float> h_t(h0), act_t(nan_act);
  const Fp4FfnArgs two = products(h_t.get(), act_t.get());
  r.ok = true;
  for (int l = 0; l < layers; ++l)
    r.ok = r.ok && fp4_matvec(two.gate_up, sms, stream) == cudaSuccess &&
           fp4_matvec(two.down, sms, stream) == cudaSuccess;
  r.twice = h_t.download();
  r.act_twice = act_t.download();

  // The fused kernel, twice from the same input (the counters must be reset).
  std::vector<int> sync0(2 * fp4_ffn_sync_ints(), 0);
  sync0[0] = first_ticket;
  Arr<int> sync(sync0), fault(std::vector<int>(1, 0));
  for (int run = 0; run < 2; ++run) {
    Arr<float> h_f(h0), act_f(nan_act);
    Fp4FfnArgs a = products(h_f.get(), act_f.get());
    a.fault = fault.get();
    for (int l = 0; l < layers; ++l) {
      a.sync = sync.get() + (l % 2) * fp4_ffn_sync_ints();
      r.ok = r.ok && fp4_ffn_supported(a, sms) && fp4_ffn(a, sms, stream) == cudaSuccess;
    }
    (run == 0 ? r.fused : r.again) = h_f.download();
    if (run == 0) r.act_fused = act_f.download();
  }
  r.sync = sync.download();
  r.fault = fault.download()[0];
  if (layers > 1) return r;

  // CPU: h += down . (silu(gate . x) * (up . x)), x = rmsnorm(h).
  r.ref = h0;
  std::vector<float> x(static_cast<size_t>(D)), act(static_cast<size_t>(F));
  for (int j = 0; j < n; ++j) {
    rmsnorm(h0.data() + j * ldh, nw.data(), D, 1e-6f, x.data());
    for (int64_t i = 0; i < F; ++i) {
      const float g = vec_dot_ref(GGML_NVFP4, gate.data() + i * rb_d, x.data(), D) * 0.5f;
      const float u = vec_dot_ref(GGML_NVFP4, up.data() + i * rb_d, x.data(), D) * 0.5f;
      act[size_t(i)] = siluf(g) * u;
    }
    for (int64_t i = 0; i < D; ++i)
      r.ref[size_t(j * ldh + i)] += vec_dot_ref(GGML_NVFP4, down.data() + i * rb_f, act.data(), F) * 0.75f;
  }
  return r;
}

}  // namespace qwen35::test
