// Minimal GGUF v3 writer (used by qwen35-synth and the tests that build
// small or deliberately broken files). Tensor data is produced on demand by a
// callback, so multi-GB files are streamed, never held in memory.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gguf.h"
#include "status.h"

namespace qwen35 {

class GgufWriter {
 public:
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_str(const std::string& key, const std::string& v);
  void set_arr_i32(const std::string& key, const std::vector<int32_t>& v);
  void set_arr_str(const std::string& key, const std::vector<std::string>& v);
  void set_arr_f32(const std::string& key, const std::vector<float>& v);
  void set_arr_bool(const std::string& key, const std::vector<bool>& v);
  // Copy one key/value record verbatim from an existing file.
  void copy_kv(const GgufFile& f, const GgufKV& kv);

  // Produce `nbytes` of tensor data into dst.
  using Fill = std::function<void(uint8_t* dst, uint64_t nbytes)>;
  // ne: up to 4 dims (ne[0] innermost). nbytes is derived from type and shape.
  void add_tensor(const std::string& name, uint32_t type, std::vector<int64_t> ne, Fill fill);

  // Header (everything before the data section) as bytes.
  std::vector<uint8_t> header() const;
  uint64_t data_bytes() const;
  Status write(const std::string& path) const;

 private:
  struct KV {
    std::string key;
    std::vector<uint8_t> encoded;  // type + value, already serialized
  };
  struct Tensor {
    std::string name;
    uint32_t type;
    std::vector<int64_t> ne;
    uint64_t nbytes;
    uint64_t offset;
    Fill fill;
  };
  std::vector<KV> kvs_;
  std::vector<Tensor> tensors_;
  uint64_t data_size_ = 0;
  uint64_t alignment_ = 32;
};

}  // namespace qwen35
