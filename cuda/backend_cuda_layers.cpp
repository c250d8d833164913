// The CUDA backend's matrix products (decode kernels, chains of NVFP4
// products, the GEMM path), its layers (attention, delta net, FFN) and the
// LM head; see backend_cuda.h.
#include "backend_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <mutex>

namespace qwen35::cuda {

Status CudaBackend::mm(const MatView& w, const float* x, int64_t ldx, int64_t n, float* y, int64_t ldy, bool add) {
  if (n <= kMatvecMaxCols)
    return cuda_status(matvec_generic(w, x, ldx, int(n), y, ldy, add ? Accum::Add : Accum::Store, stream_),
                       "a matrix-vector product");
  return mm_gemm(w.rows, w.cols, w.scale, x, ldx, n, y, ldy, add, [&](int64_t r0, int64_t nr) {
    return gemm_type_ == GemmType::F32 ? dequant_rows_f32(w, r0, nr, static_cast<float*>(deq_), stream_)
                                       : dequant_rows_bf16(w, r0, nr, static_cast<uint16_t*>(deq_), stream_);
  });
}

Status CudaBackend::mm_tiles(const KTiles& w, const float* x, int64_t ldx, int64_t n, float* y, int64_t ldy,
                             bool add) {
  if (n <= kMatvecMaxCols && ktiles_matvec_fits(w, int(n)))
    return cuda_status(ktiles_matvec(w, x, ldx, int(n), y, ldy, add ? Accum::Add : Accum::Store, dm_.sms, stream_),
                       "a matrix-vector product");
  return mm_gemm(w.rows(), w.cols(), w.scale(), x, ldx, n, y, ldy, add, [&](int64_t r0, int64_t nr) {
    return gemm_type_ == GemmType::F32 ? ktiles_dequant_rows_f32(w, r0, nr, static_cast<float*>(deq_), stream_)
                                       : ktiles_dequant_rows_bf16(w, r0, nr, static_cast<uint16_t*>(deq_), stream_);
  });
}

Status CudaBackend::mm_gemm(int64_t N, int64_t K, float scale, const float* x, int64_t ldx, int64_t n, float* y,
                            int64_t ldy, bool add, const std::function<cudaError_t(int64_t r0, int64_t nr)>& deq) {
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
    QWEN35_CUDA_TRY(deq(r0, nr), "dequantizing a weight");
    QWEN35_TRY(gemm_.run(gemm_type_, deq_, nr, K, X, ldX, n, y + r0, ldy, scale, add, stream_));
  }
  return Status::Ok();
}

Status CudaBackend::project(const DevLinear& W, const float* x, int64_t ldx, int64_t n, const float* nw, float* y,
                            int64_t ldy, Epi epi, const ConvEpi* conv, const GatedNorm* gated) {
  const int64_t K = W.cols;
  const bool tiles = !W.fp4.present() && n <= kMatvecMaxCols && tiles_only(W, int(n));
  if (conv && !((W.fp4.present() || tiles) && n <= 2))
    return Error(QWEN35_ERR_BACKEND, "the fused conv needs the NVFP4 kernels or k-quant tiles");
  if (gated && !((W.fp4.present() || tiles) && n <= kMatvecMaxCols))
    return Error(QWEN35_ERR_BACKEND, "the fused gated norm needs the NVFP4 kernels or k-quant tiles");
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
  bool done = false, swiglu_done = false;
  if (tiles) {  // k-quant tiles: the norm or gated norm, SwiGLU or the conv in the kernels
    const Accum acc = add ? Accum::Add : Accum::Store;
    TilesFusion f;
    f.norm = nw;
    f.eps = hp_.eps;
    if (gated) f.gated = *gated;
    if (W.stack.present()) {
      swiglu_done = swiglu_out && W.stack.paired();  // silu(gate) * up from a paired stack's lanes
      f.swiglu = swiglu_done;
      if (conv) f.conv = *conv;
      QWEN35_CUDA_TRY(ktiles_matvec(W.stack, x, ldx, int(n), swiglu_done ? y : out, swiglu_done ? ldy : ldo, acc,
                                    dm_.sms, stream_, f),
                      "a matrix-vector product");
    } else {
      for (size_t i = 0; i < W.parts.size(); ++i) {
        TilesFusion fi = f;
        if (conv && i == 0) fi.conv = *conv;  // (conv_fusable: the conv's channels are in the first part)
        QWEN35_CUDA_TRY(ktiles_matvec(W.tiles[i], x, ldx, int(n), out + W.offsets[i], ldo, acc, dm_.sms, stream_, fi),
                        "a matrix-vector product");
      }
    }
    done = true;
  } else if (direct_bf16(W, n)) {  // the norm (or the conversion) writes the BF16 activations in one pass
    if (nw) QWEN35_CUDA_TRY(rmsnorm_rows_bf16(x, ldx, nw, n, K, hp_.eps, xb_, K, stream_), "a norm");
    else QWEN35_CUDA_TRY(convert_rows_bf16(x, ldx, n, K, xb_, stream_), "converting activations");
    QWEN35_TRY(gemm_bf16(W, n, out, ldo, add));
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
      QWEN35_TRY(gemm_bf16(W, n, out, ldo, add));
    } else {
      const int64_t rows_per = gemm_rows_per_block(deq_elems_, K);
      for (int64_t r0 = 0; r0 < W.rows; r0 += rows_per) {
        const int64_t nr = std::min(rows_per, W.rows - r0);
        QWEN35_CUDA_TRY(fp4_dequant_rows_f32(W.fp4, r0, nr, static_cast<float*>(deq_), stream_), "dequantizing");
        QWEN35_TRY(gemm_.run(gemm_type_, deq_, nr, K, x, ldx, n, out + r0, ldo, W.fp4.scale, add, stream_));
      }
    }
  } else if (!done && W.stack.present()) {  // (batches; 1-8 rows: above)
    QWEN35_TRY(mm_tiles(W.stack, x, ldx, n, out, ldo, add));
  } else if (!done) {
    for (size_t i = 0; i < W.parts.size(); ++i) {
      if (const KTiles* t = W.part_tiles(i)) QWEN35_TRY(mm_tiles(*t, x, ldx, n, out + W.offsets[i], ldo, add));
      else QWEN35_TRY(mm(W.parts[i], x, ldx, n, out + W.offsets[i], ldo, add));
    }
  }
  if (swiglu_out && !swiglu_done) {
    const int64_t F = W.rows / 2;
    QWEN35_CUDA_TRY(swiglu(gu_, W.rows, gu_ + F, W.rows, n, F, stream_), "SwiGLU");
    if (y != gu_ || ldy != W.rows) return Error(QWEN35_ERR_BACKEND, "SwiGLU output must be the gate/up buffer");
  }
  return Status::Ok();
}

Status CudaBackend::gemm_bf16(const DevLinear& W, int64_t n, float* out, int64_t ldo, bool add) {
  const int64_t K = W.cols;
  if (use_deq_ahead_ && deq_ahead_.fits(W)) return deq_ahead_.gemm(W, xb_, K, n, out, ldo, add, gemm_, stream_);
  if (!W.fp4.present()) return Error(QWEN35_ERR_BACKEND, "internal: a BF16 GEMM on a weight without its BF16 rows");
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
  if (E.tiles.present())
    return cuda_status(ktiles_embedding_rows(E.tiles, tokens, n, out, ldo, stream_), "the embedding");
  if (E.q6k.present()) return cuda_status(q6k_embedding_rows(E.q6k, tokens, n, out, ldo, stream_), "the embedding");
  return cuda_status(embedding_rows(E.gguf, tokens, n, out, ldo, stream_), "the embedding");
}

Status CudaBackend::head(const DevEmbed& E, const float* hn, int64_t n, float* logits, int64_t ldl, int32_t* argmax,
                         bool* fused) {
  if (fused) *fused = false;
  if (E.tiles.present()) return mm_tiles(E.tiles, hn, hp_.n_embd, n, logits, ldl, false);
  if (!E.repacked()) return mm(E.gguf, hn, hp_.n_embd, n, logits, ldl, false);
  const Q6kRows32& q = E.q6k;
  const Q6kTiled& qt = E.q6kt;
  if (qt.present() && q6kt_matvec_fits(qt, int(n))) {
    HeadArgmax am;
    am.best = head_best_;
    am.done = head_done_;
    am.out = argmax;
    const bool fuse = argmax && decode_tuning().q6k_argmax != 0 && n <= kMatvecMaxCols;
    if (fused) *fused = fuse;
    return cuda_status(
        q6kt_matvec(qt, hn, hp_.n_embd, int(n), logits, ldl, Accum::Store, stream_, fuse ? &am : nullptr),
        "the LM head");
  }
  if (q.present() && q6k_matvec_fits(q, int(n)))
    return cuda_status(q6k_matvec(q, hn, hp_.n_embd, int(n), logits, ldl, Accum::Store, stream_), "the LM head");
  // The GEMM path: row blocks dequantized from the repacked layout.
  auto deq = [this, &E](int64_t r0, int64_t nr) {
    if (gemm_type_ == GemmType::F32)
      return E.q6kt.present() ? q6kt_dequant_rows_f32(E.q6kt, r0, nr, static_cast<float*>(deq_), stream_)
                              : q6k_dequant_rows_f32(E.q6k, r0, nr, static_cast<float*>(deq_), stream_);
    return E.q6kt.present() ? q6kt_dequant_rows_bf16(E.q6kt, r0, nr, static_cast<uint16_t*>(deq_), stream_)
                            : q6k_dequant_rows_bf16(E.q6k, r0, nr, static_cast<uint16_t*>(deq_), stream_);
  };
  return mm_gemm(E.rows(), E.cols(), E.scale(), hn, hp_.n_embd, n, logits, ldl, false, deq);
}

// ---- layers ------------------------------------------------------------------------

// Full attention (spec §4.4): fused q|gate, k, v projection of the
// normalized input, q/k norm + RoPE + cache write, causal GQA attention with
// the sigmoid gate, output projection added into h.
Status CudaBackend::attention_layer(const DevLayer& L, const KVCache& kv, int64_t n, float* h) {
  const int64_t D = hp_.n_embd, Dh = hp_.head_dim, qd = hp_.q_dim(), kvd = hp_.kv_dim();
  const int64_t ld = L.in_proj.rows;  // [n, Hq*(q|gate) | k | v]
  QWEN35_TRY(project(L.in_proj, h, D, n, L.attn_norm, mix_, ld, Epi::Store));
  // The queued layer tail (chains, persistent launches) ends with this input
  // projection, unless the attention joins the queue (fp4_persist 3).
  const bool attn_queued = chaining_ && persist_ >= 3 && fused_attn_ && n <= kFusedAttnRows &&
                           L.in_proj.fp4.present() && L.out_proj.fp4.present();
  if (!attn_queued) QWEN35_TRY(flush_chain());
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
    if (attn_queued)
      QWEN35_TRY(queue_persist_attention(f));
    else if (chaining_ && chain_mode_ >= 4)  // the first stage of the layer's chain (launched in flush_chain)
      queue_attention(f, L.out_proj);
    else
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
  const bool conv_epi = conv_fusable(L, n);
  if (conv_epi) {
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
  }
  // The queued layer tail (chains) ends with the input projection, unless
  // the delta rule joins the queue (persistent launches, fp4_persist 2).
  const bool delta_queued = chaining_ && persist_ >= 2 && conv_epi && L.in_proj.fp4.present();
  if (!delta_queued) QWEN35_TRY(flush_chain());
  if (!conv_epi) {
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
  else if (delta_queued)
    QWEN35_TRY(queue_persist_delta(d));
  else if (chaining_ && chain_mode_ >= 3)  // the first stage of the layer's chain (launched in flush_chain)
    queue_delta(d, L.out_proj);
  else
    QWEN35_CUDA_TRY(delta_net(d, stream_), "the delta rule");
  if (gated_fusable(L, n)) {
    GatedNorm gn;
    gn.z = mix_ + C;
    gn.ldz = ld;
    gn.w = L.ssm_norm;
    gn.dv = int(hp_.ssm_dv);
    return project(L.out_proj, so_, Cv, n, nullptr, h, D, Epi::Add, nullptr, &gn);
  }
  QWEN35_TRY(flush_chain());  // a queued delta rule runs before the norm kernels below
  if (direct_bf16(L.out_proj, n)) {  // the gated norm writes the GEMM's BF16 activations
    QWEN35_CUDA_TRY(gated_rmsnorm_bf16(so_, mix_ + C, ld, L.ssm_norm, n, Hv, hp_.ssm_dv, hp_.eps, xb_, stream_),
                    "the gated norm");
    return gemm_bf16(L.out_proj, n, h, D, true);
  }
  QWEN35_CUDA_TRY(gated_rmsnorm(so_, mix_ + C, ld, L.ssm_norm, n, Hv, hp_.ssm_dv, hp_.eps, stream_), "the gated norm");
  return project(L.out_proj, so_, Cv, n, nullptr, h, D, Epi::Add);
}

bool CudaBackend::conv_fusable(const DevLayer& L, int64_t n) const {
  const DevLinear& W = L.in_proj;
  if (n > 2) return false;
  if (W.fp4.present()) return true;
  if (!tiles_only(W, int(n))) return false;
  const int64_t C = hp_.ssm_conv_dim();
  return W.stack.present() ? !W.stack.paired() && C <= W.stack.rows() : W.parts[0].rows >= C;
}

bool CudaBackend::gated_fusable(const DevLayer& L, int64_t n) const {
  const DevLinear& W = L.out_proj;
  const int dv = int(hp_.ssm_dv);
  if (n > kMatvecMaxCols) return false;
  if (W.fp4.present()) return fp4_gated_supported(W.fp4, dv);
  // The tiles' prologue loads z = the input projection's outputs from C on
  // 16 bytes at a time.
  if (!tiles_only(W, int(n)) || hp_.ssm_conv_dim() % 4 != 0 || L.in_proj.rows % 4 != 0) return false;
  if (W.stack.present()) return ktiles_gated_fits(W.stack, dv);
  for (const KTiles& t : W.tiles)
    if (!ktiles_gated_fits(t, dv)) return false;
  return true;
}

// SwiGLU FFN (spec §4.3) of the post-attention-normalized stream, added into h.
Status CudaBackend::ffn(const DevLayer& L, int64_t n, float* h) {
  const int64_t D = hp_.n_embd, F = hp_.n_ff;
  if (direct_bf16(L.down, n)) {  // silu(gate) * up goes straight to BF16 as the down projection's input
    QWEN35_TRY(project(L.gate_up, h, D, n, L.post_norm, gu_, 2 * F, Epi::Store));
    QWEN35_CUDA_TRY(swiglu_bf16(gu_, 2 * F, gu_ + F, 2 * F, n, F, xb_, F, stream_), "SwiGLU");
    return gemm_bf16(L.down, n, h, D, true);
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

Status CudaBackend::queue_persist(const PersistQueued& e) {
  if (persist_q_.size() == persist_queue_max_) QWEN35_TRY(flush_persist());
  persist_q_.push_back(e);
  return Status::Ok();
}

Status CudaBackend::queue_persist_delta(const DeltaNetArgs& d) {
  PersistQueued e;
  e.delta = true;
  e.d = d;
  return queue_persist(e);
}

Status CudaBackend::queue_persist_attention(const FusedAttnArgs& f) {
  PersistQueued e;
  e.attn = true;
  e.f = f;
  return queue_persist(e);
}

void CudaBackend::queue_delta(const DeltaNetArgs& d, const DevLinear& site) {
  chain_.stages = 1;  // (the queue is empty: the input projection flushed it)
  chain_.delta = true;
  chain_.delta_args = d;
  chain_site_ = &site;
}

void CudaBackend::queue_attention(const FusedAttnArgs& f, const DevLinear& site) {
  chain_.stages = 1;  // (the queue is empty: the input projection flushed it)
  chain_.attn = true;
  chain_.attn_args = f;
  chain_site_ = &site;
}

Status CudaBackend::queue_fp4(Fp4MatvecArgs a, const DevLinear& W) {
  if (persist_) {
    a.next = Fp4Tiled{};  // (kernel 3's L2 prefetch hint: not in a persistent launch)
    PersistQueued e;
    e.m = a;
    return queue_persist(e);
  }
  if (chain_.stages == kFp4ChainMaxStages) QWEN35_TRY(flush_chain());
  const int s = chain_.stages;
  a.next = Fp4Tiled{};  // (kernel 3's L2 prefetch hint: not in a chain)
  if (s == 0) {
    chain_site_ = &W;  // (delta is false: flush_chain and drop_chain clear it with the stages)
  } else {
    // By slice when a reads the SwiGLU outputs of the NVFP4 stage before
    // (the FFN's down projection); by slice until the combine when a reads
    // its plain outputs (the residual stream through the RMS norm: gate/up
    // after the output projection, the input projection after down; tuning
    // fp4_chain_early); else after the whole stage before. (With the delta
    // rule or attention in front, queue_delta / queue_attention made stage 0.)
    const Fp4MatvecArgs& pr = chain_.stage[s - 1];
    const bool after_head = s == 1 && fp4_chain_has_head(chain_);
    const bool reads_prev = !after_head && a.x == pr.y && a.ldx == pr.ldy && a.w.cols == pr.w.rows && !a.gate_z;
    const bool slice = reads_prev && pr.epilogue == Fp4Epilogue::SwiGLU && !a.norm && a.w.pairing == Fp4Pairing::Plain;
    const bool slice_norm = reads_prev && chain_early_ && pr.w.pairing == Fp4Pairing::Plain &&
                            (pr.epilogue == Fp4Epilogue::Store || pr.epilogue == Fp4Epilogue::Add);
    // After the delta rule or attention: the output projection's column
    // slices by the heads they read (tuning too).
    const bool heads = after_head && chain_early_ &&
                       ((chain_.delta && a.gate_z && a.x == chain_.delta_args.out) ||
                        (chain_.attn && !a.gate_z && !a.norm && a.x == chain_.attn_args.attn.o));
    chain_.dep[s] = slice        ? Fp4Dep::Slice
                    : slice_norm ? Fp4Dep::SliceNorm
                    : heads      ? Fp4Dep::Heads
                                 : Fp4Dep::Full;
  }
  a.partial = chain_partial_[s];
  a.counters = chain_counters_[s];
  chain_.stage[s] = a;
  chain_.stages = s + 1;
  return Status::Ok();
}

Status CudaBackend::flush_chain() {
  if (persist_) return flush_persist();
  Fp4ChainArgs c = chain_;
  clear_chain_queue();
  if (c.stages == 0) return Status::Ok();
  if (c.stages > 1) {
    const auto it = chain_sync_.find(chain_site_);
    c.sync = it != chain_sync_.end() ? it->second : nullptr;
    c.fault = st_fault_;
    if (fp4_chain_supported(c, dm_.sms))
      return cuda_status(fp4_chain(c, dm_.sms, stream_), "a chain of NVFP4 products");
  }
  if (c.delta) QWEN35_CUDA_TRY(delta_net(c.delta_args, stream_), "the delta rule");
  if (c.attn) QWEN35_CUDA_TRY(attention_fused(c.attn_args, stream_), "attention");
  for (int s = fp4_chain_has_head(c) ? 1 : 0; s < c.stages; ++s) {  // one launch per stage
    Fp4MatvecArgs a = c.stage[s];
    a.partial = fp4_partial_;
    a.counters = fp4_counters_;
    QWEN35_CUDA_TRY(fp4_matvec(a, dm_.sms, stream_), "an NVFP4 matrix-vector product");
  }
  return Status::Ok();
}

Status CudaBackend::flush_persist() {
  // The queue is empty afterwards, whatever happens (and keeps its storage).
  struct Clear {
    std::vector<PersistQueued>& q;
    ~Clear() { q.clear(); }
  } clear{persist_q_};
  std::vector<PersistQueued>& q = persist_q_;
  if (q.empty()) return Status::Ok();
  // Two or more stages: one launch, if the kernel takes them.
  const bool attn = std::any_of(q.begin(), q.end(), [](const PersistQueued& e) { return e.attn; });
  const int grid = attn ? persist_attn_grid_ : persist_grid_;
  std::vector<PersistFp4Stage>& plan = persist_plan_;
  plan.assign(q.size(), PersistFp4Stage{});
  bool ok = q.size() >= 2 && q.size() <= persist_queue_max_ && grid > 0;
  for (size_t s = 0; ok && s < q.size(); ++s) {
    PersistFp4Stage* p = &plan[s];
    if (q[s].attn) {
      FusedAttnArgs f = q[s].f;
      f.attn.splits = persist_attn_splits_;
      ok = persist_attention_stage(f, p);
    } else {
      ok = q[s].delta ? persist_delta_stage(q[s].d, p) : persist_fp4_stage(q[s].m, p);
    }
  }
  ok = ok && persist_fp4_plan(plan.data(), int(plan.size()), grid, persist_slices_);
  PersistFp4Args a;
  if (ok) {
    a.count = int(plan.size());
    a.sizes = persist_fp4_sizes(plan.data(), a.count, persist_fp8_);
    ok = a.sizes.partial_half <= persist_cap_.partial_half && a.sizes.counter_half <= persist_cap_.counter_half &&
         a.sizes.squares_half <= persist_cap_.squares_half;
  }
  if (ok && persist_ >= 4) {  // the stages from a table in device memory
    QWEN35_TRY(persist_table(plan, &a.stages));
    ok = a.stages != nullptr;
  } else if (ok) {
    std::copy(plan.begin(), plan.end(), a.inline_stages);
  }
  if (ok && persist_tl_ && persist_tl_stages_.size() + plan.size() <= size_t(kPersistTableMax)) {
    a.timeline = persist_tl_ + persist_tl_stages_.size() * kPersistTimeFields;
    for (const PersistFp4Stage& p : plan) {
      PersistStageTime t;
      t.kind = p.kind;
      t.rows = p.kind == PersistKind::Product     ? p.w.rows
               : p.kind == PersistKind::DeltaRule ? p.delta.Hv
                                                  : p.attn.attn.n_head;
      t.cols = p.kind == PersistKind::Product     ? p.w.cols
               : p.kind == PersistKind::DeltaRule ? p.delta.dv
                                                  : p.attn.attn.head_dim;
      persist_tl_stages_.push_back(t);
    }
  }
  if (ok) {
    a.partial = persist_partial_;
    a.squares = persist_squares_;
    a.counters = persist_counters_;
    a.done = persist_done_;
    a.tickets = persist_tickets_ + (persist_turn_ ^= 1) * kPersistDoneStride;
    a.fault = persist_fault_;
    a.fault_report = st_fault_ + kFp4ChainFaultInts;
    a.poll_ns = persist_poll_ns_;
    return cuda_status(persist_fp4(a, grid, stream_), "a persistent launch of decode stages");
  }
  for (PersistQueued& e : q) {  // one launch per stage
    if (e.delta) {
      QWEN35_CUDA_TRY(delta_net(e.d, stream_), "the delta rule");
      continue;
    }
    if (e.attn) {
      QWEN35_CUDA_TRY(attention_fused(e.f, stream_), "attention");
      continue;
    }
    e.m.partial = fp4_partial_;
    e.m.counters = fp4_counters_;
    QWEN35_CUDA_TRY(fp4_matvec(e.m, dm_.sms, stream_), "an NVFP4 matrix-vector product");
  }
  return Status::Ok();
}

Status CudaBackend::persist_table(const std::vector<PersistFp4Stage>& plan, const PersistFp4Stage** out) {
  *out = nullptr;
  if (PersistTable* t = persist_capture_) {  // a graph's own table, uploaded when its capture ends
    if (t->host.size() + plan.size() > size_t(kPersistTableMax)) return Status::Ok();
    *out = t->dev.as<PersistFp4Stage>() + t->host.size();
    t->host.insert(t->host.end(), plan.begin(), plan.end());
    return Status::Ok();
  }
  // Outside graphs: one table, rewritten in stream order (after the launch
  // before has read it; the host's copy is staged by the call).
  QWEN35_CUDA_TRY(cudaMemcpyAsync(persist_eager_table_, plan.data(), plan.size() * sizeof(PersistFp4Stage),
                                  cudaMemcpyHostToDevice, stream_),
                  "copying a persistent stage table");
  *out = persist_eager_table_;
  return Status::Ok();
}

namespace {
std::mutex g_timeline_mu;
std::vector<PersistStageTime> g_timeline;
}  // namespace

std::vector<PersistStageTime> persist_timeline_last() {
  std::lock_guard<std::mutex> lock(g_timeline_mu);
  return g_timeline;
}

void set_persist_timeline_last(std::vector<PersistStageTime> stages) {
  std::lock_guard<std::mutex> lock(g_timeline_mu);
  g_timeline = std::move(stages);
}

void CudaBackend::persist_tl_begin() {
  if (!persist_tl_) return;
  persist_tl_stages_.clear();
  cudaMemsetAsync(persist_tl_, 0, size_t(kPersistTableMax) * kPersistTimeFields * sizeof(unsigned long long),
                  stream_);  // (a probe: a failure shows as times never written)
}

void CudaBackend::persist_tl_collect() {
  if (!persist_tl_ || persist_tl_stages_.empty()) return;
  std::vector<unsigned long long> raw(persist_tl_stages_.size() * kPersistTimeFields);
  if (cudaMemcpy(raw.data(), persist_tl_, raw.size() * sizeof(unsigned long long), cudaMemcpyDeviceToHost) !=
      cudaSuccess)
    return;
  persist_read_times(raw.data(), persist_tl_stages_);
  set_persist_timeline_last(std::move(persist_tl_stages_));
  persist_tl_stages_.clear();
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
    bool fused = false;
    QWEN35_TRY(head(E, hn + r0 * D, nr, logits_, V, argmax ? d_argmax_ + r0 : nullptr, &fused));
    if (!argmax) {
      QWEN35_CUDA_TRY(cudaMemcpyAsync(logits + r0 * V, logits_, size_t(nr * V) * sizeof(float), cudaMemcpyDeviceToHost,
                                      stream_),
                      "copying logits");
    } else if (!fused) {
      QWEN35_CUDA_TRY(argmax_rows(logits_, V, nr, V, d_argmax_ + r0, argmax_scratch_, stream_), "argmax");
    }
  }
  if (argmax)
    QWEN35_CUDA_TRY(cudaMemcpyAsync(argmax, d_argmax_, size_t(n) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
                    "copying the argmax");
  return Status::Ok();
}

// ---- evaluation ----------------------------------------------------------------------

}  // namespace qwen35::cuda
