// Shared helpers for the tests: fixture paths, reading fixture logits,
// relative errors, temporary files.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "synth.h"

namespace qwen35::test {

std::string fixture(const std::string& rel);   // QWEN35_FIXTURES_DIR/rel
std::string tmp_path(const std::string& name); // a file name in the test temp dir (created)
bool file_exists(const std::string& path);
std::vector<uint8_t> read_file(const std::string& path);
std::vector<float> read_f32(const std::string& path);
std::vector<std::vector<int32_t>> read_seqs(const std::string& path);

// ||a - b|| / ||b|| over n elements.
double rel_err(const float* a, const float* b, size_t n);
size_t argmax(const float* x, size_t n);
// Largest rel_err over rows of n floats (INFINITY if the sizes differ).
double max_token_rel(const std::vector<float>& a, const std::vector<float>& b, size_t n);

// Copy a GGUF file and add F32 tensors (name, values; shape [values.size()]),
// e.g. the optional NVFP4 `X.scale` tensors of spec §3.6. Returns false on
// failure.
bool copy_gguf_with_f32(const std::string& src, const std::string& dst,
                        const std::vector<std::pair<std::string, std::vector<float>>>& extra);

// Writes a synthetic model to the temp dir (once per name) and returns its path.
std::string synth_model(const std::string& name, const SynthConfig& cfg);

// Sets an environment variable for the lifetime of the object.
struct EnvVar {
  std::string name;
  EnvVar(const char* n, const char* v) : name(n) { setenv(n, v, 1); }
  ~EnvVar() { unsetenv(name.c_str()); }
};

}  // namespace qwen35::test
