"""Typed configuration from the outside world: YAML files with dotted overrides, and command lines.

Every configurable thing is a dataclass whose fields carry a docstring (the string under the field).
From that one definition this module reads a YAML mapping strictly (an unknown key, a wrong type or
an invalid value is a ``ValueError`` naming the dotted field and what to do), describes every field
(``train --print-config``), and builds a command's flags and help (:func:`add_arguments`): one place
per default and per doc line. It imports no torch.
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


@dataclass(kw_only=True)
class ConfigOverrides:
    """A command that takes a YAML config also takes dotted overrides of it."""

    overrides: list[str] = field(
        default_factory=list, metadata={"cli": {"positional": True, "nargs": "*", "metavar": "dotted.key=VALUE"}}
    )
    """dotted.key=VALUE overrides of the config, before or after the options; VALUE is YAML (1e-3, null, [a, b],
    {prefix: p}); a number addresses a list item: data.sources.0.prefix=PATH."""


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


def to_plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
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
            refused = getattr(cls, "NOT_SUPPORTED", {}).get(key)
            if refused:  # a setting people expect, named with why it is not there
                raise ValueError(f"{path} is not supported ({refused}), got {value!r}; remove it")
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


# ---- describing ----------------------------------------------------------------------------------------


def field_docstrings(cls) -> dict[str, str]:
    """Each field's docstring (the string literal under it), whitespace collapsed, by field name."""
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
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def field_docs(cls) -> dict[str, str]:
    """The first sentence of each field's docstring, by field name."""
    return {
        name: re.split(r"(?<=\.)\s(?=[A-Z(`])", text, maxsplit=1)[0].rstrip(".")
        for name, text in field_docstrings(cls).items()
    }


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
            default = _yaml_scalar(to_plain(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            default = None if dataclasses.is_dataclass(annotation) else _yaml_scalar(to_plain(f.default_factory()))
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
                    to_plain(
                        value
                        if instance is not None
                        else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                    )
                )
            )
            lines.append(f"{indent}{f.name}:{shown}".ljust(40) + doc)


def describe(cls, instance=None) -> str:
    """Every field of dataclass ``cls`` as YAML: its value (the defaults when ``instance`` is None), type,
    default and doc."""
    lines: list[str] = []
    _describe(cls, instance, "", lines)
    return "\n".join(line.rstrip() for line in lines) + "\n"


# ---- command lines -------------------------------------------------------------------------------------


def add_arguments(parser, cls, *, exclude: tuple[str, ...] = ()) -> None:
    """A flag per field of dataclass ``cls``: ``--field-name``, its type or choices and default from the
    annotation and default, required when it has none, its help the field's docstring.

    A bool that defaults to False is a switch; one that defaults to True is turned off by ``--no-NAME``.
    A list takes several values. ``field(metadata={"cli": {...}})`` adjusts one field: ``positional``,
    ``flags`` (the names, e.g. ``["--num-sequences", "--num"]``), ``skip``, ``group`` (an argument group's
    title) and any ``argparse`` keyword (``metavar``, ``action="extend"``, ``type``)."""
    hints, docs = typing.get_type_hints(cls), field_docstrings(cls)
    groups: dict[str, Any] = {}
    # A positional that takes any number of values goes last (a base class's overrides after CONFIG).
    ordered = sorted(dataclasses.fields(cls), key=lambda f: f.metadata.get("cli", {}).get("nargs") == "*")
    for f in ordered:
        cli = dict(f.metadata.get("cli", {}))
        if not f.init or f.name in exclude or cli.pop("skip", False):
            continue
        target = parser
        if "group" in cli:
            title = cli.pop("group")
            target = groups.setdefault(title, parser.add_argument_group(title))
        positional = cli.pop("positional", False)
        flags = cli.pop("flags", None)
        annotation = hints[f.name]
        options = typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None: the X
            annotation = next(a for a in options if a is not type(None))
        default = _default(f)
        kwargs: dict[str, Any] = {"help": docs.get(f.name, "").replace("%", "%%") or None}
        name = f.name.replace("_", "-")
        if annotation is bool:
            kwargs["action"] = "store_false" if default is True else "store_true"
            flags = flags or [f"--no-{name}" if default is True else f"--{name}"]
            if default is True and kwargs["help"]:  # the docstring says what the field turns on
                kwargs["help"] = f"Turn off: {kwargs['help'][0].lower()}{kwargs['help'][1:]}"
        elif typing.get_origin(annotation) is Literal:
            kwargs["choices"] = list(typing.get_args(annotation))
            kwargs["type"] = type(kwargs["choices"][0])
        elif typing.get_origin(annotation) in (list, tuple):
            kwargs["nargs"] = "+"
            item = (typing.get_args(annotation) or (str,))[0]
            if typing.get_origin(item) is Literal:
                kwargs["choices"] = list(typing.get_args(item))
            kwargs["type"] = item if item in (int, float, str, Path) else str
        elif annotation in (int, float, str, Path):
            kwargs["type"] = annotation
        kwargs.update(cli)
        if positional:
            if default is not dataclasses.MISSING:
                kwargs.setdefault("nargs", "?")
                kwargs["default"] = default
            target.add_argument(f.name, **kwargs)
            continue
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        elif "action" not in kwargs or kwargs["action"] in ("extend", "append"):
            kwargs["default"] = default
        target.add_argument(*(flags or [f"--{name}"]), dest=f.name, **kwargs)


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def from_args(cls, namespace, **given):
    """``cls`` from the fields :func:`add_arguments` put on ``namespace`` (``given`` adds or replaces some)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init or not hasattr(namespace, f.name):
            continue
        value = getattr(namespace, f.name)
        if isinstance(value, list) and typing.get_origin(hints[f.name]) is tuple:
            value = tuple(value)
        values[f.name] = value
    return cls(**{**values, **given})
