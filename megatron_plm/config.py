"""The run configuration: typed dataclasses, loaded from YAML with dotted command-line overrides.

Each part lives next to the code it configures (``ModelConfig`` in models, ``DataConfig`` in
data, ``OptimizerConfig`` in training, ``ParallelConfig`` in runtime); :class:`TrainConfig`
gathers them. Loading is strict: an unknown key, a wrong type or an invalid value is a
``ValueError`` naming the dotted field and what to do.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from megatron_plm.data.samples.builder import DataConfig
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

    def __post_init__(self):
        # Derived, not set twice: the data follows the objective, the model its data and tokenizer.
        from megatron_plm.data.tokenizers.subword import load_tokenizer

        if self.data.objective != self.objective:
            self.data = dataclasses.replace(self.data, objective=self.objective)
        self.model.seq_length = self.data.seq_length
        self.model.vocab_size = load_tokenizer(self.data.tokenizer).vocab_size

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


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3``, ``3e-4`` and ``1e30`` are numbers.

    PyYAML implements YAML 1.1, whose float pattern needs a dot and a signed exponent, so the way
    people write learning rates would otherwise load as strings."""


ConfigLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text):
    """Parse YAML text (or a stream) with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)


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
        if not math.isfinite(value):
            raise ValueError(
                f"{where} must be a finite number, got {value!r} (for 'no limit' write a large one, e.g. 1e30)"
            )
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


OTHER_NAMES = {
    "learning_rate": "lr",
    "min_learning_rate": "min_lr",
    "warmup_steps": "warmup_iters",
    "lr_warmup_iters": "warmup_iters",
    "max_grad_norm": "clip_grad",
    "lr_decay_style": "decay_style",
    "lr_scheduler_type": "decay_style",
    "max_steps": "train_iters",
    "num_train_steps": "train_iters",
    "batch_size": "global_batch_size",
    "per_device_train_batch_size": "micro_batch_size",
    "num_hidden_layers": "num_layers",
    "n_layer": "num_layers",
    "n_embd": "hidden_size",
    "n_head": "num_attention_heads",
    "intermediate_size": "ffn_hidden_size",
    "seq_len": "seq_length",
    "tensor_parallel_size": "tensor_model_parallel_size",
    "pipeline_parallel_size": "pipeline_model_parallel_size",
    "recompute_granularity": "activation_recompute",
}
"""What other frameworks (``transformers``, Megatron-LM's flags, nanoGPT) call our fields: the hint for an
unknown key names ours when the section has it."""


def _unknown_field_hint(key: str, fields: dict, hints: dict, where: str) -> str:
    """A field that moved into a nested section (``data.mask_ratio`` -> ``data.masking.mask_ratio``)
    is named exactly, as is ours for another framework's name (``optimizer.learning_rate`` ->
    ``optimizer.lr``); otherwise the closest spelling, if any."""
    for name in fields:
        nested = hints.get(name)
        if dataclasses.is_dataclass(nested) and key in {f.name for f in dataclasses.fields(nested) if f.init}:
            return f" (it moved: write {'.'.join(filter(None, [where, name, key]))!r})"
    if OTHER_NAMES.get(key) in fields:
        return f" (did you mean {'.'.join(filter(None, [where, OTHER_NAMES[key]]))!r}?)"
    close = difflib.get_close_matches(key, fields, n=1)
    return f" (did you mean {'.'.join(filter(None, [where, close[0]]))!r}?)" if close else ""


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
            raise ValueError(f"unknown config field {path!r}{_unknown_field_hint(key, fields, hints, where)}")
        kwargs[key] = _convert(value, hints[key], path)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(
            f"missing config field{'s' if len(missing) > 1 else ''}: "
            + ", ".join(".".join(filter(None, [where, m])) for m in missing)
        )
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=VALUE`` overrides (VALUE parsed as YAML) to a nested mapping.

    A number addresses a list item (``data.sources.0.prefix=...``); the index one past the end
    appends an item."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r} is not of the form dotted.key=value")
        node: Any = data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            value = parse_yaml(raw) if last else {}
            where = ".".join(parts[:depth]) or "the config"
            if isinstance(node, list):
                if not part.isdigit() or int(part) > len(node):
                    raise ValueError(
                        f"override {override!r}: {where} is a list of {len(node)}; "
                        f"address an item by index 0..{len(node)} ({len(node)} appends)"
                    )
                index = int(part)
                if index == len(node):
                    node.append(value)
                elif last:
                    node[index] = value
                node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, value)
            else:
                raise ValueError(f"override {override!r}: {where} is a value ({node!r}), not a section or list")
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML run config, apply overrides, validate."""
    return config_from_dict(read_config_data(path, overrides))


def read_config_data(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """The YAML mapping of a run config (``{}`` for None) with ``overrides`` applied, not yet validated."""
    data: dict = {}
    if path is not None:
        if Path(path).is_dir():
            raise ValueError(f"--config {path} is a directory; give a YAML file (see examples/configs/)")
        try:
            with open(path, encoding="utf-8-sig") as handle:  # -sig: a UTF-8 BOM is not part of the YAML
                data = parse_yaml(handle) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{path}{where}: invalid YAML ({problem}); fix the file") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a run config is a YAML mapping (key: value), got a {type(data).__name__}")
    return apply_overrides(data, list(overrides))


def config_from_dict(data: dict) -> TrainConfig:
    """A validated :class:`TrainConfig` from a parsed YAML mapping (what :func:`load_config` reads)."""
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
    derived = {
        "seq_length": ("data.seq_length", config.model.seq_length),
        "vocab_size": ("the tokenizer", config.model.vocab_size),
    }
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


# ---- describing ----------------------------------------------------------------------------------------


def field_docs(cls) -> dict[str, str]:
    """The first sentence of each field's docstring (the string literal under it), by field name."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError):
            continue
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                text = " ".join(following.value.value.split())
                docs[node.target.id] = re.split(r"(?<=\.)\s(?=[A-Z(`])", text, maxsplit=1)[0].rstrip(".")
    return docs


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is Literal:
        return "|".join(map(str, typing.get_args(annotation)))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (list, tuple):
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _yaml_scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _describe(cls, instance, indent: str, lines: list) -> None:
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        annotation = hints[f.name]
        value = getattr(instance, f.name) if instance is not None else None
        if f.default is not dataclasses.MISSING:
            default = _yaml_scalar(_to_plain(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            default = None if dataclasses.is_dataclass(annotation) else _yaml_scalar(_to_plain(f.default_factory()))
        else:
            default = "required"
        note = f"{_type_name(annotation)}" + (f", default {default}" if default not in (None, "required") else "")
        note += ", required" if default == "required" else ""
        doc = f"  # {note}" + (f". {docs[f.name]}" if f.name in docs else "")
        item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        if dataclasses.is_dataclass(annotation):
            lines.append(f"{indent}{f.name}:".ljust(40) + (f"  # {docs[f.name]}" if f.name in docs else ""))
            sub = (
                value
                if instance is not None
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            )
            _describe(annotation, sub, indent + "  ", lines)
        elif item is not None and dataclasses.is_dataclass(item):
            lines.append(f"{indent}{f.name}:".ljust(40) + doc)
            for element in value if instance is not None else [None]:
                start = len(lines)
                _describe(item, element, indent + "  ", lines)
                lines[start] = f"{indent}- " + lines[start][len(indent) + 2 :]
        else:
            shown = (
                ""
                if instance is None and default == "required"
                else " "
                + _yaml_scalar(
                    _to_plain(
                        value
                        if instance is not None
                        else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                    )
                )
            )
            lines.append(f"{indent}{f.name}:{shown}".ljust(40) + doc)


def describe_config(config: TrainConfig | None = None) -> str:
    """Every field as YAML: its value (the defaults when ``config`` is None), type, default and doc."""
    lines: list[str] = []
    _describe(TrainConfig, config, "", lines)
    return "\n".join(line.rstrip() for line in lines) + "\n"
