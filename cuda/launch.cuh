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
// turns the attribute off.
#pragma once

#ifdef QWEN35_CUDA_EMU
#include <tuple>

#include "cuda_emu.h"
#else
#include <cuda_runtime.h>
#endif

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
// The emulation runs the grid on the calling thread (tests/emu).
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                   Args&&... args) {
  std::tuple<KArgs...> params(std::forward<Args>(args)...);
  return ::qwen35::emu::run_grid(grid, block, smem, [&] { std::apply(kernel, params); }, nullptr)
             ? cudaSuccess
             : cudaErrorLaunchFailure;
}
#else
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  // Only on real streams (the legacy default stream keeps plain ordering).
  cfg.numAttrs = pdl_enabled() && stream != nullptr ? 1 : 0;
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

// Lets `kernel` use `bytes` of dynamic shared memory (more than the default
// 48 KiB needs an opt-in per kernel; the attribute is per device, so it is
// set on every call rather than cached).
template <typename... KArgs>
cudaError_t allow_dynamic_smem(void (*kernel)(KArgs...), size_t bytes) {
#ifdef QWEN35_CUDA_EMU
  return cudaSuccess;
#else
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
#endif
}

}  // namespace qwen35::cuda
