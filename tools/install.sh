#!/usr/bin/env bash
# Create a virtual environment and install megatron_plm into it.
#
#   tools/install.sh [VENV_DIR]        (default .venv; PYTHON=python3.11 to choose the interpreter)
#
# - GPU machine / NGC container (a CUDA torch is already importable): the venv sees the
#   system site-packages, so the container's torch, Transformer Engine and apex are kept.
# - CPU machine: torch==2.13.0 is installed into the venv first. If pip would resolve that
#   to a CUDA build (it would pull nvidia-* wheels, several GB), the script stops instead;
#   set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to take the CPU wheel from
#   PyTorch's index.
set -euo pipefail

VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
cd "$(dirname "$0")/.."

if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "install: a CUDA torch is present ($("$PYTHON" -c 'import torch; print(torch.__version__)')); keeping it"
    "$PYTHON" -m venv --system-site-packages "$VENV"
    gpu=1
else
    "$PYTHON" -m venv "$VENV"
    gpu=0
fi
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip setuptools wheel pybind11

if [ "$gpu" = 0 ] && ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    index_args=()
    if [ -n "${TORCH_INDEX_URL:-}" ]; then index_args=(--index-url "$TORCH_INDEX_URL"); fi
    report=$(mktemp)
    "${pip[@]}" install --quiet --dry-run --ignore-installed --report "$report" "${index_args[@]}" "$TORCH_SPEC"
    if "$VENV/bin/python" - "$report" <<'PY'
import json, sys
names = [item["metadata"]["name"] for item in json.load(open(sys.argv[1]))["install"]]
sys.exit(1 if any(n.lower().startswith("nvidia-") for n in names) else 0)
PY
    then
        "${pip[@]}" install --quiet "${index_args[@]}" "$TORCH_SPEC"
    else
        echo "install: '$TORCH_SPEC' resolves to a CUDA build of torch on this CPU-only machine." >&2
        echo "install: rerun with TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to use the CPU wheel." >&2
        exit 1
    fi
    rm -f "$report"
fi

"${pip[@]}" install --quiet --no-build-isolation -e ".[test]"
"$VENV/bin/python" - <<'PY'
import torch
import megatron.core
print(f"install: torch {torch.__version__} (CUDA: {torch.version.cuda or 'none'}), "
      f"megatron-core {megatron.core.__version__}")
PY
