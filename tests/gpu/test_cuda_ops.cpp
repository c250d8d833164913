// Every CUDA kernel against its CPU twin (lib/cpu/ops.h, lib/quants.h) on
// random inputs. Skips (and passes) without a CUDA device.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention.h"
#include "conv.h"
#include "cpu/ops.h"
#include "delta_net.h"
#include "elementwise.h"
#include "gemm.h"
#include "fused_attn_case.h"
#include "gpu_test_util.h"
#include "gpu_qmat.h"
#include "kernel_refs.h"
#include "matmul.h"
#include "matvec_fp4.h"
#include "norm.h"
#include "persist_attn_case.h"
#include "persist_case.h"
#include "persist_fp4.h"
#include "quants.h"
#include "rope.h"
#include "test_util.h"
#include "tuning.h"

using namespace qwen35;
using namespace qwen35::cuda;
using namespace qwen35::test;

namespace {

const uint32_t kTypes[] = {GGML_F32, GGML_F16, GGML_BF16, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K, GGML_NVFP4, GGML_MXFP4};

uint16_t to_f16(float x) { return fp32_to_fp16(x); }
float f16_round(float x) { return fp16_to_fp32(fp32_to_fp16(x)); }

}  // namespace

TEST_CASE("matvec_generic matches the CPU dot products for every type") {
  QWEN35_REQUIRE_GPU();
  const int64_t N = 67, K = 512;
  for (uint32_t t : kTypes) {
    CAPTURE(type_info(t)->name);
    QMat w(t, N, K, 11 + t);
    for (int n : {1, 3, 8}) {
      CAPTURE(n);
      const int64_t ldx = K + 4, ldy = N + 3;
      auto x = random_floats(size_t(n * ldx), 7 + n);
      auto y0 = random_floats(size_t(n * ldy), 9);
      DevArray<float> dx(x), dy(y0);
      for (bool add : {false, true}) {
        dy.upload(y0);
        REQUIRE(matvec_generic(w.view(0.75f), dx.get(), ldx, n, dy.get(), ldy, add ? Accum::Add : Accum::Store, 0) ==
                cudaSuccess);
        auto y = dy.download();
        std::vector<float> want(y0);
        for (int j = 0; j < n; ++j)
          for (int64_t r = 0; r < N; ++r) {
            const float d = vec_dot_ref(t, w.host.data() + r * w.row_bytes, x.data() + j * ldx, K) * 0.75f;
            want[size_t(j * ldy + r)] = add ? y0[size_t(j * ldy + r)] + d : d;
          }
        CHECK(max_rel(y, want) < 2e-6);
      }
      // Column j of a batch equals the same column computed alone.
      if (n > 1) {
        DevArray<float> y1(static_cast<size_t>(ldy));
        REQUIRE(matvec_generic(w.view(), dx.get() + 2 * ldx, ldx, 1, y1.get(), ldy, Accum::Store, 0) == cudaSuccess);
        dy.upload(y0);
        REQUIRE(matvec_generic(w.view(), dx.get(), ldx, n, dy.get(), ldy, Accum::Store, 0) == cudaSuccess);
        auto a = y1.download(), b = dy.download();
        CHECK(std::memcmp(a.data(), b.data() + 2 * ldy, size_t(N) * 4) == 0);
      }
    }
  }
}

TEST_CASE("dequant_rows reproduces dequantize_row (F32 exactly, BF16 rounded)") {
  QWEN35_REQUIRE_GPU();
  for (uint32_t t : kTypes) {
    CAPTURE(type_info(t)->name);
    QMat w(t, 9, 768, 3 + t);
    DevArray<float> f(static_cast<size_t>(5 * 768));
    DevArray<uint16_t> b(static_cast<size_t>(5 * 768));
    REQUIRE(dequant_rows_f32(w.view(), 3, 5, f.get(), 0) == cudaSuccess);
    REQUIRE(dequant_rows_bf16(w.view(), 3, 5, b.get(), 0) == cudaSuccess);
    auto hf = f.download();
    auto hb = b.download();
    for (int64_t r = 0; r < 5; ++r) {
      auto want = w.row(3 + r);
      CHECK(std::memcmp(hf.data() + r * 768, want.data(), 768 * 4) == 0);
      bool same = true;
      for (int64_t k = 0; k < 768; ++k) same &= hb[size_t(r * 768 + k)] == fp32_to_bf16(want[size_t(k)]);
      CHECK(same);
    }
  }
}

TEST_CASE("cuBLASLt GEMM (F32 and BF16) matches the CPU product") {
  QWEN35_REQUIRE_GPU();
  Gemm gemm;
  REQUIRE(gemm.init(4 << 20).ok());
  const int64_t N = 96, K = 256, n = 37, ldx = 260, ldy = 100;
  auto A = random_floats(size_t(N * K), 1);
  auto X = random_floats(size_t(n * ldx), 2);
  auto Y0 = random_floats(size_t(n * ldy), 3);
  for (GemmType type : {GemmType::F32, GemmType::BF16}) {
    for (bool add : {false, true}) {
      CAPTURE(int(type));
      CAPTURE(add);
      std::vector<float> want(Y0);
      std::vector<float> a = A, x = X;
      if (type == GemmType::BF16) {
        for (float& v : a) v = bf16_to_fp32(fp32_to_bf16(v));
        for (float& v : x) v = bf16_to_fp32(fp32_to_bf16(v));
      }
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = 0; r < N; ++r) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) s += double(a[size_t(r * K + k)]) * x[size_t(t * ldx + k)];
          want[size_t(t * ldy + r)] = float(0.5 * s) + (add ? Y0[size_t(t * ldy + r)] : 0.0f);
        }
      DevArray<float> dy(Y0);
      std::vector<float> got;
      if (type == GemmType::F32) {
        DevArray<float> da(A), dx(X);
        REQUIRE(gemm.run(type, da.get(), N, K, dx.get(), ldx, n, dy.get(), ldy, 0.5f, add, 0).ok());
        got = dy.download();
      } else {
        std::vector<uint16_t> ab(A.size()), xb(X.size());
        for (size_t i = 0; i < A.size(); ++i) ab[i] = fp32_to_bf16(A[i]);
        for (size_t i = 0; i < X.size(); ++i) xb[i] = fp32_to_bf16(X[i]);
        DevArray<uint16_t> da(ab), dx(xb);
        REQUIRE(gemm.run(type, da.get(), N, K, dx.get(), ldx, n, dy.get(), ldy, 0.5f, add, 0).ok());
        got = dy.download();
      }
      CHECK(max_rel(got, want) < 1e-5);
    }
  }
}

TEST_CASE("convert_rows_bf16 rounds like fp32_to_bf16") {
  QWEN35_REQUIRE_GPU();
  auto x = random_floats(5 * 70, 4, -100, 100);
  DevArray<float> dx(x);
  DevArray<uint16_t> db(5 * 64);
  REQUIRE(convert_rows_bf16(dx.get(), 70, 5, 64, db.get(), 0) == cudaSuccess);
  auto b = db.download();
  bool same = true;
  for (int t = 0; t < 5; ++t)
    for (int k = 0; k < 64; ++k) same &= b[size_t(t * 64 + k)] == fp32_to_bf16(x[size_t(t * 70 + k)]);
  CHECK(same);
}

TEST_CASE("rmsnorm, add+rmsnorm and the gated norm match the CPU") {
  QWEN35_REQUIRE_GPU();
  const int64_t n = 5, D = 640;
  auto x = random_floats(size_t(n * D), 5, -3, 3);
  auto d = random_floats(size_t(n * D), 6, -3, 3);
  auto w = random_floats(size_t(D), 7, 0.5f, 1.5f);
  DevArray<float> dx(x), dd(d), dw(w), dy(static_cast<size_t>(n * D));
  REQUIRE(rmsnorm_rows(dx.get(), D, dw.get(), n, D, 1e-6f, dy.get(), D, 0) == cudaSuccess);
  std::vector<float> want(static_cast<size_t>(n * D));
  for (int64_t t = 0; t < n; ++t) rmsnorm(x.data() + t * D, w.data(), D, 1e-6f, want.data() + t * D);
  const std::vector<float> y1 = dy.download();
  CHECK(max_rel(y1, want) < 1e-6);
  // Two row sets in one launch (x and d, into two buffers): the bits of two calls.
  {
    DevArray<float> dy2(static_cast<size_t>(n * D)), dz(static_cast<size_t>(n * D)), dz2(static_cast<size_t>(n * D));
    REQUIRE(rmsnorm_rows(dd.get(), D, dw.get(), n, D, 1e-6f, dz.get(), D, 0) == cudaSuccess);
    NormRows a, b;
    a.x = dx.get();
    a.ldx = D;
    a.w = dw.get();
    a.y = dy2.get();
    a.ldy = D;
    b.x = dd.get();
    b.ldx = D;
    b.w = dw.get();
    b.y = dz2.get();
    b.ldy = D;
    REQUIRE(rmsnorm_rows_pair(a, b, n, D, 1e-6f, 0) == cudaSuccess);
    CHECK(dy2.download() == y1);
    CHECK(dz2.download() == dz.download());
  }

  REQUIRE(add_rmsnorm_rows(dx.get(), dd.get(), D, dw.get(), n, D, 1e-6f, dy.get(), 0) == cudaSuccess);
  std::vector<float> h(x);
  for (size_t i = 0; i < h.size(); ++i) h[i] += d[i];
  for (int64_t t = 0; t < n; ++t) rmsnorm(h.data() + t * D, w.data(), D, 1e-6f, want.data() + t * D);
  CHECK(max_rel(dx.download(), h) == 0.0);
  CHECK(max_rel(dy.download(), want) < 1e-6);

  // Gated norm: 10 heads of 64 per row, z rows with a stride.
  const int64_t heads = 10, dv = 64, ldz = heads * dv + 16;
  auto o = random_floats(size_t(n * heads * dv), 8, -2, 2);
  auto z = random_floats(size_t(n * ldz), 9, -4, 4);
  auto wn = random_floats(size_t(dv), 10, 0.5f, 1.5f);
  DevArray<float> dob(o), dz(z), dwn(wn);
  REQUIRE(gated_rmsnorm(dob.get(), dz.get(), ldz, dwn.get(), n, heads, dv, 1e-6f, 0) == cudaSuccess);
  std::vector<float> wo(o);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < heads; ++j) {
      float* oh = wo.data() + t * heads * dv + j * dv;
      rmsnorm(oh, wn.data(), dv, 1e-6f, oh);
      for (int64_t i = 0; i < dv; ++i) oh[i] *= siluf(z[size_t(t * ldz + j * dv + i)]);
    }
  CHECK(max_rel(dob.download(), wo) < 1e-6);

  // BF16 outputs: the F32 results rounded as convert_rows_bf16 rounds.
  DevArray<uint16_t> yb(static_cast<size_t>(n * (D + 4)));
  REQUIRE(rmsnorm_rows(dx.get(), D, dw.get(), n, D, 1e-6f, dy.get(), D, 0) == cudaSuccess);
  REQUIRE(rmsnorm_rows_bf16(dx.get(), D, dw.get(), n, D, 1e-6f, yb.get(), D + 4, 0) == cudaSuccess);
  auto y32 = dy.download();
  auto y16 = yb.download();
  bool same = true;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < D; ++i) same &= y16[size_t(t * (D + 4) + i)] == fp32_to_bf16(y32[size_t(t * D + i)]);
  CHECK(same);
  DevArray<float> dob2(o);
  DevArray<uint16_t> ob(o.size());
  REQUIRE(gated_rmsnorm_bf16(dob2.get(), dz.get(), ldz, dwn.get(), n, heads, dv, 1e-6f, ob.get(), 0) == cudaSuccess);
  auto o32 = dob.download();
  auto o16 = ob.download();
  same = true;
  for (size_t i = 0; i < o16.size(); ++i) same &= o16[i] == fp32_to_bf16(o32[i]);
  CHECK(same);
  CHECK(max_rel(dob2.download(), o) == 0.0);  // the input is left alone
}

TEST_CASE("q/k norm + IMROPE + KV write match rmsnorm and rope_heads") {
  QWEN35_REQUIRE_GPU();
  const int64_t n = 5, Hq = 4, Hkv = 2, Dh = 256, n_past = 7, n_ctx = 16;
  RopeConfig rc;
  rc.n_rot = 64;
  rc.sections[0] = 11;
  rc.sections[1] = 11;
  rc.sections[2] = 10;
  rc.base = 1e7f;
  const int half = rc.n_rot / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  std::vector<int32_t> comp(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    inv[size_t(i)] = std::pow(double(rc.base), -2.0 * i / double(rc.n_rot));
    comp[size_t(i)] = rope_component(rc, i);
  }
  const int64_t qd = Hq * Dh, kvd = Hkv * Dh;
  auto qg = random_floats(size_t(n * 2 * qd), 1, -2, 2);
  auto k = random_floats(size_t(n * kvd), 2, -2, 2);
  auto v = random_floats(size_t(n * kvd), 3, -2, 2);
  auto qn = random_floats(size_t(Dh), 4, 0.5f, 1.5f);
  auto kn = random_floats(size_t(Dh), 5, 0.5f, 1.5f);
  std::vector<int32_t> pos;
  for (int64_t t = 0; t < n; ++t) {  // distinct t/h/w, some large
    pos.push_back(int32_t(1000 + 37 * t));
    pos.push_back(int32_t(3 + t));
    pos.push_back(int32_t(90000 - 11 * t));
  }
  DevArray<float> dqg(qg), dk(k), dv(v), dqn(qn), dkn(kn), dq(static_cast<size_t>(n * qd));
  DevArray<double> dinv(inv);
  DevArray<int32_t> dcomp(comp), dpos(pos), dnp(std::vector<int32_t>{int32_t(n_past)});
  DevArray<uint16_t> kc(static_cast<size_t>(n_ctx * kvd)), vc(static_cast<size_t>(n_ctx * kvd));
  QkvRopeArgs a;
  a.n = n;
  a.n_head = Hq;
  a.n_head_kv = Hkv;
  a.head_dim = Dh;
  a.eps = 1e-6f;
  a.qg = dqg.get();
  a.ldqg = 2 * qd;
  a.k = dk.get();
  a.ldk = kvd;
  a.v = dv.get();
  a.ldv = kvd;
  a.q_norm = dqn.get();
  a.k_norm = dkn.get();
  a.pos = dpos.get();
  a.rope.n_rot = rc.n_rot;
  a.rope.inv_freq = dinv.get();
  a.rope.comp = dcomp.get();
  a.q_out = dq.get();
  a.k_cache = kc.get();
  a.v_cache = vc.get();
  a.n_past = dnp.get();
  REQUIRE(qkv_norm_rope(a, 0) == cudaSuccess);
  auto q = dq.download();
  auto hk = kc.download(), hv = vc.download();
  std::vector<float> wq(static_cast<size_t>(n * qd)), wk(static_cast<size_t>(kvd));
  double kerr = 0, verr = 0;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < Hq; ++h)
      rmsnorm(qg.data() + t * 2 * qd + h * 2 * Dh, qn.data(), Dh, 1e-6f, wq.data() + t * qd + h * Dh);
    rope_heads(wq.data() + t * qd, Hq, Dh, rc, pos.data() + 3 * t);
    for (int64_t g = 0; g < Hkv; ++g) rmsnorm(k.data() + t * kvd + g * Dh, kn.data(), Dh, 1e-6f, wk.data() + g * Dh);
    rope_heads(wk.data(), Hkv, Dh, rc, pos.data() + 3 * t);
    for (int64_t i = 0; i < kvd; ++i) {
      kerr = std::max(kerr, double(std::fabs(fp16_to_fp32(hk[size_t((n_past + t) * kvd + i)]) - wk[size_t(i)])));
      verr = std::max(verr, double(std::fabs(fp16_to_fp32(hv[size_t((n_past + t) * kvd + i)]) - f16_round(v[size_t(t * kvd + i)]))));
    }
  }
  CHECK(max_rel(q, wq) < 1e-5);
  CHECK(kerr < 4e-3);  // F16 rounding of values up to ~4
  CHECK(verr == 0.0);
  // Rows outside n_past .. n_past+n-1 are untouched.
  CHECK(hk[0] == 0);
  CHECK(hk[size_t((n_past + n) * kvd)] == 0);
}

TEST_CASE("attention (split, tiled, tensor cores) matches attend_one with the gate, for every head size") {
  QWEN35_REQUIRE_GPU();
  for (int64_t Dh : {64, 128, 256, 512}) {
    for (int64_t n : {1, 6, 77}) {
      for (int64_t n_past : {0, 20}) {
        for (int mode : {1, 3, 32, 0, -1}) {  // split count; 0: the tiled kernel; -1: tensor cores (Dh <= 256)
          CAPTURE(Dh);
          CAPTURE(n);
          CAPTURE(n_past);
          CAPTURE(mode);
          const int64_t Hq = 4, Hkv = 2, n_ctx = 112, qd = Hq * Dh, kvd = Hkv * Dh;
          const int splits = mode <= 0 ? 1 : mode;
          auto q = random_floats(size_t(n * qd), 1, -1, 1);
          auto kf = random_floats(size_t(n_ctx * kvd), 2, -1, 1);
          auto vf = random_floats(size_t(n_ctx * kvd), 3, -1, 1);
          const int64_t ldgate = qd + 8;
          auto gate = random_floats(size_t(n * ldgate), 4, -3, 3);
          std::vector<uint16_t> kh(kf.size()), vh(vf.size());
          for (size_t i = 0; i < kf.size(); ++i) {
            // Cache rows past the batch hold NaNs that must never reach a result.
            const bool stale = int64_t(i) >= (n_past + n) * kvd;
            kh[i] = stale ? uint16_t(0x7E00) : to_f16(kf[i]);
            kf[i] = fp16_to_fp32(kh[i]);
            vh[i] = stale ? uint16_t(0x7E00) : to_f16(vf[i]);
            vf[i] = fp16_to_fp32(vh[i]);
          }
          DevArray<float> dq(q), dgate(gate), dout(static_cast<size_t>(n * qd));
          DevArray<uint16_t> dk(kh), dv(vh);
          DevArray<int32_t> dnp(std::vector<int32_t>{int32_t(n_past)});
          DevArray<float> pm(static_cast<size_t>(n * Hq * splits)), pl(static_cast<size_t>(n * Hq * splits)),
              po(static_cast<size_t>(n * Hq * splits * Dh));
          AttnArgs a;
          a.n = n;
          a.n_head = Hq;
          a.n_head_kv = Hkv;
          a.head_dim = Dh;
          a.scale = 1.0f / std::sqrt(float(Dh));
          a.q = dq.get();
          a.k_cache = dk.get();
          a.v_cache = dv.get();
          a.gate = dgate.get();
          a.ldgate = ldgate;
          a.gate_stride = Dh;
          a.n_past = dnp.get();
          a.o = dout.get();
          a.splits = splits;
          a.part_m = pm.get();
          a.part_l = pl.get();
          a.part_o = po.get();
          a.tiled = mode <= 0;
          a.tensor_cores = mode < 0;
          REQUIRE(attention(a, 0) == cudaSuccess);
          std::vector<float> want;
          attention_reference(q, kf, vf, gate, ldgate, Dh, n, n_past, Hq, Hkv, Dh, a.scale, want);
          CHECK(max_rel(dout.download(), want) < 2e-5);
        }
      }
    }
  }
}

TEST_CASE("the fused decode attention agrees with q/k norm + RoPE + split attention, caches included") {
  QWEN35_REQUIRE_GPU();
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  for (int64_t Dh : {64, 128, 256, 512}) {
    for (int64_t n : {1, 2}) {
      for (int64_t n_past : {0, 9, 30, 45}) {
        for (int splits : {1, 3, 8}) {
          CAPTURE(Dh);
          CAPTURE(n);
          CAPTURE(n_past);
          CAPTURE(splits);
          const FusedAttnResult r = run_fused_attention_case<DevArray>(Dh, n, n_past, splits, rand, to_f16);
          REQUIRE(r.ok);
          // The same formulas; only the compiler's contraction of a*b+c may
          // differ between the kernels (a changed F32 bit can flip an F16
          // rounding of a key).
          CHECK(max_rel(r.out_fused, r.out_ref) < 1e-5);
          CHECK(r.v_fused == r.v_ref);
          std::vector<float> kf(r.k_fused.size()), kr(r.k_ref.size());
          for (size_t i = 0; i < kf.size(); ++i) {
            kf[i] = fp16_to_fp32(r.k_fused[i]);
            kr[i] = fp16_to_fp32(r.k_ref[i]);
          }
          const size_t written = size_t((n_past + n) * 2 * Dh);  // rows up to the batch (the rest stay NaN)
          CHECK(rel_err(kf.data(), kr.data(), written) < 1e-3);
          CHECK(std::memcmp(r.k_fused.data() + written, r.k_ref.data() + written, (kf.size() - written) * 2) == 0);
          CHECK(std::all_of(r.counters.begin(), r.counters.end(), [](int32_t c) { return c == 0; }));
          // With the host's rotation tables (the backend's default): the
          // device's double cos/sin may differ from the host's in the last
          // float bit, nothing more.
          const FusedAttnResult rt = run_fused_attention_case<DevArray>(Dh, n, n_past, splits, rand, to_f16, true);
          REQUIRE(rt.ok);
          CHECK(max_rel(rt.out_fused, r.out_fused) < 1e-5);
          CHECK(max_rel(rt.out_ref, r.out_ref) < 1e-5);
        }
      }
    }
  }
}

TEST_CASE("causal conv + SiLU matches conv_silu_step row by row, with snapshots") {
  QWEN35_REQUIRE_GPU();
  for (int64_t K : {2, 3, 4}) {
    for (int64_t n : {1, 2, 9, 300}) {  // 300: many row blocks
      for (int64_t snap_row : {int64_t(0), n / 2, n - 1}) {
        CAPTURE(K);
        CAPTURE(n);
        CAPTURE(snap_row);
        const int64_t C = 300, ldu = 320;
        auto u = random_floats(size_t(n * ldu), 1, -2, 2);
        auto taps = random_floats(size_t(C * K), 2, -1, 1);
        auto win = random_floats(size_t((K - 1) * C), 3, -2, 2);
        DevArray<float> du(u), dt(taps), dw(win), dout(static_cast<size_t>(n * C)),
            dsnap(static_cast<size_t>((K - 1) * C));
        ConvArgs a;
        a.n = n;
        a.C = C;
        a.K = K;
        a.u = du.get();
        a.ldu = ldu;
        a.taps = dt.get();
        a.window = dw.get();
        a.out = dout.get();
        a.snapshot_row = snap_row;
        a.snapshot = dsnap.get();
        REQUIRE(conv_silu(a, 0) == cudaSuccess);
        std::vector<float> out, snap;
        conv_reference(u, ldu, taps, C, K, n, snap_row, win, out, snap);
        CHECK(max_rel(dout.download(), out) < 1e-6);
        CHECK(max_rel(dw.download(), win) == 0.0);
        CHECK(max_rel(dsnap.download(), snap) == 0.0);
      }
    }
  }
}

TEST_CASE("the delta rule kernel matches l2norm + delta_rule_step, with snapshots, for each thread split") {
  QWEN35_REQUIRE_GPU();
  for (DeltaShape s : {DeltaShape{2, 4, 64, 64}, DeltaShape{4, 8, 32, 32}, DeltaShape{2, 4, 128, 128},
                       DeltaShape{1, 2, 256, 64}}) {
    for (int64_t n : {1, 7, 300}) {  // 300: several chunks of precomputed norms
      for (int ept : {8, 16, 32}) {
        CAPTURE(s.dk);
        CAPTURE(s.dv);
        CAPTURE(n);
        CAPTURE(ept);
        const int64_t Cqk = s.Hk * s.dk, Cv = s.Hv * s.dv, C = 2 * Cqk + Cv, ldu = C + 4, ldb = s.Hv + 3;
        auto uc = random_floats(size_t(n * ldu), 1, -1, 1);
        auto b = random_floats(size_t(n * ldb), 2, -3, 3);
        auto al = random_floats(size_t(n * ldb), 3, -3, 3);
        auto a_log = random_floats(size_t(s.Hv), 4, -2, -0.1f);
        auto dtb = random_floats(size_t(s.Hv), 5, -1, 1);
        auto st = random_floats(size_t(Cv * s.dk), 6, -0.5f, 0.5f);
        DevArray<float> duc(uc), db(b), da(al), dal(a_log), ddt(dtb), dst(st), dout(static_cast<size_t>(n * Cv)),
            dsnap(static_cast<size_t>(Cv * s.dk));
        DeltaNetArgs p =
            delta_args(s, n, duc.get(), ldu, db.get(), da.get(), ldb, dal.get(), ddt.get(), dst.get(), dout.get());
        p.snapshot_row = n - 1 > 0 ? 1 : 0;
        p.snapshot = dsnap.get();
        p.elems_per_thread = ept;
        REQUIRE(delta_net_shape_supported(s.dk, s.dv));
        REQUIRE(delta_net(p, 0) == cudaSuccess);
        std::vector<float> M(st), out, snap;
        delta_reference(s, n, uc, ldu, b, al, ldb, a_log, dtb, 1e-6f, M, out, p.snapshot_row, snap);
        CHECK(max_rel(dout.download(), out) < 1e-5);
        CHECK(max_rel(dst.download(), M) < 1e-5);
        CHECK(max_rel(dsnap.download(), snap) < 1e-5);
      }
    }
  }
}

TEST_CASE("embedding rows of every type; rows with a negative id are left alone") {
  QWEN35_REQUIRE_GPU();
  for (uint32_t t : kTypes) {
    CAPTURE(type_info(t)->name);
    QMat e(t, 50, 256, 20 + t);
    std::vector<int32_t> toks = {3, -1, 49, 0, 3};
    const int64_t ldo = 300;
    auto init = random_floats(size_t(5 * ldo), 5);
    DevArray<int32_t> dt(toks);
    DevArray<float> dout(init);
    REQUIRE(embedding_rows(e.view(), dt.get(), 5, dout.get(), ldo, 0) == cudaSuccess);
    auto out = dout.download();
    std::vector<float> want(init);
    for (int r = 0; r < 5; ++r)
      if (toks[size_t(r)] >= 0) {
        auto row = e.row(toks[size_t(r)]);
        std::copy(row.begin(), row.end(), want.begin() + r * ldo);
      }
    CHECK(max_rel(out, want) == 0.0);
  }
}

TEST_CASE("SwiGLU, argmax and the F16 conversions") {
  QWEN35_REQUIRE_GPU();
  auto g = random_floats(3 * 40, 1, -6, 6), u = random_floats(3 * 50, 2, -2, 2);
  DevArray<float> dg(g), du(u);
  REQUIRE(swiglu(dg.get(), 40, du.get(), 50, 3, 33, 0) == cudaSuccess);
  std::vector<float> want(g);
  for (int t = 0; t < 3; ++t)
    for (int k = 0; k < 33; ++k) want[size_t(t * 40 + k)] = siluf(g[size_t(t * 40 + k)]) * u[size_t(t * 50 + k)];
  CHECK(max_rel(dg.download(), want) < 1e-6);
  {  // BF16 output: the F32 result rounded as convert_rows_bf16 rounds
    DevArray<float> dg2(g);
    DevArray<uint16_t> yb(3 * 36);
    REQUIRE(swiglu_bf16(dg2.get(), 40, du.get(), 50, 3, 33, yb.get(), 36, 0) == cudaSuccess);
    auto g32 = dg.download();
    auto y16 = yb.download();
    bool same = true;
    for (int t = 0; t < 3; ++t)
      for (int k = 0; k < 33; ++k) same &= y16[size_t(t * 36 + k)] == fp32_to_bf16(g32[size_t(t * 40 + k)]);
    CHECK(same);
    CHECK(max_rel(dg2.download(), g) == 0.0);
  }

  const int64_t V = 5000;
  auto x = random_floats(size_t(4 * V), 3);
  x[size_t(0 * V + 17)] = 5.0f;  // a tie: the lower index wins
  x[size_t(0 * V + 4000)] = 5.0f;
  x[size_t(1 * V + 4999)] = 7.0f;
  x[size_t(2 * V + 0)] = 9.0f;
  x[size_t(2 * V + 1)] = NAN;    // NaN never wins
  x[size_t(3 * V + 2500)] = 3.0f;
  DevArray<float> dx(x);
  DevArray<int32_t> dam(4);
  DevArray<uint8_t> scratch(argmax_scratch_bytes(4));
  REQUIRE(argmax_rows(dx.get(), V, 4, V, dam.get(), scratch.get(), 0) == cudaSuccess);
  CHECK(dam.download() == std::vector<int32_t>{17, 4999, 0, 2500});
  // Again (the scratch was left zero), and a vocabulary-sized row whose
  // maximum appears in many blocks (ties across blocks), and an all-NaN row.
  REQUIRE(argmax_rows(dx.get(), V, 4, V, dam.get(), scratch.get(), 0) == cudaSuccess);
  CHECK(dam.download() == std::vector<int32_t>{17, 4999, 0, 2500});
  const int64_t BV = 248320;
  auto big = random_floats(size_t(2 * BV), 11, -10, 10);
  for (int64_t i = 1000; i < BV; i += 7919) big[size_t(i)] = 20.0f;  // first at 1000
  big[size_t(BV - 1)] = 21.0f;                                         // then the last element wins row 0
  for (int64_t i = 0; i < BV; ++i) big[size_t(BV + i)] = NAN;
  DevArray<float> dbig(big);
  DevArray<int32_t> dbi(2);
  DevArray<uint8_t> scratch2(argmax_scratch_bytes(2));
  REQUIRE(argmax_rows(dbig.get(), BV, 2, BV, dbi.get(), scratch2.get(), 0) == cudaSuccess);
  CHECK(dbi.download() == std::vector<int32_t>{int32_t(BV - 1), 0});
  big[size_t(BV - 1)] = 0.0f;
  dbig.upload(big);
  REQUIRE(argmax_rows(dbig.get(), BV, 1, BV, dbi.get(), scratch2.get(), 0) == cudaSuccess);
  CHECK(dbi.download()[0] == 1000);

  auto f = random_floats(1000, 4, -70000, 70000);
  DevArray<float> df(f), back(1000);
  DevArray<uint16_t> dh(1000);
  REQUIRE(f32_to_f16(df.get(), 1000, dh.get(), 0) == cudaSuccess);
  REQUIRE(f16_to_f32(dh.get(), 1000, back.get(), 0) == cudaSuccess);
  auto h = dh.download();
  auto fb = back.download();
  bool same = true;
  for (size_t i = 0; i < f.size(); ++i) same &= h[i] == fp32_to_fp16(f[i]) && fb[i] == fp16_to_fp32(h[i]);
  CHECK(same);
}

// The device's multiprocessors and how many blocks of the persistent kernel
// each holds at its largest slices and two rows (the backend's grid).
struct PersistGrid {
  int sms = 0, per_sm = 0;
};
static PersistGrid persist_grid(bool attention = false, bool fp8 = false) {
  int dev = 0;
  PersistGrid g;
  cuda_check(cudaGetDevice(&dev), "cudaGetDevice");
  cuda_check(cudaDeviceGetAttribute(&g.sms, cudaDevAttrMultiProcessorCount, dev), "attribute");
  cuda::PersistFp4Sizes most;
  most.max_kg_per = cuda::kPersistMaxKgPer;
  most.max_rows = cuda::kPersistMaxRows;
  most.attention = attention;  // (the kernel's instantiation with attention stages)
  most.fp8 = fp8;              // (the FP8 arithmetic's instantiation and chunks)
  g.per_sm = cuda::persist_fp4_blocks_per_sm(most);
  return g;
}

TEST_CASE("the persistent NVFP4 sequence equals kernel 3 stage by stage on the 4B's shapes, and the CPU") {
  QWEN35_REQUIRE_GPU();
  const PersistGrid grid = persist_grid();
  const int sms = grid.sms, per_sm = grid.per_sm;
  REQUIRE(per_sm >= 1);
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  // A delta-net layer's projections (input, output, FFN gate+up as plain
  // rows, down) and the next input projection, on the whole grid and on
  // one block per multiprocessor.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {12352, 2560}, {2560, 4096}, {18432, 2560}, {2560, 9216}, {12352, 2560}};
  for (int blocks : {sms * per_sm, sms}) {
    CAPTURE(blocks);
    const PersistCaseResult r = run_persist_case<DevArray>(shapes, blocks, sms, rand);
    REQUIRE(r.ok);
    CHECK(r.fault == 0);
    CHECK(r.repeat_equal);
    CHECK(r.worst_kernel3 < 1e-5);
    CHECK(r.worst_cpu < 2e-3);
    CHECK(all_zero(r.counters));
    CHECK(all_zero(r.done));
    CHECK(all_zero(r.tickets));
    CHECK(timeline_ordered(r.timeline, false));  // (the global timer may read the same across multiprocessors)
    if (blocks == sms * per_sm) {
      // Four times the blocks that fit (the plan's): the last three quarters
      // can start only as blocks of the first quarter leave, as when another
      // stream's kernels hold multiprocessors (with units dealt out by block,
      // the first quarter would wait for theirs until the waits gave up).
      // Units by ticket: the first quarter takes them all; no wait gives up,
      // the same bits.
      const PersistCaseResult big = run_persist_case<DevArray>(shapes, blocks, sms, rand, 4 * blocks);
      REQUIRE(big.ok);
      CHECK(big.fault == 0);
      CHECK(big.acts == r.acts);
    }
  }
}

TEST_CASE("the persistent NVFP4 sequence on the FP8 tensor cores equals kernel 3's FP8 arithmetic on the 4B's shapes") {
  QWEN35_REQUIRE_GPU();
  const PersistGrid grid = persist_grid(false, true);
  const int sms = grid.sms, per_sm = grid.per_sm;
  REQUIRE(per_sm >= 1);
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {12352, 2560}, {2560, 4096}, {18432, 2560}, {2560, 9216}, {12352, 2560}};
  const PersistCaseResult r = run_persist_case<DevArray>(shapes, sms * per_sm, sms, rand, 0, 0, true);
  REQUIRE(r.ok);
  MESSAGE("FP8 persistent: against kernel 3's FP8 " << r.worst_kernel3 << ", the CPU " << r.worst_cpu);
  CHECK(r.fault == 0);
  CHECK(r.repeat_equal);
  CHECK(r.worst_kernel3 < 1e-5);
  CHECK(r.worst_cpu < 5e-4);  // (emulated: 1.8e-5; the tensor cores' FP8 accumulation may be narrower)
  CHECK(all_zero(r.counters));
  CHECK(all_zero(r.done));
  CHECK(all_zero(r.tickets));
}

TEST_CASE("the persistent NVFP4 sequence runs the 4B's delta rule between its projections as delta_net") {
  QWEN35_REQUIRE_GPU();
  const PersistGrid grid = persist_grid();
  const int sms = grid.sms, per_sm = grid.per_sm;
  REQUIRE(per_sm >= 1);
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  // D 2,560; 16 key heads, 32 value heads of 128: the input projection
  // (12,352 rows, the conv over 8,192), the delta rule, the output projection.
  const PersistDeltaResult r = run_persist_delta_case<DevArray>(2560, 16, 32, 128, 128, sms * per_sm, sms, rand);
  REQUIRE(r.ok);
  CHECK(r.fault == 0);
  CHECK(r.repeat_equal);
  CHECK(r.delta_equal);
  MESSAGE("mix " << r.worst_mix << " window " << r.worst_win << " h " << r.worst_h);
  CHECK(r.worst_mix < 1e-5);
  CHECK(r.worst_win < 1e-5);
  CHECK(r.worst_h < 1e-5);
  CHECK(all_zero(r.counters));
  CHECK(all_zero(r.done));
}

TEST_CASE("the persistent NVFP4 sequence runs the 4B's decode attention between its projections") {
  QWEN35_REQUIRE_GPU();
  const PersistGrid grid = persist_grid(true);
  const int sms = grid.sms, per_sm = grid.per_sm;
  REQUIRE(per_sm >= 1);
  MESSAGE("blocks per multiprocessor with attention stages: " << per_sm);
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  // D 2,560; 16 query heads, 4 KV heads of 256, after 500 cached rows: 128
  // splits (the backend's at a context of 2,048 or more; most of them
  // empty here) and 32 (every split 16 keys); attention_fused with 8.
  for (int splits : {128, 32}) {
    CAPTURE(splits);
    const PersistAttnResult r = run_persist_attn_case<DevArray>(2560, 16, 4, 256, 500, splits, 8, sms * per_sm, sms,
                                                                rand);
    REQUIRE(r.ok);
    CHECK(r.fault == 0);
    CHECK(r.repeat_equal);
    MESSAGE("mix " << r.worst_mix << " o " << r.worst_o << " k " << r.worst_k << " v " << r.worst_v << " h "
                   << r.worst_h << "; cache elements unlike attention_fused's: " << r.cache_rows_differ);
    CHECK(r.worst_mix < 1e-5);
    CHECK(r.worst_o < 1e-5);
    CHECK(r.worst_k < 1e-3);
    CHECK(r.worst_v == 0.0);
    CHECK(r.worst_h < 1e-5);
    for (const std::vector<int>* c : {&r.counters, &r.done, &r.tickets, &r.attn_counters})
      CHECK(all_zero(*c));
    // Two rows: the first row's bits are those of a launch of it alone.
    const PersistAttnResult r2 = run_persist_attn_case<DevArray>(2560, 16, 4, 256, 500, splits, 8, sms * per_sm,
                                                                 sms, rand, 2);
    REQUIRE(r2.ok);
    CHECK(r2.fault == 0);
    CHECK(r2.worst_o < 1e-5);
    CHECK(std::equal(r.o.begin(), r.o.end(), r2.o.begin()));
    CHECK(std::equal(r.h.begin(), r.h.end(), r2.h.begin()));
  }
}

TEST_CASE("the persistent NVFP4 sequence runs a 4B delta-net layer's tail (norms, SwiGLU, Add, conv) as kernel 3") {
  QWEN35_REQUIRE_GPU();
  const PersistGrid grid = persist_grid();
  const int sms = grid.sms, per_sm = grid.per_sm;
  REQUIRE(per_sm >= 1);
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  // The 4B: D 2,560, FFN 9,216, 32 value heads of 128, conv over 8,192 of
  // the input projection's 12,352 rows; the table in the launch's
  // parameters (the backend's way) and in device memory.
  for (bool inline_stages : {true, false}) {
    CAPTURE(inline_stages);
    const PersistTailResult r =
        run_persist_tail_case<DevArray>(2560, 9216, 32, 128, 8192, 12352, sms * per_sm, sms, rand, inline_stages);
    REQUIRE(r.ok);
    CHECK(r.fault == 0);
    CHECK(r.repeat_equal);
    CHECK(r.squares == std::vector<bool>{true, false, true, false});
    MESSAGE("h " << r.worst_h << " act " << r.worst_act << " mix " << r.worst_mix << " window " << r.worst_win
                 << "; same input: mix " << r.worst_mix_same << " window " << r.worst_win_same);
    CHECK(r.worst_h < 1e-5);
    CHECK(r.worst_act < 1e-5);
    CHECK(r.worst_mix < 1e-4);
    CHECK(r.worst_win < 1e-4);
    CHECK(r.worst_mix_same < 1e-5);
    CHECK(r.worst_win_same < 1e-5);
    CHECK(all_zero(r.counters));
    CHECK(all_zero(r.done));
  }
}

TEST_CASE("the persistent NVFP4 sequence waiting by column slice gives the bits of whole-stage waits (4B shapes)") {
  QWEN35_REQUIRE_GPU();
  const PersistGrid grid = persist_grid();
  const int sms = grid.sms, per_sm = grid.per_sm;
  REQUIRE(per_sm >= 1);
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  const int blocks = sms * per_sm;
  // The products of a delta-net layer in a row, on the plan's grid and on
  // four times it (the later blocks start as the first ones leave).
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {12352, 2560}, {2560, 4096}, {18432, 2560}, {2560, 9216}, {12352, 2560}};
  const PersistCaseResult whole = run_persist_case<DevArray>(shapes, blocks, sms, rand);
  REQUIRE(whole.ok);
  for (int launch_blocks : {0, 4 * blocks}) {
    CAPTURE(launch_blocks);
    const PersistCaseResult r = run_persist_case<DevArray>(shapes, blocks, sms, rand, launch_blocks, 0, false, true);
    REQUIRE(r.ok);
    CHECK(r.fault == 0);
    CHECK(r.repeat_equal);
    CHECK(r.slice_per == std::vector<int>{0, 16, 16, 16, 16});
    CHECK(r.acts == whole.acts);
    CHECK(all_zero(r.counters));
    CHECK(all_zero(r.done));
    CHECK(all_zero(r.tickets));
    if (!launch_blocks) CHECK(timeline_ordered(r.timeline, false, true));
  }
  // A delta-net layer's tail (norms after all of the stage before) and its
  // head (the output projection by the heads of its slice).
  const PersistTailResult tw =
      run_persist_tail_case<DevArray>(2560, 9216, 32, 128, 8192, 12352, blocks, sms, rand, false);
  const PersistTailResult ts =
      run_persist_tail_case<DevArray>(2560, 9216, 32, 128, 8192, 12352, blocks, sms, rand, false, 1, true);
  REQUIRE(tw.ok);
  REQUIRE(ts.ok);
  CHECK(ts.fault == 0);
  CHECK(ts.slice_per == std::vector<int>{0, 16, 8, 16});
  CHECK(same_bits(ts, tw));
  CHECK(all_zero(ts.counters));
  CHECK(all_zero(ts.done));
  const PersistDeltaResult dw = run_persist_delta_case<DevArray>(2560, 16, 32, 128, 128, blocks, sms, rand);
  const PersistDeltaResult ds = run_persist_delta_case<DevArray>(2560, 16, 32, 128, 128, blocks, sms, rand, 1, true);
  REQUIRE(dw.ok);
  REQUIRE(ds.ok);
  CHECK(ds.fault == 0);
  CHECK(ds.slice_per == std::vector<int>{0, 0, 2});
  CHECK(same_bits(ds, dw));
  CHECK(all_zero(ds.counters));
  CHECK(all_zero(ds.done));
}
