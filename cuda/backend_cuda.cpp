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
#include "backend_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

namespace qwen35 {

namespace cuda {

namespace {

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

}  // namespace

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
  if (Status st = kv_buf_.alloc((uint64_t(n_attn) + (m_.mtp ? 1 : 0)) * 2 * kv_elems * 2, "the KV cache"); !st.ok()) {
    // The one allocation the caller sizes: say how.
    return Error(st.code(), "{} (n_ctx {}: a smaller n_ctx needs less; qwen35_cuda_memory_info() tells what is free)",
                 st.message(), nctx);
  }
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
  st_fault_ = st_argmax_ + kStageRows;  // inside the 64 spare bytes: the chain's record, the persistent launches' flag
  static_assert((kFp4ChainFaultInts + 1) * 4 <= 64, "the fault records fit the spare bytes");
  std::fill(st_fault_, st_fault_ + kFp4ChainFaultInts + 1, 0);

  // Scratch.
  // Decode attention splits the keys over up to 32 blocks per head (about
  // 64 keys per block at a full context).
  attn_splits_ = int(std::clamp<int64_t>((nctx + 63) / 64, 1, kMaxAttnSplits));
  logit_rows_ = std::clamp<int64_t>(int64_t(kLogitsChunkBytes / (uint64_t(V) * 4)), 1, nb);
  ld_mix_ = std::max(2 * qd + 2 * kvd, C + Cv + 2 * Hv);
  const int64_t max_k = std::max({D * 2, qd, Cv, 2 * F});
  // The persistent attention stage (fp4_persist 3): a warp per split of at
  // least 16 keys (kWarpAttnMinKeys), so more splits than the fused kernel's
  // blocks of four warps.
  persist_attn_splits_ = int(std::clamp<int64_t>((nctx + 15) / 16, 1, kPersistMaxAttnSplits));
  const int64_t part_rows = std::max<int64_t>({nb, int64_t(kMatvecMaxCols) * attn_splits_,
                                               int64_t(kPersistMaxRows) * persist_attn_splits_});
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
  cv.add(&head_best_, uint64_t(kMatvecMaxCols));
  cv.add(&head_done_, 1);
  cv.add(&fp4_partial_, std::max<uint64_t>(1, dm_.fp4_partial_floats));
  cv.add(&fp4_counters_, std::max<uint64_t>(1, dm_.fp4_counter_ints));
  chain_mode_ = decode_tuning().fp4_kernel == 3 ? decode_tuning().fp4_chain : 0;
  chain_early_ = decode_tuning().fp4_chain_early != 0;
  persist_ = decode_tuning().fp4_kernel == 3 ? decode_tuning().fp4_persist : 0;
  if (persist_) {
    // The products queue while chaining_ (steps of 1-2 rows); the grid is
    // planned for the largest slices' shared memory, so that it is resident
    // whatever a launch's slices.
    chain_mode_ = 0;
    persist_queue_max_ = size_t(persist_ >= 4 ? kPersistTableMax : kPersistInline);
    persist_q_.reserve(persist_queue_max_);
    persist_poll_ns_ = unsigned(decode_tuning().fp4_chain_poll_ns);
    persist_fp8_ = decode_tuning().fp4_fp8 != 0;
    persist_slices_ = decode_tuning().fp4_persist_slices != 0;
    PersistFp4Sizes most;
    most.max_kg_per = kPersistMaxKgPer;
    most.max_rows = kPersistMaxRows;
    most.fp8 = persist_fp8_;  // (the larger chunks: a launch without them is resident too)
    persist_grid_ = persist_fp4_grid(most, dm_.sms);
    most.attention = true;
    persist_attn_grid_ = persist_fp4_grid(most, dm_.sms);
    // Scratch for any tail: at most min(kgroups, 64) slices of a product.
    std::vector<const DevLinear*> ws;
    for (const DevLayer& L : dm_.layers)
      for (const DevLinear* W : {&L.in_proj, &L.out_proj, &L.gate_up, &L.down}) ws.push_back(W);
    if (dm_.mtp) {
      for (const DevLinear* W : {&dm_.mtp->block.in_proj, &dm_.mtp->block.out_proj, &dm_.mtp->block.gate_up,
                                 &dm_.mtp->block.down, &dm_.mtp->eh_proj})
        ws.push_back(W);
    }
    for (const DevLinear* W : ws) {
      if (!W->fp4.present()) continue;
      const uint64_t tiles = uint64_t(W->fp4.tiles()), kgs = uint64_t(W->fp4.kgroups());
      persist_cap_.partial_half =
          std::max(persist_cap_.partial_half, std::min<uint64_t>(kgs, 64) * tiles * kFp4TileRows * kPersistMaxRows);
      persist_cap_.counter_half = std::max(persist_cap_.counter_half, tiles);
      persist_cap_.squares_half = std::max(persist_cap_.squares_half, tiles * kPersistMaxRows);
    }
    cv.add(&persist_partial_, std::max<uint64_t>(1, 2 * persist_cap_.partial_half));
    cv.add(&persist_squares_, std::max<uint64_t>(1, 2 * persist_cap_.squares_half));
    cv.add(&persist_counters_, std::max<uint64_t>(1, 2 * persist_cap_.counter_half));
    cv.add(&persist_done_, uint64_t(persist_queue_max_ + 1) * kPersistDoneStride);
    if (persist_ >= 4) cv.add(&persist_eager_table_, uint64_t(kPersistTableMax));
    if (decode_tuning().fp4_persist_timeline) {  // (a probe: the queue's stages as launched, so no graphs)
      cv.add(&persist_tl_, uint64_t(kPersistTableMax) * kPersistTimeFields);
      use_graphs_ = false;
    }
    cv.add(&persist_tickets_, uint64_t(2) * kPersistDoneStride);
    cv.add(&persist_fault_, 1);
  }
  std::vector<const DevLinear*> sites;
  if (chain_mode_ > 0 && !persist_) {
    std::vector<const DevLayer*> layers;
    for (const DevLayer& L : dm_.layers) layers.push_back(&L);
    if (dm_.mtp) layers.push_back(&dm_.mtp->block);
    for (const DevLayer* L : layers)
      for (const DevLinear* W : {&L->in_proj, &L->out_proj, &L->gate_up, &L->down}) sites.push_back(W);
    if (dm_.mtp) sites.push_back(&dm_.mtp->eh_proj);  // the MTP pass's first chain
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
  // (QWEN35_CUDA_DEQ_AHEAD=0: in row blocks before each GEMM); with the
  // FP4 GEMM (Blackwell), the projections it does not take.
  if (nb > kMatvecMaxCols && gemm_type_ == GemmType::BF16 && !env_off("QWEN35_CUDA_DEQ_AHEAD")) {
    const char* cache = std::getenv("QWEN35_CUDA_DEQ_CACHE");
    QWEN35_TRY(deq_ahead_.init(dm_, cache && std::string(cache) == "1", fp4_gemm_));
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
    const Status e = Error(QWEN35_ERR_BACKEND,
                           "a chain of NVFP4 products gave up waiting for its inputs during {} (stage {}, task {}: a "
                           "counter at {} of {}); its results are wrong (set QWEN35_CUDA_FP4_CHAIN=0)",
                           what, st_fault_[1], st_fault_[2], st_fault_[3], st_fault_[4]);
    std::fill(st_fault_, st_fault_ + kFp4ChainFaultInts, 0);
    return e;
  }
  if (st_fault_ && st_fault_[kFp4ChainFaultInts] != 0) {
    st_fault_[kFp4ChainFaultInts] = 0;
    return Error(QWEN35_ERR_BACKEND,
                 "a persistent launch of decode stages gave up waiting for its inputs during {}; its results are "
                 "wrong (set QWEN35_CUDA_FP4_PERSIST=0)",
                 what);
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

Status CudaBackend::enqueue_eval(int64_t n, int32_t snapshot_row, int32_t logits_first, bool from_embd,
                                 const OutPlan& out, bool check_abort) {
  const int64_t D = hp_.n_embd;
  persist_tl_begin();
  if (!from_embd) QWEN35_TRY(embed(dm_.token_embd, d_tokens_, n, h_, D));
  // Layer tails as chains (tuning fp4_chain 2, 3): each layer's output
  // projection, FFN and the next layer's input projection in one launch
  // (3: with the delta net's delta rule in front); or the products of
  // steps of 1-2 rows as persistent launches (fp4_persist).
  chaining_ = persist_ ? n <= kPersistMaxRows : chain_mode_ >= 2 && n <= kMatvecMaxCols;
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
    // Persistent mode 4: the graph's stage table (allocated now: not while
    // capturing), filled by the captured launches, uploaded once.
    PersistTable table;
    if (persist_ >= 4)
      QWEN35_TRY(table.dev.alloc(size_t(kPersistTableMax) * sizeof(PersistFp4Stage), "a persistent stage table"));
    QWEN35_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "capturing a CUDA graph");
    persist_capture_ = persist_ >= 4 ? &table : nullptr;
    Status st = enqueue();
    persist_capture_ = nullptr;
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
    if (!table.host.empty()) {  // (in the stream: before the graph's first launch)
      const cudaError_t ce = cudaMemcpyAsync(table.dev.as(), table.host.data(),
                                             table.host.size() * sizeof(PersistFp4Stage), cudaMemcpyHostToDevice,
                                             stream_);
      if (ce != cudaSuccess) cudaGraphExecDestroy(exec);
      QWEN35_CUDA_TRY(ce, "uploading a persistent stage table");
      persist_tables_[key] = std::move(table);
    }
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
  persist_tl_collect();
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
    persist_tl_begin();
    QWEN35_TRY(embed(*M.embed, d_tokens_, n, mtp_in_, 2 * D));
    NormRows en, hn;  // enorm in place, hnorm into the second half
    en.x = mtp_in_;
    en.ldx = 2 * D;
    en.w = M.enorm;
    en.y = mtp_in_;
    en.ldy = 2 * D;
    hn.x = mtp_hid_;
    hn.ldx = D;
    hn.w = M.hnorm;
    hn.y = mtp_in_ + D;
    hn.ldy = 2 * D;
    QWEN35_CUDA_TRY(rmsnorm_rows_pair(en, hn, n, D, hp_.eps, stream_), "enorm and hnorm");
    // Chains (tuning fp4_chain 2-4, as the main pass): the input
    // projection and the one after it, then the layer's tail (or
    // persistent launches, fp4_persist).
    chaining_ = persist_ ? n <= kPersistMaxRows : chain_mode_ >= 2 && n <= kMatvecMaxCols;
    Status s = project(M.eh_proj, mtp_in_, 2 * D, n, nullptr, h_, D, Epi::Store);
    if (s.ok()) s = attention_layer(M.block, mtp_kv_, n, h_);
    if (s.ok()) s = ffn(M.block, n, h_);
    if (s.ok()) s = flush_chain();
    drop_chain();
    QWEN35_TRY(s);
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
  persist_tl_collect();
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
  for (const auto& [key, t] : persist_tables_) b += t.dev.bytes();
  return b;
}

}  // namespace cuda

Status CreateCudaBackend(const Model& model, const BackendParams& p, std::unique_ptr<Backend>* out) {
  out->reset();
  const cuda::DeviceModel* dm = cuda::device_model(model);
  if (!dm) return Error(QWEN35_ERR_STATE, "the model was not uploaded to a CUDA device");
  auto b = std::make_unique<cuda::CudaBackend>(model, *dm, p);
  b->n_vocab = model.hp.n_vocab;
  QWEN35_TRY(b->init());
  *out = std::move(b);
  return Status::Ok();
}

}  // namespace qwen35
