#!/usr/bin/env bash
# seqrec against the same SASRec in PyTorch (eager and torch.compile), one after another on the
# same data, split and configuration; prints one markdown table and writes it to --out.
#
#   scripts/compare_pytorch.sh ml1m  [--epochs 3] [--threads N] [--device cpu|cuda] [--out F.md]
#   scripts/compare_pytorch.sh games [--epochs 1] ...
#
# Needs build/examples/train_sasrec (built here beforehand; this script builds nothing) and the
# datasets in ../shared/data (or --data-root). PyTorch comes from, in this order: the interpreter
# in $SEQREC_TORCH_PYTHON, cache/venv-torch, cache/venv-embed (the title-embedding venv, reused
# when it already has torch), or a new cache/venv-torch with `pip install torch numpy` from PyPI.
# See bench/compare_pytorch.py --help for every option.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=build/examples/train_sasrec
help=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --bin=*) bin=${args[i]#--bin=} ;;
    --bin) bin=${args[i + 1]:-} ;;
    -h | --help) help=1 ;;
  esac
done
if [[ $help == 0 && ! -x $bin ]]; then
  echo "error: $bin not found. Build it first:" >&2
  echo "  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release" >&2
  echo "  cmake --build build --target train_sasrec" >&2
  exit 1
fi

has_torch() { command -v "$1" >/dev/null 2>&1 && "$1" -c 'import torch, numpy' >/dev/null 2>&1; }

py=""
for cand in "${SEQREC_TORCH_PYTHON:-}" cache/venv-torch/bin/python cache/venv-embed/bin/python; do
  if [[ -n $cand ]] && has_torch "$cand"; then py=$cand; break; fi
done
if [[ -z $py ]]; then
  echo "no Python with torch found: creating cache/venv-torch" >&2
  echo "(pip install torch numpy from PyPI: a download of several GB)" >&2
  python3 -m venv cache/venv-torch
  cache/venv-torch/bin/python -m pip install torch numpy
  py=cache/venv-torch/bin/python
fi
echo "using $py (torch $("$py" -c 'import torch; print(torch.__version__)'))" >&2
exec "$py" bench/compare_pytorch.py --python "$py" "$@"
