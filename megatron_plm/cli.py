"""``megatron-plm`` command line: a thin layer over library functions.

Each subcommand parses its flags into the typed configs of the package and calls
one function; no logic lives here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_env(args: argparse.Namespace) -> int:
    from megatron_plm.runtime.environment import describe_environment

    print(describe_environment())
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from megatron_plm.data.preprocess import run_from_args

    return run_from_args(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from megatron_plm.config import load_config
    from megatron_plm.runtime import initialize
    from megatron_plm.training.trainer import TrainingStopped, train

    config = load_config(args.config, args.overrides)
    with initialize(config.parallel, seed=config.training.seed) as runtime:
        try:
            train(config, runtime)
        except TrainingStopped as stopped:
            print(f"megatron-plm train: stopped: {stopped}", file=sys.stderr)
            return 3
    return 0


def _cmd_export_hf(args: argparse.Namespace) -> int:
    from megatron_plm.checkpoint.export import export_hf
    from megatron_plm.runtime import ParallelConfig, initialize

    with initialize(ParallelConfig()) as runtime:
        out = export_hf(args.checkpoint, args.output, runtime, dtype=args.dtype)
    print(f"wrote {out}: load it with transformers.AutoModelFor{{MaskedLM,CausalLM}}.from_pretrained({str(out)!r})")
    return 0


def _cmd_import_hf(args: argparse.Namespace) -> int:
    from megatron_plm.checkpoint.export import import_hf
    from megatron_plm.runtime import ParallelConfig, initialize

    with initialize(ParallelConfig()) as runtime:
        out = import_hf(args.source, args.output, runtime)
    print(f"wrote {out}: train from it with checkpoint.init_from={out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-plm", description="Protein language model pretraining.")
    commands = parser.add_subparsers(dest="command", required=True)

    env = commands.add_parser("env", help="report torch, megatron-core, GPU and accelerator availability")
    env.set_defaults(func=_cmd_env)

    from megatron_plm.data.preprocess import add_arguments as add_preprocess_arguments

    preprocess = commands.add_parser(
        "preprocess", help="FASTA/JSONL -> megatron .bin/.idx corpus with per-sequence metadata"
    )
    add_preprocess_arguments(preprocess)
    preprocess.set_defaults(func=_cmd_preprocess)

    train = commands.add_parser("train", help="train a CLM or MLM from a YAML config")
    train.add_argument("--config", type=Path, required=True, help="YAML run config (see examples/configs/)")
    train.add_argument("overrides", nargs="*", metavar="dotted.key=VALUE", help="e.g. training.train_iters=100")
    train.set_defaults(func=_cmd_train)

    export = commands.add_parser("export-hf", help="checkpoint (any TP/PP layout) -> transformers model directory")
    export.add_argument("checkpoint", type=Path, help="a checkpoint directory (or a run's save directory)")
    export.add_argument("output", type=Path)
    export.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    export.set_defaults(func=_cmd_export_hf)

    imported = commands.add_parser("import-hf", help="transformers ESM-2 / GPT-NeoX directory -> our checkpoint")
    imported.add_argument("source", help="a transformers model directory")
    imported.add_argument("output", type=Path)
    imported.set_defaults(func=_cmd_import_hf)
    return parser


def main(argv: list[str] | None = None) -> int:
    from megatron_plm.runtime.accelerators import silence_fallback_warnings

    silence_fallback_warnings()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"megatron-plm {args.command}: error: {error}", file=sys.stderr)
        return 2
