"""Where a run starts: its own latest checkpoint (resume), another run's weights (``init_from``), or nothing.

Resuming compares the resolved config with the checkpoint's and prints every field that changed.
Three kinds of field, one rule each:

- *immutable* (:data:`IMMUTABLE`): the model's shape, the objective and the data fields that shape
  the sample order. A change is an error naming the field: the weights or the consumed-sample
  count would no longer mean what they meant.
- *schedule* (:data:`SCHEDULE`): ``checkpoint.resume_schedule`` decides. ``config`` (default)
  rebuilds the LR schedule from this config and evaluates it at the resumed step, so a new
  ``optimizer.lr`` or ``training.train_iters`` takes effect from the next step; ``checkpoint``
  continues the saved schedule and ignores the config's values.
- everything else (parallel layout, intervals, logging, ...) simply takes the new value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from megatron_plm.data.samples.config import SAMPLES_DEPEND_ON
from megatron_plm.training.config import TrainConfig
from megatron_plm.training.build import TrainingState

MODEL_SHAPE = (
    "model.num_layers",
    "model.hidden_size",
    "model.num_attention_heads",
    "model.ffn_hidden_size",
    "model.vocab_size",
    "model.make_vocab_size_divisible_by",
    "model.token_dropout",
)
"""What the saved weights' shapes and meaning depend on."""
IMMUTABLE = ("objective", *MODEL_SHAPE, *(f"data.{name}" for name in SAMPLES_DEPEND_ON))
"""Fields a resumed run may not change. The data ones are the index cache key's
(:data:`~megatron_plm.data.samples.config.SAMPLES_DEPEND_ON`): a new sampling field is immutable the
moment it exists. A section (``data.masking``) covers each of its fields."""
SCHEDULE = (
    "training.train_iters",
    "optimizer.lr",
    "optimizer.min_lr",
    "optimizer.warmup_iters",
    "optimizer.decay_style",
    "optimizer.weight_decay",
)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """``(dotted field, checkpoint value, current value)`` for every field that differs; fields
    the checkpoint's config lacks (added since) are not changes."""
    before, after = _flatten(saved), _flatten(current)
    return [(name, before[name], value) for name, value in after.items() if name in before and before[name] != value]


def check_resumable(changes: list[tuple[str, Any, Any]], directory: Path) -> None:
    """Raise naming the first immutable field that changed."""
    for name, old, new in changes:
        if any(name == field or name.startswith(field + ".") for field in IMMUTABLE):
            raise ValueError(
                f"{name} changed since {directory} ({old!r} -> {new!r}): a run cannot resume with a different "
                f"{name}. Restore it, or start a new run from these weights with checkpoint.init_from={directory} "
                "and another checkpoint.save"
            )


@dataclass
class Start:
    """Where this launch begins."""

    iteration: int = 0
    consumed_samples: int = 0
    compute: list[dict] = field(default_factory=list)
    """Tokens and FLOPs of earlier phases (resume: this run's so far; init_from: the source run's)."""
    transferred: list[str] = field(default_factory=list)
    """Tensors loaded by ``checkpoint.init_from``."""
    directory: Path | None = None
    finished: bool = False
    """The checkpoint is already at ``training.train_iters``; nothing was loaded."""


def restore(config: TrainConfig, state: TrainingState, say: Callable[[str], None]) -> Start:
    """Resume from ``checkpoint.load`` (default ``checkpoint.save``), else initialise from
    ``checkpoint.init_from``, else start fresh."""
    from megatron_plm.checkpoint.distributed import resume_directory

    ckpt = config.checkpoint
    resume_from = resume_directory(ckpt.load, ckpt.save)
    if resume_from is not None:
        return resume(config, state, resume_from, say, from_another_run=_another_run(ckpt.load, ckpt.save))
    if ckpt.init_from:
        return init_from(config, state, ckpt.init_from, say)
    return Start()


def _another_run(load: str | None, save: str | None) -> bool:
    """``checkpoint.load`` names a checkpoint outside ``checkpoint.save`` (e.g. to reshard it)."""
    if not load:
        return False
    loaded = Path(load).resolve()
    return save is None or Path(save).resolve() not in (loaded, loaded.parent)


def resume(
    config: TrainConfig,
    state: TrainingState,
    directory: Path,
    say: Callable[[str], None],
    from_another_run: bool = False,
) -> Start:
    """Continue from ``directory``. A relaunch of a finished run loads nothing; a finished checkpoint of
    another run (``checkpoint.load`` outside ``checkpoint.save``) is loaded, validated and saved to
    ``checkpoint.save`` at this run's layout: how a checkpoint is resharded."""
    from megatron_plm.checkpoint.distributed import load_checkpoint
    from megatron_plm.checkpoint.saved_run import SavedRun

    run = SavedRun.open(directory)
    changes = config_changes(run.config, config.to_dict())
    check_resumable(changes, directory)
    rule = config.checkpoint.resume_schedule
    for name, old, new in changes:
        note = ""
        if name in SCHEDULE:
            note = (
                " (schedule: from this config)"
                if rule == "config"
                else " (ignored: checkpoint.resume_schedule=checkpoint)"
            )
        say(f"changed since {directory.name}: {name} {old!r} -> {new!r}{note}")
    if run.iteration >= config.training.train_iters and not from_another_run:  # nothing to do: load nothing
        return Start(
            iteration=run.iteration,
            consumed_samples=run.state["consumed_samples"],
            compute=run.compute,
            directory=directory,
            finished=True,
        )
    # megatron-core keeps each param group's max_lr/min_lr in the optimizer state, which the load restores.
    bounds = [{k: g[k] for k in ("max_lr", "min_lr") if k in g} for g in state.optimizer.param_groups]
    resumed = load_checkpoint(directory, state, restore_scheduler=rule == "checkpoint", verify=False)
    if rule == "config" and state.scheduler is not None:
        # The freshly built schedule, advanced by the updates applied so far (skipped steps excluded).
        for group, saved_bounds in zip(state.optimizer.param_groups, bounds):
            group.update(saved_bounds)
        applied = resumed.scheduler["num_steps"] if resumed.scheduler else resumed.iteration
        state.scheduler.step(increment=applied)
    say(
        f"resumed from {directory} at step {resumed.iteration} ({resumed.consumed_samples:,} samples); "
        f"LR schedule from the {rule}"
    )
    return Start(
        iteration=resumed.iteration,
        consumed_samples=resumed.consumed_samples,
        compute=resumed.compute,
        directory=directory,
    )


def init_from(config: TrainConfig, state: TrainingState, source: str, say: Callable[[str], None]) -> Start:
    """A new run from another run's weights; only the body when the objectives differ (CLM -> MLM)."""
    from megatron_plm.checkpoint.saved_run import SavedRun

    run = SavedRun.open(source)
    body_only = run.objective != config.objective
    transferred = run.load_weights(state.unwrapped()[0], body_only=body_only)
    say(
        f"initialised {'the body ' if body_only else ''}from {run.directory}: {len(transferred)} tensors "
        f"({', '.join(transferred[:4])}{', ...' if len(transferred) > 4 else ''})"
    )
    return Start(compute=run.compute, transferred=transferred, directory=run.directory)
