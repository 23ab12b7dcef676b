#!/usr/bin/env bash
# Wheels for installing megatron_plm on a GPU machine with no internet whose image already has a CUDA
# torch, transformers, scipy and the rest (the lent H200, an NGC container, or the like): the packages of
# tools/gpu_wheels.txt (megatron-core, biopython), without their dependencies, for that machine's Python.
# benchmarks/gpu_suite.sh installs them from DIR (default wheels/, which git ignores); by hand:
#     python3 -m pip install --no-index --no-deps --target SITE DIR/*.whl && export PYTHONPATH=SITE
#     python3 -m pip install --no-build-isolation --no-deps -e .
# Usage: tools/offline_wheels.sh [DIR, default wheels] [PYTHON_VERSION, default 3.12]
set -euo pipefail
dir=${1:-wheels}
version=${2:-3.12}
python=${PYTHON:-python3}
here=$(dirname "$0")
# pip matches a manylinux tag exactly: name every glibc level a wheel of these packages is tagged with.
platforms=()
for tag in manylinux1_x86_64 manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_27_x86_64 manylinux_2_28_x86_64; do
  platforms+=(--platform "$tag")
done
$python -m pip download --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
  "${platforms[@]}" -d "$dir" -r "$here/gpu_wheels.txt"
du -sh "$dir"
ls "$dir"
