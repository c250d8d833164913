#!/usr/bin/env bash
# Set up, build, and chat: ./scripts/run.sh [MODEL.gguf] [qwen35-cli options]
# With no model it chats with a small random demo model (gibberish replies,
# but the whole pipeline runs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh >&2
BUILD="${QWEN35_BUILD_DIR:-build}"
args=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  args=(-m "$1")
  shift
fi
if [ $# -eq 0 ]; then
  set -- -p "Hello! Tell me about yourself." -n 64 --timings
fi
exec "$BUILD/examples/qwen35-cli" "${args[@]}" "$@"
