#!/usr/bin/env bash
# Configure and build qwen35 (Release) into build/ (or $QWEN35_BUILD_DIR).
# The CUDA backend is built when nvcc is found (/usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
"./scripts/deps.sh"
BUILD="${QWEN35_BUILD_DIR:-build}"
JOBS="${QWEN35_JOBS:-$(nproc)}"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DQWEN35_PYTHON=ON ${QWEN35_CMAKE_ARGS:-} >/dev/null
ninja -C "$BUILD" -j "$JOBS"
