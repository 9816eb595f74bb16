#!/usr/bin/env bash
# Packaging check (CI runs it after scripts/test.sh): install seqrec to a prefix, build and run
# examples/consumer against that prefix with plain CMake, check find_package(seqrec COMPONENTS
# cuda) when nvcc is present, then `conan create conan/` offline in a private CONAN_HOME.
# Everything goes under build-package/ (ignored by git); the user's ~/.conan2 is never touched.
# Idempotent; prints a summary; exits non-zero on the first failure, with that step's log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/build-package
PREFIX=$OUT/prefix
LOGS=$OUT/logs
mkdir -p "$OUT" "$LOGS"

# Shared machines: the whole check runs under one build lock (one wait, not one per compile)
# and with at most 2 jobs.
JOBS=${SEQREC_PACKAGE_JOBS:-2}
if [ -z "${SEQREC_PACKAGE_LOCKED:-}" ] && command -v flock >/dev/null; then
  export SEQREC_PACKAGE_LOCKED=$(date +%s)
  exec flock "${SEQREC_BUILD_LOCK:-/tmp/seqrec-build.lock}" bash "$ROOT/scripts/package_check.sh" "$@"
fi
lock_wait=$(($(date +%s) - ${SEQREC_PACKAGE_LOCKED:-$(date +%s)}))

bash scripts/install_deps.sh

GEN=()
if command -v ninja >/dev/null; then GEN=(-G Ninja); fi
if command -v ccache >/dev/null; then
  export CMAKE_CXX_COMPILER_LAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER:-ccache}  # read by CMake >= 3.17
fi

summary=()
step() {  # step NAME CMD...: runs CMD (errexit on) with its output in $LOGS/NAME.log
  local name=$1 t0=$SECONDS rc
  shift
  set +e
  (set -e; "$@") >"$LOGS/$name.log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "package_check: step '$name' FAILED (exit $rc); last lines of $LOGS/$name.log:" >&2
    tail -n 60 "$LOGS/$name.log" >&2
    exit "$rc"
  fi
  summary+=("$(printf '  %-16s ok %4d s' "$name" $((SECONDS - t0)))")
}

# ---- conan: Conan 2 from PyPI when missing ----------------------------------------------------
find_conan() {
  if [ -x "$OUT/conan-venv/bin/conan" ]; then CONAN=$OUT/conan-venv/bin/conan; return 0; fi
  if command -v conan >/dev/null && conan --version 2>/dev/null | grep -q 'version 2\.'; then
    CONAN=$(command -v conan)
    return 0
  fi
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
  if [ -n "$scripts" ] && [ -x "$scripts/conan" ]; then CONAN=$scripts/conan; return 0; fi
  return 1
}
install_conan() {
  # pip into the current Python; where that is refused (PEP 668 system Python), a private venv.
  python3 -m pip install -q --disable-pip-version-check "conan>=2.0,<3" && find_conan && return 0
  python3 -m venv "$OUT/conan-venv" &&
    "$OUT/conan-venv/bin/pip" install -q --disable-pip-version-check "conan>=2.0,<3" && find_conan
}
CONAN=""
find_conan || step conan-install install_conan
find_conan || { echo "package_check: no Conan 2 after installing it" >&2; exit 1; }

# ---- 1. install to a prefix -------------------------------------------------------------------
configure_install() {
  rm -rf "$PREFIX"
  cmake -S . -B "$OUT/seqrec" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DSEQREC_BUILD_TESTS=OFF \
    -DSEQREC_BUILD_EXAMPLES=OFF -DSEQREC_BUILD_BENCH=OFF -DSEQREC_CUDA=OFF \
    -DCMAKE_INSTALL_PREFIX="$PREFIX"
  cmake --install "$OUT/seqrec"
  test -f "$PREFIX/include/seqrec/model.hpp"
  test -f "$PREFIX/share/cmake/seqrec/seqrecConfig.cmake"
  test -f "$PREFIX/share/cmake/seqrec/seqrecConfigVersion.cmake"
}
step install configure_install

# ---- 2. the out-of-tree consumer, plain CMake against the prefix ------------------------------
build_consumer() {  # build_consumer BUILD_DIR TARGET [cmake args...]
  local dir=$1 target=$2
  shift 2
  cmake --fresh -S examples/consumer -B "$dir" "${GEN[@]}" -DCMAKE_PREFIX_PATH="$PREFIX" "$@"
  # It must have found the installed package, not anything else.
  grep -qx "seqrec_DIR:PATH=$PREFIX/share/cmake/seqrec" "$dir/CMakeCache.txt"
  cmake --build "$dir" --target "$target" -j "$JOBS"
}
step consumer-build build_consumer "$OUT/consumer" seqrec_consumer
step consumer-run "$OUT/consumer/seqrec_consumer"
consumer_line=$(grep 'consumer:' "$LOGS/consumer-run.log" || true)

# ---- 3. find_package(seqrec COMPONENTS cuda) when nvcc exists ---------------------------------
cuda_line="  cuda component: skipped (no nvcc)"
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
  step cuda-component build_consumer "$OUT/consumer-cuda" seqrec_cuda_probe -DSEQREC_CONSUMER_CUDA=ON
  step cuda-probe "$OUT/consumer-cuda/seqrec_cuda_probe"
  cuda_line=""
fi

# ---- 4. conan create, offline, in a private CONAN_HOME ----------------------------------------
export CONAN_HOME=$OUT/conan-home
conan_create() {
  "$CONAN" profile detect --exist-ok
  # No remote at all: nothing can be fetched, so the recipe must build from this tree alone.
  if "$CONAN" remote list 2>/dev/null | grep -q '^conancenter'; then
    "$CONAN" remote remove conancenter
  fi
  local conf=(-c tools.build:jobs="$JOBS"
    -c "tools.cmake.cmake_layout:test_folder=$OUT/conan-test"  # keep conan/test_package clean
    -c "tools.cmake.cmaketoolchain:user_presets=")
  if command -v ninja >/dev/null; then conf+=(-c tools.cmake.cmaketoolchain:generator=Ninja); fi
  "$CONAN" create conan/ -s compiler.cppstd=20 -s build_type=Release \
    --build=missing --no-remote "${conf[@]}"
  "$CONAN" remove 'seqrec/*#!latest' --confirm >/dev/null 2>&1 || true  # keep one revision
}
step conan-create conan_create
conan_line=$(grep 'test_package:' "$LOGS/conan-create.log" | tail -n 1 || true)

echo "package_check: all passed in $SECONDS s (after ${lock_wait} s waiting for the build lock); logs in ${LOGS#"$ROOT"/}"
printf '%s\n' "${summary[@]}"
echo "  ${consumer_line}"
if [ -n "$cuda_line" ]; then echo "$cuda_line"; else echo "  $(grep 'cuda probe:' "$LOGS/cuda-probe.log" || true)"; fi
echo "  ${conan_line}"
