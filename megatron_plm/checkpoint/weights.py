"""Model weights as a megatron-core distributed checkpoint (resharded on load).

A checkpoint is written to ``DIR.tmp-<pid>`` and renamed to ``DIR`` only once every
rank has finished, so an interrupted save never leaves a directory that looks valid.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def _sharded_state_dict(chunks: list[torch.nn.Module]) -> dict:
    if len(chunks) != 1:
        raise ValueError(
            "weight checkpoints take one model chunk per rank; "
            "set parallel.virtual_pipeline_model_parallel_size to null"
        )
    return chunks[0].sharded_state_dict()


def save_model_weights(chunks: list[torch.nn.Module], directory: str | os.PathLike) -> Path:
    """Collective: every rank calls it with its own model chunks."""
    from megatron.core import dist_checkpointing

    final = Path(directory)
    # Every rank must agree on the temporary name: rank 0 chooses it and broadcasts.
    names = [f"{final.name}.tmp-{os.getpid()}"]
    torch.distributed.broadcast_object_list(names, src=0)
    staging = final.parent / names[0]
    if torch.distributed.get_rank() == 0:
        if final.exists():
            raise FileExistsError(f"checkpoint directory {final} already exists; choose another or remove it")
        staging.mkdir(parents=True)
    torch.distributed.barrier()
    dist_checkpointing.save(_sharded_state_dict(chunks), str(staging))
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        staging.rename(final)
    torch.distributed.barrier()
    return final


def load_model_weights(chunks: list[torch.nn.Module], directory: str | os.PathLike) -> None:
    """Load weights saved at any TP/PP layout into this rank's chunks."""
    from megatron.core import dist_checkpointing

    path = Path(directory)
    if not dist_checkpointing.check_is_distributed_checkpoint(str(path)):
        raise FileNotFoundError(f"{path} is not a megatron-core distributed checkpoint (no metadata.json)")
    state = dist_checkpointing.load(_sharded_state_dict(chunks), str(path))
    chunks[0].load_state_dict(state)

