#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "ggml_types.h"

namespace qwen35 {

namespace {

const char* const kTypeNames[GGUF_TYPE_COUNT] = {
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
    "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};

// Fixed byte size of a scalar element type, 0 for STRING/ARRAY/unknown.
size_t scalar_size(uint32_t t) {
  switch (t) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
    default: return 0;
  }
}

// Bounds-checked little-endian cursor over the file image.
class Reader {
 public:
  Reader(const uint8_t* p, uint64_t n) : p_(p), n_(n) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return n_ - pos_; }

  bool read(void* dst, uint64_t k) {
    if (k > remaining()) return false;
    std::memcpy(dst, p_ + pos_, k);
    pos_ += k;
    return true;
  }
  bool skip(uint64_t k) {
    if (k > remaining()) return false;
    pos_ += k;
    return true;
  }
  template <typename T>
  bool get(T* v) { return read(v, sizeof(T)); }
  const uint8_t* here() const { return p_ + pos_; }

 private:
  const uint8_t* p_;
  uint64_t n_;
  uint64_t pos_ = 0;
};

Status Truncated(const char* what, uint64_t off) {
  return Error(QWEN35_ERR_FORMAT, "GGUF truncated: {} at byte offset {} runs past the end of the file", what, off);
}

Status ReadString(Reader& r, const char* what, std::string_view* out) {
  uint64_t at = r.pos();
  uint64_t len;
  if (!r.get(&len)) return Truncated(what, at);
  if (len > GgufFile::kMaxStringLen)
    return Error(QWEN35_ERR_FORMAT, "GGUF: {} at byte offset {} has length {} (limit {})", what, at, len,
                 GgufFile::kMaxStringLen);
  if (len > r.remaining()) return Truncated(what, at);
  *out = std::string_view(reinterpret_cast<const char*>(r.here()), len);
  r.skip(len);
  return Status::Ok();
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

}  // namespace

const char* gguf_type_name(uint32_t t) { return t < GGUF_TYPE_COUNT ? kTypeNames[t] : "INVALID"; }

bool GgufKV::is_integer() const {
  switch (type) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_UINT16: case GGUF_INT16:
    case GGUF_UINT32: case GGUF_INT32: case GGUF_UINT64: case GGUF_INT64: return true;
    default: return false;
  }
}

GgufFile::~GgufFile() {
  if (mmapped_ && base_) munmap(const_cast<uint8_t*>(base_), size_);
}

Status GgufFile::Open(const std::string& path, bool use_mmap, std::unique_ptr<GgufFile>* out) {
  out->reset();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error(QWEN35_ERR_IO, "cannot open '{}': {}", path, std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return Error(QWEN35_ERR_IO, "cannot stat '{}': {}", path, std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error(QWEN35_ERR_IO, "'{}' is not a regular file", path);
  }
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->size_ = uint64_t(st.st_size);
  if (f->size_ == 0) {
    ::close(fd);
    return Error(QWEN35_ERR_FORMAT, "'{}' is empty (not a GGUF file)", path);
  }
  if (use_mmap) {
    void* p = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      return Error(QWEN35_ERR_IO, "cannot mmap '{}': {}", path, std::strerror(e));
    }
    f->base_ = static_cast<const uint8_t*>(p);
    f->mmapped_ = true;
  } else {
    f->owned_.reset(new (std::nothrow) uint8_t[f->size_]);
    if (!f->owned_) {
      ::close(fd);
      return Error(QWEN35_ERR_OUT_OF_MEMORY, "cannot allocate {} bytes to read '{}'", f->size_, path);
    }
    uint64_t done = 0;
    while (done < f->size_) {
      ssize_t k = ::pread(fd, f->owned_.get() + done, std::min<uint64_t>(f->size_ - done, 1u << 30), off_t(done));
      if (k <= 0) {
        int e = errno;
        ::close(fd);
        return Error(QWEN35_ERR_IO, "read error on '{}' at byte {}: {}", path, done,
                     k == 0 ? "unexpected end of file" : std::strerror(e));
      }
      done += uint64_t(k);
    }
    f->base_ = f->owned_.get();
  }
  ::close(fd);
  Status st2 = f->Parse();
  if (!st2.ok()) return st2.prefix("'" + path + "': ");
  *out = std::move(f);
  return Status::Ok();
}

Status GgufFile::FromMemory(const void* data, size_t size, bool copy, std::unique_ptr<GgufFile>* out) {
  out->reset();
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->size_ = size;
  if (copy) {
    f->owned_.reset(new (std::nothrow) uint8_t[size ? size : 1]);
    if (!f->owned_) return Error(QWEN35_ERR_OUT_OF_MEMORY, "cannot allocate {} bytes", size);
    if (size) std::memcpy(f->owned_.get(), data, size);
    f->base_ = f->owned_.get();
  } else {
    f->base_ = static_cast<const uint8_t*>(data);
  }
  QWEN35_TRY(f->Parse());
  *out = std::move(f);
  return Status::Ok();
}

Status GgufFile::Parse() {
  Reader r(base_, size_);
  uint32_t magic = 0;
  if (!r.get(&magic)) return Truncated("magic", 0);
  if (magic != 0x46554747u) return Error(QWEN35_ERR_FORMAT, "not a GGUF file (bad magic at byte offset 0)");
  if (!r.get(&version_)) return Truncated("version", 4);
  if (version_ == 0x03000000u || version_ == 0x02000000u)
    return Error(QWEN35_ERR_UNSUPPORTED, "big-endian GGUF files are not supported");
  if (version_ != 3 && version_ != 2)
    return Error(QWEN35_ERR_UNSUPPORTED, "GGUF version {} is not supported (versions 2 and 3 are read)", version_);

  int64_t n_tensors = 0, n_kv = 0;
  if (!r.get(&n_tensors)) return Truncated("tensor count", 8);
  if (!r.get(&n_kv)) return Truncated("metadata count", 16);
  // Each KV record needs at least 8 (key length) + 4 (type) + 1 bytes, each
  // tensor-info record at least 8 + 4 + 8 + 4 + 8 bytes: bounding counts by
  // the bytes left keeps allocations proportional to the file size.
  if (n_kv < 0 || uint64_t(n_kv) > kMaxKV || uint64_t(n_kv) > r.remaining() / 13)
    return Error(QWEN35_ERR_FORMAT, "GGUF: metadata count {} at byte offset 16 is invalid for a file of {} bytes",
                 n_kv, size_);
  if (n_tensors < 0 || uint64_t(n_tensors) > kMaxTensors || uint64_t(n_tensors) > r.remaining() / 32)
    return Error(QWEN35_ERR_FORMAT, "GGUF: tensor count {} at byte offset 8 is invalid for a file of {} bytes",
                 n_tensors, size_);

  kvs_.reserve(size_t(n_kv));
  for (int64_t k = 0; k < n_kv; ++k) {
    GgufKV kv;
    kv.file_offset = r.pos();
    QWEN35_TRY(ReadString(r, "metadata key", &kv.key));
    if (kv.key.empty())
      return Error(QWEN35_ERR_FORMAT, "GGUF: empty metadata key at byte offset {}", kv.file_offset);
    uint64_t at = r.pos();
    if (!r.get(&kv.type)) return Truncated("metadata value type", at);
    if (kv.type >= GGUF_TYPE_COUNT)
      return Error(QWEN35_ERR_FORMAT, "GGUF: key '{}' has invalid value type {} at byte offset {}", kv.key, kv.type, at);
    at = r.pos();
    switch (kv.type) {
      case GGUF_UINT8: { uint8_t v; if (!r.get(&v)) return Truncated("value", at); kv.u = v; kv.i = v; break; }
      case GGUF_INT8: { int8_t v; if (!r.get(&v)) return Truncated("value", at); kv.i = v; kv.u = uint64_t(v); break; }
      case GGUF_UINT16: { uint16_t v; if (!r.get(&v)) return Truncated("value", at); kv.u = v; kv.i = v; break; }
      case GGUF_INT16: { int16_t v; if (!r.get(&v)) return Truncated("value", at); kv.i = v; kv.u = uint64_t(v); break; }
      case GGUF_UINT32: { uint32_t v; if (!r.get(&v)) return Truncated("value", at); kv.u = v; kv.i = v; break; }
      case GGUF_INT32: { int32_t v; if (!r.get(&v)) return Truncated("value", at); kv.i = v; kv.u = uint64_t(v); break; }
      case GGUF_UINT64: { uint64_t v; if (!r.get(&v)) return Truncated("value", at); kv.u = v; kv.i = int64_t(v); break; }
      case GGUF_INT64: { int64_t v; if (!r.get(&v)) return Truncated("value", at); kv.i = v; kv.u = uint64_t(v); break; }
      case GGUF_FLOAT32: { float v; if (!r.get(&v)) return Truncated("value", at); kv.f = v; break; }
      case GGUF_FLOAT64: { double v; if (!r.get(&v)) return Truncated("value", at); kv.f = v; break; }
      case GGUF_BOOL: {
        uint8_t v;
        if (!r.get(&v)) return Truncated("value", at);
        if (v > 1) return Error(QWEN35_ERR_FORMAT, "GGUF: key '{}' has bool value {} at byte offset {}", kv.key, v, at);
        kv.u = v;
        break;
      }
      case GGUF_STRING: QWEN35_TRY(ReadString(r, "string value", &kv.str)); break;
      case GGUF_ARRAY: {
        if (!r.get(&kv.arr_type)) return Truncated("array element type", at);
        if (kv.arr_type >= GGUF_TYPE_COUNT || kv.arr_type == GGUF_ARRAY)
          return Error(QWEN35_ERR_FORMAT, "GGUF: key '{}' is an array of invalid element type {} at byte offset {}",
                       kv.key, kv.arr_type, at);
        if (!r.get(&kv.arr_count)) return Truncated("array count", at + 4);
        if (kv.arr_count > kMaxArrayElems)
          return Error(QWEN35_ERR_FORMAT, "GGUF: key '{}' array count {} exceeds the limit", kv.key, kv.arr_count);
        if (kv.arr_type == GGUF_STRING) {
          // Every string needs at least its 8-byte length.
          if (kv.arr_count > r.remaining() / 8) return Truncated("string array", at);
          kv.arr_strings.reserve(kv.arr_count);
          for (uint64_t j = 0; j < kv.arr_count; ++j) {
            std::string_view s;
            QWEN35_TRY(ReadString(r, "array string", &s));
            kv.arr_strings.push_back(s);
          }
        } else {
          uint64_t bytes;
          if (!checked_mul(kv.arr_count, scalar_size(kv.arr_type), &bytes) || bytes > r.remaining())
            return Truncated("array data", at);
          kv.arr_data = r.here();
          if (kv.arr_type == GGUF_BOOL) {
            for (uint64_t j = 0; j < kv.arr_count; ++j)
              if (kv.arr_data[j] > 1)
                return Error(QWEN35_ERR_FORMAT, "GGUF: key '{}' bool array element {} is {}", kv.key, j, kv.arr_data[j]);
          }
          r.skip(bytes);
        }
        break;
      }
      default: break;
    }
    if (kv_index_.count(kv.key))
      return Error(QWEN35_ERR_FORMAT, "GGUF: duplicate metadata key '{}' at byte offset {}", kv.key, kv.file_offset);
    kv_index_.emplace(kv.key, kvs_.size());
    kvs_.push_back(std::move(kv));
  }

  if (const GgufKV* a = find_kv("general.alignment")) {
    if (!a->is_integer() || a->i <= 0 || a->u > (1u << 30) || (a->u & (a->u - 1)) != 0)
      return Error(QWEN35_ERR_FORMAT, "GGUF: general.alignment must be a power of two, got {}", value_to_string(*a));
    alignment_ = a->u;
  }

  tensors_.reserve(size_t(n_tensors));
  for (int64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.info_offset = r.pos();
    QWEN35_TRY(ReadString(r, "tensor name", &t.name));
    if (t.name.empty() || t.name.size() >= kMaxNameLen)
      return Error(QWEN35_ERR_FORMAT, "GGUF: tensor #{} at byte offset {} has a name of invalid length {}", k,
                   t.info_offset, t.name.size());
    uint64_t at = r.pos();
    if (!r.get(&t.n_dims)) return Truncated("tensor dimension count", at);
    if (t.n_dims < 1 || t.n_dims > 4)
      return Error(QWEN35_ERR_FORMAT, "GGUF: tensor '{}' has {} dimensions (must be 1-4)", t.name, t.n_dims);
    for (uint32_t d = 0; d < t.n_dims; ++d) {
      at = r.pos();
      if (!r.get(&t.ne[d])) return Truncated("tensor shape", at);
      if (t.ne[d] < 0)
        return Error(QWEN35_ERR_FORMAT, "GGUF: tensor '{}' dimension {} is negative ({})", t.name, d, t.ne[d]);
    }
    at = r.pos();
    if (!r.get(&t.type)) return Truncated("tensor type", at);
    const TypeInfo* ti = type_info(t.type);
    if (!ti) return Error(QWEN35_ERR_FORMAT, "GGUF: tensor '{}' has unknown type id {}", t.name, t.type);
    at = r.pos();
    if (!r.get(&t.offset)) return Truncated("tensor offset", at);
    if (t.ne[0] % ti->block != 0)
      return Error(QWEN35_ERR_FORMAT, "GGUF: tensor '{}' row length {} is not a multiple of the {} block size {}",
                   t.name, t.ne[0], ti->name, ti->block);
    uint64_t nb = uint64_t(t.ne[0] / ti->block) * uint64_t(ti->block_bytes);
    for (int d = 1; d < 4; ++d)
      if (!checked_mul(nb, uint64_t(t.ne[d]), &nb))
        return Error(QWEN35_ERR_FORMAT, "GGUF: tensor '{}' byte size overflows", t.name);
    t.nbytes = nb;
    if (t.offset % alignment_ != 0)
      return Error(QWEN35_ERR_FORMAT, "GGUF: tensor '{}' data offset {} is not a multiple of the alignment {}", t.name,
                   t.offset, alignment_);
    if (tensor_index_.count(t.name))
      return Error(QWEN35_ERR_FORMAT, "GGUF: duplicate tensor name '{}' at byte offset {}", t.name, t.info_offset);
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(t);
  }

  uint64_t end_info = r.pos();
  data_offset_ = (end_info + alignment_ - 1) / alignment_ * alignment_;
  if (n_tensors > 0 && data_offset_ > size_)
    return Error(QWEN35_ERR_FORMAT, "GGUF truncated: data section would start at byte {} but the file has {} bytes",
                 data_offset_, size_);
  for (GgufTensor& t : tensors_) {
    uint64_t start, end;
    if (__builtin_add_overflow(data_offset_, t.offset, &start) || __builtin_add_overflow(start, t.nbytes, &end) ||
        end > size_)
      return Error(QWEN35_ERR_FORMAT,
                   "GGUF truncated: tensor '{}' data [{}, +{}) lies outside the file ({} bytes)", t.name,
                   data_offset_ + t.offset, t.nbytes, size_);
    t.data = base_ + start;
  }
  // Tensor data must not overlap (a corrupted offset could alias two weights).
  std::vector<const GgufTensor*> order;
  order.reserve(tensors_.size());
  for (const GgufTensor& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < order.size(); ++k)
    if (order[k - 1]->offset + order[k - 1]->nbytes > order[k]->offset && order[k - 1]->nbytes > 0)
      return Error(QWEN35_ERR_FORMAT, "GGUF: tensors '{}' and '{}' overlap", order[k - 1]->name, order[k]->name);
  return Status::Ok();
}

const GgufKV* GgufFile::find_kv(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kvs_[it->second];
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Status GgufFile::get_int(std::string_view key, int64_t* v, bool* found) const {
  const GgufKV* kv = find_kv(key);
  *found = kv != nullptr;
  if (!kv) return Status::Ok();
  if (!kv->is_integer())
    return Error(QWEN35_ERR_FORMAT, "metadata key '{}' should be an integer but is {}", key, gguf_type_name(kv->type));
  if (kv->type == GGUF_UINT64 && kv->u > uint64_t(INT64_MAX))
    return Error(QWEN35_ERR_FORMAT, "metadata key '{}' value {} is out of range", key, kv->u);
  *v = kv->i;
  return Status::Ok();
}

Status GgufFile::get_float(std::string_view key, double* v, bool* found) const {
  const GgufKV* kv = find_kv(key);
  *found = kv != nullptr;
  if (!kv) return Status::Ok();
  if (kv->is_float()) *v = kv->f;
  else if (kv->is_integer()) *v = double(kv->i);
  else return Error(QWEN35_ERR_FORMAT, "metadata key '{}' should be a number but is {}", key, gguf_type_name(kv->type));
  return Status::Ok();
}

Status GgufFile::get_bool(std::string_view key, bool* v, bool* found) const {
  const GgufKV* kv = find_kv(key);
  *found = kv != nullptr;
  if (!kv) return Status::Ok();
  if (kv->type != GGUF_BOOL)
    return Error(QWEN35_ERR_FORMAT, "metadata key '{}' should be a bool but is {}", key, gguf_type_name(kv->type));
  *v = kv->u != 0;
  return Status::Ok();
}

Status GgufFile::get_string(std::string_view key, std::string_view* v, bool* found) const {
  const GgufKV* kv = find_kv(key);
  *found = kv != nullptr;
  if (!kv) return Status::Ok();
  if (kv->type != GGUF_STRING)
    return Error(QWEN35_ERR_FORMAT, "metadata key '{}' should be a string but is {}", key, gguf_type_name(kv->type));
  *v = kv->str;
  return Status::Ok();
}

Status GgufFile::get_int_array(std::string_view key, std::vector<int64_t>* v, bool* found) const {
  const GgufKV* kv = find_kv(key);
  *found = kv != nullptr;
  if (!kv) return Status::Ok();
  if (kv->type != GGUF_ARRAY)
    return Error(QWEN35_ERR_FORMAT, "metadata key '{}' should be an array but is {}", key, gguf_type_name(kv->type));
  v->clear();
  v->reserve(kv->arr_count);
  const uint8_t* p = kv->arr_data;
  for (uint64_t j = 0; j < kv->arr_count; ++j) {
    int64_t x;
    switch (kv->arr_type) {
      case GGUF_UINT8: x = p[j]; break;
      case GGUF_INT8: x = int8_t(p[j]); break;
      case GGUF_UINT16: { uint16_t t; std::memcpy(&t, p + 2 * j, 2); x = t; break; }
      case GGUF_INT16: { int16_t t; std::memcpy(&t, p + 2 * j, 2); x = t; break; }
      case GGUF_UINT32: { uint32_t t; std::memcpy(&t, p + 4 * j, 4); x = t; break; }
      case GGUF_INT32: { int32_t t; std::memcpy(&t, p + 4 * j, 4); x = t; break; }
      case GGUF_UINT64: case GGUF_INT64: { std::memcpy(&x, p + 8 * j, 8); break; }
      default:
        return Error(QWEN35_ERR_FORMAT, "metadata key '{}' should be an integer array but holds {}", key,
                     gguf_type_name(kv->arr_type));
    }
    v->push_back(x);
  }
  return Status::Ok();
}

Status GgufFile::get_string_array(std::string_view key, const std::vector<std::string_view>** v, bool* found) const {
  const GgufKV* kv = find_kv(key);
  *found = kv != nullptr;
  if (!kv) return Status::Ok();
  if (kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING)
    return Error(QWEN35_ERR_FORMAT, "metadata key '{}' should be a string array", key);
  *v = &kv->arr_strings;
  return Status::Ok();
}

std::string GgufFile::value_to_string(const GgufKV& kv) const {
  switch (kv.type) {
    case GGUF_UINT8: case GGUF_UINT16: case GGUF_UINT32: case GGUF_UINT64: return std::to_string(kv.u);
    case GGUF_INT8: case GGUF_INT16: case GGUF_INT32: case GGUF_INT64: return std::to_string(kv.i);
    case GGUF_FLOAT32: return fmt::format("{}", float(kv.f));
    case GGUF_FLOAT64: return fmt::format("{}", kv.f);
    case GGUF_BOOL: return kv.u ? "true" : "false";
    case GGUF_STRING: return std::string(kv.str);
    case GGUF_ARRAY: return fmt::format("[array of {} {}]", kv.arr_count, gguf_type_name(kv.arr_type));
    default: return "?";
  }
}

}  // namespace qwen35
