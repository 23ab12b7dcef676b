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
    exit_signal: str | None = None
    """A signal that, like SIGTERM and SIGINT, makes every rank finish its step, save and exit with
    status 75 (e.g. ``SIGUSR1``, sent by ``sbatch --signal=USR1@120`` ahead of a time limit)."""


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
    resume_schedule: Literal["config", "checkpoint"] = "config"
    """On resume, where the LR schedule (``training.train_iters``, ``optimizer.lr``/``min_lr``/
    ``warmup_iters``/``decay_style``/``weight_decay``) comes from: ``config`` rebuilds it from this
    config at the resumed step (Megatron-LM's ``--override-opt_param-scheduler``); ``checkpoint``
    continues the saved one (``--use-checkpoint-opt_param-scheduler``)."""


@dataclass(kw_only=True)
class LoggingConfig:
    log_interval: int = 1
    run_dir: str | None = None
    """Where the run writes its resolved ``config.yaml`` and ``metrics.jsonl`` (default:
    ``checkpoint.save``; nothing is written when both are unset)."""
    metrics_file: str | None = None
    """Every step and validation as a JSON line (rank 0; default: ``RUN_DIR/metrics.jsonl``). On
    resume, entries after the resumed step are dropped, so each step appears once."""
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
        # Derived, not set twice: the data follows the objective, the model its data and tokenizer.
        from megatron_plm.data.tokenizer import ProteinTokenizer

        if self.data.objective != self.objective:
            self.data = dataclasses.replace(self.data, objective=self.objective)
        self.model.seq_length = self.data.seq_length
        self.model.vocab_size = ProteinTokenizer().vocab_size

    def run_dir(self) -> Path | None:
        directory = self.logging.run_dir or self.checkpoint.save
        return Path(directory) if directory else None

    def metrics_path(self) -> Path | None:
        if self.logging.metrics_file:
            return Path(self.logging.metrics_file)
        return self.run_dir() / "metrics.jsonl" if self.run_dir() else None

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
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    data = apply_overrides(data, list(overrides))
    # The objective is stated once, at the top; the data section follows it.
    data.setdefault("data", {})
    if isinstance(data["data"], dict) and "objective" in data["data"]:
        if data["data"]["objective"] != data.get("objective", data["data"]["objective"]):
            raise ValueError("data.objective differs from objective; state the objective once, at the top")
        data.setdefault("objective", data["data"].pop("objective"))
    config = from_dict(TrainConfig, data)
    _check_derived(data.get("model"), config)
    validate(config)
    return config


def _check_derived(model: Any, config: TrainConfig) -> None:
    """``model.seq_length`` and ``model.vocab_size`` follow the data and the tokenizer; a config may
    repeat them (a saved one does) but not contradict them."""
    derived = {"seq_length": ("data.seq_length", config.model.seq_length),
               "vocab_size": ("the tokenizer", config.model.vocab_size)}  # fmt: skip
    for name, (source, value) in derived.items():
        given = model.get(name) if isinstance(model, dict) else None
        if given is not None and given != value:
            raise ValueError(f"model.{name} is {given} but is derived from {source} ({value}); remove model.{name}")


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
    config.parallel.check_supported()
    if t.exit_signal is not None:
        import signal

        if t.exit_signal not in signal.Signals.__members__ or t.exit_signal in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"training.exit_signal must be a catchable signal name such as SIGUSR1, got {t.exit_signal!r}")
    if config.checkpoint.keep_last < 1:
        raise ValueError(f"checkpoint.keep_last must be >= 1, got {config.checkpoint.keep_last}")
