#include "model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "ggml_types.h"
#include "quants.h"
#include "tokenizer.h"

namespace qwen35 {

Model::~Model() = default;

namespace {

constexpr const char* kArch = "qwen35";

class Loader {
 public:
  Loader(Model& m, const GgufFile& f) : m_(m), f_(f) {}

  Status hparams();
  Status weights(const LoadOptions& opt);

 private:
  Status req_int(const std::string& key, int32_t* out, int64_t lo, int64_t hi);
  Status opt_int(const std::string& key, int32_t* out, int64_t lo, int64_t hi);
  std::string k(const char* suffix) const { return std::string(kArch) + "." + suffix; }

  // A 2-D matrix weight with ne = [cols, rows]. `required` false: absent is OK.
  Status matrix(const std::string& name, int64_t cols, int64_t rows, bool required, Weight* w);
  // A 1-D vector (or 2-D tensor read as a flat vector) with exactly the
  // given shape; converted to F32 if stored otherwise.
  Status vec(const std::string& name, int64_t ne0, int64_t ne1, Vec* v);
  Status layer(int il, bool is_attn, Layer* L);

  Model& m_;
  const GgufFile& f_;
  size_t n_used_ = 0;
};

Status Loader::req_int(const std::string& key, int32_t* out, int64_t lo, int64_t hi) {
  int64_t v = 0;
  bool found = false;
  QWEN35_TRY(f_.get_int(key, &v, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "required metadata key '{}' is missing", key);
  if (v < lo || v > hi) return Error(QWEN35_ERR_FORMAT, "metadata key '{}' = {} is out of range [{}, {}]", key, v, lo, hi);
  *out = int32_t(v);
  return Status::Ok();
}

Status Loader::opt_int(const std::string& key, int32_t* out, int64_t lo, int64_t hi) {
  int64_t v = 0;
  bool found = false;
  QWEN35_TRY(f_.get_int(key, &v, &found));
  if (!found) return Status::Ok();
  if (v < lo || v > hi) return Error(QWEN35_ERR_FORMAT, "metadata key '{}' = {} is out of range [{}, {}]", key, v, lo, hi);
  *out = int32_t(v);
  return Status::Ok();
}

Status Loader::hparams() {
  std::string_view arch;
  bool found = false;
  QWEN35_TRY(f_.get_string("general.architecture", &arch, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "metadata key 'general.architecture' is missing");
  if (arch != kArch)
    return Error(QWEN35_ERR_UNSUPPORTED, "architecture '{}' is not supported (this library runs '{}' only)", arch, kArch);

  HParams& hp = m_.hp;
  constexpr int64_t kBig = 1 << 20;
  QWEN35_TRY(req_int(k("block_count"), &hp.n_block, 1, 4096));
  QWEN35_TRY(opt_int(k("nextn_predict_layers"), &hp.n_mtp, 0, 1));
  hp.n_layer = hp.n_block - hp.n_mtp;
  if (hp.n_layer < 1) return Error(QWEN35_ERR_FORMAT, "block_count {} leaves no main layer", hp.n_block);
  QWEN35_TRY(req_int(k("context_length"), &hp.n_ctx_train, 1, int64_t(1) << 30));
  QWEN35_TRY(req_int(k("embedding_length"), &hp.n_embd, 1, kBig));
  QWEN35_TRY(req_int(k("feed_forward_length"), &hp.n_ff, 1, kBig));
  QWEN35_TRY(req_int(k("attention.head_count"), &hp.n_head, 1, 4096));
  hp.n_head_kv = hp.n_head;
  QWEN35_TRY(opt_int(k("attention.head_count_kv"), &hp.n_head_kv, 1, 4096));
  if (hp.n_head % hp.n_head_kv != 0)
    return Error(QWEN35_ERR_FORMAT, "attention.head_count {} is not a multiple of head_count_kv {}", hp.n_head,
                 hp.n_head_kv);
  // key_length/value_length defaults (D/Hq) are wrong for this family, so
  // both are required and must agree (one head dim for q, k and v).
  int32_t kl = 0, vl = 0;
  QWEN35_TRY(req_int(k("attention.key_length"), &kl, 2, 65536));
  QWEN35_TRY(req_int(k("attention.value_length"), &vl, 2, 65536));
  if (kl != vl)
    return Error(QWEN35_ERR_UNSUPPORTED, "attention.key_length {} != value_length {} is not supported", kl, vl);
  hp.head_dim = kl;
  hp.n_rot = hp.head_dim;
  QWEN35_TRY(req_int(k("rope.dimension_count"), &hp.n_rot, 2, hp.head_dim));
  if (hp.n_rot % 2) return Error(QWEN35_ERR_FORMAT, "rope.dimension_count {} must be even", hp.n_rot);
  double d;
  QWEN35_TRY(f_.get_float(k("rope.freq_base"), &d, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "required metadata key '{}' is missing", k("rope.freq_base"));
  if (!(d > 1.0 && d < 1e12)) return Error(QWEN35_ERR_FORMAT, "rope.freq_base {} is out of range", d);
  hp.rope_base = float(d);
  QWEN35_TRY(f_.get_float(k("attention.layer_norm_rms_epsilon"), &d, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "required metadata key '{}' is missing", k("attention.layer_norm_rms_epsilon"));
  if (!(d > 0.0 && d < 1.0)) return Error(QWEN35_ERR_FORMAT, "layer_norm_rms_epsilon {} is out of range", d);
  hp.eps = float(d);
  std::vector<int64_t> sec;
  QWEN35_TRY(f_.get_int_array(k("rope.dimension_sections"), &sec, &found));
  if (found) {
    if (sec.size() < 3 || sec.size() > 4)
      return Error(QWEN35_ERR_FORMAT, "rope.dimension_sections has {} entries (expected 3 or 4)", sec.size());
    int64_t sum = 0;
    for (size_t i = 0; i < sec.size(); ++i) {
      if (sec[i] < 0 || sec[i] > hp.n_rot / 2)
        return Error(QWEN35_ERR_FORMAT, "rope.dimension_sections[{}] = {} is out of range", i, sec[i]);
      hp.rope_sections[i] = int32_t(sec[i]);
      sum += sec[i];
    }
    if (sum > hp.n_rot / 2)
      return Error(QWEN35_ERR_FORMAT, "rope.dimension_sections sum {} exceeds the {} rotary pairs", sum, hp.n_rot / 2);
  } else {
    return Error(QWEN35_ERR_FORMAT, "required metadata key '{}' is missing", k("rope.dimension_sections"));
  }
  QWEN35_TRY(req_int(k("ssm.conv_kernel"), &hp.ssm_conv, 1, 64));
  QWEN35_TRY(req_int(k("ssm.inner_size"), &hp.ssm_inner, 1, kBig));
  QWEN35_TRY(req_int(k("ssm.state_size"), &hp.ssm_state, 1, 4096));
  QWEN35_TRY(req_int(k("ssm.time_step_rank"), &hp.ssm_heads_v, 1, 4096));
  QWEN35_TRY(req_int(k("ssm.group_count"), &hp.ssm_heads_k, 1, 4096));
  if (hp.ssm_inner % hp.ssm_heads_v != 0)
    return Error(QWEN35_ERR_FORMAT, "ssm.inner_size {} is not a multiple of ssm.time_step_rank {}", hp.ssm_inner,
                 hp.ssm_heads_v);
  hp.ssm_dv = hp.ssm_inner / hp.ssm_heads_v;
  if (hp.ssm_heads_v % hp.ssm_heads_k != 0)
    return Error(QWEN35_ERR_FORMAT, "ssm.time_step_rank {} is not a multiple of ssm.group_count {}", hp.ssm_heads_v,
                 hp.ssm_heads_k);
  QWEN35_TRY(opt_int(k("full_attention_interval"), &hp.full_attn_interval, 1, 4096));
  return Status::Ok();
}

Status Loader::matrix(const std::string& name, int64_t cols, int64_t rows, bool required, Weight* w) {
  const GgufTensor* t = f_.find_tensor(name);
  if (!t) {
    if (required) return Error(QWEN35_ERR_FORMAT, "tensor '{}' is missing", name);
    return Status::Ok();
  }
  ++n_used_;
  if (t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != 1 || t->ne[3] != 1)
    return Error(QWEN35_ERR_FORMAT, "tensor '{}' has shape [{}, {}, {}, {}], expected [{}, {}]", name, t->ne[0],
                 t->ne[1], t->ne[2], t->ne[3], cols, rows);
  const TypeInfo* ti = type_info(t->type);
  if (!ti->compute) return Error(QWEN35_ERR_UNSUPPORTED, "tensor '{}' has unsupported type {}", name, ti->name);
  w->name = name;
  w->type = t->type;
  w->cols = cols;
  w->rows = rows;
  w->row_bytes = row_bytes(*ti, cols);
  w->data = t->data;
  // Optional per-tensor second-level scale (ModelOpt NVFP4 exports).
  std::string sname = name;
  if (sname.size() > 7 && sname.compare(sname.size() - 7, 7, ".weight") == 0) {
    sname = sname.substr(0, sname.size() - 7) + ".scale";
    if (const GgufTensor* s = f_.find_tensor(sname)) {
      ++n_used_;
      if (s->type != GGML_F32 || s->nelements() != 1)
        return Error(QWEN35_ERR_FORMAT, "tensor '{}' must be a single F32 value", sname);
      float v;
      std::memcpy(&v, s->data, 4);
      if (!std::isfinite(v)) return Error(QWEN35_ERR_FORMAT, "tensor '{}' is not finite", sname);
      w->scale = v;
    }
    std::string iname = name.substr(0, name.size() - 7) + ".input_scale";
    if (f_.find_tensor(iname)) ++n_used_;  // loaded by llama.cpp but never used
  }
  return Status::Ok();
}

Status Loader::vec(const std::string& name, int64_t ne0, int64_t ne1, Vec* v) {
  const GgufTensor* t = f_.find_tensor(name);
  if (!t) return Error(QWEN35_ERR_FORMAT, "tensor '{}' is missing", name);
  ++n_used_;
  if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
    return Error(QWEN35_ERR_FORMAT, "tensor '{}' has shape [{}, {}, {}, {}], expected [{}, {}]", name, t->ne[0],
                 t->ne[1], t->ne[2], t->ne[3], ne0, ne1);
  const TypeInfo* ti = type_info(t->type);
  if (!ti->compute) return Error(QWEN35_ERR_UNSUPPORTED, "tensor '{}' has unsupported type {}", name, ti->name);
  v->n = ne0 * ne1;
  if (t->type == GGML_F32 && reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0) {
    v->data = reinterpret_cast<const float*>(t->data);
  } else {
    v->owned.resize(size_t(v->n));
    uint64_t rb = row_bytes(*ti, ne0);
    for (int64_t r = 0; r < ne1; ++r) dequantize_row(t->type, t->data + r * rb, v->owned.data() + r * ne0, ne0);
    v->data = v->owned.data();
    m_.host_bytes += v->owned.size() * sizeof(float);
  }
  for (int64_t i = 0; i < v->n; ++i)
    if (!std::isfinite(v->data[i])) return Error(QWEN35_ERR_FORMAT, "tensor '{}' element {} is not finite", name, i);
  return Status::Ok();
}

Status Loader::layer(int il, bool is_attn, Layer* L) {
  const HParams& hp = m_.hp;
  const std::string p = "blk." + std::to_string(il) + ".";
  const int64_t D = hp.n_embd;
  L->is_attn = is_attn;
  QWEN35_TRY(vec(p + "attn_norm.weight", D, 1, &L->attn_norm));
  QWEN35_TRY(vec(p + "post_attention_norm.weight", D, 1, &L->post_attention_norm));
  if (is_attn) {
    QWEN35_TRY(matrix(p + "attn_q.weight", D, 2 * int64_t(hp.q_dim()), true, &L->wq));
    QWEN35_TRY(matrix(p + "attn_k.weight", D, hp.kv_dim(), true, &L->wk));
    QWEN35_TRY(matrix(p + "attn_v.weight", D, hp.kv_dim(), true, &L->wv));
    QWEN35_TRY(vec(p + "attn_q_norm.weight", hp.head_dim, 1, &L->q_norm));
    QWEN35_TRY(vec(p + "attn_k_norm.weight", hp.head_dim, 1, &L->k_norm));
    QWEN35_TRY(matrix(p + "attn_output.weight", hp.q_dim(), D, true, &L->wo));
  } else {
    QWEN35_TRY(matrix(p + "attn_qkv.weight", D, hp.ssm_conv_dim(), true, &L->wqkv));
    QWEN35_TRY(matrix(p + "attn_gate.weight", D, hp.ssm_inner, true, &L->wgate));
    QWEN35_TRY(vec(p + "ssm_conv1d.weight", hp.ssm_conv, hp.ssm_conv_dim(), &L->conv1d));
    QWEN35_TRY(vec(p + "ssm_dt.bias", hp.ssm_heads_v, 1, &L->dt_bias));
    QWEN35_TRY(vec(p + "ssm_a", hp.ssm_heads_v, 1, &L->ssm_a));
    QWEN35_TRY(matrix(p + "ssm_beta.weight", D, hp.ssm_heads_v, true, &L->wbeta));
    QWEN35_TRY(matrix(p + "ssm_alpha.weight", D, hp.ssm_heads_v, true, &L->walpha));
    QWEN35_TRY(vec(p + "ssm_norm.weight", hp.ssm_dv, 1, &L->ssm_norm));
    QWEN35_TRY(matrix(p + "ssm_out.weight", hp.ssm_inner, D, true, &L->ssm_out));
  }
  QWEN35_TRY(matrix(p + "ffn_gate.weight", D, hp.n_ff, true, &L->ffn_gate));
  QWEN35_TRY(matrix(p + "ffn_up.weight", D, hp.n_ff, true, &L->ffn_up));
  QWEN35_TRY(matrix(p + "ffn_down.weight", hp.n_ff, D, true, &L->ffn_down));
  return Status::Ok();
}

Status Loader::weights(const LoadOptions& opt) {
  const HParams& hp = m_.hp;
  const int64_t D = hp.n_embd;
  const GgufTensor* te = f_.find_tensor("token_embd.weight");
  if (!te) return Error(QWEN35_ERR_FORMAT, "tensor 'token_embd.weight' is missing");
  if (te->ne[1] < 1 || te->ne[1] > (int64_t(1) << 24))
    return Error(QWEN35_ERR_FORMAT, "tensor 'token_embd.weight' has {} rows (vocabulary size out of range)", te->ne[1]);
  m_.hp.n_vocab = int32_t(te->ne[1]);
  const int64_t V = hp.n_vocab;
  QWEN35_TRY(matrix("token_embd.weight", D, V, true, &m_.token_embd));
  QWEN35_TRY(matrix("output.weight", D, V, false, &m_.output));
  m_.tied_output = !m_.output.present();
  if (m_.tied_output) m_.output = m_.token_embd;
  QWEN35_TRY(vec("output_norm.weight", D, 1, &m_.output_norm));

  const int total = hp.n_layer + hp.n_mtp;
  auto progress = [&](int done) -> Status {
    if (opt.progress && !opt.progress(float(done) / float(total + 1), opt.progress_user_data))
      return Error(QWEN35_ERR_CANCELLED, "model load cancelled by the progress callback");
    return Status::Ok();
  };
  QWEN35_TRY(progress(0));
  m_.layers.resize(size_t(hp.n_layer));
  for (int il = 0; il < hp.n_layer; ++il) {
    QWEN35_TRY(layer(il, hp.is_attn_layer(il), &m_.layers[size_t(il)]));
    QWEN35_TRY(progress(il + 1));
  }
  if (hp.n_mtp == 1) {
    const int il = hp.n_layer;
    const std::string p = "blk." + std::to_string(il) + ".nextn.";
    auto mtp = std::make_unique<MtpLayer>();
    QWEN35_TRY(layer(il, /*is_attn=*/true, &mtp->block));  // the MTP block is always full attention
    QWEN35_TRY(matrix(p + "eh_proj.weight", 2 * D, D, true, &mtp->eh_proj));
    QWEN35_TRY(vec(p + "enorm.weight", D, 1, &mtp->enorm));
    QWEN35_TRY(vec(p + "hnorm.weight", D, 1, &mtp->hnorm));
    // llama.cpp falls back to output_norm when shared_head_norm is absent.
    if (f_.find_tensor(p + "shared_head_norm.weight")) {
      QWEN35_TRY(vec(p + "shared_head_norm.weight", D, 1, &mtp->shared_head_norm));
    } else {
      mtp->shared_head_norm.data = m_.output_norm.data;
      mtp->shared_head_norm.n = D;
    }
    QWEN35_TRY(matrix(p + "embed_tokens.weight", D, V, false, &mtp->embed));
    QWEN35_TRY(matrix(p + "shared_head_head.weight", D, V, false, &mtp->head));
    m_.mtp = std::move(mtp);
    QWEN35_TRY(progress(total));
  }
  // Every tensor of the file must be one we know: a stray tensor means a
  // different model variant that we would silently run wrong.
  if (n_used_ != f_.tensors().size()) {
    for (const GgufTensor& t : f_.tensors()) {
      std::string n(t.name);
      // find_tensor lookups above counted each used tensor once; search
      // for the first one no rule claims.
      bool known = n == "token_embd.weight" || n == "output.weight" || n == "output_norm.weight" ||
                   n.rfind("blk.", 0) == 0;
      if (!known) return Error(QWEN35_ERR_FORMAT, "unexpected tensor '{}' in a qwen35 file", n);
      if (n.rfind("blk.", 0) == 0) {
        long b = std::strtol(n.c_str() + 4, nullptr, 10);
        if (b < 0 || b >= hp.n_block)
          return Error(QWEN35_ERR_FORMAT, "tensor '{}' belongs to block {} but block_count is {}", n, b, hp.n_block);
      }
    }
    m_.log.warn("{} tensor(s) in the file are not used by the model", f_.tensors().size() - n_used_);
  }
  return Status::Ok();
}

}  // namespace

void embedding_row(const Weight& w, int32_t token, float* out) {
  dequantize_row(w.type, w.row(token), out, w.cols);
}

Status LoadModelFromGguf(std::unique_ptr<GgufFile> file, const LoadOptions& opt, const Logger& log,
                         std::unique_ptr<Model>* out) {
  out->reset();
  auto m = std::make_unique<Model>();
  m->log = log;
  m->file = std::move(file);
  Loader ld(*m, *m->file);
  QWEN35_TRY(ld.hparams());
  // A vocabulary-only file (tokenizer keys, no tensors, like llama.cpp's
  // ggml-vocab-*.gguf) loads for the tokenizer APIs; contexts refuse it.
  m->vocab_only = m->file->tensors().empty() && m->file->find_kv("tokenizer.ggml.tokens");
  if (!m->vocab_only) QWEN35_TRY(ld.weights(opt));

  // The tokenizer is optional at this level (synthetic test files may carry
  // none); text APIs report a clear error when it is missing.
  if (m->file->find_kv("tokenizer.ggml.tokens")) {
    std::shared_ptr<Vocab> vocab;
    QWEN35_TRY(Vocab::Load(*m->file, log, &vocab));
    if (m->vocab_only) m->hp.n_vocab = vocab->n_tokens();
    if (vocab->n_tokens() > m->hp.n_vocab)
      return Error(QWEN35_ERR_FORMAT, "tokenizer has {} tokens but token_embd has {} rows", vocab->n_tokens(),
                   m->hp.n_vocab);
    m->vocab = std::move(vocab);
  }

  const HParams& hp = m->hp;
  uint64_t n_params = 0;
  std::map<std::string, int> census;
  for (const GgufTensor& t : m->file->tensors()) {
    n_params += uint64_t(t.nelements());
    census[type_info(t.type)->name]++;
  }
  std::string types;
  for (auto& [k, v] : census) types += fmt::format("{}{} {}", types.empty() ? "" : ", ", v, k);
  if (m->vocab_only)
    m->desc = fmt::format("qwen35 vocabulary only ({} tokens, {} merges)", m->vocab->n_tokens(), m->vocab->n_merges());
  else
    m->desc = fmt::format("qwen35 {:.2f}B ({}+{} layers, d {}, vocab {}; {})", double(n_params) / 1e9,
                          hp.n_layer, hp.n_mtp, hp.n_embd, hp.n_vocab, types);
  if (opt.progress && !opt.progress(1.0f, opt.progress_user_data))
    return Error(QWEN35_ERR_CANCELLED, "model load cancelled by the progress callback");
  *out = std::move(m);
  return Status::Ok();
}

Status LoadModel(const std::string& path, const LoadOptions& opt, const Logger& log, std::unique_ptr<Model>* out) {
  std::unique_ptr<GgufFile> f;
  QWEN35_TRY(GgufFile::Open(path, opt.use_mmap, &f));
  Status st = LoadModelFromGguf(std::move(f), opt, log, out);
  if (!st.ok()) return st.prefix("'" + path + "': ");
  (*out)->path = path;
  return Status::Ok();
}

}  // namespace qwen35
