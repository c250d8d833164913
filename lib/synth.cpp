#include "synth.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>

#include "gguf.h"
#include "gguf_writer.h"
#include "quants.h"
#include "threadpool.h"

namespace qwen35 {

namespace {

// ---- deterministic randomness ---------------------------------------------------

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() { return splitmix64(s); }
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f); }  // [0, 1)
  float normal() {
    float u1 = std::max(uniform(), 1e-7f), u2 = uniform();
    return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.28318530718f * u2);
  }
};

uint64_t hash_name(uint64_t seed, const std::string& name) {
  uint64_t h = seed * 0x100000001B3ull ^ 0xCBF29CE484222325ull;
  for (char c : name) h = (h ^ uint64_t(uint8_t(c))) * 0x100000001B3ull;
  return splitmix64(h);
}

// How a tensor's values are generated.
struct Gen {
  enum Kind { Normal, Const, Zero, Identity, Uniform } kind = Normal;
  float a = 0, b = 0;  // Normal: mean a, std b; Const: a; Uniform: [a, b)
  const std::vector<float>* values = nullptr;  // explicit values (mirror tensors)
};

// Fill one tensor of `rows` rows of `cols` elements of `type`.
void fill_tensor(uint8_t* dst, uint32_t type, int64_t cols, int64_t rows, const Gen& g, uint64_t seed, int n_threads) {
  const TypeInfo* ti = type_info(type);
  const uint64_t rb = row_bytes(*ti, cols);
  ThreadPool tp(n_threads);
  tp.parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      uint8_t* out = dst + uint64_t(r) * rb;
      if (type == GGML_NVFP4 && g.kind == Gen::Normal && !g.values) {
        // Random codes directly: uniform E2M1 codes have RMS 2.93, so the
        // scale code is picked to give the requested standard deviation.
        Rng rng(seed ^ (uint64_t(r) * 0x9E3779B97F4A7C15ull));
        const uint8_t code = fp32_to_ue4m3(g.b / 2.93f);
        for (int64_t bi = 0; bi < cols / 64; ++bi) {
          BlockNVFP4* b = reinterpret_cast<BlockNVFP4*>(out) + bi;
          for (int s = 0; s < 4; ++s) b->d[s] = uint8_t(std::clamp<int>(code + int(rng.next() % 3) - 1, 1, 0x7E));
          for (int j = 0; j < 32; j += 8) {
            uint64_t v = rng.next();
            std::memcpy(b->qs + j, &v, 8);
          }
        }
        continue;
      }
      Rng rng(seed ^ (uint64_t(r) * 0x9E3779B97F4A7C15ull));
      for (int64_t c = 0; c < cols; ++c) {
        float v = 0;
        if (g.values) v = (*g.values)[size_t(r * cols + c)];
        else if (g.kind == Gen::Normal) v = g.a + g.b * rng.normal();
        else if (g.kind == Gen::Const) v = g.a;
        else if (g.kind == Gen::Identity) v = (c == r) ? 1.0f : 0.0f;
        else if (g.kind == Gen::Uniform) v = g.a + (g.b - g.a) * rng.uniform();
        row[size_t(c)] = v;
      }
      quantize_row(type, row.data(), out, cols);
    }
  });
}

// GPT-2 byte-to-unicode map: the 256 token strings of ids 0..255.
std::vector<std::string> byte_tokens() {
  std::vector<int> order;
  for (int b = 33; b <= 126; ++b) order.push_back(b);
  for (int b = 161; b <= 172; ++b) order.push_back(b);
  for (int b = 174; b <= 255; ++b) order.push_back(b);
  int extra = 0;
  std::vector<int> cp(256);
  for (int b : order) cp[size_t(b)] = b;
  std::vector<int> remapped;
  for (int b = 0; b < 256; ++b)
    if (std::find(order.begin(), order.end(), b) == order.end()) {
      cp[size_t(b)] = 256 + extra++;
      remapped.push_back(b);
    }
  order.insert(order.end(), remapped.begin(), remapped.end());
  std::vector<std::string> out;
  for (int b : order) {
    int c = cp[size_t(b)];
    std::string s;
    if (c < 0x80) s.push_back(char(c));
    else {
      s.push_back(char(0xC0 | (c >> 6)));
      s.push_back(char(0x80 | (c & 0x3F)));
    }
    out.push_back(s);
  }
  return out;
}

// A minimal ChatML template of our own, for synthetic vocabularies that do
// not copy a real tokenizer.
const char* kDemoTemplate =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}";

Status add_vocab(const SynthConfig& cfg, GgufWriter& w) {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  std::string tmpl = kDemoTemplate;
  std::string pre = "qwen35";
  int32_t eos = -1, bos = -1;
  if (!cfg.vocab_from.empty()) {
    std::unique_ptr<GgufFile> f;
    QWEN35_TRY(GgufFile::Open(cfg.vocab_from, true, &f));
    const std::vector<std::string_view>* t = nullptr;
    bool found;
    QWEN35_TRY(f->get_string_array("tokenizer.ggml.tokens", &t, &found));
    if (!found) return Error(QWEN35_ERR_FORMAT, "'{}' has no tokenizer", cfg.vocab_from);
    for (auto s : *t) tokens.emplace_back(s);
    std::vector<int64_t> ty;
    QWEN35_TRY(f->get_int_array("tokenizer.ggml.token_type", &ty, &found));
    for (int64_t x : ty) types.push_back(int32_t(x));
    types.resize(tokens.size(), 1);
    const std::vector<std::string_view>* m = nullptr;
    QWEN35_TRY(f->get_string_array("tokenizer.ggml.merges", &m, &found));
    if (found)
      for (auto s : *m) merges.emplace_back(s);
    std::string_view sv;
    QWEN35_TRY(f->get_string("tokenizer.chat_template", &sv, &found));
    if (found) tmpl = std::string(sv);
    QWEN35_TRY(f->get_string("tokenizer.ggml.pre", &sv, &found));
    if (found) pre = std::string(sv);
    int64_t id;
    QWEN35_TRY(f->get_int("tokenizer.ggml.eos_token_id", &id, &found));
    if (found) eos = int32_t(id);
    QWEN35_TRY(f->get_int("tokenizer.ggml.bos_token_id", &id, &found));
    if (found) bos = int32_t(id);
    if (int64_t(tokens.size()) > cfg.n_vocab)
      return Error(QWEN35_ERR_INVALID_ARG, "'{}' has {} tokens, more than the vocabulary size {}", cfg.vocab_from,
                   tokens.size(), cfg.n_vocab);
  } else {
    tokens = byte_tokens();
    types.assign(tokens.size(), 1);
    const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                              "<|image_pad|>", "<tool_call>", "</tool_call>", "<think>", "</think>",
                              "<tool_response>", "</tool_response>"};
    for (const char* s : specials) {
      tokens.emplace_back(s);
      types.push_back(s[1] == '|' ? 3 : 4);
    }
    bos = 256;
    eos = 258;
    if (int64_t(tokens.size()) > cfg.n_vocab)
      return Error(QWEN35_ERR_INVALID_ARG, "vocabulary size {} is below the {} tokens of the synthetic tokenizer",
                   cfg.n_vocab, tokens.size());
  }
  while (int64_t(tokens.size()) < cfg.n_vocab) {
    tokens.push_back("[PAD" + std::to_string(tokens.size()) + "]");
    types.push_back(5);
  }
  w.set_str("tokenizer.ggml.model", "gpt2");
  w.set_str("tokenizer.ggml.pre", pre);
  w.set_arr_str("tokenizer.ggml.tokens", tokens);
  w.set_arr_i32("tokenizer.ggml.token_type", types);
  w.set_arr_str("tokenizer.ggml.merges", merges);
  if (eos >= 0) w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(eos));
  if (bos >= 0) w.set_u32("tokenizer.ggml.bos_token_id", uint32_t(bos));
  w.set_bool("tokenizer.ggml.add_bos_token", false);
  w.set_str("tokenizer.chat_template", tmpl);
  return Status::Ok();
}

}  // namespace

Status SynthPreset(const std::string& name, SynthConfig* c) {
  if (name == "tiny") {
    *c = SynthConfig();
    c->n_vocab = 4122;
    return Status::Ok();
  }
  if (name == "4b") {
    *c = SynthConfig();
    c->n_vocab = 248320;
    c->n_ctx_train = 262144;
    c->n_embd = 2560;
    c->n_layer = 32;
    c->n_mtp = 1;
    c->n_ff = 9216;
    c->n_head = 16;
    c->n_head_kv = 4;
    c->head_dim = 256;
    c->n_rot = 64;
    c->ssm_state = 128;
    c->ssm_heads_k = 16;
    c->ssm_heads_v = 32;
    c->ssm_dv = 128;
    return Status::Ok();
  }
  return Error(QWEN35_ERR_INVALID_ARG, "unknown preset '{}' (use 4b or tiny)", name);
}

Status WriteSynthModel(const SynthConfig& cfg, const std::string& path) {
  const int64_t D = cfg.n_embd, V = cfg.n_vocab, F = cfg.n_ff;
  const int64_t Dh = cfg.head_dim, qd = int64_t(cfg.n_head) * Dh, kvd = int64_t(cfg.n_head_kv) * Dh;
  const int64_t Cqk = int64_t(cfg.ssm_heads_k) * cfg.ssm_state, Cv = int64_t(cfg.ssm_heads_v) * cfg.ssm_dv;
  const int64_t Cconv = 2 * Cqk + Cv;
  if (D <= 0 || V <= 0 || F <= 0 || cfg.n_layer <= 0 || cfg.n_head <= 0 || cfg.n_head_kv <= 0)
    return Error(QWEN35_ERR_INVALID_ARG, "model dimensions must be positive (n_embd {}, n_vocab {}, n_ff {}, n_layer {}, "
                 "n_head {}, n_head_kv {})", D, V, F, cfg.n_layer, cfg.n_head, cfg.n_head_kv);
  if (cfg.n_head % cfg.n_head_kv)
    return Error(QWEN35_ERR_INVALID_ARG, "n_head {} is not a multiple of n_head_kv {}", cfg.n_head, cfg.n_head_kv);
  if (cfg.ssm_heads_k <= 0 || cfg.ssm_heads_v % cfg.ssm_heads_k)
    return Error(QWEN35_ERR_INVALID_ARG, "ssm value heads {} are not a multiple of ssm key heads {}", cfg.ssm_heads_v,
                 cfg.ssm_heads_k);
  if (cfg.n_rot > Dh || cfg.n_rot % 2)
    return Error(QWEN35_ERR_INVALID_ARG, "n_rot {} must be even and at most head_dim {}", cfg.n_rot, Dh);
  if (cfg.mtp_mirror && cfg.n_mtp != 1) return Error(QWEN35_ERR_INVALID_ARG, "--mtp-mirror needs an MTP layer");
  // The default M-RoPE split (11, 11, 10, 0 for 32 pairs) is rescaled to the
  // rotary pairs of other shapes (t, h, w about a third each); sections
  // given explicitly are written as they are.
  std::vector<int32_t> sections = cfg.sections;
  if (sections == SynthConfig().sections && cfg.n_rot != 64) {
    const int32_t pairs = cfg.n_rot / 2;
    sections = {pairs - 2 * (pairs / 3), pairs / 3, pairs / 3, 0};
  }
  const int n_threads = cfg.n_threads > 0 ? cfg.n_threads : ThreadPool::default_threads();

  GgufWriter w;
  w.set_str("general.architecture", "qwen35");
  w.set_str("general.name", "qwen35-synthetic");
  w.set_u32("general.file_type", cfg.matrix_type == GGML_NVFP4 ? 39 : 0);
  const std::string a = "qwen35.";
  w.set_u32(a + "block_count", uint32_t(cfg.n_layer + cfg.n_mtp));
  if (cfg.n_mtp) w.set_u32(a + "nextn_predict_layers", uint32_t(cfg.n_mtp));
  w.set_u32(a + "context_length", uint32_t(cfg.n_ctx_train));
  w.set_u32(a + "embedding_length", uint32_t(D));
  w.set_u32(a + "feed_forward_length", uint32_t(F));
  w.set_u32(a + "attention.head_count", uint32_t(cfg.n_head));
  w.set_u32(a + "attention.head_count_kv", uint32_t(cfg.n_head_kv));
  w.set_u32(a + "attention.key_length", uint32_t(Dh));
  w.set_u32(a + "attention.value_length", uint32_t(Dh));
  w.set_f32(a + "attention.layer_norm_rms_epsilon", cfg.eps);
  w.set_f32(a + "rope.freq_base", cfg.rope_base);
  w.set_u32(a + "rope.dimension_count", uint32_t(cfg.n_rot));
  w.set_arr_i32(a + "rope.dimension_sections", sections);
  w.set_u32(a + "ssm.conv_kernel", uint32_t(cfg.ssm_conv));
  w.set_u32(a + "ssm.inner_size", uint32_t(Cv));
  w.set_u32(a + "ssm.state_size", uint32_t(cfg.ssm_state));
  w.set_u32(a + "ssm.time_step_rank", uint32_t(cfg.ssm_heads_v));
  w.set_u32(a + "ssm.group_count", uint32_t(cfg.ssm_heads_k));
  w.set_u32(a + "full_attention_interval", uint32_t(cfg.full_attn_interval));
  QWEN35_TRY(add_vocab(cfg, w));

  // Matrix types: fixed, or cycling through every supported type that fits
  // the row length.
  const uint32_t cycle[] = {GGML_NVFP4, GGML_Q4_K, GGML_Q6_K, GGML_Q8_0, GGML_F16, GGML_F32, GGML_BF16, GGML_MXFP4};
  size_t cycle_i = 0;
  auto mtype = [&](int64_t cols) -> uint32_t {
    auto fits = [&](uint32_t t) { return cols % type_info(t)->block == 0; };
    if (!cfg.mixed) return fits(cfg.matrix_type) ? cfg.matrix_type : GGML_F16;
    for (size_t k = 0; k < 8; ++k) {
      uint32_t t = cycle[(cycle_i + k) % 8];
      if (fits(t)) {
        cycle_i = (cycle_i + k + 1) % 8;
        return t;
      }
    }
    return GGML_F32;
  };
  auto add = [&](const std::string& name, uint32_t type, int64_t cols, int64_t rows, Gen g) {
    const uint64_t seed = hash_name(cfg.seed, name);
    std::vector<int64_t> ne = rows > 1 ? std::vector<int64_t>{cols, rows} : std::vector<int64_t>{cols};
    w.add_tensor(name, type, ne, [=](uint8_t* dst, uint64_t) { fill_tensor(dst, type, cols, rows, g, seed, n_threads); });
  };
  auto normal = [](float std) { return Gen{Gen::Normal, 0.0f, std}; };
  auto near_one = Gen{Gen::Normal, 1.0f, 0.1f};
  const Gen zero{Gen::Const, 0.0f, 0.0f};
  const bool mirror = cfg.mtp_mirror;

  // Output norm values are kept so the mirror MTP can reuse them exactly.
  auto out_norm = std::make_shared<std::vector<float>>(size_t(D));
  {
    Rng rng(hash_name(cfg.seed, "output_norm.weight"));
    for (auto& v : *out_norm) v = 1.0f + 0.1f * rng.normal();
  }
  const float emb_std = 2.0f / std::sqrt(float(D));
  // Like llama-quantize: a type whose block does not divide the row falls back to Q8_0 (or F16).
  auto fit = [](uint32_t t, int64_t cols) {
    if (cols % type_info(t)->block == 0) return t;
    return cols % 32 == 0 ? uint32_t(GGML_Q8_0) : uint32_t(GGML_F16);
  };
  add("token_embd.weight", fit(cfg.embd_type, D), D, V, normal(emb_std));
  Gen on;
  on.values = out_norm.get();
  add("output_norm.weight", GGML_F32, D, 1, on);
  if (cfg.untied) add("output.weight", fit(cfg.output_type, D), D, V, normal(emb_std));

  auto layer = [&](int il, bool attn, bool is_mtp) {
    const std::string p = "blk." + std::to_string(il) + ".";
    const bool zero_out = mirror;  // mirror: every layer's output projection is zero
    add(p + "attn_norm.weight", GGML_F32, D, 1, near_one);
    add(p + "post_attention_norm.weight", GGML_F32, D, 1, near_one);
    if (attn) {
      add(p + "attn_q.weight", mtype(D), D, 2 * qd, normal(1.0f / std::sqrt(float(D))));
      add(p + "attn_k.weight", mtype(D), D, kvd, normal(1.0f / std::sqrt(float(D))));
      add(p + "attn_v.weight", mtype(D), D, kvd, normal(1.0f / std::sqrt(float(D))));
      add(p + "attn_q_norm.weight", GGML_F32, Dh, 1, near_one);
      add(p + "attn_k_norm.weight", GGML_F32, Dh, 1, near_one);
      add(p + "attn_output.weight", mtype(qd), qd, D, zero_out ? zero : normal(0.5f / std::sqrt(float(qd))));
    } else {
      add(p + "attn_qkv.weight", mtype(D), D, Cconv, normal(1.0f / std::sqrt(float(D))));
      add(p + "attn_gate.weight", mtype(D), D, Cv, normal(1.0f / std::sqrt(float(D))));
      add(p + "ssm_conv1d.weight", GGML_F32, cfg.ssm_conv, Cconv, normal(0.5f));
      add(p + "ssm_dt.bias", GGML_F32, cfg.ssm_heads_v, 1, normal(0.5f));
      add(p + "ssm_a", GGML_F32, cfg.ssm_heads_v, 1, Gen{Gen::Uniform, -1.5f, -0.05f});
      add(p + "ssm_beta.weight", mtype(D), D, cfg.ssm_heads_v, normal(1.0f / std::sqrt(float(D))));
      add(p + "ssm_alpha.weight", mtype(D), D, cfg.ssm_heads_v, normal(1.0f / std::sqrt(float(D))));
      add(p + "ssm_norm.weight", GGML_F32, cfg.ssm_dv, 1, near_one);
      add(p + "ssm_out.weight", mtype(Cv), Cv, D, zero_out ? zero : normal(0.5f / std::sqrt(float(Cv))));
    }
    add(p + "ffn_gate.weight", mtype(D), D, F, normal(1.0f / std::sqrt(float(D))));
    add(p + "ffn_up.weight", mtype(D), D, F, normal(1.0f / std::sqrt(float(D))));
    add(p + "ffn_down.weight", mtype(F), F, D, zero_out ? zero : normal(0.5f / std::sqrt(float(F))));
    if (is_mtp) {
      const std::string n = p + "nextn.";
      if (mirror) {
        // y = [I | 0] [enorm(e) | hnorm(h)] = enorm(e): the MTP then predicts
        // from the next token alone, exactly as the (zeroed) trunk does.
        add(n + "eh_proj.weight", mtype(2 * D), 2 * D, D, Gen{Gen::Identity});
        add(n + "enorm.weight", GGML_F32, D, 1, Gen{Gen::Const, 1.0f, 0.0f});
        add(n + "hnorm.weight", GGML_F32, D, 1, Gen{Gen::Const, 1.0f, 0.0f});
        add(n + "shared_head_norm.weight", GGML_F32, D, 1, on);
      } else {
        add(n + "eh_proj.weight", mtype(2 * D), 2 * D, D, normal(1.0f / std::sqrt(float(2 * D))));
        add(n + "enorm.weight", GGML_F32, D, 1, near_one);
        add(n + "hnorm.weight", GGML_F32, D, 1, near_one);
        add(n + "shared_head_norm.weight", GGML_F32, D, 1, near_one);
      }
    }
  };
  for (int il = 0; il < cfg.n_layer; ++il) layer(il, (il + 1) % cfg.full_attn_interval == 0, false);
  if (cfg.n_mtp) layer(cfg.n_layer, true, true);
  // The lambdas capture out_norm by value through `on`; keep it alive until written.
  Status st = w.write(path);
  (void)out_norm;
  return st;
}

}  // namespace qwen35
