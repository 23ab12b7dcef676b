#!/usr/bin/env bash
# Rehearse, on a machine without a GPU, the first call a lent GPU machine gets: its Python (3.12), its
# torch (2.11.0, the CUDA build, which runs on the CPU too) and its transformers (5.17), the wheels and
# prebuilt extensions carried to it, and benchmarks/gpu_suite.sh --dry-run run with all of them.
#
#   tools/gpu_rehearsal.sh [OUT_DIR, default outputs/gpu_rehearsal]
#
# Makes (once; reused while present):
#   $REHEARSAL_VENV (default .venv-gpu-rehearsal): Python 3.12 ($PYTHON312, else python3.12 on PATH or pyenv's)
#       with torch==2.11.0 and the GPU image's packages. torch from PyPI is the CUDA build: ~5 GB of downloads,
#       in this venv only -- the project's own .venv keeps its CPU torch.
#   wheels/    tools/offline_wheels.sh wheels 3.12 (megatron-core, biopython for Python 3.12)
#   prebuilt/  tools/prebuild_extensions.py build prebuilt --archs 90, with that venv's Python and torch
# then installs the wheels into a scratch site (as the suite does on the GPU), installs the prebuilt
# extensions (they must import under Python 3.12 and torch 2.11), and runs the suite's dry run with that
# interpreter. What the GPU machine is sent: `wheels` and `prebuilt` in the device tool's carry
# (benchmarks/RESULTS.md, "The GPU suite", has the exact call).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/outputs/gpu_rehearsal}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$repo"
venv=${REHEARSAL_VENV:-$repo/.venv-gpu-rehearsal}
started=$SECONDS

if [ ! -x "$venv/bin/python" ]; then
  python312=${PYTHON312:-}
  if [ -z "$python312" ]; then
    for candidate in python3.12 "$(pyenv root 2>/dev/null)/versions/3.12"*/bin/python3.12; do
      if command -v "$candidate" >/dev/null 2>&1; then python312=$candidate; break; fi
    done
  fi
  [ -n "$python312" ] || { echo "gpu_rehearsal.sh: no Python 3.12 found; set PYTHON312=/path/to/python3.12" >&2; exit 2; }
  "$python312" -m venv "$venv"
  # The GPU image's versions where they matter (device tool, KINDS.md): torch 2.11.0+cu130, transformers 5.17.
  "$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
  "$venv/bin/python" -m pip install --quiet torch==2.11.0 transformers==5.17.0 numpy scipy matplotlib psutil \
    pyyaml safetensors sentencepiece threadpoolctl pybind11 pytest hypothesis
fi
"$venv/bin/python" -c "import platform, torch, transformers; print(f'rehearsal: Python {platform.python_version()}, \
torch {torch.__version__}, transformers {transformers.__version__}')"

[ -d wheels ] || tools/offline_wheels.sh wheels 3.12
if ! "$venv/bin/python" tools/prebuild_extensions.py check prebuilt --python-version 3.12 --torch-version 2.11.0; then
  build_started=$SECONDS
  "$venv/bin/python" tools/prebuild_extensions.py build prebuilt --archs 90
  echo "rehearsal: prebuilt extensions in $((SECONDS - build_started)) s"
fi

site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
"$venv/bin/python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" wheels/*.whl
export PYTHONPATH="$site:$repo"
"$venv/bin/python" tools/prebuild_extensions.py install prebuilt
"$venv/bin/python" -c "from megatron_plm.kernels import bias_gelu, rotary; assert bias_gelu.kernel_available() \
and rotary.kernel_available(), 'prebuilt extensions did not import'; print('rehearsal: prebuilt extensions import')"

suite_started=$SECONDS
PYTHON=$venv/bin/python benchmarks/gpu_suite.sh --dry-run "$out"
echo "rehearsal: dry run in $((SECONDS - suite_started)) s; everything in $((SECONDS - started)) s; tables in $out/results.md"
