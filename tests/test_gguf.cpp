// GGUF reader and model loader against valid, truncated, corrupted and
// hostile files. Every broken input must give an error (never a crash, hang
// or huge allocation); CI also runs this under ASan/UBSan.
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ggml_types.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "model.h"
#include "test_util.h"

using namespace qwen35;
using namespace qwen35::test;

namespace {

Status load_image(const std::vector<uint8_t>& img) {
  std::unique_ptr<GgufFile> f;
  QWEN35_TRY(GgufFile::FromMemory(img.data(), img.size(), false, &f));
  std::unique_ptr<Model> m;
  return LoadModelFromGguf(std::move(f), LoadOptions(), Logger(), &m);
}

const std::vector<uint8_t>& base_image() {
  static std::vector<uint8_t> img = read_file(fixture("models/tiny-a-nvfp4.gguf"));
  return img;
}

template <typename T>
void poke(std::vector<uint8_t>& b, uint64_t off, T v) {
  REQUIRE(off + sizeof(T) <= b.size());
  std::memcpy(b.data() + off, &v, sizeof(T));
}

// Offsets of the fields of one tensor-info record.
struct TensorFields {
  uint64_t n_dims, ne0, type, offset;
};
TensorFields fields(const GgufTensor& t) {
  TensorFields f;
  f.n_dims = t.info_offset + 8 + t.name.size();
  f.ne0 = f.n_dims + 4;
  f.type = f.ne0 + 8 * t.n_dims;
  f.offset = f.type + 4;
  return f;
}

}  // namespace

TEST_CASE("fixture models parse and load") {
  for (const char* name : {"tiny-a-f32", "tiny-a-nvfp4", "tiny-m-nvfp4"}) {
    CAPTURE(name);
    std::unique_ptr<GgufFile> f;
    Status st = GgufFile::Open(fixture(std::string("models/") + name + ".gguf"), true, &f);
    REQUIRE_MESSAGE(st.ok(), st.message());
    CHECK(f->version() == 3);
    CHECK(f->alignment() == 32);
    std::unique_ptr<Model> m;
    st = LoadModel(fixture(std::string("models/") + name + ".gguf"), LoadOptions(), Logger(), &m);
    REQUIRE_MESSAGE(st.ok(), st.message());
    CHECK(m->hp.n_embd == 256);
    CHECK(m->hp.n_layer == 4);
    CHECK(m->hp.n_vocab == 4122);
    CHECK(m->hp.head_dim == 256);
    CHECK(m->hp.n_rot == 64);
    CHECK(m->hp.ssm_heads_v == 4);
    CHECK(m->hp.ssm_heads_k == 2);
    CHECK(m->tied_output);
    CHECK((m->mtp != nullptr) == (std::string(name) == "tiny-m-nvfp4"));
    CHECK(m->layers[3].is_attn);
    CHECK(!m->layers[2].is_attn);
    CHECK(m->host_bytes == 0);  // every weight used in place
  }
}

TEST_CASE("the reader does not copy tensor data") {
  std::unique_ptr<GgufFile> f;
  REQUIRE(GgufFile::Open(fixture("models/tiny-a-nvfp4.gguf"), true, &f).ok());
  CHECK(f->mmapped());
  for (const GgufTensor& t : f->tensors()) {
    CHECK(t.data >= f->base());
    CHECK(t.data + t.nbytes <= f->base() + f->size());
    CHECK(uint64_t(t.data - f->base()) % 32 == 0);
  }
}

TEST_CASE("missing, empty and non-GGUF files give clear errors") {
  std::unique_ptr<GgufFile> f;
  Status st = GgufFile::Open("/nonexistent/model.gguf", true, &f);
  CHECK(st.code() == QWEN35_ERR_IO);
  CHECK(st.message().find("/nonexistent/model.gguf") != std::string::npos);
  std::vector<uint8_t> junk = {'G', 'G', 'U', 'X', 3, 0, 0, 0};
  st = GgufFile::FromMemory(junk.data(), junk.size(), false, &f);
  CHECK(st.code() == QWEN35_ERR_FORMAT);
  CHECK(st.message().find("magic") != std::string::npos);
  st = GgufFile::FromMemory(junk.data(), 0, false, &f);
  CHECK(st.code() == QWEN35_ERR_FORMAT);
  std::vector<uint8_t> be = base_image();
  poke<uint32_t>(be, 4, 0x03000000u);
  CHECK(load_image(be).code() == QWEN35_ERR_UNSUPPORTED);
  std::vector<uint8_t> v1 = base_image();
  poke<uint32_t>(v1, 4, 1);
  CHECK(load_image(v1).code() == QWEN35_ERR_UNSUPPORTED);
}

TEST_CASE("truncation at every section fails cleanly") {
  const std::vector<uint8_t>& img = base_image();
  std::unique_ptr<GgufFile> f;
  REQUIRE(GgufFile::FromMemory(img.data(), img.size(), false, &f).ok());
  std::vector<uint64_t> cuts;
  for (uint64_t i = 0; i < 256; ++i) cuts.push_back(i);  // the fixed header, first keys
  for (const GgufKV& kv : f->kvs())
    for (int64_t d : {-1, 0, 1, 9, 13}) cuts.push_back(uint64_t(int64_t(kv.file_offset) + d));
  for (const GgufTensor& t : f->tensors()) {
    for (int64_t d : {0, 3, 8, 12, 20}) cuts.push_back(t.info_offset + uint64_t(d));
    cuts.push_back(f->data_offset() + t.offset + t.nbytes - 1);  // inside a tensor's data
  }
  cuts.push_back(f->data_offset());
  cuts.push_back(img.size() - 1);
  int n = 0;
  for (uint64_t c : cuts) {
    if (c >= img.size()) continue;
    std::vector<uint8_t> cut(img.begin(), img.begin() + int64_t(c));
    Status st = load_image(cut);
    CHECK_MESSAGE(!st.ok(), "truncated at " << c);
    CHECK(st.message().size() > 0);
    ++n;
  }
  CHECK(n > 300);
}

TEST_CASE("corrupted counts, types, dims, offsets and alignment are rejected") {
  const std::vector<uint8_t>& img = base_image();
  std::unique_ptr<GgufFile> f;
  REQUIRE(GgufFile::FromMemory(img.data(), img.size(), false, &f).ok());
  auto expect_error = [&](std::vector<uint8_t> b, const char* what, const char* needle = nullptr) {
    Status st = load_image(b);
    CHECK_MESSAGE(!st.ok(), what);
    if (needle) CHECK_MESSAGE(st.message().find(needle) != std::string::npos, what << ": " << st.message());
  };
  {  // counts
    auto b = img; poke<int64_t>(b, 8, int64_t(1) << 40); expect_error(b, "huge tensor count", "tensor count");
    b = img; poke<int64_t>(b, 16, int64_t(1) << 40); expect_error(b, "huge kv count", "metadata count");
    b = img; poke<int64_t>(b, 8, -1); expect_error(b, "negative tensor count");
    b = img; poke<int64_t>(b, 16, -5); expect_error(b, "negative kv count");
    b = img; poke<int64_t>(b, 8, int64_t(f->tensors().size()) + 1); expect_error(b, "one tensor too many");
    b = img; poke<int64_t>(b, 8, int64_t(f->tensors().size()) - 1); expect_error(b, "one tensor too few");
  }
  {  // key/value records
    const GgufKV& kv0 = f->kvs()[0];
    auto b = img; poke<uint64_t>(b, kv0.file_offset, uint64_t(1) << 62); expect_error(b, "huge key length", "length");
    b = img; poke<uint32_t>(b, kv0.file_offset + 8 + kv0.key.size(), 99); expect_error(b, "bad value type", "type");
    for (const GgufKV& kv : f->kvs()) {
      if (kv.type != GGUF_ARRAY) continue;
      const uint64_t at = kv.file_offset + 8 + kv.key.size() + 4;  // element type
      b = img; poke<uint32_t>(b, at, GGUF_ARRAY); expect_error(b, "nested array");
      b = img; poke<uint64_t>(b, at + 4, uint64_t(1) << 40); expect_error(b, "huge array count");
      b = img; poke<uint64_t>(b, at + 4, kv.arr_count * 2); expect_error(b, "array longer than the file");
    }
    // Duplicate key: rename key 1 to key 0 (same length keys only).
    for (size_t i = 1; i < f->kvs().size(); ++i)
      if (f->kvs()[i].key.size() == kv0.key.size()) {
        b = img;
        std::memcpy(b.data() + f->kvs()[i].file_offset + 8, kv0.key.data(), kv0.key.size());
        expect_error(b, "duplicate key", "duplicate");
        break;
      }
  }
  {  // tensor infos
    const GgufTensor& t = f->tensors()[1];
    const TensorFields tf = fields(t);
    auto b = img; poke<uint32_t>(b, tf.n_dims, 0); expect_error(b, "0 dims");
    b = img; poke<uint32_t>(b, tf.n_dims, 5); expect_error(b, "5 dims");
    b = img; poke<int64_t>(b, tf.ne0, -256); expect_error(b, "negative dim", "negative");
    b = img; poke<int64_t>(b, tf.ne0, int64_t(1) << 62); expect_error(b, "huge dim");
    b = img; poke<int64_t>(b, tf.ne0, t.ne[0] + 1); expect_error(b, "row not a block multiple");
    b = img; poke<uint32_t>(b, tf.type, 4); expect_error(b, "retired type id", "unknown type");
    b = img; poke<uint32_t>(b, tf.type, 1000); expect_error(b, "type id out of range", "unknown type");
    b = img; poke<uint64_t>(b, tf.offset, t.offset + 1); expect_error(b, "misaligned offset", "alignment");
    b = img; poke<uint64_t>(b, tf.offset, uint64_t(1) << 60); expect_error(b, "offset past the end", "outside");
    b = img; poke<uint64_t>(b, tf.offset, f->tensors()[0].offset); expect_error(b, "overlapping tensors", "overlap");
    b = img; poke<uint64_t>(b, t.info_offset, 200); expect_error(b, "name too long");
    // Same-size type swap that changes the byte size (NVFP4 -> F32 is larger).
    for (const GgufTensor& u : f->tensors())
      if (u.type == GGML_NVFP4) {
        b = img; poke<uint32_t>(b, fields(u).type, GGML_F32); expect_error(b, "type changed to a larger one");
        break;
      }
  }
}

TEST_CASE("model-level validation names the problem") {
  auto build = [](auto edit) {
    // Rebuild the fixture through the writer with one edit applied.
    std::unique_ptr<GgufFile> f;
    REQUIRE(GgufFile::Open(fixture("models/tiny-a-nvfp4.gguf"), true, &f).ok());
    GgufWriter w;
    for (const GgufKV& kv : f->kvs()) w.copy_kv(*f, kv);
    const GgufFile* src = f.get();
    std::vector<const GgufTensor*> ts;
    for (const GgufTensor& t : f->tensors()) ts.push_back(&t);
    edit(w, ts, *src);
    for (const GgufTensor* t : ts) {
      if (!t) continue;
      std::vector<int64_t> ne(t->ne, t->ne + t->n_dims);
      const uint8_t* data = t->data;
      const uint64_t nb = t->nbytes;
      w.add_tensor(std::string(t->name), t->type, ne, [data, nb](uint8_t* dst, uint64_t n) {
        std::memcpy(dst, data, std::min(n, nb));
      });
    }
    std::string path = tmp_path("edited.gguf");
    REQUIRE(w.write(path).ok());
    std::unique_ptr<Model> m;
    return LoadModel(path, LoadOptions(), Logger(), &m);
  };
  Status st = build([](GgufWriter&, std::vector<const GgufTensor*>&, const GgufFile&) {});
  REQUIRE_MESSAGE(st.ok(), st.message());
  st = build([](GgufWriter&, std::vector<const GgufTensor*>& ts, const GgufFile&) {
    for (auto& t : ts)
      if (t && t->name == "blk.1.ssm_out.weight") t = nullptr;
  });
  CHECK(st.message().find("blk.1.ssm_out.weight") != std::string::npos);
  CHECK(st.message().find("missing") != std::string::npos);
  st = build([](GgufWriter& w, std::vector<const GgufTensor*>&, const GgufFile&) {
    w.set_str("general.architecture", "llama");  // duplicate key -> parse error
  });
  CHECK(!st.ok());
  st = build([](GgufWriter& w, std::vector<const GgufTensor*>& ts, const GgufFile& f) {
    // A stray tensor from a different block layout.
    const GgufTensor* t = f.find_tensor("blk.0.attn_norm.weight");
    const uint8_t* data = t->data;
    w.add_tensor("blk.9.attn_norm.weight", GGML_F32, {256}, [data](uint8_t* d, uint64_t n) { std::memcpy(d, data, n); });
  });
  CHECK(st.message().find("blk.9") != std::string::npos);
}

TEST_CASE("wrong architecture and missing hyper-parameters are refused") {
  GgufWriter w;
  w.set_str("general.architecture", "llama");
  std::string path = tmp_path("llama.gguf");
  REQUIRE(w.write(path).ok());
  std::unique_ptr<Model> m;
  Status st = LoadModel(path, LoadOptions(), Logger(), &m);
  CHECK(st.code() == QWEN35_ERR_UNSUPPORTED);
  CHECK(st.message().find("llama") != std::string::npos);

  GgufWriter w2;
  w2.set_str("general.architecture", "qwen35");
  w2.set_u32("qwen35.block_count", 4);
  REQUIRE(w2.write(path).ok());
  st = LoadModel(path, LoadOptions(), Logger(), &m);
  CHECK(st.code() == QWEN35_ERR_FORMAT);
  CHECK(st.message().find("qwen35.") != std::string::npos);
}

TEST_CASE("random byte flips never crash the loader") {
  const std::vector<uint8_t>& img = base_image();
  std::unique_ptr<GgufFile> f;
  REQUIRE(GgufFile::FromMemory(img.data(), img.size(), false, &f).ok());
  const uint64_t header_end = f->data_offset();
  std::mt19937_64 rng(1234);
  int errors = 0;
  for (int it = 0; it < 300; ++it) {
    std::vector<uint8_t> b = img;
    const int flips = 1 + int(rng() % 8);
    for (int k = 0; k < flips; ++k) {
      // Mostly in the header (where structure lives), sometimes anywhere.
      const uint64_t at = (rng() % 4) ? rng() % header_end : rng() % b.size();
      b[at] = uint8_t(rng());
    }
    if (!load_image(b).ok()) ++errors;
  }
  CHECK(errors > 0);
}
