#!/usr/bin/env bash
# tests/gpu/prepare.sh [FIXTURES_DIR]
#
# Run on the development machine, from the repository root, before sending
# the tree to a GPU machine. Copies into .gpu/ (git-ignored; carry it) what
# tests/gpu/run.sh needs that the repository does not hold:
#   .gpu/fixtures  the fixture models, exact logits and vision fixtures the
#                  GPU tests read
#   .gpu/deps      fmt and doctest (headers, library, CMake files) in case
#                  the GPU machine's image lacks them
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SRC=${1:-../shared/fixtures}
[ -d "$SRC/models" ] || { echo "prepare.sh: no fixtures at $SRC" >&2; exit 1; }

# The packages whose files .gpu/deps carries (a fresh development machine
# may not have them yet; a GPU build without stb_image fails).
./scripts/deps.sh

rm -rf .gpu/fixtures .gpu/deps
mkdir -p .gpu/fixtures/models .gpu/fixtures/logits .gpu/deps
cp "$SRC"/models/tiny-a-f32.gguf "$SRC"/models/tiny-a-nvfp4.gguf "$SRC"/models/tiny-m-nvfp4.gguf .gpu/fixtures/models/
# The vision fixtures (test_cuda_vision): the tiny projector, the images and
# the expected embeddings of both profiles.
mkdir -p .gpu/fixtures/vision
cp "$SRC"/vision/tiny-vis.mmproj.gguf "$SRC"/vision/*.png "$SRC"/vision/*.emb.f32 "$SRC"/vision/*.json \
   .gpu/fixtures/vision/
cp "$SRC"/logits/seqs.txt "$SRC"/logits/tiny-a-f32.exact.main.f32 "$SRC"/logits/tiny-a-nvfp4.exact.main.f32 \
   "$SRC"/logits/tiny-m-nvfp4.exact.main.f32 "$SRC"/logits/tiny-m-nvfp4.exact.mtp.f32 .gpu/fixtures/logits/

# fmt (headers, shared library, CMake package), doctest and stb_image (headers).
for pkg in libfmt-dev libfmt9 doctest-dev libstb-dev; do
  dpkg -L "$pkg" 2>/dev/null | grep -E '^/usr/(include|lib)/' | while read -r f; do
    if [ -f "$f" ] || [ -L "$f" ]; then cp -P --parents "$f" .gpu/deps/; fi
  done
done
for h in fmt/format.h doctest/doctest.h stb/stb_image.h; do
  [ -f ".gpu/deps/usr/include/$h" ] || { echo "prepare.sh: $h not found (scripts/deps.sh installs it)" >&2; exit 1; }
done
du -sh .gpu | sed 's/^/prepare.sh: /'
echo "prepare.sh: now run tests/gpu/run.sh on the GPU machine with .gpu carried"
