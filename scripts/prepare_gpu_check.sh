#!/usr/bin/env bash
# Prepares the GPU check on this (GPU-less) machine: configures and builds every target the check
# runs (the `gpu_check` target: CUDA tests, GPU benchmarks, train_ours, dpo_finetune, the CUDA
# plugin) for sm_90 into a build folder, then assembles a kit folder with only what the check runs
# — those executables, the plugin, the shared libraries they need that the GPU machine lacks (it
# has the CUDA runtime but none of Debian's packages: libfmt, libgomp, …) and the Games
# interactions — small enough to carry (the build folder with its objects is not). Then, there:
#   SEQREC_DATA=<kit>/data/amazon18_games bash scripts/gpu_check.sh <kit>
#   bash scripts/prepare_gpu_check.sh [build-dir [kit-dir]]   (defaults build-cuda, build-gpu-kit)
# Rehearse it here: the check itself then reports every step as skipped (no GPU answers).
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-cuda}"
kit="${2:-build-gpu-kit}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
# gpu_check.sh runs every tests/test_cuda* it finds: drop executables of tests that no longer
# exist (renamed or removed sources) so that a stale binary cannot run there. The build relinks
# the current ones.
rm -f "$build"/tests/test_cuda*
cmake --build "$build" --target gpu_check -j "$(nproc)"

rm -rf "$kit"
mkdir -p "$kit/tests" "$kit/bench" "$kit/examples" "$kit/lib"
cp "$build"/tests/test_cuda* "$kit/tests/"
cp "$build/bench/gpu_bench" "$build/bench/gpu_train_bench" "$kit/bench/"
cp "$build/examples/train_ours" "$build/examples/train_ours_random" "$build/examples/dpo_finetune" \
  "$kit/examples/"
# One folder above the trainers and tests, where they look for it (model/device_plugin.hpp).
cp "$build/libseqrec_cuda_plugin.so" "$kit/"
# Shared libraries outside the CUDA toolkit and the C/C++ runtime (which the GPU machine has: the
# first run there used its libstdc++), copied so that gpu_check.sh can put them on
# LD_LIBRARY_PATH.
for f in "$kit"/tests/* "$kit"/bench/* "$kit"/examples/* "$kit/libseqrec_cuda_plugin.so"; do
  ldd "$f"
done | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u | while read -r name path; do
  case "$name" in
    libcuda* | libcublas* | libnccl* | libc.so* | libm.so* | libstdc++* | libgcc_s* | \
      libpthread* | libdl.so* | librt.so* | ld-linux*) ;;
    *)
      cp -L "$path" "$kit/lib/$name"
      echo "kit: $name (from $path)"
      ;;
  esac
done
src=../shared/data/amazon18_games/interactions.tsv
if [[ -f $src ]]; then
  mkdir -p "$kit/data/amazon18_games"
  cp "$src" "$kit/data/amazon18_games/interactions.tsv"
  echo "copied $src into $kit/data/amazon18_games (derived build data: never commit it)"
else
  echo "note: $src absent; the check will time synthetic batches only"
fi
# The Games title embeddings for scripts/gpu_study.sh's title-init run, when they were made here
# (tools/embed_titles.py into the ignored cache/; derived data, never committed).
emb=cache/embeddings/games_minilm
if [[ -f $emb.npy && -f $emb.ids.txt ]]; then
  mkdir -p "$kit/data"
  cp "$emb.npy" "$emb.ids.txt" "$kit/data/"
  echo "copied $emb.{npy,ids.txt} into $kit/data (for SEQREC_EMB=$kit/data/games_minilm)"
fi
du -sh "$kit"
