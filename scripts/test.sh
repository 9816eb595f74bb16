#!/usr/bin/env bash
# The test command (CI runs exactly this): install what is missing, build every target — tests,
# examples, benchmarks and the CUDA targets (when nvcc is present; they compile here and report
# themselves skipped when no GPU answers) — then run the whole suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"
