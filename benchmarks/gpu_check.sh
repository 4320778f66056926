#!/usr/bin/env bash
# The GPU check on a machine with one CUDA GPU, from a bare copy of this repository:
#
#   bash benchmarks/gpu_check.sh [OUT] [benchmarks/gpu_check.py options...]
#
# PYTHON (default python3) must have a torch that sees CUDA. If this repository's dependencies with
# the bench (TRL) and qlora (bitsandbytes) extras do not import in it, they are installed into it
# first (`pip install -e '.[bench,qlora]'`: needs the package index; a torch already there is kept).
# Writes OUT/gpu_check.json, OUT/gpu_check.md and OUT/logs/ (default OUT: bench-out/gpu-check); about
# 8 minutes at most (--budget 450 s), progress on stderr, the table on stdout at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-bench-out/gpu-check}
shift $(( $# > 0 ? 1 : 0 ))
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: the torch of $PY sees no CUDA GPU')"
if ! "$PY" -c "import accelerate, bitsandbytes, datasets, matplotlib, peft, rich, safetensors, transformers, trl, typer, yaml" \
    2>/dev/null; then
  "$PY" -m pip install --quiet -e ".[bench,qlora]"
fi
# This copy's aot_cli and benchmarks/ first, whatever else is installed.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
