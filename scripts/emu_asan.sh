#!/usr/bin/env bash
# The CUDA tests on the host emulator under AddressSanitizer: a kernel that reads or writes past
# a device buffer fails here with the kernel's source line (the emulator sizes every device
# allocation exactly and tells ASan of its fiber switches; see tests/emu). Not part of CI (about
# 3x the emulated tests' time); run it after changing a kernel. Builds into build-asan/.
#   usage: scripts/emu_asan.sh [ctest -R regex]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
asan="-fsanitize=address -fno-omit-frame-pointer"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSEQREC_CUDA=ON \
  -DSEQREC_BUILD_BENCH=OFF "-DCMAKE_CXX_FLAGS=$asan" "-DCMAKE_EXE_LINKER_FLAGS=$asan" \
  "-DCMAKE_SHARED_LINKER_FLAGS=$asan" "-DCMAKE_MODULE_LINKER_FLAGS=$asan" >/dev/null
# Only what the cuda-emu tests run (the nvcc targets are not needed here).
targets="emu_selftest cublaslt_emu_selftest seqrec_cuda_emu_plugin train_ours dpo_finetune"
targets+=" gpu_bench_emu gpu_train_bench_emu"  # the GPU check's benchmarks, --tiny
for f in tests/cuda/*.cu tests/cuda/*.cpp; do
  n=$(basename "${f%.*}")
  targets+=" ${n}_emu"
done
ninja -C build-asan $targets
ctest --test-dir build-asan -L cuda-emu --output-on-failure -j "$(nproc)" ${1:+-R "$1"}
