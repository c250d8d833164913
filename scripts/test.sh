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
fi
echo "== ASan + UBSan: hostile GGUF corpus and API misuse"
cmake -S . -B "$BUILD-asan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQWEN35_SANITIZE=ON -DQWEN35_CUDA=OFF >/dev/null
ninja -C "$BUILD-asan" -j "$JOBS" test_gguf test_api
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$BUILD-asan/tests/test_gguf"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$BUILD-asan/tests/test_api"
echo "== all tests passed"
