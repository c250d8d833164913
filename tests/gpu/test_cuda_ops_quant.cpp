// The decode kernels of the quantized weights against their CPU twins on
// random inputs: the NVFP4 tensor-core matvecs (every variant, prologues and
// epilogues), the chained projections, the Q6_K LM head kernels and their
// greedy epilogue, the Blackwell FP4 GEMM, the sampling candidates and the
// chunked delta rule. (The other kernels: test_cuda_ops.cpp.) Skips (and
// passes) without a CUDA device.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention.h"
#include "chain_case.h"
#include "cpu/ops.h"
#include "delta_chunked_case.h"
#include "delta_net.h"
#include "fp4_gemm.h"
#include "gemm.h"
#include "fp4_refs.h"
#include "gpu_test_util.h"
#include "gpu_qmat.h"
#include "kernel_refs.h"
#include "matmul.h"
#include "matvec_fp4.h"
#include "matvec_q6k.h"
#include "ktiles.h"
#include "quants.h"
#include "test_util.h"
#include "topk_case.h"
#include "tuning.h"

using namespace qwen35;
using namespace qwen35::cuda;
using namespace qwen35::test;

namespace {

int device_sms() {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return sms;
}

// The NVFP4 kernel variants every tensor-core test runs: kernel 1, and
// kernels 2 and 3 with each block width and prefetch depth (stage count),
// at split choices from one slice to the most slices; kernel 3 also with
// lean scaling and with the cluster combine.
std::vector<DecodeTuning> fp4_variants() {
  std::vector<DecodeTuning> v;
  DecodeTuning t;
  t.fp4_kernel = 1;
  v.push_back(t);
  t.fp4_kernel = 2;
  for (int warps : {4, 8})
    for (int depth : {4, 8, 16})
      for (int bps : {1, 4, 32}) {
        t.fp4_warps = warps;
        t.fp4_depth = depth;
        t.fp4_blocks_per_sm = bps;
        v.push_back(t);
      }
  t.fp4_kernel = 3;
  t.fp4_depth = 4;
  t.fp4_warps = 4;
  for (int cluster : {0, 1})
    for (int lean : {0, 1})
      for (int stages : {2, 4, 8})
        for (int bps : {1, 4, 32}) {
          if (stages == 8 && lean) continue;
          t.fp4_cluster = cluster;
          t.fp4_lean = lean;
          t.fp4_stages = stages;
          t.fp4_blocks_per_sm = bps;
          v.push_back(t);
        }
  // The FP8 arithmetic (sm_89 and later; one and two rows, else the F16 one).
  t.fp4_lean = 0;
  t.fp4_stages = 4;
  t.fp4_fp8 = 1;
  for (int cluster : {0, 1})
    for (int bps : {1, 4, 32}) {
      t.fp4_cluster = cluster;
      t.fp4_blocks_per_sm = bps;
      v.push_back(t);
    }
  return v;
}

// Sets the decode tuning for a scope.
struct TuningScope {
  DecodeTuning saved = decode_tuning();
  explicit TuningScope(const DecodeTuning& t) { set_decode_tuning(t); }
  ~TuningScope() { set_decode_tuning(saved); }
};

// A tiled NVFP4 weight on the device, repacked from random GGUF rows.
struct TiledFp4 {
  QMat a, b;  // b: the up rows of a GateUp pair (unused for Plain)
  DevArray<uint8_t> buf;
  Fp4Tiled t;
  TiledFp4(int64_t rows, int64_t cols, Fp4Pairing pairing, uint32_t seed)
      : a(GGML_NVFP4, rows, cols, seed), b(GGML_NVFP4, pairing == Fp4Pairing::GateUp ? rows : 1, cols, seed + 1) {
    t.rows = rows;
    t.cols = cols;
    t.pairing = pairing;
    t.scale = 0.5f;
    buf.alloc(2 * t.code_bytes() + t.scale_bytes());
    t.codes = buf.get();
    t.scales = buf.get() + t.code_bytes();
    t.codes8 = t.scales + t.scale_bytes();  // (for the variants with tuning fp4_fp8)
    REQUIRE(fp4_repack(a.dev.get(), pairing == Fp4Pairing::GateUp ? b.dev.get() : nullptr, a.row_bytes, t, 0) ==
            cudaSuccess);
  }
};

// A weight's rows in the tiles of ktiles.h on the device (repacked in one range).
struct DevKTiles {
  KTiles q;
  DevArray<uint8_t> buf;
  DevKTiles(const QMat& w, float scale, bool paired = false)
      : q(ktiles_plan(w.type, w.rows, w.cols, scale, paired)), buf(size_t(ktiles_bytes(q))) {
    ktiles_place(&q, buf.get());
    REQUIRE(ktiles_repack(q, w.dev.get(), w.row_bytes, 0, w.rows, 0) == cudaSuccess);
  }
};

}  // namespace

TEST_CASE("tensor-core NVFP4 matvec matches the CPU (plain, norm prologue, add, SwiGLU, split K)") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  struct Case {
    int64_t rows, cols;
  };
  for (Case cs : {Case{40, 256}, Case{2560, 9216}, Case{1024, 2560}, Case{8192 + 2048, 2560}}) {
    CAPTURE(cs.rows);
    CAPTURE(cs.cols);
    TiledFp4 w(cs.rows, cs.cols, Fp4Pairing::Plain, 31);
    DevArray<float> part(std::max<uint64_t>(1, fp4_partial_floats(w.t, sms)));
    DevArray<int> cnt(std::max<uint64_t>(1, fp4_counter_ints(w.t)));
    const int64_t K = cs.cols, N = cs.rows;
    const bool big = N * K > 4'000'000;  // keep the CPU reference short
    for (int n : {1, 2, 5, 8}) {
      if (big && (n == 2 || n == 5)) continue;
      for (bool norm : {false, true}) {
        CAPTURE(n);
        CAPTURE(norm);
        const int64_t ldx = K + 8, ldy = N + 5;
        auto x = random_floats(size_t(n * ldx), 100 + n, -3, 3);
        auto nw = random_floats(size_t(K), 7, 0.5f, 1.5f);
        auto y0 = random_floats(size_t(n * ldy), 8);
        DevArray<float> dx(x), dnw(nw), dy(y0);
        // CPU products, shared by the store and add variants.
        std::vector<double> prod(static_cast<size_t>(n * N));
        {
          std::vector<float> xr(static_cast<size_t>(K));
          for (int j = 0; j < n; ++j) {
            std::copy(x.begin() + j * ldx, x.begin() + j * ldx + K, xr.begin());
            if (norm) rmsnorm(xr.data(), nw.data(), K, 1e-6f, xr.data());
            for (int64_t r = 0; r < N; ++r)
              prod[size_t(j * N + r)] =
                  double(vec_dot_ref(GGML_NVFP4, w.a.host.data() + r * w.a.row_bytes, xr.data(), K)) * 0.5;
          }
        }
        for (const DecodeTuning& tv : fp4_variants()) {
          CAPTURE(describe(tv));
          TuningScope ts(tv);
          for (bool add : {false, true}) {
            dy.upload(y0);
            Fp4MatvecArgs a;
            a.w = w.t;
            a.n = n;
            a.x = dx.get();
            a.ldx = ldx;
            a.norm = norm ? dnw.get() : nullptr;
            a.y = dy.get();
            a.ldy = ldy;
            a.epilogue = add ? Fp4Epilogue::Add : Fp4Epilogue::Store;
            a.partial = part.get();
            a.counters = cnt.get();
            REQUIRE(fp4_matvec(a, sms, 0) == cudaSuccess);
            auto y = dy.download();
            double num = 0, den = 0;
            for (int j = 0; j < n; ++j) {
              for (int64_t r = 0; r < N; ++r) {
                const double d = prod[size_t(j * N + r)];
                const double wv = add ? y0[size_t(j * ldy + r)] + d : d;
                const double g = y[size_t(j * ldy + r)];
                num += (g - wv) * (g - wv);
                den += wv * wv;
              }
              // Padding of y beyond N is untouched.
              CHECK(y[size_t(j * ldy + N)] == y0[size_t(j * ldy + N)]);
            }
            // F16 activations; the FP8 arithmetic's three E4M3 terms carry
            // more bits (emulated: ~10x closer; the bar leaves room for the
            // tensor cores' own accumulation).
            CHECK(std::sqrt(num / den) < (tv.fp4_fp8 && n <= 2 ? 5e-4 : 2e-3));
          }
        }
      }
      // Row j computed in a batch equals row j alone (bitwise), and the
      // split-K counters were left at zero (a second run repeats exactly).
      for (const DecodeTuning& tv : fp4_variants()) {
        if (n == 1) break;
        if (tv.fp4_fp8 && n > 2) continue;  // (the batch: the F16 arithmetic; the row alone: the FP8 one)
        CAPTURE(describe(tv));
        TuningScope ts(tv);
        const int64_t ldx = K, ldy = N;
        auto x = random_floats(size_t(n * ldx), 200 + n, -3, 3);
        auto nw = random_floats(size_t(K), 9, 0.5f, 1.5f);
        DevArray<float> dx(x), dnw(nw), dy(static_cast<size_t>(n * ldy)), d1(static_cast<size_t>(ldy));
        Fp4MatvecArgs a;
        a.w = w.t;
        a.n = n;
        a.x = dx.get();
        a.ldx = ldx;
        a.norm = dnw.get();
        a.y = dy.get();
        a.ldy = ldy;
        a.partial = part.get();
        a.counters = cnt.get();
        REQUIRE(fp4_matvec(a, sms, 0) == cudaSuccess);
        auto batch = dy.download();
        a.n = 1;
        a.x = dx.get() + (n - 1) * ldx;
        a.y = d1.get();
        REQUIRE(fp4_matvec(a, sms, 0) == cudaSuccess);
        auto alone = d1.download();
        CHECK(std::memcmp(alone.data(), batch.data() + (n - 1) * ldy, size_t(N) * 4) == 0);
        REQUIRE(fp4_matvec(a, sms, 0) == cudaSuccess);
        CHECK(std::memcmp(d1.download().data(), alone.data(), size_t(N) * 4) == 0);
      }
    }
  }
}

TEST_CASE("tensor-core NVFP4 gate/up with the SwiGLU epilogue, and the tiled dequantization") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  const int64_t F = 96, K = 512;
  TiledFp4 w(F, K, Fp4Pairing::GateUp, 41);
  DevArray<float> part(std::max<uint64_t>(1, fp4_partial_floats(w.t, sms)));
  DevArray<int> cnt(std::max<uint64_t>(1, fp4_counter_ints(w.t)));
  const int n = 3;
  auto x = random_floats(size_t(n * K), 5, -2, 2);
  DevArray<float> dx(x), dy(static_cast<size_t>(n * 2 * F));
  Fp4MatvecArgs a;
  a.w = w.t;
  a.n = n;
  a.x = dx.get();
  a.ldx = K;
  a.y = dy.get();
  a.ldy = 2 * F;
  a.epilogue = Fp4Epilogue::SwiGLU;
  a.partial = part.get();
  a.counters = cnt.get();
  std::vector<double> want(static_cast<size_t>(n * F));
  for (int j = 0; j < n; ++j)
    for (int64_t i = 0; i < F; ++i) {
      const float g = vec_dot_ref(GGML_NVFP4, w.a.host.data() + i * w.a.row_bytes, x.data() + j * K, K) * 0.5f;
      const float u = vec_dot_ref(GGML_NVFP4, w.b.host.data() + i * w.b.row_bytes, x.data() + j * K, K) * 0.5f;
      want[size_t(j * F + i)] = siluf(g) * u;
    }
  for (const DecodeTuning& tv : fp4_variants()) {
    CAPTURE(describe(tv));
    TuningScope ts(tv);
    REQUIRE(fp4_matvec(a, sms, 0) == cudaSuccess);
    auto y = dy.download();
    double num = 0, den = 0;
    for (int j = 0; j < n; ++j)
      for (int64_t i = 0; i < F; ++i) {
        const double wv = want[size_t(j * F + i)], got = y[size_t(j * 2 * F + i)];
        num += (got - wv) * (got - wv);
        den += wv * wv;
      }
    CHECK(std::sqrt(num / den) < 2e-3);
  }

  // Dequantized rows: [gate rows | up rows], exactly the GGUF values.
  DevArray<float> f(static_cast<size_t>(2 * F * K));
  DevArray<uint16_t> bf(static_cast<size_t>(2 * F * K));
  REQUIRE(fp4_dequant_rows_f32(w.t, 0, 2 * F, f.get(), 0) == cudaSuccess);
  REQUIRE(fp4_dequant_rows_bf16(w.t, 0, 2 * F, bf.get(), 0) == cudaSuccess);
  auto hf = f.download();
  auto hb = bf.download();
  bool same = true;
  for (int64_t r = 0; r < 2 * F; ++r) {
    auto row = r < F ? w.a.row(r) : w.b.row(r - F);
    same &= std::memcmp(hf.data() + r * K, row.data(), size_t(K) * 4) == 0;
    for (int64_t k = 0; k < K; ++k) same &= hb[size_t(r * K + k)] == fp32_to_bf16(row[size_t(k)]);
  }
  CHECK(same);
  // A row range in the middle.
  DevArray<float> part_rows(static_cast<size_t>(10 * K));
  REQUIRE(fp4_dequant_rows_f32(w.t, F - 5, 10, part_rows.get(), 0) == cudaSuccess);
  auto hp = part_rows.download();
  CHECK(std::memcmp(hp.data(), hf.data() + (F - 5) * K, size_t(10 * K) * 4) == 0);
}

TEST_CASE("the FFN as a chain (one launch) equals gate/up + down as two kernel-3 launches, and the CPU") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  struct Case {
    int64_t D, F;
  };
  // A small FFN, and the 4B's (2,560 x 9,216: 576 gate/up and 320 down tasks).
  for (Case cs : {Case{256, 576}, Case{2560, 9216}})
    for (int bps : {1, 4, 6})
      for (int n : {1, 2, 3, 8}) {
        if (cs.D > 256 && (bps == 1 || n == 2 || n == 3)) continue;  // keep the CPU reference short
        CAPTURE(cs.D);
        CAPTURE(bps);
        CAPTURE(n);
        DecodeTuning tv;
        tv.fp4_blocks_per_sm = bps;
        TuningScope ts(tv);
        const FfnCaseResult r = run_ffn_case<DevArray>(cs.D, cs.F, n, sms, rand);
        REQUIRE(r.ok);
        CHECK_MESSAGE(r.fault == 0, "a task gave up: stage " << r.fault_record[1] << ", task " << r.fault_record[2]);
        // The same slices added in the same order: equal bits.
        CHECK(std::memcmp(r.fused.data(), r.twice.data(), r.fused.size() * 4) == 0);
        CHECK(std::memcmp(r.again.data(), r.fused.data(), r.fused.size() * 4) == 0);
        CHECK(std::memcmp(r.act_fused.data(), r.act_twice.data(), size_t(cs.F) * 4) == 0);  // row 0 (NaN padding after)
        CHECK(max_rel(r.fused, r.ref) < 2e-3);  // F16 activations
        CHECK(std::all_of(r.sync.begin(), r.sync.end(), [](int c) { return c == 0; }));
      }
}

TEST_CASE("the FFN as a chain: 64 launches in a row on a stream with PDL equal the two-launch sequence bit for bit") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  for (int n : {1, 2}) {
    CAPTURE(n);
    // Each launch waits for the previous one's residual stream and takes
    // its first ticket before that wait (alternating counter sets).
    const FfnCaseResult r = run_ffn_case<DevArray>(2560, 9216, n, sms, rand, stream, 64);
    REQUIRE(r.ok);
    CHECK_MESSAGE(r.fault == 0, "a task gave up: stage " << r.fault_record[1] << ", task " << r.fault_record[2]);
    CHECK(std::memcmp(r.fused.data(), r.twice.data(), r.fused.size() * 4) == 0);
    CHECK(std::memcmp(r.again.data(), r.fused.data(), r.fused.size() * 4) == 0);
    CHECK(std::all_of(r.sync.begin(), r.sync.end(), [](int c) { return c == 0; }));
  }
  cudaStreamDestroy(stream);
}

TEST_CASE("32 layer tails as chains in a row on a PDL stream (delta rule or attention in front) equal single launches") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  // The 4B's delta-net and attention layer tails; each chain takes its
  // first ticket before waiting for the previous one (alternating counter
  // sets), its state (residual stream, delta state or KV cache, conv
  // window) the previous one's.
  for (int kind : {1, 2})
    for (int n : {1, 2}) {
      CAPTURE(kind);
      CAPTURE(n);
      TailHead head;
      head.kind = kind == 1 ? TailHead::Delta : TailHead::Attention;
      head.Hk = 16;
      head.dk = 128;
      head.Hq = 16;
      head.Hkv = 4;
      head.Dh = 256;
      head.n_past = 300;
      head.splits = 5;
      for (Fp4Dep nd : {Fp4Dep::Full, Fp4Dep::SliceNorm}) {
        CAPTURE(int(nd));
        check_tail_case(
            run_tail_case<DevArray>(2560, 9216, 32, 128, 8192, 12352, n, sms, rand, head, 32, stream, nd));
      }
    }
  cudaStreamDestroy(stream);
}

TEST_CASE("a layer tail as a chain (delta rule or attention, gated norm, FFN, conv epilogue) equals single launches") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  struct Case {
    int64_t D, F, Hv, dv, C, Nin, Hk, dk;
  };
  // A small tail, and the 4B delta-net layer's (16 key and 32 value heads
  // of 128, an input projection of 12,352 rows with 8,192 conv channels);
  // four stages, or five with the delta rule in front, or with the fused
  // attention in front (the 4B: 16 query and 4 KV heads of 256, here over
  // 300 cached rows in 5 splits; 1-2 rows).
  for (Case cs : {Case{256, 576, 4, 64, 384, 640, 2, 64}, Case{2560, 9216, 32, 128, 8192, 12352, 16, 128}})
    for (int kind = 0; kind < 3; ++kind)
      for (int bps : {1, 4, 6})
        for (int n : {1, 2, 3, 8}) {
          TailHead head;
          if (kind == 1) {
            head.kind = TailHead::Delta;
            head.Hk = cs.Hk;
            head.dk = cs.dk;
          } else if (kind == 2) {
            if (n > 2) continue;
            head.kind = TailHead::Attention;
            head.Hq = cs.D >= 2560 ? 16 : 4;
            head.Hkv = cs.D >= 2560 ? 4 : 2;
            head.Dh = cs.D >= 2560 ? 256 : 64;
            head.n_past = 300;
            head.splits = 5;
          }
          CAPTURE(cs.D);
          CAPTURE(kind);
          CAPTURE(bps);
          CAPTURE(n);
          DecodeTuning tv;
          tv.fp4_blocks_per_sm = bps;
          TuningScope ts(tv);
          for (Fp4Dep nd : {Fp4Dep::Full, Fp4Dep::SliceNorm}) {
            CAPTURE(int(nd));
            check_tail_case(
                run_tail_case<DevArray>(cs.D, cs.F, cs.Hv, cs.dv, cs.C, cs.Nin, n, sms, rand, head, 1, nullptr, nd));
          }
        }
}

TEST_CASE("Q6_K rows32: matvec, dequantization and embedding rows match the CPU") {
  QWEN35_REQUIRE_GPU();
  const int64_t N = 300, K = 768;  // a partial last row group
  QMat w(GGML_Q6_K, N, K, 51);
  Q6kRows32 q;
  q.rows = N;
  q.cols = K;
  q.scale = 0.75f;
  DevArray<uint8_t> ql(q.ql_bytes()), qh(q.qh_bytes()), sc(q.sc_bytes()), d(q.d_bytes());
  q.ql = ql.get();
  q.qh = qh.get();
  q.sc = reinterpret_cast<const int8_t*>(sc.get());
  q.d = reinterpret_cast<const uint16_t*>(d.get());
  // Repack in two row ranges, as the upload does for large tensors.
  REQUIRE(q6k_repack(w.dev.get(), w.row_bytes, 0, 128, q, 0) == cudaSuccess);
  REQUIRE(q6k_repack(w.dev.get() + 128 * w.row_bytes, w.row_bytes, 128, N - 128, q, 0) == cudaSuccess);
  for (int n : {1, 4, 8}) {
    CAPTURE(n);
    const int64_t ldy = N + 2;
    auto x = random_floats(size_t(n * K), 60 + n, -2, 2);
    auto y0 = random_floats(size_t(n * ldy), 61);
    DevArray<float> dx(x), dy(y0);
    REQUIRE(q6k_matvec(q, dx.get(), K, n, dy.get(), ldy, Accum::Add, 0) == cudaSuccess);
    auto y = dy.download();
    std::vector<float> want(y0);
    for (int j = 0; j < n; ++j)
      for (int64_t r = 0; r < N; ++r)
        want[size_t(j * ldy + r)] += vec_dot_ref(GGML_Q6_K, w.host.data() + r * w.row_bytes, x.data() + j * K, K) * 0.75f;
    CHECK(max_rel(y, want) < 1e-5);
  }
  DevArray<float> f(static_cast<size_t>(7 * K));
  REQUIRE(q6k_dequant_rows_f32(q, 290, 7, f.get(), 0) == cudaSuccess);
  auto hf = f.download();
  bool same = true;
  for (int r = 0; r < 7; ++r) {
    auto row = w.row(290 + r);
    same &= std::memcmp(hf.data() + r * K, row.data(), size_t(K) * 4) == 0;
  }
  CHECK(same);
  std::vector<int32_t> toks = {5, -1, 299, 0};
  const int64_t ldo = K + 32;
  auto init = random_floats(size_t(4 * ldo), 62);
  DevArray<int32_t> dt(toks);
  DevArray<float> out(init);
  REQUIRE(q6k_embedding_rows(q, dt.get(), 4, out.get(), ldo, 0) == cudaSuccess);
  auto ho = out.download();
  std::vector<float> want(init);
  for (int t = 0; t < 4; ++t)
    if (toks[size_t(t)] >= 0) {
      auto row = w.row(toks[size_t(t)]);
      std::copy(row.begin(), row.end(), want.begin() + t * ldo);
    }
  CHECK(max_rel(ho, want) == 0.0);
}

TEST_CASE("tiled Q6_K (kernel 2): tensor-core matvec, dequantization and embedding rows match the CPU") {
  QWEN35_REQUIRE_GPU();
  const int64_t N = 300, K = 768;  // a partial last tile; 12 kgroups (a partial prefetch round)
  QMat w(GGML_Q6_K, N, K, 52);
  Q6kTiled q;
  q.rows = N;
  q.cols = K;
  q.scale = 0.75f;
  DevArray<uint8_t> buf(q.bytes());
  q.lo = buf.get();
  q.hi = buf.get() + q.lo_bytes();
  q.sc = reinterpret_cast<const int8_t*>(buf.get() + q.lo_bytes() + q.hi_bytes());
  q.d = reinterpret_cast<const uint16_t*>(buf.get() + q.lo_bytes() + q.hi_bytes() + q.sc_bytes());
  // Repack in two row ranges, as the upload does for large tensors.
  REQUIRE(q6kt_repack(w.dev.get(), w.row_bytes, 0, 128, q, 0) == cudaSuccess);
  REQUIRE(q6kt_repack(w.dev.get() + 128 * w.row_bytes, w.row_bytes, 128, N - 128, q, 0) == cudaSuccess);
  DevArray<float> f(static_cast<size_t>(N * K));
  REQUIRE(q6kt_dequant_rows_f32(q, 0, N, f.get(), 0) == cudaSuccess);
  CHECK(rows_equal_f32(f.download(), w, 0, N));
  DevArray<uint16_t> bf(static_cast<size_t>(7 * K));
  REQUIRE(q6kt_dequant_rows_bf16(q, 290, 7, bf.get(), 0) == cudaSuccess);
  CHECK(rows_equal_bf16(bf.download(), w, 290, 7));
  for (int n : {1, 2, 5, 8}) {
    CAPTURE(n);
    const int64_t ldx = K + 4, ldy = N + 2;
    auto x = random_floats(size_t(n * ldx), 63 + n, -2, 2);
    auto y0 = random_floats(size_t(n * ldy), 64);
    DevArray<float> dx(x), dy(y0);
    std::vector<float> want(y0);
    for (int j = 0; j < n; ++j)
      for (int64_t r = 0; r < N; ++r)
        want[size_t(j * ldy + r)] +=
            vec_dot_ref(GGML_Q6_K, w.host.data() + r * w.row_bytes, x.data() + j * ldx, K) * 0.75f;
    for (const DecodeTuning& tv : fp4_variants()) {
      CAPTURE(describe(tv));
      TuningScope ts(tv);
      dy.upload(y0);
      REQUIRE(q6kt_matvec(q, dx.get(), ldx, n, dy.get(), ldy, Accum::Add, 0) == cudaSuccess);
      auto y = dy.download();
      CHECK(max_rel(y, want) < 2e-3);  // F16 activations
      // Row n-1 alone gives the same bits as in the batch (batch invariance).
      if (n > 1) {
        DevArray<float> db(static_cast<size_t>(n * ldy)), d1(static_cast<size_t>(ldy));
        REQUIRE(q6kt_matvec(q, dx.get(), ldx, n, db.get(), ldy, Accum::Store, 0) == cudaSuccess);
        REQUIRE(q6kt_matvec(q, dx.get() + (n - 1) * ldx, ldx, 1, d1.get(), ldy, Accum::Store, 0) == cudaSuccess);
        auto batch = db.download();
        auto alone = d1.download();
        CHECK(std::memcmp(alone.data(), batch.data() + (n - 1) * ldy, size_t(N) * 4) == 0);
      }
    }
  }
  std::vector<int32_t> toks = {5, -1, 299, 0, 16};
  const int64_t ldo = K + 32;
  auto init = random_floats(size_t(5 * ldo), 65);
  DevArray<int32_t> dt(toks);
  DevArray<float> out(init);
  REQUIRE(q6kt_embedding_rows(q, dt.get(), 5, out.get(), ldo, 0) == cudaSuccess);
  auto ho = out.download();
  std::vector<float> want_rows(init);
  for (int t = 0; t < 5; ++t)
    if (toks[size_t(t)] >= 0) {
      auto row = w.row(toks[size_t(t)]);
      std::copy(row.begin(), row.end(), want_rows.begin() + t * ldo);
    }
  CHECK(max_rel(ho, want_rows) == 0.0);
}

TEST_CASE("tensor-core NVFP4 matvec with the fused causal-conv epilogue (1 and 2 rows, snapshot)") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  const int64_t N = 200, K = 256, C = 150, Kc = 4;  // rows >= C are stored as they are
  TiledFp4 w(N, K, Fp4Pairing::Plain, 71);
  DevArray<float> part(std::max<uint64_t>(1, fp4_partial_floats(w.t, sms)));
  DevArray<int> cnt(std::max<uint64_t>(1, fp4_counter_ints(w.t)));
  auto taps = random_floats(static_cast<size_t>(C * Kc), 72, -1, 1);
  auto win0 = random_floats(static_cast<size_t>((Kc - 1) * C), 73, -2, 2);
  for (int n : {1, 2}) {
    CAPTURE(n);
    const int64_t ldy = N + 3;
    auto x = random_floats(static_cast<size_t>(n * K), 74 + n, -2, 2);
    DevArray<float> dx(x), dy(static_cast<size_t>(n * ldy)), dt(taps), dw(win0), ds(static_cast<size_t>((Kc - 1) * C));
    Fp4MatvecArgs a;
    a.w = w.t;
    a.n = n;
    a.x = dx.get();
    a.ldx = K;
    a.y = dy.get();
    a.ldy = ldy;
    a.epilogue = Fp4Epilogue::Conv;
    a.partial = part.get();
    a.counters = cnt.get();
    a.conv_taps = dt.get();
    a.conv_window = dw.get();
    a.conv_channels = C;
    a.conv_k = int(Kc);
    a.conv_snapshot_row = 0;
    a.conv_snapshot = ds.get();
    // CPU: the projection, then the conv row by row.
    std::vector<float> u(static_cast<size_t>(n * N)), win(win0), snap;
    for (int j = 0; j < n; ++j)
      for (int64_t r = 0; r < N; ++r)
        u[size_t(j * N + r)] = vec_dot_ref(GGML_NVFP4, w.a.host.data() + r * w.a.row_bytes, x.data() + j * K, K) * 0.5f;
    const std::vector<float> out = conv_epilogue_reference(u, n, N, C, Kc, taps, win, &snap);
    for (const DecodeTuning& tv : fp4_variants()) {
      CAPTURE(describe(tv));
      TuningScope ts(tv);
      dw.upload(win0);
      REQUIRE(fp4_matvec(a, sms, 0) == cudaSuccess);
      auto y = dy.download();
      double num = 0, den = 0;
      for (int j = 0; j < n; ++j)
        for (int64_t r = 0; r < N; ++r) {
          const double g = y[size_t(j * ldy + r)], e = out[size_t(j * N + r)];
          num += (g - e) * (g - e);
          den += e * e;
        }
      CHECK(std::sqrt(num / den) < 3e-3);
      CHECK(max_rel(dw.download(), win) < 3e-3);
      CHECK(max_rel(ds.download(), snap) < 3e-3);
    }
  }
}

TEST_CASE("Blackwell block-scaled FP4 GEMM equals its CPU emulation (skipped before compute capability 10)") {
  QWEN35_REQUIRE_GPU();
  int dev = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (major < 10) {
    MESSAGE("skipped: the FP4 tensor-core GEMM needs compute capability 10 or later");
    return;
  }
  const int64_t N = 256, K = 512, n = 40;
  QMat w(GGML_NVFP4, N, K, 81);
  Fp4Blas bl;
  bl.rows = N;
  bl.cols = K;
  DevArray<uint8_t> buf(static_cast<size_t>(bl.data_bytes() + bl.scale_bytes()));
  bl.data = buf.get();
  bl.scales = buf.get() + bl.data_bytes();
  REQUIRE(fp4blas_repack(w.dev.get(), w.row_bytes, bl, 0) == cudaSuccess);
  auto x = random_floats(static_cast<size_t>(n * K), 82, -3, 3);
  DevArray<float> dx(x), work(8), dy(static_cast<size_t>(n * N));
  DevArray<uint8_t> xq(static_cast<size_t>(n * K / 2)), xs(static_cast<size_t>(blockscale_bytes(n, K)));
  // work: [g, alpha, amax, -, beta 0, beta 1] (alpha and beta are device pointers).
  work.upload(std::vector<float>{0, 0, 0, 0, 0.0f, 1.0f, 0, 0});
  REQUIRE(fp4blas_quantize(dx.get(), K, n, K, 1.0f, xq.get(), xs.get(), work.get(), 0) == cudaSuccess);
  Gemm gemm;
  REQUIRE(gemm.init(16 << 20).ok());
  const Status st = gemm.run_fp4(bl.data, bl.scales, N, K, xq.get(), xs.get(), n, dy.get(), N, work.get() + 1,
                                 work.get() + 4, 0);
  if (st.code() == QWEN35_ERR_UNSUPPORTED) {
    MESSAGE("cuBLASLt offers no FP4 algorithm here: " << st.message());
    return;
  }
  REQUIRE_MESSAGE(st.ok(), st.message());
  auto y = dy.download();
  // CPU: the same activation quantization, then exact products.
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  const float g = amax / (6.0f * 448.0f);
  std::vector<float> xd(x.size());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < K / 16; ++c) {
      const float* v = x.data() + t * K + c * 16;
      float bmax = 0;
      for (int k = 0; k < 16; ++k) bmax = std::max(bmax, std::fabs(v[k]));
      const float sc = e4m3_value(e4m3_from_positive(bmax / 6.0f / g)) * g;
      for (int k = 0; k < 16; ++k) xd[size_t(t * K + c * 16 + k)] = sc > 0 ? kE2M1[e2m1_nearest(v[k] / sc)] * sc : 0.0f;
    }
  std::vector<float> want(static_cast<size_t>(n * N)), exact(static_cast<size_t>(n * N));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < N; ++r) {
      want[size_t(t * N + r)] = vec_dot_ref(GGML_NVFP4, w.host.data() + r * w.row_bytes, xd.data() + t * K, K);
      exact[size_t(t * N + r)] = vec_dot_ref(GGML_NVFP4, w.host.data() + r * w.row_bytes, x.data() + t * K, K);
    }
  CHECK(max_rel(y, want) < 1e-3);
  MESSAGE("FP4 GEMM vs float activations: relative error " << max_rel(y, exact));
}

TEST_CASE("tensor-core NVFP4 matvec with the fused gated-RMSNorm prologue (split K on head boundaries)") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  // dv = 192: heads of 12 chunks, which kernel 2 leaves to kernel 1.
  struct Case {
    int64_t N, K, dv;
  };
  for (Case cs : {Case{2560, 512, 128}, Case{300, 768, 192}, Case{200, 1024, 64}}) {
    const int64_t N = cs.N, K = cs.K, dv = cs.dv;
    CAPTURE(dv);
    TiledFp4 w(N, K, Fp4Pairing::Plain, 91);
    REQUIRE(fp4_gated_supported(w.t, int(dv)));
    DevArray<float> part(std::max<uint64_t>(1, fp4_partial_floats(w.t, sms)));
    DevArray<int> cnt(std::max<uint64_t>(1, fp4_counter_ints(w.t)));
    const int n = 2;
    const int64_t ldz = K + 16;
    auto o = random_floats(static_cast<size_t>(n * K), 92, -2, 2);
    auto z = random_floats(static_cast<size_t>(n * ldz), 93, -3, 3);
    auto gw = random_floats(static_cast<size_t>(dv), 94, 0.5f, 1.5f);
    auto y0 = random_floats(static_cast<size_t>(n * N), 95);
    DevArray<float> dox(o), dz(z), dgw(gw), dy(y0);
    Fp4MatvecArgs a;
    a.w = w.t;
    a.n = n;
    a.x = dox.get();
    a.ldx = K;
    a.gate_z = dz.get();
    a.ldz = ldz;
    a.gate_w = dgw.get();
    a.gate_dv = int(dv);
    a.y = dy.get();
    a.ldy = N;
    a.epilogue = Fp4Epilogue::Add;
    a.partial = part.get();
    a.counters = cnt.get();
    std::vector<float> want(y0);
    for (int j = 0; j < n; ++j) {
      const std::vector<float> xr = gated_prologue_row(o, z, ldz, gw, j, K, dv);
      for (int64_t r = 0; r < N; ++r)
        want[size_t(j * N + r)] += vec_dot_ref(GGML_NVFP4, w.a.host.data() + r * w.a.row_bytes, xr.data(), K) * 0.5f;
    }
    for (const DecodeTuning& tv : fp4_variants()) {
      CAPTURE(describe(tv));
      TuningScope ts(tv);
      dy.upload(y0);
      REQUIRE(fp4_matvec(a, sms, 0) == cudaSuccess);
      CHECK(max_rel(dy.download(), want) < 2e-3);
    }
  }
}

TEST_CASE("sampling candidates on the device equal select_topk (adjusted row and normalizer bit for bit)") {
  QWEN35_REQUIRE_GPU();
  for (int32_t V : {3000, 70000, 248320}) {
    for (int32_t k : {1, 20, 300, 1024}) {
      for (TopkRow kind : {TopkRow::kGrid, TopkRow::kFine, TopkRow::kLowBits, TopkRow::kFlat}) {
        CAPTURE(V);
        CAPTURE(k);
        CAPTURE(int(kind));
        const auto logits = topk_row(V, uint32_t(V + k), kind);
        TopKRequest req = topk_request(V, k, uint32_t(k));
        // The normalizer too (samplers without top-k ask with k = 1024): the
        // device's fixed-operation exp and tree must give the host's bits.
        req.temperature = k == 1024 ? 0.8f : k == 20 ? 1.7f : 0.0f;
        const TopkCaseResult r = run_topk_case<DevArray>(logits, req);
        CHECK(check_topk_case(logits, req, r) == "");
        if (kind == TopkRow::kFlat && V > cuda::kTopkCap && k == 1024) CHECK(r.failed);
      }
    }
  }
}

TEST_CASE("the chunked delta rule matches the sequential reference (chunk edges, a wiping gate)") {
  QWEN35_REQUIRE_GPU();
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  for (DeltaShape s : {DeltaShape{1, 2, 32, 32}, DeltaShape{2, 2, 64, 64}, DeltaShape{16, 32, 128, 128},
                       DeltaShape{2, 4, 128, 96}}) {
    for (int64_t n : {1, 63, 64, 65, 512, 700}) {
      for (bool wipe : {false, true}) {
        if (wipe && n < 64) continue;
        CAPTURE(s.dk);
        CAPTURE(s.dv);
        CAPTURE(n);
        CAPTURE(wipe);
        REQUIRE(delta_chunked_supported(s.dk, s.dv));
        const DeltaChunkedResult r = run_delta_chunked_case<DevArray>(s, n, wipe, rand);
        REQUIRE(r.ok);
        CHECK(max_rel(r.out, r.ref_out) < 1e-4);
        CHECK(max_rel(r.state, r.ref_state) < 1e-4);
      }
    }
  }
}

TEST_CASE("tiled Q6_K: the persistent launches (kernel 2, kernel 3 with bulk copies) equal a warp per tile; the greedy epilogue") {
  QWEN35_REQUIRE_GPU();
  const int64_t N = 40000, K = 256;  // 2,500 tiles: many per warp at 1-3 blocks per multiprocessor
  QMat w(GGML_Q6_K, N, K, 77);
  Q6kTiled q;
  q.rows = N;
  q.cols = K;
  DevArray<uint8_t> buf(q.bytes());
  q.lo = buf.get();
  q.hi = buf.get() + q.lo_bytes();
  q.sc = reinterpret_cast<const int8_t*>(buf.get() + q.lo_bytes() + q.hi_bytes());
  q.d = reinterpret_cast<const uint16_t*>(buf.get() + q.lo_bytes() + q.hi_bytes() + q.sc_bytes());
  REQUIRE(q6kt_repack(w.dev.get(), w.row_bytes, 0, N, q, 0) == cudaSuccess);
  for (int n : {1, 2}) {
    CAPTURE(n);
    auto x = random_floats(size_t(n * K), 81 + n, -2, 2);
    DevArray<float> dx(x), dy(static_cast<size_t>(n * N));
    std::vector<float> base;
    {
      TuningScope ts(DecodeTuning{});
      REQUIRE(q6kt_matvec(q, dx.get(), K, n, dy.get(), N, Accum::Store, 0) == cudaSuccess);
      base = dy.download();
      std::vector<float> want(base.size());
      for (int j = 0; j < n; ++j)
        for (int64_t r = 0; r < N; ++r)
          want[size_t(j * N + r)] = vec_dot_ref(GGML_Q6_K, w.host.data() + r * w.row_bytes, x.data() + j * K, K);
      CHECK(max_rel(base, want) < 2e-3);
    }
    // The greedy epilogue (HeadArgmax) must give argmax_rows() of the
    // stored rows.
    std::vector<int32_t> want_ids;
    for (int j = 0; j < n; ++j) {
      int32_t b = 0;
      for (int64_t r = 1; r < N; ++r)
        if (base[size_t(j * N + r)] > base[size_t(j * N + b)]) b = int32_t(r);
      want_ids.push_back(b);
    }
    DevArray<unsigned long long> best(std::vector<unsigned long long>(8, 0));
    DevArray<int> done(std::vector<int>(1, 0));
    DevArray<int32_t> ids(std::vector<int32_t>(size_t(n), -1));
    HeadArgmax am;
    am.best = best.get();
    am.done = done.get();
    am.out = ids.get();
    // Kernel 2 (a warp per tile, persistent), and kernel 3 (bulk copies;
    // always persistent: 3 blocks per multiprocessor by default): the same
    // stored values; with the greedy epilogue (twice in a row) the same
    // values again, the ids, its buffers back at zero.
    for (auto [kernel, persist] :
         {std::pair{2, 0}, std::pair{2, 1}, std::pair{2, 3}, std::pair{3, 0}, std::pair{3, 1}, std::pair{3, 2}}) {
      CAPTURE(kernel);
      CAPTURE(persist);
      DecodeTuning tv;
      tv.q6k_kernel = kernel;
      tv.q6k_persist = persist;
      TuningScope ts(tv);
      for (int rep = 0; rep < 3; ++rep) {
        CAPTURE(rep);
        dy.upload(std::vector<float>(base.size(), NAN));
        ids.upload(std::vector<int32_t>(size_t(n), -1));
        REQUIRE(q6kt_matvec(q, dx.get(), K, n, dy.get(), N, Accum::Store, 0, rep > 0 ? &am : nullptr) == cudaSuccess);
        CHECK(std::memcmp(dy.download().data(), base.data(), base.size() * 4) == 0);  // the same arithmetic per tile
        if (rep == 0) continue;
        CHECK(ids.download() == want_ids);
        const auto b = best.download();
        CHECK(std::all_of(b.begin(), b.end(), [](unsigned long long v) { return v == 0; }));
        CHECK(done.download()[0] == 0);
      }
    }
  }
}

TEST_CASE("Q8_0, Q4_K, Q6_K and F16 tiles: tensor-core matvec (1-8 warps per tile), dequantization and embedding rows match the CPU") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  struct Shape {
    uint32_t type;
    int64_t rows, cols;
    int sms;
  };
  // The 4B's FFN down and gate rows with this device's slices, and small
  // shapes with 1, 2, 4 and 8 slices (a partial last tile, an empty slice).
  for (const Shape sh : {Shape{GGML_Q8_0, 2560, 9216, sms}, Shape{GGML_Q8_0, 9216, 2560, sms},
                         Shape{GGML_Q4_K, 2560, 9216, sms}, Shape{GGML_Q4_K, 9216, 2560, sms},
                         Shape{GGML_Q8_0, 400, 256, 1}, Shape{GGML_Q8_0, 400, 256, 2}, Shape{GGML_Q8_0, 400, 256, 4},
                         Shape{GGML_Q6_K, 2560, 9216, sms}, Shape{GGML_Q8_0, 40, 320, 1}, Shape{GGML_Q8_0, 40, 512, 1},
                         Shape{GGML_Q4_K, 400, 256, 2}, Shape{GGML_Q4_K, 24, 768, 1}, Shape{GGML_Q6_K, 40, 768, 1},
                         Shape{GGML_F16, 2560, 9216, sms}, Shape{GGML_F16, 40, 320, 1}}) {
    const int64_t N = sh.rows, K = sh.cols;
    CAPTURE(type_info(sh.type)->name);
    CAPTURE(N);
    CAPTURE(K);
    CAPTURE(sh.sms);
    QMat w(sh.type, N, K, uint32_t(81 + K));
    KTiles q = ktiles_plan(sh.type, N, K, 0.75f);
    REQUIRE(q.type == sh.type);
    DevArray<uint8_t> buf(ktiles_bytes(q));
    ktiles_place(&q, buf.get());
    REQUIRE(ktiles_repack(q, w.dev.get(), w.row_bytes, 0, 16, 0) == cudaSuccess);
    REQUIRE(ktiles_repack(q, w.dev.get() + 16 * w.row_bytes, w.row_bytes, 16, N - 16, 0) == cudaSuccess);
    MESSAGE("slices per tile: " << ktiles_slices(q, sh.sms));
    DevArray<float> f(static_cast<size_t>(N * K));
    REQUIRE(ktiles_dequant_rows_f32(q, 0, N, f.get(), 0) == cudaSuccess);
    CHECK(rows_equal_f32(f.download(), w, 0, N));
    DevArray<uint16_t> bf(static_cast<size_t>(3 * K));
    REQUIRE(ktiles_dequant_rows_bf16(q, N - 3, 3, bf.get(), 0) == cudaSuccess);
    CHECK(rows_equal_bf16(bf.download(), w, N - 3, 3));
    DevArray<int32_t> ids(std::vector<int32_t>{int32_t(N - 1), 3});
    DevArray<float> emb(static_cast<size_t>(2 * K));
    REQUIRE(ktiles_embedding_rows(q, ids.get(), 2, emb.get(), K, 0) == cudaSuccess);
    auto he = emb.download();
    CHECK(std::memcmp(he.data(), w.row(N - 1).data(), size_t(K) * 4) == 0);
    CHECK(std::memcmp(he.data() + K, w.row(3).data(), size_t(K) * 4) == 0);
    for (int n : {1, 2, 8}) {
      CAPTURE(n);
      const int64_t ldx = K + 4, ldy = N + 2;
      auto x = random_floats(size_t(n * ldx), 63 + n, -2, 2);
      auto y0 = random_floats(size_t(n * ldy), 64);
      DevArray<float> dx(x), dy(y0);
      std::vector<float> want(y0);
      for (int j = 0; j < n; ++j)
        for (int64_t r = 0; r < N; ++r)
          want[size_t(j * ldy + r)] +=
              vec_dot_ref(sh.type, w.host.data() + r * w.row_bytes, x.data() + j * ldx, K) * 0.75f;
      REQUIRE(ktiles_matvec(q, dx.get(), ldx, n, dy.get(), ldy, Accum::Add, sh.sms, 0) == cudaSuccess);
      CHECK(max_rel(dy.download(), want) < 2e-3);  // F16 activations
      // Row n-1 alone gives the same bits as in the batch (batch invariance).
      if (n > 1) {
        DevArray<float> db(static_cast<size_t>(n * ldy)), d1(static_cast<size_t>(ldy));
        REQUIRE(ktiles_matvec(q, dx.get(), ldx, n, db.get(), ldy, Accum::Store, sh.sms, 0) == cudaSuccess);
        REQUIRE(ktiles_matvec(q, dx.get() + (n - 1) * ldx, ldx, 1, d1.get(), ldy, Accum::Store, sh.sms, 0) ==
                cudaSuccess);
        auto hb2 = db.download(), h1 = d1.download();
        CHECK(std::memcmp(hb2.data() + (n - 1) * ldy, h1.data(), size_t(N) * 4) == 0);
      }
    }
  }
}

TEST_CASE("paired gate/up tiles (Q8_0, Q4_K, Q6_K, F16): the SwiGLU epilogue and stack-order rows match the CPU") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  for (uint32_t type : {uint32_t(GGML_Q8_0), uint32_t(GGML_Q4_K), uint32_t(GGML_Q6_K), uint32_t(GGML_F16)}) {
    CAPTURE(type_info(type)->name);
    const int64_t F = 9216, N = 2 * F, K = 2560;  // the 4B's FFN gate/up
    QMat w(type, N, K, 107);
    const DevKTiles tiles(w, 0.75f, true);
    const KTiles& q = tiles.q;
    REQUIRE(q.paired());
    DevArray<float> f(static_cast<size_t>(16 * K));
    REQUIRE(ktiles_dequant_rows_f32(q, F - 8, 16, f.get(), 0) == cudaSuccess);  // gate rows, then up rows
    CHECK(rows_equal_f32(f.download(), w, F - 8, 16));
    for (int n : {1, 2}) {
      CAPTURE(n);
      auto x = random_floats(size_t(n * K), 109 + n, -2, 2);
      DevArray<float> dx(x), dy(static_cast<size_t>(n * N)), da(static_cast<size_t>(n * F));
      std::vector<float> want(size_t(n * N)), want_act(size_t(n * F));
      for (int j = 0; j < n; ++j) {
        for (int64_t r = 0; r < N; ++r)
          want[size_t(j * N + r)] = vec_dot_ref(type, w.host.data() + r * w.row_bytes, x.data() + j * K, K) * 0.75f;
        for (int64_t i = 0; i < F; ++i) {
          const double g = want[size_t(j * N + i)], u = want[size_t(j * N + F + i)];
          want_act[size_t(j * F + i)] = float(g / (1.0 + std::exp(-g)) * u);
        }
      }
      REQUIRE(ktiles_matvec(q, dx.get(), K, n, dy.get(), N, Accum::Store, sms, 0) == cudaSuccess);
      CHECK(max_rel(dy.download(), want) < 2e-3);
      REQUIRE(ktiles_matvec(q, dx.get(), K, n, da.get(), F, Accum::Store, sms, 0, {nullptr, 1e-6f, true}) ==
              cudaSuccess);
      CHECK(max_rel(da.download(), want_act) < 4e-3);
    }
  }
}

TEST_CASE("tiles (Q8_0, Q4_K, Q6_K, F16) with the delta net's gated-norm prologue and conv epilogue match the CPU") {
  QWEN35_REQUIRE_GPU();
  const int sms = device_sms();
  for (uint32_t type : {uint32_t(GGML_Q8_0), uint32_t(GGML_Q4_K), uint32_t(GGML_Q6_K), uint32_t(GGML_F16)}) {
    CAPTURE(type_info(type)->name);
    {
      // The 4B's output projection: 32 heads of dv = 128, added into the stream.
      const int64_t N = 2560, K = 4096, dv = 128, ldz = 12352;
      QMat w(type, N, K, 131);
      const DevKTiles tiles(w, 0.75f);
      const KTiles& q = tiles.q;
      REQUIRE(ktiles_gated_fits(q, int(dv)));
      for (int n : {1, 2, 8}) {
        CAPTURE(n);
        auto o = random_floats(size_t(n * K), 132, -2, 2);
        auto z = random_floats(size_t(n * ldz), 133, -3, 3);
        auto gw = random_floats(size_t(dv), 134, 0.5f, 1.5f);
        auto y0 = random_floats(size_t(n * N), 135);
        std::vector<float> want(y0);
        for (int j = 0; j < n; ++j) {
          const std::vector<float> xr = gated_prologue_row(o, z, ldz, gw, j, K, dv);
          for (int64_t r = 0; r < N; ++r)
            want[size_t(j * N + r)] += vec_dot_ref(type, w.host.data() + r * w.row_bytes, xr.data(), K) * 0.75f;
        }
        DevArray<float> d_o(o), d_z(z), d_w(gw), dy(y0);
        TilesFusion f;
        f.gated = {d_z.get(), ldz, d_w.get(), int(dv)};
        REQUIRE(ktiles_matvec(q, d_o.get(), K, n, dy.get(), N, Accum::Add, sms, 0, f) == cudaSuccess);
        CHECK(max_rel(dy.download(), want) < 2e-3);
      }
    }
    {
      // The 4B's input projection: 8,192 conv channels of 12,352 outputs.
      const int64_t N = 12352, K = 2560, C = 8192, Kc = 4;
      QMat w(type, N, K, 141);
      const DevKTiles tiles(w, 0.5f);
      const KTiles& q = tiles.q;
      auto taps = random_floats(size_t(C * Kc), 142, -1, 1);
      auto win0 = random_floats(size_t((Kc - 1) * C), 143, -2, 2);
      for (int n : {1, 2}) {
        CAPTURE(n);
        auto x = random_floats(size_t(n * K), 144 + n, -2, 2);
        std::vector<float> u(size_t(n * N)), win(win0), snap;
        for (int j = 0; j < n; ++j)
          for (int64_t r = 0; r < N; ++r)
            u[size_t(j * N + r)] = vec_dot_ref(type, w.host.data() + r * w.row_bytes, x.data() + j * K, K) * 0.5f;
        const std::vector<float> out = conv_epilogue_reference(u, n, N, C, Kc, taps, win, &snap);
        DevArray<float> dx(x), dy(static_cast<size_t>(n * N)), d_taps(taps), d_win(win0),
            d_snap(static_cast<size_t>((Kc - 1) * C));
        TilesFusion f;
        f.conv = {d_taps.get(), d_win.get(), C, int(Kc), 0, d_snap.get()};
        REQUIRE(ktiles_matvec(q, dx.get(), K, n, dy.get(), N, Accum::Store, sms, 0, f) == cudaSuccess);
        CHECK(max_rel(dy.download(), out) < 3e-3);
        CHECK(max_rel(d_win.download(), win) < 3e-3);
        CHECK(max_rel(d_snap.download(), snap) < 3e-3);
      }
    }
  }
}
