#!/usr/bin/env bash
# Prepares the GPU check on this (GPU-less) machine: configures and builds every target the check
# runs (the `gpu_check` target: CUDA tests, GPU benchmarks, train_ours) for sm_90 into a build
# folder, and copies the Games interactions next to it so that the folder alone travels to the
# GPU machine. Then, there: SEQREC_DATA=<build>/data/amazon18_games bash scripts/gpu_check.sh <build>
#   bash scripts/prepare_gpu_check.sh [build-dir]      (default build-cuda)
# Rehearse it here: the check itself then reports every step as skipped (no GPU answers).
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-cuda}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
# gpu_check.sh runs every tests/test_cuda* it finds: drop executables of tests that no longer
# exist (renamed or removed sources) so that a stale binary cannot run there. The build relinks
# the current ones.
rm -f "$build"/tests/test_cuda*
cmake --build "$build" --target gpu_check -j "$(nproc)"
src=../shared/data/amazon18_games/interactions.tsv
if [[ -f $src ]]; then
  mkdir -p "$build/data/amazon18_games"
  cp "$src" "$build/data/amazon18_games/interactions.tsv"
  echo "copied $src into $build/data/amazon18_games (derived build data: never commit it)"
else
  echo "note: $src absent; the check will time synthetic batches only"
fi
du -sh "$build"
