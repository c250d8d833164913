// Decode-kernel tuning (see tuning.h).
#include "tuning.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>

#include <fmt/format.h>

namespace qwen35::cuda {

namespace {

int env_int(const char* name, int def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return end && *end == '\0' ? int(x) : def;
}

DecodeTuning clamp(DecodeTuning t) {
  t.fp4_kernel = t.fp4_kernel == 1 ? 1 : t.fp4_kernel == 3 ? 3 : 2;
  t.fp4_warps = t.fp4_warps >= 8 ? 8 : 4;
  t.fp4_blocks_per_sm = std::clamp(t.fp4_blocks_per_sm, 1, kFp4MaxBlocksPerSm);
  t.fp4_depth = t.fp4_depth >= 16 ? 16 : t.fp4_depth >= 8 ? 8 : 4;
  t.fp4_stages = t.fp4_stages >= 8 && !t.fp4_lean ? 8 : t.fp4_stages >= 4 ? 4 : 2;  // 8: not in lean mode
  t.fp4_lean = t.fp4_lean ? 1 : 0;
  t.fp4_probe = t.fp4_probe ? 1 : 0;
  t.fp4_cluster = t.fp4_cluster ? 1 : 0;
  t.fp4_late_pdl = t.fp4_late_pdl ? 1 : 0;
  t.fp4_prefetch = std::clamp(t.fp4_prefetch, 0, 2);
  t.fp4_chain = std::clamp(t.fp4_chain, 0, 4);
  t.q6k_kernel = t.q6k_kernel == 1 ? 1 : t.q6k_kernel == 3 ? 3 : 2;
  t.q6k_persist = std::clamp(t.q6k_persist, 0, 16);
  t.q6k_argmax = t.q6k_argmax ? 1 : 0;
  t.delta_ept = t.delta_ept >= 32 ? 32 : t.delta_ept >= 16 ? 16 : 8;
  return t;
}

std::mutex g_mu;
DecodeTuning g_tuning;
bool g_loaded = false;

}  // namespace

DecodeTuning decode_tuning() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_loaded) {
    DecodeTuning t;
    t.fp4_kernel = env_int("QWEN35_CUDA_FP4_KERNEL", t.fp4_kernel);
    t.fp4_warps = env_int("QWEN35_CUDA_FP4_WARPS", t.fp4_warps);
    t.fp4_blocks_per_sm = env_int("QWEN35_CUDA_FP4_BPS", t.fp4_blocks_per_sm);
    t.fp4_depth = env_int("QWEN35_CUDA_FP4_DEPTH", t.fp4_depth);
    t.fp4_stages = env_int("QWEN35_CUDA_FP4_STAGES", t.fp4_stages);
    t.fp4_lean = env_int("QWEN35_CUDA_FP4_LEAN", t.fp4_lean);
    t.fp4_probe = env_int("QWEN35_CUDA_FP4_PROBE", t.fp4_probe);
    t.fp4_cluster = env_int("QWEN35_CUDA_FP4_CLUSTER", t.fp4_cluster);
    t.fp4_late_pdl = env_int("QWEN35_CUDA_FP4_LATE_PDL", t.fp4_late_pdl);
    t.fp4_prefetch = env_int("QWEN35_CUDA_FP4_PREFETCH", t.fp4_prefetch);
    t.fp4_chain = env_int("QWEN35_CUDA_FP4_CHAIN", t.fp4_chain);
    t.q6k_kernel = env_int("QWEN35_CUDA_Q6K_KERNEL", t.q6k_kernel);
    t.q6k_persist = env_int("QWEN35_CUDA_Q6K_PERSIST", t.q6k_persist);
    t.q6k_argmax = env_int("QWEN35_CUDA_Q6K_ARGMAX", t.q6k_argmax);
    t.delta_ept = env_int("QWEN35_CUDA_DELTA_EPT", t.delta_ept);
    g_tuning = clamp(t);
    g_loaded = true;
  }
  return g_tuning;
}

void set_decode_tuning(const DecodeTuning& t) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_tuning = clamp(t);
  g_loaded = true;
}

std::string describe(const DecodeTuning& t) {
  static constexpr const char* kChains[] = {"", " chain-ffn", " chain-layers", " chain-delta", " chain-delta-attn"};
  // (Q6_K kernel 2 keeps fp4_depth kgroups in flight per warp.)
  const std::string q6k = fmt::format("q6k v{}{}{}{}", t.q6k_kernel,
                                      t.q6k_persist > 0 ? fmt::format(" p{}", t.q6k_persist) : "",
                                      t.q6k_kernel == 2 && t.fp4_depth != 4 ? fmt::format(" d{}", t.fp4_depth) : "",
                                      t.q6k_argmax ? " argmax" : "");
  if (t.fp4_kernel == 1) return fmt::format("fp4 v1, {}, dn e{}", q6k, t.delta_ept);
  if (t.fp4_kernel == 3)
    return fmt::format("fp4 v3 bps{} s{}{}{}{}{}{}{}, {}, dn e{}", t.fp4_blocks_per_sm, t.fp4_stages,
                       t.fp4_lean ? " lean" : "", t.fp4_cluster ? " cluster" : "", t.fp4_late_pdl ? " late-pdl" : "",
                       t.fp4_prefetch == 2 ? " l2-next-early" : t.fp4_prefetch ? " l2-next" : "",
                       kChains[std::clamp(t.fp4_chain, 0, 4)], t.fp4_probe ? " PROBE(no math)" : "", q6k, t.delta_ept);
  return fmt::format("fp4 v2 w{} bps{} d{}, {}, dn e{}", t.fp4_warps, t.fp4_blocks_per_sm, t.fp4_depth, q6k,
                     t.delta_ept);
}

}  // namespace qwen35::cuda
