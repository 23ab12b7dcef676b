"""The command line as users type it: numbers, overrides in any order, list items, help, --print-config."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest
from conftest import REPO

from megatron_plm import __version__
from megatron_plm.cli import build_parser, main
from megatron_plm.config import apply_overrides, field_docs, parse_yaml
from megatron_plm.training.config import TrainConfig, describe_config, load_config

TINY = REPO / "examples/configs/tiny_clm.yaml"


def test_yaml_numbers_parse_as_written(tmp_path):
    assert parse_yaml("a: 1e-3\nb: 3e-4\nc: 1e30\nd: 1.5e+2\ne: 7\nf: 1_000\ng: '1e-3'") == {
        "a": 0.001,
        "b": 0.0003,
        "c": 1e30,
        "d": 150.0,
        "e": 7,
        "f": 1000,
        "g": "1e-3",
    }
    config = TINY.read_text().replace("lr: 0.003", "lr: 3e-3")
    assert "lr: 3e-3" in config, "the example config spells lr differently; update this test"
    (tmp_path / "run.yaml").write_text(config)
    loaded = load_config(tmp_path / "run.yaml", ["optimizer.min_lr=1e-4", "optimizer.clip_grad=1e30"])
    assert (loaded.optimizer.lr, loaded.optimizer.min_lr, loaded.optimizer.clip_grad) == (3e-3, 1e-4, 1e30)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_rejected_naming_the_field(value):
    with pytest.raises(ValueError, match=r"optimizer\.lr must be a finite number"):
        load_config(TINY, [f"optimizer.lr={value}"])


def test_list_items_are_addressable():
    config = load_config(
        TINY, ["data.sources.0.prefix=corpora/a", "data.sources.1.prefix=corpora/b", "data.sources.1.weight=3e-1"]
    )
    assert [(s.prefix, s.weight) for s in config.data.sources] == [("corpora/a", 1.0), ("corpora/b", 0.3)]
    with pytest.raises(ValueError, match=r"data\.sources is a list of 1; address an item by index 0\.\.1"):
        apply_overrides(parse_yaml("data: {sources: [{prefix: a}]}"), ["data.sources.3.prefix=x"])
    with pytest.raises(ValueError, match=r"training\.train_iters is a value \(30\), not a section"):
        apply_overrides(parse_yaml("training: {train_iters: 30}"), ["training.train_iters.x=1"])


def test_overrides_after_options(capsys):
    assert (
        main(
            [
                "plan",
                str(REPO / "examples/configs/recipes/clm_7b.yaml"),
                "--gpus",
                "8",
                "--gpu",
                "a100-80gb",
                "parallel.tensor_model_parallel_size=2",
                "--mfu",
                "0.3",
            ]
        )
        == 0
    )
    assert "TP 2 x PP 1 x DP 4" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["plan", str(TINY), "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def _actions(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {path}", a) for path, a in _actions(sub))
        else:
            yield "", action


def test_every_flag_has_help_and_shows_its_default():
    parser = build_parser()
    missing = [f"{path}{a.dest}" for path, a in _actions(parser) if not a.help]
    assert not missing, f"flags without help: {missing}"
    text = subprocess.run(
        [sys.executable, "-m", "megatron_plm", "evaluate", "generate", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--top-p TOP_P" in text and "(default: 1.0)" in text
    version = subprocess.run([sys.executable, "-m", "megatron_plm", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"megatron-plm {__version__}"


def test_print_config_lists_every_field_with_value_default_and_doc(capsys, tmp_path):
    import typing

    undocumented = []
    for cls in [TrainConfig, *(typing.get_type_hints(TrainConfig)[f.name] for f in dataclasses.fields(TrainConfig))]:
        if dataclasses.is_dataclass(cls):
            docs = field_docs(cls)
            undocumented += [
                f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls) if f.init and f.name not in docs
            ]
    assert not undocumented, f"config fields without a docstring: {undocumented}"

    assert main(["train", "--print-config", "--config", str(TINY), "optimizer.lr=1e-3"]) == 0
    text = capsys.readouterr().out
    assert "  lr: 0.001" in text and "float, default 0.0004. Peak learning rate" in text
    assert "  train_iters: 30" in text and "int, required" in text
    # The printout is YAML a user can start a config from: it loads back to the same config.
    (tmp_path / "printed.yaml").write_text(text)
    assert load_config(tmp_path / "printed.yaml").to_dict() == load_config(TINY, ["optimizer.lr=1e-3"]).to_dict()
    assert describe_config().count("\n") == text.count("\n")
    assert main(["train"]) == 2
    assert "--config FILE is required" in capsys.readouterr().err


def _parsers(parser, path="megatron-plm"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_help_states_each_default_once_and_summaries_name_every_subcommand():
    import re

    parser = build_parser()
    doubled = []
    for path, sub in _parsers(parser):
        text = " ".join(sub.format_help().split())
        doubled += [f"{path}: {m}" for m in re.findall(r"\(default \S[^()]*\) \(default: [^)]*\)", text)]
    assert not doubled, doubled
    # Each command's one-line summary names every subcommand it has.
    for path, sub in _parsers(parser):
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    child = action.choices[choice.dest]
                    grandchildren = [a for a in child._actions if isinstance(a, argparse._SubParsersAction)]
                    for group in grandchildren:
                        unnamed = [n for n in group.choices if n.split("-")[0] not in choice.help.lower()]
                        assert not unnamed, f"{path} {choice.dest}: the summary {choice.help!r} omits {unnamed}"
