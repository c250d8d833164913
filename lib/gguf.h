// GGUF v3 reader with strict validation (spec qwen35-text.md §1).
//
// The file is memory-mapped (or read into one buffer) and every string,
// array and tensor is a view into that mapping: nothing is copied. Every
// count, length, offset and size is checked against the bytes that remain and
// against overflow before it is used, so a hostile file cannot make the
// reader allocate more than a small multiple of the file size, read out of
// bounds or loop for long.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "status.h"

namespace qwen35 {

enum GgufValueType : uint32_t {
  GGUF_UINT8 = 0,
  GGUF_INT8 = 1,
  GGUF_UINT16 = 2,
  GGUF_INT16 = 3,
  GGUF_UINT32 = 4,
  GGUF_INT32 = 5,
  GGUF_FLOAT32 = 6,
  GGUF_BOOL = 7,
  GGUF_STRING = 8,
  GGUF_ARRAY = 9,
  GGUF_UINT64 = 10,
  GGUF_INT64 = 11,
  GGUF_FLOAT64 = 12,
  GGUF_TYPE_COUNT = 13,
};

const char* gguf_type_name(uint32_t t);

struct GgufKV {
  std::string_view key;
  uint32_t type = 0;        // GgufValueType
  uint64_t file_offset = 0; // where the record starts (for messages)
  // Scalars: integer types are widened into i (signed) / u (unsigned),
  // floats into f, bool into u.
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string_view str;     // STRING
  // ARRAY
  uint32_t arr_type = 0;
  uint64_t arr_count = 0;
  const uint8_t* arr_data = nullptr;   // first element (fixed-size element types)
  std::vector<std::string_view> arr_strings;  // STRING arrays, parsed once

  bool is_integer() const;
  bool is_float() const { return type == GGUF_FLOAT32 || type == GGUF_FLOAT64; }
};

struct GgufTensor {
  std::string_view name;
  uint32_t type = 0;      // ggml type id
  uint32_t n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};
  uint64_t offset = 0;    // relative to the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;
  uint64_t info_offset = 0;  // where the tensor-info record starts in the file

  int64_t nelements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

class GgufFile {
 public:
  // Limits that keep hostile files cheap. Real files are far below them.
  static constexpr uint64_t kMaxStringLen = 64ull << 20;  // one string
  static constexpr uint64_t kMaxTensors = 1u << 20;
  static constexpr uint64_t kMaxKV = 1u << 20;
  static constexpr uint64_t kMaxArrayElems = 1ull << 32;
  static constexpr size_t kMaxNameLen = 64;  // tensor names must be shorter (llama.cpp's rule)

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  // Open and validate a file. use_mmap=false reads it into one allocation.
  static Status Open(const std::string& path, bool use_mmap, std::unique_ptr<GgufFile>* out);
  // Validate a GGUF image in memory. The memory must outlive the object
  // unless copy is set.
  static Status FromMemory(const void* data, size_t size, bool copy, std::unique_ptr<GgufFile>* out);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t size() const { return size_; }
  const uint8_t* base() const { return base_; }
  bool mmapped() const { return mmapped_; }

  const std::vector<GgufKV>& kvs() const { return kvs_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufKV* find_kv(std::string_view key) const;
  const GgufTensor* find_tensor(std::string_view name) const;

  // Typed getters. `found` false (and OK status) when the key is absent;
  // a present key of the wrong kind is an error that names the key.
  Status get_int(std::string_view key, int64_t* v, bool* found) const;
  Status get_float(std::string_view key, double* v, bool* found) const;
  Status get_bool(std::string_view key, bool* v, bool* found) const;
  Status get_string(std::string_view key, std::string_view* v, bool* found) const;
  // Integer array (any integer element type) converted to int64.
  Status get_int_array(std::string_view key, std::vector<int64_t>* v, bool* found) const;
  // String array; returns a pointer to the parsed views.
  Status get_string_array(std::string_view key, const std::vector<std::string_view>** v, bool* found) const;

  // "262144", "1e-06", "true", the string, or "[array of N TYPE]".
  std::string value_to_string(const GgufKV& kv) const;

 private:
  GgufFile() = default;
  Status Parse();

  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  bool mmapped_ = false;
  std::unique_ptr<uint8_t[]> owned_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<GgufKV> kvs_;
  std::vector<GgufTensor> tensors_;
  std::unordered_map<std::string_view, size_t> kv_index_;
  std::unordered_map<std::string_view, size_t> tensor_index_;
};

}  // namespace qwen35
