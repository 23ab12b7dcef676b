#!/usr/bin/env bash
# Wheels for installing megatron_plm on a GPU machine with no internet whose image already has a CUDA
# torch, transformers, scipy and the rest (an NGC container, or the like): megatron-core and biopython,
# for that machine's Python. Carry DIR there, then:
#     python3 -m pip install --no-index --find-links DIR megatron-core biopython
#     python3 -m pip install --no-build-isolation --no-deps -e .
# Usage: tools/offline_wheels.sh DIR [PYTHON_VERSION, default 3.12]
set -euo pipefail
dir=${1:?usage: tools/offline_wheels.sh DIR [PYTHON_VERSION]}
version=${2:-3.12}
python=${PYTHON:-python3}
$python -m pip download --no-deps --only-binary=:all: --python-version "$version" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_28_x86_64 -d "$dir" "megatron-core==0.16.1" "biopython>=1.80"
ls "$dir"
