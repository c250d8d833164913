#include "vision/mmproj.h"

#include <cmath>
#include <cstring>
#include <map>
#include <new>

#include "ggml_types.h"
#include "quants.h"

namespace qwen35::vision {

namespace {

constexpr const char* kProjectorType = "qwen3vl_merger";

class MmprojLoader {
 public:
  MmprojLoader(Mmproj& m, const GgufFile& f) : m_(m), f_(f) {}

  Status hparams();
  Status weights();

 private:
  Status req_int(const std::string& key, int32_t* out, int64_t lo, int64_t hi);
  Status req_float3(const std::string& key, float out[3]);
  const GgufTensor* tensor(const std::string& name, std::initializer_list<int64_t> ne, Status* st);
  Status matrix(const std::string& name, int64_t cols, int64_t rows, Weight* w);
  Status vec(const std::string& name, int64_t ne0, int64_t ne1, Vec* v);
  Status patch_kernel();
  Status block(int il, VisionBlock* b);

  Mmproj& m_;
  const GgufFile& f_;
  size_t n_used_ = 0;
};

Status MmprojLoader::req_int(const std::string& key, int32_t* out, int64_t lo, int64_t hi) {
  int64_t v = 0;
  bool found = false;
  QWEN35_TRY(f_.get_int(key, &v, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "required mmproj metadata key '{}' is missing", key);
  if (v < lo || v > hi)
    return Error(QWEN35_ERR_FORMAT, "mmproj metadata key '{}' = {} is out of range [{}, {}]", key, v, lo, hi);
  *out = int32_t(v);
  return Status::Ok();
}

Status MmprojLoader::req_float3(const std::string& key, float out[3]) {
  const GgufKV* kv = f_.find_kv(key);
  if (!kv) return Error(QWEN35_ERR_FORMAT, "required mmproj metadata key '{}' is missing", key);
  if (kv->type != GGUF_ARRAY || kv->arr_type != GGUF_FLOAT32 || kv->arr_count != 3)
    return Error(QWEN35_ERR_FORMAT, "mmproj metadata key '{}' must be an array of 3 float32", key);
  for (int c = 0; c < 3; ++c) {
    std::memcpy(&out[c], kv->arr_data + 4 * c, 4);
    if (!std::isfinite(out[c])) return Error(QWEN35_ERR_FORMAT, "mmproj metadata key '{}'[{}] is not finite", key, c);
  }
  return Status::Ok();
}

Status MmprojLoader::hparams() {
  std::string_view s;
  bool found = false, b = false;
  QWEN35_TRY(f_.get_string("general.architecture", &s, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "metadata key 'general.architecture' is missing");
  if (s != "clip")
    return Error(QWEN35_ERR_UNSUPPORTED, "architecture '{}' is not a vision projector (expected 'clip')", s);
  QWEN35_TRY(f_.get_bool("clip.has_vision_encoder", &b, &found));
  if (!found || !b) return Error(QWEN35_ERR_UNSUPPORTED, "the file has no vision encoder (clip.has_vision_encoder)");
  QWEN35_TRY(f_.get_string("clip.projector_type", &s, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "required mmproj metadata key 'clip.projector_type' is missing");
  if (s != kProjectorType)
    return Error(QWEN35_ERR_UNSUPPORTED, "projector type '{}' is not supported (Qwen3.5 uses '{}')", s,
                 kProjectorType);
  QWEN35_TRY(f_.get_bool("clip.use_gelu", &b, &found));
  if (found && !b)
    return Error(QWEN35_ERR_UNSUPPORTED, "clip.use_gelu is false: only the GELU vision MLP of Qwen3.5 is supported");

  VisionHParams& hp = m_.hp;
  constexpr int64_t kBig = 1 << 16;
  QWEN35_TRY(req_int("clip.vision.embedding_length", &hp.n_embd, 1, kBig));
  QWEN35_TRY(req_int("clip.vision.feed_forward_length", &hp.n_ff, 1, 4 * kBig));
  QWEN35_TRY(req_int("clip.vision.block_count", &hp.n_block, 1, 1024));
  QWEN35_TRY(req_int("clip.vision.attention.head_count", &hp.n_head, 1, 1024));
  QWEN35_TRY(req_int("clip.vision.patch_size", &hp.patch, 1, 256));
  QWEN35_TRY(req_int("clip.vision.image_size", &hp.image_size, 1, kBig));
  QWEN35_TRY(req_int("clip.vision.projection_dim", &hp.proj_dim, 1, 4 * kBig));
  QWEN35_TRY(req_int("clip.vision.spatial_merge_size", &hp.merge, 1, 16));
  double eps = 0;
  QWEN35_TRY(f_.get_float("clip.vision.attention.layer_norm_epsilon", &eps, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "required mmproj metadata key 'clip.vision.attention.layer_norm_epsilon' is missing");
  if (!(eps > 0.0 && eps < 1.0)) return Error(QWEN35_ERR_FORMAT, "layer_norm_epsilon {} is out of range", eps);
  hp.eps = float(eps);
  QWEN35_TRY(req_float3("clip.vision.image_mean", hp.mean));
  QWEN35_TRY(req_float3("clip.vision.image_std", hp.std));
  for (int c = 0; c < 3; ++c)
    if (!(std::fabs(hp.std[c]) > 1e-12f))
      return Error(QWEN35_ERR_FORMAT, "clip.vision.image_std[{}] is {} (must be non-zero)", c, hp.std[c]);

  if (hp.n_embd % hp.n_head != 0)
    return Error(QWEN35_ERR_FORMAT, "embedding_length {} is not a multiple of head_count {}", hp.n_embd, hp.n_head);
  hp.head_dim = hp.n_embd / hp.n_head;
  if (hp.head_dim % 4 != 0)
    return Error(QWEN35_ERR_UNSUPPORTED, "head dim {} is not a multiple of 4 (2-D vision RoPE needs DH/4 frequencies)",
                 hp.head_dim);
  if (hp.merge != 2)
    return Error(QWEN35_ERR_UNSUPPORTED, "spatial_merge_size {} is not supported (Qwen3.5 merges 2x2 patches)",
                 hp.merge);
  // DeepStack (Qwen3-VL) injects merger outputs into LLM layers; Qwen3.5 has none.
  if (const GgufKV* kv = f_.find_kv("clip.vision.is_deepstack_layers")) {
    if (kv->type != GGUF_ARRAY || kv->arr_type != GGUF_BOOL)
      return Error(QWEN35_ERR_FORMAT, "clip.vision.is_deepstack_layers must be a bool array");
    for (uint64_t i = 0; i < kv->arr_count; ++i)
      if (kv->arr_data[i])
        return Error(QWEN35_ERR_UNSUPPORTED, "DeepStack layers (clip.vision.is_deepstack_layers[{}]) are not supported", i);
  }
  return Status::Ok();
}

const GgufTensor* MmprojLoader::tensor(const std::string& name, std::initializer_list<int64_t> ne, Status* st) {
  const GgufTensor* t = f_.find_tensor(name);
  if (!t) {
    *st = Error(QWEN35_ERR_FORMAT, "mmproj tensor '{}' is missing", name);
    return nullptr;
  }
  ++n_used_;
  int64_t want[4] = {1, 1, 1, 1};
  int i = 0;
  for (int64_t v : ne) want[i++] = v;
  if (std::memcmp(want, t->ne, sizeof want) != 0) {
    *st = Error(QWEN35_ERR_FORMAT, "mmproj tensor '{}' has shape [{}, {}, {}, {}], expected [{}, {}, {}, {}]", name,
                t->ne[0], t->ne[1], t->ne[2], t->ne[3], want[0], want[1], want[2], want[3]);
    return nullptr;
  }
  const TypeInfo* ti = type_info(t->type);
  if (!ti->compute) {
    *st = Error(QWEN35_ERR_UNSUPPORTED, "mmproj tensor '{}' has unsupported type {}", name, ti->name);
    return nullptr;
  }
  return t;
}

Status MmprojLoader::matrix(const std::string& name, int64_t cols, int64_t rows, Weight* w) {
  Status st;
  const GgufTensor* t = tensor(name, {cols, rows}, &st);
  if (!t) return st;
  const TypeInfo* ti = type_info(t->type);
  w->name = name;
  w->type = t->type;
  w->cols = cols;
  w->rows = rows;
  w->row_bytes = row_bytes(*ti, cols);
  w->data = t->data;
  return Status::Ok();
}

Status MmprojLoader::vec(const std::string& name, int64_t ne0, int64_t ne1, Vec* v) {
  Status st;
  const GgufTensor* t = ne1 == 1 ? tensor(name, {ne0}, &st) : tensor(name, {ne0, ne1}, &st);
  if (!t) return st;
  v->n = ne0 * ne1;
  if (t->type == GGML_F32 && reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0) {
    v->data = reinterpret_cast<const float*>(t->data);
  } else {
    const TypeInfo* ti = type_info(t->type);
    v->owned.resize(size_t(v->n));
    const uint64_t rb = row_bytes(*ti, ne0);
    for (int64_t r = 0; r < ne1; ++r) dequantize_row(t->type, t->data + r * rb, v->owned.data() + r * ne0, ne0);
    v->data = v->owned.data();
    m_.host_bytes += v->owned.size() * sizeof(float);
  }
  for (int64_t i = 0; i < v->n; ++i)
    if (!std::isfinite(v->data[i]))
      return Error(QWEN35_ERR_FORMAT, "mmproj tensor '{}' element {} is not finite", name, i);
  return Status::Ok();
}

Status MmprojLoader::patch_kernel() {
  const VisionHParams& hp = m_.hp;
  const int64_t P = hp.patch, C = hp.n_embd, K = hp.patch_dim();
  Status st;
  const GgufTensor* t0 = tensor("v.patch_embd.weight", {P, P, 3, C}, &st);
  if (!t0) return st;
  const GgufTensor* t1 = tensor("v.patch_embd.weight.1", {P, P, 3, C}, &st);
  if (!t1) return st;
  for (const GgufTensor* t : {t0, t1})
    if (P % type_info(t->type)->block != 0)
      return Error(QWEN35_ERR_UNSUPPORTED, "mmproj tensor '{}' has type {} whose blocks do not fit a {}-pixel row",
                   t->name, type_info(t->type)->name, P);
  m_.patch_w_folded.assign(size_t(C * K), 0.0f);
  std::vector<float> a(static_cast<size_t>(C * K)), b(static_cast<size_t>(C * K));
  dequantize_row(t0->type, t0->data, a.data(), C * K);
  dequantize_row(t1->type, t1->data, b.data(), C * K);
  for (size_t i = 0; i < a.size(); ++i) {
    m_.patch_w_folded[i] = a[i] + b[i];
    if (!std::isfinite(m_.patch_w_folded[i]))
      return Error(QWEN35_ERR_FORMAT, "mmproj patch kernel element {} is not finite", i);
  }
  m_.host_bytes += m_.patch_w_folded.size() * sizeof(float);
  Weight& w = m_.patch_w;
  w.name = "v.patch_embd.weight (+ .1)";
  w.type = GGML_F32;
  w.cols = K;
  w.rows = C;
  w.row_bytes = uint64_t(K) * 4;
  w.data = reinterpret_cast<const uint8_t*>(m_.patch_w_folded.data());
  return vec("v.patch_embd.bias", C, 1, &m_.patch_b);
}

Status MmprojLoader::block(int il, VisionBlock* b) {
  const VisionHParams& hp = m_.hp;
  const int64_t C = hp.n_embd, FF = hp.n_ff;
  const std::string p = "v.blk." + std::to_string(il) + ".";
  QWEN35_TRY(vec(p + "ln1.weight", C, 1, &b->ln1_w));
  QWEN35_TRY(vec(p + "ln1.bias", C, 1, &b->ln1_b));
  QWEN35_TRY(matrix(p + "attn_qkv.weight", C, 3 * C, &b->qkv));
  QWEN35_TRY(vec(p + "attn_qkv.bias", 3 * C, 1, &b->qkv_b));
  QWEN35_TRY(matrix(p + "attn_out.weight", C, C, &b->out));
  QWEN35_TRY(vec(p + "attn_out.bias", C, 1, &b->out_b));
  QWEN35_TRY(vec(p + "ln2.weight", C, 1, &b->ln2_w));
  QWEN35_TRY(vec(p + "ln2.bias", C, 1, &b->ln2_b));
  QWEN35_TRY(matrix(p + "ffn_up.weight", C, FF, &b->up));
  QWEN35_TRY(vec(p + "ffn_up.bias", FF, 1, &b->up_b));
  QWEN35_TRY(matrix(p + "ffn_down.weight", FF, C, &b->down));
  QWEN35_TRY(vec(p + "ffn_down.bias", C, 1, &b->down_b));
  return Status::Ok();
}

Status MmprojLoader::weights() {
  VisionHParams& hp = m_.hp;
  const int64_t C = hp.n_embd;
  for (const GgufTensor& t : f_.tensors())
    if (t.name.rfind("v.deepstack.", 0) == 0)
      return Error(QWEN35_ERR_UNSUPPORTED, "DeepStack tensor '{}' found: Qwen3-VL DeepStack projectors are not supported",
                   t.name);
  QWEN35_TRY(patch_kernel());

  // The learned position grid is square: G*G rows, with image_size = G*P.
  const GgufTensor* pe = f_.find_tensor("v.position_embd.weight");
  if (!pe) return Error(QWEN35_ERR_FORMAT, "mmproj tensor 'v.position_embd.weight' is missing");
  const int64_t rows = pe->ne[1];
  int64_t G = int64_t(std::llround(std::sqrt(double(rows))));
  if (rows < 1 || G * G != rows)
    return Error(QWEN35_ERR_FORMAT, "mmproj tensor 'v.position_embd.weight' has {} rows, not a square grid", rows);
  if (G * hp.patch != hp.image_size)
    return Error(QWEN35_ERR_FORMAT,
                 "clip.vision.image_size {} does not match the position table ({}x{} patches of {} pixels)",
                 hp.image_size, G, G, hp.patch);
  hp.pos_grid = int32_t(G);
  QWEN35_TRY(vec("v.position_embd.weight", C, rows, &m_.pos_embd));

  m_.blocks.resize(size_t(hp.n_block));
  for (int il = 0; il < hp.n_block; ++il) QWEN35_TRY(block(il, &m_.blocks[size_t(il)]));
  QWEN35_TRY(vec("v.post_ln.weight", C, 1, &m_.post_ln_w));
  QWEN35_TRY(vec("v.post_ln.bias", C, 1, &m_.post_ln_b));
  const int64_t C4 = hp.merged_dim();
  QWEN35_TRY(matrix("mm.0.weight", C4, C4, &m_.mm0));
  QWEN35_TRY(vec("mm.0.bias", C4, 1, &m_.mm0_b));
  QWEN35_TRY(matrix("mm.2.weight", C4, hp.proj_dim, &m_.mm2));
  QWEN35_TRY(vec("mm.2.bias", hp.proj_dim, 1, &m_.mm2_b));

  if (n_used_ != f_.tensors().size()) {
    for (const GgufTensor& t : f_.tensors()) {
      const std::string n(t.name);
      if (n.rfind("v.blk.", 0) == 0) {
        const long b = std::strtol(n.c_str() + 6, nullptr, 10);
        if (b < 0 || b >= hp.n_block)
          return Error(QWEN35_ERR_FORMAT, "mmproj tensor '{}' belongs to block {} but block_count is {}", n, b,
                       hp.n_block);
      }
    }
    m_.log.warn("{} tensor(s) in the mmproj file are not used", f_.tensors().size() - n_used_);
  }
  return Status::Ok();
}

}  // namespace

Status LoadMmprojFromGguf(std::unique_ptr<GgufFile> file, const Logger& log, std::unique_ptr<Mmproj>* out) {
  out->reset();
  std::unique_ptr<Mmproj> m(new (std::nothrow) Mmproj());
  if (!m) return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory");
  m->log = log;
  m->file = std::move(file);
  MmprojLoader ld(*m, *m->file);
  try {
    QWEN35_TRY(ld.hparams());
    QWEN35_TRY(ld.weights());
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory while loading the mmproj weights");
  }
  const VisionHParams& hp = m->hp;
  uint64_t n_params = 0;
  std::map<std::string, int> census;
  for (const GgufTensor& t : m->file->tensors()) {
    n_params += uint64_t(t.nelements());
    census[type_info(t.type)->name]++;
  }
  std::string types;
  for (auto& [k, v] : census) types += fmt::format("{}{} {}", types.empty() ? "" : ", ", v, k);
  m->desc = fmt::format("qwen3vl_merger vision projector {:.1f}M (ViT {}x{}, {} heads, ff {}, patch {}, grid {}x{}, out {}; {})",
                        double(n_params) / 1e6, hp.n_block, hp.n_embd, hp.n_head, hp.n_ff, hp.patch, hp.pos_grid,
                        hp.pos_grid, hp.proj_dim, types);
  *out = std::move(m);
  return Status::Ok();
}

Status LoadMmproj(const std::string& path, bool use_mmap, const Logger& log, std::unique_ptr<Mmproj>* out) {
  std::unique_ptr<GgufFile> f;
  Status st = GgufFile::Open(path, use_mmap, &f);
  if (!st.ok()) return st;
  st = LoadMmprojFromGguf(std::move(f), log, out);
  if (!st.ok()) return st.prefix("'" + path + "': ");
  (*out)->path = path;
  return Status::Ok();
}

Status CheckMmprojFitsModel(const Mmproj& mp, const Model& model) {
  if (mp.hp.proj_dim != model.hp.n_embd)
    return Error(QWEN35_ERR_INVALID_ARG,
                 "the vision projector does not fit this model: it produces {}-wide embeddings "
                 "(clip.vision.projection_dim) but the model's hidden size is {}",
                 mp.hp.proj_dim, model.hp.n_embd);
  return Status::Ok();
}

}  // namespace qwen35::vision
