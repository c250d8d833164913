// Sampling candidates on the device (see topk.h).
//
// The normalizer (samplers without top-k): the first histogram pass also
// finds the largest key (the best adjusted logit), a kernel sums the
// weights of each 32 consecutive ids, one block sums the tree's upper
// levels; every operation is the one softmax_norm.h performs on the host.
//
// The ranking of the sampler (larger adjusted logit, then lower id) is the
// order of a 32-bit key per token: the float's bits made monotonic (NaN
// counts as -inf, -0 as +0), ties broken by id. A radix search over the
// keys, 12 + 12 + 8 bits, finds the bucket where the count of tokens at or
// above it reaches k; it stops at the first level where that count is at
// most kTopkCap, and the tokens at or above the bucket's lowest key are
// compacted. The host ranks them and keeps k, which equals select_topk.
#include "common.cuh"
#include "launch.cuh"
#include "softmax_norm.h"
#include "topk.h"

namespace qwen35::cuda {

namespace {

constexpr int kPasses = 3;
// Key bits of each pass: 31..20, 19..8, 7..0.
template <int kPass>
struct Level {
  static constexpr int kShift = kPass == 0 ? 20 : kPass == 1 ? 8 : 0;
  static constexpr int kBins = kPass == 2 ? 256 : 4096;
};
constexpr int kMaxBins = 4096;
constexpr int kHistThreads = 512;
constexpr int kHistBlocks = 64;
constexpr int kPickThreads = 1024;

struct State {
  uint32_t prefix;     // key bits fixed by the passes so far
  uint32_t mask;
  int32_t above;       // tokens whose key is above every key with this prefix
  int32_t done;
  uint32_t threshold;  // when done: the candidates are the keys >= threshold
  int32_t count;
  int32_t failed;
  int32_t slots;       // compaction counter
  uint32_t max_key;    // the largest ranking key (the best adjusted logit)
};

struct Scratch {
  State state;
  int32_t bins[kPasses][kMaxBins];
};

__device__ __forceinline__ float sanitize(float v) { return v != v ? -INFINITY : v; }

__device__ __forceinline__ uint32_t rank_key(float v) {
  uint32_t u = __float_as_uint(sanitize(v));
  if (u == 0x80000000u) u = 0;  // -0 ranks as +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// adjust_logit() of lib/sampler.h, operation for operation (the intrinsics
// keep the compiler from fusing the product and the difference into an FMA).
__device__ __forceinline__ float adjust(float l, const LogitAdjust& a, float rp) {
  if (a.flags & LogitAdjust::kBias) l = __fadd_rn(l, a.bias);
  if (a.flags & LogitAdjust::kPenalty) {
    if (rp != 1.0f) l = l > 0 ? __fdiv_rn(l, rp) : __fmul_rn(l, rp);
    l = __fsub_rn(l, a.sub);
  }
  return sanitize(l);
}

// Zero the scratch; apply the adjustments (ids are distinct: no races).
__global__ void topk_prep_kernel(float* logits, int32_t V, const TopkParams* params, const LogitAdjust* adjust_list,
                                 Scratch* s) {
  pdl_prologue();
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, nt = int64_t(gridDim.x) * blockDim.x;
  int32_t* words = reinterpret_cast<int32_t*>(s);
  for (int64_t i = tid; i < int64_t(sizeof(Scratch) / 4); i += nt) words[i] = 0;
  const TopkParams p = *params;
  for (int64_t i = tid; i < p.n_adjust; i += nt) {
    const LogitAdjust a = adjust_list[i];
    if (a.id >= 0 && a.id < V) logits[a.id] = adjust(logits[a.id], a, p.repeat_penalty);
  }
}

// Counts the keys with the state's prefix by their next kBits[pass] bits.
template <int kPass>
__global__ void __launch_bounds__(kHistThreads) topk_hist_kernel(const float* logits, int32_t V, Scratch* s) {
  pdl_prologue();
  constexpr int kNb = Level<kPass>::kBins, kSh = Level<kPass>::kShift;
  __shared__ int32_t hist[kNb];
  if (s->state.done) return;
  const uint32_t prefix = s->state.prefix, mask = s->state.mask;
  for (int i = threadIdx.x; i < kNb; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  uint32_t best = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < V; i += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t key = rank_key(logits[i]);
    best = max(best, key);
    if ((key & mask) == prefix) atomicAdd(&hist[(key >> kSh) & (kNb - 1)], 1);
  }
  if constexpr (kPass == 0) {
    // The first pass sees every key: the maximum (for the normalizer).
    for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xFFFFFFFFu, best, o));
    if (threadIdx.x % kWarp == 0) atomicMax(&s->state.max_key, best);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kNb; i += blockDim.x)
    if (hist[i]) atomicAdd(&s->bins[kPass][i], hist[i]);
}

// One block: walks the bins from the top to the one where the count of
// keys at or above it reaches k; stops there or narrows the prefix to it.
template <int kPass>
__global__ void __launch_bounds__(kPickThreads) topk_pick_kernel(const TopkParams* params, Scratch* s) {
  pdl_prologue();
  constexpr int kNb = Level<kPass>::kBins, kSh = Level<kPass>::kShift;
  constexpr int kPer = (kNb + kPickThreads - 1) / kPickThreads;  // bins per thread, highest first
  __shared__ int32_t scan[kPickThreads];
  __shared__ int32_t found;
  // Everything read from the state before the first barrier: one thread
  // rewrites it below.
  if (s->state.done) return;
  const int32_t k = params->k, above = s->state.above;
  const uint32_t prefix = s->state.prefix;
  const int t = threadIdx.x;
  // Thread t owns bins kNb-1-t*kPer down to kNb-(t+1)*kPer.
  int32_t mine = 0;
  for (int j = 0; j < kPer; ++j) {
    const int b = kNb - 1 - t * kPer - j;
    if (b >= 0) mine += s->bins[kPass][b];
  }
  scan[t] = mine;
  if (t == 0) found = 0;
  __syncthreads();
  // Inclusive scan (Hillis-Steele) over the threads: bins above and at mine.
  for (int off = 1; off < kPickThreads; off <<= 1) {
    const int32_t add = t >= off ? scan[t - off] : 0;
    __syncthreads();
    scan[t] += add;
    __syncthreads();
  }
  int32_t cum = above + scan[t] - mine;  // keys above my bins
  for (int j = 0; j < kPer; ++j) {
    const int b = kNb - 1 - t * kPer - j;
    if (b < 0) break;
    const int32_t c = s->bins[kPass][b];
    if (cum < k && cum + c >= k) {  // exactly one bin crosses k
      State& st = s->state;
      const uint32_t edge = prefix | (uint32_t(b) << kSh);
      if (cum + c <= kTopkCap || kPass == kPasses - 1) {
        st.threshold = edge;
        st.count = cum + c;
        st.failed = cum + c > kTopkCap;
        st.done = 1;
      } else {
        st.above = cum;
        st.prefix = edge;
        st.mask |= uint32_t(kNb - 1) << kSh;
      }
      found = 1;
    }
    cum += c;
  }
  __syncthreads();
  if (t == 0 && !found) {  // k above the tokens left (k > V): nothing sensible to select
    s->state.failed = 1;
    s->state.done = 1;
  }
}

__global__ void topk_compact_kernel(const float* logits, int32_t V, Scratch* s, TopkOut* out) {
  pdl_prologue();
  const bool failed = s->state.failed || !s->state.done;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    out->count = failed ? 0 : s->state.count;
    out->failed = failed;
  }
  if (failed) return;
  const uint32_t thr = s->state.threshold;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < V; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = logits[i];
    if (rank_key(v) >= thr) {
      const int32_t slot = atomicAdd(&s->state.slots, 1);
      if (slot < kTopkCap) out->cands[slot] = TokenLogit{int32_t(i), sanitize(v)};
    }
  }
}

// The float of a ranking key (keys of sanitized logits: no NaN).
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// The normalizer's first level: warp j sums the weights of ids 32j ..
// 32j+31 in id order (softmax_normalizer's leaves): each lane computes one
// weight, lane 0 adds them up in lane order.
constexpr int kNormThreads = 256;

__global__ void __launch_bounds__(kNormThreads) norm_leaf_kernel(const float* logits, int32_t V,
                                                                 const TopkParams* params, const Scratch* s,
                                                                 double* leaves) {
  static_assert(kNormFan == kWarp, "a leaf is a warp");
  pdl_prologue();
  const float temp = params->temperature;
  if (!(temp > 0.0f)) return;
  const int64_t j = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t m = (int64_t(V) + kNormFan - 1) / kNormFan;
  if (j >= m) return;  // whole warps
  const double inv = sn_div(1.0, double(temp));
  const double mx = sn_mul(double(key_value(s->state.max_key)), inv);
  const int64_t i = kNormFan * j + lane;
  const double w = i < V ? det_weight(logits[i], inv, mx) : 0.0;
  const int cnt = int(min(int64_t(kNormFan), int64_t(V) - kNormFan * j));
  double sum = 0.0;
  for (int k = 0; k < cnt; ++k) sum = sn_add(sum, __shfl_sync(0xFFFFFFFFu, w, k));
  if (lane == 0) leaves[j] = sum;
}

// The other levels in one block: level by level, thread j sums entries
// 32j .. 32j+31 of the level below in order (ping-pong between two arrays;
// plain loads: the block's barrier makes its own stores visible).
constexpr int kTreeThreads = 1024;

__global__ void __launch_bounds__(kTreeThreads) norm_tree_kernel(int32_t V, const TopkParams* params, double* a,
                                                                 double* b, TopkOut* out) {
  pdl_prologue();
  if (!(params->temperature > 0.0f)) {
    if (threadIdx.x == 0) out->total = 0.0;
    return;
  }
  int64_t m = (int64_t(V) + kNormFan - 1) / kNormFan;
  double* src = a;
  double* dst = b;
  while (m > 1) {
    const int64_t up = (m + kNormFan - 1) / kNormFan;
    for (int64_t j = threadIdx.x; j < up; j += blockDim.x) {
      double sum = 0.0;
      for (int64_t i = kNormFan * j; i < m && i < kNormFan * (j + 1); ++i) sum = sn_add(sum, src[i]);
      dst[j] = sum;
    }
    __syncthreads();
    double* t = src;
    src = dst;
    dst = t;
    m = up;
  }
  if (threadIdx.x == 0) out->total = src[0];
}

template <int kPass>
cudaError_t pass(const float* logits, int32_t V, const TopkParams* params, Scratch* s, cudaStream_t stream) {
  cudaError_t e = launch(topk_hist_kernel<kPass>, dim3(kHistBlocks), dim3(kHistThreads), 0, stream, logits, V, s);
  if (e != cudaSuccess) return e;
  return launch(topk_pick_kernel<kPass>, dim3(1), dim3(kPickThreads), 0, stream, params, s);
}

}  // namespace

// Scratch: the selection's state and bins, then two arrays of ceil(V/32)
// doubles for the normalizer's tree.
static int64_t norm_leaves(int32_t V) { return (int64_t(V) + kNormFan - 1) / kNormFan; }
static size_t norm_offset() { return (sizeof(Scratch) + 15) / 16 * 16; }

size_t topk_scratch_bytes(int32_t V) { return norm_offset() + 2 * size_t(norm_leaves(V)) * sizeof(double); }

cudaError_t topk_candidates(float* logits, int32_t V, const TopkParams* params, const LogitAdjust* adjust,
                            void* scratch, TopkOut* out, cudaStream_t stream) {
  static_assert(sizeof(LogitAdjust) == 16 && sizeof(TokenLogit) == 8, "layouts shared with the host");
  if (V < 1 || !logits || !params || !scratch || !out) return cudaErrorInvalidValue;
  Scratch* s = static_cast<Scratch*>(scratch);
  cudaError_t e = launch(topk_prep_kernel, dim3(8), dim3(256), 0, stream, logits, V, params, adjust, s);
  if (e == cudaSuccess) e = pass<0>(logits, V, params, s, stream);
  if (e == cudaSuccess) e = pass<1>(logits, V, params, s, stream);
  if (e == cudaSuccess) e = pass<2>(logits, V, params, s, stream);
  if (e == cudaSuccess)
    e = launch(topk_compact_kernel, dim3(kHistBlocks), dim3(kHistThreads), 0, stream, logits, V, s, out);
  // The normalizer (kernels that return at once without a temperature, so
  // that one captured graph serves every sampler).
  double* leaves = reinterpret_cast<double*>(static_cast<uint8_t*>(scratch) + norm_offset());
  const int64_t m = norm_leaves(V);
  if (e == cudaSuccess)
    e = launch(norm_leaf_kernel, dim3(unsigned((m * kWarp + kNormThreads - 1) / kNormThreads)), dim3(kNormThreads), 0,
               stream,
               logits, V, params, static_cast<const Scratch*>(s), leaves);
  if (e == cudaSuccess)
    e = launch(norm_tree_kernel, dim3(1), dim3(kTreeThreads), 0, stream, V, params, leaves, leaves + m, out);
  return e;
}

}  // namespace qwen35::cuda
