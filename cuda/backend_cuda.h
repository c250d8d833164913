// The CUDA backend's class (internal to cuda/): the qwen35 forward pass
// (spec §4) and the MTP head (§5.1) on one GPU. backend_cuda.cpp holds its
// lifetime, the passes, graphs and state; backend_cuda_layers.cpp the
// matrix products, the layers and the LM head.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
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
#include "fusion.h"
#include "gemm.h"
#include "matmul.h"
#include "norm.h"
#include "persist_fp4.h"
#include "rope.h"
#include "topk.h"
#include "tuning.h"

namespace qwen35::cuda {

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
inline int64_t gemm_rows_per_block(int64_t elems, int64_t K) { return std::max<int64_t>(64, elems / K / 64 * 64); }

enum class Epi { Store, Add, SwiGLU };

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
  // The same for a weight in tiles (ktiles.h: a part, a stack, an LM head).
  Status mm_tiles(const KTiles& w, const float* x, int64_t ldx, int64_t n, float* y, int64_t ldy, bool add);
  // The GEMM path of mm and mm_tiles: `deq` writes rows r0 .. r0+nr-1 of the
  // weight to deq_ (F32 or BF16 as gemm_type_ asks).
  Status mm_gemm(int64_t N, int64_t K, float scale, const float* x, int64_t ldx, int64_t n, float* y, int64_t ldy,
                 bool add, const std::function<cudaError_t(int64_t r0, int64_t nr)>& deq);
  // y = W rmsnorm(x) (no norm when nw is null); Epi::SwiGLU needs a gate_up
  // stack and writes silu(gate) * up, [n, F] with row stride ldy.
  Status project(const DevLinear& W, const float* x, int64_t ldx, int64_t n, const float* nw, float* y, int64_t ldy,
                 Epi epi, const ConvEpi* conv = nullptr, const GatedNorm* gated = nullptr);
  // Batches with BF16 GEMMs on a whole projection: an NVFP4 stack (no FP4
  // GEMM) or any other projection that the dequantization ahead holds. The
  // caller may write the activations to xb_ in BF16 itself (fused into the
  // kernel that produces them) and call gemm_bf16.
  bool direct_bf16(const DevLinear& W, int64_t n) const {
    if (n <= kMatvecMaxCols || gemm_type_ != GemmType::BF16 || medium(W, n)) return false;
    if (W.fp4.present()) return !(W.blas.present() && fp4_gemm_);
    return use_deq_ahead_ && deq_ahead_.fits(W);
  }
  // Small batches (kMatvecMaxCols < n <= medium_rows_, QWEN35_CUDA_MEDIUM_ROWS):
  // NVFP4 projections as decode matvecs over row chunks of kMatvecMaxCols,
  // reading the weights once per chunk instead of dequantizing all of them
  // for a GEMM.
  bool medium(const DevLinear& W, int64_t n) const {
    return W.fp4.present() && n > kMatvecMaxCols && n <= medium_rows_;
  }
  // Every part of W in k-quant tiles whose kernel takes n rows (the stack,
  // or each part): the norm can go into the kernels' prologue.
  bool tiles_only(const DevLinear& W, int n) const {
    if (W.stack.present()) return ktiles_matvec_fits(W.stack, n);
    if (W.tiles.size() != W.parts.size() || W.parts.empty()) return false;
    for (const KTiles& t : W.tiles)
      if (!t.present() || !ktiles_matvec_fits(t, n)) return false;
    return true;
  }
  // Whether project() runs a delta-net layer's causal conv in its input
  // projection's epilogue (NVFP4 kernels or k-quant tiles, 1-2 rows), and
  // its gated norm in its output projection's prologue.
  bool conv_fusable(const DevLayer& L, int64_t n) const;
  bool gated_fusable(const DevLayer& L, int64_t n) const;
  // out (+)= W xb_, xb_: [n, W.cols] BF16 activations (W: direct_bf16).
  Status gemm_bf16(const DevLinear& W, int64_t n, float* out, int64_t ldo, bool add);
  Status embed(const DevEmbed& E, const int32_t* tokens, int64_t n, float* out, int64_t ldo);
  // With argmax: the ids of the rows' largest logits into argmax too, in
  // the LM head's epilogue where that kernel can (tuning q6k_argmax; *fused
  // says whether it did).
  Status head(const DevEmbed& E, const float* hn, int64_t n, float* logits, int64_t ldl, int32_t* argmax = nullptr,
              bool* fused = nullptr);

  // Layers read the residual stream h and add their output into it.
  Status attention_layer(const DevLayer& L, const KVCache& kv, int64_t n, float* h);
  Status delta_net_layer(const DevLayer& L, int il, int64_t n, int32_t snapshot_row, float* h);
  Status ffn(const DevLayer& L, int64_t n, float* h);
  // Appends a to the queued chain (flushing a full one first).
  Status queue_fp4(Fp4MatvecArgs a, const DevLinear& W);
  // Starts a chain with the delta rule (the queue is empty); `site` names
  // its counters.
  void queue_delta(const DeltaNetArgs& d, const DevLinear& site);
  // The same with the fused decode attention.
  void queue_attention(const FusedAttnArgs& f, const DevLinear& site);
  // Launches the queued chain (one launch, or stage by stage where the chain
  // kernel cannot run it); drop_chain forgets it (after an error).
  Status flush_chain();
  void drop_chain() {
    clear_chain_queue();
    chaining_ = false;
  }
  void clear_chain_queue() {
    chain_.stages = 0;
    chain_.delta = false;
    chain_.attn = false;
    persist_q_.clear();
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
  unsigned long long* head_best_ = nullptr;                 // [kMatvecMaxCols] HeadArgmax, zero between calls
  int* head_done_ = nullptr;                                // HeadArgmax, zero between calls
  int64_t logit_rows_ = 1;
  float* fp4_partial_ = nullptr;                            // split-K scratch of the decode kernels
  int* fp4_counters_ = nullptr;
  // Chains of NVFP4 decode projections in one launch (chain_fp4.h, tuning
  // fp4_chain): 1 = each FFN (gate/up, down), 2 = also each layer's tail
  // (output projection, FFN, the next layer's input projection), 3 = with
  // the delta net's delta rule in front, 4 = also with the fused attention
  // in front of an attention layer's tail. While
  // chaining_, project() queues its NVFP4 decode products in chain_ (with
  // a split-K scratch per stage) and flush_chain() launches them: before
  // any other kernel, and at the end of the layers.
  int chain_mode_ = 0;
  bool chain_early_ = true;  // tuning fp4_chain_early: SliceNorm and Heads waits in chains
  bool chaining_ = false;
  Fp4ChainArgs chain_;
  const DevLinear* chain_site_ = nullptr;               // the first stage's weight: whose counters
  std::map<const DevLinear*, int*> chain_sync_;         // counters per call site
  float* chain_partial_[kFp4ChainMaxStages] = {};
  int* chain_counters_[kFp4ChainMaxStages] = {};
  int* chain_sync_base_ = nullptr;
  int32_t* st_fault_ = nullptr;                         // pinned: a chain gave up waiting, then a persistent tail
  // Products of steps of 1-2 rows as persistent launches (fp4_persist):
  // while chaining_, project() queues its NVFP4 decode products in
  // persist_q_ instead of chain_ (1: until the next input projection, a
  // layer's tail; 2: also the delta rule and the products around it, so
  // delta-net layers follow each other in one launch), and flush_chain()
  // runs the queue as one persist_fp4 launch of persist_grid_ blocks where
  // the kernel takes it, else one launch per stage. 3: also the fused
  // decode attention (a launch with it: persist_attn_grid_ blocks, the
  // kernel's attention instantiation; persist_attn_splits_ key splits
  // instead of attn_splits_). 4: as 3, the stages in a table in device
  // memory, so that a step's queue is one launch (persist_table()).
  struct PersistQueued {
    bool delta = false;
    bool attn = false;
    Fp4MatvecArgs m;
    DeltaNetArgs d;
    FusedAttnArgs f;  // with attn_splits_ (for attention_fused, where the launch is not persistent)
  };
  int persist_ = 0;
  std::vector<PersistQueued> persist_q_;
  size_t persist_queue_max_ = kPersistInline;        // stages queued before a launch (4: kPersistTableMax)
  std::vector<PersistFp4Stage> persist_plan_;        // the planned stages of a flush
  // Mode 4's stage tables: a CUDA graph's launches read theirs at every
  // replay, so each graph has its own, filled while it is captured and
  // uploaded before its first launch (launch_graph); launches outside graphs
  // share one, written by a copy in the stream before each.
  struct PersistTable {
    DeviceBuffer dev;                    // [kPersistTableMax]
    std::vector<PersistFp4Stage> host;  // what the captured launches read
  };
  std::map<GraphKey, PersistTable> persist_tables_;
  PersistTable* persist_capture_ = nullptr;          // the table of the graph being captured
  PersistFp4Stage* persist_eager_table_ = nullptr;   // [kPersistTableMax] (mode 4: launches outside graphs)
  // Where the planned stages will be when the launch runs (mode 4): the
  // captured graph's table, or the eager one after a copy in the stream;
  // null (no error) if the graph's table is full.
  Status persist_table(const std::vector<PersistFp4Stage>& plan, const PersistFp4Stage** out);
  // The timeline probe (tuning fp4_persist_timeline; its steps run without
  // graphs): a pass's launches note their stages' times in consecutive
  // rows of persist_tl_, reported after the pass (persist_timeline_last).
  unsigned long long* persist_tl_ = nullptr;          // [kPersistTableMax][kPersistTimeFields]
  std::vector<PersistStageTime> persist_tl_stages_;   // the pass's stages so far
  void persist_tl_begin();                            // (at the start of a pass's enqueue)
  void persist_tl_collect();                          // (after its sync)
  int persist_grid_ = 0;
  int persist_attn_grid_ = 0;
  int persist_attn_splits_ = 1;
  unsigned persist_poll_ns_ = 64;
  bool persist_fp8_ = false;  // the launches' products on the FP8 tensor cores (tuning fp4_fp8, codes8 uploaded)
  bool persist_slices_ = false;  // stages wait by column slice (tuning fp4_persist_slices)
  PersistFp4Sizes persist_cap_;                         // what the scratch below holds (halves)
  float* persist_partial_ = nullptr;
  float* persist_squares_ = nullptr;
  int* persist_counters_ = nullptr;                     // zero, left at zero by every launch
  int* persist_done_ = nullptr;                         // likewise
  int* persist_tickets_ = nullptr;                      // likewise: two, for launches in turn (persist_turn_)
  int persist_turn_ = 0;
  int* persist_fault_ = nullptr;                        // likewise (the report: st_fault_)
  // Appends a stage to the queue of persistent stages (flushing it first
  // when full); the delta rule, the fused decode attention.
  Status queue_persist(const PersistQueued& e);
  Status queue_persist_delta(const DeltaNetArgs& d);
  Status queue_persist_attention(const FusedAttnArgs& f);
  // Launches the queued stages (one persistent launch, or one per stage).
  Status flush_persist();
  uint16_t* xb_ = nullptr;                                  // [nb, max K] BF16 activations
  void* deq_ = nullptr;                                     // dequantized weight block
  int64_t deq_elems_ = 0;                                   // its size in elements
  uint8_t *xq_ = nullptr, *xqs_ = nullptr;                  // NVFP4 activations and their scales
  float* fp4_work_ = nullptr;                               // [g, alpha, amax bits, pad, beta 0, beta 1]
};

}  // namespace qwen35::cuda
