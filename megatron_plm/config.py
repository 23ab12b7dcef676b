"""The run configuration: typed dataclasses, loaded from YAML with dotted command-line overrides.

Each part lives next to the code it configures (``ModelConfig`` in models, ``DataConfig`` in
data, ``OptimizerConfig`` in training, ``ParallelConfig`` in runtime); :class:`TrainConfig`
gathers them. Loading is strict: an unknown key, a wrong type or an invalid value is a
``ValueError`` naming the dotted field and what to do.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from megatron_plm.data.builder import DataConfig
from megatron_plm.models.config import ModelConfig
from megatron_plm.models.precision import FP8Config
from megatron_plm.runtime.distributed import ParallelConfig
from megatron_plm.training.build import OptimizerConfig


@dataclass(kw_only=True)
class TrainingConfig:
    train_iters: int
    """Optimizer steps to run in total (a resumed run continues up to this)."""
    global_batch_size: int = 8
    """Samples per optimizer step, over all data-parallel ranks."""
    micro_batch_size: int = 2
    """Samples per forward/backward on one rank."""
    eval_interval: int = 0
    """Validate every this many steps (0: only at the end)."""
    eval_iters: int = 2
    """Global batches of the valid split per validation (the same ones each time)."""
    seed: int = 1234
    precision: Literal["fp32", "bf16", "fp8"] = "fp32"
    """bf16 needs a GPU; fp8 needs Transformer Engine and an FP8-capable GPU (see the ``fp8`` section)."""
    max_skipped_steps: int = 5
    """Stop (without saving) after this many consecutive steps with a non-finite loss."""
    exit_interval: int = 0
    """Save and stop when the step count reaches a multiple of this (fits a run into scheduler time
    slots; the next launch resumes). 0: run to ``train_iters``."""


@dataclass(kw_only=True)
class CheckpointConfig:
    save: str | None = None
    """Directory for checkpoints (``iter_NNNNNNN/`` plus a ``latest`` pointer); None: do not save."""
    save_interval: int = 0
    """Save every this many steps (0: only at the end)."""
    keep_last: int = 2
    """Completed checkpoints to keep; older ones are deleted after a newer one is complete."""
    load: str | None = None
    """Resume from this directory's latest checkpoint (default: ``save``, if it has one)."""
    init_from: str | None = None
    """Start a new run from another run's weights: the body only when objectives differ (CLM -> MLM)."""


@dataclass(kw_only=True)
class LoggingConfig:
    log_interval: int = 1
    metrics_file: str | None = None
    """Append every step and validation as a JSON line here (rank 0)."""
    tensorboard_dir: str | None = None
    """Write TensorBoard events here (needs the ``tensorboard`` package)."""
    wandb_project: str | None = None
    """Log to Weights & Biases (needs ``wandb`` and a login)."""


@dataclass(kw_only=True)
class TrainConfig:
    objective: Literal["clm", "mlm"]
    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    fp8: FP8Config = field(default_factory=FP8Config)
    """Used when training.precision is fp8."""
    name: str = "run"

    def __post_init__(self):
        if self.data.objective != self.objective:
            self.data.objective = self.objective
        self.model.seq_length = self.data.seq_length

    def to_dict(self) -> dict:
        return _to_plain(self)


# ---- loading -------------------------------------------------------------------------------------------


def _to_plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, data: Any, where: str = ""):
    """Build dataclass ``cls`` from a mapping, checking every key and type."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {'.'.join(filter(None, [where, close[0]]))!r}?)" if close else ""
            raise ValueError(f"unknown config field {path!r}{hint}")
        kwargs[key] = _convert(value, hints[key], path)
    missing = [
        name for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    if missing:
        raise ValueError(f"missing config field{'s' if len(missing) > 1 else ''}: "
                         + ", ".join(".".join(filter(None, [where, m])) for m in missing))  # fmt: skip
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=VALUE`` overrides (VALUE parsed as YAML) to a nested mapping."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r} is not of the form dotted.key=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {override!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML run config, apply overrides, validate."""
    data: dict = {}
    if path is not None:
        if Path(path).is_dir():
            raise ValueError(f"--config {path} is a directory; give a YAML file (see examples/configs/)")
        try:
            with open(path, encoding="utf-8-sig") as handle:  # -sig: a UTF-8 BOM is not part of the YAML
                data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{path}{where}: invalid YAML ({problem}); fix the file") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a run config is a YAML mapping (key: value), got a {type(data).__name__}")
    data = apply_overrides(data, list(overrides))
    # The objective is stated once, at the top; the data section follows it.
    data.setdefault("data", {})
    if isinstance(data["data"], dict) and "objective" in data["data"]:
        if data["data"]["objective"] != data.get("objective", data["data"]["objective"]):
            raise ValueError("data.objective differs from objective; state the objective once, at the top")
        data.setdefault("objective", data["data"].pop("objective"))
    config = from_dict(TrainConfig, data)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    config.model.validate()
    config.data.validate()
    config.optimizer.validate()
    t = config.training
    for name in ("train_iters", "global_batch_size", "micro_batch_size", "eval_iters"):
        if getattr(t, name) < 1:
            raise ValueError(f"training.{name} must be >= 1, got {getattr(t, name)}")
    if t.global_batch_size % t.micro_batch_size:
        raise ValueError(
            f"training.global_batch_size ({t.global_batch_size}) must be a multiple of "
            f"training.micro_batch_size ({t.micro_batch_size})"
        )
    if t.precision == "fp8":
        config.fp8.validate(config.model.num_layers)
    if config.checkpoint.keep_last < 1:
        raise ValueError(f"checkpoint.keep_last must be >= 1, got {config.checkpoint.keep_last}")
