#include "gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "ggml_types.h"

namespace qwen35 {

namespace {
// (resize + memcpy rather than insert of the value's bytes: GCC 12 warned
// that the insert into an empty vector overflowed, a false positive.)
template <typename T>
void put(std::vector<uint8_t>& b, const T& v) {
  const size_t at = b.size();
  b.resize(at + sizeof(T));
  std::memcpy(b.data() + at, &v, sizeof(T));
}
void put_str(std::vector<uint8_t>& b, const std::string& s) {
  put(b, uint64_t(s.size()));
  b.insert(b.end(), s.begin(), s.end());
}
// Bytes of a record's type + value as GGUF v3 encodes them (arrays of
// arrays are not produced by any writer we copy from).
uint64_t encoded_value_size(const GgufKV& kv) {
  static const uint8_t kScalar[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  if (kv.type == GGUF_STRING) return 4 + 8 + kv.str.size();
  if (kv.type != GGUF_ARRAY) return 4 + (kv.type < GGUF_TYPE_COUNT ? kScalar[kv.type] : 0);
  uint64_t n = 4 + 4 + 8;
  if (kv.arr_type == GGUF_STRING) {
    for (std::string_view s : kv.arr_strings) n += 8 + s.size();
    return n;
  }
  return n + kv.arr_count * (kv.arr_type < GGUF_TYPE_COUNT ? kScalar[kv.arr_type] : 0);
}
}  // namespace

void GgufWriter::set_u32(const std::string& key, uint32_t v) {
  KV kv{key, {}};
  put(kv.encoded, uint32_t(GGUF_UINT32));
  put(kv.encoded, v);
  kvs_.push_back(std::move(kv));
}
void GgufWriter::set_i32(const std::string& key, int32_t v) {
  KV kv{key, {}};
  put(kv.encoded, uint32_t(GGUF_INT32));
  put(kv.encoded, v);
  kvs_.push_back(std::move(kv));
}
void GgufWriter::set_f32(const std::string& key, float v) {
  KV kv{key, {}};
  put(kv.encoded, uint32_t(GGUF_FLOAT32));
  put(kv.encoded, v);
  kvs_.push_back(std::move(kv));
}
void GgufWriter::set_bool(const std::string& key, bool v) {
  KV kv{key, {}};
  put(kv.encoded, uint32_t(GGUF_BOOL));
  put(kv.encoded, uint8_t(v));
  kvs_.push_back(std::move(kv));
}
void GgufWriter::set_str(const std::string& key, const std::string& v) {
  KV kv{key, {}};
  put(kv.encoded, uint32_t(GGUF_STRING));
  put_str(kv.encoded, v);
  kvs_.push_back(std::move(kv));
}
void GgufWriter::set_arr_i32(const std::string& key, const std::vector<int32_t>& v) {
  KV kv{key, {}};
  put(kv.encoded, uint32_t(GGUF_ARRAY));
  put(kv.encoded, uint32_t(GGUF_INT32));
  put(kv.encoded, uint64_t(v.size()));
  for (int32_t x : v) put(kv.encoded, x);
  kvs_.push_back(std::move(kv));
}
void GgufWriter::set_arr_str(const std::string& key, const std::vector<std::string>& v) {
  KV kv{key, {}};
  put(kv.encoded, uint32_t(GGUF_ARRAY));
  put(kv.encoded, uint32_t(GGUF_STRING));
  put(kv.encoded, uint64_t(v.size()));
  for (const std::string& s : v) put_str(kv.encoded, s);
  kvs_.push_back(std::move(kv));
}

void GgufWriter::set_arr_f32(const std::string& key, const std::vector<float>& v) {
  KV kv{key, {}};
  put(kv.encoded, uint32_t(GGUF_ARRAY));
  put(kv.encoded, uint32_t(GGUF_FLOAT32));
  put(kv.encoded, uint64_t(v.size()));
  for (float x : v) put(kv.encoded, x);
  kvs_.push_back(std::move(kv));
}
void GgufWriter::set_arr_bool(const std::string& key, const std::vector<bool>& v) {
  KV kv{key, {}};
  put(kv.encoded, uint32_t(GGUF_ARRAY));
  put(kv.encoded, uint32_t(GGUF_BOOL));
  put(kv.encoded, uint64_t(v.size()));
  for (bool x : v) put(kv.encoded, uint8_t(x));
  kvs_.push_back(std::move(kv));
}

void GgufWriter::copy_kv(const GgufFile& f, const GgufKV& kv) {
  // The record's bytes run from the key's length prefix to the start of the
  // next record; re-derive the value bytes from the key position.
  const uint8_t* key_start = reinterpret_cast<const uint8_t*>(kv.key.data());
  const uint8_t* value_start = key_start + kv.key.size();
  // Find the end: the next KV's file_offset, or the first tensor info.
  uint64_t end = f.data_offset();
  for (const GgufKV& o : f.kvs())
    if (o.file_offset > kv.file_offset && o.file_offset < end) end = o.file_offset;
  if (!f.tensors().empty()) {
    uint64_t t0 = f.tensors().front().info_offset;
    if (t0 > kv.file_offset && t0 < end) end = t0;
  }
  const uint8_t* value_end = f.base() + end;
  // The last record of a file without tensors is followed by the alignment
  // padding of the data section: size it from its parsed value instead.
  if (end == f.data_offset()) value_end = value_start + encoded_value_size(kv);
  KV out{std::string(kv.key), {}};
  out.encoded.assign(value_start, value_end);
  kvs_.push_back(std::move(out));
}

void GgufWriter::add_tensor(const std::string& name, uint32_t type, std::vector<int64_t> ne, Fill fill) {
  const TypeInfo* ti = type_info(type);
  uint64_t nb = row_bytes(*ti, ne[0]);
  for (size_t i = 1; i < ne.size(); ++i) nb *= uint64_t(ne[i]);
  Tensor t{name, type, std::move(ne), nb, data_size_, std::move(fill)};
  data_size_ += (nb + alignment_ - 1) / alignment_ * alignment_;
  tensors_.push_back(std::move(t));
}

std::vector<uint8_t> GgufWriter::header() const {
  std::vector<uint8_t> b;
  put(b, uint32_t(0x46554747u));
  put(b, uint32_t(3));
  put(b, uint64_t(tensors_.size()));
  put(b, uint64_t(kvs_.size()));
  for (const KV& kv : kvs_) {
    put_str(b, kv.key);
    b.insert(b.end(), kv.encoded.begin(), kv.encoded.end());
  }
  for (const Tensor& t : tensors_) {
    put_str(b, t.name);
    put(b, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put(b, d);
    put(b, t.type);
    put(b, t.offset);
  }
  while (b.size() % alignment_) b.push_back(0);
  return b;
}

uint64_t GgufWriter::data_bytes() const { return data_size_; }

Status GgufWriter::write(const std::string& path) const {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return Error(QWEN35_ERR_IO, "cannot create '{}': {}", path, std::strerror(errno));
  std::unique_ptr<FILE, int (*)(FILE*)> guard(f, std::fclose);
  std::vector<uint8_t> h = header();
  if (std::fwrite(h.data(), 1, h.size(), f) != h.size()) return Error(QWEN35_ERR_IO, "write error on '{}'", path);
  std::vector<uint8_t> buf;
  for (const Tensor& t : tensors_) {
    const uint64_t padded = (t.nbytes + alignment_ - 1) / alignment_ * alignment_;
    buf.assign(padded, 0);
    if (t.fill) t.fill(buf.data(), t.nbytes);
    if (std::fwrite(buf.data(), 1, padded, f) != padded) return Error(QWEN35_ERR_IO, "write error on '{}'", path);
  }
  if (std::fclose(guard.release()) != 0) return Error(QWEN35_ERR_IO, "write error on '{}'", path);
  return Status::Ok();
}

}  // namespace qwen35
