#!/usr/bin/env bash
# Install the Debian packages qwen35 needs, only those missing. Runs apt-get
# as root (directly, or through sudo when available).
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config libfmt-dev doctest-dev pybind11-dev python3-dev
      python3-pytest python3-numpy python3-pip python3-venv libstb-dev unicode-data)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "qwen35: installing missing packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "qwen35: please install as root: apt-get install ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
