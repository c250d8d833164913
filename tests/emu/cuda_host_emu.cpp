// The host side of a CUDA program run on the CPU, for emulating a whole
// device pipeline (test_cuda_vision_emu, test_cuda_backend_emu): "device"
// and pinned memory are host memory, streams are the calling thread (every
// call completes before it returns, so events and stream waits are
// trivially satisfied), CUDA graphs are the launches and copies recorded
// during a capture, replayed in order, and cuBLASLt gets a CPU
// stand-in (Gemm: the same y = A X^T contract, F32 accumulation over
// F32/F16/BF16 inputs). The kernels themselves run through the emulation
// of cuda_emu.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "cuda_emu.h"

#include "backend.h"
#include "gemm.h"
#include "ggml_types.h"
#include "matmul.h"
#include "quants.h"

namespace {
int g_device_count = 1, g_current_device = 0;
// Per device: the kernels' raised dynamic shared memory limits.
std::map<std::pair<int, const void*>, size_t> g_smem_limit;
int64_t g_bad_frees = 0, g_bad_copies = 0;
// Live allocations by address: size, pinned (cudaMallocHost) or device.
struct Alloc {
  size_t bytes;
  bool pinned;
};
std::map<const char*, Alloc>& live() {
  static std::map<const char*, Alloc> m;
  return m;
}
// A copy or fill of n bytes at p: within one allocation when p is in one
// (elsewhere it is pageable host memory, which the emulation cannot tell
// from a wild device pointer).
void check_range(const void* p, size_t n, const char* call) {
  const char* c = static_cast<const char*>(p);
  auto it = live().upper_bound(c);
  if (it == live().begin()) return;
  --it;
  const char* end = it->first + std::max<size_t>(it->second.bytes, 1);
  if (c >= end || c + n <= end) return;
  ++g_bad_copies;
  std::fprintf(stderr, "emulated CUDA: %s of %zu bytes runs %zu bytes past the end of an allocation of %zu\n", call, n,
               size_t(c + n - end), it->second.bytes);
}
cudaError_t emu_alloc(void** p, size_t n, bool pinned, const char* call) {
  *p = nullptr;
  if (::qwen35::emu::capture_refuse(call)) return cudaErrorStreamCaptureUnsupported;
  if (::qwen35::emu::fault_fires(::qwen35::emu::Fault::Alloc)) return cudaErrorMemoryAllocation;
  *p = std::malloc(n ? n : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  live()[static_cast<const char*>(*p)] = Alloc{n, pinned};
  return cudaSuccess;
}
cudaError_t emu_free(void* p, bool pinned, const char* call) {
  if (::qwen35::emu::capture_refuse(call)) return cudaErrorStreamCaptureUnsupported;
  if (!p) return cudaSuccess;
  const auto it = live().find(static_cast<const char*>(p));
  if (it == live().end() || it->second.pinned != pinned) {
    // Not ours, freed twice, or freed with the other kind's call.
    ++g_bad_frees;
    std::fprintf(stderr, "emulated CUDA: %s of a pointer it did not allocate\n", call);
    return cudaErrorInvalidValue;
  }
  live().erase(it);
  std::free(p);
  return cudaSuccess;
}
}  // namespace

extern "C" {

cudaError_t cudaMalloc(void** p, size_t n) { return emu_alloc(p, n, false, "cudaMalloc"); }
cudaError_t cudaFree(void* p) { return emu_free(p, false, "cudaFree"); }
cudaError_t cudaMemset(void* p, int v, size_t n) {
  if (::qwen35::emu::capture_refuse("cudaMemset")) return cudaErrorStreamCaptureUnsupported;
  check_range(p, n, "cudaMemset");
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind kind) {
  if (::qwen35::emu::capture_refuse("cudaMemcpy")) return cudaErrorStreamCaptureUnsupported;
  check_range(d, n, "cudaMemcpy");
  check_range(s, n, "cudaMemcpy");
  std::memcpy(d, s, n);
  if (kind == cudaMemcpyDeviceToHost && ::qwen35::emu::fault_fires(::qwen35::emu::Fault::Corrupt))
    for (size_t i = 3; i < n; i += 4) static_cast<unsigned char*>(d)[i] ^= 0xC0;  // (little-endian: the top byte)
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  check_range(d, n, "cudaMemcpyAsync");
  check_range(s, n, "cudaMemcpyAsync");
  if (::qwen35::emu::capturing()) {
    ::qwen35::emu::capture_add([=] {
      std::memcpy(d, s, n);
      return true;
    });
    return cudaSuccess;
  }
  std::memcpy(d, s, n);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  static int dummy;
  *s = reinterpret_cast<cudaStream_t>(&dummy);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  return ::qwen35::emu::capture_refuse("cudaStreamSynchronize") ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
  return ::qwen35::emu::capture_refuse("cudaDeviceSynchronize") ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = ::qwen35::emu::current_device();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= g_device_count) return cudaErrorInvalidDevice;
  g_current_device = d;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p);
  std::strcpy(p->name, "CPU emulation");
  p->major = 9;  // Hopper's kernels, no FP4 GEMM
  p->multiProcessorCount = 2;
  p->sharedMemPerBlockOptin = 227 * 1024;
  p->totalGlobalMem = size_t(16) << 30;
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* d, size_t dpitch, const void* s, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind, cudaStream_t) {
  if (height > 0) {
    check_range(d, (height - 1) * dpitch + width, "cudaMemcpy2DAsync");
    check_range(s, (height - 1) * spitch + width, "cudaMemcpy2DAsync");
  }
  auto copy = [=] {
    for (size_t r = 0; r < height; ++r)
      std::memcpy(static_cast<char*>(d) + r * dpitch, static_cast<const char*>(s) + r * spitch, width);
    return true;
  };
  if (::qwen35::emu::capturing()) ::qwen35::emu::capture_add(copy);
  else copy();
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = g_device_count;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  *v = attr == cudaDevAttrMultiProcessorCount ? 2 : attr == cudaDevAttrComputeCapabilityMajor ? 9 : 0;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  *free_bytes = size_t(8) << 30;
  *total = size_t(16) << 30;
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t n) { return emu_alloc(p, n, true, "cudaMallocHost"); }
cudaError_t cudaFreeHost(void* p) { return emu_free(p, true, "cudaFreeHost"); }
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  if (::qwen35::emu::capturing()) {
    check_range(p, n, "cudaMemsetAsync");
    ::qwen35::emu::capture_add([=] {
      std::memset(p, v, n);
      return true;
    });
    return cudaSuccess;
  }
  return cudaMemset(p, v, n);
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  static int dummy;
  *e = reinterpret_cast<cudaEvent_t>(&dummy);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  return ::qwen35::emu::capture_refuse("cudaEventSynchronize") ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 1.0f;
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
// Graphs: the launches and copies recorded between begin and end capture,
// replayed in order (a graph and its executable are the same list here).
using OpList = std::vector<::qwen35::emu::Op>;
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
  ::qwen35::emu::capture_begin();
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t* g) {
  const bool valid = ::qwen35::emu::capture_valid();
  OpList ops = ::qwen35::emu::capture_end();
  *g = valid ? reinterpret_cast<cudaGraph_t>(new OpList(std::move(ops))) : nullptr;
  return valid ? cudaSuccess : cudaErrorStreamCaptureInvalidated;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long) {
  *e = nullptr;
  if (::qwen35::emu::fault_fires(::qwen35::emu::Fault::Graph)) return cudaErrorInvalidValue;
  *e = reinterpret_cast<cudaGraphExec_t>(new OpList(*reinterpret_cast<OpList*>(g)));
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete reinterpret_cast<OpList*>(g);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
  delete reinterpret_cast<OpList*>(e);
  return cudaSuccess;
}
namespace {
int64_t g_graph_launches = 0;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t) {
  ++g_graph_launches;
  for (const auto& op : *reinterpret_cast<OpList*>(e))
    if (!op()) return cudaErrorLaunchFailure;
  return cudaSuccess;
}
// (cudaGetLastError: cuda_emu.cpp, which every emulated test links)
// The errors the stand-ins return, worded as the real runtime's.
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    default: return "emulated CUDA error";
  }
}
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    default: return "cudaErrorEmulated";
  }
}

}  // extern "C"

namespace qwen35 {

int64_t emu::graph_launches() { return g_graph_launches; }
int64_t emu::live_allocations() { return int64_t(live().size()); }
void emu::set_device_count(int n) {
  g_device_count = n;
  if (g_current_device >= n) g_current_device = 0;
}
int emu::current_device() { return g_current_device; }
void emu::smem_opt_in(const void* kernel, size_t bytes) {
  size_t& limit = g_smem_limit[{g_current_device, kernel}];
  limit = std::max(limit, bytes);
}
bool emu::launch_shape_ok(dim3 grid, dim3 block) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64) return false;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return false;
  return grid.x <= 0x7FFFFFFFu && grid.y <= 65535 && grid.z <= 65535;
}
bool emu::smem_allowed(const void* kernel, size_t bytes) {
  if (bytes > size_t(227) * 1024) return false;
  if (bytes <= size_t(48) * 1024) return true;
  const auto it = g_smem_limit.find({g_current_device, kernel});
  return it != g_smem_limit.end() && bytes <= it->second;
}
int64_t emu::take_bad_frees() { return std::exchange(g_bad_frees, 0); }
int64_t emu::take_bad_copies() { return std::exchange(g_bad_copies, 0); }

namespace cuda {

struct Gemm::Plan {};
Gemm::Gemm() = default;
Gemm::~Gemm() = default;
Status Gemm::init(size_t workspace_bytes) {
  ws_bytes_ = workspace_bytes;
  return Status::Ok();
}

namespace {
float load(GemmType t, const void* p, int64_t i) {
  switch (t) {
    case GemmType::F32: return static_cast<const float*>(p)[i];
    case GemmType::F16: return __half2float(static_cast<const __half*>(p)[i]);
    case GemmType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
  return 0.0f;
}
}  // namespace

Status Gemm::run(GemmType type, const void* A, int64_t N, int64_t K, const void* X, int64_t ldx, int64_t n, float* y,
                 int64_t ldy, float alpha, bool add, cudaStream_t) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < N; ++r) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += load(type, A, r * K + k) * load(type, X, t * ldx + k);
      y[t * ldy + r] = alpha * acc + (add ? y[t * ldy + r] : 0.0f);
    }
  return Status::Ok();
}

// The block-scaled FP4 GEMM (Blackwell): the emulated device is a Hopper.
Status Gemm::run_fp4(const uint8_t*, const uint8_t*, int64_t, int64_t, const uint8_t*, const uint8_t*, int64_t, float*,
                     int64_t, const float*, const float*, cudaStream_t) {
  return Error(QWEN35_ERR_UNSUPPORTED, "no FP4 GEMM in the emulation");
}

}  // namespace cuda
}  // namespace qwen35
