// Kernel selection at run time and the activation layout shared by all
// kernel sets.
#include "cpu/kernels.h"

#include <cstdlib>
#include <cstring>

#include "ggml_types.h"

namespace qwen35::cpu {

namespace {
size_t align64(size_t n) { return (n + 63) & ~size_t(63); }
}  // namespace

ActLayout act_layout(int64_t K) {
  ActLayout L;
  L.K = K;
  const size_t k = size_t(K);
  L.corr = align64(k);
  L.xs = L.corr + align64(k);             // K/4 int32
  L.s32 = L.xs + align64(k / 4);          // K/16 floats
  L.stride = L.s32 + align64(k / 8);      // K/32 floats
  return L;
}

void q6k_screen_block(const uint8_t* q6k_block, uint8_t* dst) {
  std::memcpy(dst, q6k_block + 128, kQ6kScreenBlockBytes);  // qh, scales, d: the block's last 82 bytes
}

bool uses_quantized_acts(uint32_t type) {
  return type == GGML_NVFP4 || type == GGML_Q8_0 || type == GGML_Q4_K || type == GGML_Q6_K;
}

#if defined(__x86_64__)
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
  // libgcc sets the AVX-512 bits only when the OS saves the ZMM state.
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
bool cpu_has_avx512_bf16() {
  __builtin_cpu_init();
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}
#else
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
bool cpu_has_avx512_bf16() { return false; }
#endif

int available_kernel_sets(const KernelSet** out, int max) {
  int n = 0;
  if (n < max) out[n++] = &kernels_generic();
#if defined(__x86_64__)
  if (n < max && cpu_has_avx2()) out[n++] = &kernels_avx2();
  if (n < max && cpu_has_avx512()) out[n++] = &kernels_avx512();
#endif
  return n;
}

namespace {
const KernelSet* pick() {
  const KernelSet* sets[3];
  const int n = available_kernel_sets(sets, 3);
  const char* cap = std::getenv("QWEN35_CPU_ISA");
  if (cap && *cap)
    for (int i = n - 1; i >= 0; --i)
      if (std::strcmp(sets[i]->name, cap) == 0) return sets[i];
  return sets[n - 1];
}
}  // namespace

const KernelSet& kernels() {
  static const KernelSet* best = pick();
  return *best;
}

size_t gemm_work_bytes(int64_t K) {
  // A decoded tile of 4 rows: per 64 weights 64 bytes and 16 lane scales
  // each, plus per 256 the Q4_K mins, plus alignment.
  const int64_t super_blocks = (K + 255) / 256;
  return size_t(4 * super_blocks * (4 * 128 + 64) + 64);
}

size_t delta_chunk_work_floats(int64_t dk, int64_t dv) {
  const int64_t C = kDeltaChunk;
  // S, K^T, A, P, U/V', Wm, one scratch row (see delta_rule_chunked_impl).
  return size_t(dk * dv + dk * C + 2 * C * C + C * dv + C * dk + (C > dv ? C : dv));
}

}  // namespace qwen35::cpu
