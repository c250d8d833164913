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
  t.fp4_probe = std::clamp(t.fp4_probe, 0, 7);
  t.fp4_cluster = t.fp4_cluster ? 1 : 0;
  t.fp4_late_pdl = t.fp4_late_pdl ? 1 : 0;
  t.fp4_prefetch = std::clamp(t.fp4_prefetch, 0, 2);
  t.fp4_x_l1 = t.fp4_x_l1 ? 1 : 0;
  t.fp4_chain = std::clamp(t.fp4_chain, 0, 4);
  t.fp4_chain_early = t.fp4_chain_early ? 1 : 0;
  t.fp4_chain_poll_ns = std::clamp(t.fp4_chain_poll_ns, 0, 4096);
  t.fp4_persist = std::clamp(t.fp4_persist, 0, 4);
  t.fp4_fp8 = t.fp4_fp8 ? 1 : 0;
  t.fp4_persist_timeline = t.fp4_persist_timeline ? 1 : 0;
  t.fp4_persist_slices = t.fp4_persist_slices ? 1 : 0;
  t.q6k_kernel = t.q6k_kernel == 1 ? 1 : t.q6k_kernel == 3 ? 3 : 2;
  t.q6k_persist = std::clamp(t.q6k_persist, 0, 16);
  t.q6k_argmax = t.q6k_argmax ? 1 : 0;
  t.delta_ept = t.delta_ept >= 32 ? 32 : t.delta_ept >= 16 ? 16 : 8;
  return t;
}

// Each field's QWEN35_CUDA_* variable (without the prefix).
struct Field {
  const char* env;
  int DecodeTuning::*member;
};
constexpr Field kFields[] = {
    {"FP4_KERNEL", &DecodeTuning::fp4_kernel},     {"FP4_WARPS", &DecodeTuning::fp4_warps},
    {"FP4_BPS", &DecodeTuning::fp4_blocks_per_sm}, {"FP4_DEPTH", &DecodeTuning::fp4_depth},
    {"FP4_STAGES", &DecodeTuning::fp4_stages},     {"FP4_LEAN", &DecodeTuning::fp4_lean},
    {"FP4_PROBE", &DecodeTuning::fp4_probe},       {"FP4_CLUSTER", &DecodeTuning::fp4_cluster},
    {"FP4_LATE_PDL", &DecodeTuning::fp4_late_pdl}, {"FP4_PREFETCH", &DecodeTuning::fp4_prefetch},
    {"FP4_CHAIN", &DecodeTuning::fp4_chain},       {"FP4_CHAIN_EARLY", &DecodeTuning::fp4_chain_early},
    {"Q6K_KERNEL", &DecodeTuning::q6k_kernel},     {"Q6K_PERSIST", &DecodeTuning::q6k_persist},
    {"Q6K_ARGMAX", &DecodeTuning::q6k_argmax},     {"DELTA_EPT", &DecodeTuning::delta_ept},
    {"FP4_X_L1", &DecodeTuning::fp4_x_l1},         {"FP4_CHAIN_POLL_NS", &DecodeTuning::fp4_chain_poll_ns},
    {"FP4_PERSIST", &DecodeTuning::fp4_persist},   {"FP4_FP8", &DecodeTuning::fp4_fp8},
    {"FP4_PERSIST_TIMELINE", &DecodeTuning::fp4_persist_timeline},
    {"FP4_PERSIST_SLICES", &DecodeTuning::fp4_persist_slices},
};

std::mutex g_mu;
DecodeTuning g_tuning;
bool g_loaded = false;

}  // namespace

DecodeTuning decode_tuning() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_loaded) {
    DecodeTuning t;
    for (const Field& f : kFields) t.*f.member = env_int(fmt::format("QWEN35_CUDA_{}", f.env).c_str(), t.*f.member);
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

std::string env_settings(const DecodeTuning& t) {
  const DecodeTuning d;
  std::string out;
  for (const Field& f : kFields)
    if (t.*f.member != d.*f.member)
      out += fmt::format("{}QWEN35_CUDA_{}={}", out.empty() ? "" : " ", f.env, t.*f.member);
  return out;
}

// A probe's label (fp4_probe's bits: no math, no activation load, no combine).
static std::string probe_label(int probe) {
  if (!probe) return "";
  std::string s = " PROBE(no";
  if (probe & kFp4ProbeNoMath) s += " math,";
  if (probe & kFp4ProbeNoX) s += " x,";
  if (probe & kFp4ProbeNoCombine) s += " combine,";
  s.back() = ')';
  return s;
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
    return fmt::format("fp4 v3 bps{} s{}{}{}{}{}{}{}{}{}{}{}, {}, dn e{}", t.fp4_blocks_per_sm, t.fp4_stages,
                       t.fp4_fp8 ? " fp8" : "", t.fp4_lean ? " lean" : "", t.fp4_cluster ? " cluster" : "",
                       t.fp4_late_pdl ? " late-pdl" : "",
                       t.fp4_prefetch == 2 ? " l2-next-early" : t.fp4_prefetch ? " l2-next" : "",
                       t.fp4_x_l1 ? " x-l1" : "",
                       t.fp4_persist == 4   ? " persist-step"
                       : t.fp4_persist == 3 ? " persist-attn"
                       : t.fp4_persist == 2 ? " persist-layers"
                       : t.fp4_persist == 1 ? " persist-tails"
                                            : kChains[std::clamp(t.fp4_chain, 0, 4)],
                       !t.fp4_persist && t.fp4_chain >= 2 && !t.fp4_chain_early ? " full-waits"
                       : t.fp4_persist && t.fp4_persist_slices                  ? " slice-waits"
                                                                                : "",
                       (t.fp4_chain || t.fp4_persist) && t.fp4_chain_poll_ns != 64
                           ? fmt::format(" poll{}", t.fp4_chain_poll_ns)
                           : "",
                       probe_label(t.fp4_probe), q6k, t.delta_ept);
  return fmt::format("fp4 v2 w{} bps{} d{}, {}, dn e{}", t.fp4_warps, t.fp4_blocks_per_sm, t.fp4_depth, q6k,
                     t.delta_ept);
}

}  // namespace qwen35::cuda
