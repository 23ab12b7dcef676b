#!/usr/bin/env bash
# Launch `megatron-plm train` on one node with torchrun, or on several nodes (set NNODES,
# NODE_RANK, MASTER_ADDR, MASTER_PORT on each). GPUs use NCCL; without GPUs the same command
# runs on gloo through the CPU shim (useful to check a layout before booking GPUs).
#
#   [PYTHON=.venv/bin/python] examples/launch/torchrun.sh CONFIG NPROC_PER_NODE [dotted.key=value ...]
#   e.g. examples/launch/torchrun.sh examples/configs/tiny_clm.yaml 4 \
#        parallel.tensor_model_parallel_size=2 parallel.pipeline_model_parallel_size=2
set -euo pipefail
CONFIG=${1:?config file}
NPROC=${2:?processes per node}
shift 2
NNODES=${NNODES:-1}
if [ "$NNODES" = 1 ]; then
    rendezvous=(--standalone)
else
    rendezvous=(--nnodes "$NNODES" --node_rank "${NODE_RANK:?}" --rdzv_backend c10d
                --rdzv_endpoint "${MASTER_ADDR:?}:${MASTER_PORT:-29500}")
fi
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python}" -m torch.distributed.run "${rendezvous[@]}" --nproc_per_node "$NPROC" \
    -m megatron_plm train --config "$CONFIG" "$@"
