// The tensor-core decode kernels on the CPU through the emulation of
// cuda_emu.h (mma.sync emulated from its fragment tables, bulk copies that
// land at once): the NVFP4 kernels 1-3 with their prologues and epilogues,
// the chained projections, the tiled Q6_K kernels and their greedy
// epilogue, the Q8_0 and Q4_K tiles, against the CPU products and the single launches they replace.
// Part of test_cuda_emu (test_cuda_emu.cpp has the main and the other
// kernels).
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
#include "ktiles.h"
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

// ---- the tensor-core kernels (mma.sync emulated from its fragment tables) ----

namespace {

// Random GGUF rows of a type and their CPU products with x.
struct HostQMat {
  uint32_t type;
  int64_t rows, cols;
  uint64_t row_bytes;
  std::vector<uint8_t> data;
  HostQMat(uint32_t t, int64_t r, int64_t c, uint32_t seed) : type(t), rows(r), cols(c) {
    row_bytes = qwen35::row_bytes(*type_info(t), c);
    data.resize(size_t(rows) * row_bytes);
    auto v = random_floats(size_t(rows * cols), seed, -0.5f, 0.5f);
    for (int64_t i = 0; i < rows; ++i) quantize_row(t, v.data() + i * cols, data.data() + i * row_bytes, cols);
  }
  double dot(int64_t r, const float* x) const { return vec_dot_ref(type, data.data() + r * row_bytes, x, cols); }
};

// A tiled Q6_K matrix's buffers (scale 0.75), for q6kt_repack to fill.
struct HostTiledQ6k {
  std::vector<uint8_t> buf;
  Q6kTiled q;
  HostTiledQ6k(int64_t rows, int64_t cols) {
    q.rows = rows;
    q.cols = cols;
    q.scale = 0.75f;
    buf.resize(q.bytes());
    q.lo = buf.data();
    q.hi = buf.data() + q.lo_bytes();
    q.sc = reinterpret_cast<const int8_t*>(buf.data() + q.lo_bytes() + q.hi_bytes());
    q.d = reinterpret_cast<const uint16_t*>(buf.data() + q.lo_bytes() + q.hi_bytes() + q.sc_bytes());
  }
};

// NVFP4 rows (and, paired, the up rows) repacked into the tiled layout.
struct HostTiledFp4 {
  std::vector<uint8_t> buf;
  Fp4Tiled t;
  HostTiledFp4(const HostQMat& a, const HostQMat* b) {
    t.rows = a.rows;
    t.cols = a.cols;
    t.pairing = b ? Fp4Pairing::GateUp : Fp4Pairing::Plain;
    t.scale = 0.5f;
    buf.resize(2 * t.code_bytes() + t.scale_bytes());
    t.codes = buf.data();
    t.scales = buf.data() + t.code_bytes();
    t.codes8 = t.scales + t.scale_bytes();  // (used by the variants with tuning fp4_fp8)
    REQUIRE(fp4_repack(a.data.data(), b ? b->data.data() : nullptr, a.row_bytes, t, nullptr) == cudaSuccess);
  }
};

// A weight's rows in the tiles of ktiles.h (host memory, repacked in one range).
struct HostKTiles {
  KTiles q;
  std::vector<uint8_t> buf;
  HostKTiles(const HostQMat& w, float scale) : q(ktiles_plan(w.type, w.rows, w.cols, scale)), buf(ktiles_bytes(q)) {
    ktiles_place(&q, buf.data());
    REQUIRE(ktiles_repack(q, w.data.data(), w.row_bytes, 0, w.rows, nullptr) == cudaSuccess);
  }
};

struct TuningScope {
  DecodeTuning saved = decode_tuning();
  explicit TuningScope(const DecodeTuning& t) { set_decode_tuning(t); }
  ~TuningScope() { set_decode_tuning(saved); }
};

}  // namespace

TEST_CASE("decode tuning: env_settings names the QWEN35_CUDA_* variables of what differs from the defaults") {
  CHECK(env_settings(DecodeTuning{}).empty());
  DecodeTuning t;
  t.fp4_chain = 4;
  t.q6k_argmax = 1;
  t.fp4_blocks_per_sm = 6;
  CHECK(env_settings(t) == "QWEN35_CUDA_FP4_BPS=6 QWEN35_CUDA_FP4_CHAIN=4 QWEN35_CUDA_Q6K_ARGMAX=1");
}

TEST_CASE("emulated: NVFP4 decode kernels 1-3 (tensor cores, bulk copies) match the CPU products") {
  // 40 rows: a partial tile; 512 columns: 8 kgroups, two bulk stages.
  const int64_t N = 40, K = 512, sms = 4;
  HostQMat w(GGML_NVFP4, N, K, 31);
  const HostTiledFp4 tiled(w, nullptr);
  const Fp4Tiled& t = tiled.t;
  std::vector<float> part(std::max<uint64_t>(1, fp4_partial_floats(t, int(sms))));
  std::vector<int> cnt(std::max<uint64_t>(1, fp4_counter_ints(t)), 0);
  std::vector<DecodeTuning> variants;
  DecodeTuning v;
  v.fp4_kernel = 1;
  variants.push_back(v);
  v.fp4_kernel = 2;
  v.fp4_warps = 4;
  v.fp4_depth = 4;
  for (int bps : {1, 32}) {
    v.fp4_blocks_per_sm = bps;
    variants.push_back(v);
  }
  v.fp4_kernel = 3;
  for (int stages : {2, 4, 8})
    for (int lean : {0, 1}) {
      if (stages == 8 && lean) continue;
      v.fp4_stages = stages;
      v.fp4_lean = lean;
      v.fp4_blocks_per_sm = lean ? 32 : 1;  // one slice, or the most slices
      variants.push_back(v);
    }
  v.fp4_x_l1 = 1;  // (a hint: no prefetch in the emulation, but the kernel's path with the flag)
  variants.push_back(v);
  v.fp4_x_l1 = 0;
  v.fp4_stages = 4;
  v.fp4_lean = 0;
  v.fp4_fp8 = 1;  // the FP8 arithmetic (1 and 2 rows; 3 rows: the F16 one)
  for (int bps : {1, 32}) {
    v.fp4_blocks_per_sm = bps;
    variants.push_back(v);
  }
  v.fp4_fp8 = 0;
  for (int n : {1, 2, 3}) {
    for (bool norm : {false, true}) {
      const int64_t ldx = K + 8, ldy = N + 5;
      auto x = random_floats(size_t(n * ldx), uint32_t(100 + n), -3, 3);
      auto nw = random_floats(size_t(K), 7, 0.5f, 1.5f);
      std::vector<double> want(static_cast<size_t>(n * N));
      for (int j = 0; j < n; ++j) {
        std::vector<float> xr(x.begin() + j * ldx, x.begin() + j * ldx + K);
        if (norm) rmsnorm(xr.data(), nw.data(), K, 1e-6f, xr.data());
        for (int64_t r = 0; r < N; ++r) want[size_t(j * N + r)] = w.dot(r, xr.data()) * 0.5;
      }
      for (const DecodeTuning& tv : variants) {
        for (bool reverse : {false, true}) {
          CAPTURE(n);
          CAPTURE(norm);
          CAPTURE(describe(tv));
          CAPTURE(reverse);
          emu::set_order(reverse);
          TuningScope ts(tv);
          std::vector<float> y(static_cast<size_t>(n * ldy), -7.0f);
          Fp4MatvecArgs a;
          a.w = t;
          a.n = n;
          a.x = x.data();
          a.ldx = ldx;
          a.norm = norm ? nw.data() : nullptr;
          a.y = y.data();
          a.ldy = ldy;
          a.epilogue = Fp4Epilogue::Store;
          a.partial = part.data();
          a.counters = cnt.data();
          REQUIRE(fp4_matvec(a, int(sms), nullptr) == cudaSuccess);
          double num = 0, den = 0;
          for (int j = 0; j < n; ++j) {
            for (int64_t r = 0; r < N; ++r) {
              const double d = want[size_t(j * N + r)], g = y[size_t(j * ldy + r)];
              num += (g - d) * (g - d);
              den += d * d;
            }
            CHECK(y[size_t(j * ldy + N)] == -7.0f);  // padding untouched
          }
          // F16 activations (2e-4 here); the FP8 arithmetic's three E4M3 terms
          // carry more bits (1.3e-5 - 2.1e-5).
          CHECK(std::sqrt(num / den) < (tv.fp4_fp8 && n <= 2 ? 1e-4 : 2e-3));
          CHECK(std::all_of(cnt.begin(), cnt.end(), [](int c) { return c == 0; }));  // split-K counters reset
        }
      }
    }
  }
  emu::set_order(false);
}

TEST_CASE("emulated: kernel 3's FP8 arithmetic gives a row the same bits alone and beside another (split K or not)") {
  // What greedy MTP speculation relies on: the verify pass's two rows each
  // get the bits of a one-row step.
  const int64_t N = 48, K = 768, sms = 4;
  HostQMat w(GGML_NVFP4, N, K, 37);
  const HostTiledFp4 tiled(w, nullptr);
  std::vector<float> part(std::max<uint64_t>(1, fp4_partial_floats(tiled.t, int(sms))));
  std::vector<int> cnt(std::max<uint64_t>(1, fp4_counter_ints(tiled.t)), 0);
  auto x = random_floats(size_t(2 * K), 77, -3, 3);
  auto nw = random_floats(size_t(K), 78, 0.5f, 1.5f);
  for (int bps : {1, 32}) {
    CAPTURE(bps);
    DecodeTuning v;
    v.fp4_fp8 = 1;
    v.fp4_blocks_per_sm = bps;
    TuningScope ts(v);
    auto product = [&](int n, const float* xp) {
      std::vector<float> y(static_cast<size_t>(n * N), NAN);
      Fp4MatvecArgs a;
      a.w = tiled.t;
      a.n = n;
      a.x = xp;
      a.ldx = K;
      a.norm = nw.data();
      a.y = y.data();
      a.ldy = N;
      a.partial = part.data();
      a.counters = cnt.data();
      REQUIRE(fp4_matvec(a, int(sms), nullptr) == cudaSuccess);
      return y;
    };
    const std::vector<float> both = product(2, x.data()), first = product(1, x.data()), second = product(1, x.data() + K);
    CHECK(std::memcmp(both.data(), first.data(), size_t(N) * 4) == 0);
    CHECK(std::memcmp(both.data() + N, second.data(), size_t(N) * 4) == 0);
  }
}

TEST_CASE("emulated: a kernel over 48 KiB of shared memory opts in on each device it runs on") {
  // Kernel 3 with one column slice and 8 rows: a ring of 36 KiB and 37 KiB
  // of activations. The limit is a property of the kernel on one device:
  // launched on a second device without its own opt-in, it would fail.
  const int64_t N = 64, K = 2048, sms = 2;
  const int n = 8;
  HostQMat w(GGML_NVFP4, N, K, 5);
  const HostTiledFp4 tiled(w, nullptr);
  std::vector<float> part(std::max<uint64_t>(1, fp4_partial_floats(tiled.t, int(sms))));
  std::vector<int> cnt(std::max<uint64_t>(1, fp4_counter_ints(tiled.t)), 0);
  const auto x = random_floats(size_t(n * K), 3, -2, 2);
  DecodeTuning v;
  v.fp4_kernel = 3;
  v.fp4_blocks_per_sm = 1;
  TuningScope ts(v);
  emu::set_device_count(2);
  std::vector<float> y[2];
  for (int dev : {0, 1}) {
    CAPTURE(dev);
    REQUIRE(cudaSetDevice(dev) == cudaSuccess);
    y[dev].assign(size_t(n * N), NAN);
    Fp4MatvecArgs a;
    a.w = tiled.t;
    a.n = n;
    a.x = x.data();
    a.ldx = K;
    a.y = y[dev].data();
    a.ldy = N;
    a.epilogue = Fp4Epilogue::Store;
    a.partial = part.data();
    a.counters = cnt.data();
    CHECK(fp4_matvec(a, int(sms), nullptr) == cudaSuccess);
  }
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  emu::set_device_count(1);
  CHECK(y[1] == y[0]);
  CHECK(std::none_of(y[0].begin(), y[0].end(), [](float f) { return std::isnan(f); }));
}

namespace {
// fn under each tiled Q6_K kernel variant, in both block orders: kernel 2
// with a warp per tile, or one block (of 2 in the emulation) walking
// several tiles; kernel 3 (bulk copies, persistent) with 3 blocks per
// multiprocessor, or one, each warp walking 1-2 tiles (its ring running on
// across them).
template <typename F>
void each_q6k_variant(F fn) {
  for (auto [kernel, persist] : {std::pair{2, 0}, std::pair{2, 1}, std::pair{3, 0}, std::pair{3, 1}})
    for (bool reverse : {false, true}) {
      CAPTURE(kernel);
      CAPTURE(persist);
      CAPTURE(reverse);
      emu::set_order(reverse);
      DecodeTuning tv;
      tv.q6k_kernel = kernel;
      tv.q6k_persist = persist;
      TuningScope ts(tv);
      fn();
    }
  emu::set_order(false);
}
}  // namespace

TEST_CASE("emulated: the tiled Q6_K kernels 2 and 3 (tensor cores, bulk copies) match the CPU products") {
  // 13 tiles (the last partial): more than the 8 warps of the persistent launch.
  const int64_t N = 200, K = 512;
  HostQMat w(GGML_Q6_K, N, K, 52);
  HostTiledQ6k tiled(N, K);
  const Q6kTiled& q = tiled.q;
  REQUIRE(q6kt_repack(w.data.data(), w.row_bytes, 0, N, q, nullptr) == cudaSuccess);
  for (int n : {1, 2, 5}) {
    const int64_t ldx = K + 4, ldy = N + 2;
    auto x = random_floats(size_t(n * ldx), uint32_t(63 + n), -2, 2);
    auto y0 = random_floats(size_t(n * ldy), 64, -1, 1);
    std::vector<float> want(y0), first;
    for (int j = 0; j < n; ++j)
      for (int64_t r = 0; r < N; ++r) want[size_t(j * ldy + r)] += float(w.dot(r, x.data() + j * ldx) * 0.75);
    CAPTURE(n);
    each_q6k_variant([&] {
      std::vector<float> y(y0);
      REQUIRE(q6kt_matvec(q, x.data(), ldx, n, y.data(), ldy, Accum::Add, nullptr) == cudaSuccess);
      CHECK(rel(y, want) < 2e-3);
      if (first.empty()) first = y;
      CHECK(y == first);  // the same arithmetic in every variant: equal bits
    });
  }
}

namespace {
// argmax_rows()'s rule on the host: NaN skipped, the first of equal maxima,
// 0 when every value is NaN.
int32_t host_argmax(const float* y, int64_t N) {
  int32_t best = -1;
  for (int64_t r = 0; r < N; ++r)
    if (y[r] == y[r] && (best < 0 || y[r] > y[best])) best = int32_t(r);
  return best < 0 ? 0 : best;
}
}  // namespace

TEST_CASE("emulated: the tiled Q6_K kernels' greedy epilogue gives argmax_rows() of what they store") {
  const int64_t N = 200, K = 512;  // 13 tiles, the last partial
  HostQMat w(GGML_Q6_K, N, K, 53);
  HostTiledQ6k tiled(N, K);
  const Q6kTiled& q = tiled.q;
  std::vector<unsigned long long> best(8, 0);
  int done = 0;
  HeadArgmax am;
  am.best = best.data();
  am.done = &done;
  // The stored rows and the fused argmax, for each kernel variant; the
  // buffers must be back at zero after each call.
  auto run = [&](const std::vector<float>& x, int64_t ldx, int n, std::vector<int32_t>* ids) {
    const int64_t ldy = N + 2;
    bool first = true;
    each_q6k_variant([&] {
      std::vector<float> y(size_t(n * ldy), -7.0f);
      std::vector<int32_t> out(size_t(n), -1);
      am.out = out.data();
      REQUIRE(q6kt_matvec(q, x.data(), ldx, n, y.data(), ldy, Accum::Store, nullptr, &am) == cudaSuccess);
      for (int j = 0; j < n; ++j) CHECK(out[size_t(j)] == host_argmax(y.data() + j * ldy, N));
      CHECK(std::all_of(best.begin(), best.end(), [](unsigned long long b) { return b == 0; }));
      CHECK(done == 0);
      if (first) *ids = out;
      first = false;
      CHECK(out == *ids);
      // Without the epilogue: the same stored values.
      std::vector<float> y2(size_t(n * ldy), -7.0f);
      REQUIRE(q6kt_matvec(q, x.data(), ldx, n, y2.data(), ldy, Accum::Store, nullptr) == cudaSuccess);
      CHECK(std::memcmp(y.data(), y2.data(), y.size() * 4) == 0);
    });
  };
  REQUIRE(q6kt_repack(w.data.data(), w.row_bytes, 0, N, q, nullptr) == cudaSuccess);
  std::vector<int32_t> ids;
  for (int n : {1, 2, 5, 8}) {
    CAPTURE(n);
    const int64_t ldx = K + 4;
    run(random_floats(size_t(n * ldx), uint32_t(70 + n), -2, 2), ldx, n, &ids);
  }
  // Ties: row 0 of x gives all-zero logits (index 0); a NaN in row 1 makes
  // every logit of that row NaN (0).
  {
    std::vector<float> x(size_t(2 * K), 0.0f);
    x[size_t(K + 3)] = NAN;
    run(x, K, 2, &ids);
    CHECK(ids == std::vector<int32_t>{0, 0});
  }
  // Equal maxima in different tiles: the winning row copied into an earlier
  // row (the copy wins) and into a later one (the original wins).
  const std::vector<float> x = random_floats(size_t(K), 81, -2, 2);
  run(x, K, 1, &ids);
  const int32_t m = ids[0];
  const int64_t earlier = m >= 16 ? m % 16 : -1, later = m < N - 16 ? N - 1 - (N - 1 - m) % 16 : -1;
  REQUIRE((earlier >= 0 || later >= 0));
  std::vector<uint8_t> rows = w.data;
  auto copy_row = [&](int64_t dst) {
    std::memcpy(rows.data() + dst * w.row_bytes, w.data.data() + m * w.row_bytes, size_t(w.row_bytes));
  };
  if (earlier >= 0) copy_row(earlier);
  if (later >= 0) copy_row(later);
  REQUIRE(q6kt_repack(rows.data(), w.row_bytes, 0, N, q, nullptr) == cudaSuccess);
  run(x, K, 1, &ids);
  CHECK(ids[0] == (earlier >= 0 ? earlier : m));
}

TEST_CASE("emulated: the Q8_0, Q4_K, Q6_K and F16 tiles (1-8 warps per tile) match the CPU products; their rows dequantize exactly") {
  struct Shape {
    uint32_t type;
    int64_t rows, cols;
    int sms, slices;
  };
  // 25 tiles of 4 kgroups: 1, 2 or 4 slices for 1, 2 or 4 "multiprocessors";
  // 3 tiles (the last partial) of 5 kgroups: 4 slices, the last empty (Q8_0);
  // 8 slices of one kgroup.
  for (const Shape sh : {Shape{GGML_Q8_0, 400, 256, 1, 1}, Shape{GGML_Q8_0, 400, 256, 2, 2},
                         Shape{GGML_Q8_0, 400, 256, 4, 4}, Shape{GGML_Q8_0, 40, 320, 1, 4}, Shape{GGML_Q8_0, 40, 512, 1, 8},
                         Shape{GGML_Q4_K, 400, 256, 1, 1}, Shape{GGML_Q4_K, 400, 256, 4, 4},
                         Shape{GGML_Q4_K, 40, 512, 1, 8}, Shape{GGML_Q4_K, 24, 768, 1, 8},
                         Shape{GGML_Q6_K, 400, 256, 2, 2}, Shape{GGML_Q6_K, 40, 768, 1, 8},
                         Shape{GGML_F16, 400, 256, 2, 2}, Shape{GGML_F16, 40, 320, 1, 4}}) {
    const int64_t N = sh.rows, K = sh.cols;
    CAPTURE(type_info(sh.type)->name);
    CAPTURE(N);
    CAPTURE(K);
    HostQMat w(sh.type, N, K, uint32_t(71 + K));
    REQUIRE(ktiles_supported(sh.type, K));
    KTiles q = ktiles_plan(sh.type, N, K, 0.75f);
    std::vector<uint8_t> buf(ktiles_bytes(q));
    ktiles_place(&q, buf.data());
    // Two repack calls (rows 0-15, then the rest), as the upload's blocks.
    REQUIRE(ktiles_repack(q, w.data.data(), w.row_bytes, 0, 16, nullptr) == cudaSuccess);
    REQUIRE(ktiles_repack(q, w.data.data() + 16 * w.row_bytes, w.row_bytes, 16, N - 16, nullptr) == cudaSuccess);
    REQUIRE(q.present());
    REQUIRE(ktiles_slices(q, sh.sms) == sh.slices);
    std::vector<float> first_row0;
    for (int n : {1, 2, 5, 8}) {
      CAPTURE(n);
      const int64_t ldx = K + 4, ldy = N + 2;
      auto x = random_floats(size_t(n * ldx), 91, -2, 2);  // row j the same for every n
      auto y0 = random_floats(size_t(n * ldy), 64, -1, 1);
      std::vector<float> want(y0), y(y0);
      for (int j = 0; j < n; ++j)
        for (int64_t r = 0; r < N; ++r) want[size_t(j * ldy + r)] += float(w.dot(r, x.data() + j * ldx) * 0.75);
      REQUIRE(ktiles_matvec(q, x.data(), ldx, n, y.data(), ldy, Accum::Add, sh.sms, nullptr) == cudaSuccess);
      CHECK(rel(y, want) < 2e-3);
      // Store, and row 0 the same bits whatever n is.
      std::vector<float> ys(size_t(n * ldy), -7.0f);
      REQUIRE(ktiles_matvec(q, x.data(), ldx, n, ys.data(), ldy, Accum::Store, sh.sms, nullptr) == cudaSuccess);
      for (int64_t r = 0; r < N; ++r) REQUIRE(ys[size_t(r)] + y0[size_t(r)] == y[size_t(r)]);
      CHECK(ys[size_t(N)] == -7.0f);  // past the rows: untouched
      std::vector<float> row0(ys.begin(), ys.begin() + N);
      if (first_row0.empty()) first_row0 = row0;
      CHECK(row0 == first_row0);
      // The RMS norm in the prologue: y = W (rmsnorm(x) * nw).
      const auto nw = random_floats(size_t(K), 93, 0.5f, 1.5f);
      std::vector<float> yn(size_t(n * ldy)), wantn(size_t(n * ldy)), xn(static_cast<size_t>(K));
      for (int j = 0; j < n; ++j) {
        double ss = 0;
        for (int64_t k = 0; k < K; ++k) ss += double(x[size_t(j * ldx + k)]) * x[size_t(j * ldx + k)];
        const double r = 1.0 / std::sqrt(ss / double(K) + 1e-6);
        for (int64_t k = 0; k < K; ++k) xn[size_t(k)] = float(x[size_t(j * ldx + k)] * r * nw[size_t(k)]);
        for (int64_t r2 = 0; r2 < N; ++r2) wantn[size_t(j * ldy + r2)] = float(w.dot(r2, xn.data()) * 0.75);
      }
      REQUIRE(ktiles_matvec(q, x.data(), ldx, n, yn.data(), ldy, Accum::Store, sh.sms, nullptr, {nw.data(), 1e-6f}) ==
              cudaSuccess);
      CHECK(rel(yn, wantn) < 2e-3);
    }
    // Rows: the values of dequantize_row, as F32, BF16 and looked up by id.
    std::vector<float> deq(static_cast<size_t>(N * K)), ref(static_cast<size_t>(K)), emb(static_cast<size_t>(3 * K), -1.0f);
    std::vector<uint16_t> deq16(size_t(3 * K));
    const std::vector<int32_t> ids = {int32_t(N - 1), -1, 5};
    REQUIRE(ktiles_dequant_rows_f32(q, 0, N, deq.data(), nullptr) == cudaSuccess);
    REQUIRE(ktiles_dequant_rows_bf16(q, N - 3, 3, deq16.data(), nullptr) == cudaSuccess);
    REQUIRE(ktiles_embedding_rows(q, ids.data(), 3, emb.data(), K, nullptr) == cudaSuccess);
    for (int64_t r = 0; r < N; ++r) {
      dequantize_row(sh.type, w.data.data() + r * w.row_bytes, ref.data(), K);
      REQUIRE(std::memcmp(deq.data() + r * K, ref.data(), size_t(K) * 4) == 0);
      if (r == N - 1) CHECK(std::memcmp(emb.data(), ref.data(), size_t(K) * 4) == 0);
      if (r == 5) CHECK(std::memcmp(emb.data() + 2 * K, ref.data(), size_t(K) * 4) == 0);
      if (r >= N - 3)
        for (int64_t k = 0; k < K; ++k)
          REQUIRE(deq16[size_t((r - (N - 3)) * K + k)] == __bfloat16_as_ushort(__float2bfloat16_rn(ref[size_t(k)])));
    }
    CHECK(emb[size_t(K)] == -1.0f);  // a negative id: left alone
  }
  // Bad arguments: an unaligned repack range, a row size that is not the
  // type's, rows past the end; no tiles for row lengths they cannot hold.
  KTiles q = ktiles_plan(GGML_Q8_0, 40, 256, 1.0f);
  std::vector<uint8_t> buf(ktiles_bytes(q)), src(size_t(40 * 272));
  ktiles_place(&q, buf.data());
  CHECK(ktiles_repack(q, src.data(), 272, 8, 16, nullptr) == cudaErrorInvalidValue);
  CHECK(ktiles_repack(q, src.data(), 270, 0, 16, nullptr) == cudaErrorInvalidValue);
  CHECK(ktiles_repack(q, src.data(), 272, 0, 48, nullptr) == cudaErrorInvalidValue);
  CHECK(!ktiles_supported(GGML_Q4_K, 128));
  CHECK(!ktiles_supported(GGML_Q8_0, 96));
  CHECK(!ktiles_supported(GGML_Q6_K, 128));
  CHECK(!ktiles_supported(GGML_NVFP4, 256));
  CHECK(!ktiles_supported(GGML_BF16, 256));
  CHECK(ktiles_plan(GGML_Q4_K, 16, 128, 1.0f).type == 0);
}

TEST_CASE("emulated: paired gate/up tiles (Q8_0, Q4_K, Q6_K, F16): the SwiGLU epilogue, stack-order rows, one-range repack") {
  for (uint32_t type : {uint32_t(GGML_Q8_0), uint32_t(GGML_Q4_K), uint32_t(GGML_Q6_K), uint32_t(GGML_F16)}) {
    CAPTURE(type_info(type)->name);
    const int64_t F = 40, N = 2 * F, K = 512;  // [gate; up], 5 tiles of 8 gate + 8 up rows
    HostQMat w(type, N, K, 101);
    KTiles q = ktiles_plan(type, N, K, 0.75f, true);
    REQUIRE(q.paired());
    std::vector<uint8_t> buf(ktiles_bytes(q));
    ktiles_place(&q, buf.data());
    CHECK(ktiles_repack(q, w.data.data(), w.row_bytes, 0, 16, nullptr) == cudaErrorInvalidValue);  // one range only
    REQUIRE(ktiles_repack(q, w.data.data(), w.row_bytes, 0, N, nullptr) == cudaSuccess);
    for (int n : {1, 2, 5}) {
      CAPTURE(n);
      const int64_t ldx = K + 4;
      auto x = random_floats(size_t(n * ldx), 103, -2, 2);
      std::vector<float> plain(size_t(n * N)), want(size_t(n * N)), act(size_t(n * F), -3.0f), want_act(size_t(n * F));
      for (int j = 0; j < n; ++j) {
        for (int64_t r = 0; r < N; ++r) want[size_t(j * N + r)] = float(w.dot(r, x.data() + j * ldx) * 0.75);
        for (int64_t i = 0; i < F; ++i) {
          const double g = want[size_t(j * N + i)], u = want[size_t(j * N + F + i)];
          want_act[size_t(j * F + i)] = float(g / (1.0 + std::exp(-g)) * u);
        }
      }
      // Rows in stack order, and the SwiGLU of each pair.
      REQUIRE(ktiles_matvec(q, x.data(), ldx, n, plain.data(), N, Accum::Store, 1, nullptr) == cudaSuccess);
      CHECK(rel(plain, want) < 2e-3);
      REQUIRE(ktiles_matvec(q, x.data(), ldx, n, act.data(), F, Accum::Store, 1, nullptr, {nullptr, 1e-6f, true}) ==
              cudaSuccess);
      CHECK(rel(act, want_act) < 4e-3);
      // SwiGLU only from a paired stack, never accumulating.
      CHECK(ktiles_matvec(q, x.data(), ldx, n, act.data(), F, Accum::Add, 1, nullptr, {nullptr, 1e-6f, true}) ==
            cudaErrorInvalidValue);
    }
    std::vector<float> deq(static_cast<size_t>(N * K)), ref(static_cast<size_t>(K));
    REQUIRE(ktiles_dequant_rows_f32(q, 0, N, deq.data(), nullptr) == cudaSuccess);
    for (int64_t r = 0; r < N; ++r) {
      dequantize_row(type, w.data.data() + r * w.row_bytes, ref.data(), K);
      REQUIRE(std::memcmp(deq.data() + r * K, ref.data(), size_t(K) * 4) == 0);
    }
  }
  KTiles plain = ktiles_plan(GGML_Q8_0, 32, 256, 1.0f);
  std::vector<float> x(256), y(32);
  CHECK(ktiles_matvec(plain, x.data(), 256, 1, y.data(), 16, Accum::Store, 1, nullptr, {nullptr, 1e-6f, true}) ==
        cudaErrorInvalidValue);  // not paired (and no memory: refused before any launch)
  CHECK(ktiles_plan(GGML_Q8_0, 40, 256, 1.0f, true).type == 0);  // 40 rows: no whole pairs of tiles
}

TEST_CASE("emulated: the Q8_0, Q4_K, Q6_K and F16 tiles with the gated-norm prologue and the conv epilogue match the CPU") {
  for (uint32_t type : {uint32_t(GGML_Q8_0), uint32_t(GGML_Q4_K), uint32_t(GGML_Q6_K), uint32_t(GGML_F16)}) {
    CAPTURE(type_info(type)->name);
    // The delta net's output projection: heads of dv = 128 (8 chunks of a
    // warp's lanes); 1 and 4 warps per tile.
    {
      const int64_t N = 400, K = 512, dv = 128, ldz = K + 16;
      HostQMat w(type, N, K, 111);
      const HostKTiles tiles(w, 0.75f);
      const KTiles& q = tiles.q;
      REQUIRE(ktiles_gated_fits(q, int(dv)));
      CHECK(!ktiles_gated_fits(q, 96));   // 6 chunks a head: not a power of two
      CHECK(!ktiles_gated_fits(q, 768));  // 48 chunks: more than a warp's lanes
      for (int n : {1, 3, 8}) {
        for (int sms : {1, 4}) {
          CAPTURE(n);
          CAPTURE(sms);
          REQUIRE(ktiles_slices(q, sms) == sms);
          auto o = random_floats(static_cast<size_t>(n * K), 112, -2, 2);
          auto z = random_floats(static_cast<size_t>(n * ldz), 113, -3, 3);
          auto gw = random_floats(static_cast<size_t>(dv), 114, 0.5f, 1.5f);
          auto y0 = random_floats(static_cast<size_t>(n * N), 115, -1, 1);
          std::vector<float> want(y0), y(y0);
          for (int j = 0; j < n; ++j) {
            const std::vector<float> xr = gated_prologue_row(o, z, ldz, gw, j, K, dv);
            for (int64_t r = 0; r < N; ++r) want[size_t(j * N + r)] += float(w.dot(r, xr.data()) * 0.75);
          }
          TilesFusion f;
          f.gated = {z.data(), ldz, gw.data(), int(dv)};
          REQUIRE(ktiles_matvec(q, o.data(), K, n, y.data(), N, Accum::Add, sms, nullptr, f) == cudaSuccess);
          CHECK(rel(y, want) < 2e-3);
        }
      }
      // Not with the RMS norm too, nor heads the prologue cannot take.
      std::vector<float> x(static_cast<size_t>(K)), z(static_cast<size_t>(K)), gw(static_cast<size_t>(dv)),
          y(static_cast<size_t>(N));
      TilesFusion f;
      f.gated = {z.data(), K, gw.data(), int(dv)};
      f.norm = gw.data();
      CHECK(ktiles_matvec(q, x.data(), K, 1, y.data(), N, Accum::Store, 1, nullptr, f) == cudaErrorInvalidValue);
      f.norm = nullptr;
      f.gated.dv = 96;
      CHECK(ktiles_matvec(q, x.data(), K, 1, y.data(), N, Accum::Store, 1, nullptr, f) == cudaErrorInvalidValue);
    }
    // The input projection: channels below C through the causal conv + SiLU
    // (window and snapshot updated), the others stored; 1 and 4 warps per
    // tile.
    {
      const int64_t N = 400, K = 256, C = 300, Kc = 4, ldy = N + 3;
      HostQMat w(type, N, K, 121);
      const HostKTiles tiles(w, 0.5f);
      const KTiles& q = tiles.q;
      auto taps = random_floats(static_cast<size_t>(C * Kc), 122, -1, 1);
      auto win0 = random_floats(static_cast<size_t>((Kc - 1) * C), 123, -2, 2);
      for (int n : {1, 2}) {
        for (int sms : {1, 4}) {
          CAPTURE(n);
          CAPTURE(sms);
          REQUIRE(ktiles_slices(q, sms) == sms);
          auto x = random_floats(static_cast<size_t>(n * K), uint32_t(124 + n), -2, 2);
          std::vector<float> u(static_cast<size_t>(n * N)), win(win0), snap;
          for (int j = 0; j < n; ++j)
            for (int64_t r = 0; r < N; ++r) u[size_t(j * N + r)] = float(w.dot(r, x.data() + j * K) * 0.5);
          const std::vector<float> out = conv_epilogue_reference(u, n, N, C, Kc, taps, win, &snap);
          std::vector<float> y(static_cast<size_t>(n * ldy), NAN), dw(win0), ds(static_cast<size_t>((Kc - 1) * C), NAN);
          TilesFusion f;
          f.conv = {taps.data(), dw.data(), C, int(Kc), 0, ds.data()};
          REQUIRE(ktiles_matvec(q, x.data(), K, n, y.data(), ldy, Accum::Store, sms, nullptr, f) == cudaSuccess);
          std::vector<float> got(static_cast<size_t>(n * N));
          for (int j = 0; j < n; ++j)
            for (int64_t r = 0; r < N; ++r) got[size_t(j * N + r)] = y[size_t(j * ldy + r)];
          CHECK(rel(got, out) < 3e-3);
          CHECK(rel(dw, win) < 3e-3);
          CHECK(rel(ds, snap) < 3e-3);
        }
      }
      // Not for 3 rows, accumulating, or more channels than rows.
      std::vector<float> x(static_cast<size_t>(3 * K)), y(static_cast<size_t>(3 * N)),
          win(static_cast<size_t>((Kc - 1) * C));
      TilesFusion f;
      f.conv = {taps.data(), win.data(), C, int(Kc), -1, nullptr};
      CHECK(ktiles_matvec(q, x.data(), K, 3, y.data(), N, Accum::Store, 1, nullptr, f) == cudaErrorInvalidValue);
      CHECK(ktiles_matvec(q, x.data(), K, 1, y.data(), N, Accum::Add, 1, nullptr, f) == cudaErrorInvalidValue);
      f.conv.channels = N + 1;
      CHECK(ktiles_matvec(q, x.data(), K, 1, y.data(), N, Accum::Store, 1, nullptr, f) == cudaErrorInvalidValue);
    }
  }
}

TEST_CASE("emulated: NVFP4 gate/up with the SwiGLU epilogue (kernels 1-3) matches the CPU") {
  const int64_t F = 96, K = 512, sms = 4;
  HostQMat wa(GGML_NVFP4, F, K, 41), wb(GGML_NVFP4, F, K, 42);
  const HostTiledFp4 tiled(wa, &wb);
  const Fp4Tiled& t = tiled.t;
  std::vector<float> part(std::max<uint64_t>(1, fp4_partial_floats(t, int(sms))));
  std::vector<int> cnt(std::max<uint64_t>(1, fp4_counter_ints(t)), 0);
  const int n = 2;
  auto x = random_floats(size_t(n * K), 5, -2, 2);
  std::vector<double> want(static_cast<size_t>(n * F));
  for (int j = 0; j < n; ++j)
    for (int64_t i = 0; i < F; ++i) {
      const float g = float(wa.dot(i, x.data() + j * K) * 0.5), u = float(wb.dot(i, x.data() + j * K) * 0.5);
      want[size_t(j * F + i)] = siluf(g) * u;
    }
  for (int kernel : {1, 2, 3, 4}) {  // 4: kernel 3 with the FP8 arithmetic
    CAPTURE(kernel);
    DecodeTuning v;
    v.fp4_kernel = std::min(kernel, 3);
    v.fp4_fp8 = kernel == 4 ? 1 : 0;
    v.fp4_blocks_per_sm = 32;  // split K
    TuningScope ts(v);
    std::vector<float> y(static_cast<size_t>(n * 2 * F), NAN);
    Fp4MatvecArgs a;
    a.w = t;
    a.n = n;
    a.x = x.data();
    a.ldx = K;
    a.y = y.data();
    a.ldy = 2 * F;
    a.epilogue = Fp4Epilogue::SwiGLU;
    a.partial = part.data();
    a.counters = cnt.data();
    REQUIRE(fp4_matvec(a, int(sms), nullptr) == cudaSuccess);
    double num = 0, den = 0;
    for (int j = 0; j < n; ++j)
      for (int64_t i = 0; i < F; ++i) {
        const double wv = want[size_t(j * F + i)], got = y[size_t(j * 2 * F + i)];
        num += (got - wv) * (got - wv);
        den += wv * wv;
      }
    CHECK(std::sqrt(num / den) < 2e-3);
  }
}

TEST_CASE("emulated: the FFN as a chain (one launch) equals gate/up + down as two kernel-3 launches, and the CPU") {
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  // D = 256, F = 576: 18 gate/up tile groups, down slices of 1 to 3 kgroups
  // (the last slice reading fewer tile groups), gate/up unsplit or split.
  for (int bps : {1, 4, 32})
    for (int n : {1, 2, 3, 8})
      for (bool reverse : {false, true}) {
        CAPTURE(bps);
        CAPTURE(n);
        CAPTURE(reverse);
        emu::set_order(reverse);
        DecodeTuning tv;
        tv.fp4_blocks_per_sm = bps;
        TuningScope ts(tv);
        const FfnCaseResult r = run_ffn_case<HostArray>(256, 576, n, 4, rand);
        REQUIRE(r.ok);
        CHECK(r.fault == 0);
        // The same slices added in the same order: equal bits.
        CHECK(std::memcmp(r.fused.data(), r.twice.data(), r.fused.size() * 4) == 0);
        CHECK(std::memcmp(r.again.data(), r.fused.data(), r.fused.size() * 4) == 0);
        for (size_t i = 0; i < r.act_fused.size(); ++i)
          if (!(r.act_fused[i] == r.act_twice[i] || (std::isnan(r.act_fused[i]) && std::isnan(r.act_twice[i])))) {
            FAIL_CHECK("SwiGLU output " << i << " differs");
            break;
          }
        CHECK(rel(r.fused, r.ref) < 2e-3);  // F16 activations
        CHECK(std::all_of(r.sync.begin(), r.sync.end(), [](int c) { return c == 0; }));
      }
  // Counters left over from a launch that never finished (the ticket
  // counter one past the first gate/up task): the down tasks give up
  // waiting, raise the fault flag (the first, down's task 0, saying where:
  // its slice short of gate/up's first tile group), and the counters end at
  // zero again.
  {
    const FfnCaseResult f = run_ffn_case<HostArray>(256, 576, 1, 4, rand, nullptr, 1, 1);
    CHECK(f.fault == 1);
    REQUIRE(f.fault_record.size() == size_t(kFp4ChainFaultInts));
    CHECK(f.fault_record[1] == 1);
    CHECK(f.fault_record[2] == 0);
    CHECK(f.fault_record[3] < f.fault_record[4]);
    CHECK(std::all_of(f.sync.begin(), f.sync.end(), [](int c) { return c == 0; }));
  }
  // Three layers in a row (alternating counter sets): the same chain.
  const FfnCaseResult r = run_ffn_case<HostArray>(256, 576, 2, 4, rand, nullptr, 3);
  REQUIRE(r.ok);
  CHECK(r.fault == 0);
  CHECK(std::memcmp(r.fused.data(), r.twice.data(), r.fused.size() * 4) == 0);
  CHECK(std::all_of(r.sync.begin(), r.sync.end(), [](int c) { return c == 0; }));
  emu::set_order(false);
}

TEST_CASE("emulated: a layer tail as a chain (delta rule or attention, gated norm, FFN, conv epilogue) equals single launches") {
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  // D = 256, F = 576, 4 heads of 64, the next input projection 640 rows of
  // which the first 384 go through the conv (1-2 rows; stored for more);
  // four stages, or five with the delta rule in front (2 key heads of 32 or
  // 64) or with the fused attention in front (4 query and 2 KV heads of 64
  // or 128 over 9 or 37 cached rows in 3 splits; 1-2 rows).
  for (int bps : {1, 4, 32})
    for (int n : {1, 2, 3})
      for (int kind = 0; kind < 5; ++kind)
        for (bool reverse : {false, true}) {
          TailHead head;
          if (kind == 1 || kind == 2) {
            head.kind = TailHead::Delta;
            head.Hk = 2;
            head.dk = kind == 1 ? 32 : 64;
          } else if (kind >= 3) {
            if (n > 2) continue;
            head.kind = TailHead::Attention;
            head.Hq = 4;
            head.Hkv = 2;
            head.Dh = kind == 3 ? 64 : 128;
            head.n_past = kind == 3 ? 9 : 37;
            head.splits = 3;
          }
          CAPTURE(bps);
          CAPTURE(n);
          CAPTURE(kind);
          CAPTURE(reverse);
          emu::set_order(reverse);
          DecodeTuning tv;
          tv.fp4_blocks_per_sm = bps;
          TuningScope ts(tv);
          // The norms' stages after the whole stage before, or by slice
          // until their combine (SliceNorm).
          for (Fp4Dep nd : {Fp4Dep::Full, Fp4Dep::SliceNorm}) {
            CAPTURE(int(nd));
            check_tail_case(run_tail_case<HostArray>(256, 576, 4, 64, 384, 640, n, 4, rand, head, 1, nullptr, nd));
            // Three in a row (alternating counter sets), each from the last's state.
            if (bps == 4 && n == 1)
              check_tail_case(run_tail_case<HostArray>(256, 576, 4, 64, 384, 640, n, 4, rand, head, 3, nullptr, nd));
          }
        }
  emu::set_order(false);
}

TEST_CASE("emulated: NVFP4 matvec with the fused causal-conv epilogue (kernels 1-3, snapshot) matches the CPU") {
  const int64_t N = 200, K = 256, C = 150, Kc = 4, sms = 4;  // rows >= C are stored as they are
  HostQMat wq(GGML_NVFP4, N, K, 71);
  const HostTiledFp4 tiled(wq, nullptr);
  std::vector<float> part(std::max<uint64_t>(1, fp4_partial_floats(tiled.t, int(sms))));
  std::vector<int> cnt(std::max<uint64_t>(1, fp4_counter_ints(tiled.t)), 0);
  auto taps = random_floats(static_cast<size_t>(C * Kc), 72, -1, 1);
  auto win0 = random_floats(static_cast<size_t>((Kc - 1) * C), 73, -2, 2);
  for (int n : {1, 2}) {
    const int64_t ldy = N + 3;
    auto x = random_floats(static_cast<size_t>(n * K), uint32_t(74 + n), -2, 2);
    // CPU: the projection, then the conv row by row.
    std::vector<float> u(static_cast<size_t>(n * N)), win(win0), snap;
    for (int j = 0; j < n; ++j)
      for (int64_t r = 0; r < N; ++r) u[size_t(j * N + r)] = float(wq.dot(r, x.data() + j * K) * 0.5);
    const std::vector<float> out = conv_epilogue_reference(u, n, N, C, Kc, taps, win, &snap);
    for (int kernel : {1, 2, 3, 4}) {  // 4: kernel 3 with the FP8 arithmetic
      CAPTURE(n);
      CAPTURE(kernel);
      DecodeTuning v;
      v.fp4_kernel = std::min(kernel, 3);
      v.fp4_fp8 = kernel == 4 ? 1 : 0;
      TuningScope ts(v);
      std::vector<float> y(static_cast<size_t>(n * ldy), NAN), dw(win0), ds(static_cast<size_t>((Kc - 1) * C), NAN);
      Fp4MatvecArgs a;
      a.w = tiled.t;
      a.n = n;
      a.x = x.data();
      a.ldx = K;
      a.y = y.data();
      a.ldy = ldy;
      a.epilogue = Fp4Epilogue::Conv;
      a.partial = part.data();
      a.counters = cnt.data();
      a.conv_taps = taps.data();
      a.conv_window = dw.data();
      a.conv_channels = C;
      a.conv_k = int(Kc);
      a.conv_snapshot_row = 0;
      a.conv_snapshot = ds.data();
      REQUIRE(fp4_matvec(a, int(sms), nullptr) == cudaSuccess);
      double num = 0, den = 0;
      for (int j = 0; j < n; ++j)
        for (int64_t r = 0; r < N; ++r) {
          const double g = y[size_t(j * ldy + r)], e = out[size_t(j * N + r)];
          num += (g - e) * (g - e);
          den += e * e;
        }
      CHECK(std::sqrt(num / den) < 3e-3);
      CHECK(rel(dw, win) < 3e-3);
      CHECK(rel(ds, snap) < 3e-3);
    }
  }
}

TEST_CASE("emulated: NVFP4 matvec with the fused gated-RMSNorm prologue (kernels 1-3, split K) matches the CPU") {
  // dv = 192: heads of 12 chunks, which kernel 2 leaves to kernel 1.
  for (int64_t dv : {int64_t(64), int64_t(192)}) {
    const int64_t N = 48, K = dv == 64 ? 512 : 768, sms = 4;
    HostQMat wq(GGML_NVFP4, N, K, 91);
    const HostTiledFp4 tiled(wq, nullptr);
    REQUIRE(fp4_gated_supported(tiled.t, int(dv)));
    std::vector<float> part(std::max<uint64_t>(1, fp4_partial_floats(tiled.t, int(sms))));
    std::vector<int> cnt(std::max<uint64_t>(1, fp4_counter_ints(tiled.t)), 0);
    const int n = 2;
    const int64_t ldz = K + 16;
    auto o = random_floats(static_cast<size_t>(n * K), 92, -2, 2);
    auto z = random_floats(static_cast<size_t>(n * ldz), 93, -3, 3);
    auto gw = random_floats(static_cast<size_t>(dv), 94, 0.5f, 1.5f);
    auto y0 = random_floats(static_cast<size_t>(n * N), 95, -1, 1);
    std::vector<float> want(y0);
    for (int j = 0; j < n; ++j) {
      const std::vector<float> xr = gated_prologue_row(o, z, ldz, gw, j, K, dv);
      for (int64_t r = 0; r < N; ++r) want[size_t(j * N + r)] += float(wq.dot(r, xr.data()) * 0.5);
    }
    for (int kernel : {1, 2, 3, 4}) {  // 4: kernel 3 with the FP8 arithmetic
      CAPTURE(dv);
      CAPTURE(kernel);
      DecodeTuning v;
      v.fp4_kernel = std::min(kernel, 3);
      v.fp4_fp8 = kernel == 4 ? 1 : 0;
      v.fp4_blocks_per_sm = 32;  // split K (on head boundaries)
      TuningScope ts(v);
      std::vector<float> y(y0);
      Fp4MatvecArgs a;
      a.w = tiled.t;
      a.n = n;
      a.x = o.data();
      a.ldx = K;
      a.gate_z = z.data();
      a.ldz = ldz;
      a.gate_w = gw.data();
      a.gate_dv = int(dv);
      a.y = y.data();
      a.ldy = N;
      a.epilogue = Fp4Epilogue::Add;
      a.partial = part.data();
      a.counters = cnt.data();
      REQUIRE(fp4_matvec(a, int(sms), nullptr) == cudaSuccess);
      CHECK(rel(y, want) < 2e-3);
    }
  }
}

TEST_CASE("emulated: SwiGLU to BF16 (16-byte and scalar paths) and the BF16 NVFP4 dequantization") {
  for (bool reverse : {false, true}) {  // thread and block order: a missing barrier shows
    emu::set_order(reverse);
    CAPTURE(reverse);
    // SwiGLU: aligned rows take the vector kernel, an odd stride the scalar one.
    for (int64_t ld : {int64_t(40), int64_t(37)}) {
      CAPTURE(ld);
      const int64_t n = 5, F = 36;
      auto g = random_floats(size_t(n * ld), 11, -6, 6), u = random_floats(size_t(n * ld), 12, -3, 3);
      std::vector<uint16_t> y(size_t(n * ld), 0xFFFF);
      REQUIRE(swiglu_bf16(g.data(), ld, u.data(), ld, n, F, y.data(), ld, nullptr) == cudaSuccess);
      bool same = true;
      for (int64_t t = 0; t < n; ++t)
        for (int64_t k = 0; k < ld; ++k) {
          const size_t i = size_t(t * ld + k);
          same &= y[i] == (k < F ? fp32_to_bf16(siluf(g[i]) * u[i]) : uint16_t(0xFFFF));
        }
      CHECK(same);
    }
    // Dequantization: plain (a partial tile) and paired gate/up, whole and row ranges.
    for (bool paired : {false, true}) {
      CAPTURE(paired);
      const int64_t N = paired ? 24 : 40, K = 192;
      HostQMat a(GGML_NVFP4, N, K, 51), b(GGML_NVFP4, N, K, 52);
      const HostTiledFp4 tiled(a, paired ? &b : nullptr);
      const int64_t rows = paired ? 2 * N : N;
      std::vector<float> f(size_t(rows * K));
      REQUIRE(fp4_dequant_rows_f32(tiled.t, 0, rows, f.data(), nullptr) == cudaSuccess);
      std::vector<float> want(static_cast<size_t>(K));
      bool exact = true;
      for (int64_t r = 0; r < rows; ++r) {
        const HostQMat& m = r < N ? a : b;
        dequantize_row(GGML_NVFP4, m.data.data() + (r % N) * m.row_bytes, want.data(), K);
        for (int64_t k = 0; k < K; ++k) exact &= f[size_t(r * K + k)] == want[size_t(k)];  // the tensor scale is the GEMM's
      }
      CHECK(exact);
      for (int64_t r0 : {int64_t(0), int64_t(7)}) {
        const int64_t nr = r0 == 0 ? rows : rows - 13;
        CAPTURE(r0);
        std::vector<uint16_t> bf(size_t(nr * K) + 8, 0xFFFF);
        REQUIRE(fp4_dequant_rows_bf16(tiled.t, r0, nr, bf.data(), nullptr) == cudaSuccess);
        bool same = true;
        for (int64_t r = 0; r < nr; ++r)
          for (int64_t k = 0; k < K; ++k)
            same &= bf[size_t(r * K + k)] == fp32_to_bf16(f[size_t((r0 + r) * K + k)]);
        for (size_t i = size_t(nr * K); i < bf.size(); ++i) same &= bf[i] == 0xFFFF;  // nothing past the range
        CHECK(same);
      }
      // The BF16 kernel writes 16-byte words: a misaligned destination is refused.
      std::vector<uint16_t> odd(size_t(rows * K) + 8);
      CHECK(fp4_dequant_rows_bf16(tiled.t, 0, rows, odd.data() + 1, nullptr) == cudaErrorInvalidValue);
    }
  }
  emu::set_order(false);
}
