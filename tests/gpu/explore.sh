#!/usr/bin/env bash
# tests/gpu/explore.sh [ENV_SETTINGS]...
#
# A short follow-up to tests/gpu/run.sh within a device session's budget
# (a few minutes on an H100): builds only the benchmarks, then, in this
# order (the most wanted first: a run cut short keeps what it measured),
#  * test_cuda_ops' persistent cases (the 4B's shapes, against kernel 3,
#    delta_net and the CPU; with slice waits too);
#  * qwen35-persist-bench: a step's NVFP4 products as one launch of the
#    persistent kernel (persist_fp4.h, real arithmetic, checked against
#    kernel 3) against separate kernel-3 launches, with its timelines;
#  * qwen35-matvec-bench: every decode kernel on the 4B's shapes (one
#    activation row; NVFP4 kernel 3 also with the FP8 arithmetic, `fp4fp8`
#    lines, for one and two rows);
#  * qwen35-cuda-bench on a synthetic full-size 4B NVFP4 file: once per
#    ENV_SETTINGS argument (a space-separated list of VAR=value, e.g.
#    "QWEN35_CUDA_FP4_PERSIST=4"), each checked against the CPU; the
#    persistent kernel's timeline of a step (persist-tl lines) with
#    QWEN35_CUDA_FP4_PERSIST=4, without and with
#    QWEN35_CUDA_FP4_PERSIST_SLICES=1; decode and prefill with the defaults
#    and its --sweep of decode variants (the probes, the persistent
#    launches); the decode timeline (CUPTI) with QWEN35_CUDA_FP4_PERSIST=4;
#  * then, if time is left, qwen35-stream-probe (a persistent grid
#    streaming a step's weights through dependent stages), NVFP4 kernel 3
#    in its 24 geometries (--fp4-sweep) for one and two rows, without PDL
#    and with each timing probe (QWEN35_CUDA_FP4_PROBE, wrong results).
# Run from the repository root (after tests/gpu/prepare.sh, .gpu carried).
# Output in $OUT (default .gpu/out): explore.log (all), summary.txt (the
# matvec and sweep lines and one line per bench; rewritten after each step,
# so a run cut short still leaves what it measured).
set -uo pipefail

ROOT=$(pwd)
[ -f "$ROOT/cuda/CMakeLists.txt" ] || { echo "explore.sh: run me from the repository root" >&2; exit 2; }
OUT=${OUT:-$ROOT/.gpu/out}
WORK=${QWEN35_GPU_WORK:-/tmp/qwen35-gpu}
JOBS=${QWEN35_GPU_JOBS:-16}
BUILD=$ROOT/build-gpu
mkdir -p "$OUT" "$WORK"
LOG=$OUT/explore.log
SUMMARY=$OUT/summary.txt
: >"$LOG"
T0=$(date +%s)
log() { echo "[explore.sh $(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }

# shellcheck source=tests/gpu/gpu_env.sh
source "$ROOT/tests/gpu/gpu_env.sh"
log "building for sm_$ARCH"
if ! { cmake "${CMAKE_ARGS[@]}" && ninja -C "$BUILD" -j"$JOBS" qwen35-matvec-bench qwen35-cuda-bench qwen35-synth \
  qwen35-stream-probe qwen35-persist-bench test_cuda_ops; } \
  >>"$LOG" 2>&1; then
  log "build failed"
  tail -30 "$LOG" >"$SUMMARY"
  exit 1
fi
BIN=$BUILD/tests
M4=$WORK/qwen35-4b-nvfp4.gguf
# The 4B file in the background while the kernel benchmarks run.
if [ ! -s "$M4" ]; then
  (timeout 240 "$BUILD/examples/qwen35-synth" --preset 4b --no-mtp -o "$M4.part" -t "$JOBS" >"$WORK/synth.log" 2>&1 &&
    mv -f "$M4.part" "$M4") &
  SYNTH_PID=$!
else
  SYNTH_PID=
fi

# One line per qwen35-cuda-bench record; its sweep lines as they are.
BENCH_PY='
import json, sys
for line in sys.stdin:
    label, _, rest = line.rstrip("\n").partition(": ")
    if rest.startswith("sweep|"):
        print(label + ": " + rest)
        continue
    try:
        r = json.loads(rest)
    except ValueError:
        print(label, "(unparsed)")
        continue
    same = "equal" if r.get("check_argmax_equal") == 1 else "DIFFERENT"
    print("%s: prefill %.0f tok/s, decode %.0f tok/s, %s, vs CPU rel %.2g, argmax %s" % (
        label, r.get("prefill_tokens_per_s", 0), r.get("decode_tokens_per_s", 0), r.get("tuning", ""),
        r.get("check_rel_step", -1), same))
'
# The summary so far (rewritten after every step: a run cut short by the
# device session's limit still leaves one).
summarize() {
  {
    echo "qwen35 explore.sh: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), sm_$ARCH," \
      "$(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - T0))s"
    grep -E '^(matvec n=1|no PDL n=1|probe [0-9] n=1): matvec\|' "$LOG"
    grep -E '^stream probe: stream\|' "$LOG"
    grep -E '^persist tests: .*(test cases:|ERROR|MESSAGE|[0-9.]+ s: )' "$LOG" | head -30
    grep -E '^persist bench: persist(-tl)?\|' "$LOG"
    grep -E '^sweep n=[12]: (fp4sweep|matvec)\|' "$LOG"
    grep -E '^bench [^:]*: (\{|sweep\|)' "$LOG" | python3 -c "$BENCH_PY" || true
    grep -E '^trace persist: trace\|' "$LOG" | head -16
    grep -E '^timeline persist( slices)?: persist-tl\|' "$LOG"
    grep -E 'FAILED|OVER THE BAR|row [0-9]+:' "$LOG" | grep -v '^probe' | head -20
  } >"$SUMMARY"
}

run() {  # run LABEL LIMIT CMD...: output to the log, labelled
  local label=$1 limit=$2
  shift 2
  log "== $label: $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | sed "s/^/$label: /" >>"$LOG"
  summarize
}
# The persistent kernel first (what the next decisions hang on; the
# summary is rewritten after every step, so a run cut short by the device
# session keeps it): its op tests (the 4B's shapes: plain products, a
# delta-net tail, the delta rule and the attention between their
# projections, slice waits) against kernel 3, delta_net, attention_fused
# and the CPU; then a whole step's NVFP4 products as one launch.
run "persist tests" 180 env QWEN35_FIXTURES="${QWEN35_FIXTURES:-$ROOT/.gpu/fixtures}" "$BIN/test_cuda_ops" \
  -tc="*persistent NVFP4*" --duration=true
run "persist bench" 120 "$BIN/qwen35-persist-bench"
run "matvec n=1" 120 "$BIN/qwen35-matvec-bench"

[ -n "$SYNTH_PID" ] && wait "$SYNTH_PID"
if [ -s "$M4" ]; then
  # The 4B once per ENV_SETTINGS argument, checked against the CPU.
  i=0
  for settings in "$@"; do
    i=$((i + 1))
    # shellcheck disable=SC2086  # (a list of VAR=value words)
    run "bench $i ($settings)" 120 env $settings "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 128 --device cuda \
      --json --check 6
  done
  # The persistent kernel's own timeline of a step (per stage kind and
  # shape: the wait for the stage before, the span; steps without graphs),
  # with whole-stage waits and with the stages waiting by column slice
  # (negative waits: how far a stage's units start before the stage before
  # is done).
  run "timeline persist" 90 env QWEN35_CUDA_FP4_PERSIST=4 QWEN35_CUDA_FP4_PERSIST_TIMELINE=1 \
    "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 16 --device cuda
  run "timeline persist slices" 90 env QWEN35_CUDA_FP4_PERSIST=4 QWEN35_CUDA_FP4_PERSIST_SLICES=1 \
    QWEN35_CUDA_FP4_PERSIST_TIMELINE=1 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 16 --device cuda
  run "bench defaults" 180 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 128 --device cuda --json --check 6 --sweep
  # The decode timeline with a step's layers in one persistent launch
  # (CUPTI: each launch's share of a step).
  run "trace persist" 90 env QWEN35_CUDA_FP4_PERSIST=4 "$BIN/qwen35-cuda-bench" -m "$M4" -p 512 -n 32 --device cuda \
    --trace decode
else
  log "no 4B file: $(tail -3 "$WORK/synth.log" 2>/dev/null)"
fi

# The kernels alone, if time is left: a persistent grid streaming a whole
# step's weights across dependent stages against separate launches
# (tests/gpu/stream_probe.cu); kernel 3's geometries; without PDL; its
# timing probes (wrong results, so over the bar): without the arithmetic
# (1), the activation load (2), the combine and stores (4), all (7).
run "stream probe" 60 "$BIN/qwen35-stream-probe"
run "sweep n=1" 120 "$BIN/qwen35-matvec-bench" --types NVFP4 --fp4-sweep
run "sweep n=2" 120 "$BIN/qwen35-matvec-bench" --types NVFP4 --fp4-sweep --n 2
run "no PDL n=1" 60 env QWEN35_CUDA_PDL=0 "$BIN/qwen35-matvec-bench" --types NVFP4
for probe in 1 2 4 7; do
  run "probe $probe n=1" 60 env QWEN35_CUDA_FP4_PROBE=$probe "$BIN/qwen35-matvec-bench" --types NVFP4
done

summarize
cat "$SUMMARY"
