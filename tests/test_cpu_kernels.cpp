// CPU kernels against the reference, for every kernel set this machine can
// run (generic, AVX2, AVX-512): matrix products on every weight type with odd
// shapes, batch / row-range / thread-count invariance, activation
// quantization, and every vector op of the fast forward pass including the
// chunked delta rule against the sequential one. Never timings.
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "qwen35/qwen35.h"
#include "context.h"
#include "cpu/kernels.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "ggml_types.h"
#include "model.h"
#include "quants.h"
#include "test_util.h"

using namespace qwen35;
using qwen35::test::rel_err;

// Counts operator new calls while g_count_allocs is set (decode-step test).
namespace {
std::atomic<bool> g_count_allocs{false};
std::atomic<long> g_allocs{0};
}  // namespace
// Every replaceable form goes through malloc/free, so they always pair up
// (also under the sanitizers).
namespace {
void* counted_alloc(size_t n) {
  if (g_count_allocs.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
}  // namespace
void* operator new(size_t n) {
  if (void* p = counted_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) {
  if (void* p = counted_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

std::vector<const cpu::KernelSet*> kernel_sets() {
  const cpu::KernelSet* sets[4];
  const int n = cpu::available_kernel_sets(sets, 4);
  return std::vector<const cpu::KernelSet*>(sets, sets + n);
}

std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A weight matrix of `type` made by quantizing random rows.
struct TestWeight {
  std::vector<uint8_t> bytes;
  Weight w;
  TestWeight(uint32_t type, int64_t N, int64_t K, uint32_t seed) {
    const TypeInfo* ti = type_info(type);
    w.type = type;
    w.rows = N;
    w.cols = K;
    w.row_bytes = row_bytes(*ti, K);
    bytes.resize(w.row_bytes * uint64_t(N));
    std::vector<float> src = randn(size_t(N * K), seed, 0.05f);
    // A few large values so the scales vary across blocks.
    for (size_t i = 0; i < src.size(); i += 97) src[i] *= 8.0f;
    for (int64_t r = 0; r < N; ++r) quantize_row(type, src.data() + r * K, bytes.data() + r * w.row_bytes, K);
    w.data = bytes.data();
    w.scale = 0.75f;  // exercise the per-tensor scale
  }
};

// Dequantize a converted activation row back to floats (natural order).
std::vector<float> dequant_act(uint32_t type, const uint8_t* row, int64_t K) {
  if (type == GGML_BF16) {  // BF16 rows (AVX-512 BF16)
    std::vector<float> x(static_cast<size_t>(K));
    const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
    for (int64_t k = 0; k < K; ++k) x[size_t(k)] = bf16_to_fp32(h[k]);
    return x;
  }
  const cpu::ActLayout L = cpu::act_layout(K);
  const int8_t* q = reinterpret_cast<const int8_t*>(row);
  const float* xs = reinterpret_cast<const float*>(row + L.xs);
  std::vector<float> x(static_cast<size_t>(K));
  for (int64_t e = 0; e < K; ++e) {
    int64_t p = e;
    if (type == GGML_NVFP4) {
      const int64_t blk = e / 64, s = (e % 64) / 16, i = e % 16;
      p = blk * 64 + (i < 8 ? 8 * s + i : 32 + 8 * s + (i - 8));
    }
    x[size_t(e)] = xs[e / 16] * float(q[p]);
  }
  return x;
}

// y[t][r] in double from exactly dequantized weights and the given activations.
std::vector<double> dot_oracle(const Weight& w, const std::vector<std::vector<float>>& xs) {
  std::vector<double> y(xs.size() * size_t(w.rows));
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    REQUIRE(dequantize_row(w.type, w.row(r), row.data(), w.cols));
    for (size_t t = 0; t < xs.size(); ++t) {
      double acc = 0;
      for (int64_t k = 0; k < w.cols; ++k) acc += double(row[size_t(k)]) * double(xs[t][size_t(k)]);
      y[t * size_t(w.rows) + size_t(r)] = acc * w.scale;
    }
  }
  return y;
}

// Run one kernel set's gemm over rows [r0, r1) of all n activation rows.
std::vector<float> run_gemm(const cpu::KernelSet& ks, const Weight& w, const std::vector<float>& x, int64_t n,
                            std::vector<uint8_t>* acts, int64_t r0 = 0, int64_t r1 = -1) {
  if (r1 < 0) r1 = w.rows;
  const int64_t K = w.cols;
  cpu::GemmArgs a;
  a.type = w.type;
  a.w = w.data;
  a.w_stride = w.row_bytes;
  a.K = K;
  a.n = n;
  a.scale = w.scale;
  std::vector<float> y(size_t(n * w.rows), NAN);
  a.y = y.data();
  a.ldy = w.rows;
  if (ks.converts_acts(w.type)) {
    const cpu::ActLayout L = cpu::act_layout(K);
    acts->assign(size_t(n) * L.stride + 64, 0xCD);
    for (int64_t t = 0; t < n; ++t) ks.quantize_act(w.type, x.data() + t * K, K, acts->data() + size_t(t) * L.stride);
    a.x = acts->data();
    a.x_stride = L.stride;
  } else {
    a.x = x.data();
    a.x_stride = size_t(K) * sizeof(float);
  }
  std::vector<uint8_t> work(cpu::gemm_work_bytes(K) + 64);
  a.work = work.data() + 1;  // any alignment
  a.work_bytes = work.size() - 1;
  REQUIRE(ks.gemm(a, r0, r1));
  return y;
}

double max_rel_row(const float* got, const double* want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace

TEST_CASE("activation quantization: groups of 16, exact corrections, zero padding") {
  for (const cpu::KernelSet* ks : kernel_sets()) {
    CAPTURE(ks->name);
    for (uint32_t type : {GGML_NVFP4, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K}) {
      CAPTURE(type);
      const int64_t K = type == GGML_Q8_0 ? 96 : type == GGML_NVFP4 ? 192 : 512;
      std::vector<float> x = randn(size_t(K), 7);
      x[5] = 40.0f;  // an outlier only affects its own group
      const cpu::ActLayout L = cpu::act_layout(K);
      std::vector<uint8_t> buf(L.stride, 0xCD);
      ks->quantize_act(type, x.data(), K, buf.data());
      const std::vector<float> back = dequant_act(type, buf.data(), K);
      const float* xs = reinterpret_cast<const float*>(buf.data() + L.xs);
      for (int64_t e = 0; e < K; ++e) CHECK(std::fabs(back[size_t(e)] - x[size_t(e)]) <= 0.5f * xs[e / 16] * 1.0001f);
      // Group 0 holds the outlier; group 1 keeps a fine scale.
      CHECK(xs[1] < 0.1f);
      const int8_t* q = reinterpret_cast<const int8_t*>(buf.data());
      const int32_t* corr = reinterpret_cast<const int32_t*>(buf.data() + L.corr);
      const int32_t c = type == GGML_NVFP4 ? 12 : type == GGML_Q8_0 ? 128 : type == GGML_Q6_K ? 32 : 0;
      for (int64_t l = 0; l < K / 4; ++l)
        CHECK(corr[l] == -c * (q[4 * l] + q[4 * l + 1] + q[4 * l + 2] + q[4 * l + 3]));
      const float* s32 = reinterpret_cast<const float*>(buf.data() + L.s32);
      for (int64_t j = 0; j < K / 32; ++j) {
        double s = 0;
        for (int64_t e = 32 * j; e < 32 * j + 32; ++e) s += back[size_t(e)];
        CHECK(std::fabs(s32[j] - s) <= 1e-4 * (1 + std::fabs(s)));
      }
      for (size_t p = size_t(K); p < L.corr; ++p) CHECK(buf[p] == 0);
      // Every kernel set quantizes exactly like the portable one.
      std::vector<uint8_t> ref(L.stride, 0xAB);
      cpu::kernels_generic().quantize_act(type, x.data(), K, ref.data());
      CHECK(std::memcmp(ref.data(), buf.data(), L.stride) == 0);
    }
  }
}

TEST_CASE("matrix kernels match the reference on every weight type and kernel set") {
  struct Case {
    uint32_t type;
    int64_t N, K;
  };
  // Odd row counts (partial tiles), K with a partial Q8_0 pair and float
  // tails that are not multiples of the vector width.
  const Case cases[] = {{GGML_NVFP4, 37, 320}, {GGML_Q8_0, 29, 96},  {GGML_Q8_0, 6, 160},  {GGML_Q4_K, 23, 512},
                        {GGML_Q6_K, 19, 768},  {GGML_F16, 13, 100},  {GGML_BF16, 11, 77}, {GGML_F32, 9, 45},
                        {GGML_MXFP4, 7, 96}};
  ThreadPool tp(1);
  for (const Case& c : cases) {
    CAPTURE(type_info(c.type)->name);
    TestWeight tw(c.type, c.N, c.K, uint32_t(c.N * 1000 + c.K));
    const Weight& w = tw.w;
    for (int64_t n : {1, 3, 6, 9}) {  // 9: long enough for decoded weight tiles
      CAPTURE(n);
      std::vector<float> x = randn(size_t(n * c.K), uint32_t(n + 11), 2.0f);
      std::vector<float> yref(static_cast<size_t>(n * c.N));
      matmul_ref(w, x.data(), n, yref.data(), tp);
      std::vector<std::vector<float>> xf;
      for (int64_t t = 0; t < n; ++t) xf.emplace_back(x.begin() + t * c.K, x.begin() + (t + 1) * c.K);
      for (const cpu::KernelSet* ks : kernel_sets()) {
        CAPTURE(ks->name);
        std::vector<uint8_t> acts;
        cpu::GemmArgs probe;
        probe.type = c.type;
        if (c.type == GGML_MXFP4) continue;  // no kernel: covered by matmul() below
        const std::vector<float> y = run_gemm(*ks, w, x, n, &acts);
        // Exactness of the integer math: against the same quantized
        // activations in double precision.
        std::vector<std::vector<float>> xq;
        for (int64_t t = 0; t < n; ++t)
          xq.push_back(ks->converts_acts(c.type)
                           ? dequant_act(c.type, acts.data() + size_t(t) * cpu::act_layout(c.K).stride, c.K)
                           : xf[size_t(t)]);
        const std::vector<double> want = dot_oracle(w, xq);
        for (int64_t t = 0; t < n; ++t)
          CHECK(max_rel_row(y.data() + t * c.N, want.data() + t * c.N, c.N) < 2e-6);
        // Against the float reference: only the activation rounding differs.
        const double tol = ks->converts_acts(c.type) ? 2e-2 : 1e-5;
        CHECK(rel_err(y.data(), yref.data(), yref.size()) < tol);
        // Each row alone, and split row ranges, give the same bits.
        for (int64_t t = 0; t < n; ++t) {
          std::vector<float> xt(x.begin() + t * c.K, x.begin() + (t + 1) * c.K);
          const std::vector<float> one = run_gemm(*ks, w, xt, 1, &acts);
          CHECK(std::memcmp(one.data(), y.data() + t * c.N, size_t(c.N) * 4) == 0);
        }
        std::vector<float> split = run_gemm(*ks, w, x, n, &acts, 0, 5);
        const std::vector<float> rest = run_gemm(*ks, w, x, n, &acts, 5, c.N);
        for (int64_t t = 0; t < n; ++t)
          std::memcpy(split.data() + t * c.N + 5, rest.data() + t * c.N + 5, size_t(c.N - 5) * 4);
        CHECK(std::memcmp(split.data(), y.data(), y.size() * 4) == 0);
      }
    }
  }
}

TEST_CASE("Q6_K screen (MTP draft): the product of the Q6_K matrix with every low nibble set to 8, bit for bit") {
  const int64_t N = 23, K = 768, blocks = K / 256;
  TestWeight tw(GGML_Q6_K, N, K, 4242);
  // The screen copy, and the Q6_K matrix it stands for (low 4 bits = 8).
  std::vector<uint8_t> screen(size_t(N * blocks) * cpu::kQ6kScreenBlockBytes);
  TestWeight mid(GGML_Q6_K, N, K, 4242);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t j = 0; j < blocks; ++j) {
      const uint8_t* b = tw.w.row(r) + j * 210;
      cpu::q6k_screen_block(b, screen.data() + size_t(r * blocks + j) * cpu::kQ6kScreenBlockBytes);
      std::memset(mid.bytes.data() + size_t(r) * mid.w.row_bytes + size_t(j) * 210, 0x88, 128);  // ql
    }
  Weight sw = tw.w;
  sw.type = cpu::kQ6kScreen;
  sw.data = screen.data();
  sw.row_bytes = uint64_t(blocks) * cpu::kQ6kScreenBlockBytes;
  int sets = 0;
  for (const cpu::KernelSet* ks : kernel_sets()) {
    if (!ks->converts_acts(cpu::kQ6kScreen)) continue;
    CAPTURE(ks->name);
    ++sets;
    for (int64_t n : {1, 2, 9}) {
      CAPTURE(n);
      const std::vector<float> x = randn(size_t(n * K), uint32_t(77 + n), 2.0f);
      std::vector<uint8_t> acts;
      const std::vector<float> got = run_gemm(*ks, sw, x, n, &acts);
      const std::vector<float> want = run_gemm(*ks, mid.w, x, n, &acts);
      CHECK(std::memcmp(got.data(), want.data(), got.size() * 4) == 0);
      // And it is a coarse approximation of the full product (the 2 high
      // bits of 6; 0.41-0.60 on these test weights, whose outliers make most
      // codes small): only good enough to rank candidates.
      const std::vector<float> full = run_gemm(*ks, tw.w, x, n, &acts);
      CHECK(rel_err(got.data(), full.data(), full.size()) < 0.8);
    }
  }
  MESSAGE(sets << " kernel set(s) with the Q6_K screen");
}

TEST_CASE("NVFP4 kernels read every scale code like the reference decoder") {
  // Subnormal codes, 0x7F (NaN in E4M3, read as 0) and codes with bit 7 set
  // (ignored), which the quantizer never writes but a file may hold.
  const int64_t N = 9, K = 256;
  TestWeight tw(GGML_NVFP4, N, K, 77);
  const uint8_t codes[] = {0x00, 0x01, 0x05, 0x07, 0x08, 0x3F, 0x7E, 0x7F, 0x80, 0x81, 0xB8, 0xFF};
  size_t c = 0;
  for (int64_t r = 0; r < N; ++r)
    for (int64_t b = 0; b < K / 64; ++b)
      for (int s = 0; s < 4; ++s) {
        auto* blk = reinterpret_cast<BlockNVFP4*>(tw.bytes.data() + r * tw.w.row_bytes) + b;
        blk->d[s] = codes[c++ % sizeof(codes)];
      }
  std::vector<float> x = randn(size_t(3 * K), 78);
  for (const cpu::KernelSet* ks : kernel_sets()) {
    CAPTURE(ks->name);
    std::vector<uint8_t> acts;
    const std::vector<float> y = run_gemm(*ks, tw.w, x, 3, &acts);
    std::vector<std::vector<float>> xq;
    for (int64_t t = 0; t < 3; ++t) xq.push_back(dequant_act(GGML_NVFP4, acts.data() + size_t(t) * cpu::act_layout(K).stride, K));
    const std::vector<double> want = dot_oracle(tw.w, xq);
    for (int64_t t = 0; t < 3; ++t) CHECK(max_rel_row(y.data() + t * N, want.data() + t * N, N) < 2e-6);
  }
}

TEST_CASE("matmul and matmul_multi: bitwise identical on 1, 2 and 3 threads") {
  TestWeight a(GGML_NVFP4, 301, 256, 1), b(GGML_Q6_K, 67, 256, 2), c(GGML_MXFP4, 45, 256, 3), d(GGML_F16, 33, 256, 4),
      e(GGML_BF16, 21, 256, 5);
  const int64_t n = 9;
  std::vector<float> x = randn(size_t(n * 256), 5);
  std::vector<std::vector<float>> first;
  for (int threads : {1, 2, 3}) {
    ThreadPool tp(threads);
    MatmulScratch s;
    // A reservation for only 4 rows forces the batch into slices.
    REQUIRE(s.reserve(4, 256, 2, threads).ok());
    std::vector<std::vector<float>> ys = {std::vector<float>(size_t(n * 301)), std::vector<float>(size_t(n * 67)),
                                          std::vector<float>(size_t(n * 45)), std::vector<float>(size_t(n * 33)),
                                          std::vector<float>(size_t(n * 21))};
    const MatmulOut outs[] = {{&a.w, ys[0].data()}, {&b.w, ys[1].data()}, {&c.w, ys[2].data()}, {&d.w, ys[3].data()},
                              {&e.w, ys[4].data()}};
    matmul_multi(outs, 5, x.data(), n, tp, s);
    if (first.empty()) {
      first = ys;
      // And close to the reference (MXFP4 goes through the float fallback).
      for (int i = 0; i < 5; ++i) {
        std::vector<float> ref(ys[size_t(i)].size());
        matmul_ref(*outs[i].w, x.data(), n, ref.data(), tp);
        CHECK(rel_err(ys[size_t(i)].data(), ref.data(), ref.size()) < 2e-2);
      }
      std::vector<float> single(ys[0].size());
      matmul(a.w, x.data(), n, single.data(), tp, s);
      CHECK(std::memcmp(single.data(), ys[0].data(), single.size() * 4) == 0);
    } else {
      for (int i = 0; i < 5; ++i)
        CHECK(std::memcmp(first[size_t(i)].data(), ys[size_t(i)].data(), ys[size_t(i)].size() * 4) == 0);
    }
  }
}

TEST_CASE("vector ops match the scalar reference ops") {
  for (const cpu::KernelSet* ks : kernel_sets()) {
    CAPTURE(ks->name);
    for (int64_t n : {1, 7, 64, 131}) {
      CAPTURE(n);
      std::vector<float> x = randn(size_t(n), 21), w = randn(size_t(n), 22), z = randn(size_t(n), 23, 3.0f);
      std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
      rmsnorm(x.data(), w.data(), n, 1e-6f, a.data());
      ks->rmsnorm(x.data(), w.data(), n, 1e-6f, b.data());
      CHECK(rel_err(b.data(), a.data(), size_t(n)) < 1e-6);
      a = x;
      b = x;
      l2norm(a.data(), n, 1e-6f);
      for (auto& v : a) v *= 0.25f;
      ks->l2norm(b.data(), n, 1e-6f, 0.25f);
      CHECK(rel_err(b.data(), a.data(), size_t(n)) < 1e-6);
      a = x;
      b = x;
      for (int64_t i = 0; i < n; ++i) a[size_t(i)] = siluf(x[size_t(i)] * 8.0f) * z[size_t(i)];
      for (auto& v : b) v *= 8.0f;
      ks->silu_mul(b.data(), z.data(), n);
      CHECK(rel_err(b.data(), a.data(), size_t(n)) < 1e-6);
      a = x;
      b = x;
      for (int64_t i = 0; i < n; ++i) a[size_t(i)] *= sigmoidf(z[size_t(i)] * 10.0f);
      std::vector<float> z10(z);
      for (auto& v : z10) v *= 10.0f;
      ks->mul_sigmoid(b.data(), z10.data(), n);
      CHECK(rel_err(b.data(), a.data(), size_t(n)) < 1e-6);
      a = x;
      b = x;
      rmsnorm(a.data(), w.data(), n, 1e-6f, a.data());
      for (int64_t i = 0; i < n; ++i) a[size_t(i)] *= siluf(z[size_t(i)]);
      ks->gated_rmsnorm(b.data(), z.data(), w.data(), n, 1e-6f);
      CHECK(rel_err(b.data(), a.data(), size_t(n)) < 1e-6);
      CHECK(std::fabs(ks->dot(x.data(), w.data(), n) - [&] {
              double s = 0;
              for (int64_t i = 0; i < n; ++i) s += double(x[size_t(i)]) * w[size_t(i)];
              return s;
            }()) < 1e-5 * n);
    }
  }
}

TEST_CASE("conv, RoPE and attention kernels match the scalar reference ops") {
  for (const cpu::KernelSet* ks : kernel_sets()) {
    CAPTURE(ks->name);
    {
      RopeConfig rc;
      rc.n_rot = 40;
      rc.sections[0] = 7;
      rc.sections[1] = 7;
      rc.sections[2] = 6;
      rc.base = 1e7f;
      const int32_t pos[3] = {1234, 17, 5};
      const int64_t D = 72, heads = 3;
      std::vector<float> want = randn(size_t(heads * D), 51), got = want;
      rope_heads(want.data(), heads, D, rc, pos);
      float cs[kMaxRopePairs], sn[kMaxRopePairs];
      rope_tables(rc, pos, cs, sn);
      ks->rope(got.data(), heads, D, rc.n_rot / 2, cs, sn);
      CHECK(rel_err(got.data(), want.data(), want.size()) < 1e-6);
    }
    for (int64_t C : {5, 48, 70}) {
      const int64_t K = 4;
      std::vector<float> win = randn(size_t((K - 1) * C), 31), u = randn(size_t(C), 32), taps = randn(size_t(C * K), 33);
      std::vector<float> want(static_cast<size_t>(C)), got(static_cast<size_t>(C)), taps_t(static_cast<size_t>(K * C));
      conv_silu_step(win.data(), u.data(), taps.data(), C, K, want.data());
      for (int64_t c = 0; c < C; ++c)
        for (int64_t k = 0; k < K; ++k) taps_t[size_t(k * C + c)] = taps[size_t(c * K + k)];
      const float* in[4] = {win.data(), win.data() + C, win.data() + 2 * C, u.data()};
      ks->conv_silu(in, taps_t.data(), K, C, got.data());
      CHECK(rel_err(got.data(), want.data(), size_t(C)) < 1e-6);
    }
    for (int64_t n_kv : {1, 5, 17, 300}) {
      CAPTURE(n_kv);
      const int64_t D = 72, stride = 3 * D, G = 3;  // a group of 3 query heads
      std::vector<float> q = randn(size_t(G * D), 41, 0.3f), kv = randn(size_t(n_kv * stride), 42),
                         v = randn(size_t(n_kv * stride), 43);
      std::vector<float> sc(static_cast<size_t>(G * n_kv)), want(static_cast<size_t>(G * D)), got(want.size());
      for (int64_t h = 0; h < G; ++h)
        attend_one(q.data() + h * D, kv.data() + D, v.data() + D, n_kv, stride, D, 0.125f, sc.data(), want.data() + h * D);
      cpu::AttnArgs a;
      a.q = q.data();
      a.k = kv.data() + D;
      a.v = v.data() + D;
      a.n_kv = n_kv;
      a.stride = stride;
      a.head_dim = D;
      a.n_heads = G;
      a.head_stride = D;
      a.scale = 0.125f;
      a.scores = sc.data();
      a.o = got.data();
      ks->attend(a);
      CHECK(rel_err(got.data(), want.data(), want.size()) < 1e-5);
      // Each head alone gives the same bits as in the group.
      for (int64_t h = 0; h < G; ++h) {
        std::vector<float> one(static_cast<size_t>(D));
        cpu::AttnArgs b = a;
        b.q = q.data() + h * D;
        b.n_heads = 1;
        b.o = one.data();
        ks->attend(b);
        CHECK(std::memcmp(one.data(), got.data() + h * D, size_t(D) * 4) == 0);
      }
    }
  }
}

namespace {

// Random delta-rule inputs: L2-normalized q/k (q scaled), sigmoid betas and
// non-positive log-decays, like the layer produces.
struct DeltaInputs {
  int64_t n, dk, dv, stride;
  std::vector<float> x, beta, g;
  DeltaInputs(int64_t n_, int64_t dk_, int64_t dv_, uint32_t seed) : n(n_), dk(dk_), dv(dv_), stride(2 * dk_ + dv_) {
    x = randn(size_t(n * stride), seed);
    for (int64_t t = 0; t < n; ++t) {
      l2norm(&x[size_t(t * stride)], dk, 1e-6f);
      for (int64_t i = 0; i < dk; ++i) x[size_t(t * stride + i)] /= std::sqrt(float(dk));
      l2norm(&x[size_t(t * stride + dk)], dk, 1e-6f);
    }
    std::vector<float> r = randn(size_t(2 * n), seed + 1);
    for (int64_t t = 0; t < n; ++t) {
      beta.push_back(sigmoidf(r[size_t(t)]));
      // Mostly mild decays, and now and then a gate that wipes the state
      // (large cumulative log-decays inside a chunk).
      g.push_back(t % 37 == 11 ? -3e30f : -0.5f * softplusf(r[size_t(n + t)]));
    }
  }
  cpu::DeltaArgs args(float* M, float* o, float* work) const {
    cpu::DeltaArgs a;
    a.M = M;
    a.q = x.data();
    a.k = x.data() + dk;
    a.v = x.data() + 2 * dk;
    a.x_stride = stride;
    a.beta = beta.data();
    a.g = g.data();
    a.g_stride = 1;
    a.o = o;
    a.o_stride = dv;
    a.n = n;
    a.dk = dk;
    a.dv = dv;
    a.work = work;
    return a;
  }
};

}  // namespace

TEST_CASE("delta rule: sequential kernel matches the reference step, chunked matches sequential") {
  for (const cpu::KernelSet* ks : kernel_sets()) {
    CAPTURE(ks->name);
    for (auto [n, dk, dv] : {std::tuple<int64_t, int64_t, int64_t>{5, 16, 24}, {300, 64, 48}, {130, 40, 72}}) {
      CAPTURE(n);
      CAPTURE(dk);
      const DeltaInputs in(n, dk, dv, uint32_t(n + dk));
      std::vector<float> M0 = randn(size_t(dk * dv), 3, 0.1f);
      // Reference: the scalar step, row by row.
      std::vector<float> Mr = M0, orf(static_cast<size_t>(n * dv));
      for (int64_t t = 0; t < n; ++t)
        delta_rule_step(Mr.data(), &in.x[size_t(t * in.stride)], &in.x[size_t(t * in.stride + dk)],
                        &in.x[size_t(t * in.stride + 2 * dk)], in.beta[size_t(t)], in.g[size_t(t)], dk, dv,
                        &orf[size_t(t * dv)]);
      std::vector<float> Ms = M0, os(static_cast<size_t>(n * dv)), snap(static_cast<size_t>(dk * dv));
      cpu::DeltaArgs a = in.args(Ms.data(), os.data(), nullptr);
      a.snap = snap.data();
      a.snap_row = n / 2;
      ks->delta_rule(a);
      CHECK(rel_err(os.data(), orf.data(), os.size()) < 1e-5);
      CHECK(rel_err(Ms.data(), Mr.data(), Ms.size()) < 1e-5);
      // The snapshot equals the state of a run that stops after row n/2.
      std::vector<float> Mh = M0, oh(static_cast<size_t>(n * dv));
      cpu::DeltaArgs h = in.args(Mh.data(), oh.data(), nullptr);
      h.n = n / 2 + 1;
      ks->delta_rule(h);
      CHECK(std::memcmp(Mh.data(), snap.data(), snap.size() * 4) == 0);

      std::vector<float> Mc = M0, oc(static_cast<size_t>(n * dv)), work(cpu::delta_chunk_work_floats(dk, dv));
      ks->delta_rule_chunked(in.args(Mc.data(), oc.data(), work.data()));
      CHECK(rel_err(oc.data(), os.data(), os.size()) < 1e-5);
      CHECK(rel_err(Mc.data(), Ms.data(), Ms.size()) < 1e-5);
    }
  }
}

TEST_CASE("thread pool: every chunk runs once, run() reaches every thread, parallel_for splits per thread") {
  for (int threads : {1, 2, 3, 5}) {
    CAPTURE(threads);
    ThreadPool tp(threads);
    for (int rep = 0; rep < 200; ++rep) {
      const int64_t n = 1 + rep * 7 % 131, grain = 1 + rep % 5;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<bool> bad_index{false};
      tp.parallel_chunks(n, grain, [&](int64_t b, int64_t e, int ith) {
        if (ith < 0 || ith >= threads || e - b > grain) bad_index = true;
        for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
      });
      for (auto& h : hits) CHECK(h.load() == 1);
      CHECK(!bad_index);
    }
    std::vector<std::atomic<int>> seen(static_cast<size_t>(threads));
    tp.run([&](int ith, int nth) {
      CHECK(nth == threads);
      seen[size_t(ith)]++;
    });
    for (auto& s : seen) CHECK(s.load() == 1);
    // parallel_for: one contiguous, grain-aligned range per thread at most.
    for (int64_t n : {1, 10, 64, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<int> calls{0};
      std::atomic<bool> misaligned{false};
      tp.parallel_for(n, 8, [&](int64_t b, int64_t e) {
        calls++;
        if (b % 8 != 0 || b >= e) misaligned = true;
        for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
      });
      for (auto& h : hits) CHECK(h.load() == 1);
      CHECK(calls.load() <= threads);
      CHECK(!misaligned);
    }
  }
}

TEST_CASE("decode steps on the fast path do not allocate") {
  qwen35_model_params mp = qwen35_model_default_params();
  mp.device = QWEN35_DEVICE_CPU;
  qwen35_model* m = nullptr;
  REQUIRE(qwen35_model_load(test::fixture("models/tiny-a-nvfp4.gguf").c_str(), &mp, &m) == QWEN35_OK);
  for (int threads : {1, 2}) {
    qwen35_context_params cp = qwen35_context_default_params();
    cp.n_ctx = 128;
    cp.n_threads = threads;
    qwen35_context* c = nullptr;
    REQUIRE(qwen35_context_create(m, &cp, &c) == QWEN35_OK);
    const int32_t prompt[5] = {11, 22, 33, 44, 55};
    REQUIRE(qwen35_context_decode(c, prompt, 5, QWEN35_LOGITS_LAST) == QWEN35_OK);
    int32_t tok = 7;
    REQUIRE(qwen35_context_decode(c, &tok, 1, QWEN35_LOGITS_LAST) == QWEN35_OK);  // sizes the outputs
    g_allocs = 0;
    g_count_allocs = true;
    bool ok = true;
    for (int i = 0; i < 16; ++i) {
      tok = (tok * 37 + 11) % 4000;
      ok = ok && qwen35_context_decode(c, &tok, 1, QWEN35_LOGITS_LAST) == QWEN35_OK;
    }
    g_count_allocs = false;
    CHECK(ok);
    CHECK(g_allocs.load() == 0);
    qwen35_context_free(c);
  }
  qwen35_model_free(m);
}

TEST_CASE("fast path: a verify batch rolled back to its snapshot equals decoding its first row alone") {
  // Exercises the snapshot of the fast conv window and delta-rule state
  // (EvalBatch::snapshot_row), which speculative decoding relies on.
  std::unique_ptr<Model> model;
  REQUIRE(LoadModel(test::fixture("models/tiny-a-nvfp4.gguf"), LoadOptions{}, Logger{}, &model).ok());
  ContextOptions opt;
  opt.n_ctx = 64;
  opt.n_threads = 2;
  opt.use_mtp = false;
  std::unique_ptr<Context> a, b;
  REQUIRE(Context::Create(*model, opt, &a).ok());
  REQUIRE(Context::Create(*model, opt, &b).ok());
  const int32_t prompt[6] = {101, 7, 2048, 33, 500, 9};
  REQUIRE(a->decode(prompt, 6, LogitsMode::Last).ok());
  REQUIRE(b->decode(prompt, 6, LogitsMode::Last).ok());
  const int32_t verify[3] = {77, 1234, 4000};
  REQUIRE(a->decode_with_snapshot(verify, 3, LogitsMode::All).ok());
  REQUIRE(a->rollback_to_snapshot().ok());
  CHECK(a->n_past() == 7);
  REQUIRE(b->decode(verify, 1, LogitsMode::Last).ok());
  const int32_t next = 321;
  REQUIRE(a->decode(&next, 1, LogitsMode::Last).ok());
  REQUIRE(b->decode(&next, 1, LogitsMode::Last).ok());
  const int V = model->hp.n_vocab;
  CHECK(std::memcmp(a->logits(-1), b->logits(-1), size_t(V) * sizeof(float)) == 0);
}
