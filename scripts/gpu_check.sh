#!/usr/bin/env bash
# The GPU check, run on a machine with a GPU from the repository root, with a kit folder that
# scripts/prepare_gpu_check.sh built and assembled elsewhere (it rebuilds nothing: the GPU machine
# has cmake but none of the Debian packages the build needs; the kit's lib/ holds the shared
# libraries it lacks, put on LD_LIBRARY_PATH here). A full build folder works too.
#   bash scripts/gpu_check.sh [kit-dir [all|tests|bench]]     (default build-gpu-kit, all)
# Steps: print the card (nvidia-smi -L); run every CUDA test executable (tests/test_cuda*: the
# .cu op and model tests and the host-compiled trainer test); the trainer binaries end to end
# with --device cuda on the embedded dataset (train_ours in bf16, then dpo_finetune on its
# checkpoint); the op benchmark table; the training benchmark at the study's config in fp32 and
# in bf16, each with a per-phase step profile that also times every GEMM alone (SEQREC_DATA: a
# folder with interactions.tsv, e.g. amazon18_games carried next to the build, adds a timed real
# epoch), then bf16 six more times as A/B rows: with fp32 activations (the storage), with fp32
# GEMM outputs, without the weights' bf16 mirror, with every gradient zeroed eagerly, with the
# dW GEMMs on a second stream, and with GEMM autotuning; last, the PyTorch
# reference on the same card at the study's dims, eager and compiled (needs torch and
# SEQREC_DATA). A failing step is reported and the next one still runs; a summary of the steps
# and the results close the output: the op benchmark's rows, one row per training benchmark run,
# and each profiled run's GEMM time with the MFU its GEMMs alone would allow, then the floor
# bench/step_traffic.py gives a bf16 step at the GEMM rate measured, and each phase of the bf16
# profile against its own floor (its GEMMs' rate, the rest's bandwidth and excess).
# Exit status: 0 all good (or skipped: no GPU), 1 a test failed, 2 only a benchmark failed.
# Environment: SEQREC_GPU_STEP_TIMEOUT (seconds per step, default 240).
# A second argument runs a part only: "tests" (the CUDA tests and the trainer binaries) or
# "bench" (the benchmarks and the PyTorch reference); default "all". Two calls then fit a
# per-command time limit that the whole check might not.
set -u
cd "$(dirname "$0")/.."
build="${1:-build-gpu-kit}"
part="${2:-all}"
case $part in
  all | tests | bench) ;;
  *) echo "gpu_check: the part must be all, tests or bench, got '$part'" >&2; exit 1 ;;
esac
want() { [[ $part == all || $part == "$1" ]]; }
step_timeout="${SEQREC_GPU_STEP_TIMEOUT:-240}"
tests_failed=0
bench_failed=0
summary=()
logs="$(mktemp -d)"  # each step's output, for the results table
trap 'rm -rf "$logs"' EXIT

section() { printf '\n== %s\n' "$*"; }

# run_step KIND LABEL EXE [ARGS...]: runs EXE with a timeout and records one summary line.
# KIND is "test" (a failure fails the check) or "bench" (a failure gives exit 2).
run_step() {
  local kind="$1" label="$2" exe="$3"
  shift 3
  if [[ ! -x "$exe" ]]; then
    echo "   $exe not built"
    summary+=("$label: NOT BUILT")
    if [[ $kind == test ]]; then tests_failed=1; else bench_failed=1; fi
    return
  fi
  echo "-- $exe $*"
  local t0=$SECONDS
  timeout "$step_timeout" "$exe" "$@" 2>&1 | tee "$logs/$(printf '%s' "$label" | tr -c 'A-Za-z0-9' _).log"
  local rc=${PIPESTATUS[0]} secs=$((SECONDS - t0)) verdict
  case $rc in
    0) verdict="passed" ;;
    77) verdict="skipped (no GPU answered)" ;;
    127)
      echo "   could not start $exe; unresolved libraries:"
      ldd "$exe" 2>&1 | grep -i 'not found' | sed 's/^/     /' || true
      verdict="COULD NOT START" ;;
    124) verdict="TIMED OUT (${step_timeout} s)" ;;
    *) verdict="FAILED (rc $rc)" ;;
  esac
  if [[ $rc -ne 0 && $rc -ne 77 ]]; then
    if [[ $kind == test ]]; then tests_failed=1; else bench_failed=1; fi
  fi
  summary+=("$(printf '%-34s %-28s %4d s' "$label" "$verdict" "$secs")")
}

if [[ ! -d "$build" ]]; then
  echo "gpu_check: build folder '$build' not found (build it first; see the README's GPU section)"
  exit 1
fi
# The kit's shared libraries (prepare_gpu_check.sh copies those the GPU machine lacks).
if [[ -d "$build/lib" ]]; then
  export LD_LIBRARY_PATH="$(cd "$build/lib" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# NCCL, which the CUDA model loads at run time for multi-GPU runs (dist/nccl.hpp; test_cuda_nccl
# runs a group of one GPU). The kit does not carry it (218 MB): use the loader's libnccl.so.2, or
# else one that pip installed with PyTorch, or one in the CUDA folders.
if [[ -z "${SEQREC_NCCL_LIBRARY:-}" ]] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2 '; then
  for cand in \
    $("${SEQREC_TORCH_PYTHON:-python3}" -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null) \
    /usr/local/cuda/lib64/libnccl.so.2 /usr/local/cuda/lib/libnccl.so.2 \
    /usr/lib/x86_64-linux-gnu/libnccl.so.2; do
    if [[ -f "$cand" ]]; then
      export SEQREC_NCCL_LIBRARY="$cand"
      break
    fi
  done
fi
echo "NCCL: ${SEQREC_NCCL_LIBRARY:-libnccl.so.2 on the loader search path}"

section "device"
have_gpu=1
if ! nvidia-smi -L; then
  echo "   nvidia-smi -L failed; continuing (the trainer binaries will be skipped)"
  summary+=("device: nvidia-smi failed")
  have_gpu=0
fi

if want tests; then
section "CUDA tests"
found=0
for exe in "$build"/tests/test_cuda*; do
  [[ -x "$exe" && -f "$exe" ]] || continue
  found=1
  run_step test "$(basename "$exe")" "$exe"
done
if [[ $found -eq 0 ]]; then
  echo "   no test_cuda* executables in $build/tests"
  tests_failed=1
  summary+=("tests: none built")
fi

section "trainer binaries on the GPU (embedded dataset): train_ours, then DPO on its checkpoint"
# The test and bench executables report "skipped" themselves; the trainers would just fail.
tmp_ck="$(mktemp -d)"
if [[ $have_gpu -eq 0 ]]; then
  summary+=("$(printf '%-34s %-28s' "trainer binaries" "skipped (no GPU answered)")")
else
run_step test "train_ours --device cuda --bf16" "$build/examples/train_ours" --device cuda --bf16 \
  --epochs 3 --stage1-epochs 1 --dim 64 --heads 2 --layers 2 --max-len 20 --no-progress \
  --checkpoint "$tmp_ck/ours.safetensors"
run_step test "dpo_finetune --device cuda" "$build/examples/dpo_finetune" --device cuda \
  --init-checkpoint "$tmp_ck/ours.safetensors" --negatives 3 --ce-weight 1 --no-progress
fi
rm -rf "$tmp_ck"
fi

if want bench; then
section "GPU op benchmark"
run_step bench "gpu_bench" "$build/bench/gpu_bench"

section "GPU training benchmark (study config), fp32 then bf16"
data_args=()
[[ -n "${SEQREC_DATA:-}" ]] && data_args=(--data "$SEQREC_DATA")
run_step bench "gpu_train_bench fp32" "$build/bench/gpu_train_bench" "${data_args[@]}"
run_step bench "gpu_train_bench bf16" "$build/bench/gpu_train_bench" --bf16 "${data_args[@]}"
# A/B of the bf16 activation storage (same bits, different memory traffic): synthetic part only.
run_step bench "gpu_train_bench bf16, fp32 acts" "$build/bench/gpu_train_bench" --bf16 \
  --fp32-activations --steps 20 --profile 0
# A/B of the bf16 qkv, fc1, d(act) (ninth session), logits (tenth) and branch (eleventh: out
# linear, fc2) GEMM outputs (one more rounding each).
run_step bench "gpu_train_bench bf16, fp32 outs" "$build/bench/gpu_train_bench" --bf16 \
  --fp32-gemm-outputs --steps 20 --profile 0
# A/B of the weights' bf16 mirror (tenth session; the same bits, one cast pass per step less).
run_step bench "gpu_train_bench bf16, no mirror" "$build/bench/gpu_train_bench" --bf16 \
  --no-bf16-mirrors --steps 20 --profile 0
# A/B of the lazy gradient zeroing (eleventh session; the same values, the weights' zeros left
# to their dW GEMMs instead of a memset).
run_step bench "gpu_train_bench bf16, eager zero" "$build/bench/gpu_train_bench" --bf16 \
  --eager-zero-grads --steps 20 --profile 0
# A/B of the dW GEMMs on a second stream (eleventh session; off by default: an experiment).
run_step bench "gpu_train_bench bf16, dW overlap" "$build/bench/gpu_train_bench" --bf16 \
  --overlap-dw --steps 20 --profile 0
# A/B of GEMM autotuning (ninth session; off by default: it costs run-to-run reproducibility).
run_step bench "gpu_train_bench bf16, autotune" "$build/bench/gpu_train_bench" --bf16 \
  --autotune --steps 20 --profile 0


section "PyTorch reference on the same card (bench/reference/sasrec_torch.py, Games, study dims)"
# The same-run reference the training table is read against: PyTorch's SASRec (learned
# positions, RMSNorm, ReLU MLP: the study config's FLOPs up to the position table) at d 1024,
# 5 layers, 8 heads, FFN 4096, L 20, batch 1024, dropout 0.1, bf16 autocast, one timed epoch of
# the same holdout split (after an untimed warm-up), eager, then torch.compile. Needs a Python
# with torch that sees the GPU ($SEQREC_TORCH_PYTHON, default python3) and SEQREC_DATA.
torch_py="$(command -v "${SEQREC_TORCH_PYTHON:-python3}" || true)"
if [[ -z "${SEQREC_DATA:-}" ]]; then
  summary+=("$(printf '%-34s %-28s' "pytorch reference" "skipped (no SEQREC_DATA)")")
elif [[ -z $torch_py ]] || ! "$torch_py" -c \
    'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  summary+=("$(printf '%-34s %-28s' "pytorch reference" "skipped (no torch with CUDA)")")
else
  for mode in eager compile; do
    run_step bench "pytorch $mode bf16" "$torch_py" bench/reference/sasrec_torch.py \
      --data "$SEQREC_DATA" --protocol holdout --max-len 20 --dim 1024 --layers 5 --heads 8 \
      --ffn-dim 4096 --dropout 0.1 --batch 1024 --lr 5e-4 --epochs 1 --eval-every 0 \
      --device cuda --bf16 --out "$logs/torch_$mode.json" \
      $([[ $mode == compile ]] && echo --compile)
  done
fi

fi

section "summary"
for line in "${summary[@]}"; do echo "   $line"; done

section "results"
echo "ops (gpu_bench; % of the H100 SXM peak: fp32 rows of 67 TFLOP/s or 3.35 TB/s, bf16 rows of 989 TFLOP/s):"
grep -h '^|' "$logs"/gpu_bench.log 2>/dev/null || echo "   (none: gpu_bench did not run)"
echo
echo "training, study config (gpu_train_bench; MFU against the precision's peak; DPO: one pair"
echo "per row, K = 1; epoch: Games holdout train split, batch 1024):"
echo "| card | precision | ms/step | tokens/s | MFU | HFU | peak GiB | DPO ms/step | s/epoch | 12 epochs s |"
echo "|---|---|---|---|---|---|---|---|---|---|"
if grep -qh '^RESULT ' "$logs"/gpu_train_bench*.log 2>/dev/null; then
  grep -h '^RESULT ' "$logs"/gpu_train_bench*.log | sed 's/^RESULT //'
else
  echo "   (none: no training benchmark ran)"
fi
echo
echo "GEMM time in the profiled steps (gpu_train_bench --profile: each cuBLASLt call timed alone;"
echo "the last figure is the MFU the step would reach if everything but its GEMMs took no time):"
gemm_lines=0
for f in "$logs"/gpu_train_bench*.log; do
  [[ -f $f ]] || continue
  line="$(grep -h '^GEMMS ' "$f" || true)"
  [[ -n $line ]] || continue
  echo "   $(basename "$f" .log): ${line#GEMMS | }"
  gemm_lines=1
done
[[ $gemm_lines -eq 1 ]] || echo "   (none: no profiled training benchmark ran)"
# Whether cuBLASLt fused every bias (a bf16 C with an fp32 bias may have no algorithm; each
# miss costs a pass), how many weight operands the bf16 mirror served, and how many dW GEMMs
# took over a gradient's zeroing, per run.
for f in "$logs"/gpu_train_bench*.log; do
  [[ -f $f ]] || continue
  grep -h -e '^bias epilogue:' -e '^bf16 weight mirror:' -e '^lazy zero_grads:' -e '^dW overlap:' "$f" | sed "s|^|   $(basename "$f" .log): |"
done
# The design's floor at the GEMM rate the bf16 profile measured (bench/step_traffic.py: every
# other kernel at 3.0 TB/s), to read the measured step against.
bf16_rate="$(grep -h '^GEMMS ' "$logs/gpu_train_bench_bf16.log" 2>/dev/null |
  awk -F'|' '{split($4, a, " "); print a[1]}' || true)"
if [[ -n $bf16_rate ]] && awk -v r="$bf16_rate" 'BEGIN { exit !(r + 0 > 0) }' &&
  command -v python3 >/dev/null; then
  echo
  echo "the floor of a bf16 step at that GEMM rate, and each profiled phase against its floor"
  echo "(python3 bench/step_traffic.py --gemm-tflops $bf16_rate --profile <the bf16 log>):"
  python3 bench/step_traffic.py --gemm-tflops "$bf16_rate" --profile "$logs/gpu_train_bench_bf16.log" |
    sed -n '/^model FLOPs/,$p' | sed 's/^/   /'
fi
if compgen -G "$logs/torch_*.json" >/dev/null; then
  echo
  echo "PyTorch reference, same card (one epoch of the same split after an untimed warm-up):"
  echo "| implementation | s/epoch | tokens/s | 12 epochs s | peak GiB (torch allocator) |"
  echo "|---|---|---|---|---|"
  for js in "$logs"/torch_*.json; do
    "$torch_py" - "$js" <<'PY' || echo "   (could not read $js)"
import json, sys
r = json.load(open(sys.argv[1]))
s = r["seconds_per_epoch"]
name = f'{r["implementation"]} ({r["device_name"]}, torch {r["torch"]})'
print(f'| {name} | {s:.2f} | {r["train_tokens_per_second"]:.0f} | {12 * s:.1f} | '
      f'{r["peak_memory_bytes"] / 2**30:.2f} |')
PY
  done
fi
if [[ $tests_failed -ne 0 ]]; then exit 1; fi
if [[ $bench_failed -ne 0 ]]; then exit 2; fi
exit 0
