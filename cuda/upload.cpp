// Device discovery and the one-time weight upload (UploadModelToCuda,
// CudaAvailable, CudaMemoryInfo from lib/backend.h).
#include <cuda_runtime_api.h>

#include <map>
#include <mutex>

#include "attention.h"
#include "backend.h"
#include "delta_net.h"
#include "device_model.h"
#include "elementwise.h"

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
    return fmt::format("delta-net head sizes dk {} / dv {} (the CUDA kernels support dk 32..256 with dv*dk <= 16384)",
                       hp.ssm_state, hp.ssm_dv);
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

// Lays out every tensor in one allocation (deduplicating shared tensors such
// as a tied LM head) and copies them up.
class Uploader {
 public:
  explicit Uploader(DeviceModel& dm) : dm_(dm) {}

  void plan(const void* host, uint64_t bytes) {
    if (!host || offsets_.count(host)) return;
    offsets_[host] = total_;
    sizes_[host] = bytes;
    total_ += (bytes + 255) / 256 * 256;
  }
  void plan(const Weight& w) { plan(w.data, uint64_t(w.rows) * w.row_bytes); }
  void plan(const Vec& v) { plan(v.data, uint64_t(v.n) * sizeof(float)); }
  uint64_t total() const { return total_; }

  Status copy() {
    for (const auto& [host, off] : offsets_)
      QWEN35_CUDA_TRY(cudaMemcpy(dm_.arena.as<uint8_t>() + off, host, sizes_[host], cudaMemcpyHostToDevice),
                      "uploading weights");
    return Status::Ok();
  }

  const uint8_t* dev(const void* host) const {
    auto it = offsets_.find(host);
    return it == offsets_.end() ? nullptr : dm_.arena.as<uint8_t>() + it->second;
  }
  MatView view(const Weight& w) const {
    MatView v;
    if (!w.present()) return v;
    v.type = w.type;
    v.rows = w.rows;
    v.cols = w.cols;
    v.row_bytes = w.row_bytes;
    v.data = dev(w.data);
    v.scale = w.scale;
    return v;
  }
  const float* vec(const Vec& v) const { return reinterpret_cast<const float*>(dev(v.data)); }

 private:
  DeviceModel& dm_;
  std::map<const void*, uint64_t> offsets_, sizes_;
  uint64_t total_ = 0;
};

void plan_layer(Uploader& up, const Layer& L) {
  for (const Vec* v : {&L.attn_norm, &L.post_attention_norm, &L.q_norm, &L.k_norm, &L.conv1d, &L.dt_bias, &L.ssm_a,
                       &L.ssm_norm})
    up.plan(*v);
  for (const Weight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.wqkv, &L.wgate, &L.wbeta, &L.walpha, &L.ssm_out, &L.ffn_gate,
                          &L.ffn_up, &L.ffn_down})
    up.plan(*w);
}

DevLayer view_layer(const Uploader& up, const Layer& L) {
  DevLayer d;
  d.is_attn = L.is_attn;
  d.attn_norm = up.vec(L.attn_norm);
  d.post_norm = up.vec(L.post_attention_norm);
  d.wq = up.view(L.wq);
  d.wk = up.view(L.wk);
  d.wv = up.view(L.wv);
  d.wo = up.view(L.wo);
  d.q_norm = up.vec(L.q_norm);
  d.k_norm = up.vec(L.k_norm);
  d.wqkv = up.view(L.wqkv);
  d.wgate = up.view(L.wgate);
  d.wbeta = up.view(L.wbeta);
  d.walpha = up.view(L.walpha);
  d.ssm_out = up.view(L.ssm_out);
  d.conv1d = up.vec(L.conv1d);
  d.dt_bias = up.vec(L.dt_bias);
  d.ssm_a = up.vec(L.ssm_a);
  d.ssm_norm = up.vec(L.ssm_norm);
  d.ffn_gate = up.view(L.ffn_gate);
  d.ffn_up = up.view(L.ffn_up);
  d.ffn_down = up.view(L.ffn_down);
  return d;
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

  auto dm = std::make_unique<DeviceModel>();
  dm->device = device_index;
  cudaDeviceProp prop{};
  QWEN35_CUDA_TRY(cudaGetDeviceProperties(&prop, device_index), "reading the device properties");
  dm->device_name = prop.name;
  dm->cc_major = prop.major;
  dm->cc_minor = prop.minor;

  Uploader up(*dm);
  up.plan(model.token_embd);
  up.plan(model.output);
  up.plan(model.output_norm);
  for (const Layer& L : model.layers) plan_layer(up, L);
  if (model.mtp) {
    const MtpLayer& M = *model.mtp;
    plan_layer(up, M.block);
    up.plan(M.eh_proj);
    up.plan(M.enorm);
    up.plan(M.hnorm);
    up.plan(M.shared_head_norm);
    up.plan(M.embed);
    up.plan(M.head);
  }
  st = dm->arena.alloc(up.total(), "the model weights");
  if (!st.ok()) return fail(st);
  st = up.copy();
  if (!st.ok()) return fail(st);

  dm->token_embd = up.view(model.token_embd);
  dm->output = up.view(model.output);
  dm->output_norm = up.vec(model.output_norm);
  for (const Layer& L : model.layers) dm->layers.push_back(view_layer(up, L));
  if (model.mtp) {
    const MtpLayer& M = *model.mtp;
    dm->mtp = std::make_unique<DevMtp>();
    dm->mtp->block = view_layer(up, M.block);
    dm->mtp->eh_proj = up.view(M.eh_proj);
    dm->mtp->enorm = up.vec(M.enorm);
    dm->mtp->hnorm = up.vec(M.hnorm);
    dm->mtp->shared_head_norm = up.vec(M.shared_head_norm);
    dm->mtp->embed = M.embed.present() ? up.view(M.embed) : dm->token_embd;
    dm->mtp->head = M.head.present() ? up.view(M.head) : dm->output;
  }
  dm->bytes = up.total();
  model.log.info("uploaded {:.1f} MiB of weights to CUDA device {} ({}, compute capability {}.{})",
                 double(dm->bytes) / (1 << 20), device_index, dm->device_name, dm->cc_major, dm->cc_minor);
  model.device_bytes = dm->bytes;
  model.device = QWEN35_DEVICE_CUDA;
  model.device_weights = std::shared_ptr<DeviceModel>(std::move(dm));
  return Status::Ok();
}

}  // namespace qwen35
