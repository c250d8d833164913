// Kernel launches with Programmatic Dependent Launch (PDL, sm_90+).
//
// A decode step is ~200 small dependent kernels; with PDL each kernel is
// launched while the previous one is still running, and its threads wait at
// pdl_wait() until the previous grid has finished and its writes are
// visible. Kernels on the decode path start with pdl_prologue(): the wait
// (a no-op when launched without the attribute) and the trigger that lets
// the next kernel launch. Because every kernel waits for its predecessor
// before touching memory, and the predecessor waited for its own, the
// ordering is the same as without PDL. set_pdl(false) (QWEN35_CUDA_PDL=0)
// turns the attribute off. Kernels trigger only after they waited, so when
// a kernel starts, the kernel two launches before it has completed: the
// chained projections (chain_fp4.cu) rely on that to take a ticket from
// their call site's counters before their own wait.
#pragma once

#ifdef QWEN35_CUDA_EMU
#include <memory>
#include <tuple>

#include "cuda_emu.h"
#else
#include <cuda_runtime.h>
#endif

#include <atomic>
#include <utility>

namespace qwen35::cuda {

bool pdl_enabled();  // elementwise.h

__device__ __forceinline__ void pdl_prologue() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

#ifdef QWEN35_CUDA_EMU
// The emulation runs the grid on the calling thread (tests/emu), or, while
// a stream capture is open, records it for the graph's launches. A launch
// the tests make fail (emu::arm_fault) invalidates an open capture, as a
// refused launch does in the real runtime.
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                   Args&&... args) {
  if (::qwen35::emu::fault_fires(::qwen35::emu::Fault::Launch)) {
    ::qwen35::emu::capture_invalidate();
    return cudaErrorLaunchFailure;
  }
  if (!::qwen35::emu::smem_allowed(reinterpret_cast<const void*>(kernel), smem)) {
    ::qwen35::emu::capture_invalidate();
    return cudaErrorInvalidValue;  // as the real launch: more than the kernel's limit
  }
  if (!::qwen35::emu::launch_shape_ok(grid, block)) {
    ::qwen35::emu::capture_invalidate();
    return cudaErrorInvalidConfiguration;  // as the real launch: an empty grid, too many threads
  }
  auto params = std::make_shared<std::tuple<KArgs...>>(std::forward<Args>(args)...);
  auto run = [=] {
    return ::qwen35::emu::run_grid(grid, block, smem, [&] { std::apply(kernel, *params); }, nullptr);
  };
  if (::qwen35::emu::capturing()) {
    ::qwen35::emu::capture_add(run);
    return cudaSuccess;
  }
  return run() ? cudaSuccess : cudaErrorLaunchFailure;
}
// The same as launch() (kernels that do not wait for their predecessor:
// launched without the PDL attribute in the real build).
template <typename... KArgs, typename... Args>
cudaError_t launch_plain(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                         Args&&... args) {
  return launch(kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}
// No thread block clusters in the emulation.
template <typename... KArgs, typename... Args>
cudaError_t launch_clustered(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             dim3 cluster, Args&&... args) {
  if (cluster.x * cluster.y * cluster.z > 1) return cudaErrorNotSupported;
  return launch(kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}
#else
// As launch(), with the blocks grouped into thread block clusters of
// `cluster` blocks (sm_90+; dim3(1, 1, 1): no clusters).
template <typename... KArgs, typename... Args>
cudaError_t launch_clustered(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             dim3 cluster, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  // PDL only on real streams (the legacy default stream keeps plain ordering).
  if (pdl_enabled() && stream != nullptr) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster.x * cluster.y * cluster.z > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster.x;
    attr[n].val.clusterDim.y = cluster.y;
    attr[n].val.clusterDim.z = cluster.z;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args&&... args) {
  return launch_clustered(kernel, grid, block, smem, stream, dim3(1, 1, 1), std::forward<Args>(args)...);
}
// A plain launch (no PDL attribute), for kernels that do not call
// pdl_prologue(): the equivalent of kernel<<<grid, block, smem, stream>>>.
template <typename... KArgs, typename... Args>
cudaError_t launch_plain(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                         Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}
#endif

// The most dynamic shared memory a block of the current device may opt in to.
inline size_t max_dynamic_smem() {
#ifdef QWEN35_CUDA_EMU
  return size_t(227) * 1024;
#else
  int dev = 0, bytes = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return 48 * 1024;
  return size_t(bytes);
#endif
}

// Lets `kernel` use `bytes` of dynamic shared memory on the current device
// (more than the default 48 KiB needs an opt-in per kernel and device).
// Called before every launch, or through SmemOptIn, which remembers it.
template <typename... KArgs>
cudaError_t allow_dynamic_smem(void (*kernel)(KArgs...), size_t bytes) {
#ifdef QWEN35_CUDA_EMU
  if (bytes > max_dynamic_smem()) return cudaErrorInvalidValue;
  ::qwen35::emu::smem_opt_in(reinterpret_cast<const void*>(kernel), bytes);
  return cudaSuccess;
#else
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
#endif
}

// allow_dynamic_smem once per kernel and device: one object per kernel (a
// function-local static beside its launch). The attribute belongs to the
// kernel on one device, so a model on a second GPU raises it there too.
class SmemOptIn {
 public:
  template <typename... KArgs>
  cudaError_t ensure(void (*kernel)(KArgs...), size_t bytes) {
    if (bytes <= 48 * 1024) return cudaSuccess;
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kDevices) return allow_dynamic_smem(kernel, bytes);
    std::atomic<int>& allowed = allowed_[dev];
    if (int(bytes) <= allowed.load(std::memory_order_relaxed)) return cudaSuccess;
    const cudaError_t e = allow_dynamic_smem(kernel, bytes);
    if (e == cudaSuccess) {
      int cur = allowed.load(std::memory_order_relaxed);
      while (int(bytes) > cur && !allowed.compare_exchange_weak(cur, int(bytes), std::memory_order_relaxed)) {
      }
    }
    return e;
  }

 private:
  static constexpr int kDevices = 64;
  std::atomic<int> allowed_[kDevices] = {};
};

}  // namespace qwen35::cuda
