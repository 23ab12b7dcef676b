#!/usr/bin/env bash
# The smoke run under torchrun on one node: 4 processes as TP=2 x PP=2 (DP=1), or any
# layout whose TP x PP divides the process count. Works on GPUs (NCCL) and, through the
# CPU shim, on a machine without one (gloo).
#
#   examples/smoke_torchrun.sh [NPROC] [TP] [PP]
set -euo pipefail
NPROC=${1:-4}
TP=${2:-2}
PP=${3:-2}
cd "$(dirname "$0")/.."
exec torchrun --standalone --nproc_per_node "$NPROC" -m megatron_plm smoke \
    --fasta data/uniref90_esm2_pretraining_sample_10k.fasta.gz \
    --tp "$TP" --pp "$PP" --steps 20 --global-batch-size 8 --micro-batch-size 2
