// qwen35-stream-probe: can one persistent grid stream a whole decode step's
// weights at the memory's speed while each projection still waits for the
// one before it? (The question behind a persistent decode kernel; see
// docs/cuda.md, "Not done yet".) No library code, no arithmetic that means
// anything: a probe in the manner of qwen35-bw-probe.
//
// The step: the 4B's NVFP4 projections in decode order (per delta-net
// layer: input projection, output projection, FFN gate+up, FFN down; per
// attention layer, every fourth: q/gate/k/v instead of the input
// projection), 128 weights of 2.0 GB in separate places (L2 holds none),
// plus (--mixer) a stage without weights after each input projection (the
// delta rule or attention, a dependency only).
//
// Persistent: one block per multiprocessor (a cooperative launch, so all
// are resident), warp 0 a producer, the others consumers. The producer
// streams the block's share of every stage's weights, stage after stage,
// into a ring of shared-memory slots with bulk copies, waiting only for
// free slots, never for the stages' dependencies: weights do not depend on
// activations, so it runs ahead by as much as the ring holds. The consumers
// of stage s first wait until every block has finished stage s-1 (a global
// counter, acquire loads), read a value each that other blocks wrote in
// stage s-1 (an activation's L2 round trip), then read their slots (and do
// --work dependent FMAs per 16 bytes per lane, standing in for the
// arithmetic), free them, and count the stage done (release).
//
// Controls: no dependencies at all (the streaming rate), and the producer
// waiting for the stage before as well (no running ahead, as separate
// launches behave).
//
// Printed per variant: microseconds per step (median of 5 launches after a
// warm-up) and the weight bytes per second, against the device's copy
// bandwidth; and the same stages as separate dependent launches of a bulk
// reader (bulk_reader.cuh: graph + PDL, one per projection, as the decode
// step launches kernels today): the difference is what persistence can save.
//
//   qwen35-stream-probe [--quick]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bulk_reader.cuh"
#include "copy_bandwidth.h"

#define CHECK_CUDA(x)                                                                              \
  do {                                                                                             \
    cudaError_t e_ = (x);                                                                          \
    if (e_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "qwen35-stream-probe: %s: %s\n", #x, cudaGetErrorString(e_));           \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

namespace {

using namespace qwen35::probe;

constexpr int kSlot = 8192;       // bytes per ring slot (one bulk copy)
constexpr int kMaxStages = 192;
constexpr uint64_t kMaxWaitNs = 1ull << 30;  // a wait gives up after ~1 s (sets the fault flag)

struct Step {
  int stages = 0;
  uint64_t off[kMaxStages];    // byte offset of each stage's weights (16-byte aligned)
  uint64_t bytes[kMaxStages];  // 0: a dependency-only stage
};

struct Params {
  const uint8_t* w = nullptr;  // all stages' weights
  unsigned* counter = nullptr; // stages finished, summed over blocks (zeroed before each launch)
  float* act = nullptr;        // [blocks] one "activation" per block, written each stage
  unsigned* fault = nullptr;   // a wait gave up
  unsigned* sink = nullptr;
  int ring = 8;                // slots
  int work = 0;                // dependent FMAs per 16 bytes per consumer lane
  int deps = 1;                // 0: consumers do not wait for the stage before (pure streaming)
  int producer_waits = 0;      // 1: the producer too waits for the stage before (no running ahead: a control)
};

__device__ __forceinline__ uint64_t umin(uint64_t a, uint64_t b) { return a < b ? a : b; }

__device__ __forceinline__ uint64_t now_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Until the phase of `parity` has completed; after ~1 s it gives up and
// raises *fault (a bug here must not hang the device session).
__device__ __forceinline__ void wait_bar(uint32_t bar, uint32_t parity, unsigned* fault) {
  if (try_wait(bar, parity)) return;
  const uint64_t t0 = now_ns();
  while (!try_wait(bar, parity)) {
    if (now_ns() - t0 > kMaxWaitNs) {
      atomicExch(fault, 1u);
      return;
    }
  }
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Until every block has finished stages 0 .. s-1 (bounded, as wait_bar).
__device__ __forceinline__ void wait_stages(const Params& p, int s) {
  const unsigned want = unsigned(s) * gridDim.x;
  const uint64_t t0 = now_ns();
  while (ld_acquire(p.counter) < want) {
    if (now_ns() - t0 > kMaxWaitNs) {
      atomicExch(p.fault, 1u);
      return;
    }
  }
}

// The block's share of stage s: [lo, hi) within the stage's bytes.
__device__ __forceinline__ void share(const Step& st, int s, uint64_t* lo, uint64_t* hi) {
  const uint64_t per = ((st.bytes[s] + gridDim.x - 1) / gridDim.x + 15) / 16 * 16;
  *lo = umin(st.bytes[s], per * blockIdx.x);
  *hi = umin(st.bytes[s], *lo + per);
}

__global__ void stream_kernel(const __grid_constant__ Step st, Params p) {
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* ring = smem;                                                          // [ring][kSlot]
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + size_t(p.ring) * kSlot);  // [ring]
  uint64_t* empty = full + p.ring;                                               // [ring]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int consumers = blockDim.x / 32 - 1;
  if (threadIdx.x == 0) {
    for (int i = 0; i < p.ring; ++i) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(saddr(full + i)) : "memory");
      asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(saddr(empty + i)), "r"(consumers) : "memory");
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (warp == 0) {
    // The producer: every stage's share, slot after slot.
    if (lane == 0) {
      uint32_t k = 0;  // slots issued so far
      for (int s = 0; s < st.stages; ++s) {
        if (p.producer_waits && s > 0) wait_stages(p, s);
        uint64_t lo, hi;
        share(st, s, &lo, &hi);
        for (uint64_t b = lo; b < hi; b += kSlot, ++k) {
          const uint32_t slot = k % p.ring, use = k / p.ring;
          if (use > 0) wait_bar(saddr(empty + slot), (use - 1) & 1u, p.fault);
          const uint32_t n = uint32_t(umin(kSlot, hi - b));
          asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(saddr(full + slot)), "r"(n)
                       : "memory");
          asm volatile(
              "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                  saddr(ring + size_t(slot) * kSlot)),
              "l"(p.w + st.off[s] + b), "r"(n), "r"(saddr(full + slot))
              : "memory");
        }
      }
    }
    return;
  }

  // The consumers.
  const int ct = threadIdx.x - 32, nct = consumers * 32;
  float acc0 = 0.0f, acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f;
  uint32_t k = 0;
  for (int s = 0; s < st.stages; ++s) {
    if (p.deps && s > 0) {
      if (ct == 0) wait_stages(p, s);
      asm volatile("bar.sync 1, %0;" ::"r"(nct) : "memory");
      // An activation from another block, written in the stage before.
      acc0 += *reinterpret_cast<volatile float*>(p.act + (blockIdx.x + 1 + ct) % gridDim.x);
    }
    uint64_t lo, hi;
    share(st, s, &lo, &hi);
    for (uint64_t b = lo; b < hi; b += kSlot, ++k) {
      const uint32_t slot = k % p.ring, use = k / p.ring;
      wait_bar(saddr(full + slot), use & 1u, p.fault);
      const int n16 = int(umin(kSlot, hi - b) / 16);
      const uint4* q = reinterpret_cast<const uint4*>(ring + size_t(slot) * kSlot);
      for (int i = ct; i < n16; i += nct) {
        const uint4 v = q[i];
        float a = __uint_as_float((v.x & 0x007FFFFFu) | 0x3F800000u);
        for (int r = 0; r < p.work; r += 4) {
          acc0 = fmaf(acc0, a, 1.0f);
          acc1 = fmaf(acc1, a, 0.5f);
          acc2 = fmaf(acc2, a, 0.25f);
          acc3 = fmaf(acc3, a, 0.125f);
        }
        acc1 += __uint_as_float((v.y ^ v.z ^ v.w) & 0x007FFFFFu);
      }
      __syncwarp();
      if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(saddr(empty + slot)) : "memory");
    }
    // Stage done in this block: publish (after every consumer's reads).
    asm volatile("bar.sync 1, %0;" ::"r"(nct) : "memory");
    if (ct == 0) {
      p.act[blockIdx.x] = float(s);
      asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(p.counter), "r"(1u) : "memory");
    }
  }
  if (acc0 + acc1 + acc2 + acc3 == 1.2345f) atomicAdd(p.sink, 1u);
}

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: qwen35-stream-probe [--quick]\n");
      return 2;
    }
  }
  int dev = 0, sms = 0, coop = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  if (!coop) {
    std::printf("stream| %s: no cooperative launch, nothing to measure\n", prop.name);
    return 0;
  }

  // The step's stages (NVFP4 bytes with scales: rows x cols x 9/16).
  auto nvfp4 = [](uint64_t rows, uint64_t cols) { return rows * cols * 9 / 16; };
  std::vector<uint64_t> weights;  // per projection, in decode order
  std::vector<int> after_input;   // indexes of the input projections
  for (int layer = 0; layer < 32; ++layer) {
    after_input.push_back(int(weights.size()));
    weights.push_back(layer % 4 == 3 ? nvfp4(10240, 2560) : nvfp4(12352, 2560));  // q/gate/k/v or delta-net in
    weights.push_back(nvfp4(2560, 4096));                                         // output projection
    weights.push_back(nvfp4(18432, 2560));                                        // FFN gate+up
    weights.push_back(nvfp4(2560, 9216));                                         // FFN down
  }
  uint64_t total = 0;
  std::vector<uint64_t> offs;
  for (uint64_t b : weights) {
    offs.push_back(total);
    total += (b + 255) / 256 * 256;
  }
  uint8_t* w = nullptr;
  CHECK_CUDA(cudaMalloc(&w, total));
  CHECK_CUDA(cudaMemset(w, 0x3C, total));
  unsigned *counter = nullptr, *fault = nullptr, *sink = nullptr;
  float* act = nullptr;
  CHECK_CUDA(cudaMalloc(&counter, 4));
  CHECK_CUDA(cudaMalloc(&fault, 4));
  CHECK_CUDA(cudaMalloc(&sink, 4));
  CHECK_CUDA(cudaMalloc(&act, size_t(sms) * 4));
  CHECK_CUDA(cudaMemset(fault, 0, 4));
  CHECK_CUDA(cudaMemset(act, 0, size_t(sms) * 4));
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  // The copy bandwidth (read + write), as qwen35-bench's roofline.
  const double copy_gbs = qwen35::test::copy_bandwidth(size_t(1) << 30, s) / 1e9;
  std::printf("stream| %s, %d multiprocessors, copy %.0f GB/s; a step: %zu projections, %.3f GB\n", prop.name, sms,
              copy_gbs, weights.size(), double(total) / 1e9);
  std::printf("stream| variant | us per step | GB/s | of the copy | us per dependent stage\n");
  auto report = [&](const char* what, double us, int stages) {
    const double gbs = double(total) / (us * 1e3);
    std::printf("stream| %-62s | %9.1f | %6.0f | %5.1f%% | %5.2f\n", what, us, gbs, 100.0 * gbs / copy_gbs,
                us / stages);
  };

  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  // Persistent variants.
  struct Variant {
    int ring, consumers, work, deps, mixer, producer_waits = 0;
  };
  std::vector<Variant> variants;
  for (int ring : {4, 8, 16, 24}) variants.push_back({ring, 3, 0, 1, 1});
  variants.push_back({16, 3, 0, 0, 1});   // no dependencies: the streaming rate alone
  variants.push_back({16, 3, 0, 1, 0});   // no mixer stages
  variants.push_back({16, 3, 0, 1, 1, 1});  // the producer waits too: no running ahead (as launches are now)
  if (!quick) {
    for (int work : {32, 96}) variants.push_back({16, 3, work, 1, 1});
    for (int work : {32, 96}) variants.push_back({16, 7, work, 1, 1});
    // Kernel 3's arithmetic is ~115 warp instructions per 512 bytes of
    // weights (docs/cuda.md, "The arithmetic's share of a step"), about
    // work 96 here; it runs on 16 warps per multiprocessor, so also 15
    // consumer warps (and a deeper ring for them).
    for (int ring : {16, 24}) variants.push_back({ring, 15, 96, 1, 1});
  }
  for (const Variant& v : variants) {
    Step st{};
    for (size_t i = 0; i < weights.size(); ++i) {
      st.off[st.stages] = offs[i];
      st.bytes[st.stages++] = weights[i] & ~uint64_t(15);  // (bulk copies move multiples of 16 bytes)
      if (v.mixer && std::find(after_input.begin(), after_input.end(), int(i)) != after_input.end()) {
        st.off[st.stages] = 0;
        st.bytes[st.stages++] = 0;
      }
    }
    Params p;
    p.w = w;
    p.counter = counter;
    p.act = act;
    p.fault = fault;
    p.sink = sink;
    p.ring = v.ring;
    p.work = v.work;
    p.deps = v.deps;
    p.producer_waits = v.producer_waits;
    const size_t smem = size_t(v.ring) * kSlot + 2 * size_t(v.ring) * 8;
    CHECK_CUDA(cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    int per_sm = 0;
    CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, stream_kernel, 32 * (v.consumers + 1), smem));
    if (per_sm < 1) {
      std::printf("stream| ring %d x %d KB does not fit\n", v.ring, kSlot / 1024);
      continue;
    }
    std::vector<float> ms;
    for (int r = 0; r < 6; ++r) {
      CHECK_CUDA(cudaMemsetAsync(counter, 0, 4, s));
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(unsigned(sms));
      cfg.blockDim = dim3(unsigned(32 * (v.consumers + 1)));
      cfg.dynamicSmemBytes = smem;
      cfg.stream = s;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeCooperative;
      attr[0].val.cooperative = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      CHECK_CUDA(cudaEventRecord(e0, s));
      CHECK_CUDA(cudaLaunchKernelEx(&cfg, stream_kernel, st, p));
      CHECK_CUDA(cudaEventRecord(e1, s));
      CHECK_CUDA(cudaEventSynchronize(e1));
      float t = 0;
      CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
      if (r > 0) ms.push_back(t);
    }
    unsigned f = 0;
    CHECK_CUDA(cudaMemcpy(&f, fault, 4, cudaMemcpyDeviceToHost));
    char what[128];
    std::snprintf(what, sizeof what, "persistent, ring %2d x 8 KB, %d consumer warps%s%s%s%s", v.ring,
                  v.consumers, v.work ? (v.work == 32 ? ", work 32" : ", work 96") : "", v.deps ? "" : ", NO deps",
                  v.mixer ? "" : ", no mixer", v.producer_waits ? ", producer waits" : "");
    report(what, median(ms) * 1e3, st.stages);
    if (f) {
      std::printf("stream| (a wait gave up: the numbers above are not valid)\n");
      CHECK_CUDA(cudaMemset(fault, 0, 4));
    }
  }

  // The same projections as separate dependent launches (graph + PDL).
  {
    cudaGraph_t g;
    CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (size_t i = 0; i < weights.size(); ++i) {
      const uint8_t* src = w + offs[i];
      CHECK_CUDA(launch_pdl(read_bulk, 5 * sms, kWarps * 32, s, src, size_t(weights[i] / kStage), sink));
    }
    CHECK_CUDA(cudaStreamEndCapture(s, &g));
    cudaGraphExec_t ge;
    CHECK_CUDA(cudaGraphInstantiate(&ge, g, 0));
    std::vector<float> ms;
    for (int r = 0; r < 6; ++r) {
      CHECK_CUDA(cudaEventRecord(e0, s));
      CHECK_CUDA(cudaGraphLaunch(ge, s));
      CHECK_CUDA(cudaEventRecord(e1, s));
      CHECK_CUDA(cudaEventSynchronize(e1));
      float t = 0;
      CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
      if (r > 0) ms.push_back(t);
    }
    report("separate launches (bulk reader, graph + PDL)", median(ms) * 1e3, int(weights.size()));
    unsigned f = 0;
    CHECK_CUDA(cudaMemcpy(&f, fault, 4, cudaMemcpyDeviceToHost));
    if (f) std::printf("stream| (a wait gave up: the numbers above are not valid)\n");
    CHECK_CUDA(cudaGraphExecDestroy(ge));
    CHECK_CUDA(cudaGraphDestroy(g));
  }
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaFree(w));
  return 0;
}
