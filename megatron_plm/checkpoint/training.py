"""Training checkpoints: everything a run needs to continue exactly, at any parallel layout.

Layout of a checkpoint directory ``ROOT``::

    ROOT/iter_0000200/        megatron-core distributed checkpoint of {"model", "optimizer"}
        train_state.json      iteration, consumed samples, LR scheduler, the full config
        rng_rank<R>.pt        each rank's RNG states
    ROOT/latest               the name of the newest *complete* checkpoint

A checkpoint is written as ``iter_N.tmp-<pid>``, renamed to ``iter_N`` when every rank
has finished, and only then named in ``latest`` (itself replaced atomically). A process
killed at any point leaves ``latest`` naming a complete checkpoint; leftovers of an
interrupted save are ignored on load and removed by the next save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

LATEST = "latest"
STATE_FILE = "train_state.json"
IMPORT_FILE = "hf_import.json"
"""Written by ``import-hf`` beside model tensors: the run config of an imported model (no optimizer)."""


@dataclass
class ResumeState:
    iteration: int
    consumed_samples: int
    config: dict
    directory: Path
    compute: list[dict]
    """Tokens and FLOPs of each training phase so far (e.g. a CLM phase, then this MLM one)."""
    scheduler: dict | None = None
    """The LR scheduler's saved state (its ``num_steps`` counts applied updates, skipped steps excluded)."""


def _rank() -> int:
    return torch.distributed.get_rank()


# The distributed optimizer's default sharding type cannot be saved in megatron-core 0.16
# ("flattened_range is not supported"); fully_reshardable saves, and loads at any layout.
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _sharded_state(state, *, is_loading: bool) -> dict:
    (chunk,) = state.unwrapped()
    model = chunk.sharded_state_dict()
    optimizer = state.optimizer.sharded_state_dict(model, is_loading=is_loading, metadata=_OPTIMIZER_METADATA)
    return {"model": model, "optimizer": optimizer}


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(saved: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(saved["tracker"])


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    directory = Path(root) / pointer.read_text().strip()
    if not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(f"{pointer} names {directory}, which is not a complete checkpoint")
    return directory


def save_checkpoint(root: str | os.PathLike, *, iteration: int, consumed_samples: int, state, config: dict,
                    keep_last: int, compute: list[dict] | None = None) -> Path:  # fmt: skip
    """Collective: every rank calls it. Returns the checkpoint directory."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    name = f"iter_{iteration:07d}"
    tags = [f"{name}.tmp-{os.getpid()}"]
    torch.distributed.broadcast_object_list(tags, src=0)
    staging, final = root / tags[0], root / name
    if _rank() == 0:
        staging.mkdir(parents=True)
    torch.distributed.barrier()
    dist_checkpointing.save(_sharded_state(state, is_loading=False), str(staging))
    torch.save(_rng_state(), staging / f"rng_rank{_rank()}.pt")
    if _rank() == 0:
        scheduler = state.scheduler.state_dict() if state.scheduler is not None else None
        payload = {"iteration": iteration, "consumed_samples": consumed_samples, "scheduler": scheduler,
                   "config": config, "compute": compute or []}  # fmt: skip
        (staging / STATE_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    torch.distributed.barrier()
    if _rank() == 0:
        if final.exists():  # an earlier run reached this iteration; this one supersedes it
            shutil.rmtree(final)
        staging.rename(final)
        pointer = root / f"{LATEST}.tmp-{os.getpid()}"
        pointer.write_text(name + "\n")
        os.replace(pointer, root / LATEST)
        _prune(root, keep_last, current=name)
    torch.distributed.barrier()
    return final


def _prune(root: Path, keep_last: int, current: str) -> None:
    complete = sorted(p for p in root.glob("iter_*") if p.is_dir() and ".tmp-" not in p.name)
    for old in complete[:-keep_last]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob("iter_*.tmp-*"):  # interrupted saves
        if leftover.name.split(".tmp-")[0] != current:
            shutil.rmtree(leftover, ignore_errors=True)


def _check_optimizer_can_resume(state) -> None:
    from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE, DistributedOptimizer

    optimizers = getattr(state.optimizer, "chained_optimizers", [state.optimizer])
    if not HAVE_APEX_OR_TE and any(isinstance(o, DistributedOptimizer) for o in optimizers):
        raise ValueError(
            "resuming with parallel.use_distributed_optimizer=true needs Transformer Engine or apex "
            "(megatron-core 0.16.1 cannot load the distributed optimizer's state into torch's Adam). "
            "Resume in the NGC container, resume with use_distributed_optimizer=false, or continue from "
            "the weights only with checkpoint.init_from (the optimizer state then restarts)."
        )


def load_checkpoint(directory: Path, state, *, restore_scheduler: bool = True) -> ResumeState:
    """Load model, optimizer, scheduler and RNG from ``directory`` (saved at any TP/PP layout).
    ``restore_scheduler=False`` leaves ``state.scheduler`` as built (the config's schedule)."""
    from megatron.core import dist_checkpointing

    _check_optimizer_can_resume(state)
    payload = json.loads((directory / STATE_FILE).read_text())
    loaded = dist_checkpointing.load(_sharded_state(state, is_loading=True), str(directory))
    (chunk,) = state.unwrapped()
    chunk.load_state_dict(loaded["model"])
    state.optimizer.load_state_dict(loaded["optimizer"])
    if restore_scheduler and state.scheduler is not None and payload["scheduler"] is not None:
        state.scheduler.load_state_dict(payload["scheduler"])
    rng_file = directory / f"rng_rank{_rank()}.pt"
    if rng_file.exists():  # absent when the layout changed (more ranks now): keep the fresh seeds
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return ResumeState(iteration=payload["iteration"], consumed_samples=payload["consumed_samples"],
                       config=payload["config"], directory=directory, compute=payload.get("compute", []),
                       scheduler=payload["scheduler"])  # fmt: skip


def compute_phases(directory: Path) -> list[dict]:
    """The compute record stored with a training checkpoint ([] for weights-only checkpoints)."""
    path = directory / STATE_FILE
    return json.loads(path.read_text()).get("compute", []) if path.exists() else []


def saved_run_config(directory: Path) -> dict | None:
    """The run config stored with a checkpoint: a training one, or one written by ``import-hf``."""
    for name in (STATE_FILE, IMPORT_FILE):
        path = Path(directory) / name
        if path.exists():
            return json.loads(path.read_text())["config"]
    return None


def load_model_tensors(directory: Path, chunk: torch.nn.Module, *, body_only: bool = False) -> list[str]:
    """Load a checkpoint's model tensors (saved at any layout) into ``chunk``; ``body_only`` keeps the
    chunk's heads (CLM -> MLM transfer). Returns the checkpoint keys loaded."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from megatron_plm.models.mcore import BODY_PREFIXES

    wanted = {k: v for k, v in chunk.sharded_state_dict().items() if isinstance(v, ShardedTensor)}
    if body_only:
        wanted = {k: v for k, v in wanted.items() if k.startswith(BODY_PREFIXES)}
    try:
        available = set(dist_checkpointing.load_tensors_metadata(str(directory)))
    except Exception as error:
        raise ValueError(f"{directory} is not a readable megatron-core checkpoint ({error})") from error
    missing = sorted({v.key for v in wanted.values() if v.key not in available})
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise ValueError(f"{directory} lacks tensors this model needs: {missing[:5]}{more}")
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        loaded = dist_checkpointing.load(wanted, str(directory))
    except (Exception, CheckpointException) as error:  # truncated shard files, shape mismatches
        detail = str(error).strip().splitlines()[-1][:300] if str(error).strip() else type(error).__name__
        raise ValueError(f"{directory}: cannot load its model tensors ({detail})") from error
    chunk.load_state_dict(loaded, strict=False)
    return sorted({v.key for v in wanted.values()})
