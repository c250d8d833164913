// The command-line tools as others script them: qwen35-cli (chat, raw
// completion, errors, demo model), qwen35-logits (fixture format) and
// qwen35-synth (files that load).
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "test_util.h"

using namespace qwen35::test;

namespace {

struct Result {
  int code = -1;
  std::string out;  // stdout and stderr
};

Result run(const std::string& cmd) {
  Result r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string tool(const std::string& name) { return std::string(QWEN35_TOOLS_DIR) + "/" + name; }

}  // namespace

TEST_CASE("qwen35-cli chats on a model, streams, and reports timings and MTP stats") {
  const std::string model = fixture("models/tiny-m-nvfp4.gguf");
  Result r = run(tool("qwen35-cli") + " -m " + model + " -p 'Hello there' -n 8 --seed 3 --timings -t 2 --device cpu");
  CHECK_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("[timings] prompt") != std::string::npos);
  CHECK(r.out.find("generated 8 tokens") != std::string::npos);
  // Same seed, same output; --mtp off gives the same text too.
  Result again = run(tool("qwen35-cli") + " -m " + model + " -p 'Hello there' -n 8 --seed 3 -t 2 --mtp off");
  Result first = run(tool("qwen35-cli") + " -m " + model + " -p 'Hello there' -n 8 --seed 3 -t 2");
  CHECK(again.code == 0);
  CHECK(again.out == first.out);
  // Raw completion, system prompt, no-think, interactive mode on stdin.
  CHECK(run(tool("qwen35-cli") + " -m " + model + " --raw -p 'Once upon' -n 4").code == 0);
  CHECK(run(tool("qwen35-cli") + " -m " + model + " --system 'Be brief.' --no-think -p hi -n 4 -ngl 0").code == 0);
  Result inter = run("printf 'hi\\nand again\\n/exit\\n' | " + tool("qwen35-cli") + " -m " + model + " -i -n 4");
  CHECK(inter.code == 0);
}

namespace {
// The "context N/M tokens" figures of the [timings] lines, in order.
std::vector<int> context_usage(const std::string& out) {
  std::vector<int> used;
  for (size_t p = out.find("| context "); p != std::string::npos; p = out.find("| context ", p + 1))
    used.push_back(std::atoi(out.c_str() + p + 10));
  return used;
}
}  // namespace

TEST_CASE("qwen35-cli: -i keeps the history across turns, /reset clears it") {
  const std::string model = fixture("models/tiny-m-nvfp4.gguf");
  Result r = run("printf 'hi\\nand again\\n/reset\\nhi\\n/exit\\n' | " + tool("qwen35-cli") + " -m " + model +
                 " -i -n 4 --seed 1 --timings");
  CHECK_MESSAGE(r.code == 0, r.out);
  const std::vector<int> used = context_usage(r.out);
  REQUIRE(used.size() == 3);
  CHECK(used[1] > used[0] + 4);  // turn 2 sits on top of turn 1
  CHECK(used[2] == used[0]);     // after /reset: the same first turn again
}

TEST_CASE("qwen35-cli sampling flags: reproducible with a seed, bad values refused") {
  const std::string model = fixture("models/tiny-m-nvfp4.gguf");
  const std::string cmd = tool("qwen35-cli") + " -m " + model +
                          " -p 'Hello there' -n 8 -c 128 -t 2 --temp 0.8 --top-k 20 --top-p 0.9 --min-p 0.05"
                          " --repeat-penalty 1.1";
  Result a = run(cmd + " -s 5"), b = run(cmd + " --seed 5");
  CHECK_MESSAGE(a.code == 0, a.out);
  CHECK(a.out == b.out);
  for (const char* bad : {"--min-p 5", "--repeat-penalty 0", "--temp nan", "-c 5", "-n x", "--top-k 1.5"}) {
    CAPTURE(bad);
    Result r = run(tool("qwen35-cli") + " -m " + model + " -p hi -n 2 " + bad);
    CHECK(r.code != 0);
    CHECK(r.out.find("qwen35-cli: ") != std::string::npos);
  }
}

TEST_CASE("qwen35-cli gives clear errors for bad paths and arguments") {
  Result r = run(tool("qwen35-cli") + " -m /no/such/model.gguf -p hi");
  CHECK(r.code != 0);
  CHECK(r.out.find("/no/such/model.gguf") != std::string::npos);
  r = run(tool("qwen35-cli") + " --bogus");
  CHECK(r.code != 0);
  CHECK(r.out.find("unknown argument '--bogus'") != std::string::npos);
  r = run(tool("qwen35-cli") + " -n many");
  CHECK(r.code != 0);
  CHECK(r.out.find("not an integer") != std::string::npos);
  r = run(tool("qwen35-cli") + " --device tpu");
  CHECK(r.code != 0);
  r = run(tool("qwen35-cli") + " --image x.png -p hi");
  CHECK(r.out.find("--mmproj") != std::string::npos);
  r = run(tool("qwen35-cli") + " -m " + fixture("models/tiny-a-nvfp4.gguf") + " --mtp on -p hi");
  CHECK(r.code != 0);
  CHECK(r.out.find("no MTP layer") != std::string::npos);
  CHECK(run(tool("qwen35-cli") + " --help").code == 0);
}

TEST_CASE("qwen35-cli without a model generates and uses a demo model") {
  const std::string home = tmp_path("cli-home");
  Result r = run("HOME=" + home + " XDG_CACHE_HOME= " + tool("qwen35-cli") + " -p hi -n 4");
  CHECK_MESSAGE(r.code == 0, r.out);
  CHECK(file_exists(home + "/.cache/qwen35/qwen35-demo.gguf"));
}

TEST_CASE("qwen35-cli with an image") {
  Result r = run(tool("qwen35-cli") + " -m " + fixture("models/tiny-a-f32.gguf") + " --mmproj " +
                 fixture("vision/tiny-vis.mmproj.gguf") + " --image " + fixture("vision/sq128.png") +
                 " -p 'What is in the picture?' -n 4 --timings");
  CHECK_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("[timings]") != std::string::npos);
}

// "prompt N tokens" of qwen35-cli --timings (-1 when absent).
int timings_prompt_tokens(const std::string& out) {
  const size_t k = out.find("[timings] prompt ");
  return k == std::string::npos ? -1 : std::atoi(out.c_str() + k + 17);
}

TEST_CASE("qwen35-cli --vision-profile and the image token bounds") {
  const std::string base = tool("qwen35-cli") + " -m " + fixture("models/tiny-a-f32.gguf") + " --mmproj " +
                           fixture("vision/tiny-vis.mmproj.gguf") + " --image " + fixture("vision/sq128.png") +
                           " -p 'What is in the picture?' -n 1 --no-think --timings -t 1";
  // sq128 is 16 tokens as it is; REF (the default) upscales it to its
  // 64-token minimum, LC keeps it.
  Result def = run(base), ref = run(base + " --vision-profile ref"), lc = run(base + " --vision-profile lc");
  REQUIRE_MESSAGE(def.code == 0, def.out);
  REQUIRE_MESSAGE(ref.code == 0, ref.out);
  REQUIRE_MESSAGE(lc.code == 0, lc.out);
  const int n_def = timings_prompt_tokens(def.out), n_ref = timings_prompt_tokens(ref.out),
            n_lc = timings_prompt_tokens(lc.out);
  CHECK(n_def == n_ref);
  CHECK(n_ref - n_lc >= 48);
  Result ref8 = run(base + " --vision-profile ref --image-min-tokens 8");
  CHECK_MESSAGE(ref8.code == 0, ref8.out);
  CHECK(timings_prompt_tokens(ref8.out) == n_lc);
  Result lc12 = run(base + " --vision-profile lc --image-max-tokens 12");  // 128x128 -> 96x96, 9 tokens
  CHECK_MESSAGE(lc12.code == 0, lc12.out);
  CHECK(timings_prompt_tokens(lc12.out) == n_lc - 7);
  Result lc32 = run(base + " --vision-profile lc --image-min-tokens 32");
  CHECK_MESSAGE(lc32.code == 0, lc32.out);
  CHECK(timings_prompt_tokens(lc32.out) >= n_lc + 16);

  Result bad = run(base + " --vision-profile hf");
  CHECK(bad.code != 0);
  CHECK(bad.out.find("--vision-profile must be lc or ref") != std::string::npos);
  bad = run(base + " --image-min-tokens 100 --image-max-tokens 50");
  CHECK(bad.code != 0);
  CHECK(bad.out.find("[100, 50]") != std::string::npos);
  bad = run(base + " --image-max-tokens -3");
  CHECK(bad.code != 0);
}

TEST_CASE("every tool's --help exits 0 with its usage on stdout; an unknown argument fails") {
  for (const char* name : {"qwen35-cli", "qwen35-logits", "qwen35-tokenize", "qwen35-synth", "qwen35-bench",
                           "qwen35-embed-image", "qwen35-bench-vision"}) {
    CAPTURE(name);
    for (const char* flag : {"--help", "-h"}) {
      CAPTURE(flag);
      Result r = run("(" + tool(name) + " " + flag + " 2>/dev/null)");  // stdout only
      CHECK(r.code == 0);
      CHECK(r.out.find("usage: " + std::string(name)) != std::string::npos);
    }
    Result bad = run(tool(name) + " --no-such-flag");
    CHECK(bad.code != 0);
    CHECK(bad.code != 127);  // (the shell's "command not found")
  }
}

TEST_CASE("qwen35-logits reproduces the fixture format and qwen35-synth writes loadable files") {
  const std::string out = tmp_path("logits-out");
  Result r = run(tool("qwen35-logits") + " -m " + fixture("models/tiny-m-nvfp4.gguf") + " --tokens " +
                 fixture("logits/seqs.txt") + " -o " + out + " --reference --mtp");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(read_file(out + ".json") == read_file(fixture("logits/tiny-m-nvfp4.exact.json")));
  CHECK(read_file(out + ".main.f32").size() == read_file(fixture("logits/tiny-m-nvfp4.exact.main.f32")).size());
  CHECK(read_file(out + ".mtp.f32").size() == read_file(fixture("logits/tiny-m-nvfp4.exact.mtp.f32")).size());
  // And the values: the reference path matches the exact logits.
  for (const char* part : {".main.f32", ".mtp.f32"}) {
    CAPTURE(part);
    const std::vector<float> got = read_f32(out + part);
    const std::vector<float> want = read_f32(fixture(std::string("logits/tiny-m-nvfp4.exact") + part));
    REQUIRE(got.size() == want.size());
    CHECK(rel_err(got.data(), want.data(), got.size()) < 1e-4);
  }
  r = run(tool("qwen35-logits") + " -m " + fixture("models/tiny-a-nvfp4.gguf") + " --tokens /no/such/file -o " + out);
  CHECK(r.code != 0);
  // Token files are parsed strictly: no silent cut at a word, no wrap-around.
  for (const char* line : {"5 1 x 7", "4294967297 3", "12abc"}) {
    CAPTURE(line);
    const std::string tokens = tmp_path("bad-tokens.txt");
    FILE* f = std::fopen(tokens.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fprintf(f, "%s\n", line);
    std::fclose(f);
    r = run(tool("qwen35-logits") + " -m " + fixture("models/tiny-a-nvfp4.gguf") + " --tokens " + tokens + " -o " + out);
    CHECK(r.code != 0);
    CHECK(r.out.find("not a token id") != std::string::npos);
  }

  const std::string synth = tmp_path("tool-synth.gguf");
  r = run(tool("qwen35-synth") + " -o " + synth + " --n-embd 128 --n-ff 256 --n-layer 2 --head-dim 64 --n-rot 32 " +
          "--ssm-state 32 --ssm-dv 32 --n-vocab 400 --mixed --untied --seed 9");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  r = run(tool("qwen35-cli") + " -m " + synth + " -p hi -n 3");
  CHECK_MESSAGE(r.code == 0, r.out);
  CHECK(run(tool("qwen35-synth") + " -o " + synth + " --type Q5_0").code != 0);
  CHECK(run(tool("qwen35-synth") + " -o " + synth + " --preset 7b").code != 0);
}

TEST_CASE("qwen35-bench measures a model with either sampler and prints one JSON object") {
  const std::string model = fixture("models/tiny-m-nvfp4.gguf");
  for (const char* sampler : {"greedy", "recommended", "topp"}) {
    CAPTURE(sampler);
    Result r = run(tool("qwen35-bench") + " -m " + model + " -p 8 -n 8 -r 1 -t 2 --device cpu --mtp on --json --sampler " +
                   sampler);
    REQUIRE_MESSAGE(r.code == 0, r.out);
    CHECK(r.out.find("\"sampler\": \"" + std::string(sampler) + "\"") != std::string::npos);
    CHECK(r.out.find("\"decode_tokens_per_s\": ") != std::string::npos);
  }
  CHECK(run(tool("qwen35-bench") + " -m " + model + " --sampler warm").code == 2);
}
