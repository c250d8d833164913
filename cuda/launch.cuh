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

#include <cuda_runtime.h>

#include <utility>

namespace qwen35::cuda {

bool pdl_enabled();  // elementwise.h

__device__ __forceinline__ void pdl_prologue() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

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

}  // namespace qwen35::cuda
