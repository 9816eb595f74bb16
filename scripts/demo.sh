#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build the trainer, train SASRec on the
# embedded synthetic dataset (generated in code, no download), evaluate it over the full catalogue
# and print the metrics table. Extra arguments go to train_sasrec (see train_sasrec --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target train_sasrec
mkdir -p cache
./build/examples/train_sasrec --epochs 20 --metrics-json cache/demo_metrics.json "$@"
echo "metrics written to cache/demo_metrics.json"
