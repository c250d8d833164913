// The qwen35 model: hyper-parameters read from GGUF metadata and views of
// every weight tensor (spec qwen35-text.md §2-3). Immutable after loading.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"
#include "log.h"
#include "status.h"

namespace qwen35 {

class Vocab;        // tokenizer.h
class ChatTemplate; // chat/template.h

struct HParams {
  int32_t n_vocab = 0;        // V: rows of token_embd
  int32_t n_ctx_train = 0;
  int32_t n_embd = 0;         // D
  int32_t n_layer = 0;        // L: main layers = block_count - nextn_predict_layers
  int32_t n_block = 0;        // block_count (main + MTP)
  int32_t n_mtp = 0;          // nextn_predict_layers (0 or 1)
  int32_t n_ff = 0;           // F
  int32_t n_head = 0;         // Hq
  int32_t n_head_kv = 0;      // Hkv
  int32_t head_dim = 0;       // Dh (key_length == value_length)
  int32_t n_rot = 0;          // R: rotated dims per head
  int32_t rope_sections[4] = {0, 0, 0, 0};
  float rope_base = 10000.0f;
  float eps = 1e-6f;
  int32_t ssm_conv = 0;       // Kc: causal conv width
  int32_t ssm_inner = 0;      // Cv = Hv * dv
  int32_t ssm_state = 0;      // dk
  int32_t ssm_heads_v = 0;    // Hv (time_step_rank)
  int32_t ssm_heads_k = 0;    // Hk (group_count)
  int32_t ssm_dv = 0;         // dv = Cv / Hv
  int32_t full_attn_interval = 4;

  int32_t q_dim() const { return n_head * head_dim; }         // Hq*Dh (attention inner width)
  int32_t kv_dim() const { return n_head_kv * head_dim; }     // Hkv*Dh
  int32_t ssm_qk_dim() const { return ssm_heads_k * ssm_state; }   // Cqk
  int32_t ssm_conv_dim() const { return 2 * ssm_qk_dim() + ssm_inner; }  // Cconv
  bool is_attn_layer(int32_t il) const { return (il + 1) % full_attn_interval == 0; }
};

// A 2-D weight used as y = W x: `rows` outputs of `cols` inputs, each row
// `row_bytes` bytes of `type` blocks, in place in the mapped file.
struct Weight {
  std::string name;
  uint32_t type = 0;
  int64_t cols = 0;         // K = ne[0]
  int64_t rows = 0;         // N = ne[1]
  uint64_t row_bytes = 0;
  const uint8_t* data = nullptr;
  float scale = 1.0f;       // optional per-tensor X.scale (multiplies the output)
  bool present() const { return data != nullptr; }
  const uint8_t* row(int64_t r) const { return data + uint64_t(r) * row_bytes; }
};

// A 1-D (or small 2-D) F32 parameter. Points into the file when it is F32
// there; other types are converted once at load (these tensors are tiny).
struct Vec {
  const float* data = nullptr;
  int64_t n = 0;
  std::vector<float> owned;
};

struct Layer {
  bool is_attn = false;
  Vec attn_norm;            // [D]
  Vec post_attention_norm;  // [D] pre-FFN norm
  // full attention (and the MTP block)
  Weight wq;                // [D, 2*Hq*Dh]: per head [query(Dh) | gate(Dh)]
  Weight wk, wv;            // [D, Hkv*Dh]
  Vec q_norm, k_norm;       // [Dh]
  Weight wo;                // [Hq*Dh, D]
  // gated delta net
  Weight wqkv;              // [D, 2*Cqk + Cv]: [q | k | v]
  Weight wgate;             // [D, Cv]: output gate z
  Vec conv1d;               // [Kc, Cconv]: channel c taps at c*Kc .. c*Kc+Kc-1
  Vec dt_bias;              // [Hv]
  Vec ssm_a;                // [Hv]: -exp(A_log), already negative
  Weight wbeta, walpha;     // [D, Hv]
  Vec ssm_norm;             // [dv]: gated norm weight (no +1)
  Weight ssm_out;           // [Cv, D]
  // FFN
  Weight ffn_gate, ffn_up;  // [D, F]
  Weight ffn_down;          // [F, D]
};

struct MtpLayer {
  Layer block;              // a full-attention decoder layer
  Weight eh_proj;           // [2D, D]: input [embedding | hidden]
  Vec enorm, hnorm;         // [D]
  Vec shared_head_norm;     // [D]
  Weight embed;             // optional dedicated embedding [D, V] (else token_embd)
  Weight head;              // optional dedicated LM head [D, V] (else the main head)
};

struct Model {
  std::string path;
  std::unique_ptr<GgufFile> file;
  HParams hp;
  std::string desc;
  Logger log;

  Weight token_embd;        // [D, V]: embedding rows (and the LM head when tied)
  Weight output;            // [D, V]: LM head; == token_embd view when tied
  bool tied_output = true;
  Vec output_norm;          // [D]
  std::vector<Layer> layers;   // main layers 0..L-1
  std::unique_ptr<MtpLayer> mtp;

  std::shared_ptr<Vocab> vocab;  // may be null for files without a tokenizer
  bool vocab_only = false;       // a file with a tokenizer and no tensors: text APIs only, no contexts
  uint64_t host_bytes = 0;       // bytes we allocated for weights (converted vectors)
  uint64_t device_bytes = 0;     // filled by a GPU backend
  int device = QWEN35_DEVICE_CPU;
  std::shared_ptr<void> device_weights;  // opaque GPU backend weights

  ~Model();
};

struct LoadOptions {
  bool use_mmap = true;
  qwen35_progress_callback progress = nullptr;
  void* progress_user_data = nullptr;
};

// Load and validate (architecture, hyper-parameters, every tensor's presence,
// shape and type). Errors name the key or tensor.
Status LoadModel(const std::string& path, const LoadOptions& opt, const Logger& log, std::unique_ptr<Model>* out);
// Same, on a GGUF file that is already open (tests).
Status LoadModelFromGguf(std::unique_ptr<GgufFile> file, const LoadOptions& opt, const Logger& log,
                         std::unique_ptr<Model>* out);

// Dequantize embedding row `token` of `w` into out[cols].
void embedding_row(const Weight& w, int32_t token, float* out);

}  // namespace qwen35
