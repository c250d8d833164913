// qwen35-bw-probe: how fast a chain of dependent kernels can read weights,
// with no arithmetic: the floor the decode matrix-vector kernels are
// measured against (tests/gpu/run.sh prints its table).
//
// For each size (the decode step's matrix sizes of the 4B model and the LM
// head), 32 launches each read a different buffer of that size (so the
// 50 MB L2 holds none of them) and depend on each other like the decode
// kernels do: captured in a CUDA graph, programmatic dependent launch, every
// launch waits for the previous one before finishing. Two readers:
//   ld:   every thread streams 16-byte loads (4 in flight), grid = 4 blocks
//         of 256 threads per multiprocessor
//   bulk: one warp per 2304-byte stage issues cp.async.bulk copies into
//         shared memory (4 stages in flight per warp), as NVFP4 kernel 3
// Printed: microseconds per launch (median of 5 graph replays) and GB/s.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bulk_reader.cuh"

#define CHECK_CUDA(x)                                                                              \
  do {                                                                                             \
    cudaError_t e_ = (x);                                                                          \
    if (e_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "qwen35-bw-probe: %s: %s\n", #x, cudaGetErrorString(e_));               \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

namespace {

using namespace qwen35::probe;

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__global__ void __launch_bounds__(256) read_ld(const uint4* __restrict__ p, size_t n, unsigned* sink) {
  pdl();
  uint4 a = make_uint4(0, 0, 0, 0);
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 v0 = ld_stream(p + i), v1 = ld_stream(p + i + stride), v2 = ld_stream(p + i + 2 * stride),
                v3 = ld_stream(p + i + 3 * stride);
    a.x ^= v0.x ^ v1.x ^ v2.x ^ v3.x;
    a.y ^= v0.y ^ v1.y ^ v2.y ^ v3.y;
    a.z ^= v0.z ^ v1.z ^ v2.z ^ v3.z;
    a.w ^= v0.w ^ v1.w ^ v2.w ^ v3.w;
  }
  for (; i < n; i += stride) {
    const uint4 v = ld_stream(p + i);
    a.x ^= v.x;
    a.y ^= v.y;
  }
  if ((a.x ^ a.y ^ a.z ^ a.w) == 0x9E3779B9u) atomicAdd(sink, 1u);
}

// Microseconds per launch of a graph of `launches` launches made by
// enqueue(i, stream): the median of 5 replays after a warm-up replay.
template <typename Enqueue>
double us_per_launch(cudaStream_t st, int launches, Enqueue enqueue) {
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  cudaGraph_t g;
  CHECK_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < launches; ++i) enqueue(i);
  CHECK_CUDA(cudaStreamEndCapture(st, &g));
  cudaGraphExec_t ge;
  CHECK_CUDA(cudaGraphInstantiate(&ge, g, 0));
  std::vector<float> ms;
  for (int r = 0; r < 6; ++r) {
    CHECK_CUDA(cudaEventRecord(e0, st));
    CHECK_CUDA(cudaGraphLaunch(ge, st));
    CHECK_CUDA(cudaEventRecord(e1, st));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
    if (r > 0) ms.push_back(t);  // the first replay is a warm-up
  }
  CHECK_CUDA(cudaGraphExecDestroy(ge));
  CHECK_CUDA(cudaGraphDestroy(g));
  CHECK_CUDA(cudaEventDestroy(e0));
  CHECK_CUDA(cudaEventDestroy(e1));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2] * 1e3 / launches;
}

}  // namespace

int main() {
  int dev = 0, sms = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  std::printf("qwen35-bw-probe: %s, %d multiprocessors\n", prop.name, sms);
  const int kLaunches = 32;
  // 4B model decode matrices (NVFP4 bytes incl. scales) and the Q6_K LM head.
  const struct {
    const char* what;
    size_t bytes;
  } sizes[] = {{"attn/dn out proj 2560x4096", 5898240},
               {"dn in proj 12352x2560", 17786880},
               {"ffn down 2560x9216", 13271040},
               {"ffn gate+up 18432x2560", 26542080},
               {"lm head (Q6_K) 248320x2560", 521472000}};
  // 32 buffers of each size (2 of the LM head: it is larger than L2 anyway).
  std::vector<uint8_t*> bufs(kLaunches, nullptr);
  unsigned* sink = nullptr;
  CHECK_CUDA(cudaMalloc(&sink, sizeof(unsigned)));
  cudaStream_t st;
  CHECK_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  std::printf("%-30s %-5s %10s %10s\n", "matrix", "read", "us/launch", "GB/s");
  for (const auto& s : sizes) {
    const size_t bytes = (s.bytes + kStage - 1) / kStage * kStage;
    const int n = bytes > (size_t(200) << 20) ? 2 : kLaunches;
    for (int i = 0; i < n; ++i) {
      CHECK_CUDA(cudaMalloc(&bufs[i], bytes));
      CHECK_CUDA(cudaMemset(bufs[i], i + 1, bytes));
    }
    for (int mode = 0; mode < 2; ++mode) {
      const double us = us_per_launch(st, kLaunches, [&](int i) {
        if (mode == 0)
          CHECK_CUDA(
              launch_pdl(read_ld, 4 * sms, 256, st, reinterpret_cast<const uint4*>(bufs[i % n]), bytes / 16, sink));
        else
          CHECK_CUDA(launch_pdl(read_bulk, 5 * sms, kWarps * 32, st, static_cast<const uint8_t*>(bufs[i % n]),
                                bytes / kStage, sink));
      });
      std::printf("%-30s %-5s %10.2f %10.1f\n", s.what, mode == 0 ? "ld" : "bulk", us, double(bytes) / (us * 1e3));
    }
    for (int i = 0; i < n; ++i) CHECK_CUDA(cudaFree(bufs[i]));
  }
  // An empty chain: the launch and dependency cost alone.
  const double empty_us = us_per_launch(st, kLaunches, [&](int) {
    CHECK_CUDA(launch_pdl(read_ld, 4 * sms, 256, st, static_cast<const uint4*>(nullptr), size_t(0), sink));
  });
  std::printf("empty kernel (%4d blocks)      %-5s %10.2f\n", 4 * sms, "-", empty_us);
  CHECK_CUDA(cudaGetLastError());
  return 0;
}
