#include "vision/synth_mmproj.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "gguf_writer.h"
#include "quants.h"
#include "threadpool.h"

namespace qwen35::vision {

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t hash_name(uint64_t seed, const std::string& name) {
  uint64_t h = seed * 0x100000001B3ull ^ 0xCBF29CE484222325ull;
  for (char c : name) h = (h ^ uint64_t(uint8_t(c))) * 0x100000001B3ull;
  return splitmix64(h);
}

// Values mean + U(-a, a) with a = sqrt(3) * sd (uniform: cheap for the
// 330 M values of the full-size file, and the encoder does not care).
GgufWriter::Fill filler(uint32_t type, int64_t cols, float mean, float sd, uint64_t seed) {
  return [=](uint8_t* dst, uint64_t nbytes) {
    const TypeInfo* ti = type_info(type);
    const uint64_t rb = row_bytes(*ti, cols);
    const int64_t rows = int64_t(nbytes / rb);
    const float a = std::sqrt(3.0f) * sd;
    ThreadPool tp(ThreadPool::default_threads());
    tp.parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
      std::vector<float> row(static_cast<size_t>(cols));
      for (int64_t r = r0; r < r1; ++r) {
        uint64_t s = seed ^ (uint64_t(r) * 0x9E3779B97F4A7C15ull);
        for (int64_t c = 0; c < cols; ++c)
          row[size_t(c)] = mean + a * (float(splitmix64(s) >> 40) * (2.0f / 16777216.0f) - 1.0f);
        quantize_row(type, row.data(), dst + uint64_t(r) * rb, cols);
      }
    });
  };
}

}  // namespace

Status SynthMmprojPreset(const std::string& name, SynthMmprojConfig* cfg) {
  SynthMmprojConfig c;
  if (name == "tiny") {
    // defaults
  } else if (name == "4b") {
    c.n_embd = 1024;
    c.n_ff = 4096;
    c.n_block = 24;
    c.n_head = 16;
    c.pos_grid = 48;
    c.proj_dim = 2560;
  } else {
    return Error(QWEN35_ERR_INVALID_ARG, "unknown mmproj preset '{}' (tiny, 4b)", name);
  }
  *cfg = c;
  return Status::Ok();
}

Status WriteSynthMmproj(const SynthMmprojConfig& cfg, const std::string& path) {
  const TypeInfo* mt = type_info(cfg.matrix_type);
  if (!mt || !mt->compute) return Error(QWEN35_ERR_INVALID_ARG, "bad matrix type {}", cfg.matrix_type);
  if (cfg.n_embd < 1 || cfg.n_head < 1 || cfg.n_embd % cfg.n_head || cfg.n_block < 1 || cfg.pos_grid < 1)
    return Error(QWEN35_ERR_INVALID_ARG, "bad synthetic mmproj shape");
  const int64_t C = cfg.n_embd, FF = cfg.n_ff, P = cfg.patch, C4 = 4 * C, D = cfg.proj_dim;
  GgufWriter w;
  auto keep = [&](const std::string& k) { return k != cfg.omit; };
  if (keep("general.architecture")) w.set_str("general.architecture", "clip");
  w.set_str("general.type", "mmproj");
  w.set_str("general.name", "qwen35 synthetic vision projector");
  w.set_u32("general.file_type", cfg.matrix_type == GGML_F32 ? 0 : 1);
  w.set_u32("general.quantization_version", 2);
  if (keep("clip.has_vision_encoder")) w.set_bool("clip.has_vision_encoder", true);
  if (keep("clip.projector_type")) w.set_str("clip.projector_type", cfg.projector_type);
  w.set_bool("clip.use_gelu", true);
  if (keep("clip.vision.image_size")) w.set_u32("clip.vision.image_size", uint32_t(cfg.pos_grid * P));
  if (keep("clip.vision.patch_size")) w.set_u32("clip.vision.patch_size", uint32_t(P));
  if (keep("clip.vision.embedding_length")) w.set_u32("clip.vision.embedding_length", uint32_t(C));
  if (keep("clip.vision.feed_forward_length")) w.set_u32("clip.vision.feed_forward_length", uint32_t(FF));
  if (keep("clip.vision.block_count")) w.set_u32("clip.vision.block_count", uint32_t(cfg.n_block));
  if (keep("clip.vision.attention.head_count")) w.set_u32("clip.vision.attention.head_count", uint32_t(cfg.n_head));
  if (keep("clip.vision.attention.layer_norm_epsilon")) w.set_f32("clip.vision.attention.layer_norm_epsilon", 1e-6f);
  if (keep("clip.vision.projection_dim")) w.set_u32("clip.vision.projection_dim", uint32_t(D));
  if (keep("clip.vision.image_mean")) w.set_arr_f32("clip.vision.image_mean", {0.5f, 0.5f, 0.5f});
  if (keep("clip.vision.image_std")) w.set_arr_f32("clip.vision.image_std", {0.5f, 0.5f, 0.5f});
  if (keep("clip.vision.spatial_merge_size")) w.set_u32("clip.vision.spatial_merge_size", 2);
  w.set_arr_bool("clip.vision.is_deepstack_layers", std::vector<bool>(size_t(cfg.n_block), false));

  auto add = [&](const std::string& name, uint32_t type, std::vector<int64_t> ne, float mean, float sd) {
    if (!keep(name)) return;
    w.add_tensor(name, type, ne, filler(type, ne[0], mean, sd, hash_name(cfg.seed, name)));
  };
  const uint32_t M = cfg.matrix_type, F32 = GGML_F32;
  const float s_patch = 1.0f / std::sqrt(float(6 * P * P));
  // Quantized types whose blocks are longer than a pixel row keep the patch
  // kernels in F16 (as llama.cpp's quantizer does).
  const uint32_t PT = P % mt->block == 0 ? M : uint32_t(GGML_F16);
  add("v.patch_embd.weight", PT, {P, P, 3, C}, 0.0f, s_patch);
  add("v.patch_embd.weight.1", PT, {P, P, 3, C}, 0.0f, s_patch);
  add("v.patch_embd.bias", F32, {C}, 0.0f, 0.02f);
  add("v.position_embd.weight", F32, {C, int64_t(cfg.pos_grid) * cfg.pos_grid}, 0.0f, 0.5f);
  for (int32_t il = 0; il < cfg.n_block; ++il) {
    const std::string p = "v.blk." + std::to_string(il) + ".";
    add(p + "ln1.weight", F32, {C}, 1.0f, 0.1f);
    add(p + "ln1.bias", F32, {C}, 0.0f, 0.05f);
    add(p + "attn_qkv.weight", M, {C, 3 * C}, 0.0f, 1.0f / std::sqrt(float(C)));
    add(p + "attn_qkv.bias", F32, {3 * C}, 0.0f, 0.05f);
    add(p + "attn_out.weight", M, {C, C}, 0.0f, 1.0f / std::sqrt(float(C)));
    add(p + "attn_out.bias", F32, {C}, 0.0f, 0.02f);
    add(p + "ln2.weight", F32, {C}, 1.0f, 0.1f);
    add(p + "ln2.bias", F32, {C}, 0.0f, 0.05f);
    add(p + "ffn_up.weight", M, {C, FF}, 0.0f, 1.0f / std::sqrt(float(C)));
    add(p + "ffn_up.bias", F32, {FF}, 0.0f, 0.02f);
    add(p + "ffn_down.weight", M, {FF, C}, 0.0f, 1.0f / std::sqrt(float(FF)));
    add(p + "ffn_down.bias", F32, {C}, 0.0f, 0.02f);
  }
  if (cfg.deepstack) add("v.deepstack.0.fc1.weight", M, {C4, C4}, 0.0f, 0.01f);
  add("v.post_ln.weight", F32, {C}, 1.0f, 0.1f);
  add("v.post_ln.bias", F32, {C}, 0.0f, 0.05f);
  add("mm.0.weight", M, {C4, C4}, 0.0f, 1.0f / std::sqrt(float(C4)));
  add("mm.0.bias", F32, {C4}, 0.0f, 0.02f);
  add("mm.2.weight", M, {C4, D}, 0.0f, 1.0f / std::sqrt(float(C4)));
  add("mm.2.bias", F32, {D}, 0.0f, 0.02f);
  return w.write(path);
}

}  // namespace qwen35::vision
