#!/usr/bin/env bash
# The GPU check's results section, rehearsed on the host emulator. .ci/run rehearses
# scripts/gpu_check.sh where no GPU answers, so every step reports itself skipped and the code
# that reads the benchmarks' output (the RESULT rows, the GEMMS lines, the floor at the measured
# GEMM rate, the per-phase table of bench/step_traffic.py) would first run on a GPU machine,
# where a broken parse costs a session's device time. Here the check's bench part runs against
# a kit whose two benchmarks are the emulated ones at --tiny size (one step, no warm-up), and the
# output must hold every part of the results. Timings are meaningless; the format is checked.
#   gpu_check_rehearsal.sh SOURCE_DIR GPU_BENCH_EMU GPU_TRAIN_BENCH_EMU WORK_DIR
set -euo pipefail
if [[ $# -ne 4 ]]; then
  echo "usage: $0 SOURCE_DIR GPU_BENCH_EMU GPU_TRAIN_BENCH_EMU WORK_DIR" >&2
  exit 2
fi
src=$1 gpu_bench=$2 gpu_train_bench=$3 work=$4
rm -rf "$work"
mkdir -p "$work/bench"
printf '#!/bin/sh\nexec "%s" --tiny\n' "$gpu_bench" >"$work/bench/gpu_bench"
printf '#!/bin/sh\nexec "%s" --tiny "$@" --steps 1 --warmup 0\n' "$gpu_train_bench" \
  >"$work/bench/gpu_train_bench"
chmod +x "$work/bench/gpu_bench" "$work/bench/gpu_train_bench"

log=$work/check.log
rc=0
env -u SEQREC_DATA bash "$src/scripts/gpu_check.sh" "$work" bench >"$log" 2>&1 || rc=$?
cat "$log"
echo
echo "== rehearsal checks"
failed=0
expect() {  # expect DESCRIPTION COUNT-WANTED EXTENDED-REGEX
  local n
  n=$(grep -cE -- "$3" "$log" || true)
  if [[ $n -eq $2 ]]; then
    echo "ok: $1 ($n)"
  else
    echo "FAILED: $1: $n lines match '$3', expected $2"
    failed=1
  fi
}
if [[ $rc -ne 0 ]]; then
  echo "FAILED: gpu_check.sh exited $rc (0 expected: every benchmark ran)"
  failed=1
fi
expect "every benchmark step passed" 9 '^   gpu_(train_)?bench.* passed +[0-9]+ s$'
expect "one training row per run" 8 '^\| seqrec host emulator \(not a GPU\) \| (fp32|bf16)[^|]* \|'
expect "the GEMM time of both profiled runs" 2 '^   gpu_train_bench_(fp32|bf16): [0-9.]+ calls/step'
expect "the floor at the measured GEMM rate" 1 '^   model FLOPs .* at the floor: .* MFU '
expect "the per-phase table's header" 1 '^   \| phase \| ms \| GEMM ms \| GEMM GFLOP \(counted\) \|'
expect "the per-phase table's total" 1 '^   \| \*\*counted phases\*\* \|'
expect "the GEMM count checked against the code" 1 "^   every phase's GEMM GFLOP match the count"
exit $failed
