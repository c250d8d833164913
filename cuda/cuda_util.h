// Host-side CUDA helpers: error conversion to Status, owning device and
// pinned host buffers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "status.h"

namespace qwen35::cuda {

// OK, or QWEN35_ERR_BACKEND (OUT_OF_MEMORY for allocation failures) naming
// what failed and the CUDA error. Clears the sticky-free error state.
inline Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  cudaGetLastError();
  const qwen35_status code = e == cudaErrorMemoryAllocation ? QWEN35_ERR_OUT_OF_MEMORY : QWEN35_ERR_BACKEND;
  return Error(code, "CUDA error in {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

#define QWEN35_CUDA_TRY(expr, what) QWEN35_TRY(::qwen35::cuda::cuda_status((expr), (what)))

// Device memory owned by one object.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Allocate `bytes` (zero-filled); any previous allocation is released.
  Status alloc(size_t bytes, const char* what) {
    reset();
    if (bytes == 0) return Status::Ok();
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return Error(QWEN35_ERR_OUT_OF_MEMORY, "cannot allocate {} MiB of GPU memory for {}: {}", (bytes + (1 << 20) - 1) >> 20,
                   what, cudaGetErrorString(e));
    }
    p_ = p;
    n_ = bytes;
    return cuda_status(cudaMemset(p_, 0, bytes), what);
  }
  // Grow to at least `bytes` (contents are not kept).
  Status reserve(size_t bytes, const char* what) { return bytes <= n_ ? Status::Ok() : alloc(bytes, what); }
  void reset() {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  template <typename T = void>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Page-locked host memory (for fast, asynchronous copies).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { reset(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  Status alloc(size_t bytes, const char* what) {
    reset();
    if (bytes == 0) return Status::Ok();
    void* p = nullptr;
    const cudaError_t e = cudaMallocHost(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return Error(QWEN35_ERR_OUT_OF_MEMORY, "cannot allocate {} MiB of pinned host memory for {}: {}",
                   (bytes + (1 << 20) - 1) >> 20, what, cudaGetErrorString(e));
    }
    p_ = p;
    n_ = bytes;
    return Status::Ok();
  }
  // Grow to at least `bytes` (contents are not kept).
  Status reserve(size_t bytes, const char* what) { return bytes <= n_ ? Status::Ok() : alloc(bytes, what); }
  void reset() {
    if (p_) cudaFreeHost(p_);
    p_ = nullptr;
    n_ = 0;
  }
  template <typename T = void>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace qwen35::cuda
