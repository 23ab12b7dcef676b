#!/usr/bin/env bash
# Launch `megatron-plm train` on one node with torchrun, or on several nodes (set NNODES,
# NODE_RANK, MASTER_ADDR, MASTER_PORT on each). GPUs use NCCL; without GPUs the same command
# runs on gloo through the CPU shim (useful to check a layout before booking GPUs).
#
#   [PYTHON=.venv/bin/python] examples/launch/torchrun.sh CONFIG NPROC_PER_NODE [dotted.key=value ...]
#   e.g. examples/launch/torchrun.sh examples/configs/tiny_clm.yaml 4 \
#        parallel.tensor_model_parallel_size=2 parallel.pipeline_model_parallel_size=2
#
# The interpreter: $PYTHON if set, else the checkout's .venv, else the active virtualenv, else the
# first python3/python on PATH that has torch and megatron_plm (no activated venv needed).
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
if [ -z "${PYTHON:-}" ]; then
    for candidate in .venv/bin/python ${VIRTUAL_ENV:+"$VIRTUAL_ENV/bin/python"} python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c \
            "import importlib.util as u, sys; sys.exit(not (u.find_spec('torch') and u.find_spec('megatron_plm')))" 2>/dev/null
        then
            PYTHON=$candidate
            break
        fi
    done
    if [ -z "${PYTHON:-}" ]; then
        echo "torchrun.sh: no Python with torch and megatron_plm found (tried .venv/bin/python, \$VIRTUAL_ENV," \
             "python3, python); run 'make setup' or set PYTHON=/path/to/python" >&2
        exit 2
    fi
fi
exec "$PYTHON" -m torch.distributed.run "${rendezvous[@]}" --nproc_per_node "$NPROC" \
    -m megatron_plm train --config "$CONFIG" "$@"
