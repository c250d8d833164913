// The CUDA kernels run on the CPU through the emulation of cuda_emu.h
// (the plain-CUDA ones here; the tensor-core decode kernels, with mma.sync
// emulated from its fragment tables, in test_cuda_emu_quant.cpp), against the same CPU references as
// the GPU op tests (tests/gpu/kernel_refs.h, the case headers); the vision
// kernels against the CPU vision kernels (lib/vision/kernels.h). Every case runs the threads and
// blocks in ascending and in descending order, so a read that only works
// because another thread happened to run first fails one of the two.
// "Device" memory is host memory here.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attention.h"
#include "chain_case.h"
#include "conv.h"
#include "cpu/ops.h"
#include "cuda_emu.h"
#include "emu_test_util.h"
#include "delta_chunked_case.h"
#include "fp4_refs.h"
#include "delta_net.h"
#include "elementwise.h"
#include "fused_attn_case.h"
#include "kernel_refs.h"
#include "matvec_fp4.h"
#include "matvec_q6k.h"
#include "quants.h"
#include "tuning.h"
#include "norm.h"
#include "topk_case.h"
#include "vision/encoder.h"
#include "vision/kernels.h"
#include "vision_kernels.h"

using namespace qwen35;
using namespace qwen35::cuda;
using namespace qwen35::test;


TEST_CASE("emulated: causal conv + SiLU over row blocks matches conv_silu_step, with snapshots") {
  for (bool reverse : {false, true}) {
    emu::set_order(reverse);
    for (int64_t K : {2, 4}) {
      for (int64_t n : {1, 2, 9, 40}) {
        for (int64_t snap_row : {int64_t(0), n / 2, n - 1}) {
          CAPTURE(reverse);
          CAPTURE(K);
          CAPTURE(n);
          CAPTURE(snap_row);
          const int64_t C = 300, ldu = 320;
          auto u = random_floats(size_t(n * ldu), 1, -2, 2);
          auto taps = random_floats(size_t(C * K), 2, -1, 1);
          auto win = random_floats(size_t((K - 1) * C), 3, -2, 2);
          std::vector<float> dwin(win), dout(size_t(n * C), NAN), dsnap(size_t((K - 1) * C), NAN);
          ConvArgs a;
          a.n = n;
          a.C = C;
          a.K = K;
          a.u = u.data();
          a.ldu = ldu;
          a.taps = taps.data();
          a.window = dwin.data();
          a.out = dout.data();
          a.snapshot_row = snap_row;
          a.snapshot = dsnap.data();
          REQUIRE(conv_silu(a, nullptr) == cudaSuccess);
          std::vector<float> out, snap;
          conv_reference(u, ldu, taps, C, K, n, snap_row, win, out, snap);
          CHECK(rel(dout, out) < 1e-6);
          CHECK(rel(dwin, win) == 0.0);
          CHECK(rel(dsnap, snap) == 0.0);
        }
      }
    }
  }
  emu::set_order(false);
}

TEST_CASE("emulated: the delta rule kernel (8, 16 and 32 elements per thread) matches delta_rule_step") {
  for (bool reverse : {false, true}) {
    emu::set_order(reverse);
    for (DeltaShape s : {DeltaShape{2, 2, 64, 32}, DeltaShape{1, 2, 128, 32}, DeltaShape{1, 1, 256, 32},
                         DeltaShape{2, 2, 32, 64}}) {
      for (int64_t n : {1, 7, 40}) {
        for (int ept : {8, 16, 32}) {
          CAPTURE(reverse);
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
          std::vector<float> dst(st), dout(size_t(n * Cv), NAN), dsnap(size_t(Cv * s.dk), NAN);
          DeltaNetArgs p = delta_args(s, n, uc.data(), ldu, b.data(), al.data(), ldb, a_log.data(), dtb.data(),
                                      dst.data(), dout.data());
          p.snapshot_row = n > 1 ? n - 2 : 0;
          p.snapshot = dsnap.data();
          p.elems_per_thread = ept;
          REQUIRE(delta_net(p, nullptr) == cudaSuccess);
          std::vector<float> M(st), out, snap;
          delta_reference(s, n, uc, ldu, b, al, ldb, a_log, dtb, 1e-6f, M, out, p.snapshot_row, snap);
          CHECK(rel(dout, out) < 1e-5);
          CHECK(rel(dst, M) < 1e-5);
          CHECK(rel(dsnap, snap) < 1e-5);
        }
      }
    }
  }
  emu::set_order(false);
}

TEST_CASE("emulated: split, tiled and tensor-core attention match attend_one with the gate") {
  for (bool reverse : {false, true}) {
    emu::set_order(reverse);
    for (int64_t Dh : {64, 128, 256, 512}) {
      for (int64_t n : {1, 6, 40, 70}) {
        for (int64_t n_past : {0, 21}) {
          // split 1, split 3, tiled, tensor cores (tiled F32 for Dh 512), split 32
          // (the most the merge takes; most splits empty at these lengths)
          for (int mode : {0, 1, 2, 3, 4}) {
            if (n == 70 && (mode < 2 || mode == 4)) continue;  // two row tiles: the batch kernels only
            if (mode == 4 && n > 6) continue;
            CAPTURE(reverse);
            CAPTURE(Dh);
            CAPTURE(n);
            CAPTURE(n_past);
            CAPTURE(mode);
            const int64_t Hq = 4, Hkv = 2, n_ctx = 100, qd = Hq * Dh, kvd = Hkv * Dh;
            const int splits = mode == 1 ? 3 : mode == 4 ? 32 : 1;
            auto q = random_floats(size_t(n * qd), 1, -1, 1);
            auto kf = random_floats(size_t(n_ctx * kvd), 2, -1, 1);
            auto vf = random_floats(size_t(n_ctx * kvd), 3, -1, 1);
            const int64_t ldgate = 2 * qd + 8;
            auto gate = random_floats(size_t(n * ldgate), 4, -3, 3);
            std::vector<uint16_t> kh(kf.size()), vh(vf.size());
            for (size_t i = 0; i < kf.size(); ++i) {
              // Cache rows past the batch hold garbage (NaN) that must never be read into a result.
              const bool stale = int64_t(i) >= (n_past + n) * kvd;
              kh[i] = stale ? 0x7E00 : to_f16(kf[i]);
              vh[i] = stale ? 0x7E00 : to_f16(vf[i]);
              kf[i] = from_f16(kh[i]);
              vf[i] = from_f16(vh[i]);
            }
            std::vector<float> dout(size_t(n * qd), NAN), pm(size_t(n * Hq * splits)), pl(pm.size()),
                po(pm.size() * size_t(Dh));
            int32_t np32 = int32_t(n_past);
            AttnArgs a;
            a.n = n;
            a.n_head = Hq;
            a.n_head_kv = Hkv;
            a.head_dim = Dh;
            a.scale = 1.0f / std::sqrt(float(Dh));
            a.q = q.data();
            a.k_cache = kh.data();
            a.v_cache = vh.data();
            a.gate = gate.data() + Dh;  // the attention layer's layout: per head [q | gate]
            a.ldgate = ldgate;
            a.gate_stride = 2 * Dh;
            a.n_past = &np32;
            a.o = dout.data();
            a.splits = splits;
            a.part_m = pm.data();
            a.part_l = pl.data();
            a.part_o = po.data();
            a.tiled = mode == 2 || mode == 3;
            a.tensor_cores = mode == 3;
            REQUIRE(attention(a, nullptr) == cudaSuccess);
            std::vector<float> want;
            std::vector<float> g(gate.begin() + Dh, gate.end());
            attention_reference(q, kf, vf, g, ldgate, 2 * Dh, n, n_past, Hq, Hkv, Dh, a.scale, want);
            // Tensor cores too: the F16 hi + lo operands keep F32 precision (~2e-7 here).
            CHECK(rel(dout, want) < 2e-6);
          }
        }
      }
    }
  }
  emu::set_order(false);
}


TEST_CASE("emulated: the fused decode attention equals q/k norm + RoPE + split attention, caches included") {
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  for (bool reverse : {false, true}) {
    emu::set_order(reverse);
    for (int64_t Dh : {64, 256, 512}) {
      for (int64_t n : {1, 2}) {
        for (int64_t n_past : {0, 9, 30, 45}) {
          for (int splits : {1, 3, 8, 32}) {
            if (splits == 32 && n_past != 45) continue;  // 46-47 keys: 23-24 splits with 2, the rest empty
            CAPTURE(reverse);
            CAPTURE(Dh);
            CAPTURE(n);
            CAPTURE(n_past);
            CAPTURE(splits);
            const FusedAttnResult r = run_fused_attention_case<HostArray>(Dh, n, n_past, splits, rand, to_f16);
            REQUIRE(r.ok);
            // Same arithmetic in the same order: equal bits.
            CHECK(rel(r.out_fused, r.out_ref) == 0.0);
            CHECK(r.k_fused == r.k_ref);
            CHECK(r.v_fused == r.v_ref);
            CHECK(std::all_of(r.counters.begin(), r.counters.end(), [](int32_t c) { return c == 0; }));
            // The host's rotation tables: the same cosines and sines as the
            // kernels compute (here, where both use the host's cos/sin).
            const FusedAttnResult rt = run_fused_attention_case<HostArray>(Dh, n, n_past, splits, rand, to_f16, true);
            REQUIRE(rt.ok);
            CHECK(rel(rt.out_fused, r.out_fused) == 0.0);
            CHECK(rel(rt.out_ref, r.out_ref) == 0.0);
            CHECK(rt.k_fused == r.k_fused);
          }
        }
      }
    }
  }
  emu::set_order(false);
}

TEST_CASE("emulated: two row norms in one launch equal two rmsnorm_rows calls") {
  // As the MTP pass: the first in place in the first half of [n, 2D] rows,
  // the second from other rows into the second half.
  const int64_t n = 3, D = 320;
  const auto in = random_floats(size_t(n * 2 * D), 11, -3, 3), hid = random_floats(size_t(n * D), 12, -3, 3);
  const auto w1 = random_floats(size_t(D), 13, 0.5f, 1.5f), w2 = random_floats(size_t(D), 14, 0.5f, 1.5f);
  std::vector<float> a(in), b(in);
  REQUIRE(rmsnorm_rows(a.data(), 2 * D, w1.data(), n, D, 1e-6f, a.data(), 2 * D, nullptr) == cudaSuccess);
  REQUIRE(rmsnorm_rows(hid.data(), D, w2.data(), n, D, 1e-6f, a.data() + D, 2 * D, nullptr) == cudaSuccess);
  NormRows p, q;
  p.x = b.data();
  p.ldx = 2 * D;
  p.w = w1.data();
  p.y = b.data();
  p.ldy = 2 * D;
  q.x = hid.data();
  q.ldx = D;
  q.w = w2.data();
  q.y = b.data() + D;
  q.ldy = 2 * D;
  REQUIRE(rmsnorm_rows_pair(p, q, n, D, 1e-6f, nullptr) == cudaSuccess);
  CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
  CHECK(a != in);
}

TEST_CASE("emulated: the norms with BF16 outputs equal the F32 norms rounded to BF16") {
  const int64_t n = 5, D = 640, heads = 10, dv = 64, ldz = heads * dv + 16;
  auto x = random_floats(size_t(n * (D + 8)), 5, -3, 3);
  auto w = random_floats(size_t(D), 7, 0.5f, 1.5f);
  std::vector<float> y(size_t(n * D));
  std::vector<uint16_t> yb(size_t(n * (D + 4)), 0xFFFF);
  REQUIRE_MESSAGE(rmsnorm_rows(x.data(), D + 8, w.data(), n, D, 1e-6f, y.data(), D, nullptr) == cudaSuccess,
                  std::string(emu::last_error()));
  REQUIRE(rmsnorm_rows_bf16(x.data(), D + 8, w.data(), n, D, 1e-6f, yb.data(), D + 4, nullptr) == cudaSuccess);
  bool same = true;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < D; ++i)
      same &= yb[size_t(t * (D + 4) + i)] == __bfloat16_as_ushort(__float2bfloat16_rn(y[size_t(t * D + i)]));
  CHECK(same);

  auto o = random_floats(size_t(n * heads * dv), 8, -2, 2);
  auto z = random_floats(size_t(n * ldz), 9, -4, 4);
  auto wn = random_floats(size_t(dv), 10, 0.5f, 1.5f);
  std::vector<float> o32(o);
  std::vector<uint16_t> ob(o.size());
  REQUIRE(gated_rmsnorm(o32.data(), z.data(), ldz, wn.data(), n, heads, dv, 1e-6f, nullptr) == cudaSuccess);
  REQUIRE(gated_rmsnorm_bf16(o.data(), z.data(), ldz, wn.data(), n, heads, dv, 1e-6f, ob.data(), nullptr) ==
          cudaSuccess);
  same = true;
  for (size_t i = 0; i < o.size(); ++i) same &= ob[i] == __bfloat16_as_ushort(__float2bfloat16_rn(o32[i]));
  CHECK(same);
  CHECK(rel(o, random_floats(size_t(n * heads * dv), 8, -2, 2)) == 0.0);  // the input is unchanged
}

// ---- vision encoder kernels (cuda/vision_*.cu) against lib/vision/kernels.h ----

namespace {

// F32 activation and the same value rounded as the F16 / BF16 GEMM inputs.
uint16_t to_bf16(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

// The vision kernels' outputs in each activation type: F32 is checked
// against the CPU twin, F16 and BF16 must be the F32 values rounded.
template <typename Run>
void check_act_types(int64_t n, int64_t cols, int64_t ldy, Run&& run, const std::vector<float>& want, double bar) {
  std::vector<float> y(size_t(n * ldy), NAN);
  std::vector<uint16_t> yh(size_t(n * ldy), 0xFFFF), yb(size_t(n * ldy), 0xFFFF);
  REQUIRE_MESSAGE(run(static_cast<void*>(y.data()), ActType::F32) == cudaSuccess, std::string(emu::last_error()));
  REQUIRE(run(static_cast<void*>(yh.data()), ActType::F16) == cudaSuccess);
  REQUIRE(run(static_cast<void*>(yb.data()), ActType::BF16) == cudaSuccess);
  std::vector<float> got(size_t(n * cols));
  bool rounded = true, pad_kept = true;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < ldy; ++i) {
      const size_t k = size_t(t * ldy + i);
      if (i >= cols) {
        pad_kept &= std::isnan(y[k]) && yh[k] == 0xFFFF && yb[k] == 0xFFFF;
        continue;
      }
      got[size_t(t * cols + i)] = y[k];
      rounded &= yh[k] == to_f16(y[k]) && yb[k] == to_bf16(y[k]);
    }
  CHECK(rel(got, want) < bar);
  CHECK(rounded);
  CHECK(pad_kept);
}

}  // namespace

TEST_CASE("emulated: vision LayerNorm matches layer_norm_ref, in F32, F16 and BF16") {
  for (bool reverse : {false, true}) {
    emu::set_order(reverse);
    for (int64_t C : {64, 300, 1024}) {
      for (int64_t n : {1, 5}) {
        CAPTURE(reverse);
        CAPTURE(C);
        CAPTURE(n);
        const int64_t ldx = C + 12, ldy = C + 4;
        auto x = random_floats(size_t(n * ldx), 11, -3, 5);  // mean far from 0: tests the two-pass variance
        auto g = random_floats(size_t(C), 12, 0.5f, 1.5f);
        auto b = random_floats(size_t(C), 13, -0.5f, 0.5f);
        std::vector<float> want(size_t(n * C));
        for (int64_t t = 0; t < n; ++t)
          vision::layer_norm_ref(x.data() + t * ldx, g.data(), b.data(), C, 1e-6f, want.data() + t * C);
        check_act_types(
            n, C, ldy,
            [&](void* y, ActType yt) {
              return vision_layer_norm(x.data(), ldx, g.data(), b.data(), n, C, 1e-6f, y, ldy, yt, nullptr);
            },
            want, 1e-6);
        // In place (F32, same stride).
        std::vector<float> xi(x);
        REQUIRE(vision_layer_norm(xi.data(), ldx, g.data(), b.data(), n, C, 1e-6f, xi.data(), ldx, ActType::F32,
                                  nullptr) == cudaSuccess);
        std::vector<float> gi(size_t(n * C));
        for (int64_t t = 0; t < n; ++t) std::copy_n(xi.data() + t * ldx, C, gi.data() + t * C);
        CHECK(rel(gi, want) < 1e-6);
      }
    }
  }
  emu::set_order(false);
}

TEST_CASE("emulated: vision bias + GELU (tanh, erf, none) matches gelu_tanh_ref / gelu_erf") {
  for (bool reverse : {false, true}) {
    emu::set_order(reverse);
    for (VisionAct act : {VisionAct::None, VisionAct::GeluTanh, VisionAct::GeluErf}) {
      for (bool with_bias : {true, false}) {
        CAPTURE(reverse);
        CAPTURE(int(act));
        CAPTURE(with_bias);
        const int64_t n = 7, cols = 333, ldx = 340, ldy = 336;
        auto x = random_floats(size_t(n * ldx), 21, -6, 6);
        auto bias = random_floats(size_t(cols), 22, -1, 1);
        std::vector<float> want(size_t(n * cols));
        for (int64_t t = 0; t < n; ++t)
          for (int64_t i = 0; i < cols; ++i) want[size_t(t * cols + i)] = x[size_t(t * ldx + i)] + (with_bias ? bias[size_t(i)] : 0.0f);
        if (act == VisionAct::GeluTanh) vision::gelu_tanh_ref(want.data(), int64_t(want.size()));
        if (act == VisionAct::GeluErf) vision::gelu_erf(want.data(), int64_t(want.size()));
        check_act_types(
            n, cols, ldy,
            [&](void* y, ActType yt) {
              return vision_bias_act(x.data(), ldx, with_bias ? bias.data() : nullptr, n, cols, act, y, ldy, yt,
                                     nullptr);
            },
            want, 1e-6);
      }
    }
    // In place on an F32 residual (the bias adds after the residual GEMMs).
    const int64_t n = 3, cols = 64;
    auto x = random_floats(size_t(n * cols), 23, -2, 2);
    auto bias = random_floats(size_t(cols), 24, -1, 1);
    std::vector<float> want(x);
    for (size_t k = 0; k < want.size(); ++k) want[k] += bias[k % size_t(cols)];
    REQUIRE(vision_bias_act(x.data(), cols, bias.data(), n, cols, VisionAct::None, x.data(), cols, ActType::F32,
                            nullptr) == cudaSuccess);
    CHECK(rel(x, want) == 0.0);
  }
  emu::set_order(false);
}

TEST_CASE("emulated: vision 2-D RoPE matches rope2d_head on q and k, v untouched") {
  for (bool reverse : {false, true}) {
    emu::set_order(reverse);
    for (int64_t DH : {32, 64}) {
      CAPTURE(reverse);
      CAPTURE(DH);
      const int32_t gw = 6, gh = 4, mw = gw / 2;
      const int64_t n = gw * gh, NH = 3, C = NH * DH, ld = 3 * C + 8, half = DH / 2;
      auto qkv = random_floats(size_t(n * ld), 31, -2, 2);
      std::vector<float> cs(size_t(n * half)), sn(size_t(n * half));
      for (int64_t s = 0; s < n; ++s) {
        const int64_t m = s >> 2;
        const int32_t py = int32_t(m / mw) * 2 + int32_t((s >> 1) & 1), px = int32_t(m % mw) * 2 + int32_t(s & 1);
        vision::VisionRopeCosSin(py, px, int32_t(DH), cs.data() + s * half, sn.data() + s * half);
      }
      std::vector<float> want(qkv);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t part = 0; part < 2; ++part)
          for (int64_t h = 0; h < NH; ++h)
            vision::rope2d_head(want.data() + t * ld + part * C + h * DH, cs.data() + t * half, sn.data() + t * half,
                                half);
      REQUIRE(vision_rope(qkv.data(), ld, n, NH, DH, C, cs.data(), sn.data(), nullptr) == cudaSuccess);
      CHECK(rel(qkv, want) < 1e-6);
      bool v_same = true;
      const auto orig = random_floats(size_t(n * ld), 31, -2, 2);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t i = 2 * C; i < ld; ++i) v_same &= qkv[size_t(t * ld + i)] == orig[size_t(t * ld + i)];
      CHECK(v_same);
    }
  }
  emu::set_order(false);
}

TEST_CASE("emulated: vision attention (tiled F32 and tensor cores) matches scores + softmax_ref + weighted V") {
  for (bool reverse : {false, true}) {
    emu::set_order(reverse);
    for (int64_t DH : {32, 64, 128}) {
      for (int64_t n : {1, 5, 33, 70, 130}) {
      for (bool mma : {false, true}) {
        CAPTURE(reverse);
        CAPTURE(DH);
        CAPTURE(n);
        CAPTURE(mma);
        const int64_t NH = 2, C = NH * DH, ld = 3 * C + 4, ldo = C + 8;
        const float scale = 1.0f / std::sqrt(float(DH));
        auto qkv = random_floats(size_t(n * ld), 41, -2, 2);
        std::vector<float> o(size_t(n * ldo), NAN);
        const cudaError_t e = mma ? vision_attention_mma(qkv.data(), ld, C, 2 * C, n, NH, DH, scale, o.data(), ldo, nullptr)
                                  : vision_attention(qkv.data(), ld, C, 2 * C, n, NH, DH, scale, o.data(), ldo, nullptr);
        REQUIRE_MESSAGE(e == cudaSuccess, std::string(emu::last_error()));
        // The CPU encoder's attention_ref, one query at a time.
        std::vector<float> want(size_t(n * C)), got(size_t(n * C)), sc(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
          for (int64_t h = 0; h < NH; ++h) {
            const float* q = qkv.data() + i * ld + h * DH;
            for (int64_t j = 0; j < n; ++j) {
              const float* k = qkv.data() + j * ld + C + h * DH;
              float acc = 0.0f;
              for (int64_t d = 0; d < DH; ++d) acc += q[d] * k[d];
              sc[size_t(j)] = acc * scale;
            }
            vision::softmax_ref(sc.data(), n);
            for (int64_t d = 0; d < DH; ++d) {
              float acc = 0.0f;
              for (int64_t j = 0; j < n; ++j) acc += sc[size_t(j)] * qkv[size_t(j * ld + 2 * C + h * DH + d)];
              want[size_t(i * C + h * DH + d)] = acc;
              got[size_t(i * C + h * DH + d)] = o[size_t(i * ldo + h * DH + d)];
            }
          }
        CHECK(rel(got, want) < 1e-5);
        bool pad_kept = true;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t c = C; c < ldo; ++c) pad_kept &= std::isnan(o[size_t(i * ldo + c)]);
        CHECK(pad_kept);
      }
      }
    }
  }
  emu::set_order(false);
}

TEST_CASE("emulated: sampling candidates (adjust + radix search + compaction) equal select_topk; the normalizer bit for bit") {
  for (bool reverse : {false, true}) {
    emu::set_order(reverse);
    for (int32_t V : {3000, 70000}) {
      for (int32_t k : {1, 20, 1024}) {
        for (TopkRow kind : {TopkRow::kGrid, TopkRow::kFine, TopkRow::kLowBits, TopkRow::kFlat}) {
          CAPTURE(reverse);
          CAPTURE(V);
          CAPTURE(k);
          CAPTURE(int(kind));
          const auto logits = topk_row(V, uint32_t(V + k), kind);
          TopKRequest req = topk_request(V, k, uint32_t(k));
          // The normalizer too (samplers without top-k ask with k = 1024).
          req.temperature = k == 1024 ? 0.8f : k == 20 ? 1.7f : 0.0f;
          const TopkCaseResult r = run_topk_case<HostArray>(logits, req);
          CHECK(check_topk_case(logits, req, r) == "");
          if (req.temperature > 0) CHECK(r.total > 0);
          // The flat rows of 70,000 tie far more tokens at the 1024th rank
          // than the candidates hold (check_topk_case checks every failure).
          if (kind == TopkRow::kFlat && V > kTopkCap && k == 1024) CHECK(r.failed);
          if (kind == TopkRow::kLowBits) CHECK_FALSE(r.failed);
        }
      }
    }
    // No adjustments at all.
    const auto logits = topk_row(5000, 3);
    TopKRequest plain;
    plain.k = 40;
    const TopkCaseResult r = run_topk_case<HostArray>(logits, plain);
    CHECK(check_topk_case(logits, plain, r) == "");
  }
  emu::set_order(false);
}

TEST_CASE("emulated: the chunked delta rule matches the sequential reference (chunk edges, a wiping gate)") {
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  for (bool reverse : {false, true}) {
    emu::set_order(reverse);
    for (DeltaShape s : {DeltaShape{1, 2, 32, 32}, DeltaShape{2, 2, 64, 64}, DeltaShape{1, 1, 128, 128},
                         DeltaShape{2, 4, 128, 96}}) {
      for (int64_t n : {1, 63, 64, 65, 150}) {
        for (bool wipe : {false, true}) {
          if (wipe && n < 64) continue;
          CAPTURE(reverse);
          CAPTURE(s.dk);
          CAPTURE(s.dv);
          CAPTURE(n);
          CAPTURE(wipe);
          REQUIRE(delta_chunked_supported(s.dk, s.dv));
          const DeltaChunkedResult r = run_delta_chunked_case<HostArray>(s, n, wipe, rand);
          REQUIRE(r.ok);
          CHECK(rel(r.out, r.ref_out) < 1e-5);
          CHECK(rel(r.state, r.ref_state) < 1e-5);
        }
      }
    }
  }
  emu::set_order(false);
}
