"""The run configuration of ``megatron-plm train``: one YAML file, read into typed sections.

Each section lives beside the code it configures (``ModelConfig`` in models, ``DataConfig`` in
data/samples, ``ParallelConfig`` in runtime, ``FP8Config`` in models/precision); the sections of the
training loop itself (steps, optimizer, checkpoints, logging) are here, and :class:`TrainConfig`
gathers them. Loading (:mod:`megatron_plm.config`) is strict and imports no torch: ``plan``,
``--print-config`` and config checks start in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megatron_plm.config import ConfigOverrides, describe, from_dict, read_config_data, to_plain
from megatron_plm.data.samples.config import DataConfig
from megatron_plm.models.config import ModelConfig
from megatron_plm.models.precision import FP8Config
from megatron_plm.runtime.parallel import ParallelConfig


@dataclass(kw_only=True)
class OptimizerConfig:
    """Adam with decoupled weight decay, as ESM-2 and the reference study train."""

    lr: float = 4e-4
    """Peak learning rate, reached at the end of warm-up."""
    min_lr: float = 4e-5
    """Learning rate at the last step."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay."""
    adam_beta1: float = 0.9
    """Adam's first-moment decay."""
    adam_beta2: float = 0.98
    """Adam's second-moment decay."""
    adam_eps: float = 1e-8
    """Adam's denominator epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    warmup_iters: int = 0
    """Linear warm-up from 0 to ``lr`` over this many steps."""
    decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay from ``lr`` to ``min_lr`` between the end of warm-up and the last step."""

    def validate(self) -> None:
        for name in ("lr", "min_lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "clip_grad"):
            if not math.isfinite(getattr(self, name)):  # an infinite lr trains NaN weights
                raise ValueError(f"optimizer.{name} must be a finite number, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optimizer.min_lr must be in [0, optimizer.lr], got {self.min_lr}")
        if self.clip_grad < 0:
            raise ValueError(f"optimizer.clip_grad must be >= 0 (0 disables clipping), got {self.clip_grad}")
        if self.warmup_iters < 0:
            raise ValueError(f"optimizer.warmup_iters must be >= 0, got {self.warmup_iters}")


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
    """Seeds model initialisation and dropout (the data order has its own, ``data.seed``)."""
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
    """Print (and log) the training metrics every this many steps."""
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
    """clm: next-token prediction (ProGen2-style); mlm: masked-token prediction (ESM-2-style)."""
    model: ModelConfig
    """The transformer body."""
    data: DataConfig
    """Corpora, sampling, splits, masking."""
    training: TrainingConfig
    """Steps, batch sizes, evaluation, precision."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Adam and the learning-rate schedule."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor, pipeline, context and data parallelism."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Saving, resuming, initialising from another run."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Progress lines, metrics files, TensorBoard, W&B."""
    fp8: FP8Config = field(default_factory=FP8Config)
    """Used when training.precision is fp8."""
    name: str = "run"
    """Shown in progress lines and the compute report."""

    def resolve(self, tokenizer=None) -> TrainConfig:
        """This config with the model's derived sizes filled in: its context from ``data.seq_length``,
        its vocabulary from the tokenizer (``data.tokenizer``, loaded when not given). What a run builds,
        saves and compares on resume; the config as written leaves both unset (a value it repeats must agree)."""
        if tokenizer is None and self.model.vocab_size is not None and self.model.seq_length == self.data.seq_length:
            return self  # resolved already
        if tokenizer is None:
            from megatron_plm.data.tokenizers.subword import load_tokenizer

            tokenizer = load_tokenizer(self.data.tokenizer)
        derived = {
            "seq_length": ("data.seq_length", self.data.seq_length),
            "vocab_size": ("the tokenizer", tokenizer.vocab_size),
        }
        for name, (source, value) in derived.items():
            given = getattr(self.model, name)
            if given is not None and given != value:
                raise ValueError(f"model.{name} is {given} but is derived from {source} ({value}); remove model.{name}")
        model = dataclasses.replace(self.model, seq_length=self.data.seq_length, vocab_size=tokenizer.vocab_size)
        return dataclasses.replace(self, model=model)

    def run_dir(self) -> Path | None:
        directory = self.logging.run_dir or self.checkpoint.save
        return Path(directory) if directory else None

    def metrics_path(self) -> Path | None:
        if self.logging.metrics_file:
            return Path(self.logging.metrics_file)
        return self.run_dir() / "metrics.jsonl" if self.run_dir() else None

    def to_dict(self) -> dict:
        return to_plain(self)


@dataclass(kw_only=True)
class TrainCommand(ConfigOverrides):
    """``megatron-plm train``."""

    config: str | None = None
    """YAML run config (see examples/configs/); required to train."""
    print_config: bool = False
    """Print every config field with its value, type, default and doc, then exit."""


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML run config, apply overrides, validate."""
    return config_from_dict(read_config_data(path, overrides))


def config_from_dict(data: dict) -> TrainConfig:
    """A validated :class:`TrainConfig` from a parsed YAML mapping (what :func:`load_config` reads)."""
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
    config.data.validate(config.objective)
    if config.model.seq_length not in (None, config.data.seq_length):  # (vocab_size is checked by resolve)
        raise ValueError(
            f"model.seq_length is {config.model.seq_length} but is derived from data.seq_length "
            f"({config.data.seq_length}); remove model.seq_length"
        )
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
    if t.exit_signal is not None:
        import signal

        if t.exit_signal not in signal.Signals.__members__ or t.exit_signal in ("SIGKILL", "SIGSTOP"):
            raise ValueError(
                f"training.exit_signal must be a catchable signal name such as SIGUSR1, got {t.exit_signal!r}"
            )
    if config.logging.log_interval < 1:  # (0 divided every step's number by zero, after building the model)
        raise ValueError(f"logging.log_interval must be >= 1, got {config.logging.log_interval}")
    intervals = {
        "training.eval_interval": t.eval_interval,
        "training.exit_interval": t.exit_interval,
        "checkpoint.save_interval": config.checkpoint.save_interval,
    }
    for name, value in intervals.items():  # a negative one matched every step silently (step % -1 == 0)
        if value < 0:
            raise ValueError(f"{name} must be >= 0 (0: never), got {value}")
    if config.checkpoint.keep_last < 1:
        raise ValueError(f"checkpoint.keep_last must be >= 1, got {config.checkpoint.keep_last}")
    paths = {
        "checkpoint.save": config.checkpoint.save,
        "checkpoint.load": config.checkpoint.load,
        "checkpoint.init_from": config.checkpoint.init_from,
        "logging.run_dir": config.logging.run_dir,
        "logging.metrics_file": config.logging.metrics_file,
        "logging.tensorboard_dir": config.logging.tensorboard_dir,
    }
    for name, value in paths.items():  # "" would silently mean "not set": nothing saved, nothing logged
        if value is not None and not str(value).strip():
            raise ValueError(f"{name} is an empty path; give a path, or null (leave it out) for none")


INDEX_BYTES_PER_SAMPLE = 24
"""What the train split's sample index costs per sample: megatron-core's shuffle and sample indices
(int64 each) plus the document order they are drawn from (about one more int64)."""


def check_sizes(config: TrainConfig, available: int | None = None) -> None:
    """At training start-up (not at config load: ``plan`` sizes recipes for bigger machines), refuse before
    anything is built a run whose sample indices could not fit in memory (``train_iters``
    x ``global_batch_size`` samples, at :data:`INDEX_BYTES_PER_SAMPLE` bytes each): ``train_iters=1e30``
    once grew past 6 GB, silently, before an allocation error."""
    import os

    t = config.training
    samples = t.train_iters * t.global_batch_size + t.eval_iters * t.global_batch_size
    needed = samples * INDEX_BYTES_PER_SAMPLE
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if needed > available:
        raise ValueError(
            f"training.train_iters ({t.train_iters:,}) x training.global_batch_size ({t.global_batch_size:,}) = "
            f"{t.train_iters * t.global_batch_size:,} samples (and {t.eval_iters * t.global_batch_size:,} for "
            f"validation): their sample indices would need about {needed / 2**30:,.1f} GiB of memory, more than "
            f"the {available / 2**30:,.1f} GiB of this machine; lower training.train_iters or global_batch_size"
        )


def describe_config(config: TrainConfig | None = None) -> str:
    """Every field as YAML: its value (the defaults when ``config`` is None), type, default and doc."""
    return describe(TrainConfig, config)
