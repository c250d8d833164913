#include "context.h"

#include <algorithm>
#include <cstring>
#include <new>

namespace qwen35 {

namespace {
constexpr int kSlotExplicit = 1;   // checkpoint(): e.g. the end of a prompt
constexpr int kSlotPreDecode = 2;  // taken before long decodes so a failure is cheap to undo
constexpr int32_t kPreDecodeMinRows = 16;
constexpr uint32_t kStateMagic = 0x53353351u;  // "Q35S"
constexpr uint32_t kStateVersion = 1;
}  // namespace

Context::~Context() = default;

Status Context::Create(const Model& model, const ContextOptions& opt, std::unique_ptr<Context>* out) {
  out->reset();
  if (model.vocab_only)
    return Error(QWEN35_ERR_UNSUPPORTED, "'{}' is a vocabulary-only file (no weights): it cannot run a context",
                 model.path);
  if (opt.n_ctx < 1) return Error(QWEN35_ERR_INVALID_ARG, "n_ctx must be positive (got {})", opt.n_ctx);
  if (opt.n_batch < 1) return Error(QWEN35_ERR_INVALID_ARG, "n_batch must be positive (got {})", opt.n_batch);
  if (opt.n_threads < 1 || opt.n_threads > 256)
    return Error(QWEN35_ERR_INVALID_ARG, "n_threads must be in [1, 256] (got {})", opt.n_threads);
  std::unique_ptr<Context> c(new Context(model, opt));
  c->opt_.n_batch = std::min(opt.n_batch, opt.n_ctx);
  BackendParams bp;
  bp.n_ctx = c->opt_.n_ctx;
  bp.n_batch = c->opt_.n_batch;
  bp.n_threads = opt.n_threads;
  bp.reference = opt.reference;
  if (model.device == QWEN35_DEVICE_CUDA && !opt.reference) {
    QWEN35_TRY(CreateCudaBackend(model, bp, &c->be_));
  } else {
    QWEN35_TRY(CreateCpuBackend(model, bp, &c->be_));
  }
  c->be_->abort_flag = &c->abort;
  // The row history holds at most n_ctx rows: reserve it so that decode
  // steps never allocate.
  try {
    c->tokens_.reserve(size_t(c->opt_.n_ctx));
    c->pos_.reserve(3 * size_t(c->opt_.n_ctx));
    c->next_pos_after_.reserve(size_t(c->opt_.n_ctx));
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "cannot allocate the row history of {} rows", c->opt_.n_ctx);
  }
  *out = std::move(c);
  return Status::Ok();
}

uint64_t Context::memory_bytes() const {
  return be_->memory_bytes() + logits_.capacity() * 4 + hidden_.capacity() * 4 + prenorm_.capacity() * 4 +
         mtp_logits_.capacity() * 4 + draft_logits_.capacity() * 4 + argmax_.capacity() * 4;
}

const float* Context::logits(int32_t i) const {
  if (i == -1) i = call_rows_ - 1;  // -1: the last row; other negatives are invalid
  const int32_t k = i - logits_row0_;
  if (i < 0 || i >= call_rows_ || k < 0 || k >= n_logit_rows_) return nullptr;
  return logits_.data() + size_t(k) * size_t(m_.hp.n_vocab);
}

TopKResult* Context::topk(int32_t i) {
  if (i == -1) i = call_rows_ - 1;  // -1: the last row; other negatives are invalid
  const int32_t k = i - logits_row0_;
  if (i < 0 || i >= call_rows_ || k < 0 || k >= n_topk_rows_) return nullptr;
  return &topk_[size_t(k)];
}

Status Context::topk_row(int32_t i, std::vector<float>* adjusted) {
  if (!topk(i)) return Error(QWEN35_ERR_STATE, "row {} of the last call kept no sampling candidates", i);
  if (i == -1) i = call_rows_ - 1;
  const int32_t r = i - logits_row0_ - topk_backend_row0_;
  if (r < 0) return Error(QWEN35_ERR_STATE, "row {} is not from the last candidate selection", i);
  return be_->topk_row(r, adjusted);
}

int32_t Context::argmax(int32_t i) const {
  if (i == -1) i = call_rows_ - 1;  // -1: the last row; other negatives are invalid
  const int32_t k = i - logits_row0_;
  if (i < 0 || i >= call_rows_ || k < 0 || k >= n_argmax_rows_) return -1;
  return argmax_[size_t(k)];
}

const float* Context::hidden(int32_t i) const {
  if (i == -1) i = call_rows_ - 1;  // -1: the last row; other negatives are invalid
  if (i < 0 || i >= call_rows_) return nullptr;
  return hidden_.data() + size_t(i) * size_t(m_.hp.n_embd);
}

const float* Context::mtp_logits(int32_t pos) const {
  const int32_t k = pos - mtp_logits_pos0_;
  if (k < 0 || k >= n_mtp_logits_) return nullptr;
  return mtp_logits_.data() + size_t(k) * size_t(m_.hp.n_vocab);
}

const float* Context::row_embd(int32_t row) const {
  for (const EmbdSpan& s : spans_)
    if (row >= s.row0 && row < s.row0 + s.n) return s.data->data() + size_t(row - s.row0) * size_t(m_.hp.n_embd);
  return nullptr;
}

Status Context::decode(const int32_t* tokens, int32_t n, LogitsMode mode) {
  if (!tokens || n < 1) return Error(QWEN35_ERR_INVALID_ARG, "decode needs at least one token");
  // Text positions (t = h = w); a one-token decode step allocates nothing.
  int32_t one[3];
  std::vector<int32_t> many;
  int32_t* pos = one;
  if (n > 1) {
    many.resize(static_cast<size_t>(n) * 3);
    pos = many.data();
  }
  for (int32_t i = 0; i < n; ++i) pos[3 * size_t(i)] = pos[3 * size_t(i) + 1] = pos[3 * size_t(i) + 2] = next_pos_ + i;
  return append(tokens, nullptr, n, pos, mode, -1);
}

Status Context::decode_argmax(const int32_t* tokens, int32_t n, LogitsMode mode) {
  if (!tokens || n < 1) return Error(QWEN35_ERR_INVALID_ARG, "decode needs at least one token");
  std::vector<int32_t> pos(static_cast<size_t>(n) * 3);
  for (int32_t i = 0; i < n; ++i) pos[3 * size_t(i)] = pos[3 * size_t(i) + 1] = pos[3 * size_t(i) + 2] = next_pos_ + i;
  return append(tokens, nullptr, n, pos.data(), mode, -1, Outputs::Argmax);
}

Status Context::decode_topk(const int32_t* tokens, int32_t n, const TopKRequest& req) {
  if (!tokens || n < 1) return Error(QWEN35_ERR_INVALID_ARG, "decode needs at least one token");
  std::vector<int32_t> pos(static_cast<size_t>(n) * 3);
  for (int32_t i = 0; i < n; ++i) pos[3 * size_t(i)] = pos[3 * size_t(i) + 1] = pos[3 * size_t(i) + 2] = next_pos_ + i;
  topk_reqs_ = &req;
  Status st = append(tokens, nullptr, n, pos.data(), LogitsMode::Last, -1, Outputs::TopK);
  topk_reqs_ = nullptr;
  return st;
}

Status Context::decode_with_snapshot_topk(const int32_t* tokens, int32_t n, const TopKRequest* reqs) {
  if (!tokens || !reqs || n < 1 || n > opt_.n_batch)
    return Error(QWEN35_ERR_INVALID_ARG, "a verify batch needs 1..{} tokens", opt_.n_batch);
  std::vector<int32_t> pos(static_cast<size_t>(n) * 3);
  for (int32_t i = 0; i < n; ++i) pos[3 * size_t(i)] = pos[3 * size_t(i) + 1] = pos[3 * size_t(i) + 2] = next_pos_ + i;
  topk_reqs_ = reqs;
  Status st = append(tokens, nullptr, n, pos.data(), LogitsMode::All, 0, Outputs::TopK);
  topk_reqs_ = nullptr;
  return st;
}

Status Context::decode_with_snapshot(const int32_t* tokens, int32_t n, LogitsMode mode) {
  if (!tokens || n < 1 || n > opt_.n_batch)
    return Error(QWEN35_ERR_INVALID_ARG, "a verify batch needs 1..{} tokens", opt_.n_batch);
  std::vector<int32_t> pos(static_cast<size_t>(n) * 3);
  for (int32_t i = 0; i < n; ++i) pos[3 * size_t(i)] = pos[3 * size_t(i) + 1] = pos[3 * size_t(i) + 2] = next_pos_ + i;
  return append(tokens, nullptr, n, pos.data(), mode, 0);
}

Status Context::decode_embd(const float* embd, int32_t n, const int32_t* pos, int32_t next_pos_after,
                            LogitsMode mode) {
  if (!embd || !pos || n < 1) return Error(QWEN35_ERR_INVALID_ARG, "decode_embd needs rows and positions");
  std::vector<int32_t> toks(static_cast<size_t>(n), -1);
  Status st = append(toks.data(), embd, n, pos, mode, -1);
  if (st.ok()) {
    next_pos_ = next_pos_after;
    next_pos_after_.back() = next_pos_after;
  }
  return st;
}

Status Context::append(const int32_t* tokens, const float* embd, int32_t n, const int32_t* pos, LogitsMode mode,
                       int32_t snapshot_row, Outputs outputs, bool defer_mtp) {
  const int32_t old = n_past();
  if (int64_t(old) + n > opt_.n_ctx)
    return Error(QWEN35_ERR_CONTEXT_FULL, "{} more rows do not fit: the context holds {} of {}", n, old, opt_.n_ctx);
  const int32_t V = m_.hp.n_vocab;
  if (!embd)
    for (int32_t i = 0; i < n; ++i)
      if (tokens[i] < 0 || tokens[i] >= V)
        return Error(QWEN35_ERR_INVALID_ARG, "token id {} at index {} is out of range [0, {})", tokens[i], i, V);

  // Record the rows first: evaluation reads its inputs from the history.
  try {
    tokens_.insert(tokens_.end(), tokens, tokens + n);
    pos_.insert(pos_.end(), pos, pos + 3 * size_t(n));
    for (int32_t i = 0; i < n; ++i) {
      const int32_t* p = pos + 3 * i;
      next_pos_after_.push_back(std::max({p[0], p[1], p[2]}) + 1);
    }
    if (embd) {
      EmbdSpan s;
      s.row0 = old;
      s.n = n;
      s.data = std::make_shared<std::vector<float>>(embd, embd + size_t(n) * size_t(m_.hp.n_embd));
      spans_.push_back(std::move(s));
    }
  } catch (const std::bad_alloc&) {
    tokens_.resize(size_t(old));
    pos_.resize(size_t(old) * 3);
    next_pos_after_.resize(size_t(old));
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory recording {} rows", n);
  }

  if (n >= kPreDecodeMinRows && old > 0) {
    if (mtp_flush().ok() && be_->save_recurrent(kSlotPreDecode).ok()) {
      slots_[kSlotPreDecode].rows = old;
      slots_[kSlotPreDecode].hidden = have_pending_ ? pending_hidden_ : std::vector<float>();
      slots_[kSlotPreDecode].n_mtp = n_mtp_;
    }
  }
  Status st = eval_rows(old, n, mode, snapshot_row, true, outputs, defer_mtp);
  if (!st.ok()) {
    // Undo: forget the rows and rebuild the exact state of the first `old`.
    tokens_.resize(size_t(old));
    pos_.resize(size_t(old) * 3);
    next_pos_after_.resize(size_t(old));
    while (!spans_.empty() && spans_.back().row0 >= old) spans_.pop_back();
    for (Checkpoint& c : slots_)
      if (c.rows > old) c.rows = -1;
    Status rs = recover(old);
    if (!rs.ok()) {
      reset();
      return Error(st.code(), "{} (and restoring the previous state failed: {}; the context was reset)",
                   st.message(), rs.message());
    }
    call_rows_ = 0;
    n_logit_rows_ = n_argmax_rows_ = n_topk_rows_ = 0;
    return st;
  }
  next_pos_ = next_pos_after_.back();
  return Status::Ok();
}

Status Context::eval_rows(int32_t first_row, int32_t n, LogitsMode mode, int32_t snapshot_row, bool record,
                          Outputs outputs, bool defer_mtp) {
  const int32_t V = m_.hp.n_vocab, D = m_.hp.n_embd;
  if (snapshot_row >= 0) {
    if (n > opt_.n_batch) return Error(QWEN35_ERR_INVALID_ARG, "a snapshot batch must fit in one chunk");
    slots_[Backend::kRollbackSlot].rows = -1;  // its buffers are about to be overwritten
  }
  const int32_t n_logits = mode == LogitsMode::All ? n : mode == LogitsMode::Last ? 1 : 0;
  try {
    if (record) {
      if (outputs == Outputs::Logits) logits_.resize(size_t(n_logits) * size_t(V));
      else if (outputs == Outputs::Argmax) argmax_.resize(size_t(n_logits));
      else topk_.resize(size_t(n_logits));
      hidden_.resize(size_t(n) * size_t(D));
      if (opt_.mtp_prenorm) prenorm_.resize(size_t(n) * size_t(D));
    } else {
      hidden_.resize(size_t(std::min(n, opt_.n_batch)) * size_t(D));
      if (opt_.mtp_prenorm) prenorm_.resize(hidden_.size());
    }
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for the outputs of {} rows", n);
  }
  call_rows_ = 0;
  n_logit_rows_ = n_argmax_rows_ = n_topk_rows_ = 0;
  logits_row0_ = n - n_logits;
  n_mtp_logits_ = 0;
  std::vector<float> embd_chunk;
  for (int32_t c0 = 0; c0 < n; c0 += opt_.n_batch) {
    const int32_t cn = std::min(opt_.n_batch, n - c0);
    const int32_t row0 = first_row + c0;
    EvalBatch b;
    b.n = cn;
    b.tokens = tokens_.data() + row0;
    b.pos = pos_.data() + 3 * size_t(row0);
    b.n_past = row0;
    // Embedding rows: gather their vectors (rows of a chunk may mix kinds).
    bool any_embd = false;
    for (int32_t i = 0; i < cn; ++i) any_embd |= tokens_[size_t(row0 + i)] < 0;
    if (any_embd) {
      embd_chunk.assign(size_t(cn) * size_t(D), 0.0f);
      for (int32_t i = 0; i < cn; ++i) {
        if (tokens_[size_t(row0 + i)] >= 0) {
          embedding_row(m_.token_embd, tokens_[size_t(row0 + i)], embd_chunk.data() + size_t(i) * size_t(D));
        } else {
          const float* e = row_embd(row0 + i);
          if (!e) return Error(QWEN35_ERR_STATE, "row {} has no embedding", row0 + i);
          std::memcpy(embd_chunk.data() + size_t(i) * size_t(D), e, size_t(D) * sizeof(float));
        }
      }
      b.embd = embd_chunk.data();
    }
    float* hid = hidden_.data() + (record ? size_t(c0) * size_t(D) : 0);
    float* pre = opt_.mtp_prenorm ? prenorm_.data() + (record ? size_t(c0) * size_t(D) : 0) : nullptr;
    b.hidden = hid;
    b.hidden_prenorm = pre;
    // Logit rows of this chunk: call rows [n - n_logits, n) intersected with [c0, c0+cn).
    const int32_t lfirst = std::max(n - n_logits, c0);
    if (record && lfirst < c0 + cn) {
      b.logits_first = lfirst - c0;
      if (outputs == Outputs::Logits) b.logits = logits_.data() + size_t(lfirst - (n - n_logits)) * size_t(V);
    } else {
      b.logits_first = cn;
    }
    b.snapshot_row = snapshot_row;
    if (outputs == Outputs::Argmax && b.logits_first < cn)
      QWEN35_TRY(be_->eval_greedy(b, argmax_.data() + (lfirst - (n - n_logits))));
    else if (outputs == Outputs::TopK && b.logits_first < cn) {
      topk_backend_row0_ = lfirst - (n - n_logits);
      QWEN35_TRY(be_->eval_topk(b, topk_reqs_ + topk_backend_row0_, topk_.data() + topk_backend_row0_));
    }
    else
      QWEN35_TRY(be_->eval(b));
    if (record) {
      call_rows_ = c0 + cn;
      const int32_t rows = std::max(0, c0 + cn - (n - n_logits));
      if (outputs == Outputs::Logits) n_logit_rows_ = rows;
      else if (outputs == Outputs::Argmax) n_argmax_rows_ = rows;
      else n_topk_rows_ = rows;
    }
    if (mtp_enabled()) QWEN35_TRY(mtp_fill(row0, cn, pre ? pre : hid, defer_mtp && cn == n));
    if (snapshot_row >= 0) {
      // MTP rows below the snapshot's last row are final (they pair true
      // hiddens with true tokens), so a rollback keeps them.
      Checkpoint& s = slots_[Backend::kRollbackSlot];
      s.rows = row0 + snapshot_row + 1;
      const float* hs = (pre ? pre : hid) + size_t(snapshot_row) * size_t(D);
      s.hidden.assign(hs, hs + D);
      s.n_mtp = std::min(n_mtp_, s.rows - 1);
    }
  }
  return Status::Ok();
}

Status Context::mtp_fill(int32_t first_row, int32_t n, const float* hidden_rows, bool defer) {
  const int32_t D = m_.hp.n_embd;
  const bool chained = first_row > 0 && have_pending_ && n_mtp_ + mtp_backlog_.n == first_row - 1;
  if (first_row > 0 && !chained) {
    // The MTP cache is behind (no hidden for an earlier row): it can no
    // longer be kept exact; drafting stays off until a reset/truncate.
    have_pending_ = false;
    return Status::Ok();
  }
  // MTP rows i = start..first_row+n-2 pair hidden(i) with the input of row i+1.
  int32_t start = chained ? first_row - 1 : first_row;
  const int32_t end = first_row + n - 1;  // exclusive
  // A draft already wrote row `start` with the same next token: reuse it
  // unless its logits are wanted.
  if (draft_valid_ && draft_row_ == start && start < end && tokens_[size_t(start + 1)] == draft_token_ &&
      !opt_.mtp_logits) {
    ++start;
    n_mtp_ = start;
  }
  draft_valid_ = false;
  MtpRows rows;
  rows.start = start;
  rows.n = std::max(0, end - start);
  if (rows.n > 0) {
    rows.hidden.resize(size_t(rows.n) * size_t(D));
    rows.tokens.resize(size_t(rows.n));
    for (int32_t r = 0; r < rows.n; ++r) {
      const int32_t i = start + r;
      const float* h = i < first_row ? pending_hidden_.data() : hidden_rows + size_t(i - first_row) * size_t(D);
      std::memcpy(rows.hidden.data() + size_t(r) * size_t(D), h, size_t(D) * sizeof(float));
      rows.tokens[size_t(r)] = tokens_[size_t(i + 1)];
      if (rows.tokens[size_t(r)] < 0) {
        if (rows.next_embd.empty()) rows.next_embd.assign(size_t(rows.n) * size_t(D), 0.0f);
        std::memcpy(rows.next_embd.data() + size_t(r) * size_t(D), row_embd(i + 1), size_t(D) * sizeof(float));
      }
    }
  }
  const float* last = hidden_rows + size_t(n - 1) * size_t(D);
  if (defer) {
    mtp_deferred_ = std::move(rows);
  } else if (mtp_lazy_ || mtp_backlog_.n > 0) {
    // Queue behind what already waits (rows stay in order); run the queue
    // now unless drafting is paused and it is still short.
    if (rows.n > 0) {
      if (mtp_backlog_.n == 0) mtp_backlog_.start = rows.start;
      const bool embd = !rows.next_embd.empty() || !mtp_backlog_.next_embd.empty();
      if (embd) {
        mtp_backlog_.next_embd.resize(size_t(mtp_backlog_.n) * size_t(D), 0.0f);
        if (rows.next_embd.empty()) rows.next_embd.assign(size_t(rows.n) * size_t(D), 0.0f);
        mtp_backlog_.next_embd.insert(mtp_backlog_.next_embd.end(), rows.next_embd.begin(), rows.next_embd.end());
      }
      mtp_backlog_.hidden.insert(mtp_backlog_.hidden.end(), rows.hidden.begin(), rows.hidden.end());
      mtp_backlog_.tokens.insert(mtp_backlog_.tokens.end(), rows.tokens.begin(), rows.tokens.end());
      mtp_backlog_.n += rows.n;
    }
    if (!mtp_lazy_ || mtp_backlog_.n >= opt_.n_batch) QWEN35_TRY(mtp_flush());
  } else {
    QWEN35_TRY(mtp_run(rows, -1, nullptr));
  }
  pending_hidden_.assign(last, last + D);
  have_pending_ = true;
  return Status::Ok();
}

Status Context::mtp_flush() {
  if (mtp_backlog_.n == 0) return Status::Ok();
  MtpRows all = std::move(mtp_backlog_);
  mtp_backlog_ = MtpRows();
  const size_t D = size_t(m_.hp.n_embd);
  for (int32_t r0 = 0; r0 < all.n; r0 += opt_.n_batch) {
    MtpRows part;
    part.start = all.start + r0;
    part.n = std::min(opt_.n_batch, all.n - r0);
    part.hidden.assign(all.hidden.begin() + int64_t(size_t(r0) * D), all.hidden.begin() + int64_t(size_t(r0 + part.n) * D));
    part.tokens.assign(all.tokens.begin() + r0, all.tokens.begin() + r0 + part.n);
    if (!all.next_embd.empty())
      part.next_embd.assign(all.next_embd.begin() + int64_t(size_t(r0) * D),
                            all.next_embd.begin() + int64_t(size_t(r0 + part.n) * D));
    Status st = mtp_run(part, -1, nullptr);
    if (!st.ok()) {
      have_pending_ = false;  // the cache cannot catch up: no drafts until a reset/truncate
      return st;
    }
  }
  return Status::Ok();
}

Status Context::mtp_run(MtpRows& rows, int32_t draft_token, int32_t* draft) {
  const int32_t D = m_.hp.n_embd, V = m_.hp.n_vocab;
  const int32_t total = rows.n + (draft_token >= 0 ? 1 : 0);
  if (total == 0) return Status::Ok();
  if (draft_token >= 0) {
    // The draft row: hidden of the last row with the proposed next token.
    if (rows.start + rows.n != n_past() - 1 || !have_pending_)
      return Error(QWEN35_ERR_STATE, "internal: the MTP draft row does not follow the cache");
    rows.hidden.insert(rows.hidden.end(), pending_hidden_.begin(), pending_hidden_.end());
    rows.tokens.push_back(draft_token);
    if (!rows.next_embd.empty()) rows.next_embd.resize(size_t(total) * size_t(D), 0.0f);
  }
  MtpBatch mb;
  mb.n = total;
  mb.hidden = rows.hidden.data();
  mb.tokens = rows.tokens.data();
  mb.next_embd = rows.next_embd.empty() ? nullptr : rows.next_embd.data();
  mb.pos = pos_.data() + 3 * size_t(rows.start);
  mb.n_past = rows.start;
  mb.logits_first = total;
  if (draft_token >= 0) {
    mb.logits_first = total - 1;
    QWEN35_TRY(be_->eval_mtp_greedy(mb, draft));
    draft_valid_ = true;
    draft_row_ = rows.start + rows.n;
    draft_token_ = draft_token;
  } else {
    if (opt_.mtp_logits) {
      mtp_logits_.resize(size_t(total) * size_t(V));
      mb.logits_first = 0;
      mb.logits = mtp_logits_.data();
      mtp_logits_pos0_ = rows.start;
      n_mtp_logits_ = total;
    }
    QWEN35_TRY(be_->eval_mtp(mb));
  }
  n_mtp_ = rows.start + rows.n;
  return Status::Ok();
}

Status Context::mtp_draft(int32_t token, const float** out) {
  *out = nullptr;
  if (!mtp_enabled()) return Error(QWEN35_ERR_STATE, "MTP is not enabled on this context");
  QWEN35_TRY(mtp_flush());
  if (token < 0 || token >= m_.hp.n_vocab)
    return Error(QWEN35_ERR_INVALID_ARG, "token id {} is out of range", token);
  const int32_t np = n_past();
  if (np < 1 || !have_pending_ || n_mtp_ != np - 1)
    return Error(QWEN35_ERR_STATE, "no hidden state to draft from (decode a token first)");
  if (np > opt_.n_ctx - 1) return Error(QWEN35_ERR_CONTEXT_FULL, "no room for a draft");
  draft_logits_.resize(size_t(m_.hp.n_vocab));
  MtpBatch mb;
  mb.n = 1;
  mb.hidden = pending_hidden_.data();
  mb.tokens = &token;
  mb.pos = pos_.data() + 3 * size_t(np - 1);
  mb.n_past = np - 1;
  mb.logits_first = 0;
  mb.logits = draft_logits_.data();
  QWEN35_TRY(be_->eval_mtp(mb));
  draft_valid_ = true;
  draft_row_ = np - 1;
  draft_token_ = token;
  *out = draft_logits_.data();
  return Status::Ok();
}

Status Context::mtp_draft_argmax(int32_t token, int32_t* draft) {
  *draft = -1;
  if (!mtp_enabled()) return Error(QWEN35_ERR_STATE, "MTP is not enabled on this context");
  QWEN35_TRY(mtp_flush());
  if (token < 0 || token >= m_.hp.n_vocab)
    return Error(QWEN35_ERR_INVALID_ARG, "token id {} is out of range", token);
  const int32_t np = n_past();
  if (np < 1 || !have_pending_ || n_mtp_ != np - 1)
    return Error(QWEN35_ERR_STATE, "no hidden state to draft from (decode a token first)");
  if (np > opt_.n_ctx - 1) return Error(QWEN35_ERR_CONTEXT_FULL, "no room for a draft");
  MtpRows none;
  none.start = np - 1;
  return mtp_run(none, token, draft);
}

Status Context::speculate_greedy(int32_t token, int32_t draft, SpecStep* out) {
  *out = SpecStep();
  if (!mtp_enabled()) return Error(QWEN35_ERR_STATE, "MTP is not enabled on this context");
  QWEN35_TRY(mtp_flush());
  if (opt_.n_batch < 2) return Error(QWEN35_ERR_INVALID_ARG, "a verify batch needs n_batch >= 2");
  const int32_t np = n_past();
  const int32_t pair[2] = {token, draft};
  int32_t pos[6];
  for (int i = 0; i < 2; ++i) pos[3 * i] = pos[3 * i + 1] = pos[3 * i + 2] = next_pos_ + i;
  // The MTP rows of the verify pass wait (mtp_deferred_) so that, on
  // acceptance, they run in the same MTP pass as the next draft; with
  // mtp_logits they are computed as usual.
  // (Only after mtp_draft_argmax(token): the draft's MTP row is then final
  // after the verify, so a rejection keeps the cache chained.)
  const bool fuse = !opt_.mtp_logits && draft_valid_ && draft_row_ == np - 1 && draft_token_ == token;
  mtp_deferred_ = MtpRows();
  QWEN35_TRY(append(pair, nullptr, 2, pos, LogitsMode::All, 0, Outputs::Argmax, fuse));
  const int32_t y0 = argmax_[0], y1 = argmax_[1];
  auto room = [&] { return n_past() <= opt_.n_ctx - 1; };
  if (y0 != draft) {
    mtp_deferred_ = MtpRows();  // rows after the snapshot: dropped with the draft's row
    QWEN35_TRY(rollback_to_snapshot());
    out->next = y0;
    if (room() && have_pending_) QWEN35_TRY(mtp_draft_argmax(y0, &out->next_draft));
    return Status::Ok();
  }
  out->accepted = true;
  out->next = y1;
  if (!fuse) {
    if (room() && have_pending_) QWEN35_TRY(mtp_draft_argmax(y1, &out->next_draft));
    return Status::Ok();
  }
  MtpRows rows = std::move(mtp_deferred_);
  mtp_deferred_ = MtpRows();
  const bool draft_next = room() && have_pending_ && n_mtp_ + rows.n == np + 1;
  const Status st = mtp_run(rows, draft_next ? y1 : -1, &out->next_draft);
  if (!st.ok()) {
    have_pending_ = false;  // the MTP cache is behind: no drafts until a reset/truncate
    out->next_draft = -1;
    return st;
  }
  return Status::Ok();
}

Status Context::rollback_to_snapshot() {
  const Checkpoint& s = slots_[Backend::kRollbackSlot];
  if (s.rows < 0 || s.rows > n_past()) return Error(QWEN35_ERR_STATE, "no snapshot to roll back to");
  return truncate(s.rows);
}

Status Context::checkpoint() {
  QWEN35_TRY(mtp_flush());  // a checkpoint records a complete MTP cache
  QWEN35_TRY(be_->save_recurrent(kSlotExplicit));
  Checkpoint& c = slots_[kSlotExplicit];
  c.rows = n_past();
  c.hidden = have_pending_ ? pending_hidden_ : std::vector<float>();
  c.n_mtp = n_mtp_;
  return Status::Ok();
}

void Context::reset() {
  tokens_.clear();
  pos_.clear();
  next_pos_after_.clear();
  spans_.clear();
  next_pos_ = 0;
  call_rows_ = n_logit_rows_ = n_argmax_rows_ = n_topk_rows_ = n_mtp_logits_ = 0;
  n_mtp_ = 0;
  mtp_deferred_ = MtpRows();
  mtp_backlog_ = MtpRows();
  have_pending_ = false;
  draft_valid_ = false;
  for (Checkpoint& c : slots_) c.rows = -1;
  be_->reset();
}

Status Context::recover(int32_t n_rows) {
  // Best checkpoint at or below n_rows.
  int best = -1;
  for (int s = 0; s < Backend::kNumSlots; ++s)
    if (slots_[s].rows >= 0 && slots_[s].rows <= n_rows && (best < 0 || slots_[s].rows > slots_[best].rows))
      best = s;
  int32_t have = 0;
  draft_valid_ = false;
  mtp_deferred_ = MtpRows();
  // Waiting MTP rows all follow the newest checkpoint (checkpoints flush):
  // the replay below queues or computes them again.
  mtp_backlog_ = MtpRows();
  if (best >= 0 && slots_[best].rows > 0) {
    QWEN35_TRY(be_->restore_recurrent(best));
    const Checkpoint& c = slots_[best];
    have = c.rows;
    n_mtp_ = std::min(c.n_mtp, have - 1);
    have_pending_ = !c.hidden.empty() && n_mtp_ == have - 1;
    if (have_pending_) pending_hidden_ = c.hidden;
  } else {
    be_->reset();
    n_mtp_ = 0;
    have_pending_ = false;
  }
  if (have < n_rows) {
    // Replay the recorded rows; cancellation is ignored so the state is
    // always rebuilt completely.
    const std::atomic<bool>* saved = be_->abort_flag;
    be_->abort_flag = nullptr;
    Status st = eval_rows(have, n_rows - have, LogitsMode::None, -1, false);
    be_->abort_flag = saved;
    QWEN35_TRY(st);
  }
  return Status::Ok();
}

Status Context::truncate(int32_t n_keep) {
  const int32_t np = n_past();
  if (n_keep < 0 || n_keep > np)
    return Error(QWEN35_ERR_INVALID_ARG, "cannot truncate to {} rows: the context holds {}", n_keep, np);
  if (n_keep == np) return Status::Ok();
  if (n_keep == 0) {
    reset();
    return Status::Ok();
  }
  tokens_.resize(size_t(n_keep));
  pos_.resize(size_t(n_keep) * 3);
  next_pos_after_.resize(size_t(n_keep));
  while (!spans_.empty() && spans_.back().row0 >= n_keep) spans_.pop_back();
  if (!spans_.empty() && spans_.back().row0 + spans_.back().n > n_keep) {
    EmbdSpan& s = spans_.back();
    const int32_t keep = n_keep - s.row0;
    s.data = std::make_shared<std::vector<float>>(s.data->begin(), s.data->begin() + size_t(keep) * size_t(m_.hp.n_embd));
    s.n = keep;
  }
  next_pos_ = next_pos_after_.back();
  for (Checkpoint& c : slots_)
    if (c.rows > n_keep) c.rows = -1;
  call_rows_ = n_logit_rows_ = n_argmax_rows_ = n_topk_rows_ = n_mtp_logits_ = 0;
  Status st = recover(n_keep);
  if (!st.ok()) {
    reset();
    return st.prefix("truncate failed, the context was reset: ");
  }
  return Status::Ok();
}

// ---- state snapshots ---------------------------------------------------------

namespace {
struct Writer {
  std::vector<uint8_t>* out;
  template <typename T>
  void put(const T& v) { put_bytes(&v, sizeof(T)); }
  void put_bytes(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    out->insert(out->end(), b, b + n);
  }
};
struct Reader {
  const uint8_t* p;
  uint64_t n;
  uint64_t at = 0;
  template <typename T>
  bool get(T* v) { return get_bytes(v, sizeof(T)); }
  bool get_bytes(void* dst, uint64_t k) {
    if (k > n - at) return false;
    std::memcpy(dst, p + at, k);
    at += k;
    return true;
  }
};
}  // namespace

uint64_t Context::state_size() const {
  const uint64_t np = uint64_t(n_past()), D = uint64_t(m_.hp.n_embd);
  uint64_t embd_rows = 0;
  for (const EmbdSpan& s : spans_) embd_rows += uint64_t(s.n);
  return 64 + np * 4 * 5 + spans_.size() * 8 + embd_rows * D * 4 + D * 4 +
         be_->state_bytes(n_past(), n_mtp_);
}

Status Context::state_save(std::vector<uint8_t>* out) const {
  out->clear();
  try {
    out->reserve(state_size());
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for a {} byte state", state_size());
  }
  Writer w{out};
  const HParams& hp = m_.hp;
  w.put(kStateMagic);
  w.put(kStateVersion);
  // Fingerprint of the model the state belongs to.
  w.put(uint64_t(m_.file ? m_.file->size() : 0));
  w.put(hp.n_vocab);
  w.put(hp.n_embd);
  w.put(hp.n_layer);
  w.put(int32_t(hp.n_mtp));
  const int32_t np = n_past();
  w.put(np);
  w.put(next_pos_);
  w.put(n_mtp_);
  w.put(uint8_t(have_pending_));
  w.put_bytes(tokens_.data(), size_t(np) * 4);
  w.put_bytes(pos_.data(), size_t(np) * 12);
  w.put_bytes(next_pos_after_.data(), size_t(np) * 4);
  w.put(uint32_t(spans_.size()));
  for (const EmbdSpan& s : spans_) {
    w.put(s.row0);
    w.put(s.n);
    w.put_bytes(s.data->data(), s.data->size() * 4);
  }
  if (have_pending_) w.put_bytes(pending_hidden_.data(), size_t(hp.n_embd) * 4);
  const size_t at = out->size();
  out->resize(at + be_->state_bytes(np, n_mtp_));
  return const_cast<Backend&>(*be_).write_state(np, n_mtp_, out->data() + at);
}

Status Context::state_load(const uint8_t* data, uint64_t size) {
  Reader r{data, size};
  const HParams& hp = m_.hp;
  uint32_t magic = 0, version = 0;
  if (!r.get(&magic) || magic != kStateMagic) return Error(QWEN35_ERR_FORMAT, "not a qwen35 context state");
  if (!r.get(&version) || version != kStateVersion)
    return Error(QWEN35_ERR_UNSUPPORTED, "context state version {} is not supported", version);
  uint64_t fsize = 0;
  int32_t nv = 0, ne = 0, nl = 0, nm = 0, np = 0, next_pos = 0, n_mtp = 0;
  uint8_t pending = 0;
  if (!r.get(&fsize) || !r.get(&nv) || !r.get(&ne) || !r.get(&nl) || !r.get(&nm))
    return Error(QWEN35_ERR_FORMAT, "context state is truncated");
  if (fsize != (m_.file ? m_.file->size() : 0) || nv != hp.n_vocab || ne != hp.n_embd || nl != hp.n_layer ||
      nm != hp.n_mtp)
    return Error(QWEN35_ERR_INVALID_ARG, "the context state was saved with a different model");
  if (!r.get(&np) || !r.get(&next_pos) || !r.get(&n_mtp) || !r.get(&pending))
    return Error(QWEN35_ERR_FORMAT, "context state is truncated");
  if (np < 0 || np > opt_.n_ctx)
    return Error(QWEN35_ERR_CONTEXT_FULL, "the state holds {} rows but the context has room for {}", np, opt_.n_ctx);
  if (n_mtp < 0 || n_mtp > np) return Error(QWEN35_ERR_FORMAT, "context state has a bad MTP row count");
  std::vector<int32_t> toks(static_cast<size_t>(np)), pos(static_cast<size_t>(np) * 3), npa(static_cast<size_t>(np));
  if (!r.get_bytes(toks.data(), toks.size() * 4) || !r.get_bytes(pos.data(), pos.size() * 4) ||
      !r.get_bytes(npa.data(), npa.size() * 4))
    return Error(QWEN35_ERR_FORMAT, "context state is truncated");
  for (int32_t t : toks)
    if (t < -1 || t >= hp.n_vocab) return Error(QWEN35_ERR_FORMAT, "context state holds a bad token id {}", t);
  uint32_t n_spans = 0;
  if (!r.get(&n_spans) || n_spans > uint32_t(np)) return Error(QWEN35_ERR_FORMAT, "context state is truncated");
  std::vector<EmbdSpan> spans;
  for (uint32_t i = 0; i < n_spans; ++i) {
    EmbdSpan s;
    if (!r.get(&s.row0) || !r.get(&s.n) || s.row0 < 0 || s.n < 1 || s.row0 + s.n > np)
      return Error(QWEN35_ERR_FORMAT, "context state has a bad embedding span");
    s.data = std::make_shared<std::vector<float>>(size_t(s.n) * size_t(hp.n_embd));
    if (!r.get_bytes(s.data->data(), s.data->size() * 4)) return Error(QWEN35_ERR_FORMAT, "context state is truncated");
    spans.push_back(std::move(s));
  }
  std::vector<float> ph;
  if (pending) {
    ph.resize(size_t(hp.n_embd));
    if (!r.get_bytes(ph.data(), ph.size() * 4)) return Error(QWEN35_ERR_FORMAT, "context state is truncated");
  }
  if (r.n - r.at != be_->state_bytes(np, n_mtp))
    return Error(QWEN35_ERR_FORMAT, "context state has {} bytes of cache data, expected {}", r.n - r.at,
                 be_->state_bytes(np, n_mtp));
  // Everything is validated: now replace the state.
  reset();
  Status st = be_->read_state(np, n_mtp, r.p + r.at);
  if (!st.ok()) {
    reset();
    return st;
  }
  tokens_ = std::move(toks);
  pos_ = std::move(pos);
  next_pos_after_ = std::move(npa);
  spans_ = std::move(spans);
  next_pos_ = next_pos;
  n_mtp_ = n_mtp;
  have_pending_ = pending != 0;
  pending_hidden_ = std::move(ph);
  return Status::Ok();
}

}  // namespace qwen35
