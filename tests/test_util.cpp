#include "test_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <algorithm>
#include <memory>

#include "ggml_types.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "synth.h"

namespace qwen35::test {

// QWEN35_FIXTURES in the environment overrides the configured directory (a
// GPU machine gets a copy of the fixtures next to the repository).
std::string fixture(const std::string& rel) {
  const char* dir = std::getenv("QWEN35_FIXTURES");
  return std::string(dir && *dir ? dir : QWEN35_FIXTURES_DIR) + "/" + rel;
}

std::string tmp_path(const std::string& name) {
  ::mkdir(QWEN35_TEST_TMP, 0755);
  return std::string(QWEN35_TEST_TMP) + "/" + name;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<float> read_f32(const std::string& path) {
  std::vector<uint8_t> b = read_file(path);
  std::vector<float> f(b.size() / 4);
  std::memcpy(f.data(), b.data(), f.size() * 4);
  return f;
}

std::vector<std::vector<int32_t>> read_seqs(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::vector<int32_t>> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::vector<int32_t> s;
    long t;
    while (ls >> t) s.push_back(int32_t(t));
    if (!s.empty()) out.push_back(s);
  }
  return out;
}

double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return INFINITY;  // NaN never passes
    double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num) / std::sqrt(den > 0 ? den : 1e-30);
}

size_t argmax(const float* x, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

double max_token_rel(const std::vector<float>& a, const std::vector<float>& b, size_t n) {
  if (a.size() != b.size() || n == 0) return INFINITY;
  double worst = 0;
  for (size_t r = 0; r * n < b.size(); ++r) worst = std::max(worst, rel_err(a.data() + r * n, b.data() + r * n, n));
  return worst;
}

bool copy_gguf_with_f32(const std::string& src, const std::string& dst,
                        const std::vector<std::pair<std::string, std::vector<float>>>& extra) {
  std::unique_ptr<GgufFile> f;
  if (!GgufFile::Open(src, true, &f).ok()) return false;
  GgufWriter w;
  for (const GgufKV& kv : f->kvs()) w.copy_kv(*f, kv);
  for (const GgufTensor& t : f->tensors()) {
    const uint8_t* data = t.data;
    w.add_tensor(std::string(t.name), t.type, std::vector<int64_t>(t.ne, t.ne + t.n_dims),
                 [data](uint8_t* out, uint64_t n) { std::memcpy(out, data, n); });
  }
  for (const auto& [name, values] : extra) {
    const std::vector<float> v = values;
    w.add_tensor(name, GGML_F32, {int64_t(v.size())},
                 [v](uint8_t* out, uint64_t) { std::memcpy(out, v.data(), v.size() * sizeof(float)); });
  }
  return w.write(dst).ok();
}

std::string synth_model(const std::string& name, const SynthConfig& cfg) {
  const std::string path = tmp_path(name + ".gguf");
  if (!file_exists(path)) {
    const std::string part = path + ".part" + std::to_string(::getpid());  // (another test process may write it too)
    Status st = WriteSynthModel(cfg, part);
    if (!st.ok()) throw std::runtime_error(st.message());
    std::rename(part.c_str(), path.c_str());
  }
  return path;
}

}  // namespace qwen35::test
