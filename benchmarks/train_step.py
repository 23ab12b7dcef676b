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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    from megatron_plm.config import load_config
    from megatron_plm.data.builder import DataBuilder
    from megatron_plm.data.loader import BatchLoader
    from megatron_plm.data.splits import Split
    from megatron_plm.data.tokenizer import ProteinTokenizer
    from megatron_plm.runtime import initialize
    from megatron_plm.runtime.accelerators import silence_fallback_warnings
    from megatron_plm.training.build import build_training_state
    from megatron_plm.training.step import train_step
    from megatron_plm.planning.planner import flops_per_token, peak_flops

    silence_fallback_warnings()
    total = args.warmup + args.steps
    config = load_config(args.config, [*args.overrides, f"training.train_iters={total}"])
    config.model.vocab_size = ProteinTokenizer().vocab_size
    t = config.training
    with initialize(config.parallel, seed=t.seed) as runtime:
        state = build_training_state(config.model, config.optimizer, runtime, objective=config.objective,
                                     precision=t.precision, train_iters=total)  # fmt: skip
        data = DataBuilder(config.data).build(Split.TRAIN, total * t.global_batch_size)
        loader = BatchLoader(data, t.global_batch_size, t.micro_batch_size, runtime.dp_rank,
                             runtime.data_parallel_size, causal=config.objective == "clm")  # fmt: skip
        steps = [[b.to(runtime.device) for b in loader.next_step()] for _ in range(total)]
        for microbatches in steps[: args.warmup]:
            train_step(state, microbatches, runtime)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        supervised = 0
        for microbatches in steps[args.warmup :]:
            supervised += train_step(state, microbatches, runtime).tokens
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / args.steps
        if runtime.is_main_process:
            processed = t.global_batch_size * config.data.seq_length
            real = sum(int((b.segment_ids >= 0).sum()) for mbs in steps[args.warmup :] for b in mbs)
            real = real * runtime.data_parallel_size / args.steps  # every DP rank holds its share
            per_device = processed / seconds / runtime.world_size
            p = runtime.parallel
            print(f"{'config':<28} {'layout':<14} {'device':<8} {'s/step':>8} {'tokens/s':>10} "
                  f"{'tok/s/dev':>10} {'non-pad':>8} {'TFLOP/s/dev':>12} {'MFU':>6}")  # fmt: skip
            tflops = mfu = "-"
            if runtime.device.type == "cuda":
                achieved = flops_per_token(config) * per_device
                tflops = f"{achieved / 1e12:.1f}"
                peak = peak_flops(torch.cuda.get_device_name(runtime.device))
                mfu = f"{achieved / peak:.1%}" if peak else "-"
            layout = f"TP{p.tensor_model_parallel_size}xPP{p.pipeline_model_parallel_size}xDP{runtime.data_parallel_size}"
            print(f"{config.name:<28} {layout:<14} {runtime.device.type:<8} {seconds:>8.3f} "
                  f"{processed / seconds:>10,.0f} {per_device:>10,.0f} {real / processed:>8.1%} {tflops:>12} {mfu:>6}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
