#!/usr/bin/env bash
# tests/gpu/run.sh [FIXTURES_DIR]
#
# The GPU check, run from the repository root on a machine with an NVIDIA
# GPU (after tests/gpu/prepare.sh on the development machine, with .gpu
# carried): builds for the device it runs on, runs the GPU tests, writes
# full-size synthetic Qwen3.5-4B NVFP4 files with qwen35-synth and measures
# prefill and decode throughput, then prints a short table (last).
#
# Fixtures: $1, else $QWEN35_FIXTURES, else .gpu/fixtures.
# Output: everything goes to $OUT (default .gpu/out): run.log (all output),
# bench.json (throughput records), summary.txt (the table).
# Every step has a time limit; a failing step does not stop the others.
# Knobs: QWEN35_CUDA_ARCH (e.g. 90a), QWEN35_GPU_WORK (scratch dir for the
# 2.5 GB model files, default /tmp/qwen35-gpu), QWEN35_GPU_JOBS (default 16),
# QWEN35_GPU_QUICK=1 (a few minutes; not yet timed since the chain rows
# came: test_cuda_model, the op tests of the chained projections, the main
# 4B bench row with its sweep, the chain rows and the decode traces only;
# for a second look within a session's budget).
set -euo pipefail

ROOT=$(pwd)
[ -f "$ROOT/cuda/CMakeLists.txt" ] || { echo "run.sh: run me from the repository root" >&2; exit 2; }
FIX=${1:-${QWEN35_FIXTURES:-$ROOT/.gpu/fixtures}}
FIX=$(cd "$FIX" 2>/dev/null && pwd || echo "$FIX")
OUT=${OUT:-$ROOT/.gpu/out}
WORK=${QWEN35_GPU_WORK:-/tmp/qwen35-gpu}
JOBS=${QWEN35_GPU_JOBS:-16}
QUICK=${QWEN35_GPU_QUICK:-0}
BUILD=$ROOT/build-gpu
mkdir -p "$OUT" "$WORK"
LOG=$OUT/run.log
BENCH=$OUT/bench.json
SUMMARY=$OUT/summary.txt
: >"$LOG"
: >"$BENCH"
T0=$(date +%s)
ROWS=()

log() { echo "[run.sh $(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }

# step NAME LIMIT_S CMD...: run with a time limit, output to the log; records
# "NAME|status|seconds" and never fails the script.
step() {
  local name=$1 limit=$2
  shift 2
  local t=$(date +%s) rc=0
  log "== $name (limit ${limit}s): $*"
  if timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1; then rc=0; else rc=$?; fi
  local dt=$(($(date +%s) - t)) st=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then st="TIMEOUT"; elif [ $rc -ne 0 ]; then st="FAIL($rc)"; fi
  log "== $name: $st in ${dt}s"
  ROWS+=("$name|$st|$dt")
  return 0
}

# ---- machine -----------------------------------------------------------------
{
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv || true
  nvcc --version | tail -2 || true
  cmake --version | head -1 || true
  c++ --version | head -1 || true
} >>"$LOG" 2>&1
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo "unknown GPU")
# shellcheck source=tests/gpu/gpu_env.sh
source "$ROOT/tests/gpu/gpu_env.sh"
log "GPU: $GPU_NAME (compute capability ${CAP:-?}), building for sm_$ARCH; fixtures: $FIX"

# ---- configure and build ------------------------------------------------------
CMAKE_ARGS+=("-DQWEN35_FIXTURES=$FIX")
if [ "$DEPS_USED" = 1 ]; then log "using the carried fmt and doctest from $DEPS"; fi
step configure 180 cmake "${CMAKE_ARGS[@]}"
ALL_TARGETS=$(ninja -C "$BUILD" -t targets all 2>/dev/null | cut -d: -f1 || true)
TARGETS=()
WANT=(test_cuda_ops test_cuda_model test_cuda_vision test_fp4_layout test_mtp_loop qwen35-synth qwen35-cuda-bench
  qwen35-bench qwen35-bench-vision qwen35-bw-probe qwen35-matvec-bench qwen35-stream-probe qwen35-persist-bench)
[ "$QUICK" = 1 ] && WANT=(test_cuda_ops test_cuda_model qwen35-synth qwen35-cuda-bench qwen35-matvec-bench
  qwen35-stream-probe qwen35-persist-bench)
for t in "${WANT[@]}"; do
  if grep -qx "$t" <<<"$ALL_TARGETS"; then TARGETS+=("$t"); fi
done
HAVE_BENCH=0
if grep -qx qwen35-bench <<<"$ALL_TARGETS" && [ "$QUICK" != 1 ]; then HAVE_BENCH=1; fi
step build 420 ninja -C "$BUILD" -j"$JOBS" "${TARGETS[@]}"
BIN=$BUILD/tests
SYNTH=$BUILD/examples/qwen35-synth

# ---- synthetic 4B files (CPU work, in the background while the tests run) ----
M4=$WORK/qwen35-4b-nvfp4.gguf
M4MTP=$WORK/qwen35-4b-nvfp4-mtp-mirror.gguf
M4Q8=$WORK/qwen35-4b-q8_0.gguf  # every matrix Q8_0 (a mixed recipe's type), full runs only
M4Q4K=$WORK/qwen35-4b-q4_k.gguf  # every matrix Q4_K (llama.cpp's common type), full runs only
synth_one() {  # synth_one FILE ARGS...: write FILE unless it exists
  local f=$1
  shift
  if [ ! -s "$f" ]; then
    echo "qwen35-synth $* -> $f"
    if timeout 240 "$SYNTH" --preset 4b "$@" -o "$f.part" -t "$JOBS"; then mv -f "$f.part" "$f"; fi
  fi
}
synth_bg() {
  synth_one "$M4" --no-mtp
  [ "$QUICK" = 1 ] || synth_one "$M4MTP" --mtp-mirror
  [ "$QUICK" = 1 ] || synth_one "$M4Q8" --no-mtp --type Q8_0
  [ "$QUICK" = 1 ] || synth_one "$M4Q4K" --no-mtp --type Q4_K
}
SYNTH_T=$(date +%s)
if [ -x "$SYNTH" ]; then
  synth_bg >"$WORK/synth.log" 2>&1 &
  SYNTH_PID=$!
else
  SYNTH_PID=
fi

# ---- tests ----------------------------------------------------------------------
export QWEN35_FIXTURES=$FIX
TESTS=(test_cuda_ops test_cuda_model test_cuda_vision test_fp4_layout test_mtp_loop)
[ "$QUICK" = 1 ] && TESTS=(test_cuda_model)
for t in "${TESTS[@]}"; do
  if [ -x "$BIN/$t" ]; then
    step "$t" 300 "$BIN/$t" --duration=true
  else
    ROWS+=("$t|NOT BUILT|0")
  fi
done
# Quick mode: the op tests of the chained projections, the k-quant tiles and the
# Q6_K head's persistent kernels (kernel 3, the greedy epilogue) only.
if [ "$QUICK" = 1 ] && [ -x "$BIN/test_cuda_ops" ]; then
  step "test_cuda_ops, chains, tiles" 300 "$BIN/test_cuda_ops" -tc="*chain*,*F16 tiles*,*paired*,*gated-norm prologue*,*persistent launches*,*persistent NVFP4*" --duration=true
fi
# The model tests again with chained projections (each layer's tail with
# the delta rule or attention in front, and each FFN, in one launch).
if [ -x "$BIN/test_cuda_model" ]; then
  step "test_cuda_model, chains" 300 env QWEN35_CUDA_FP4_CHAIN=4 "$BIN/test_cuda_model" --duration=true
  # And with one-row steps as persistent launches (each step's layers in
  # one launch, its stages in a table in device memory).
  step "test_cuda_model, persistent" 300 env QWEN35_CUDA_FP4_PERSIST=4 "$BIN/test_cuda_model" --duration=true
  # And with kernel 3's FP8 arithmetic (the codes' FP8 copy made at load).
  step "test_cuda_model, fp8" 300 env QWEN35_CUDA_FP4_FP8=1 "$BIN/test_cuda_model" --duration=true
fi

if [ -n "$SYNTH_PID" ]; then
  wait "$SYNTH_PID" || true
  cat "$WORK/synth.log" >>"$LOG"
fi
ROWS+=("synth 4B files|$([ -s "$M4" ] && { [ -s "$M4MTP" ] || [ "$QUICK" = 1 ]; } && echo ok || echo FAIL)|$(($(date +%s) - SYNTH_T))")

# ---- throughput ---------------------------------------------------------------
bench() {  # bench LABEL CMD...: appends {"label": ..., <the tool's JSON>} to bench.json
  local label=$1
  shift
  local tmp=$WORK/bench.out
  step "$label" 240 bash -c '"$@" > "'"$tmp"'"' _ "$@"
  if [ -s "$tmp" ]; then
    local line
    line=$(grep -E '^\{' "$tmp" | tail -1 || true)
    [ -n "$line" ] && echo "{\"label\": \"$label\", \"result\": $line}" >>"$BENCH"
    cat "$tmp" >>"$LOG"
  fi
  rm -f "$tmp"
}
if [ -s "$M4" ]; then
  bench "bench 4B NVFP4" "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 128 --device cuda --json --check 6 --sweep
  # Kernel 3 with the FP8 tensor cores (E2M1 codes as E4M3, three E4M3
  # terms per activation), checked against the CPU too.
  bench "  fp4: FP8 arithmetic" env QWEN35_CUDA_FP4_FP8=1 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  fp4: FP8 + persistent step" env QWEN35_CUDA_FP4_FP8=1 QWEN35_CUDA_FP4_PERSIST=4 \
    "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 128 --device cuda --json --check 6
  # One-row steps as persistent launches (layer tails; runs of delta-net
  # layers with their delta rules; with attention; the whole step's layers
  # from a stage table in device memory), checked against the CPU too.
  bench "  fp4: persistent tails" env QWEN35_CUDA_FP4_PERSIST=1 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  fp4: persistent layers" env QWEN35_CUDA_FP4_PERSIST=2 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  fp4: persistent + attention" env QWEN35_CUDA_FP4_PERSIST=3 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  fp4: persistent step" env QWEN35_CUDA_FP4_PERSIST=4 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  fp4: persistent step, slice waits" env QWEN35_CUDA_FP4_PERSIST=4 QWEN35_CUDA_FP4_PERSIST_SLICES=1 \
    "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 128 --device cuda --json --check 6
  # Chained projections (each FFN; each layer's tail), checked against the CPU too.
  bench "  fp4: chains, FFN" env QWEN35_CUDA_FP4_CHAIN=1 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  fp4: chains, layer tails" env QWEN35_CUDA_FP4_CHAIN=2 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  fp4: chains, tails + delta rule" env QWEN35_CUDA_FP4_CHAIN=3 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  fp4: chains, + attention" env QWEN35_CUDA_FP4_CHAIN=4 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  fp4: chains 4, full waits" env QWEN35_CUDA_FP4_CHAIN=4 QWEN35_CUDA_FP4_CHAIN_EARLY=0 \
    "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 128 --device cuda --json --check 6
  # The LM head with the Q6_K kernel 3 (bulk copies), alone and with the chains.
  bench "  q6k: kernel 3 (bulk copies)" env QWEN35_CUDA_Q6K_KERNEL=3 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  q6k kernel 3 + chains 4" env QWEN35_CUDA_Q6K_KERNEL=3 QWEN35_CUDA_FP4_CHAIN=4 "$BIN/qwen35-cuda-bench" \
    -m "$M4" -p 512 -n 128 --device cuda --json
  # The greedy argmax in the LM head's epilogue, alone and with the chains.
  bench "  q6k: argmax in the head" env QWEN35_CUDA_Q6K_ARGMAX=1 "$BIN/qwen35-cuda-bench" -m "$M4" \
    -p 512 -n 128 --device cuda --json --check 6
  bench "  chains 4 + head argmax" env QWEN35_CUDA_FP4_CHAIN=4 QWEN35_CUDA_Q6K_ARGMAX=1 "$BIN/qwen35-cuda-bench" \
    -m "$M4" -p 512 -n 128 --device cuda --json
  if [ $HAVE_BENCH -eq 1 ]; then
    bench "qwen35-bench 4B NVFP4" "$BUILD/examples/qwen35-bench" -m "$M4" -p 512 -n 128 --device cuda --json
  fi
fi
if [ -s "$M4MTP" ]; then
  bench "bench 4B NVFP4 + MTP (mirror)" "$BIN/qwen35-cuda-bench" -m "$M4MTP" -p 512 -n 128 --device cuda --json
  bench "  MTP, persistent step" env QWEN35_CUDA_FP4_PERSIST=4 "$BIN/qwen35-cuda-bench" -m "$M4MTP" -p 512 \
    -n 128 --device cuda --json
  bench "  MTP, FP8 arithmetic" env QWEN35_CUDA_FP4_FP8=1 "$BIN/qwen35-cuda-bench" -m "$M4MTP" -p 512 \
    -n 128 --device cuda --json
fi
# Decode on Q8_0 and on Q4_K matrices: their tiles, and the generic
# kernels (the Q6_K LM head tiled in both).
for qm in "Q8_0|$M4Q8" "Q4_K|$M4Q4K"; do
  IFS='|' read -r qt qf <<<"$qm"
  [ -s "$qf" ] || continue
  bench "bench 4B $qt" "$BIN/qwen35-cuda-bench" -m "$qf" -p 512 -n 128 --device cuda --json --check 6
  bench "  $qt: generic kernels" env QWEN35_CUDA_KTILES=0 "$BIN/qwen35-cuda-bench" -m "$qf" -p 512 -n 64 \
    --device cuda --json
done
# The vision encoder on the GPU: a 640x480 image through a random projector
# of the real Qwen3.5-4B shapes (F16, written to $WORK, about 672 MB), 5
# timed encodes, and the embeddings compared once with the CPU encoder.
VISION_BENCH=$BUILD/examples/qwen35-bench-vision
if [ -x "$VISION_BENCH" ]; then
  step "vision encoder 640x480 (CUDA)" 240 "$VISION_BENCH" --device cuda --width 640 --height 480 --reps 5 --check \
    --synth-path "$WORK/qwen35-4b-synth.mmproj.gguf"
  # A large image (about 1,200 patches: attention dominates), with the
  # tensor-core attention (default) and with the F32 kernel.
  step "vision encoder 1280x960 (CUDA)" 240 "$VISION_BENCH" --device cuda --width 1280 --height 960 --reps 3 \
    --check --synth-path "$WORK/qwen35-4b-synth.mmproj.gguf"
  step "vision 1280x960, F32 attention" 240 env QWEN35_CUDA_VISION_ATTN_MMA=0 "$VISION_BENCH" --device cuda \
    --width 1280 --height 960 --reps 3 --synth-path "$WORK/qwen35-4b-synth.mmproj.gguf"
fi
# Each decode matrix-vector kernel against the copy bandwidth, weight type
# by type, on the 4B's shapes (tests/gpu/matvec_bench.cpp): one activation
# row (decode), then two (an MTP verify).
if [ -x "$BIN/qwen35-matvec-bench" ]; then
  step "matvec bandwidth, n=1" 120 "$BIN/qwen35-matvec-bench"
  step "matvec bandwidth, n=2" 120 "$BIN/qwen35-matvec-bench" --n 2 --types Q8_0,Q4_K,Q6_K,NVFP4
fi
# The floor: a chain of 32 dependent launches that only read buffers of the
# decode matrices' sizes (tests/gpu/bw_probe.cu).
if [ -x "$BIN/qwen35-bw-probe" ]; then
  step "bandwidth probe" 60 "$BIN/qwen35-bw-probe"
fi
# A persistent grid streaming a whole step's weights through dependent
# stages, against separate launches (tests/gpu/stream_probe.cu).
if [ -x "$BIN/qwen35-stream-probe" ]; then
  step "stream probe" 60 "$BIN/qwen35-stream-probe"
fi
# A step's NVFP4 products as one persistent launch (persist_fp4.h) against
# separate kernel-3 launches, with the real arithmetic.
if [ -x "$BIN/qwen35-persist-bench" ]; then
  step "persist bench" 120 "$BIN/qwen35-persist-bench"
fi
# The same without one optimization each, for comparison (prefill rows:
# short decodes).
if [ -s "$M4" ] && [ "$QUICK" != 1 ]; then
  bench "  without PDL and graphs" env QWEN35_CUDA_PDL=0 QWEN35_CUDA_GRAPHS=0 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 128 --device cuda --json
  bench "  fp4 kernel 3 (bulk copies)" env QWEN35_CUDA_FP4_KERNEL=3 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 256 --device cuda --json
  bench "  fp4 kernel 3 lean" env QWEN35_CUDA_FP4_KERNEL=3 QWEN35_CUDA_FP4_LEAN=1 \
    "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 256 --device cuda --json
  bench "  fp4 kernel 2 (registers)" env QWEN35_CUDA_FP4_KERNEL=2 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 256 --device cuda --json
  # A user's context size (32,768: 32 key splits in decode attention, the
  # most) at the same 512-token prompt.
  bench "  decode in a 32K context" "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 128 --ctx 32768 --device cuda --json
  bench "  prefill: split attention" env QWEN35_CUDA_TILED_ATTN=0 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 16 --device cuda --json
  bench "  prefill: delta rule e32" env QWEN35_CUDA_DELTA_EPT=32 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 16 --device cuda --json
  bench "  prefill: delta rule e16" env QWEN35_CUDA_DELTA_EPT=16 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 16 --device cuda --json
  bench "  prefill: chunked delta rule" env QWEN35_CUDA_DELTA_CHUNKED=1 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 16 --device cuda --json
  bench "  prefill: F32 tiled attention" env QWEN35_CUDA_ATTN_MMA=0 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 16 --device cuda --json
  # Short prompts (a chat turn): chunked decode matvecs (default up to 16
  # rows) against GEMMs on dequantized weights (QWEN35_CUDA_MEDIUM_ROWS).
  bench "  prefill 16: chunked matvecs" "$BIN/qwen35-cuda-bench" -m "$M4" -p 16 -n 8 --device cuda --json
  bench "  prefill 16: GEMMs" env QWEN35_CUDA_MEDIUM_ROWS=0 "$BIN/qwen35-cuda-bench" -m "$M4" -p 16 -n 8 \
    --device cuda --json
  bench "  prefill 24: GEMMs" "$BIN/qwen35-cuda-bench" -m "$M4" -p 24 -n 8 --device cuda --json
  bench "  prefill 24: chunked matvecs" env QWEN35_CUDA_MEDIUM_ROWS=64 "$BIN/qwen35-cuda-bench" -m "$M4" -p 24 -n 8 \
    --device cuda --json
  bench "  prefill: cached BF16 weights" env QWEN35_CUDA_DEQ_CACHE=1 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 16 --device cuda --json
fi
# The kernel timeline as it runs (CUPTI: real clocks, PDL overlap, graphs):
# per kernel its share of the busy time, and the idle time of a step.
TRACES=()
trace() {  # trace LABEL FILE ENV... -- ARGS...: qwen35-cuda-bench --trace into $OUT/FILE
  local label=$1 file=$OUT/$2
  shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  step "$label" 90 bash -c 'env "${@:2}" > "$1" 2>&1' _ "$file" "${envs[@]}" "$BIN/qwen35-cuda-bench" -m "$M4" "$@"
  TRACES+=("$label|$file")
}
if [ -s "$M4" ] && [ "${QWEN35_GPU_TRACE:-1}" != 0 ]; then
  trace "trace: decode" trace-decode.txt -- -p 512 -n 32 --device cuda --trace decode
  trace "trace: decode, chains, q6k 3" trace-decode-chain.txt QWEN35_CUDA_FP4_CHAIN=4 QWEN35_CUDA_Q6K_KERNEL=3 \
    QWEN35_CUDA_Q6K_ARGMAX=1 -- \
    -p 512 -n 32 --device cuda --trace decode
  trace "trace: decode, persistent" trace-decode-persist.txt QWEN35_CUDA_FP4_PERSIST=4 -- \
    -p 512 -n 32 --device cuda --trace decode
  trace "trace: prefill" trace-prefill.txt -- -p 512 -n 1 --device cuda --trace prefill
  # What the kernels cost without the NVFP4 stream's arithmetic (wrong
  # results), and a step through the context API (logits to the host).
  trace "trace: decode, no fp4 math" trace-decode-probe.txt -- -p 512 -n 32 --device cuda --trace decode --probe
  trace "trace: decode via API" trace-decode-api.txt -- -p 512 -n 32 --device cuda --trace api
fi
# Per-kernel times under Nsight Compute (when installed; QWEN35_GPU_NCU=0
# skips it): the bench's --profile runs only the part of interest between
# cudaProfilerStart/Stop (ncu --profile-from-start off): 3 decode steps
# (graph nodes profiled one by one) and one 512-token prefill. Kernels are
# serialized (no PDL overlap), at ncu's locked clocks.
NCU_CSV=$OUT/ncu-decode.csv
NCU_PREFILL_CSV=$OUT/ncu-prefill.csv
NCU_CHUNKED_CSV=$OUT/ncu-prefill-chunked.csv
NCU_STEPS=3
if [ -s "$M4" ] && [ "${QWEN35_GPU_NCU:-1}" != 0 ] && command -v ncu >/dev/null; then
  step "ncu: decode kernels" 120 bash -c 'ncu --csv --metrics gpu__time_duration.sum --profile-from-start off \
      "$1" -m "$2" -p 64 -n "$4" --device cuda --profile decode > "$3"' _ "$BIN/qwen35-cuda-bench" "$M4" "$NCU_CSV" "$NCU_STEPS"
  step "ncu: prefill kernels" 150 bash -c 'ncu --csv --metrics gpu__time_duration.sum --profile-from-start off \
      "$1" -m "$2" -p 512 -n 1 --device cuda --profile prefill > "$3"' _ "$BIN/qwen35-cuda-bench" "$M4" "$NCU_PREFILL_CSV"
  step "ncu: prefill, chunked delta rule" 150 bash -c 'QWEN35_CUDA_DELTA_CHUNKED=1 ncu --csv --metrics gpu__time_duration.sum \
      --profile-from-start off "$1" -m "$2" -p 512 -n 1 --device cuda --profile prefill > "$3"' _ \
      "$BIN/qwen35-cuda-bench" "$M4" "$NCU_CHUNKED_CSV"
  # Nsight Compute's sections for the decode matrix kernels and the fused
  # attention (NVFP4 kernel 3): memory throughput, occupancy and what the
  # warps wait for, as text.
  # One NVFP4 FFN gate+up launch of kernel 3 with every section (stall
  # reasons, source counters), and kernel 3's machine code.
  step "ncu: full, one fp4 kernel 3 launch" 120 bash -c 'ncu --profile-from-start off --set full \
      -k "regex:fp4_bulk" --launch-skip 2 --launch-count 1 --print-details all \
      "$1" -m "$2" -p 64 -n 1 --device cuda --profile decode > "$3" 2>&1' \
    _ "$BIN/qwen35-cuda-bench" "$M4" "$OUT/ncu-full-fp4k3.txt"
  if command -v cuobjdump >/dev/null; then
    step "sass: fp4 kernel 3" 60 bash -c 'cuobjdump -sass "$1" | awk "/Function : /{on = index(\$0, \"fp4_bulk_kernelILi4ELb0ELi1ELb0E\") > 0} on" > "$2"' \
      _ "$BUILD/cuda/CMakeFiles/qwen35_cuda.dir/matvec_fp4.cu.o" "$OUT/sass-fp4k3.txt"
  fi
  for k in 3; do
    step "ncu: decode details, fp4 kernel $k" 120 bash -c 'QWEN35_CUDA_FP4_KERNEL='"$k"' ncu --profile-from-start off \
        -k "regex:fp4_|q6kt_matvec|attention_fused|delta_net" --launch-count 12 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis "$1" -m "$2" -p 64 -n 1 --device cuda --profile decode > "$3"' \
      _ "$BIN/qwen35-cuda-bench" "$M4" "$OUT/ncu-detail-fp4k$k.txt"
  done
fi
nvidia-smi --query-gpu=memory.used,memory.total --format=csv >>"$LOG" 2>&1 || true

# ---- table ----------------------------------------------------------------------
TOTAL=$(($(date +%s) - T0))
{
  echo "qwen35 GPU check: $GPU_NAME, sm_$ARCH, $(date -u +%Y-%m-%dT%H:%MZ), ${TOTAL}s in all"
  printf '%-34s %-12s %6s  %s\n' "step" "status" "time" "result"
  for r in "${ROWS[@]}"; do
    IFS='|' read -r name st dt <<<"$r"
    res=""
    if [[ $name == test_* ]]; then
      res=$(awk -v n="== $name (limit" 'index($0, n) {on=1} on && /\[doctest\] test cases:/ {print; on=0}' "$LOG" |
        tail -1 | sed -E 's/.*test cases: *([0-9]+) \| *([0-9]+) passed \| *([0-9]+) failed.*/\2\/\1 cases passed, \3 failed/')
      if awk -v n="== $name (limit" 'index($0, n) {on=1} on && /GPU tests skipped/ {f=1} on && /\[doctest\] Status/ {on=0} END {exit !f}' "$LOG"; then
        res="$res (SKIPPED: no usable GPU)"
      fi
    fi
    printf '%-34s %-12s %5ss  %s\n' "$name" "$st" "$dt" "$res"
  done
  # Kernel timelines (qwen35-cuda-bench --trace): the first 14 kernels of each.
  for t in "${TRACES[@]}"; do
    IFS='|' read -r label file <<<"$t"
    [ -s "$file" ] && grep '^trace|' "$file" | head -16 | sed "s/^trace|/$label|/"
  done
  # Decode kernels' bandwidth by weight type (qwen35-matvec-bench).
  grep '^matvec|' "$LOG" || true
  # The read floor (qwen35-bw-probe).
  awk '/== bandwidth probe \(limit/ {on=1; next} on && /== bandwidth probe:/ {on=0} on && !/^\[run.sh/ {print "probe: " $0}' "$LOG" || true
  grep '^stream|' "$LOG" || true
  grep -E '^persist(-tl)?\|' "$LOG" || true
  # Vision encoder timing (qwen35-bench-vision --device cuda).
  grep -E '^vision\||^check vs the CPU encoder|^CUDA vision encoder' "$LOG" | sed 's/^/vision: /' || true
  if [ -s "$BENCH" ] && command -v python3 >/dev/null; then
    python3 - "$BENCH" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if not line:
        continue
    try:
        rec = json.loads(line)
    except ValueError:
        print("  (unparsed) " + line[:150]); continue
    r = rec.get("result", {})
    out = [f"prefill {r.get('prefill_tokens_per_s', 0):,.0f} tok/s", f"decode {r.get('decode_tokens_per_s', 0):,.0f} tok/s"]
    if r.get("decode_api_tokens_per_s"):
        out.append(f"decode via API {r['decode_api_tokens_per_s']:,.0f} tok/s")
    if r.get("decode_generate_tokens_per_s"):
        out.append(f"generate {r['decode_generate_tokens_per_s']:,.0f} tok/s")
    if r.get("decode_sampled_tokens_per_s"):
        out.append(f"sampled {r['decode_sampled_tokens_per_s']:,.0f} tok/s "
                   f"(rows to host {r['decode_sampled_rows_tokens_per_s']:,.0f})")
    if r.get("decode_topp_tokens_per_s"):
        out.append(f"no top-k {r['decode_topp_tokens_per_s']:,.0f} tok/s "
                   f"(rows to host {r['decode_topp_rows_tokens_per_s']:,.0f}, {r.get('topp_misses', 0)} misses)")
    if r.get("decode_mtp_tokens_per_s"):
        out.append(f"MTP {r['decode_mtp_tokens_per_s']:,.0f} tok/s ({r.get('mtp_accepted')}/{r.get('mtp_drafted')} accepted)")
    if r.get("device_bytes"):
        out.append(f"{r['device_bytes'] / 2**30:.2f} GiB weights")
    if r.get("layouts"):
        out.append(f"{r['layouts']} layouts")
    if r.get("tuning"):
        out.append(r["tuning"])
    if r.get("roofline_fraction"):
        out.append(f"{r['roofline_fraction'] * 100:.0f}% of the roofline ({r.get('read_bandwidth_gb_s', 0):,.0f} GB/s copy, "
                   f"{r.get('weight_bytes_per_token', 0) / 1e9:.2f} GB/token)")
    if r.get("check_rel_batch", -1) >= 0:
        out.append(f"vs CPU: rel {r['check_rel_batch']:.2g} batch / {r['check_rel_step']:.2g} step, "
                   f"argmax {'equal' if r.get('check_argmax_equal') == 1 else 'DIFFERENT'}")
    if r.get("greedy_device_host_equal") == 0:
        out.append("greedy tokens: device argmax DIFFERENT from the host's")
    print(f"{rec.get('label', '?'):<34} " + ", ".join(out))
print("targets (H100, 4B NVFP4, batch 1): decode >= 1000 tok/s without MTP, prefill of 512 >= 20000 tok/s")
EOF
    # Per-kernel times from ncu (mean per launch, grouped by kernel and grid).
    for f in "$NCU_CSV" "$NCU_PREFILL_CSV" "$NCU_CHUNKED_CSV"; do
      [ -s "$f" ] || continue
      runs=1
      [ "$f" = "$NCU_CSV" ] && runs=$NCU_STEPS
      python3 - "$f" "$runs" <<'EOF'
import csv, collections, os, sys
rows = [l for l in open(sys.argv[1]) if l.startswith('"')]
runs = int(sys.argv[2])
if rows:
    r = list(csv.reader(rows))
    h = r[0]
    try:
        ki, gi, vi = h.index("Kernel Name"), h.index("Grid Size"), h.index("Metric Value")
        agg = collections.defaultdict(list)
        for x in r[1:]:
            agg[(x[ki].split("(")[0][-48:], x[gi])].append(float(x[vi].replace(",", "")) / 1e3)
        total = sum(sum(v) for v in agg.values())
        count = sum(len(v) for v in agg.values())
        what = "decode step" if runs > 1 else "prefill"
        print(f"{os.path.basename(sys.argv[1])} (kernels serialized, locked clocks): per {what}: "
              f"{count / runs:.0f} kernels, {total / runs:,.0f} us")
        print("  kernel | grid | launches | mean us | total us")
        for (k, g), v in sorted(agg.items(), key=lambda kv: -sum(kv[1]))[:30]:
            print(f"  {k:<48} {g:<14} {len(v):>5} {sum(v)/len(v):>9.1f} {sum(v):>10.0f}")
    except ValueError:
        print("ncu: unexpected CSV header")
EOF
    done
    # Decode-kernel variants (qwen35-cuda-bench --sweep), fastest first.
    if grep -q '^sweep|' "$LOG"; then
      echo "decode-kernel variants (backend decode, device argmax):"
      grep '^sweep| best' "$LOG" | tail -1
      grep '^sweep|' "$LOG" | grep -v 'best:' | sort -t'|' -k3 -rn | head -30
    fi
  elif [ -s "$BENCH" ]; then
    cat "$BENCH"
  fi
} | tee "$SUMMARY" | tee -a "$LOG"

# Exit status: 1 if any step failed (the table above says which).
for r in "${ROWS[@]}"; do
  IFS='|' read -r _ st _ <<<"$r"
  [ "$st" = ok ] || exit 1
done
exit 0
