"""Training checkpoints: everything a run needs to continue exactly, at any parallel layout.

Layout of a checkpoint directory ``ROOT``::

    ROOT/iter_0000200/        megatron-core distributed checkpoint of {"model", "optimizer"}
        train_state.json      iteration, consumed samples, LR scheduler, the full config
        rng_rank<R>.pt        each rank's RNG states
        manifest.json         size and SHA-256 of every other file (see checkpoint/manifest.py)
    ROOT/latest               the name of the newest *complete* checkpoint

A checkpoint is written as ``iter_N.tmp-<pid>``, renamed to ``iter_N`` when every rank
has finished, and only then named in ``latest`` (itself replaced atomically). A process
killed at any point leaves ``latest`` naming a complete checkpoint; leftovers of an
interrupted save are ignored on load and removed by the next save. Every load first
verifies the manifest and refuses pickles that hold anything but data (checkpoint/trust.py);
parameters that are not finite are never saved.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_plm.checkpoint.manifest import verify_manifest, write_manifest
from megatron_plm.checkpoint.trust import CheckpointError, check_pickles, load_rng_file
from megatron_plm.safe_io import TMP, die_with_parent, leftovers, pid_alive

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


_NAME = re.compile(r"iter_[0-9]{7,}")


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    if not _NAME.fullmatch(name):  # e.g. ../other_run/iter_0000100: never leave the directory
        raise CheckpointError(
            f"{pointer} names {name[:200]!r}, not a checkpoint of {root} (expected iter_NNNNNNN); "
            "fix or delete the file"
        )
    directory = Path(root) / name
    if directory.is_symlink() or directory.resolve().parent != Path(root).resolve():
        raise CheckpointError(
            f"{pointer} names {directory}, a link out of {root}; resume only from checkpoints saved there"
        )
    if not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(f"{pointer} names {directory}, which is not a complete checkpoint")
    return directory


def resume_directory(load: str | None, save: str | None) -> Path | None:
    """The checkpoint a run continues from. ``checkpoint.load`` must hold one (a run's save directory or
    one ``iter_*``); ``checkpoint.save`` may not have one yet (a fresh run)."""
    if load:
        path = Path(load)
        if (path / STATE_FILE).is_file():
            return path
        found = latest_checkpoint(path) if path.is_dir() else None
        if found is None:
            problem = "does not exist" if not path.exists() else "holds no checkpoint (no latest file)"
            raise FileNotFoundError(
                f"checkpoint.load={load} {problem}; fix the path, or unset checkpoint.load to train from step 0"
            )
        return found
    return latest_checkpoint(save) if save else None


def check_writable(directory: str | os.PathLike, field: str) -> None:
    """Fail at start-up, not after hours of training, when an output directory cannot be written."""
    directory = Path(directory)
    probe = directory / f".write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(
            f"{field}={directory} is not writable ({error.strerror or error}); choose a directory you can write to"
        ) from error


def _intact(directory: Path) -> bool:
    try:
        return verify_manifest(directory) and check_pickles(directory) is None
    except (CheckpointError, OSError):
        return False


def verify_checkpoint(directory: str | os.PathLike) -> None:
    """Refuse a corrupt checkpoint, or one whose loading would run code; name an intact older one."""
    directory = Path(directory)
    try:
        checked = verify_manifest(directory)
        check_pickles(directory)
    except CheckpointError as error:
        older = [
            p
            for p in sorted(directory.parent.glob("iter_*"), reverse=True)
            if _NAME.fullmatch(p.name) and p.name < directory.name and (p / STATE_FILE).is_file()
        ]
        intact = next((p for p in older if _intact(p)), None)
        hint = f". An older complete checkpoint is intact: {intact}" if intact else ""
        raise CheckpointError(f"{str(error).rstrip('.')}{hint}") from error
    if not checked and (not torch.distributed.is_initialized() or _rank() == 0):
        print(
            f"warning: {directory} has no manifest.json (saved by an older version or another tool): "
            "its files cannot be checked for corruption",
            file=sys.stderr,
            flush=True,
        )


def _check_finite(state, iteration: int) -> None:
    """Collective: a NaN or infinite parameter must never become ``latest``."""
    (chunk,) = state.unwrapped()
    bad = [name for name, p in chunk.named_parameters() if not torch.isfinite(p).all()]
    flag = torch.tensor([float(len(bad))], device=next(chunk.parameters()).device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item() > 0:
        where = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else " on another rank"
        raise CheckpointError(
            f"step {iteration}: parameters are not finite{where}; checkpoint not saved, "
            "latest still names the last good one. Lower optimizer.lr or check the data"
        )


_saving = {"active": False, "parent": 0}


def _die_with_parent() -> None:
    """In a child forked during a save (megatron-core's shard writers): SIGKILL it when the
    trainer dies, so ``kill -9`` of a run leaves no writer behind (Linux ``PR_SET_PDEATHSIG``)."""
    if _saving["active"]:
        die_with_parent(_saving["parent"])


if sys.platform == "linux":
    os.register_at_fork(before=lambda: _saving.update(parent=os.getpid()), after_in_child=_die_with_parent)


def _results_queue_dies_with_parent() -> None:
    """megatron-core (0.16) gathers its shard writers' results through a ``multiprocessing`` Manager it
    *spawns* on the first save, with a resource_tracker beside it. Spawned processes run no fork hooks, so
    a ``kill -9`` of the trainer left both alive (~324 MB a kill). Hand it a queue served by a *forked*
    Manager instead (it needs no resource_tracker), forked inside :func:`writers_die_with_parent`."""
    import multiprocessing

    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async
    except ImportError:  # moved in another megatron-core: nothing to replace
        return
    if getattr(filesystem_async, "_results_queue", False) is None:  # megatron-core would spawn it now
        filesystem_async._results_queue = multiprocessing.get_context("fork").Manager().Queue()


@contextmanager
def writers_die_with_parent():
    """Processes forked inside the block (from this thread) die with this process, and so does the
    result queue's server megatron-core would otherwise spawn."""
    _saving["active"] = True
    try:
        if sys.platform == "linux":
            _results_queue_dies_with_parent()
        yield
    finally:
        _saving["active"] = False


def save_checkpoint(
    root: str | os.PathLike,
    *,
    iteration: int,
    consumed_samples: int,
    state,
    config: dict,
    keep_last: int,
    compute: list[dict] | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    _check_finite(state, iteration)
    name = f"iter_{iteration:07d}"
    tags = [f"{name}.tmp-{os.getpid()}"]
    torch.distributed.broadcast_object_list(tags, src=0)
    staging, final = root / tags[0], root / name
    if _rank() == 0:
        staging.mkdir(parents=True)
    torch.distributed.barrier()
    with writers_die_with_parent():
        dist_checkpointing.save(_sharded_state(state, is_loading=False), str(staging))
    torch.save(_rng_state(), staging / f"rng_rank{_rank()}.pt")
    if _rank() == 0:
        scheduler = state.scheduler.state_dict() if state.scheduler is not None else None
        payload = {
            "iteration": iteration,
            "consumed_samples": consumed_samples,
            "scheduler": scheduler,
            "config": config,
            "compute": compute or [],
        }
        (staging / STATE_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    torch.distributed.barrier()
    if _rank() == 0:
        write_manifest(staging)
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
    # only names saves write (iter_NNNNNNN, iter_NNNNNNN.tmp-<pid>): a user's iter_notes/ is not ours
    complete = sorted(p for p in root.glob("iter_*") if p.is_dir() and _NAME.fullmatch(p.name))
    for old in complete[:-keep_last]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob("iter_*.tmp-*"):  # interrupted saves
        stem, _, pid = leftover.name.partition(".tmp-")
        if _NAME.fullmatch(stem) and pid.isdigit() and stem != current and not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    for pid, paths in leftovers([root / LATEST], TMP).items():  # a pointer a killed save never renamed
        if not pid_alive(pid):
            for pointer, _ in paths:
                pointer.unlink(missing_ok=True)


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


def load_checkpoint(directory: Path, state, *, restore_scheduler: bool = True, verify: bool = True) -> ResumeState:
    """Load model, optimizer, scheduler and RNG from ``directory`` (saved at any TP/PP layout).
    ``restore_scheduler=False`` leaves ``state.scheduler`` as built (the config's schedule)."""
    from megatron.core import dist_checkpointing

    _check_optimizer_can_resume(state)
    if verify:
        verify_checkpoint(directory)
    payload = read_run_file(directory / STATE_FILE)
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        loaded = dist_checkpointing.load(_sharded_state(state, is_loading=True), str(directory))
    except (Exception, CheckpointException) as error:  # truncated shards of a checkpoint without a manifest
        raise _unloadable(directory, "model and optimizer state", error) from error
    (chunk,) = state.unwrapped()
    chunk.load_state_dict(loaded["model"])
    state.optimizer.load_state_dict(loaded["optimizer"])
    if restore_scheduler and state.scheduler is not None and payload["scheduler"] is not None:
        state.scheduler.load_state_dict(payload["scheduler"])
    rng_file = directory / f"rng_rank{_rank()}.pt"
    if rng_file.exists():  # absent when the layout changed (more ranks now): keep the fresh seeds
        _set_rng_state(load_rng_file(rng_file))
    return ResumeState(
        iteration=payload["iteration"],
        consumed_samples=payload["consumed_samples"],
        config=payload["config"],
        directory=directory,
        compute=payload.get("compute", []),
        scheduler=payload["scheduler"],
    )


def _unloadable(directory: Path, what: str, error: BaseException) -> CheckpointError:
    """megatron-core / torch.distributed.checkpoint's error (a multi-line report, or a bare EOFError) as one line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    detail = lines[-1][:300] if lines else type(error).__name__
    if "EOFError" in detail or isinstance(error, EOFError):
        detail = f"{detail}: a shard ends early (truncated?)"
    return CheckpointError(
        f"{directory}: cannot load its {what} ({detail}); restore the checkpoint, or use an older one"
    )


def read_run_file(path: Path) -> dict:
    """``train_state.json`` or ``hf_import.json``, with an error naming the file if it is damaged."""
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
            raise ValueError("no 'config' mapping")
        if path.name == STATE_FILE:
            for key in ("iteration", "consumed_samples"):
                if not isinstance(payload.get(key), int):
                    raise ValueError(f"{key!r} is not an integer")
        return payload
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); restore it, or load an older checkpoint") from error


def load_model_tensors(
    directory: Path, chunk: torch.nn.Module, *, body_only: bool = False, verify: bool = True
) -> list[str]:
    """Load a checkpoint's model tensors (saved at any layout) into ``chunk``; ``body_only`` keeps the
    chunk's heads (CLM -> MLM transfer). Returns the checkpoint keys loaded. ``verify=False``: the
    caller verified the directory already (:class:`~megatron_plm.checkpoint.saved_run.SavedRun`)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from megatron_plm.models.mcore import BODY_PREFIXES

    wanted = {k: v for k, v in chunk.sharded_state_dict().items() if isinstance(v, ShardedTensor)}
    if body_only:
        wanted = {k: v for k, v in wanted.items() if k.startswith(BODY_PREFIXES)}
    if verify:
        verify_checkpoint(directory)
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
        raise _unloadable(directory, "model tensors", error) from error
    chunk.load_state_dict(loaded, strict=False)
    return sorted({v.key for v in wanted.values()})
