#!/usr/bin/env python
"""Training-step throughput for a run config: tokens/s, and TFLOP/s and MFU on a GPU.

Builds the model, optimizer and data of CONFIG exactly as ``megatron-plm train`` does, runs
``--warmup`` untimed steps and ``--steps`` timed ones, and prints one table row per run.
Launch under torchrun for a parallel layout. Usage:

    python benchmarks/train_step.py --config examples/configs/tiny_clm.yaml [dotted.key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def measure(config_path, overrides, *, warmup: int = 3, steps: int = 10) -> dict | None:
    """Time ``steps`` training steps of a config (after ``warmup``); returns a row on the main rank."""
    from megatron_plm.config import load_config
    from megatron_plm.data.builder import DataBuilder
    from megatron_plm.data.loader import BatchLoader
    from megatron_plm.data.splits import Split
    from megatron_plm.data.tokenizer import ProteinTokenizer
    from megatron_plm.planning.planner import flops_per_token, peak_flops
    from megatron_plm.runtime import initialize
    from megatron_plm.training.build import build_training_state
    from megatron_plm.training.step import train_step

    total = warmup + steps
    config = load_config(config_path, [*overrides, f"training.train_iters={total}"])
    config.model.vocab_size = ProteinTokenizer().vocab_size
    t = config.training
    with initialize(config.parallel, seed=t.seed) as runtime:
        state = build_training_state(config.model, config.optimizer, runtime, objective=config.objective,
                                     precision=t.precision, train_iters=total, fp8=config.fp8)  # fmt: skip
        data = DataBuilder(config.data).build(Split.TRAIN, total * t.global_batch_size)
        loader = BatchLoader(data, t.global_batch_size, t.micro_batch_size, runtime.dp_rank,
                             runtime.data_parallel_size, causal=config.objective == "clm")  # fmt: skip
        batches = [[b.to(runtime.device) for b in loader.next_step()] for _ in range(total)]
        for microbatches in batches[:warmup]:
            train_step(state, microbatches, runtime)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for microbatches in batches[warmup:]:
            train_step(state, microbatches, runtime)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / steps
        if not runtime.is_main_process:
            return None
        processed = t.global_batch_size * config.data.seq_length
        real = sum(int((b.segment_ids >= 0).sum()) for mbs in batches[warmup:] for b in mbs)
        real = real * runtime.data_parallel_size / steps  # every DP rank holds its share
        per_device = processed / seconds / runtime.world_size
        achieved = flops_per_token(config) * per_device
        peak = peak_flops(torch.cuda.get_device_name(runtime.device)) if runtime.device.type == "cuda" else None
        p = runtime.parallel
        return {
            "name": f"{config.name} [{config.model.attention_backend}]",
            "layout": f"TP{p.tensor_model_parallel_size}xPP{p.pipeline_model_parallel_size}xDP{runtime.data_parallel_size}",
            "device": runtime.device.type, "seconds": seconds, "tokens_per_s": processed / seconds,
            "tokens_per_s_device": per_device, "non_pad": real / processed,
            "tflops": achieved / 1e12 if runtime.device.type == "cuda" else None,
            "mfu": achieved / peak if peak else None,
        }  # fmt: skip


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'run':<40} {'layout':<13} {'device':<7} {'s/step':>8} {'tokens/s':>10} {'tok/s/dev':>10} "
             f"{'non-pad':>8} {'TFLOP/s/dev':>12} {'MFU':>6}"]  # fmt: skip
    for r in rows:
        tflops = f"{r['tflops']:.1f}" if r["tflops"] is not None else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(f"{r['name']:<40} {r['layout']:<13} {r['device']:<7} {r['seconds']:>8.3f} {r['tokens_per_s']:>10,.0f} "
                     f"{r['tokens_per_s_device']:>10,.0f} {r['non_pad']:>8.1%} {tflops:>12} {mfu:>6}")  # fmt: skip
    return "\n".join(lines)


def mfu_basis() -> str:
    """What the MFU column is measured against (the GPU's dense bf16 peak, and where that figure comes from)."""
    from megatron_plm.planning.planner import accelerator_of

    if not torch.cuda.is_available():
        return "MFU: - (no GPU)"
    name = torch.cuda.get_device_name(0)
    accelerator = accelerator_of(name)
    if accelerator is None:
        return f"MFU: - ({name} is not in megatron_plm.planning.planner.ACCELERATORS)"
    return f"MFU against {accelerator.bf16_tflops:g} TFLOP/s, the dense bf16 peak of the {accelerator.name} ({accelerator.source})"


def parse_benchmark_args(description: str, argv: list[str] | None, *, extra=None) -> argparse.Namespace:
    """The arguments both training benchmarks take (``extra(parser)`` adds a script's own); also quiets
    megatron's fallback warnings."""
    from megatron_plm.runtime.accelerators import silence_fallback_warnings

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    if extra is not None:
        extra(parser)
    parser.add_argument("overrides", nargs="*")
    silence_fallback_warnings()
    return parser.parse_intermixed_args(argv)  # flags may follow the overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_benchmark_args(__doc__, argv)
    row = measure(args.config, args.overrides, warmup=args.warmup, steps=args.steps)
    if row is not None:
        print(format_rows([row]))
        print(mfu_basis())
    return 0


if __name__ == "__main__":
    sys.exit(main())
