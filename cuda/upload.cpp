// Device discovery and the one-time weight upload (UploadModelToCuda,
// CudaAvailable, CudaMemoryInfo from lib/backend.h).
//
// Every tensor goes into one device allocation. NVFP4 projections that read
// the same input are stacked and repacked into the tiled decode layout;
// Q8_0, Q4_K, Q6_K and F16 projections (stacked when their parts share a
// type) and Q8_0 / Q4_K / F16 embeddings into their tiles (ktiles.h,
// gate/up in pairs); a Q6_K embedding
// / LM head into the tiled or row-interleaved layout. The repacking runs on
// the device from a staging copy of the GGUF bytes. After the first repack
// of each kind a self-check compares the fast kernel with the generic one
// on the staged GGUF bytes; on a mismatch the upload is redone without
// those tiles (a tiled type of ktiles.h) or without any repacking (logged
// as a warning). QWEN35_CUDA_FAST=0 in the environment turns the repacked
// layouts off (QWEN35_CUDA_KTILES=0 the tiles of ktiles.h).
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

#include "attention.h"
#include "backend.h"
#include "conv.h"
#include "delta_net.h"
#include "device_model.h"
#include "elementwise.h"
#include "ggml_types.h"
#include "tuning.h"

namespace qwen35 {

namespace cuda {

DeviceModel::~DeviceModel() {
  int cur = -1;
  if (cudaGetDevice(&cur) == cudaSuccess && cur != device) cudaSetDevice(device);
  arena.reset();
  if (cur >= 0 && cur != device) cudaSetDevice(cur);
}

std::string unsupported_reason(const Model& m) {
  const HParams& hp = m.hp;
  if (!attention_head_dim_supported(hp.head_dim))
    return fmt::format("attention head size {} (the CUDA kernels support 64, 128, 256, 512)", hp.head_dim);
  if (hp.n_rot > hp.head_dim) return fmt::format("rotary dims {} exceed the head size", hp.n_rot);
  if (!delta_net_shape_supported(hp.ssm_state, hp.ssm_dv))
    return fmt::format("delta-net head sizes dk {} / dv {} (the CUDA kernels support dk 32, 64, 128, 256 and dv a multiple of 32)",
                       hp.ssm_state, hp.ssm_dv);
  if (!conv_width_supported(hp.ssm_conv))
    return fmt::format("causal conv width {} (the CUDA kernels support 1 to 17)", hp.ssm_conv);
  if (hp.n_embd % 32 != 0) return fmt::format("n_embd {} is not a multiple of 32", hp.n_embd);
  auto check = [](const Weight& w) -> std::string {
    if (!w.present()) return "";
    if (!device_type_supported(w.type)) return fmt::format("tensor '{}' has a type without CUDA kernels", w.name);
    if (w.cols % 32 != 0) return fmt::format("tensor '{}' rows of {} are not a multiple of 32", w.name, w.cols);
    return "";
  };
  std::string r = check(m.token_embd) + check(m.output);
  auto check_layer = [&](const Layer& L) {
    for (const Weight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.wqkv, &L.wgate, &L.wbeta, &L.walpha, &L.ssm_out,
                            &L.ffn_gate, &L.ffn_up, &L.ffn_down})
      if (r.empty()) r = check(*w);
  };
  for (const Layer& L : m.layers) check_layer(L);
  if (m.mtp) {
    check_layer(m.mtp->block);
    if (r.empty()) r = check(m.mtp->eh_proj) + check(m.mtp->embed) + check(m.mtp->head);
  }
  return r;
}

namespace {

// Whether the tensor has a UE4M3 scale byte (0xFF) that plain E4M3 cannot hold.
bool nvfp4_has_unrepresentable_scale(const Weight& w) {
  for (int64_t r = 0; r < w.rows; ++r) {
    const uint8_t* row = w.row(r);
    for (int64_t b = 0; b < w.cols / 64; ++b)
      for (int s = 0; s < 4; ++s)
        if (row[b * 36 + s] == 0xFF) return true;
  }
  return false;
}

bool fp4_eligible(const std::vector<const Weight*>& parts, bool gate_up) {
  if (parts.empty()) return false;
  for (const Weight* w : parts) {
    if (!w->present() || w->type != GGML_NVFP4 || w->cols != parts[0]->cols || w->scale != parts[0]->scale)
      return false;
    if (w->cols % kFp4GroupCols != 0 || nvfp4_has_unrepresentable_scale(*w)) return false;
  }
  if (gate_up) return parts.size() == 2 && parts[0]->rows == parts[1]->rows && parts[0]->rows % 8 == 0;
  return true;
}

// Deterministic test vector for the self-checks.
std::vector<float> check_vector(int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  uint32_t s = 12345;
  for (float& v : x) {
    s = s * 1664525u + 1013904223u;
    v = float(int32_t(s >> 8) - (1 << 23)) / float(1 << 23);
  }
  return x;
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Lays out every tensor in one allocation and fills it.
class Uploader {
 public:
  Uploader(const Model& m, DeviceModel& dm, bool fast, bool fp4_gemm, bool ktiles, bool fp8_codes)
      : m_(m), dm_(dm), fast_(fast), fp4_gemm_(fast && fp4_gemm), fp8_codes_(fast && fp8_codes) {
    const char* kt = std::getenv("QWEN35_CUDA_KTILES");
    ktiles_ = fast && ktiles && !(kt && std::string(kt) == "0");
  }

  Status run();
  bool self_check_failed() const { return check_failed_; }
  // The failed self-check was a tiled type's (ktiles.h; they run last).
  bool ktiles_check_failed() const { return ktiles_check_failed_; }

 private:
  struct Fp4Job {
    std::vector<const Weight*> parts;
    DevLinear* out;
    uint64_t off = 0;
    uint64_t blas_off = 0;  // the cuBLASLt copy (fp4_gemm_)
  };
  struct Q6kJob {
    const Weight* w;
    DevEmbed* out;
    uint64_t off = 0;
  };
  struct KJob {  // rows of a tiled type (a stack, a part of one, an embedding / LM head) into tiles
    std::vector<const Weight*> parts;  // stacked by rows, same type and row length
    KTiles* out;
    uint64_t off = 0;
  };

  uint64_t reserve(uint64_t bytes) {
    const uint64_t off = total_;
    total_ += (bytes + 255) / 256 * 256;
    return off;
  }
  void plan_raw(const void* host, uint64_t bytes) {
    if (host && !raw_.count(host)) raw_[host] = {reserve(bytes), bytes};
  }
  void plan_raw(const Weight& w) { plan_raw(w.data, uint64_t(w.rows) * w.row_bytes); }
  void plan_raw(const Vec& v) { plan_raw(v.data, uint64_t(v.n) * sizeof(float)); }
  uint8_t* dev(uint64_t off) const { return dm_.arena.as<uint8_t>() + off; }
  MatView view(const Weight& w) const;
  const float* vec(const Vec& v) const {
    auto it = raw_.find(v.data);
    return it == raw_.end() ? nullptr : reinterpret_cast<const float*>(dev(it->second.first));
  }

  void plan_linear(DevLinear* L, std::vector<const Weight*> parts, bool gate_up);
  void plan_embed(DevEmbed* e, const Weight& w);
  void plan_layer(DevLayer* d, const Layer& L);
  void resolve_linear(DevLinear* L);
  void resolve_layer(DevLayer* d, const Layer& L);
  Status stage(const std::vector<const Weight*>& parts, int64_t r0, int64_t nr);
  Status do_fp4(Fp4Job& job, bool check);
  Status do_q6k(Q6kJob& job, bool check);
  Status do_ktiles(KJob& job, bool check);
  // Plans the parts (stacked by rows) in their tiles when they have them
  // (and they are on): true.
  bool plan_ktiles(const std::vector<const Weight*>& parts, KTiles* out, bool gate_up = false);
  MatView staged_view(const Weight& w, int64_t nr) const;
  Status check_dequant(const KTiles& q, const MatView& g);
  Status check_rows(const MatView& g, int64_t out_rows, double bar, const char* kind,
                    const std::function<cudaError_t(const float* x, float* y)>& fast);

  const Model& m_;
  DeviceModel& dm_;
  bool fast_;
  bool fp4_gemm_;
  bool fp8_codes_;  // the NVFP4 codes in the FP8 arrangement too (Fp4Tiled::codes8)
  bool ktiles_;  // Q8_0 / Q4_K / Q6_K / F16 weights into their tiles (QWEN35_CUDA_KTILES=0: GGUF layout)
  bool check_failed_ = false;
  bool ktiles_check_failed_ = false;
  uint64_t total_ = 0;
  std::map<const void*, std::pair<uint64_t, uint64_t>> raw_;  // host -> (offset, bytes)
  std::map<const DevLinear*, std::vector<const Weight*>> linear_parts_;
  std::vector<Fp4Job> fp4_jobs_;
  std::vector<Q6kJob> q6k_jobs_;
  std::vector<KJob> k_jobs_;
  DeviceBuffer staging_;
};

MatView Uploader::view(const Weight& w) const {
  MatView v;
  if (!w.present()) return v;
  auto it = raw_.find(w.data);
  v.type = w.type;
  v.rows = w.rows;
  v.cols = w.cols;
  v.row_bytes = w.row_bytes;
  v.data = it == raw_.end() ? nullptr : dev(it->second.first);
  v.scale = w.scale;
  return v;
}

void Uploader::plan_linear(DevLinear* L, std::vector<const Weight*> parts, bool gate_up) {
  L->gate_up = gate_up;
  L->cols = parts[0]->cols;
  L->rows = 0;
  for (const Weight* w : parts) {
    L->offsets.push_back(L->rows);
    L->rows += w->rows;
  }
  if (fast_ && fp4_eligible(parts, gate_up)) {
    Fp4Tiled t;
    t.rows = gate_up ? parts[0]->rows : L->rows;
    t.cols = L->cols;
    t.pairing = gate_up ? Fp4Pairing::GateUp : Fp4Pairing::Plain;
    t.scale = parts[0]->scale;
    Fp4Job job{parts, L, reserve(t.code_bytes() * (fp8_codes_ ? 2 : 1) + t.scale_bytes())};
    L->fp4 = t;  // pointers filled in do_fp4
    if (fp4_gemm_) {
      Fp4Blas bl;
      bl.rows = L->rows;
      bl.cols = L->cols;
      bl.scale = t.scale;
      job.blas_off = reserve(bl.data_bytes() + bl.scale_bytes());
      L->blas = bl;
    }
    fp4_jobs_.push_back(job);
    dm_.fp4_partial_floats = std::max(dm_.fp4_partial_floats, fp4_partial_floats(t, dm_.sms));
    dm_.fp4_counter_ints = std::max(dm_.fp4_counter_ints, fp4_counter_ints(t));
    return;
  }
  // Parts of the tiled types (ktiles.h) in their tiles: the whole stack in
  // one when every part has the same type and scale (one launch), else part
  // by part; the others as they are.
  linear_parts_[L] = parts;
  if (plan_ktiles(parts, &L->stack, gate_up)) return;
  L->tiles.assign(parts.size(), KTiles{});
  for (size_t i = 0; i < parts.size(); ++i)
    if (!plan_ktiles({parts[i]}, &L->tiles[i])) plan_raw(*parts[i]);
}

bool Uploader::plan_ktiles(const std::vector<const Weight*>& parts, KTiles* out, bool gate_up) {
  const Weight& w = *parts[0];
  if (!ktiles_ || !ktiles_supported(w.type, w.cols)) return false;
  int64_t rows = 0;
  for (const Weight* p : parts) {
    if (p->type != w.type || p->cols != w.cols || p->scale != w.scale) return false;
    rows += p->rows;
  }
  // A gate/up stack in pairs (the SwiGLU epilogue) when its rows allow.
  const bool paired = gate_up && parts.size() == 2 && parts[0]->rows == parts[1]->rows && parts[0]->rows % 8 == 0;
  *out = ktiles_plan(w.type, rows, w.cols, w.scale, paired);  // pointers placed in do_ktiles
  k_jobs_.push_back({parts, out, reserve(ktiles_bytes(*out))});
  return true;
}

void Uploader::plan_embed(DevEmbed* e, const Weight& w) {
  if (!w.present()) return;
  if (fast_ && w.type == GGML_Q6_K && w.cols % 256 == 0) {
    if (decode_tuning().q6k_kernel >= 2) {  // tiled, for the tensor-core kernels 2 and 3
      Q6kTiled q;
      q.rows = w.rows;
      q.cols = w.cols;
      q.scale = w.scale;
      e->q6kt = q;
      q6k_jobs_.push_back({&w, e, reserve(q.lo_bytes())});
      reserve(q.hi_bytes());
      reserve(q.sc_bytes());
      reserve(q.d_bytes());
      return;
    }
    Q6kRows32 q;
    q.rows = w.rows;
    q.cols = w.cols;
    q.scale = w.scale;
    e->q6k = q;
    q6k_jobs_.push_back({&w, e, reserve(q.ql_bytes()) });
    reserve(q.qh_bytes());
    reserve(q.sc_bytes());
    reserve(q.d_bytes());
    return;
  }
  if (plan_ktiles({&w}, &e->tiles)) return;  // tiled types: embedding rows and the LM head from the tiles
  plan_raw(w);
}

void Uploader::plan_layer(DevLayer* d, const Layer& L) {
  d->is_attn = L.is_attn;
  for (const Vec* v : {&L.attn_norm, &L.post_attention_norm, &L.q_norm, &L.k_norm, &L.conv1d, &L.dt_bias, &L.ssm_a,
                       &L.ssm_norm})
    plan_raw(*v);
  if (L.is_attn) {
    plan_linear(&d->in_proj, {&L.wq, &L.wk, &L.wv}, false);
    plan_linear(&d->out_proj, {&L.wo}, false);
  } else {
    plan_linear(&d->in_proj, {&L.wqkv, &L.wgate, &L.wbeta, &L.walpha}, false);
    plan_linear(&d->out_proj, {&L.ssm_out}, false);
  }
  plan_linear(&d->gate_up, {&L.ffn_gate, &L.ffn_up}, true);
  plan_linear(&d->down, {&L.ffn_down}, false);
}

void Uploader::resolve_linear(DevLinear* L) {
  auto it = linear_parts_.find(L);
  if (it == linear_parts_.end()) return;
  for (const Weight* w : it->second) L->parts.push_back(view(*w));
}

void Uploader::resolve_layer(DevLayer* d, const Layer& L) {
  d->attn_norm = vec(L.attn_norm);
  d->post_norm = vec(L.post_attention_norm);
  d->q_norm = vec(L.q_norm);
  d->k_norm = vec(L.k_norm);
  d->conv1d = vec(L.conv1d);
  d->dt_bias = vec(L.dt_bias);
  d->ssm_a = vec(L.ssm_a);
  d->ssm_norm = vec(L.ssm_norm);
  for (DevLinear* l : {&d->in_proj, &d->out_proj, &d->gate_up, &d->down}) resolve_linear(l);
}

// Copy rows r0 .. r0+nr-1 of the stacked parts (same row size) to staging.
Status Uploader::stage(const std::vector<const Weight*>& parts, int64_t r0, int64_t nr) {
  const uint64_t rb = parts[0]->row_bytes;
  QWEN35_TRY(staging_.reserve(uint64_t(nr) * rb, "staging weights for repacking"));
  int64_t base = 0, done = 0;
  for (const Weight* w : parts) {
    const int64_t a = std::max<int64_t>(r0, base), b = std::min<int64_t>(r0 + nr, base + w->rows);
    if (a < b) {
      QWEN35_CUDA_TRY(cudaMemcpy(staging_.as<uint8_t>() + uint64_t(done) * rb, w->row(a - base),
                                 uint64_t(b - a) * rb, cudaMemcpyHostToDevice),
                      "uploading weights");
      done += b - a;
    }
    base += w->rows;
  }
  return Status::Ok();
}

Status Uploader::do_fp4(Fp4Job& job, bool check) {
  Fp4Tiled& t = job.out->fp4;
  t.codes = dev(job.off);
  t.scales = dev(job.off) + t.code_bytes();
  if (fp8_codes_) t.codes8 = t.scales + t.scale_bytes();
  const bool gate_up = t.pairing == Fp4Pairing::GateUp;
  const int64_t rows = gate_up ? 2 * t.rows : t.rows;
  QWEN35_TRY(stage(job.parts, 0, rows));
  const uint64_t rb = job.parts[0]->row_bytes;
  const uint8_t* a = staging_.as<uint8_t>();
  const uint8_t* b = gate_up ? a + uint64_t(t.rows) * rb : nullptr;
  QWEN35_CUDA_TRY(fp4_repack(a, b, rb, t, nullptr), "repacking NVFP4 weights");
  if (job.out->blas.rows > 0) {  // the staged rows are the stack in order ([gate; up] for a pair)
    Fp4Blas& bl = job.out->blas;
    bl.data = dev(job.blas_off);
    bl.scales = dev(job.blas_off) + bl.data_bytes();
    QWEN35_CUDA_TRY(fp4blas_repack(a, rb, bl, nullptr), "repacking NVFP4 weights for cuBLASLt");
  }
  if (!check) return Status::Ok();

  // Self-check: the tensor-core kernel against the generic one on the staged
  // GGUF rows, for two activation rows.
  const int n = 2;
  const int64_t K = t.cols, out_rows = t.rows;
  const auto hx = check_vector(n * K);
  DeviceBuffer x, y_fast, y_ref, gu, part, cnt;
  QWEN35_TRY(x.alloc(hx.size() * 4, "a self-check"));
  QWEN35_TRY(y_fast.alloc(size_t(n * out_rows) * 4, "a self-check"));
  QWEN35_TRY(y_ref.alloc(size_t(n * rows) * 4, "a self-check"));
  QWEN35_TRY(part.alloc(std::max<uint64_t>(1, fp4_partial_floats(t, dm_.sms)) * 4, "a self-check"));
  QWEN35_TRY(cnt.alloc(fp4_counter_ints(t) * 4, "a self-check"));
  QWEN35_CUDA_TRY(cudaMemcpy(x.as(), hx.data(), hx.size() * 4, cudaMemcpyHostToDevice), "a self-check");
  Fp4MatvecArgs fa;
  fa.w = t;
  fa.n = n;
  fa.x = x.as<float>();
  fa.ldx = K;
  fa.y = y_fast.as<float>();
  fa.ldy = out_rows;
  fa.epilogue = gate_up ? Fp4Epilogue::SwiGLU : Fp4Epilogue::Store;
  fa.partial = part.as<float>();
  fa.counters = cnt.as<int>();
  QWEN35_CUDA_TRY(fp4_matvec(fa, dm_.sms, nullptr), "a self-check");
  MatView g;
  g.type = GGML_NVFP4;
  g.rows = rows;
  g.cols = K;
  g.row_bytes = rb;
  g.data = a;
  g.scale = t.scale;
  QWEN35_CUDA_TRY(matvec_generic(g, x.as<float>(), K, n, y_ref.as<float>(), rows, Accum::Store, nullptr), "a self-check");
  if (gate_up) QWEN35_CUDA_TRY(swiglu(y_ref.as<float>(), rows, y_ref.as<float>() + t.rows, rows, n, t.rows, nullptr),
                               "a self-check");
  QWEN35_CUDA_TRY(cudaDeviceSynchronize(), "a self-check");
  std::vector<float> hf(size_t(n * out_rows)), hr(size_t(n * out_rows));
  QWEN35_CUDA_TRY(cudaMemcpy(hf.data(), y_fast.as(), hf.size() * 4, cudaMemcpyDeviceToHost), "a self-check");
  for (int j = 0; j < n; ++j)
    QWEN35_CUDA_TRY(cudaMemcpy(hr.data() + j * out_rows, y_ref.as<float>() + j * rows, size_t(out_rows) * 4,
                               cudaMemcpyDeviceToHost),
                    "a self-check");
  const double e = rel_diff(hf, hr);
  // F16 activations: ~1e-3 relative; anything near 1 is a broken kernel.
  if (!(e < 2e-2)) {
    m_.log.warn("CUDA NVFP4 decode kernel self-check failed (relative difference {:.3g}); using the generic kernels", e);
    check_failed_ = true;
  }
  return Status::Ok();
}

// The first nr rows of w as staged (GGUF layout, in staging_).
MatView Uploader::staged_view(const Weight& w, int64_t nr) const {
  MatView g;
  g.type = w.type;
  g.rows = nr;
  g.cols = w.cols;
  g.row_bytes = w.row_bytes;
  g.data = staging_.as<uint8_t>();
  g.scale = w.scale;
  return g;
}

// Self-check of a repacked weight on its first g.rows rows (staged, GGUF
// layout): `fast` computes W x for two activation rows from the repacked
// weight (y: [2, out_rows]; rows past g.rows are not compared), the
// generic kernel the same from the staged bytes. Over `bar` (relative) the
// upload is marked to be redone without repacking.
Status Uploader::check_rows(const MatView& g, int64_t out_rows, double bar, const char* kind,
                            const std::function<cudaError_t(const float* x, float* y)>& fast) {
  const int n = 2;
  const int64_t K = g.cols, nr = g.rows;
  const auto hx = check_vector(n * K);
  DeviceBuffer x, yf, yr;
  QWEN35_TRY(x.alloc(hx.size() * 4, "a self-check"));
  QWEN35_TRY(yf.alloc(size_t(n * out_rows) * 4, "a self-check"));
  QWEN35_TRY(yr.alloc(size_t(n * nr) * 4, "a self-check"));
  QWEN35_CUDA_TRY(cudaMemcpy(x.as(), hx.data(), hx.size() * 4, cudaMemcpyHostToDevice), "a self-check");
  QWEN35_CUDA_TRY(matvec_generic(g, x.as<float>(), K, n, yr.as<float>(), nr, Accum::Store, nullptr), "a self-check");
  QWEN35_CUDA_TRY(fast(x.as<float>(), yf.as<float>()), "a self-check");
  QWEN35_CUDA_TRY(cudaDeviceSynchronize(), "a self-check");
  std::vector<float> hf(size_t(n * nr)), hr(size_t(n * nr));
  for (int j = 0; j < n; ++j)
    QWEN35_CUDA_TRY(cudaMemcpy(hf.data() + j * nr, yf.as<float>() + j * out_rows, size_t(nr) * 4,
                               cudaMemcpyDeviceToHost),
                    "a self-check");
  QWEN35_CUDA_TRY(cudaMemcpy(hr.data(), yr.as(), hr.size() * 4, cudaMemcpyDeviceToHost), "a self-check");
  const double e = rel_diff(hf, hr);
  if (!(e < bar)) {
    m_.log.warn("CUDA {} decode kernel self-check failed (relative difference {:.3g}); using the generic kernels", kind, e);
    check_failed_ = true;
  }
  return Status::Ok();
}

Status Uploader::do_q6k(Q6kJob& job, bool check) {
  const bool tiled = job.out->q6kt.rows > 0;  // planned tiled (pointers set below)
  Q6kRows32& q = job.out->q6k;
  Q6kTiled& qt = job.out->q6kt;
  uint8_t* p = dev(job.off);
  auto next = [&](uint64_t bytes) {
    uint8_t* r = p;
    p += (bytes + 255) / 256 * 256;
    return r;
  };
  if (tiled) {
    qt.lo = next(qt.lo_bytes());
    qt.hi = next(qt.hi_bytes());
    qt.sc = reinterpret_cast<const int8_t*>(next(qt.sc_bytes()));
    qt.d = reinterpret_cast<const uint16_t*>(next(qt.d_bytes()));
  } else {
    q.ql = next(q.ql_bytes());
    q.qh = next(q.qh_bytes());
    q.sc = reinterpret_cast<const int8_t*>(next(q.sc_bytes()));
    q.d = reinterpret_cast<const uint16_t*>(next(q.d_bytes()));
  }
  const int64_t rows = job.w->rows, K = job.w->cols;
  // In blocks of rows, so the staging copy stays small.
  const int64_t block = std::max<int64_t>(32, (int64_t(64) << 20) / int64_t(job.w->row_bytes) / 32 * 32);
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t nr = std::min(block, rows - r0);
    QWEN35_TRY(stage({job.w}, r0, nr));
    if (tiled)
      QWEN35_CUDA_TRY(q6kt_repack(staging_.as<uint8_t>(), job.w->row_bytes, r0, nr, qt, nullptr),
                      "repacking Q6_K weights");
    else
      QWEN35_CUDA_TRY(q6k_repack(staging_.as<uint8_t>(), job.w->row_bytes, r0, nr, q, nullptr), "repacking Q6_K weights");
    QWEN35_CUDA_TRY(cudaDeviceSynchronize(), "repacking Q6_K weights");
    if (!check || r0 != 0) continue;
    // The tiled kernel needs n * K * 2.25 bytes of shared memory; a row too
    // long for it goes through the GEMM path, so only check what it runs.
    if (tiled && !q6kt_matvec_fits(qt, 2)) continue;
    // Kernel 2 rounds the activations to F16 (about 2^-12 relative).
    QWEN35_TRY(check_rows(staged_view(*job.w, nr), rows, tiled ? 3e-3 : 1e-4, "Q6_K", [&](const float* x, float* y) {
      return tiled ? q6kt_matvec(qt, x, K, 2, y, rows, Accum::Store, nullptr)
                   : q6k_matvec(q, x, K, 2, y, rows, Accum::Store, nullptr);
    }));
    if (check_failed_) return Status::Ok();
  }
  return Status::Ok();
}

Status Uploader::do_ktiles(KJob& job, bool check) {
  KTiles& q = *job.out;
  ktiles_place(&q, dev(job.off));
  const Weight& w = *job.parts[0];
  const int64_t rows = q.rows(), K = w.cols;
  // In blocks of whole tiles, so the staging copy stays small (a paired
  // stack at once: a tile takes rows from both halves).
  const int64_t block =
      q.paired() ? rows : std::max<int64_t>(16, (int64_t(64) << 20) / int64_t(w.row_bytes) / 16 * 16);
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t nr = std::min(block, rows - r0);
    QWEN35_TRY(stage(job.parts, r0, nr));
    QWEN35_CUDA_TRY(ktiles_repack(q, staging_.as<uint8_t>(), w.row_bytes, r0, nr, nullptr), "repacking weights");
    QWEN35_CUDA_TRY(cudaDeviceSynchronize(), "repacking weights");
    if (!check || r0 != 0) continue;
    // F16 activations: about 2^-12 relative.
    if (ktiles_matvec_fits(q, 2))
      QWEN35_TRY(check_rows(staged_view(w, nr), rows, 3e-3, type_info(w.type)->name, [&](const float* x, float* y) {
        return ktiles_matvec(q, x, K, 2, y, rows, Accum::Store, dm_.sms, nullptr);
      }));
    // The rows batches dequantize for their GEMMs: the GGUF values (up to
    // the generic kernel's rounding, which may fuse a multiply and add).
    if (!check_failed_) QWEN35_TRY(check_dequant(q, staged_view(w, std::min<int64_t>(nr, 64))));
    ktiles_check_failed_ = check_failed_;
    if (check_failed_) return Status::Ok();
  }
  return Status::Ok();
}

Status Uploader::check_dequant(const KTiles& q, const MatView& g) {
  const size_t n = size_t(g.rows * g.cols);
  DeviceBuffer a, b;
  QWEN35_TRY(a.alloc(n * 4, "a self-check"));
  QWEN35_TRY(b.alloc(n * 4, "a self-check"));
  QWEN35_CUDA_TRY(ktiles_dequant_rows_f32(q, 0, g.rows, a.as<float>(), nullptr), "a self-check");
  QWEN35_CUDA_TRY(dequant_rows_f32(g, 0, g.rows, b.as<float>(), nullptr), "a self-check");
  std::vector<float> ha(n), hb(n);
  QWEN35_CUDA_TRY(cudaMemcpy(ha.data(), a.as(), n * 4, cudaMemcpyDeviceToHost), "a self-check");
  QWEN35_CUDA_TRY(cudaMemcpy(hb.data(), b.as(), n * 4, cudaMemcpyDeviceToHost), "a self-check");
  const double e = rel_diff(ha, hb);
  if (!(e < 1e-6)) {
    m_.log.warn("CUDA {} dequantization self-check failed (relative difference {:.3g}); using the generic kernels",
                type_info(g.type)->name, e);
    check_failed_ = true;
  }
  return Status::Ok();
}

Status Uploader::run() {
  const Model& m = m_;
  plan_raw(m.output_norm);
  plan_embed(&dm_.token_embd, m.token_embd);
  if (!m.tied_output) plan_embed(&dm_.output_own, m.output);
  dm_.layers.resize(m.layers.size());
  for (size_t il = 0; il < m.layers.size(); ++il) plan_layer(&dm_.layers[il], m.layers[il]);
  if (m.mtp) {
    const MtpLayer& M = *m.mtp;
    dm_.mtp = std::make_unique<DevMtp>();
    plan_layer(&dm_.mtp->block, M.block);
    plan_linear(&dm_.mtp->eh_proj, {&M.eh_proj}, false);
    for (const Vec* v : {&M.enorm, &M.hnorm, &M.shared_head_norm}) plan_raw(*v);
    plan_embed(&dm_.mtp->own_embed, M.embed);
    plan_embed(&dm_.mtp->own_head, M.head);
  }

  QWEN35_TRY(dm_.arena.alloc(total_, "the model weights"));
  for (const auto& [host, ob] : raw_)
    QWEN35_CUDA_TRY(cudaMemcpy(dev(ob.first), host, ob.second, cudaMemcpyHostToDevice), "uploading weights");
  bool checked_plain = false, checked_gate_up = false;
  for (Fp4Job& job : fp4_jobs_) {
    const bool gu = job.out->fp4.pairing == Fp4Pairing::GateUp;
    const bool check = gu ? !checked_gate_up : !checked_plain;
    QWEN35_TRY(do_fp4(job, check));
    if (check) (gu ? checked_gate_up : checked_plain) = true;
    if (check_failed_) return Status::Ok();
  }
  for (size_t i = 0; i < q6k_jobs_.size(); ++i) {
    QWEN35_TRY(do_q6k(q6k_jobs_[i], i == 0));
    if (check_failed_) return Status::Ok();
  }
  // A self-check for the first weight of each tiled type.
  uint64_t checked = 0;
  for (KJob& job : k_jobs_) {
    const uint64_t bit = 1ull << job.parts[0]->type;
    QWEN35_TRY(do_ktiles(job, !(checked & bit)));
    checked |= bit;
    if (check_failed_) return Status::Ok();
  }
  QWEN35_CUDA_TRY(cudaDeviceSynchronize(), "uploading weights");
  staging_.reset();

  // Views of the raw (GGUF layout) tensors.
  dm_.output_norm = vec(m.output_norm);
  if (!dm_.token_embd.repacked()) dm_.token_embd.gguf = view(m.token_embd);
  if (!m.tied_output && !dm_.output_own.repacked()) dm_.output_own.gguf = view(m.output);
  dm_.output = m.tied_output ? &dm_.token_embd : &dm_.output_own;
  for (size_t il = 0; il < m.layers.size(); ++il) resolve_layer(&dm_.layers[il], m.layers[il]);
  if (m.mtp) {
    const MtpLayer& M = *m.mtp;
    DevMtp& d = *dm_.mtp;
    resolve_layer(&d.block, M.block);
    resolve_linear(&d.eh_proj);
    d.enorm = vec(M.enorm);
    d.hnorm = vec(M.hnorm);
    d.shared_head_norm = vec(M.shared_head_norm);
    if (M.embed.present() && !d.own_embed.repacked()) d.own_embed.gguf = view(M.embed);
    if (M.head.present() && !d.own_head.repacked()) d.own_head.gguf = view(M.head);
    d.embed = M.embed.present() ? &d.own_embed : &dm_.token_embd;
    d.head = M.head.present() ? &d.own_head : dm_.output;
  }
  dm_.bytes = total_;
  dm_.fast = fast_;
  dm_.fp4_gemm = fp4_gemm_ && !fp4_jobs_.empty();
  return Status::Ok();
}

// Device count, or an error saying why there is none.
Status device_count(int* n) {
  *n = 0;
  const cudaError_t e = cudaGetDeviceCount(n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *n = 0;
    return Error(QWEN35_ERR_UNSUPPORTED, "no usable CUDA device: {}", cudaGetErrorString(e));
  }
  if (*n == 0) return Error(QWEN35_ERR_UNSUPPORTED, "no CUDA device found");
  return Status::Ok();
}

// Whether device `index` exists and runs this build's kernels.
Status check_device(int index) {
  int n = 0;
  QWEN35_TRY(device_count(&n));
  if (index < 0 || index >= n)
    return Error(QWEN35_ERR_INVALID_ARG, "CUDA device index {} is out of range ({} device(s))", index, n);
  QWEN35_CUDA_TRY(cudaSetDevice(index), "selecting the CUDA device");
  const cudaError_t e = probe_device();
  if (e != cudaSuccess) {
    cudaGetLastError();
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, index);
    return Error(QWEN35_ERR_UNSUPPORTED, "CUDA device {} ({}, compute capability {}.{}) cannot run this build: {}",
                 index, prop.name, prop.major, prop.minor, cudaGetErrorString(e));
  }
  return Status::Ok();
}

}  // namespace

}  // namespace cuda

bool CudaAvailable() {
  static std::once_flag once;
  static bool available = false;
  std::call_once(once, [] {
    int prev = -1;
    const bool had = cudaGetDevice(&prev) == cudaSuccess;
    available = cuda::check_device(0).ok();
    if (had && prev >= 0) cudaSetDevice(prev);
    cudaGetLastError();
  });
  return available;
}

Status CudaMemoryInfo(int device_index, uint64_t* free_bytes, uint64_t* total_bytes) {
  *free_bytes = *total_bytes = 0;
  int n = 0;
  QWEN35_TRY(cuda::device_count(&n));
  if (device_index < 0 || device_index >= n)
    return Error(QWEN35_ERR_INVALID_ARG, "CUDA device index {} is out of range ({} device(s))", device_index, n);
  QWEN35_CUDA_TRY(cudaSetDevice(device_index), "selecting the CUDA device");
  size_t f = 0, t = 0;
  QWEN35_CUDA_TRY(cudaMemGetInfo(&f, &t), "querying GPU memory");
  *free_bytes = f;
  *total_bytes = t;
  return Status::Ok();
}

Status CudaCopyBandwidth(int device_index, uint64_t bytes, double* gb_per_s) {
  *gb_per_s = 0;
  int n = 0;
  QWEN35_TRY(cuda::device_count(&n));
  if (device_index < 0 || device_index >= n)
    return Error(QWEN35_ERR_INVALID_ARG, "CUDA device index {} is out of range ({} device(s))", device_index, n);
  QWEN35_CUDA_TRY(cudaSetDevice(device_index), "selecting the CUDA device");
  void* a = nullptr;
  void* b = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  auto release = [&] {
    if (a) cudaFree(a);
    if (b) cudaFree(b);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
  };
  cudaError_t err = cudaMalloc(&a, bytes);
  if (err == cudaSuccess) err = cudaMalloc(&b, bytes);
  if (err == cudaSuccess) err = cudaMemset(a, 0x5A, bytes);
  if (err == cudaSuccess) err = cudaEventCreate(&e0);
  if (err == cudaSuccess) err = cudaEventCreate(&e1);
  float best_ms = 0;
  for (int i = 0; i < 6 && err == cudaSuccess; ++i) {  // the first is a warm-up
    err = cudaEventRecord(e0);
    if (err == cudaSuccess) err = cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    if (err == cudaSuccess) err = cudaEventRecord(e1);
    if (err == cudaSuccess) err = cudaEventSynchronize(e1);
    float ms = 0;
    if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, e0, e1);
    if (err == cudaSuccess && i > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;
  }
  release();
  if (err != cudaSuccess) {
    cudaGetLastError();
    return Error(QWEN35_ERR_BACKEND, "measuring the device copy bandwidth: {}", cudaGetErrorString(err));
  }
  *gb_per_s = best_ms > 0 ? 2.0 * double(bytes) / (double(best_ms) * 1e6) : 0;
  return Status::Ok();
}

Status UploadModelToCuda(Model& model, int device_index, bool required) {
  using namespace cuda;
  // On AUTO every obstacle means "stay on the CPU"; with device=CUDA it is an error.
  auto fail = [&](Status st) -> Status {
    if (required) return st;
    model.log.info("running on the CPU: {}", st.message());
    return Status::Ok();
  };
  Status st = check_device(device_index);
  if (!st.ok()) return fail(st);
  const std::string why = unsupported_reason(model);
  if (!why.empty()) return fail(Error(QWEN35_ERR_UNSUPPORTED, "the CUDA backend does not support {}", why));

  const char* env = std::getenv("QWEN35_CUDA_FAST");
  bool fast = !(env && std::string(env) == "0");
  const char* env_fp4 = std::getenv("QWEN35_CUDA_FP4_GEMM");
  bool ktiles = true;
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto dm = std::make_unique<DeviceModel>();
    dm->device = device_index;
    cudaDeviceProp prop{};
    QWEN35_CUDA_TRY(cudaGetDeviceProperties(&prop, device_index), "reading the device properties");
    dm->device_name = prop.name;
    dm->cc_major = prop.major;
    dm->cc_minor = prop.minor;
    dm->sms = prop.multiProcessorCount;
    // FP4 tensor cores (Blackwell): block-scaled FP4 GEMMs for prefill.
    const bool fp4_gemm = prop.major >= 10 && !(env_fp4 && std::string(env_fp4) == "0");
    // FP8 tensor cores (sm_89 and later): kernel 3's FP8 arithmetic wants its own copy of the codes.
    const bool fp8_codes = decode_tuning().fp4_fp8 && prop.major * 10 + prop.minor >= 89;
    Uploader up(model, *dm, fast, fp4_gemm, ktiles, fp8_codes);
    st = up.run();
    if (!st.ok()) return fail(st);
    if (up.self_check_failed() && fast) {
      // Again without the tiles of the type that failed (a tiled type: the
      // k-quant / F16 tiles; else every repacked layout).
      if (up.ktiles_check_failed() && ktiles) ktiles = false;
      else fast = false;
      continue;
    }
    model.log.info("uploaded {:.1f} MiB of weights to CUDA device {} ({}, compute capability {}.{}, {} layouts{})",
                   double(dm->bytes) / (1 << 20), device_index, dm->device_name, dm->cc_major, dm->cc_minor,
                   dm->fast ? "decode" : "GGUF", dm->fp4_gemm ? ", FP4 GEMM" : "");
    model.device_bytes = dm->bytes;
    model.device = QWEN35_DEVICE_CUDA;
    model.device_weights = std::shared_ptr<DeviceModel>(std::move(dm));
    return Status::Ok();
  }
  return fail(Error(QWEN35_ERR_BACKEND, "uploading the model to CUDA device {} failed", device_index));
}

}  // namespace qwen35
