# Sourced by tests/gpu/run.sh and tests/gpu/explore.sh (ROOT and BUILD set):
# CAP (the device's compute capability, digits only), ARCH (what to build
# for; QWEN35_CUDA_ARCH overrides), CMAKE_ARGS (a Release configure with
# CUDA for ARCH) and, when tests/gpu/prepare.sh carried them in .gpu/deps,
# fmt and doctest from there (DEPS_USED=1, LD_LIBRARY_PATH extended).
CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)
case "${CAP:-90}" in
  90) ARCH=90a ;;
  100) ARCH=100a ;;
  120) ARCH=120a ;;
  *) ARCH=${CAP:-90a} ;;
esac
ARCH=${QWEN35_CUDA_ARCH:-$ARCH}
CMAKE_ARGS=(-S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DQWEN35_CUDA=ON
  "-DCMAKE_CUDA_ARCHITECTURES=$ARCH")
DEPS=$ROOT/.gpu/deps/usr
DEPS_USED=0
if [ -d "$DEPS/include/fmt" ]; then
  FMT_DIR=$(dirname "$(find "$DEPS/lib" -name fmt-config.cmake | head -1)")
  CMAKE_ARGS+=("-Dfmt_DIR=$FMT_DIR" "-DDOCTEST_INCLUDE_DIR=$DEPS/include")
  export LD_LIBRARY_PATH=$(dirname "$(find "$DEPS/lib" -name 'libfmt.so*' | head -1)")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  DEPS_USED=1
fi
