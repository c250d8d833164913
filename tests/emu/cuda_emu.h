// A CPU emulation of the CUDA built-ins our plain-CUDA kernels use, so that
// kernels (not their CPU twins: the kernels themselves, with their indexing,
// barriers, shuffles and cp.async staging) run on a machine without a GPU.
//
// cuda/common.cuh and cuda/launch.cuh include this header instead of the
// CUDA device headers when QWEN35_CUDA_EMU is defined; tests/emu compiles
// kernel files (cuda/*.cu) as C++ that way. A launch runs the blocks one
// after another; the threads of a block are fibers (cuda_emu.cpp) on the calling
// thread, switched only at __syncthreads, __syncwarp and warp shuffles, so a
// run is deterministic. What it catches: wrong indices and bounds, reads of
// shared memory before the barrier that publishes it (run the threads in
// both orders: emu::set_order), cp.async data read before its wait (copies
// land at the wait), barriers not reached by every thread (deadlock report),
// shuffles with lanes that exited. What it does not model: the memory
// model beyond barriers, timing, atomics, and inline PTX other than what
// the kernel headers emulate themselves under QWEN35_CUDA_EMU (cp.async,
// mma.sync through warp_allgather, streaming loads, bulk copies that land
// at once); no thread block clusters.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>
#include <type_traits>

// Shared memory: blocks run one at a time, so a function-local static is
// exactly one copy per block (per template instantiation).
#undef __shared__
#define __shared__ static
// Kernel parameters are an ordinary copy here (the host compiler would only
// warn about the attribute).
#undef __grid_constant__
#define __grid_constant__
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace qwen35::emu {

// The running thread's index, and the launch's block index and shapes.
const uint3& thread_idx();
extern uint3 g_block_idx;
extern dim3 g_block_dim, g_grid_dim;

void sync_block();
// All live lanes of the calling thread's warp exchange 8 bytes: returns the
// value lane `src` put in (the calling lane's own for src out of range).
uint64_t warp_exchange(uint64_t mine, int src);
void sync_warp();
void* dynamic_smem();
// Every lane of the calling thread's warp puts in `bytes` (at most
// kMaxGather) and gets all 32 lanes' values, lane order, in `all`: the
// collective the tensor-core instructions need (mma.sync reads the
// fragments of the whole warp). False (and a launch error) if a lane of the
// warp did not take part.
constexpr size_t kMaxGather = 64;
bool warp_allgather(const void* mine, size_t bytes, void* all);

// Stream capture (CUDA graphs): while open, launches and asynchronous
// copies are recorded instead of run; a graph is the recorded list, and
// launching it runs the list in order (cuda_host_emu.cpp).
using Op = std::function<bool()>;
bool capturing();
void capture_add(Op op);
void capture_begin();
std::vector<Op> capture_end();
// Graph launches so far (cuda_host_emu.cpp), so tests can tell that the
// graph path ran.
int64_t graph_launches();
// The capture rules of the real runtime (cudaStreamCaptureModeThreadLocal):
// a synchronous call (allocation, free, synchronous copy or memset, stream
// or device synchronization) while a capture is open is refused, and it,
// like a failed launch, invalidates the capture: ending it fails and gives
// no graph. capture_refuse() is the stand-ins' check (true: refuse the
// call); take_capture_violations() counts the refused calls since the last
// take, so tests can demand none (the backend would quietly fall back to
// eager launches).
bool capture_refuse(const char* call);
void capture_invalidate();
bool capture_valid();
int64_t take_capture_violations();
const char* last_capture_violation();

// Devices (cuda_host_emu.cpp): how many the runtime reports (1 unless a
// test asks for more; all alike, all the same host memory) and the current
// one (cudaSetDevice).
void set_device_count(int n);
int current_device();
// Dynamic shared memory as the real runtime checks it: a launch with more
// than 48 KiB needs the kernel's limit raised on the current device first
// (cudaFuncSetAttribute, which allow_dynamic_smem calls: smem_opt_in), and
// no launch gets more than the device's 227 KiB. smem_allowed() is the
// launch's check (false: the launch fails).
void smem_opt_in(const void* kernel, size_t bytes);
bool smem_allowed(const void* kernel, size_t bytes);
// The launch shapes the real runtime accepts: no empty grid, at most 1,024
// threads a block (64 in z), grids up to 2^31 - 1 in x and 65,535 in y and
// z. Tests that launch what it refuses fail as they would on a GPU.
bool launch_shape_ok(dim3 grid, dim3 block);

// Fault injection, for tests of the error paths: arm_fault(kind, n) makes
// the n-th call of that kind from now on (0: the next) fail once, as on a
// device out of memory (Alloc: cudaMalloc, cudaMallocHost), a launch the
// runtime refuses (Launch: a kernel launch call; during a capture it also
// invalidates the capture) or a graph that does not instantiate (Graph:
// cudaGraphInstantiate) or a kernel that computed wrong values (Corrupt: a
// synchronous device-to-host cudaMemcpy delivers every 4-byte word with its
// top byte changed, e.g. a float's sign and exponent); n < 0 disarms. fault_fires() is the stand-ins'
// check (it counts the call); fault_calls() the calls of a kind so far, so
// a test can sweep n over a whole operation.
// live_allocations(): device and pinned allocations not freed yet;
// take_bad_frees(): frees of pointers that were not (or no longer)
// allocated, or with the other kind's call, since the last take;
// take_bad_copies(): likewise copies and fills that start in an allocation
// and run past its end (cuda_host_emu.cpp).
enum class Fault { Alloc, Launch, Graph, Corrupt };
constexpr int kFaultKinds = 4;
void arm_fault(Fault kind, int64_t n);
bool fault_fires(Fault kind);
int64_t fault_calls(Fault kind);
int64_t live_allocations();
int64_t take_bad_frees();
int64_t take_bad_copies();

// cp.async: copies are queued per thread and happen at the wait.
void async_copy(void* dst, const void* src, size_t bytes);
void async_commit();
void async_wait(int keep_groups);

// Runs fn as every thread of every block of the grid. Returns false (and
// fills *err) on a deadlock or an invalid shuffle.
bool run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& fn, const char** err);
// Grids run so far (kernel launches, replayed graph nodes included), so tests
// can count the kernels of a path.
int64_t grids_run();

// Thread (and block) order of the next launches: false = ascending ids,
// true = descending. Running a test both ways finds reads that depend on
// another thread having run first.
void set_order(bool reverse);
// The error of the last failed launch.
const char* last_error();

template <typename T>
T shfl(T v, int src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(bits, src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

inline int lane_id() {
  const uint3& t = thread_idx();
  const unsigned linear = t.x + g_block_dim.x * (t.y + g_block_dim.y * t.z);
  return int(linear % 32);
}

}  // namespace qwen35::emu

#define threadIdx (::qwen35::emu::thread_idx())
#define blockIdx (::qwen35::emu::g_block_idx)
#define blockDim (::qwen35::emu::g_block_dim)
#define gridDim (::qwen35::emu::g_grid_dim)

inline void __syncthreads() { ::qwen35::emu::sync_block(); }
inline void __syncwarp(unsigned = 0xFFFFFFFFu) { ::qwen35::emu::sync_warp(); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int lane = ::qwen35::emu::lane_id();
  return ::qwen35::emu::shfl(v, (lane & ~(width - 1)) | ((lane ^ mask) & (width - 1)));
}
template <typename T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const int lane = ::qwen35::emu::lane_id();
  return ::qwen35::emu::shfl(v, (lane & ~(width - 1)) | (src & (width - 1)));
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = ::qwen35::emu::lane_id();
  const int src = (lane & (width - 1)) + int(delta) < width ? lane + int(delta) : lane;
  return ::qwen35::emu::shfl(v, src);
}

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// Round-to-nearest float operations (the host does no contraction here).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, 4);
  return i;
}

// CUDA's integer min/max (mixed argument types promote as in device code).
template <typename A, typename B, typename = std::enable_if_t<std::is_integral_v<A> && std::is_integral_v<B>>>
std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(a) : C(b);
}
template <typename A, typename B, typename = std::enable_if_t<std::is_integral_v<A> && std::is_integral_v<B>>>
std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) > C(b) ? C(a) : C(b);
}

// Blocks run one at a time: atomics are plain read-modify-writes, fences
// and cache hints are no-ops.
template <typename T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
inline void __threadfence() {}
inline void __threadfence_system() {}
template <typename T>
T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}
template <typename T>
T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <typename T>
T atomicMax(T* p, T v) {
  const T old = *p;
  if (v > old) *p = v;
  return old;
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}
template <typename T>
T __ldcg(const T* p) {
  return *p;
}
