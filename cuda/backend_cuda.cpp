// The CUDA backend: the qwen35 forward pass (spec §4) and the MTP head
// (§5.1) on one GPU, one function per layer kind, mirroring
// lib/cpu/backend_cpu.cpp (the reference it is tested against).
//
// Activations and the residual stream are F32; the KV caches are F16; the
// delta-net and conv states are F32 in the CPU backend's layouts, so saved
// states are interchangeable between the backends. All work of a context is
// queued on its own stream and a call synchronizes once, at its end.
//
// Matrix products: up to 8 rows use the decode kernels (tensor-core NVFP4 on
// the tiled layout, the Q6_K row kernel, or the generic one for other
// types); larger batches dequantize weight blocks to BF16 and use cuBLASLt.
// A decode step (1 or 2 rows, token input) is captured once per shape into a
// CUDA graph and replayed: positions and cache offsets live in device memory,
// so the same graph serves every step.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "attention.h"
#include "backend.h"
#include "chain_fp4.h"
#include "conv.h"
#include "cpu/ops.h"
#include "delta_chunked.h"
#include "delta_net.h"
#include "dequant_ahead.h"
#include "device_model.h"
#include "elementwise.h"
#include "gemm.h"
#include "matmul.h"
#include "norm.h"
#include "rope.h"
#include "topk.h"
#include "tuning.h"

namespace qwen35 {

namespace {

using namespace cuda;

// Largest logits block of the LM head at once (it runs in row chunks).
constexpr uint64_t kLogitsChunkBytes = 64ull << 20;
// Elements of the dequantized-weight scratch of the GEMM path.
constexpr int64_t kDequantElems = 32ll << 20;
// Key-range splits of decode attention (rows <= kMatvecMaxCols).
constexpr int kMaxAttnSplits = 32;
// Rows whose outputs go through pinned staging (and may use a CUDA graph).
constexpr int64_t kStageRows = 2;
// Batches of kMatvecMaxCols+1 .. this many rows run the NVFP4 projections as
// chunked decode matvecs (QWEN35_CUDA_MEDIUM_ROWS overrides; 0 = never).
constexpr int64_t kMediumRowsDefault = 16;

// Weight rows per dequantized block of the GEMM path (the scratch holds
// `elems` elements, at least 64 rows): blocks start at multiples of 64 rows
// so that the output columns they write stay 256-byte aligned for cuBLASLt.
int64_t gemm_rows_per_block(int64_t elems, int64_t K) { return std::max<int64_t>(64, elems / K / 64 * 64); }

// Carves one device allocation into aligned sub-buffers.
class Carver {
 public:
  template <typename T>
  void add(T** p, uint64_t count) {
    items_.push_back({reinterpret_cast<void**>(p), total_});
    total_ += (count * sizeof(T) + 255) / 256 * 256;
  }
  uint64_t total() const { return total_; }
  void assign(void* base) {
    for (auto& [p, off] : items_) *p = static_cast<uint8_t*>(base) + off;
  }

 private:
  std::vector<std::pair<void**, uint64_t>> items_;
  uint64_t total_ = 0;
};

bool env_off(const char* name) {
  const char* v = std::getenv(name);
  return v && std::string(v) == "0";
}

enum class Epi { Store, Add, SwiGLU };

// The delta net's gated RMSNorm, fused into its output projection's
// prologue when the tensor-core kernel runs it.
struct GatedNorm {
  const float* z = nullptr;
  int64_t ldz = 0;
  const float* w = nullptr;
  int dv = 0;
};

// The delta net's causal conv, fused into its input projection's epilogue
// when the tensor-core kernel runs it (1 or 2 rows).
struct ConvEpi {
  const float* taps = nullptr;
  float* window = nullptr;
  int64_t channels = 0;
  int k = 0;
  int snapshot_row = -1;
  float* snapshot = nullptr;
};

// Where a forward pass leaves its outputs (host memory, pinned or not).
struct OutPlan {
  float* hidden = nullptr;    // [n, D] post-norm
  float* prenorm = nullptr;   // [n, D]
  float* logits = nullptr;    // [n - logits_first, V]
  int32_t* argmax = nullptr;  // [n - logits_first]
  bool topk = false;          // sampling candidates of rows logits_first.. (to the pinned TopkOuts)
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const Model& m, const DeviceModel& dm, const BackendParams& p) : m_(m), dm_(dm), hp_(m.hp), p_(p) {}
  ~CudaBackend() override;

  Status init();
  const char* name() const override { return "cuda"; }
  Status eval(const EvalBatch& b) override { return run_eval(b, nullptr); }
  Status eval_greedy(const EvalBatch& b, int32_t* argmax) override { return run_eval(b, argmax); }
  Status eval_topk(const EvalBatch& b, const TopKRequest* reqs, TopKResult* cands) override;
  Status topk_row(int32_t r, std::vector<float>* adjusted) override;
  // Moves the adjusted rows of the last device selection to Backend's host
  // copies before logits_ is rewritten by something other than a main pass.
  Status keep_topk_rows_on_host();
  bool device_topk() const override { return true; }
  Status eval_mtp(const MtpBatch& b) override { return run_mtp(b, nullptr); }
  Status eval_mtp_greedy(const MtpBatch& b, int32_t* argmax) override { return run_mtp(b, argmax); }
  bool device_argmax() const override { return true; }
  void reset() override;
  Status save_recurrent(int slot) override;
  Status restore_recurrent(int slot) override;
  uint64_t state_bytes(int32_t n_rows, int32_t n_mtp_rows) const override;
  Status write_state(int32_t n_rows, int32_t n_mtp_rows, uint8_t* dst) override;
  Status read_state(int32_t n_rows, int32_t n_mtp_rows, const uint8_t* src) override;
  uint64_t memory_bytes() const override;

 private:
  struct KVCache {
    uint16_t* k = nullptr;  // [n_ctx, Hkv*Dh] F16
    uint16_t* v = nullptr;
  };
  // (MTP pass?, rows, snapshot row, first logits row, hidden?, prenorm?, logits?, argmax?, candidates?)
  using GraphKey = std::tuple<bool, int64_t, int32_t, int32_t, bool, bool, bool, bool, bool>;

  // One of argmax (ids) or topk (a request and candidates per logits row) may be set.
  Status run_eval(const EvalBatch& b, int32_t* argmax, const TopKRequest* topk = nullptr,
                  TopKResult* cands = nullptr);
  // The sampling-candidate buffers (allocated on the first request).
  Status ensure_topk();
  Status run_mtp(const MtpBatch& b, int32_t* argmax);
  // Queue the main model over n rows already in h_ (or as tokens in
  // d_tokens_): layers, final norm, outputs.
  Status enqueue_eval(int64_t n, int32_t snapshot_row, int32_t logits_first, bool from_embd, const OutPlan& out,
                      bool check_abort);
  Status launch_graph(const GraphKey& key, const std::function<Status()>& enqueue);
  Status select_device() { return cuda_status(cudaSetDevice(dm_.device), "selecting the CUDA device"); }
  bool aborted() const { return abort_flag && abort_flag->load(std::memory_order_relaxed); }
  // Waits for the stream; also reports a fused FFN that gave up waiting.
  Status sync(const char* what);
  Status upload_inputs(const int32_t* tokens, const int32_t* pos, int64_t n, int32_t n_past);
  Status ensure_slot(int slot, const char* what);

  // y = W x for the generic and GEMM paths (one GGUF part).
  Status mm(const MatView& w, const float* x, int64_t ldx, int64_t n, float* y, int64_t ldy, bool add);
  // y = W rmsnorm(x) (no norm when nw is null); Epi::SwiGLU needs a gate_up
  // stack and writes silu(gate) * up, [n, F] with row stride ldy.
  Status project(const DevLinear& W, const float* x, int64_t ldx, int64_t n, const float* nw, float* y, int64_t ldy,
                 Epi epi, const ConvEpi* conv = nullptr, const GatedNorm* gated = nullptr);
  // Batches with BF16 GEMMs on an NVFP4 stack (no FP4 GEMM): the caller may
  // write the activations to xb_ in BF16 itself (fused into the kernel that
  // produces them) and call fp4_gemm_bf16.
  bool direct_bf16(const DevLinear& W, int64_t n) const {
    return n > kMatvecMaxCols && gemm_type_ == GemmType::BF16 && W.fp4.present() && !(W.blas.present() && fp4_gemm_) &&
           !medium(W, n);
  }
  // Small batches (kMatvecMaxCols < n <= medium_rows_, QWEN35_CUDA_MEDIUM_ROWS):
  // NVFP4 projections as decode matvecs over row chunks of kMatvecMaxCols,
  // reading the weights once per chunk instead of dequantizing all of them
  // for a GEMM.
  bool medium(const DevLinear& W, int64_t n) const {
    return W.fp4.present() && n > kMatvecMaxCols && n <= medium_rows_;
  }
  // out (+)= W xb_, xb_: [n, W.cols] BF16 activations.
  Status fp4_gemm_bf16(const DevLinear& W, int64_t n, float* out, int64_t ldo, bool add);
  Status embed(const DevEmbed& E, const int32_t* tokens, int64_t n, float* out, int64_t ldo);
  Status head(const DevEmbed& E, const float* hn, int64_t n, float* logits, int64_t ldl);

  // Layers read the residual stream h and add their output into it.
  Status attention_layer(const DevLayer& L, const KVCache& kv, int64_t n, float* h);
  Status delta_net_layer(const DevLayer& L, int il, int64_t n, int32_t snapshot_row, float* h);
  Status ffn(const DevLayer& L, int64_t n, float* h);
  // Appends a to the queued chain (flushing a full one first).
  Status queue_fp4(Fp4MatvecArgs a, const DevLinear& W);
  // Launches the queued chain (one launch, or stage by stage where the chain
  // kernel cannot run it); drop_chain forgets it (after an error).
  Status flush_chain();
  void drop_chain() {
    chain_.stages = 0;
    chaining_ = false;
  }
  Status decoder_layer(int il, const DevLayer& L, int64_t n, int32_t snapshot_row);
  // Logits (or their argmax) of n rows of normalized hidden states.
  Status lm_head(const DevEmbed& E, const float* hn, int64_t n, float* logits, int32_t* argmax);

  float* slot_ptr(int slot, const float* live) const {
    return slots_[slot].as<float>() + (live - rs_buf_.as<float>());
  }

  const Model& m_;
  const DeviceModel& dm_;
  const HParams& hp_;
  BackendParams p_;
  cudaStream_t stream_ = nullptr;
  Gemm gemm_;
  GemmType gemm_type_ = GemmType::BF16;
  int attn_splits_ = 1;
  bool use_graphs_ = true;
  bool fp4_gemm_ = false;            // block-scaled FP4 GEMMs for batches (Blackwell)
  bool tiled_attn_ = true;           // batches: the tiled attention kernel
  bool fused_attn_ = true;           // decode: q/k norm, RoPE and attention in one kernel
  bool mma_attn_ = true;             // batches: the tensor-core attention (QWEN35_CUDA_ATTN_MMA=0: F32 tiles)
  int64_t medium_rows_ = kMediumRowsDefault;  // batches up to this many rows: chunked NVFP4 matvecs (see medium())
  int delta_ept_ = 8;                // delta rule: state elements per thread
  float* delta_scratch_ = nullptr;   // batches: the chunked delta rule's scratch (QWEN35_CUDA_DELTA_CHUNKED=1)
  std::map<GraphKey, cudaGraphExec_t> graphs_;
  // The NVFP4 projection that runs after each one in a step (in_proj ->
  // out_proj -> gate_up -> down -> the next layer's in_proj), for kernel 3's
  // L2 prefetch (tuning fp4_prefetch).
  std::map<const DevLinear*, const DevLinear*> next_linear_;
  DequantAhead deq_ahead_;           // prefill: NVFP4 dequantization one projection ahead
  bool use_deq_ahead_ = false;

  // Rotary tables.
  DeviceBuffer rope_buf_;
  RopeTables rope_;

  // Per-sequence state.
  DeviceBuffer kv_buf_;
  std::vector<KVCache> kv_;          // per main layer (empty for delta-net layers)
  KVCache mtp_kv_;
  DeviceBuffer rs_buf_;              // recurrent state of every delta-net layer, one block
  std::vector<float*> conv_, ssm_;   // per main layer: [Kc-1, Cconv] and [Hv, dv, dk] inside rs_buf_
  DeviceBuffer slots_[kNumSlots];    // copies of rs_buf_

  // Inputs: [n_past, pad x3, tokens[nb], pos[3*nb], argmax[nb]] as int32.
  PinnedBuffer in_host_;
  DeviceBuffer in_dev_;
  // Per-row rotation tables of decode-sized batches (rope_tables of
  // lib/cpu/ops.h on the host, uploaded with the positions):
  // [kMatvecMaxCols, n_rot]. They shorten a decode step's latency chain;
  // larger batches keep the kernels' own trigonometry, which runs in
  // parallel instead of on the host before the batch is queued. Null with
  // QWEN35_CUDA_ROPE_TABLES=0 (the kernels compute them in double).
  RopeConfig rope_rc_;
  PinnedBuffer rope_host_;
  DeviceBuffer rope_dev_;
  float* d_rope_cs_ = nullptr;
  int32_t* d_npast_ = nullptr;
  int32_t* d_tokens_ = nullptr;
  int32_t* d_pos_ = nullptr;
  int32_t* d_argmax_ = nullptr;
  // Pinned staging of small outputs: [kStageRows, D] x2, [kStageRows, V], ints.
  PinnedBuffer stage_;
  float* st_hidden_ = nullptr;
  float* st_prenorm_ = nullptr;
  float* st_logits_ = nullptr;
  int32_t* st_argmax_ = nullptr;
  // Sampling candidates of up to kTopkRows rows (a decode step, a verify
  // pass): [TopkParams x rows, LogitAdjust[kTopkMaxAdjust] x rows, TopkOut x
  // rows] pinned and on the device, plus the selection's scratch on the device.
  static constexpr int32_t kTopkMaxAdjust = 16384;
  static constexpr int32_t kTopkRows = 2;
  PinnedBuffer topk_host_;
  DeviceBuffer topk_dev_;
  TopkParams *h_topk_params_ = nullptr, *d_topk_params_ = nullptr;
  LogitAdjust *h_topk_adjust_ = nullptr, *d_topk_adjust_ = nullptr;
  TopkOut *h_topk_out_ = nullptr, *d_topk_out_ = nullptr;
  void* d_topk_scratch_ = nullptr;
  int32_t topk_rows_on_device_ = 0;  // rows of the last eval_topk left adjusted in logits_ (topk_row)

  // Scratch, sized for n_batch rows.
  DeviceBuffer scratch_;
  float *h_ = nullptr, *xn_ = nullptr;                      // [nb, D]
  float* mix_ = nullptr;                                    // [nb, ld_mix_]: in_proj outputs
  int64_t ld_mix_ = 0;
  float *q_ = nullptr, *o_ = nullptr;                       // [nb, Hq*Dh]
  float *part_m_ = nullptr, *part_l_ = nullptr, *part_o_ = nullptr;
  int* attn_counters_ = nullptr;                            // [kFusedAttnRows, Hq], zero between calls
  float *uc_ = nullptr, *so_ = nullptr;                     // [nb, Cconv], [nb, Cv]
  float* gu_ = nullptr;                                     // [nb, 2F]: gate | up, then silu(gate) * up
  float *mtp_in_ = nullptr, *mtp_hid_ = nullptr;            // [nb, 2D], [nb, D]
  float* logits_ = nullptr;                                 // [logit_rows_, V]
  uint8_t* argmax_scratch_ = nullptr;                       // argmax_scratch_bytes(logit_rows_), zero between calls
  int64_t logit_rows_ = 1;
  float* fp4_partial_ = nullptr;                            // split-K scratch of the decode kernels
  int* fp4_counters_ = nullptr;
  // Chains of NVFP4 decode projections in one launch (chain_fp4.h, tuning
  // fp4_chain): 1 = each FFN (gate/up, down), 2 = also each layer's tail
  // (output projection, FFN, the next layer's input projection). While
  // chaining_, project() queues its NVFP4 decode products in chain_ (with
  // a split-K scratch per stage) and flush_chain() launches them: before
  // any other kernel, and at the end of the layers.
  int chain_mode_ = 0;
  bool chaining_ = false;
  Fp4ChainArgs chain_;
  const DevLinear* chain_site_ = nullptr;               // the first stage's weight: whose counters
  std::map<const DevLinear*, int*> chain_sync_;         // counters per call site
  float* chain_partial_[kFp4ChainMaxStages] = {};
  int* chain_counters_[kFp4ChainMaxStages] = {};
  int* chain_sync_base_ = nullptr;
  int32_t* st_fault_ = nullptr;                         // pinned: a chain gave up waiting
  uint16_t* xb_ = nullptr;                                  // [nb, max K] BF16 activations
  void* deq_ = nullptr;                                     // dequantized weight block
  int64_t deq_elems_ = 0;                                   // its size in elements
  uint8_t *xq_ = nullptr, *xqs_ = nullptr;                  // NVFP4 activations and their scales
  float* fp4_work_ = nullptr;                               // [g, alpha, amax bits, pad, beta 0, beta 1]
};

CudaBackend::~CudaBackend() {
  cudaSetDevice(dm_.device);
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  if (stream_) cudaStreamDestroy(stream_);
}

Status CudaBackend::init() {
  QWEN35_TRY(select_device());
  QWEN35_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "creating a CUDA stream");
  if (const char* g = std::getenv("QWEN35_CUDA_GEMM"); g && std::string(g) == "f32") gemm_type_ = GemmType::F32;
  use_graphs_ = !env_off("QWEN35_CUDA_GRAPHS");
  tiled_attn_ = !env_off("QWEN35_CUDA_TILED_ATTN");
  fused_attn_ = !env_off("QWEN35_CUDA_FUSED_ATTN");
  // Defaults from run 10 (H100, 4B NVFP4): the tensor-core prefill attention
  // took 1.46 ms of a 512-token prefill against 1.68 ms for the F32 tiles;
  // chunked matvecs prefilled 16 rows at 2,145 tok/s against 1,704 with
  // dequantization + GEMMs (32 rows: 2,315 against 3,378, so GEMMs there).
  mma_attn_ = !env_off("QWEN35_CUDA_ATTN_MMA");
  if (const char* mr = std::getenv("QWEN35_CUDA_MEDIUM_ROWS")) medium_rows_ = std::max(0, std::atoi(mr));
  delta_ept_ = decode_tuning().delta_ept;
  for (size_t il = 0; il < dm_.layers.size(); ++il) {
    const DevLayer& L = dm_.layers[il];
    next_linear_[&L.in_proj] = &L.out_proj;
    next_linear_[&L.out_proj] = &L.gate_up;
    next_linear_[&L.gate_up] = &L.down;
    if (il + 1 < dm_.layers.size()) next_linear_[&L.down] = &dm_.layers[il + 1].in_proj;
  }
  const char* chunked = std::getenv("QWEN35_CUDA_DELTA_CHUNKED");
  const bool delta_chunked = chunked && std::string(chunked) == "1";
  set_pdl(!env_off("QWEN35_CUDA_PDL"));
  QWEN35_TRY(gemm_.init(32ull << 20));

  const int64_t D = hp_.n_embd, nb = p_.n_batch, nctx = p_.n_ctx, V = hp_.n_vocab;
  const int64_t qd = hp_.q_dim(), kvd = hp_.kv_dim(), F = hp_.n_ff, Dh = hp_.head_dim;
  const int64_t C = hp_.ssm_conv_dim(), Cv = hp_.ssm_inner, Hv = hp_.ssm_heads_v;

  // Rotary tables with the CPU reference's formulas (lib/cpu/ops.cpp).
  {
    RopeConfig rc;
    rc.n_rot = hp_.n_rot;
    std::copy(hp_.rope_sections, hp_.rope_sections + 4, rc.sections);
    rc.base = hp_.rope_base;
    const int half = hp_.n_rot / 2;
    std::vector<double> inv(static_cast<size_t>(std::max(half, 1)));
    std::vector<int32_t> comp(inv.size());
    for (int i = 0; i < half; ++i) {
      inv[size_t(i)] = std::pow(double(rc.base), -2.0 * i / double(rc.n_rot));
      comp[size_t(i)] = rope_component(rc, i);
    }
    QWEN35_TRY(rope_buf_.alloc(inv.size() * (sizeof(double) + sizeof(int32_t)), "the rotary tables"));
    QWEN35_CUDA_TRY(cudaMemcpy(rope_buf_.as<double>(), inv.data(), inv.size() * sizeof(double), cudaMemcpyHostToDevice),
                    "uploading the rotary tables");
    int32_t* dcomp = reinterpret_cast<int32_t*>(rope_buf_.as<double>() + inv.size());
    QWEN35_CUDA_TRY(cudaMemcpy(dcomp, comp.data(), comp.size() * sizeof(int32_t), cudaMemcpyHostToDevice),
                    "uploading the rotary tables");
    rope_.n_rot = hp_.n_rot;
    rope_.inv_freq = rope_buf_.as<double>();
    rope_.comp = dcomp;
    rope_rc_ = rc;
    if (hp_.n_rot > 0 && !env_off("QWEN35_CUDA_ROPE_TABLES")) {
      const size_t bytes = size_t(kMatvecMaxCols) * size_t(hp_.n_rot) * sizeof(float);
      QWEN35_TRY(rope_host_.alloc(bytes, "the rotation-table staging buffer"));
      QWEN35_TRY(rope_dev_.alloc(bytes, "the rotation tables of a batch"));
      d_rope_cs_ = rope_dev_.as<float>();
    }
  }

  // KV caches (F16) of the attention layers and the MTP layer.
  int n_attn = 0;
  for (int il = 0; il < hp_.n_layer; ++il) n_attn += hp_.is_attn_layer(il);
  const uint64_t kv_elems = uint64_t(nctx) * uint64_t(kvd);
  QWEN35_TRY(kv_buf_.alloc((uint64_t(n_attn) + (m_.mtp ? 1 : 0)) * 2 * kv_elems * 2, "the KV cache"));
  kv_.resize(size_t(hp_.n_layer));
  uint16_t* kvp = kv_buf_.as<uint16_t>();
  auto next_kv = [&]() {
    KVCache c{kvp, kvp + kv_elems};
    kvp += 2 * kv_elems;
    return c;
  };
  for (int il = 0; il < hp_.n_layer; ++il)
    if (hp_.is_attn_layer(il)) kv_[size_t(il)] = next_kv();
  if (m_.mtp) mtp_kv_ = next_kv();

  // Recurrent state: per delta-net layer [Kc-1, C] conv window then [Hv, dv, dk].
  const uint64_t conv_elems = uint64_t(hp_.ssm_conv - 1) * uint64_t(C);
  const uint64_t ssm_elems = uint64_t(Cv) * uint64_t(hp_.ssm_state);
  const uint64_t n_rec = uint64_t(hp_.n_layer - n_attn);
  QWEN35_TRY(rs_buf_.alloc(std::max<uint64_t>(1, n_rec * (conv_elems + ssm_elems)) * 4, "the recurrent state"));
  conv_.assign(size_t(hp_.n_layer), nullptr);
  ssm_.assign(size_t(hp_.n_layer), nullptr);
  float* rp = rs_buf_.as<float>();
  for (int il = 0; il < hp_.n_layer; ++il) {
    if (hp_.is_attn_layer(il)) continue;
    conv_[size_t(il)] = rp;
    ssm_[size_t(il)] = rp + conv_elems;
    rp += conv_elems + ssm_elems;
  }

  // Inputs and staging.
  QWEN35_TRY(in_host_.alloc(size_t(4 + 4 * nb) * sizeof(int32_t), "the input staging buffer"));
  QWEN35_TRY(in_dev_.alloc(size_t(4 + 5 * nb) * sizeof(int32_t), "the input buffer"));
  d_npast_ = in_dev_.as<int32_t>();
  d_tokens_ = d_npast_ + 4;
  d_pos_ = d_tokens_ + nb;
  d_argmax_ = d_pos_ + 3 * nb;
  QWEN35_TRY(stage_.alloc(size_t(kStageRows) * size_t(2 * D + V + 1) * 4 + 64, "the output staging buffer"));
  st_hidden_ = stage_.as<float>();
  st_prenorm_ = st_hidden_ + kStageRows * D;
  st_logits_ = st_prenorm_ + kStageRows * D;
  st_argmax_ = reinterpret_cast<int32_t*>(st_logits_ + kStageRows * V);
  st_fault_ = st_argmax_ + kStageRows;  // inside the 64 spare bytes
  *st_fault_ = 0;

  // Scratch.
  // Decode attention splits the keys over up to 32 blocks per head (about
  // 64 keys per block at a full context).
  attn_splits_ = int(std::clamp<int64_t>((nctx + 63) / 64, 1, kMaxAttnSplits));
  logit_rows_ = std::clamp<int64_t>(int64_t(kLogitsChunkBytes / (uint64_t(V) * 4)), 1, nb);
  ld_mix_ = std::max(2 * qd + 2 * kvd, C + Cv + 2 * Hv);
  const int64_t max_k = std::max({D * 2, qd, Cv, 2 * F});
  const int64_t part_rows = std::max<int64_t>(nb, int64_t(kMatvecMaxCols) * attn_splits_);
  Carver cv;
  cv.add(&h_, nb * D);
  cv.add(&xn_, nb * D);
  cv.add(&mix_, nb * ld_mix_);
  cv.add(&q_, nb * qd);
  cv.add(&o_, nb * qd);
  cv.add(&part_m_, part_rows * hp_.n_head);
  cv.add(&part_l_, part_rows * hp_.n_head);
  cv.add(&part_o_, part_rows * hp_.n_head * Dh);
  cv.add(&attn_counters_, uint64_t(kFusedAttnRows) * hp_.n_head);
  cv.add(&uc_, nb * C);
  cv.add(&so_, nb * Cv);
  cv.add(&gu_, nb * 2 * F);
  if (m_.mtp) {
    cv.add(&mtp_in_, nb * 2 * D);
    cv.add(&mtp_hid_, nb * D);
  }
  // The chunked delta rule for batches (off by default: not yet measured on a GPU).
  if (delta_chunked && nb > kMatvecMaxCols && delta_chunked_supported(hp_.ssm_state, hp_.ssm_dv))
    cv.add(&delta_scratch_, delta_chunked_scratch_floats(nb, Hv, hp_.ssm_state, hp_.ssm_dv));
  cv.add(&logits_, logit_rows_ * V);
  cv.add(&argmax_scratch_, argmax_scratch_bytes(logit_rows_));
  cv.add(&fp4_partial_, std::max<uint64_t>(1, dm_.fp4_partial_floats));
  cv.add(&fp4_counters_, std::max<uint64_t>(1, dm_.fp4_counter_ints));
  chain_mode_ = decode_tuning().fp4_kernel == 3 ? decode_tuning().fp4_chain : 0;
  std::vector<const DevLinear*> sites;
  if (chain_mode_ > 0) {
    std::vector<const DevLayer*> layers;
    for (const DevLayer& L : dm_.layers) layers.push_back(&L);
    if (dm_.mtp) layers.push_back(&dm_.mtp->block);
    for (const DevLayer* L : layers)
      for (const DevLinear* W : {&L->in_proj, &L->out_proj, &L->gate_up, &L->down}) sites.push_back(W);
    for (int s = 0; s < kFp4ChainMaxStages; ++s) {
      cv.add(&chain_partial_[s], std::max<uint64_t>(1, dm_.fp4_partial_floats));
      cv.add(&chain_counters_[s], std::max<uint64_t>(1, dm_.fp4_counter_ints));
    }
    cv.add(&chain_sync_base_, sites.size() * fp4_chain_sync_ints());
  }
  {  // the GEMM path (batches, and an LM head too wide for the decode kernel's shared memory)
    cv.add(&xb_, nb * max_k);
    deq_elems_ = std::max<int64_t>(kDequantElems, 64 * max_k);
    cv.add(reinterpret_cast<float**>(&deq_), uint64_t(gemm_type_ == GemmType::F32 ? deq_elems_ : deq_elems_ / 2));
    fp4_gemm_ = dm_.fp4_gemm && nb > kMatvecMaxCols;
    if (fp4_gemm_) {
      cv.add(&xq_, uint64_t(nb * max_k / 2));
      cv.add(&xqs_, blockscale_bytes(nb, max_k));
      cv.add(&fp4_work_, 8);
    }
  }
  // Prefill with BF16 GEMMs: dequantize ahead on a second stream
  // (QWEN35_CUDA_DEQ_AHEAD=0: in row blocks before each GEMM).
  if (nb > kMatvecMaxCols && gemm_type_ == GemmType::BF16 && !fp4_gemm_ && !env_off("QWEN35_CUDA_DEQ_AHEAD")) {
    const char* cache = std::getenv("QWEN35_CUDA_DEQ_CACHE");
    QWEN35_TRY(deq_ahead_.init(dm_, cache && std::string(cache) == "1"));
    use_deq_ahead_ = deq_ahead_.bytes() > 0;
  }
  QWEN35_TRY(scratch_.alloc(cv.total(), "scratch buffers"));  // zeroed: the split-K counters start at 0
  cv.assign(scratch_.as());
  for (size_t i = 0; i < sites.size(); ++i) chain_sync_[sites[i]] = chain_sync_base_ + i * fp4_chain_sync_ints();
  return Status::Ok();
}

Status CudaBackend::sync(const char* what) {
  QWEN35_CUDA_TRY(cudaStreamSynchronize(stream_), what);
  if (st_fault_ && *st_fault_ != 0) {
    *st_fault_ = 0;
    return Error(QWEN35_ERR_BACKEND, "a chain of NVFP4 products gave up waiting for its inputs during {}; its "
                 "results are wrong (set QWEN35_CUDA_FP4_CHAIN=0)", what);
  }
  return Status::Ok();
}

Status CudaBackend::ensure_slot(int slot, const char* what) {
  if (slots_[slot].bytes() == 0) QWEN35_TRY(slots_[slot].alloc(rs_buf_.bytes(), what));
  return Status::Ok();
}

Status CudaBackend::upload_inputs(const int32_t* tokens, const int32_t* pos, int64_t n, int32_t n_past) {
  const int64_t nb = p_.n_batch;
  int32_t* hp = in_host_.as<int32_t>();
  hp[0] = n_past;
  for (int64_t i = 0; i < n; ++i) hp[4 + i] = tokens ? tokens[i] : -1;
  std::memcpy(hp + 4 + nb, pos, size_t(3 * n) * sizeof(int32_t));
  QWEN35_CUDA_TRY(cudaMemcpyAsync(d_npast_, hp, size_t(4 + nb + 3 * n) * sizeof(int32_t), cudaMemcpyHostToDevice,
                                  stream_),
                  "uploading the batch");
  if (d_rope_cs_ && n <= kMatvecMaxCols) {
    const int64_t nr = hp_.n_rot, half = nr / 2;
    float* cs = rope_host_.as<float>();
    for (int64_t i = 0; i < n; ++i) rope_tables(rope_rc_, pos + 3 * i, cs + i * nr, cs + i * nr + half);
    QWEN35_CUDA_TRY(cudaMemcpyAsync(d_rope_cs_, cs, size_t(n * nr) * sizeof(float), cudaMemcpyHostToDevice, stream_),
                    "uploading the rotation tables");
  }
  return Status::Ok();
}

// ---- matrix products ---------------------------------------------------------------

Status CudaBackend::mm(const MatView& w, const float* x, int64_t ldx, int64_t n, float* y, int64_t ldy, bool add) {
  if (n <= kMatvecMaxCols)
    return cuda_status(matvec_generic(w, x, ldx, int(n), y, ldy, add ? Accum::Add : Accum::Store, stream_),
                       "a matrix-vector product");
  const int64_t K = w.cols, N = w.rows;
  const void* X = x;
  int64_t ldX = ldx;
  if (gemm_type_ == GemmType::BF16) {
    QWEN35_CUDA_TRY(convert_rows_bf16(x, ldx, n, K, xb_, stream_), "converting activations");
    X = xb_;
    ldX = K;
  }
  const int64_t rows_per = gemm_rows_per_block(deq_elems_, K);
  for (int64_t r0 = 0; r0 < N; r0 += rows_per) {
    const int64_t nr = std::min(rows_per, N - r0);
    if (gemm_type_ == GemmType::F32)
      QWEN35_CUDA_TRY(dequant_rows_f32(w, r0, nr, static_cast<float*>(deq_), stream_), "dequantizing a weight");
    else
      QWEN35_CUDA_TRY(dequant_rows_bf16(w, r0, nr, static_cast<uint16_t*>(deq_), stream_), "dequantizing a weight");
    QWEN35_TRY(gemm_.run(gemm_type_, deq_, nr, K, X, ldX, n, y + r0, ldy, w.scale, add, stream_));
  }
  return Status::Ok();
}

Status CudaBackend::project(const DevLinear& W, const float* x, int64_t ldx, int64_t n, const float* nw, float* y,
                            int64_t ldy, Epi epi, const ConvEpi* conv, const GatedNorm* gated) {
  const int64_t K = W.cols;
  if (conv && !(W.fp4.present() && n <= 2)) return Error(QWEN35_ERR_BACKEND, "the fused conv needs the NVFP4 kernel");
  if (gated && !(W.fp4.present() && n <= kMatvecMaxCols))
    return Error(QWEN35_ERR_BACKEND, "the fused gated norm needs the NVFP4 kernel");
  if (medium(W, n) && !conv && !gated) {
    // Row chunks through the decode kernels (the norm prologue and the
    // SwiGLU / add epilogues work per row, so chunks compose).
    for (int64_t r0 = 0; r0 < n; r0 += kMatvecMaxCols)
      QWEN35_TRY(project(W, x + r0 * ldx, ldx, std::min<int64_t>(kMatvecMaxCols, n - r0), nw, y + r0 * ldy, ldy, epi));
    return Status::Ok();
  }
  if (W.fp4.present() && n <= kMatvecMaxCols) {
    Fp4MatvecArgs a;
    a.w = W.fp4;
    a.n = int(n);
    a.x = x;
    a.ldx = ldx;
    a.norm = nw;
    a.eps = hp_.eps;
    a.y = y;
    a.ldy = ldy;
    a.epilogue = epi == Epi::SwiGLU ? Fp4Epilogue::SwiGLU : epi == Epi::Add ? Fp4Epilogue::Add : Fp4Epilogue::Store;
    a.partial = fp4_partial_;
    a.counters = fp4_counters_;
    if (auto it = next_linear_.find(&W); it != next_linear_.end() && it->second->fp4.present()) a.next = it->second->fp4;
    if (gated) {
      a.gate_z = gated->z;
      a.ldz = gated->ldz;
      a.gate_w = gated->w;
      a.gate_dv = gated->dv;
    }
    if (conv) {
      a.epilogue = Fp4Epilogue::Conv;
      a.conv_taps = conv->taps;
      a.conv_window = conv->window;
      a.conv_channels = conv->channels;
      a.conv_k = conv->k;
      a.conv_snapshot_row = conv->snapshot_row;
      a.conv_snapshot = conv->snapshot;
    }
    if (chaining_) return queue_fp4(a, W);
    return cuda_status(fp4_matvec(a, dm_.sms, stream_), "an NVFP4 matrix-vector product");
  }
  QWEN35_TRY(flush_chain());  // (a queued chain runs before anything else)
  // SwiGLU: [gate | up] into gu_ (2F wide), then combined into y.
  const bool swiglu_out = epi == Epi::SwiGLU;
  float* out = swiglu_out ? gu_ : y;
  const int64_t ldo = swiglu_out ? W.rows : ldy;
  const bool add = epi == Epi::Add;
  bool done = false;
  if (direct_bf16(W, n)) {  // the norm (or the conversion) writes the BF16 activations in one pass
    if (nw) QWEN35_CUDA_TRY(rmsnorm_rows_bf16(x, ldx, nw, n, K, hp_.eps, xb_, K, stream_), "a norm");
    else QWEN35_CUDA_TRY(convert_rows_bf16(x, ldx, n, K, xb_, stream_), "converting activations");
    QWEN35_TRY(fp4_gemm_bf16(W, n, out, ldo, add));
    done = true;
  } else if (nw) {
    QWEN35_CUDA_TRY(rmsnorm_rows(x, ldx, nw, n, K, hp_.eps, xn_, K, stream_), "a norm");
    x = xn_;
    ldx = K;
  }
  if (!done && W.blas.present() && fp4_gemm_) {  // Blackwell: NVFP4 activations, FP4 tensor cores
    QWEN35_CUDA_TRY(fp4blas_quantize(x, ldx, n, K, W.blas.scale, xq_, xqs_, fp4_work_, stream_),
                    "quantizing activations");
    const Status st = gemm_.run_fp4(W.blas.data, W.blas.scales, W.rows, K, xq_, xqs_, n, out, ldo, fp4_work_ + 1,
                                    fp4_work_ + (add ? 5 : 4), stream_);
    if (st.ok()) {
      done = true;
    } else if (st.code() == QWEN35_ERR_UNSUPPORTED) {
      m_.log.warn("{}; using BF16 GEMMs", st.message());
      fp4_gemm_ = false;
    } else {
      return st;
    }
  }
  if (!done && W.fp4.present()) {  // batched: dequantize the tiled weight (ahead, or in row blocks)
    if (gemm_type_ == GemmType::BF16) {
      QWEN35_CUDA_TRY(convert_rows_bf16(x, ldx, n, K, xb_, stream_), "converting activations");
      QWEN35_TRY(fp4_gemm_bf16(W, n, out, ldo, add));
    } else {
      const int64_t rows_per = gemm_rows_per_block(deq_elems_, K);
      for (int64_t r0 = 0; r0 < W.rows; r0 += rows_per) {
        const int64_t nr = std::min(rows_per, W.rows - r0);
        QWEN35_CUDA_TRY(fp4_dequant_rows_f32(W.fp4, r0, nr, static_cast<float*>(deq_), stream_), "dequantizing");
        QWEN35_TRY(gemm_.run(gemm_type_, deq_, nr, K, x, ldx, n, out + r0, ldo, W.fp4.scale, add, stream_));
      }
    }
  } else if (!done) {
    for (size_t i = 0; i < W.parts.size(); ++i) QWEN35_TRY(mm(W.parts[i], x, ldx, n, out + W.offsets[i], ldo, add));
  }
  if (swiglu_out) {
    const int64_t F = W.rows / 2;
    QWEN35_CUDA_TRY(swiglu(gu_, W.rows, gu_ + F, W.rows, n, F, stream_), "SwiGLU");
    if (y != gu_ || ldy != W.rows) return Error(QWEN35_ERR_BACKEND, "SwiGLU output must be the gate/up buffer");
  }
  return Status::Ok();
}

Status CudaBackend::fp4_gemm_bf16(const DevLinear& W, int64_t n, float* out, int64_t ldo, bool add) {
  const int64_t K = W.cols;
  if (use_deq_ahead_ && deq_ahead_.fits(W)) return deq_ahead_.gemm(W, xb_, K, n, out, ldo, add, gemm_, stream_);
  const int64_t rows_per = gemm_rows_per_block(deq_elems_, K);
  for (int64_t r0 = 0; r0 < W.rows; r0 += rows_per) {
    const int64_t nr = std::min(rows_per, W.rows - r0);
    QWEN35_CUDA_TRY(fp4_dequant_rows_bf16(W.fp4, r0, nr, static_cast<uint16_t*>(deq_), stream_), "dequantizing");
    QWEN35_TRY(gemm_.run(GemmType::BF16, deq_, nr, K, xb_, K, n, out + r0, ldo, W.fp4.scale, add, stream_));
  }
  return Status::Ok();
}

Status CudaBackend::embed(const DevEmbed& E, const int32_t* tokens, int64_t n, float* out, int64_t ldo) {
  if (E.q6kt.present()) return cuda_status(q6kt_embedding_rows(E.q6kt, tokens, n, out, ldo, stream_), "the embedding");
  if (E.q6k.present()) return cuda_status(q6k_embedding_rows(E.q6k, tokens, n, out, ldo, stream_), "the embedding");
  return cuda_status(embedding_rows(E.gguf, tokens, n, out, ldo, stream_), "the embedding");
}

Status CudaBackend::head(const DevEmbed& E, const float* hn, int64_t n, float* logits, int64_t ldl) {
  if (!E.repacked()) return mm(E.gguf, hn, hp_.n_embd, n, logits, ldl, false);
  const Q6kRows32& q = E.q6k;
  const Q6kTiled& qt = E.q6kt;
  if (qt.present() && q6kt_matvec_fits(qt, int(n)))
    return cuda_status(q6kt_matvec(qt, hn, hp_.n_embd, int(n), logits, ldl, Accum::Store, stream_), "the LM head");
  if (q.present() && q6k_matvec_fits(q, int(n)))
    return cuda_status(q6k_matvec(q, hn, hp_.n_embd, int(n), logits, ldl, Accum::Store, stream_), "the LM head");
  // The GEMM path: row blocks dequantized from the repacked layout.
  const int64_t K = E.cols(), rows = E.rows();
  const void* X = hn;
  int64_t ldX = hp_.n_embd;
  if (gemm_type_ == GemmType::BF16) {
    QWEN35_CUDA_TRY(convert_rows_bf16(hn, hp_.n_embd, n, K, xb_, stream_), "converting activations");
    X = xb_;
    ldX = K;
  }
  const int64_t rows_per = gemm_rows_per_block(deq_elems_, K);
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per) {
    const int64_t nr = std::min(rows_per, rows - r0);
    cudaError_t e;
    if (gemm_type_ == GemmType::F32)
      e = qt.present() ? q6kt_dequant_rows_f32(qt, r0, nr, static_cast<float*>(deq_), stream_)
                       : q6k_dequant_rows_f32(q, r0, nr, static_cast<float*>(deq_), stream_);
    else
      e = qt.present() ? q6kt_dequant_rows_bf16(qt, r0, nr, static_cast<uint16_t*>(deq_), stream_)
                       : q6k_dequant_rows_bf16(q, r0, nr, static_cast<uint16_t*>(deq_), stream_);
    QWEN35_CUDA_TRY(e, "dequantizing");
    QWEN35_TRY(gemm_.run(gemm_type_, deq_, nr, K, X, ldX, n, logits + r0, ldl, E.scale(), false, stream_));
  }
  return Status::Ok();
}

// ---- layers ------------------------------------------------------------------------

// Full attention (spec §4.4): fused q|gate, k, v projection of the
// normalized input, q/k norm + RoPE + cache write, causal GQA attention with
// the sigmoid gate, output projection added into h.
Status CudaBackend::attention_layer(const DevLayer& L, const KVCache& kv, int64_t n, float* h) {
  const int64_t D = hp_.n_embd, Dh = hp_.head_dim, qd = hp_.q_dim(), kvd = hp_.kv_dim();
  const int64_t ld = L.in_proj.rows;  // [n, Hq*(q|gate) | k | v]
  QWEN35_TRY(project(L.in_proj, h, D, n, L.attn_norm, mix_, ld, Epi::Store));
  QWEN35_TRY(flush_chain());  // the queued layer tail (chains) ends with this input projection
  QkvRopeArgs r;
  r.n = n;
  r.n_head = hp_.n_head;
  r.n_head_kv = hp_.n_head_kv;
  r.head_dim = Dh;
  r.eps = hp_.eps;
  r.qg = mix_;
  r.ldqg = ld;
  r.k = mix_ + 2 * qd;
  r.ldk = ld;
  r.v = mix_ + 2 * qd + kvd;
  r.ldv = ld;
  r.q_norm = L.q_norm;
  r.k_norm = L.k_norm;
  r.pos = d_pos_;
  r.rope_cs = n <= kMatvecMaxCols ? d_rope_cs_ : nullptr;  // tables for decode-sized batches only
  r.rope = rope_;
  r.q_out = q_;
  r.k_cache = kv.k;
  r.v_cache = kv.v;
  r.n_past = d_npast_;
  AttnArgs a;
  a.n = n;
  a.n_head = hp_.n_head;
  a.n_head_kv = hp_.n_head_kv;
  a.head_dim = Dh;
  a.scale = 1.0f / std::sqrt(float(Dh));
  a.q = q_;
  a.k_cache = kv.k;
  a.v_cache = kv.v;
  a.gate = mix_ + Dh;
  a.ldgate = ld;
  a.gate_stride = 2 * Dh;
  a.n_past = d_npast_;
  a.o = o_;
  a.splits = n <= kMatvecMaxCols ? attn_splits_ : 1;
  a.part_m = part_m_;
  a.part_l = part_l_;
  a.part_o = part_o_;
  a.tiled = tiled_attn_ && n > kMatvecMaxCols;
  a.tensor_cores = mma_attn_;
  if (fused_attn_ && n <= kFusedAttnRows) {
    FusedAttnArgs f;
    f.attn = a;
    f.rope = r;
    f.counters = attn_counters_;
    QWEN35_CUDA_TRY(attention_fused(f, stream_), "attention");
  } else {
    QWEN35_CUDA_TRY(qkv_norm_rope(r, stream_), "q/k norm and RoPE");
    QWEN35_CUDA_TRY(attention(a, stream_), "attention");
  }
  return project(L.out_proj, o_, qd, n, nullptr, h, D, Epi::Add);
}

// Gated delta net (spec §4.5): fused qkv, z, beta, alpha projection, causal
// conv + SiLU, the gated delta rule, gated RMSNorm, output projection.
Status CudaBackend::delta_net_layer(const DevLayer& L, int il, int64_t n, int32_t snapshot_row, float* h) {
  const int64_t D = hp_.n_embd, C = hp_.ssm_conv_dim(), Cv = hp_.ssm_inner, Hv = hp_.ssm_heads_v;
  const int64_t ld = L.in_proj.rows;  // [n, qkv C | z Cv | beta Hv | alpha Hv]
  float* const window = conv_[size_t(il)];
  float* const window_snap = snapshot_row >= 0 ? slot_ptr(kRollbackSlot, window) : nullptr;
  // Post-conv q|k|v: fused into the projection (written over its output) or
  // a separate kernel into uc_.
  const float* uc = uc_;
  int64_t ldu = C;
  if (L.in_proj.fp4.present() && n <= 2) {
    ConvEpi ce;
    ce.taps = L.conv1d;
    ce.window = window;
    ce.channels = C;
    ce.k = hp_.ssm_conv;
    ce.snapshot_row = snapshot_row;
    ce.snapshot = window_snap;
    QWEN35_TRY(project(L.in_proj, h, D, n, L.attn_norm, mix_, ld, Epi::Store, &ce));
    uc = mix_;
    ldu = ld;
  } else {
    QWEN35_TRY(project(L.in_proj, h, D, n, L.attn_norm, mix_, ld, Epi::Store));
    QWEN35_TRY(flush_chain());
    ConvArgs c;
    c.n = n;
    c.C = C;
    c.K = hp_.ssm_conv;
    c.u = mix_;
    c.ldu = ld;
    c.taps = L.conv1d;
    c.window = window;
    c.out = uc_;
    c.snapshot_row = snapshot_row;
    c.snapshot = window_snap;
    QWEN35_CUDA_TRY(conv_silu(c, stream_), "the causal conv");
  }
  QWEN35_TRY(flush_chain());  // the queued layer tail (chains) ends with the input projection
  DeltaNetArgs d;
  d.n = n;
  d.Hk = hp_.ssm_heads_k;
  d.Hv = Hv;
  d.dk = hp_.ssm_state;
  d.dv = hp_.ssm_dv;
  d.eps = hp_.eps;
  d.uc = uc;
  d.ldu = ldu;
  d.b = mix_ + C + Cv;
  d.ldb = ld;
  d.a = mix_ + C + Cv + Hv;
  d.lda = ld;
  d.ssm_a = L.ssm_a;
  d.dt_bias = L.dt_bias;
  d.state = ssm_[size_t(il)];
  d.out = so_;
  d.snapshot_row = snapshot_row;
  d.snapshot = snapshot_row >= 0 ? slot_ptr(kRollbackSlot, ssm_[size_t(il)]) : nullptr;
  d.elems_per_thread = delta_ept_;
  if (delta_scratch_ && n > kMatvecMaxCols && snapshot_row < 0)
    QWEN35_CUDA_TRY(delta_net_chunked(d, delta_scratch_, stream_), "the chunked delta rule");
  else
    QWEN35_CUDA_TRY(delta_net(d, stream_), "the delta rule");
  if (L.out_proj.fp4.present() && n <= kMatvecMaxCols && fp4_gated_supported(L.out_proj.fp4, int(hp_.ssm_dv))) {
    GatedNorm gn;
    gn.z = mix_ + C;
    gn.ldz = ld;
    gn.w = L.ssm_norm;
    gn.dv = int(hp_.ssm_dv);
    return project(L.out_proj, so_, Cv, n, nullptr, h, D, Epi::Add, nullptr, &gn);
  }
  if (direct_bf16(L.out_proj, n)) {  // the gated norm writes the GEMM's BF16 activations
    QWEN35_CUDA_TRY(gated_rmsnorm_bf16(so_, mix_ + C, ld, L.ssm_norm, n, Hv, hp_.ssm_dv, hp_.eps, xb_, stream_),
                    "the gated norm");
    return fp4_gemm_bf16(L.out_proj, n, h, D, true);
  }
  QWEN35_CUDA_TRY(gated_rmsnorm(so_, mix_ + C, ld, L.ssm_norm, n, Hv, hp_.ssm_dv, hp_.eps, stream_), "the gated norm");
  return project(L.out_proj, so_, Cv, n, nullptr, h, D, Epi::Add);
}

// SwiGLU FFN (spec §4.3) of the post-attention-normalized stream, added into h.
Status CudaBackend::ffn(const DevLayer& L, int64_t n, float* h) {
  const int64_t D = hp_.n_embd, F = hp_.n_ff;
  if (direct_bf16(L.down, n)) {  // silu(gate) * up goes straight to BF16 as the down projection's input
    QWEN35_TRY(project(L.gate_up, h, D, n, L.post_norm, gu_, 2 * F, Epi::Store));
    QWEN35_CUDA_TRY(swiglu_bf16(gu_, 2 * F, gu_ + F, 2 * F, n, F, xb_, F, stream_), "SwiGLU");
    return fp4_gemm_bf16(L.down, n, h, D, true);
  }
  if (chain_mode_ > 0 && !chaining_ && n <= kMatvecMaxCols) {  // gate/up and down as one chain
    chaining_ = true;
    Status st = project(L.gate_up, h, D, n, L.post_norm, gu_, 2 * F, Epi::SwiGLU);
    if (st.ok()) st = project(L.down, gu_, 2 * F, n, nullptr, h, D, Epi::Add);
    if (st.ok()) st = flush_chain();
    drop_chain();
    return st;
  }
  QWEN35_TRY(project(L.gate_up, h, D, n, L.post_norm, gu_, 2 * F, Epi::SwiGLU));
  return project(L.down, gu_, 2 * F, n, nullptr, h, D, Epi::Add);
}

Status CudaBackend::queue_fp4(Fp4MatvecArgs a, const DevLinear& W) {
  if (chain_.stages == kFp4ChainMaxStages) QWEN35_TRY(flush_chain());
  const int s = chain_.stages;
  a.next = Fp4Tiled{};  // (kernel 3's L2 prefetch hint: not in a chain)
  if (s == 0) {
    chain_site_ = &W;
  } else {
    // By slice when a reads the SwiGLU outputs of the stage before (the FFN's
    // down projection), else after the whole stage before.
    const Fp4MatvecArgs& pr = chain_.stage[s - 1];
    const bool slice = pr.epilogue == Fp4Epilogue::SwiGLU && a.x == pr.y && a.ldx == pr.ldy && !a.norm &&
                       !a.gate_z && a.w.pairing == Fp4Pairing::Plain && a.w.cols == pr.w.rows;
    chain_.dep[s] = slice ? Fp4Dep::Slice : Fp4Dep::Full;
  }
  a.partial = chain_partial_[s];
  a.counters = chain_counters_[s];
  chain_.stage[s] = a;
  chain_.stages = s + 1;
  return Status::Ok();
}

Status CudaBackend::flush_chain() {
  const int ns = chain_.stages;
  chain_.stages = 0;
  if (ns == 0) return Status::Ok();
  if (ns > 1) {
    Fp4ChainArgs c = chain_;
    c.stages = ns;
    const auto it = chain_sync_.find(chain_site_);
    c.sync = it != chain_sync_.end() ? it->second : nullptr;
    c.fault = st_fault_;
    if (fp4_chain_supported(c, dm_.sms))
      return cuda_status(fp4_chain(c, dm_.sms, stream_), "a chain of NVFP4 products");
  }
  for (int s = 0; s < ns; ++s) {  // one launch per stage
    Fp4MatvecArgs a = chain_.stage[s];
    a.partial = fp4_partial_;
    a.counters = fp4_counters_;
    QWEN35_CUDA_TRY(fp4_matvec(a, dm_.sms, stream_), "an NVFP4 matrix-vector product");
  }
  return Status::Ok();
}

Status CudaBackend::decoder_layer(int il, const DevLayer& L, int64_t n, int32_t snapshot_row) {
  if (L.is_attn) QWEN35_TRY(attention_layer(L, kv_[size_t(il)], n, h_));
  else QWEN35_TRY(delta_net_layer(L, il, n, snapshot_row, h_));
  return ffn(L, n, h_);
}

Status CudaBackend::lm_head(const DevEmbed& E, const float* hn, int64_t n, float* logits, int32_t* argmax) {
  const int64_t D = hp_.n_embd, V = hp_.n_vocab;
  for (int64_t r0 = 0; r0 < n; r0 += logit_rows_) {
    const int64_t nr = std::min(logit_rows_, n - r0);
    QWEN35_TRY(head(E, hn + r0 * D, nr, logits_, V));
    if (argmax) {
      QWEN35_CUDA_TRY(argmax_rows(logits_, V, nr, V, d_argmax_ + r0, argmax_scratch_, stream_), "argmax");
    } else {
      QWEN35_CUDA_TRY(cudaMemcpyAsync(logits + r0 * V, logits_, size_t(nr * V) * sizeof(float), cudaMemcpyDeviceToHost,
                                      stream_),
                      "copying logits");
    }
  }
  if (argmax)
    QWEN35_CUDA_TRY(cudaMemcpyAsync(argmax, d_argmax_, size_t(n) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
                    "copying the argmax");
  return Status::Ok();
}

// ---- evaluation ----------------------------------------------------------------------

Status CudaBackend::enqueue_eval(int64_t n, int32_t snapshot_row, int32_t logits_first, bool from_embd,
                                 const OutPlan& out, bool check_abort) {
  const int64_t D = hp_.n_embd;
  if (!from_embd) QWEN35_TRY(embed(dm_.token_embd, d_tokens_, n, h_, D));
  // Layer tails as chains (tuning fp4_chain 2): each layer's output
  // projection, FFN and the next layer's input projection in one launch.
  chaining_ = chain_mode_ == 2 && n <= kMatvecMaxCols;
  for (int il = 0; il < hp_.n_layer; ++il) {
    if (check_abort && aborted()) {
      drop_chain();
      return Error(QWEN35_ERR_CANCELLED, "decode aborted");
    }
    Status st = decoder_layer(il, dm_.layers[size_t(il)], n, snapshot_row);
    if (!st.ok()) {
      drop_chain();
      return st.prefix(fmt::format("layer {}: ", il));
    }
  }
  const Status flushed = flush_chain();
  drop_chain();
  QWEN35_TRY(flushed);
  if (out.prenorm)
    QWEN35_CUDA_TRY(cudaMemcpyAsync(out.prenorm, h_, size_t(n * D) * sizeof(float), cudaMemcpyDeviceToHost, stream_),
                    "copying hidden states");
  QWEN35_CUDA_TRY(rmsnorm_rows(h_, D, dm_.output_norm, n, D, hp_.eps, xn_, D, stream_), "output_norm");
  if (out.hidden)
    QWEN35_CUDA_TRY(cudaMemcpyAsync(out.hidden, xn_, size_t(n * D) * sizeof(float), cudaMemcpyDeviceToHost, stream_),
                    "copying hidden states");
  if (out.topk) {
    // The rows' logits stay on the device; the selection adjusts them in place.
    const int64_t V = hp_.n_vocab, rows = n - logits_first;
    QWEN35_TRY(head(*dm_.output, xn_ + logits_first * D, rows, logits_, V));
    for (int64_t r = 0; r < rows; ++r)
      QWEN35_CUDA_TRY(topk_candidates(logits_ + r * V, int32_t(V), d_topk_params_ + r,
                                      d_topk_adjust_ + r * kTopkMaxAdjust, d_topk_scratch_, d_topk_out_ + r, stream_),
                      "selecting sampling candidates");
    QWEN35_CUDA_TRY(cudaMemcpyAsync(h_topk_out_, d_topk_out_, size_t(rows) * sizeof(TopkOut), cudaMemcpyDeviceToHost,
                                    stream_),
                    "copying sampling candidates");
  } else if (logits_first < n && (out.logits || out.argmax)) {
    QWEN35_TRY(lm_head(*dm_.output, xn_ + logits_first * D, n - logits_first, out.logits, out.argmax));
  }
  return Status::Ok();
}

Status CudaBackend::launch_graph(const GraphKey& key, const std::function<Status()>& enqueue) {
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    QWEN35_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "capturing a CUDA graph");
    Status st = enqueue();
    cudaGraph_t graph = nullptr;
    const cudaError_t e = cudaStreamEndCapture(stream_, &graph);
    if (!st.ok()) {
      if (graph) cudaGraphDestroy(graph);
      return st;
    }
    QWEN35_CUDA_TRY(e, "capturing a CUDA graph");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t ie = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    QWEN35_CUDA_TRY(ie, "instantiating a CUDA graph");
    it = graphs_.emplace(key, exec).first;
  }
  return cuda_status(cudaGraphLaunch(it->second, stream_), "launching a CUDA graph");
}

Status CudaBackend::ensure_topk() {
  if (topk_dev_.bytes()) return Status::Ok();
  const size_t params = kTopkRows * sizeof(TopkParams);
  const size_t head = params + size_t(kTopkRows) * size_t(kTopkMaxAdjust) * sizeof(LogitAdjust);
  const size_t outs = kTopkRows * sizeof(TopkOut);
  QWEN35_TRY(topk_host_.alloc(head + outs, "the sampling-candidate staging buffer"));
  QWEN35_TRY(topk_dev_.alloc(head + outs + topk_scratch_bytes(int32_t(hp_.n_vocab)), "the sampling-candidate buffers"));
  auto carve = [params, head](void* base, TopkParams** p, LogitAdjust** a, TopkOut** o) {
    uint8_t* b = static_cast<uint8_t*>(base);
    *p = reinterpret_cast<TopkParams*>(b);
    *a = reinterpret_cast<LogitAdjust*>(b + params);
    *o = reinterpret_cast<TopkOut*>(b + head);
  };
  carve(topk_host_.as(), &h_topk_params_, &h_topk_adjust_, &h_topk_out_);
  carve(topk_dev_.as(), &d_topk_params_, &d_topk_adjust_, &d_topk_out_);
  d_topk_scratch_ = static_cast<uint8_t*>(topk_dev_.as()) + head + outs;
  return Status::Ok();
}

Status CudaBackend::eval_topk(const EvalBatch& b, const TopKRequest* reqs, TopKResult* cands) {
  topk_rows_on_device_ = 0;
  const int64_t rows = b.n - b.logits_first;
  if (rows <= 0) return eval(b);
  // Requests the selection does not cover take the rows to the host.
  bool device = rows <= kTopkRows && rows <= logit_rows_;
  for (int64_t r = 0; r < rows && device; ++r)
    device = reqs[r].k >= 1 && reqs[r].k <= Sampler::kMaxRequestK && reqs[r].k < hp_.n_vocab &&
             reqs[r].adjust.size() <= size_t(kTopkMaxAdjust);
  if (!device) return Backend::eval_topk(b, reqs, cands);
  QWEN35_TRY(select_device());
  QWEN35_TRY(ensure_topk());
  topk_rows_.clear();  // rows an earlier selection on the host left (topk_row must not return them)
  return run_eval(b, nullptr, reqs, cands);
}

Status CudaBackend::run_eval(const EvalBatch& b, int32_t* argmax, const TopKRequest* topk,
                             TopKResult* cands) {
  topk_rows_on_device_ = 0;  // logits_ is about to be rewritten
  const int64_t D = hp_.n_embd, V = hp_.n_vocab;
  if (b.n < 1 || b.n > p_.n_batch) return Error(QWEN35_ERR_INVALID_ARG, "batch of {} rows (limit {})", b.n, p_.n_batch);
  if (b.n_past < 0 || b.n_past + b.n > p_.n_ctx)
    return Error(QWEN35_ERR_CONTEXT_FULL, "rows {}..{} exceed the context size {}", b.n_past, b.n_past + b.n, p_.n_ctx);
  if (b.snapshot_row >= b.n) return Error(QWEN35_ERR_INVALID_ARG, "snapshot row {} is outside the batch", b.snapshot_row);
  QWEN35_TRY(select_device());
  if (b.snapshot_row >= 0) QWEN35_TRY(ensure_slot(kRollbackSlot, "a state snapshot"));
  const int64_t n = b.n;
  const int32_t lf = std::clamp(b.logits_first, 0, b.n);
  const bool want_logits = lf < n && (argmax || b.logits || topk);
  QWEN35_TRY(upload_inputs(b.embd ? nullptr : b.tokens, b.pos, n, b.n_past));
  if (topk) {  // the requests, before the graph that reads them
    for (int64_t r = 0; r < n - lf; ++r) {
      const TopKRequest& q = topk[r];
      h_topk_params_[r].k = q.k;
      h_topk_params_[r].n_adjust = int32_t(q.adjust.size());
      h_topk_params_[r].repeat_penalty = q.repeat_penalty;
      h_topk_params_[r].temperature = q.temperature;
      std::copy(q.adjust.begin(), q.adjust.end(), h_topk_adjust_ + r * kTopkMaxAdjust);
      if (!q.adjust.empty())
        QWEN35_CUDA_TRY(cudaMemcpyAsync(d_topk_adjust_ + r * kTopkMaxAdjust, h_topk_adjust_ + r * kTopkMaxAdjust,
                                        q.adjust.size() * sizeof(LogitAdjust), cudaMemcpyHostToDevice, stream_),
                        "uploading the sampling request");
    }
    QWEN35_CUDA_TRY(cudaMemcpyAsync(d_topk_params_, h_topk_params_, size_t(n - lf) * sizeof(TopkParams),
                                    cudaMemcpyHostToDevice, stream_),
                    "uploading the sampling request");
  }
  if (b.embd)
    QWEN35_CUDA_TRY(cudaMemcpyAsync(h_, b.embd, size_t(n * D) * sizeof(float), cudaMemcpyHostToDevice, stream_),
                    "uploading input embeddings");

  // Small outputs go through pinned staging (fixed addresses, as graphs need).
  const bool staged = n <= kStageRows;
  OutPlan out;
  if (staged) {
    out.hidden = b.hidden ? st_hidden_ : nullptr;
    out.prenorm = b.hidden_prenorm ? st_prenorm_ : nullptr;
    if (want_logits) {
      if (topk) out.topk = true;
      else if (argmax) out.argmax = st_argmax_;
      else out.logits = st_logits_;
    }
  } else {
    out.hidden = b.hidden;
    out.prenorm = b.hidden_prenorm;
    if (want_logits) {
      out.topk = topk != nullptr;
      out.logits = argmax || topk ? nullptr : b.logits;
      out.argmax = argmax;
    }
  }
  Status st;
  bool eager = true;
  if (staged && use_graphs_ && !b.embd) {
    const GraphKey key{false, n, b.snapshot_row, want_logits ? lf : int32_t(n), out.hidden != nullptr,
                       out.prenorm != nullptr, out.logits != nullptr, out.argmax != nullptr, out.topk};
    st = launch_graph(key, [&] { return enqueue_eval(n, b.snapshot_row, lf, false, out, false); });
    eager = !st.ok();
    if (eager) {  // nothing of the step ran: redo it without graphs from now on
      m_.log.warn("CUDA graph capture or launch failed ({}); continuing without graphs", st.message());
      use_graphs_ = false;
    }
  }
  if (eager) st = enqueue_eval(n, b.snapshot_row, lf, b.embd != nullptr, out, true);
  const Status done = sync("a decode");
  QWEN35_TRY(st);
  QWEN35_TRY(done);
  if (staged) {
    if (b.hidden) std::memcpy(b.hidden, st_hidden_, size_t(n * D) * sizeof(float));
    if (b.hidden_prenorm) std::memcpy(b.hidden_prenorm, st_prenorm_, size_t(n * D) * sizeof(float));
    if (out.logits) std::memcpy(b.logits, st_logits_, size_t((n - lf) * V) * sizeof(float));
    if (out.argmax) std::memcpy(argmax, st_argmax_, size_t(n - lf) * sizeof(int32_t));
  }
  if (out.topk) {
    for (int64_t r = 0; r < n - lf; ++r) {
      const TopkOut& o = h_topk_out_[r];
      if (!o.failed && o.count >= topk[r].k && o.count <= kTopkCap) {
        cands[r].best.assign(o.cands, o.cands + o.count);
        cands[r].total = o.total;
      } else {
        // More tokens tie at the k-th rank than the candidates hold: rank
        // the row (already adjusted in place) on the host.
        std::vector<float> row(static_cast<size_t>(V));
        QWEN35_CUDA_TRY(cudaMemcpy(row.data(), logits_ + r * V, size_t(V) * sizeof(float), cudaMemcpyDeviceToHost),
                        "copying a logits row");
        TopKRequest plain;
        plain.k = topk[r].k;
        plain.temperature = topk[r].temperature;
        select_candidates(row.data(), int32_t(V), plain, &cands[r]);
      }
    }
    topk_rows_on_device_ = int32_t(n - lf);
  }
  return Status::Ok();
}

Status CudaBackend::keep_topk_rows_on_host() {
  std::vector<std::vector<float>> rows(static_cast<size_t>(topk_rows_on_device_));
  for (int32_t r = 0; r < topk_rows_on_device_; ++r) QWEN35_TRY(topk_row(r, &rows[size_t(r)]));
  if (!rows.empty()) topk_rows_ = std::move(rows);
  topk_rows_on_device_ = 0;
  return Status::Ok();
}

Status CudaBackend::topk_row(int32_t r, std::vector<float>* adjusted) {
  if (topk_rows_on_device_ == 0) return Backend::topk_row(r, adjusted);  // the rows went through the host
  if (r < 0 || r >= topk_rows_on_device_)
    return Error(QWEN35_ERR_STATE, "no adjusted row {} from the last candidate selection", r);
  QWEN35_TRY(select_device());
  const int64_t V = hp_.n_vocab;
  adjusted->resize(size_t(V));
  // The selection adjusted the row in place; it stays until the next pass.
  QWEN35_CUDA_TRY(cudaMemcpy(adjusted->data(), logits_ + int64_t(r) * V, size_t(V) * sizeof(float),
                             cudaMemcpyDeviceToHost),
                  "copying an adjusted logits row");
  return Status::Ok();
}

// MTP head (spec §5.1): e = enorm(embed(token)), hh = hnorm(hidden),
// y = eh_proj [e | hh], a full-attention layer with its own KV cache,
// shared_head_norm and the LM head.
Status CudaBackend::run_mtp(const MtpBatch& b, int32_t* argmax) {
  // An MTP pass with logits computes them in logits_, where the last
  // candidate selection left its adjusted rows (topk_row may still fetch
  // them: a context with mtp_logits runs such a pass after every main pass);
  // those go to the host first. Passes that only fill the MTP cache leave
  // logits_ alone.
  if (b.logits_first < b.n) QWEN35_TRY(keep_topk_rows_on_host());
  if (!m_.mtp || !dm_.mtp) return Error(QWEN35_ERR_UNSUPPORTED, "the model has no MTP layer");
  if (b.n < 1 || b.n > p_.n_batch) return Error(QWEN35_ERR_INVALID_ARG, "MTP batch of {} rows", b.n);
  if (b.n_past < 0 || b.n_past + b.n > p_.n_ctx)
    return Error(QWEN35_ERR_CONTEXT_FULL, "MTP rows {}..{} exceed the context size {}", b.n_past, b.n_past + b.n,
                 p_.n_ctx);
  QWEN35_TRY(select_device());
  const DevMtp& M = *dm_.mtp;
  const int64_t D = hp_.n_embd, V = hp_.n_vocab, n = b.n;
  bool any_embd = false;
  for (int64_t i = 0; i < n; ++i) any_embd |= b.tokens[i] < 0;
  if (any_embd && !b.next_embd) return Error(QWEN35_ERR_INVALID_ARG, "MTP rows without a token need next_embd");
  QWEN35_TRY(upload_inputs(b.tokens, b.pos, n, b.n_past));
  // mtp_in_: [n, 2D] = [enorm(embedding) | hnorm(hidden)]
  if (any_embd)
    QWEN35_CUDA_TRY(cudaMemcpy2DAsync(mtp_in_, size_t(2 * D) * 4, b.next_embd, size_t(D) * 4, size_t(D) * 4, size_t(n),
                                      cudaMemcpyHostToDevice, stream_),
                    "uploading MTP input embeddings");
  QWEN35_CUDA_TRY(cudaMemcpyAsync(mtp_hid_, b.hidden, size_t(n * D) * 4, cudaMemcpyHostToDevice, stream_),
                  "uploading MTP hidden states");
  const int32_t lf = std::clamp(b.logits_first, 0, b.n);
  const bool want = lf < n && (b.logits || argmax);
  // Small passes (the draft) write their outputs to pinned staging, so that
  // they can be a CUDA graph like the decode step.
  const bool staged = n <= kStageRows && !any_embd;
  float* out_logits = want && !argmax ? (staged ? st_logits_ : b.logits) : nullptr;
  int32_t* out_argmax = want && argmax ? (staged ? st_argmax_ : argmax) : nullptr;
  auto body = [&]() -> Status {
    QWEN35_TRY(embed(*M.embed, d_tokens_, n, mtp_in_, 2 * D));
    QWEN35_CUDA_TRY(rmsnorm_rows(mtp_in_, 2 * D, M.enorm, n, D, hp_.eps, mtp_in_, 2 * D, stream_), "enorm");
    QWEN35_CUDA_TRY(rmsnorm_rows(mtp_hid_, D, M.hnorm, n, D, hp_.eps, mtp_in_ + D, 2 * D, stream_), "hnorm");
    QWEN35_TRY(project(M.eh_proj, mtp_in_, 2 * D, n, nullptr, h_, D, Epi::Store));
    QWEN35_TRY(attention_layer(M.block, mtp_kv_, n, h_));
    QWEN35_TRY(ffn(M.block, n, h_));
    if (want) {
      const int64_t nl = n - lf;
      QWEN35_CUDA_TRY(rmsnorm_rows(h_ + lf * D, D, M.shared_head_norm, nl, D, hp_.eps, xn_, D, stream_),
                      "shared_head_norm");
      QWEN35_TRY(lm_head(*M.head, xn_, nl, out_logits, out_argmax));
    }
    return Status::Ok();
  };
  Status st;
  bool eager = true;
  if (staged && use_graphs_) {
    const GraphKey key{true, n, -1, want ? lf : int32_t(n), false, false, out_logits != nullptr, out_argmax != nullptr,
                       false};
    st = launch_graph(key, body);
    eager = !st.ok();
    if (eager) {
      m_.log.warn("CUDA graph capture or launch failed ({}); continuing without graphs", st.message());
      use_graphs_ = false;
    }
  }
  if (eager) st = body();
  const Status done = sync("an MTP pass");
  if (!st.ok()) return st.prefix("MTP: ");
  QWEN35_TRY(done);
  if (staged && out_logits) std::memcpy(b.logits, st_logits_, size_t((n - lf) * V) * sizeof(float));
  if (staged && out_argmax) std::memcpy(argmax, st_argmax_, size_t(n - lf) * sizeof(int32_t));
  return Status::Ok();
}

// ---- state ---------------------------------------------------------------------------

void CudaBackend::reset() {
  if (!select_device().ok()) return;
  cudaMemsetAsync(rs_buf_.as(), 0, rs_buf_.bytes(), stream_);
  cudaStreamSynchronize(stream_);
}

Status CudaBackend::save_recurrent(int slot) {
  if (slot < 0 || slot >= kNumSlots) return Error(QWEN35_ERR_INVALID_ARG, "bad state slot {}", slot);
  QWEN35_TRY(select_device());
  QWEN35_TRY(ensure_slot(slot, "a state checkpoint"));
  QWEN35_CUDA_TRY(cudaMemcpyAsync(slots_[slot].as(), rs_buf_.as(), rs_buf_.bytes(), cudaMemcpyDeviceToDevice, stream_),
                  "saving the recurrent state");
  return sync("saving the recurrent state");
}

Status CudaBackend::restore_recurrent(int slot) {
  if (slot < 0 || slot >= kNumSlots || slots_[slot].bytes() == 0)
    return Error(QWEN35_ERR_STATE, "state slot {} is empty", slot);
  QWEN35_TRY(select_device());
  QWEN35_CUDA_TRY(cudaMemcpyAsync(rs_buf_.as(), slots_[slot].as(), rs_buf_.bytes(), cudaMemcpyDeviceToDevice, stream_),
                  "restoring the recurrent state");
  return sync("restoring the recurrent state");
}

// The serialized layout is the CPU backend's: per layer in order, K rows then
// V rows as F32 (attention) or the conv window then the delta-net state
// (F32); then the MTP layer's K and V rows.
uint64_t CudaBackend::state_bytes(int32_t n_rows, int32_t n_mtp_rows) const {
  uint64_t bytes = 0;
  const uint64_t row = uint64_t(hp_.kv_dim()) * sizeof(float);
  const uint64_t rec = (uint64_t(hp_.ssm_conv - 1) * uint64_t(hp_.ssm_conv_dim()) +
                        uint64_t(hp_.ssm_inner) * uint64_t(hp_.ssm_state)) * sizeof(float);
  for (int il = 0; il < hp_.n_layer; ++il) bytes += hp_.is_attn_layer(il) ? 2 * row * uint64_t(n_rows) : rec;
  if (m_.mtp) bytes += 2 * row * uint64_t(n_mtp_rows);
  return bytes;
}

Status CudaBackend::write_state(int32_t n_rows, int32_t n_mtp_rows, uint8_t* dst) {
  QWEN35_TRY(select_device());
  const int64_t kvd = hp_.kv_dim();
  const int32_t max_rows = std::max(n_rows, n_mtp_rows);
  DeviceBuffer tmp;
  QWEN35_TRY(tmp.alloc(std::max<size_t>(1, size_t(max_rows) * size_t(kvd)) * sizeof(float), "state serialization"));
  auto put_kv = [&](const uint16_t* src, int32_t rows) -> Status {
    const size_t bytes = size_t(rows) * size_t(kvd) * sizeof(float);
    QWEN35_CUDA_TRY(f16_to_f32(src, int64_t(rows) * kvd, tmp.as<float>(), stream_), "converting the KV cache");
    QWEN35_CUDA_TRY(cudaMemcpyAsync(dst, tmp.as(), bytes, cudaMemcpyDeviceToHost, stream_), "copying the KV cache");
    QWEN35_TRY(sync("copying the KV cache"));
    dst += bytes;
    return Status::Ok();
  };
  for (int il = 0; il < hp_.n_layer; ++il) {
    if (hp_.is_attn_layer(il)) {
      QWEN35_TRY(put_kv(kv_[size_t(il)].k, n_rows));
      QWEN35_TRY(put_kv(kv_[size_t(il)].v, n_rows));
    } else {
      const size_t conv = size_t(hp_.ssm_conv - 1) * size_t(hp_.ssm_conv_dim()) * 4;
      const size_t ssm = size_t(hp_.ssm_inner) * size_t(hp_.ssm_state) * 4;
      QWEN35_CUDA_TRY(cudaMemcpyAsync(dst, conv_[size_t(il)], conv, cudaMemcpyDeviceToHost, stream_), "copying state");
      QWEN35_CUDA_TRY(cudaMemcpyAsync(dst + conv, ssm_[size_t(il)], ssm, cudaMemcpyDeviceToHost, stream_),
                      "copying state");
      dst += conv + ssm;
    }
  }
  if (m_.mtp) {
    QWEN35_TRY(put_kv(mtp_kv_.k, n_mtp_rows));
    QWEN35_TRY(put_kv(mtp_kv_.v, n_mtp_rows));
  }
  return sync("copying the state");
}

Status CudaBackend::read_state(int32_t n_rows, int32_t n_mtp_rows, const uint8_t* src) {
  if (n_rows > p_.n_ctx || n_mtp_rows > p_.n_ctx)
    return Error(QWEN35_ERR_CONTEXT_FULL, "state holds {} rows but the context has room for {}", n_rows, p_.n_ctx);
  QWEN35_TRY(select_device());
  const int64_t kvd = hp_.kv_dim();
  const int32_t max_rows = std::max(n_rows, n_mtp_rows);
  DeviceBuffer tmp;
  QWEN35_TRY(tmp.alloc(std::max<size_t>(1, size_t(max_rows) * size_t(kvd)) * sizeof(float), "state deserialization"));
  auto get_kv = [&](uint16_t* dstp, int32_t rows) -> Status {
    const size_t bytes = size_t(rows) * size_t(kvd) * sizeof(float);
    QWEN35_CUDA_TRY(cudaMemcpyAsync(tmp.as(), src, bytes, cudaMemcpyHostToDevice, stream_), "copying the KV cache");
    QWEN35_CUDA_TRY(f32_to_f16(tmp.as<float>(), int64_t(rows) * kvd, dstp, stream_), "converting the KV cache");
    QWEN35_TRY(sync("copying the KV cache"));
    src += bytes;
    return Status::Ok();
  };
  for (int il = 0; il < hp_.n_layer; ++il) {
    if (hp_.is_attn_layer(il)) {
      QWEN35_TRY(get_kv(kv_[size_t(il)].k, n_rows));
      QWEN35_TRY(get_kv(kv_[size_t(il)].v, n_rows));
    } else {
      const size_t conv = size_t(hp_.ssm_conv - 1) * size_t(hp_.ssm_conv_dim()) * 4;
      const size_t ssm = size_t(hp_.ssm_inner) * size_t(hp_.ssm_state) * 4;
      QWEN35_CUDA_TRY(cudaMemcpyAsync(conv_[size_t(il)], src, conv, cudaMemcpyHostToDevice, stream_), "copying state");
      QWEN35_CUDA_TRY(cudaMemcpyAsync(ssm_[size_t(il)], src + conv, ssm, cudaMemcpyHostToDevice, stream_),
                      "copying state");
      src += conv + ssm;
    }
  }
  if (m_.mtp) {
    QWEN35_TRY(get_kv(mtp_kv_.k, n_mtp_rows));
    QWEN35_TRY(get_kv(mtp_kv_.v, n_mtp_rows));
  }
  return sync("copying the state");
}

uint64_t CudaBackend::memory_bytes() const {
  uint64_t b = kv_buf_.bytes() + rs_buf_.bytes() + scratch_.bytes() + rope_buf_.bytes() + rope_dev_.bytes() +
               rope_host_.bytes() + in_dev_.bytes() +
               in_host_.bytes() + stage_.bytes() + gemm_.workspace_bytes() + deq_ahead_.bytes() + topk_host_.bytes() +
               topk_dev_.bytes();
  for (const auto& s : slots_) b += s.bytes();
  return b;
}

}  // namespace

Status CreateCudaBackend(const Model& model, const BackendParams& p, std::unique_ptr<Backend>* out) {
  out->reset();
  const DeviceModel* dm = device_model(model);
  if (!dm) return Error(QWEN35_ERR_STATE, "the model was not uploaded to a CUDA device");
  auto b = std::make_unique<CudaBackend>(model, *dm, p);
  b->n_vocab = model.hp.n_vocab;
  QWEN35_TRY(b->init());
  *out = std::move(b);
  return Status::Ok();
}

}  // namespace qwen35
