#!/usr/bin/env python
"""Training-step throughput for a run config: tokens/s, and TFLOP/s and MFU on a GPU.

Builds the model, optimizer and data of CONFIG exactly as ``megatron-plm train`` does, runs
``--warmup`` untimed steps and ``--steps`` timed ones, and prints one table row per run.
Launch under torchrun for a parallel layout. Usage:

    python benchmarks/train_step.py --config examples/configs/tiny_clm.yaml [dotted.key=value ...]

``--optimizer-step`` instead times the optimizer part of a step two ways on the same model and
gradients, alternating (``--steps`` times each, medians): ``training.step.optimizer_step`` (prepare the grads and reduce
the gradient norm once, then clip and step) against the step it replaced, which called
``prepare_grads()`` and ``get_grad_norm()`` and then ``optimizer.step()`` (preparing and reducing again).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def measure(config_path, overrides, *, warmup: int = 3, steps: int = 10) -> dict | None:
    """Time ``steps`` training steps of a config (after ``warmup``); returns a row on the main rank."""
    from megatron_plm.training.config import load_config
    from megatron_plm.training.planner import flops_per_token, peak_flops
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.training.build import build_run
    from megatron_plm.training.step import train_step

    total = warmup + steps
    config = load_config(config_path, [*overrides, f"training.train_iters={total}"]).resolve()
    t = config.training
    with initialize(config.parallel, seed=t.seed) as runtime:
        state = build_run(config, runtime)
        batches = _batches(config, runtime, total)
        for microbatches in batches[:warmup]:
            train_step(state, microbatches, runtime)
        if runtime.on_gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for microbatches in batches[warmup:]:
            train_step(state, microbatches, runtime)
        if runtime.on_gpu:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / steps
        if not runtime.is_main_process:
            return None
        processed = t.global_batch_size * config.data.seq_length
        real = sum(int((b.segment_ids >= 0).sum()) for mbs in batches[warmup:] for b in mbs)
        real = real * runtime.data_parallel_size / steps  # every DP rank holds its share
        per_device = processed / seconds / runtime.world_size
        achieved = flops_per_token(config) * per_device
        peak = peak_flops(torch.cuda.get_device_name(runtime.device)) if runtime.on_gpu else None
        p = runtime.parallel
        return {
            "name": f"{config.name} [{config.model.attention_backend}]",
            "layout": f"TP{p.tensor_model_parallel_size}xPP{p.pipeline_model_parallel_size}xDP{runtime.data_parallel_size}",
            "device": runtime.device.type if runtime.on_gpu else "cpu",
            "seconds": seconds,
            "tokens_per_s": processed / seconds,
            "tokens_per_s_device": per_device,
            "non_pad": real / processed,
            "tflops": achieved / 1e12 if runtime.on_gpu else None,
            "mfu": achieved / peak if peak else None,
        }


def _batches(config, runtime, steps: int) -> list:
    from megatron_plm.data.samples.builder import DataBuilder
    from megatron_plm.data.samples.loader import BatchLoader
    from megatron_plm.data.samples.splits import Split

    t = config.training
    data = DataBuilder(config.data, config.objective).build(Split.TRAIN, steps * t.global_batch_size)
    loader = BatchLoader(
        data,
        t.global_batch_size,
        t.micro_batch_size,
        runtime.dp_rank,
        runtime.data_parallel_size,
        causal=config.objective == "clm",
    )
    return [[b.to(runtime.device) for b in loader.next_step()] for _ in range(steps)]


def _reducing_twice(optimizer, *, finite: bool = True) -> tuple[bool, float]:
    """The optimizer step before: checked with its own norm, then ``optimizer.step()`` prepares and reduces again."""
    import math

    found_inf = optimizer.prepare_grads()
    grad_norm = float(optimizer.get_grad_norm())
    if found_inf or not finite or not math.isfinite(grad_norm):
        optimizer.zero_grad()
        return True, grad_norm
    success, norm, _ = optimizer.step()
    return not success, norm if norm is not None else grad_norm


def measure_optimizer_step(config_path, overrides, *, warmup: int = 3, steps: int = 10) -> list[dict] | None:
    """Milliseconds in the optimizer part of a step, one gradient-norm reduction against two: after
    ``warmup`` training steps and one timed one, each variant runs ``steps`` times on the gradients
    of that step, alternating, and the medians are reported (robust to a busy machine)."""
    import statistics

    from megatron_plm.training.config import load_config
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.training.build import build_run
    from megatron_plm.training.step import optimizer_step, train_step

    config = load_config(config_path, [*overrides, f"training.train_iters={warmup + 1 + 2 * steps}"]).resolve()
    variants = {"one reduction (optimizer_step)": optimizer_step, "two reductions (before)": _reducing_twice}
    with initialize(config.parallel, seed=config.training.seed) as runtime:
        state = build_run(config, runtime)
        sync = torch.cuda.synchronize if runtime.on_gpu else (lambda: None)
        batches = _batches(config, runtime, warmup + 1)
        for microbatches in batches[:warmup]:
            train_step(state, microbatches, runtime)
        sync()
        started = time.perf_counter()
        train_step(state, batches[warmup], runtime)  # leaves its gradients in the grad buffers
        sync()
        step_ms = (time.perf_counter() - started) * 1e3
        samples = {name: [] for name in variants}
        cpu_samples = {name: [] for name in variants}
        reductions = {name: 0 for name in variants}
        all_reduce = torch.distributed.all_reduce
        try:
            for repeat in range(steps):
                for name in sorted(variants, reverse=repeat % 2 == 1):

                    def counted(*args, _name=name, **kwargs):  # the collectives this variant issues
                        reductions[_name] += 1
                        return all_reduce(*args, **kwargs)

                    torch.distributed.all_reduce = counted
                    sync()
                    started, cpu_started = time.perf_counter(), time.process_time()
                    variants[name](state.optimizer)
                    sync()
                    samples[name].append((time.perf_counter() - started) * 1e3)
                    cpu_samples[name].append((time.process_time() - cpu_started) * 1e3)
                    torch.distributed.all_reduce = all_reduce
        finally:
            torch.distributed.all_reduce = all_reduce
        if not runtime.is_main_process:
            return None
    return [
        {
            "variant": name,
            "step_ms": step_ms,
            "optimizer_ms": statistics.median(times),
            "optimizer_cpu_ms": statistics.median(cpu_samples[name]),
            "all_reduces": reductions[name] / steps,
        }
        for name, times in samples.items()
    ]


def format_optimizer_rows(rows: list[dict]) -> str:
    base = rows[-1]
    lines = [
        f"{'optimizer step':<32} {'all-reduces':>11} {'wall ms (median)':>17} {'CPU ms (median)':>16} "
        f"{'saved wall ms/step':>19} {'of a step':>10}"
    ]
    for r in rows:
        saved = base["optimizer_ms"] - r["optimizer_ms"]
        lines.append(
            f"{r['variant']:<32} {r['all_reduces']:>11.0f} {r['optimizer_ms']:>17.3f} "
            f"{r['optimizer_cpu_ms']:>16.3f} {saved:>19.3f} {saved / r['step_ms']:>10.2%}"
        )
    return "\n".join(lines) + f"\n(one whole training step: {rows[0]['step_ms']:.1f} ms)"


def format_rows(rows: list[dict], *, header: bool = True) -> str:
    lines = [
        f"{'run':<40} {'layout':<13} {'device':<7} {'s/step':>8} {'tokens/s':>10} {'tok/s/dev':>10} "
        f"{'non-pad':>8} {'TFLOP/s/dev':>12} {'MFU':>6}"
    ][: int(header)]
    for r in rows:
        tflops = f"{r['tflops']:.1f}" if r["tflops"] is not None else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(
            f"{r['name']:<40} {r['layout']:<13} {r['device']:<7} {r['seconds']:>8.3f} {r['tokens_per_s']:>10,.0f} "
            f"{r['tokens_per_s_device']:>10,.0f} {r['non_pad']:>8.1%} {tflops:>12} {mfu:>6}"
        )
    return "\n".join(lines)


def free_device_memory() -> None:
    """Return what the last measurement held to the GPU, so the next model of a suite starts with all of it."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def mfu_basis() -> str:
    """What the MFU column is measured against (the GPU's dense bf16 peak, and where that figure comes from)."""
    from megatron_plm.training.planner import accelerator_of

    if not torch.cuda.is_available():
        return "MFU: - (no GPU)"
    name = torch.cuda.get_device_name(0)
    accelerator = accelerator_of(name)
    if accelerator is None:
        return f"MFU: - ({name} is not in megatron_plm.training.planner.ACCELERATORS)"
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
    def optimizer_step_flag(parser):
        parser.add_argument(
            "--optimizer-step",
            action="store_true",
            help="time the one-reduction optimizer step against the two-reduction one it replaced",
        )

    args = parse_benchmark_args(__doc__, argv, extra=optimizer_step_flag)
    if args.optimizer_step:
        rows = measure_optimizer_step(args.config, args.overrides, warmup=args.warmup, steps=args.steps)
        if rows is not None:
            print(format_optimizer_rows(rows))
        return 0
    row = measure(args.config, args.overrides, warmup=args.warmup, steps=args.steps)
    if row is not None:
        print(format_rows([row]))
        print(mfu_basis())
    return 0


if __name__ == "__main__":
    sys.exit(main())
