// qwen35-matvec-bench: how close each decode matrix-vector kernel comes to
// the device's memory bandwidth, one weight type at a time (the issue asks
// for most of HBM bandwidth for every type in a file: NVFP4, Q6_K, Q8_0,
// Q4_K, F16, ...), for tests/gpu/run.sh.
//
//   qwen35-matvec-bench [--n N] [--types F16,Q8_0,...] [--smoke] [--shape ROWSxCOLS]...
//                       [--sms N] [--check-only] [--fp4-sweep]
//
// For each shape of the 4B's decode step (FFN gate+up, FFN down, the
// delta net's output and input projections, attention's q/gate, k, v
// projection) and each type, the weight is written `copies` times (together past 512 MB, so L2 holds none of them: rows
// repeat a quantized block of 64 random rows) and a CUDA graph of 32
// launches walks the copies, each launch depending on the one before it
// (programmatic dependent launch, as in a decode step). Printed per
// (kernel, type, shape): microseconds per launch (median of 5 replays), the
// weight bytes read per microsecond, that as a fraction of the device's
// copy bandwidth (bytes read plus written by a 1 GiB device-to-device copy,
// as qwen35-bench's roofline), and the largest difference of the outputs
// from a double-precision CPU product of the same rows (relative to the
// largest output), which must stay under the kernel's bar.
//
// Kernels: `generic` (matmul.cu, every type in its GGUF layout), `fp4`
// (NVFP4 in the tiled layout, the decode default), `q6k` (Q6_K tiled, the
// LM head's kernel), `tiles` (Q8_0, Q4_K, Q6_K and F16 tiled, warps sharing
// a tile by slices, ktiles.h). --smoke: small shapes and few launches,
// for the CPU emulation (CI). --shape (repeatable) replaces the shapes,
// --sms plans the kernels' grids for that many multiprocessors (the
// emulation has 2: --sms 132 checks an H100's split-K geometry on the
// CPU), --check-only checks without timing. A case over its bar prints
// its first and last checked outputs against the reference. --fp4-sweep
// adds kernel 3 (NVFP4) in 24 geometries (blocks per multiprocessor 2-8,
// ring stages 2 or 4, cluster or global split-K combine) as `fp4sweep|`
// lines, for choosing them per shape. For one or two rows, `fp4` also runs
// with the FP8 arithmetic as kernel `fp4fp8` (QWEN35_CUDA_FP4_FP8).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "copy_bandwidth.h"
#include "ggml_types.h"
#include "ktiles.h"
#include "matmul.h"
#include "matvec_fp4.h"
#include "matvec_q6k.h"
#include "quants.h"
#include "tuning.h"

using namespace qwen35;
using namespace qwen35::cuda;

namespace {

bool ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "qwen35-matvec-bench: %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

// A device buffer freed on scope exit.
struct Buf {
  void* p = nullptr;
  explicit Buf(size_t n) {
    if (!ok(cudaMalloc(&p, std::max<size_t>(n, 16)), "cudaMalloc"))
      p = nullptr;
    else
      cudaMemset(p, 0, std::max<size_t>(n, 16));
  }
  ~Buf() {
    if (p) cudaFree(p);
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

struct Shape {
  const char* name;
  int64_t rows, cols;
};

constexpr int kBaseRows = 64;  // distinct quantized rows; the matrix repeats them

// One benchmark case: `copies` weights of one shape and type in some
// layout, and a launch of the kernel on copy i.
struct Case {
  std::string kernel;
  std::string variant;  // --fp4-sweep: the tuning (printed on its own line kind)
  uint32_t type = 0;
  Shape shape{};
  int copies = 1;
  uint64_t bytes = 0;  // weight bytes read per launch
  std::function<cudaError_t(int, cudaStream_t)> launch;
  double bar = 0.0;  // largest allowed relative difference
};

// Median microseconds per launch of a graph of `launches` launches.
bool time_case(const Case& c, int launches, int reps, cudaStream_t s, double* us) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (!ok(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "capture")) return false;
  cudaError_t le = cudaSuccess;
  for (int i = 0; i < launches && le == cudaSuccess; ++i) le = c.launch(i % c.copies, s);
  const cudaError_t ce = cudaStreamEndCapture(s, &graph);
  if (!ok(le, "launch (captured)") || !ok(ce, "end capture")) {
    if (graph) cudaGraphDestroy(graph);
    return false;
  }
  bool good = ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  cudaGraphDestroy(graph);
  if (!good) return false;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ms;
  good = ok(cudaGraphLaunch(exec, s), "graph launch") && ok(cudaStreamSynchronize(s), "warm-up");
  for (int r = 0; good && r < reps; ++r) {
    cudaEventRecord(e0, s);
    good = ok(cudaGraphLaunch(exec, s), "graph launch");
    cudaEventRecord(e1, s);
    good = good && ok(cudaEventSynchronize(e1), "replay");
    float m = 0.0f;
    cudaEventElapsedTime(&m, e0, e1);
    ms.push_back(m);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(exec);
  if (!good) return false;
  std::sort(ms.begin(), ms.end());
  *us = double(ms[ms.size() / 2]) * 1e3 / launches;
  return true;
}

// The largest |y - ref| over the checked rows (0..15 and the last),
// relative to the largest |ref|, of activation row 0 .. n-1 (infinite
// where an output is not finite).
double check(const std::vector<float>& y, int64_t rows, int n, const std::vector<std::vector<float>>& ref) {
  double err = 0.0, mag = 0.0;
  for (int j = 0; j < n; ++j)
    for (int64_t r = 0; r < rows; ++r) {
      if (r >= 16 && r != rows - 1) continue;
      const double want = ref[size_t(j)][size_t(r % kBaseRows)], got = y[size_t(j * rows + r)];
      if (!std::isfinite(got)) return HUGE_VAL;  // (NaN would slip through std::max)
      err = std::max(err, std::fabs(got - want));
      mag = std::max(mag, std::fabs(want));
    }
  return mag > 0.0 ? err / mag : err;
}

const char* type_name(uint32_t t) {
  const TypeInfo* ti = type_info(t);
  return ti ? ti->name : "?";
}

}  // namespace

int main(int argc, char** argv) {
  int n = 1;
  bool smoke = false, check_only = false, sweep = false;
  int sms_override = 0;
  std::vector<Shape> shape_args;
  std::vector<std::string> shape_names;  // (the Shape's name points into it)
  shape_names.reserve(64);
  std::vector<uint32_t> types = {GGML_F16, GGML_BF16, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K, GGML_NVFP4, GGML_F32};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--n" && i + 1 < argc) {
      n = std::atoi(argv[++i]);
    } else if (a == "--smoke") {
      smoke = true;
    } else if (a == "--fp4-sweep") {
      sweep = true;
    } else if (a == "--check-only") {
      check_only = true;
    } else if (a == "--sms" && i + 1 < argc) {
      sms_override = std::atoi(argv[++i]);
    } else if (a == "--shape" && i + 1 < argc && shape_names.size() < 64) {
      long long r = 0, c = 0;
      if (std::sscanf(argv[++i], "%lldx%lld", &r, &c) != 2 || r < 1 || c < 1) {
        std::fprintf(stderr, "qwen35-matvec-bench: --shape wants ROWSxCOLS, not %s\n", argv[i]);
        return 2;
      }
      shape_names.push_back(argv[i]);
      shape_args.push_back({shape_names.back().c_str(), r, c});
    } else if (a == "--types" && i + 1 < argc) {
      types.clear();
      std::string list = argv[++i];
      for (size_t p = 0; p <= list.size();) {
        const size_t q = std::min(list.find(',', p), list.size());
        const std::string name = list.substr(p, q - p);
        bool found = false;
        for (uint32_t t = 0; t < GGML_TYPE_COUNT && !found; ++t)
          if (const TypeInfo* ti = type_info(t); ti && name == ti->name) types.push_back(t), found = true;
        if (!found) {
          std::fprintf(stderr, "qwen35-matvec-bench: unknown type %s\n", name.c_str());
          return 2;
        }
        p = q + 1;
      }
    } else {
      std::fprintf(stderr,
                   "usage: qwen35-matvec-bench [--n 1..8] [--types F16,Q8_0,...] [--smoke] [--shape ROWSxCOLS]... "
                   "[--sms N] [--check-only] [--fp4-sweep]\n");
      return 2;
    }
  }
  if (n < 1 || n > kMatvecMaxCols) {
    std::fprintf(stderr, "qwen35-matvec-bench: --n must be 1..%d\n", kMatvecMaxCols);
    return 2;
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) {
    std::printf("qwen35-matvec-bench: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  int sms = 1;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  if (sms_override > 0) sms = sms_override;
  cudaStream_t s;
  if (!ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream")) return 1;

  const std::vector<Shape> shapes =
      !shape_args.empty() ? shape_args
      : smoke             ? std::vector<Shape>{{"small", 96, 512}, {"wide", 32, 1024}}
            : std::vector<Shape>{{"ffn gate+up", 18432, 2560}, {"ffn down", 2560, 9216}, {"delta-net out", 2560, 4096},
                                  {"delta-net in", 12352, 2560}, {"attn q+g,k,v", 10240, 2560}};
  const uint64_t min_total = smoke ? (1u << 16) : (512ull << 20);
  const int launches = smoke ? 4 : 32, reps = smoke ? 1 : 5;
  const double bw = qwen35::test::copy_bandwidth(smoke ? (1u << 20) : (1ull << 30), s);
  std::printf("matvec| device %s, %d multiprocessors, copy %.0f GB/s (read + write), %d activation row%s\n", prop.name,
              sms, bw / 1e9, n, n > 1 ? "s" : "");
  std::printf("matvec| kernel | type | shape | rows x cols | us per launch | GB/s | of the copy | rel. diff\n");

  // Activations: [n, cols] with ldx = cols (the largest shape's).
  int64_t max_cols = 0, max_rows = 0;
  for (const Shape& sh : shapes) max_cols = std::max(max_cols, sh.cols), max_rows = std::max(max_rows, sh.rows);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> xh(size_t(n * max_cols));
  for (float& v : xh) v = nd(rng);
  Buf x(xh.size() * 4), y(size_t(n * max_rows) * 4);
  cudaMemcpy(x.p, xh.data(), xh.size() * 4, cudaMemcpyHostToDevice);

  // --fp4-sweep's variants of kernel 3 (each against the default in the
  // same process).
  const DecodeTuning base_tuning = decode_tuning();
  std::vector<DecodeTuning> fp4_sweep;
  if (sweep)
    for (int cluster : {1, 0})
      for (int stages : {2, 4})
        for (int bps : {2, 3, 4, 5, 6, 8}) {
          DecodeTuning v = base_tuning;
          v.fp4_kernel = 3;
          v.fp4_cluster = cluster;
          v.fp4_stages = stages;
          v.fp4_blocks_per_sm = bps;
          fp4_sweep.push_back(v);
        }

  int failures = 0;
  for (const Shape& sh : shapes) {
    for (uint32_t type : types) {
      const TypeInfo* ti = type_info(type);
      if (!ti || sh.cols % ti->block != 0) continue;
      const uint64_t rb = row_bytes(*ti, sh.cols), wbytes = uint64_t(sh.rows) * rb;
      const int copies = int(std::clamp<uint64_t>((min_total + wbytes - 1) / wbytes, 2, 16));
      // The GGUF bytes: kBaseRows random rows, repeated.
      std::vector<float> src(size_t(kBaseRows * sh.cols));
      for (float& v : src) v = nd(rng) * 0.05f;
      std::vector<uint8_t> base(size_t(kBaseRows) * rb);
      for (int r = 0; r < kBaseRows; ++r)
        quantize_row(type, src.data() + size_t(r) * sh.cols, base.data() + size_t(r) * rb, sh.cols);
      // The reference: the dequantized rows times x, in double.
      std::vector<std::vector<float>> ref(static_cast<size_t>(n), std::vector<float>(kBaseRows));
      std::vector<float> row(static_cast<size_t>(sh.cols));
      for (int r = 0; r < kBaseRows; ++r) {
        dequantize_row(type, base.data() + size_t(r) * rb, row.data(), sh.cols);
        for (int j = 0; j < n; ++j) {
          double acc = 0.0;
          for (int64_t k = 0; k < sh.cols; ++k) acc += double(row[size_t(k)]) * xh[size_t(j * sh.cols + k)];
          ref[size_t(j)][size_t(r)] = float(acc);
        }
      }
      Buf gguf(size_t(copies) * wbytes);
      if (!gguf.p) return 1;
      uint8_t* g0 = gguf.as<uint8_t>();
      const uint64_t first = std::min<uint64_t>(base.size(), wbytes);
      cudaMemcpy(g0, base.data(), first, cudaMemcpyHostToDevice);
      for (uint64_t have = first; have < uint64_t(copies) * wbytes;) {
        const uint64_t m = std::min(have, uint64_t(copies) * wbytes - have);
        cudaMemcpy(g0 + have, g0, m, cudaMemcpyDeviceToDevice);
        have += m;
      }
      // A device-to-device cudaMemcpy may return before it is done, and the
      // repacks below run on a non-blocking stream, which does not wait
      // for the legacy stream's copies.
      if (!ok(cudaDeviceSynchronize(), "weight copies")) return 1;
      auto view = [&](int c) {
        MatView v;
        v.type = type;
        v.rows = sh.rows;
        v.cols = sh.cols;
        v.row_bytes = rb;
        v.data = g0 + uint64_t(c) * wbytes;
        return v;
      };
      const float* xp = x.as<float>();
      float* yp = y.as<float>();
      const int64_t ldx = sh.cols, ldy = sh.rows;

      std::vector<Case> cases;
      {
        Case c;
        c.kernel = "generic";
        c.launch = [&, view](int i, cudaStream_t st) {
          return matvec_generic(view(i), xp, ldx, n, yp, ldy, Accum::Store, st);
        };
        c.bar = 1e-4;
        cases.push_back(std::move(c));
      }
      // The repacked layouts (their own buffers, the same byte count).
      std::vector<std::unique_ptr<Buf>> keep;
      if (type == GGML_NVFP4 && sh.cols % kFp4GroupCols == 0) {
        std::vector<Fp4Tiled> t(static_cast<size_t>(copies));
        bool good = true;
        for (int i = 0; i < copies && good; ++i) {
          Fp4Tiled& w = t[size_t(i)];
          w.rows = sh.rows;
          w.cols = sh.cols;
          keep.push_back(std::make_unique<Buf>(w.code_bytes()));
          w.codes = keep.back()->as<uint8_t>();
          keep.push_back(std::make_unique<Buf>(w.scale_bytes()));
          w.scales = keep.back()->as<uint8_t>();
          keep.push_back(std::make_unique<Buf>(w.code_bytes()));  // the FP8 arrangement (the `fp8` case)
          w.codes8 = keep.back()->as<uint8_t>();
          good = ok(fp4_repack(view(i).data, nullptr, rb, w, s), "fp4_repack");
        }
        keep.push_back(std::make_unique<Buf>(fp4_partial_floats(t[0], sms) * 4));
        float* partial = keep.back()->as<float>();
        keep.push_back(std::make_unique<Buf>(fp4_counter_ints(t[0]) * 4));
        int* counters = keep.back()->as<int>();
        // The product on copy i.
        auto args = [=](int i) {
          Fp4MatvecArgs a;
          a.w = t[size_t(i)];
          a.n = n;
          a.x = xp;
          a.ldx = ldx;
          a.y = yp;
          a.ldy = ldy;
          a.partial = partial;
          a.counters = counters;
          return a;
        };
        if (good) {
          Case c;
          c.kernel = "fp4";
          c.launch = [=](int i, cudaStream_t st) { return fp4_matvec(args(i), sms, st); };
          c.bar = 2e-2;
          cases.push_back(std::move(c));
        }
        // The product with tuning v, set around each launch (the launch reads
        // it) and the default put back after.
        auto tuned = [=](const DecodeTuning& v) {
          return [=](int i, cudaStream_t st) {
            set_decode_tuning(v);
            const cudaError_t e = fp4_matvec(args(i), sms, st);
            set_decode_tuning(base_tuning);
            return e;
          };
        };
        // Kernel 3 with the FP8 arithmetic (tuning fp4_fp8: one or two rows;
        // the F16 one for more).
        if (good && n <= 2) {
          Case c;
          c.kernel = "fp4fp8";
          DecodeTuning v = base_tuning;
          v.fp4_kernel = 3;
          v.fp4_fp8 = 1;
          c.launch = tuned(v);
          c.bar = 2e-2;
          cases.push_back(std::move(c));
        }
        // --fp4-sweep: kernel 3's geometry (blocks per multiprocessor,
        // ring stages, cluster or global combine).
        for (const DecodeTuning& v : fp4_sweep) {
          if (!good) break;
          Case c;
          c.kernel = "fp4";
          const Fp4BulkGeometry geo =
              fp4_bulk_geometry(t[0], sms, 1, v.fp4_blocks_per_sm, v.fp4_cluster != 0);
          const int64_t groups = (t[0].tiles() + 3) / 4;  // kernel 3's blocks of 4 warps (a tile each)
          char desc[96];
          std::snprintf(desc, sizeof desc, "bps%d s%d %-7s %3lld x %d blocks", v.fp4_blocks_per_sm, v.fp4_stages,
                        geo.cluster && geo.splits > 1 ? "cluster" : "global", static_cast<long long>(groups),
                        geo.splits);
          c.variant = desc;
          c.launch = tuned(v);
          c.bar = 2e-2;
          cases.push_back(std::move(c));
        }
      }
      if (type == GGML_Q6_K) {
        std::vector<Q6kTiled> t(static_cast<size_t>(copies));
        bool good = true;
        for (int i = 0; i < copies && good; ++i) {
          Q6kTiled& w = t[size_t(i)];
          w.rows = sh.rows;
          w.cols = sh.cols;
          keep.push_back(std::make_unique<Buf>(w.lo_bytes()));
          w.lo = keep.back()->as<uint8_t>();
          keep.push_back(std::make_unique<Buf>(w.hi_bytes()));
          w.hi = keep.back()->as<uint8_t>();
          keep.push_back(std::make_unique<Buf>(w.sc_bytes()));
          w.sc = keep.back()->as<int8_t>();
          keep.push_back(std::make_unique<Buf>(w.d_bytes()));
          w.d = keep.back()->as<uint16_t>();
          good = ok(q6kt_repack(view(i).data, rb, 0, sh.rows, w, s), "q6kt_repack");
        }
        if (good && q6kt_matvec_fits(t[0], n)) {
          Case c;
          c.kernel = "q6k";
          c.launch = [=](int i, cudaStream_t st) {
            return q6kt_matvec(t[size_t(i)], xp, ldx, n, yp, ldy, Accum::Store, st);
          };
          c.bar = 2e-2;
          cases.push_back(std::move(c));
        }
      }
      if (ktiles_supported(type, sh.cols)) {  // Q8_0, Q4_K, Q6_K (sliced), F16
        std::vector<KTiles> t(static_cast<size_t>(copies));
        bool good = true;
        for (int i = 0; i < copies && good; ++i) {
          KTiles& w = t[size_t(i)];
          w = ktiles_plan(type, sh.rows, sh.cols, 1.0f);
          keep.push_back(std::make_unique<Buf>(ktiles_bytes(w)));
          ktiles_place(&w, keep.back()->as<uint8_t>());
          good = ok(ktiles_repack(w, view(i).data, rb, 0, sh.rows, s), "ktiles_repack");
        }
        if (good && ktiles_matvec_fits(t[0], n)) {
          Case c;
          c.kernel = "tiles";
          c.launch = [=](int i, cudaStream_t st) {
            return ktiles_matvec(t[size_t(i)], xp, ldx, n, yp, ldy, Accum::Store, sms, st);
          };
          c.bar = 2e-2;
          cases.push_back(std::move(c));
        }
      }

      for (Case& c : cases) {
        c.type = type;
        c.shape = sh;
        c.copies = copies;
        c.bytes = wbytes;
        // Correctness first: one launch on copy 0.
        double diff = -1.0;
        if (ok(cudaMemsetAsync(yp, 0, size_t(n * ldy) * 4, s), "memset") && ok(c.launch(0, s), "launch") &&
            ok(cudaStreamSynchronize(s), "sync")) {
          std::vector<float> yh(size_t(n * ldy));
          cudaMemcpy(yh.data(), yp, yh.size() * 4, cudaMemcpyDeviceToHost);
          diff = check(yh, sh.rows, n, ref);
        }
        if (diff > c.bar) {
          // What went wrong: the first and last checked outputs of row 0.
          std::vector<float> yh(size_t(n * ldy));
          cudaMemcpy(yh.data(), yp, yh.size() * 4, cudaMemcpyDeviceToHost);
          for (int64_t r : {int64_t(0), int64_t(1), int64_t(2), sh.rows - 1})
            std::printf("matvec|   row %lld: %.6g, want %.6g\n", static_cast<long long>(r), double(yh[size_t(r)]),
                        double(ref[0][size_t(r % kBaseRows)]));
        }
        double us = 0.0;
        const bool timed = diff >= 0.0 && (check_only || time_case(c, launches, reps, s, &us));
        const double gbs = timed && us > 0.0 ? double(c.bytes) / us / 1e3 : 0.0;
        const bool pass = diff >= 0.0 && diff <= c.bar && timed;
        failures += pass ? 0 : 1;
        if (!c.variant.empty()) {
          std::printf("fp4sweep| %-13s | %6lld x %-5lld | %-32s | %8.2f | %7.0f | %5.1f%% | %.2e%s\n", sh.name,
                      static_cast<long long>(sh.rows), static_cast<long long>(sh.cols), c.variant.c_str(), us, gbs,
                      bw > 0.0 ? 100.0 * gbs * 1e9 / bw : 0.0, diff,
                      pass ? "" : (diff > c.bar ? "  OVER THE BAR" : "  FAILED"));
          continue;
        }
        std::printf("matvec| %-7s | %-5s | %-13s | %6lld x %-5lld | %8.2f | %7.0f | %5.1f%% | %.2e%s\n",
                    c.kernel.c_str(), type_name(type), sh.name, static_cast<long long>(sh.rows),
                    static_cast<long long>(sh.cols), us, gbs, bw > 0.0 ? 100.0 * gbs * 1e9 / bw : 0.0, diff,
                    pass ? "" : (diff > c.bar ? "  OVER THE BAR" : "  FAILED"));
      }
    }
  }
  cudaStreamDestroy(s);
  if (failures) std::printf("matvec| %d case(s) failed\n", failures);
  return failures ? 1 : 0;
}
