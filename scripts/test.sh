#!/usr/bin/env bash
# Set up, build and run every test: the C++ tests (CTest), the Python tests,
# and the GGUF corruption corpus under ASan + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
BUILD="${QWEN35_BUILD_DIR:-build}"
JOBS="${QWEN35_JOBS:-$(nproc)}"
echo "== C++ tests"
(cd "$BUILD" && ctest --output-on-failure -j "$JOBS")
if [ -d bindings/python/tests ]; then
  echo "== Python tests"
  # The Debian interpreter: the one pytest (python3-pytest) and the module's build belong to.
  PY=python3; [ -x /usr/bin/python3 ] && PY=/usr/bin/python3
  PYTHONPATH="$PWD/$BUILD/bindings/python:$PWD/bindings/python" "$PY" -m pytest -q bindings/python/tests
  echo "== Python: pip install . into a venv (the in-tree build backend, offline)"
  VENV="$PWD/$BUILD-pip/venv"
  rm -rf "$VENV"
  "$PY" -m venv --system-site-packages "$VENV"
  QWEN35_BUILD_DIR="$PWD/$BUILD-pip/cmake" QWEN35_CMAKE_ARGS="-DQWEN35_CUDA=OFF" QWEN35_JOBS="$JOBS" \
    "$VENV/bin/pip" install -q --no-index --no-build-isolation .
  # The installed package (not the source tree) generates two tokens.
  MODEL="$PWD/../shared/fixtures/models/tiny-a-nvfp4.gguf"
  (cd "$VENV" && "$VENV/bin/python" - "$MODEL" <<'PY'
import sys, qwen35
assert "/venv/" in qwen35.__file__, qwen35.__file__
with qwen35.Llama(sys.argv[1], n_ctx=64, n_threads=2, verbose=False) as llm:
    out = llm("Hello", max_tokens=2, temperature=0)
print("installed", qwen35.__file__, "->", out["usage"])
PY
  )
fi
echo "== ASan + UBSan: hostile GGUF corpus and API misuse"
cmake -S . -B "$BUILD-asan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQWEN35_SANITIZE=ON -DQWEN35_CUDA=OFF >/dev/null
ninja -C "$BUILD-asan" -j "$JOBS" test_gguf test_api
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$BUILD-asan/tests/test_gguf"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$BUILD-asan/tests/test_api"
echo "== all tests passed"
