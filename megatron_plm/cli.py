"""``megatron-plm`` command line: a thin layer over library functions.

Each subcommand parses its flags into the typed configs of the package and calls
one function; no logic lives here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_parallel_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tensor-model-parallel-size", "--tp", type=int, default=1, dest="tp")
    parser.add_argument("--pipeline-model-parallel-size", "--pp", type=int, default=1, dest="pp")


def _cmd_env(args: argparse.Namespace) -> int:
    from megatron_plm.runtime.environment import describe_environment

    print(describe_environment())
    return 0


def _cmd_smoke(args: argparse.Namespace) -> int:
    from megatron_plm.runtime import ParallelConfig, initialize
    from megatron_plm.training.smoke import SmokeConfig, run_smoke, tiny_model_config

    parallel = ParallelConfig(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp)
    cfg = SmokeConfig(
        fasta=args.fasta,
        data_prefix=args.data_prefix,
        steps=args.steps,
        global_batch_size=args.global_batch_size,
        micro_batch_size=args.micro_batch_size,
        seed=args.seed,
        model=tiny_model_config(args.seq_length),
        parallel=parallel,
        load_weights=args.load_weights,
        save_initial_weights=args.save_initial_weights,
        metrics_json=args.metrics_json,
    )
    with initialize(parallel, seed=args.seed) as runtime:
        run_smoke(cfg, runtime)
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

    smoke = commands.add_parser(
        "smoke",
        help="a short real CLM training run of a tiny model (install and layout check)",
    )
    source = smoke.add_mutually_exclusive_group(required=True)
    source.add_argument("--fasta", type=Path, help="FASTA file (plain or gzip)")
    source.add_argument("--data-prefix", type=Path, help="corpus written by 'megatron-plm preprocess'")
    smoke.add_argument("--steps", type=int, default=20)
    smoke.add_argument("--global-batch-size", type=int, default=8)
    smoke.add_argument("--micro-batch-size", type=int, default=2)
    smoke.add_argument("--seq-length", type=int, default=128)
    smoke.add_argument("--seed", type=int, default=1234)
    smoke.add_argument("--load-weights", type=Path)
    smoke.add_argument("--save-initial-weights", type=Path)
    smoke.add_argument("--metrics-json", type=Path)
    _add_parallel_flags(smoke)
    smoke.set_defaults(func=_cmd_smoke)
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
