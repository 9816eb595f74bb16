#!/usr/bin/env bash
# The GPU check, run on a machine with a GPU from the repository root, with a build folder that
# was configured and built elsewhere (it rebuilds nothing: the GPU machine has cmake but none of
# the Debian packages the build needs):
#   bash scripts/gpu_check.sh [build-dir]        (default build-cuda)
# Steps: print the card (nvidia-smi -L), run every CUDA test (ctest -L cuda; when the build folder
# was made at another path, ctest's absolute paths do not resolve here, so the test executables
# are run directly instead), then the GPU benchmark table. A failing step is reported and the
# next one still runs. Exit status: 0 all good (or skipped: no GPU), 1 a test failed, 2 only the
# benchmark failed.
set -u
cd "$(dirname "$0")/.."
build="${1:-build-cuda}"
tests_failed=0
bench_failed=0
summary=()

section() { printf '\n== %s\n' "$*"; }

# Names the missing shared libraries when an executable cannot start (exit 127).
explain_start_failure() {
  echo "   could not start $1; unresolved libraries:"
  ldd "$1" 2>&1 | grep -i 'not found' | sed 's/^/     /' || true
}

if [[ ! -d "$build" ]]; then
  echo "gpu_check: build folder '$build' not found (build it first: cmake --build $build --target test_cuda_ops gpu_bench)"
  exit 1
fi
build_abs="$(cd "$build" && pwd)"

section "device"
nvidia-smi -L
rc=$?
if [[ $rc -ne 0 ]]; then
  echo "   nvidia-smi -L failed (rc $rc); continuing"
  summary+=("device: nvidia-smi failed")
fi

section "CUDA tests"
if grep -qsF "$build_abs/tests" "$build/tests/CTestTestfile.cmake"; then
  out="$(mktemp)"
  timeout 240 ctest --test-dir "$build" -L cuda --output-on-failure -V 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  if grep -q 'No tests were found' "$out"; then
    echo "   ctest found no CUDA tests in $build (was it configured with nvcc?)"
    tests_failed=1
    summary+=("tests: none found")
  elif [[ $rc -ne 0 ]]; then
    tests_failed=1
    summary+=("tests: FAILED (ctest rc $rc)")
  elif grep -q 'Skipped' "$out" && ! grep -q 'Passed' "$out"; then
    summary+=("tests: skipped (no GPU answered)")
  else
    summary+=("tests: passed")
  fi
  rm -f "$out"
else
  echo "   $build was configured at another path; running the CUDA test executables directly"
  found=0
  for exe in "$build"/tests/test_cuda*; do
    [[ -x "$exe" && -f "$exe" ]] || continue
    found=1
    echo "-- $exe"
    timeout 240 "$exe"
    rc=$?
    case $rc in
      0) summary+=("$(basename "$exe"): passed") ;;
      77) summary+=("$(basename "$exe"): skipped (no GPU answered)") ;;
      127) explain_start_failure "$exe"; tests_failed=1; summary+=("$(basename "$exe"): could not start") ;;
      124) tests_failed=1; summary+=("$(basename "$exe"): TIMED OUT (240 s)") ;;
      *) tests_failed=1; summary+=("$(basename "$exe"): FAILED (rc $rc)") ;;
    esac
  done
  if [[ $found -eq 0 ]]; then
    echo "   no test_cuda* executables in $build/tests"
    tests_failed=1
    summary+=("tests: none built")
  fi
fi

section "GPU benchmark"
bench="$build/bench/gpu_bench"
if [[ -x "$bench" ]]; then
  timeout 240 "$bench"
  rc=$?
  case $rc in
    0) summary+=("bench: done") ;;
    77) summary+=("bench: skipped (no GPU answered)") ;;
    127) explain_start_failure "$bench"; bench_failed=1; summary+=("bench: could not start") ;;
    124) bench_failed=1; summary+=("bench: TIMED OUT (240 s)") ;;
    *) bench_failed=1; summary+=("bench: FAILED (rc $rc)") ;;
  esac
else
  echo "   $bench not built"
  bench_failed=1
  summary+=("bench: not built")
fi

section "GPU training benchmark (study config)"
# SEQREC_DATA: a folder with interactions.tsv (e.g. amazon18_games copied next to the build) for
# a timed real epoch; without it only synthetic batches are timed.
train_bench="$build/bench/gpu_train_bench"
if [[ -x "$train_bench" ]]; then
  timeout 240 "$train_bench" ${SEQREC_DATA:+--data "$SEQREC_DATA"}
  rc=$?
  case $rc in
    0) summary+=("train bench: done") ;;
    77) summary+=("train bench: skipped (no GPU answered)") ;;
    127) explain_start_failure "$train_bench"; bench_failed=1; summary+=("train bench: could not start") ;;
    124) bench_failed=1; summary+=("train bench: TIMED OUT (240 s)") ;;
    *) bench_failed=1; summary+=("train bench: FAILED (rc $rc)") ;;
  esac
else
  echo "   $train_bench not built"
  bench_failed=1
  summary+=("train bench: not built")
fi

section "summary"
for line in "${summary[@]}"; do echo "   $line"; done
if [[ $tests_failed -ne 0 ]]; then exit 1; fi
if [[ $bench_failed -ne 0 ]]; then exit 2; fi
exit 0
