#!/usr/bin/env python
"""Training throughput per attention backend, against the transformers model of the same shape.

For one config (one process; use train_step.py under torchrun for parallel layouts) it times our
backends -- local (megatron-core's attention), sdpa (PyTorch, a block-diagonal mask), varlen (PyTorch's
varlen flash attention over packed batches; its quadratic plain-PyTorch equivalent on CPU), te (when
Transformer Engine is installed) -- and the equivalent transformers model (EsmForMaskedLM for MLM, GPTNeoXForCausalLM for CLM, SDPA
attention, padded batches of the same proteins, AdamW), and prints tokens/s, TFLOP/s, MFU (against the
GPU's bf16 dense peak) and the non-pad fraction in one table. Usage:

    python benchmarks/train_throughput.py --config examples/configs/recipes/esm2_650m.yaml \\
        data.sources=[{prefix: outputs/sample/uniref90_sample}] training.global_batch_size=16 ...
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from train_step import format_rows, free_device_memory, measure, mfu_basis, parse_benchmark_args


def measure_transformers(config_path, overrides, *, warmup: int, steps: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from megatron_plm.checkpoint.hf import hf_config
    from megatron_plm.training.config import load_config
    from megatron_plm.data.samples.builder import DataBuilder
    from megatron_plm.data.samples.loader import BatchLoader
    from megatron_plm.data.samples.splits import Split
    from megatron_plm.training.planner import flops_per_token, peak_flops

    config = load_config(config_path, [*overrides, f"training.train_iters={warmup + steps}"]).resolve()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    auto = AutoModelForMaskedLM if config.objective == "mlm" else AutoModelForCausalLM
    hf = hf_config(config.objective, config.model)
    hf._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if config.training.precision != "fp32" else torch.float32
    with device:  # weights initialised where they train (a 650M model takes ~10x longer on the host)
        model = auto.from_config(hf, attn_implementation="sdpa", dtype=dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optimizer.lr)
    t = config.training
    # What a transformers user trains on: for MLM, ESM-2's one protein per sample (whatever our run packs),
    # padded per batch to its longest; for CLM, the same packed samples as ours.
    if config.objective == "mlm":
        config.data = dataclasses.replace(config.data, packed=False)
    data = DataBuilder(config.data, config.objective).build(Split.TRAIN, (warmup + steps) * t.global_batch_size)
    loader = BatchLoader(data, t.global_batch_size, t.global_batch_size, 0, 1, causal=config.objective == "clm")
    batches = []
    for _ in range(warmup + steps):
        (b,) = loader.next_step()
        real = b.segment_ids >= 0
        width = int(real.sum(1).max())
        labels = torch.where(b.loss_mask[:, :width] > 0, b.labels[:, :width], -100)
        batches.append((b.tokens[:, :width].to(device), real[:, :width].long().to(device), labels.to(device)))

    def step(ids, mask, labels):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for ids, mask, labels in batches[:warmup]:
        step(ids, mask, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for ids, mask, labels in batches[warmup:]:
        step(ids, mask, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    processed = sum(ids.numel() for ids, _, _ in batches[warmup:]) / steps
    real = sum(int(mask.sum()) for _, mask, _ in batches[warmup:]) / steps
    achieved = flops_per_token(config) * processed / seconds
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return {
        "name": f"transformers {type(model).__name__} [sdpa]",
        "layout": "1 device",
        "device": device.type,
        "seconds": seconds,
        "tokens_per_s": processed / seconds,
        "tokens_per_s_device": processed / seconds,
        "non_pad": real / processed,
        "tflops": achieved / 1e12 if device.type == "cuda" else None,
        "mfu": achieved / peak if peak else None,
    }


def main(argv: list[str] | None = None) -> int:
    from megatron_plm.runtime.accelerators import detect

    def backends_flag(parser):
        parser.add_argument(
            "--backends",
            default=None,
            help="comma-separated attention backends to time (default: local,sdpa,varlen and te where installed)",
        )

    args = parse_benchmark_args(__doc__, argv, extra=backends_flag)
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = ["local", "sdpa", "varlen"] + (["te"] if detect().transformer_engine else [])
    # Each row is printed as soon as it is measured: a run cut short by its time limit keeps what it measured.
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}")
    print(format_rows([]), flush=True)
    rows = []
    for backend in backends:
        overrides = [*args.overrides, f"model.attention_backend={backend}"]
        rows.append(measure(args.config, overrides, warmup=args.warmup, steps=args.steps))
        print(format_rows([rows[-1]], header=False), flush=True)
        free_device_memory()
    rows.append(measure_transformers(args.config, args.overrides, warmup=args.warmup, steps=args.steps))
    print(format_rows([rows[-1]], header=False), flush=True)
    base = rows[-1]["tokens_per_s"]
    print(
        "real tokens/s vs transformers: "
        + ", ".join(
            f"{r['name']} {r['tokens_per_s'] * r['non_pad'] / (base * rows[-1]['non_pad']):.2f}x" for r in rows[:-1]
        )
    )
    print(mfu_basis())
    return 0


if __name__ == "__main__":
    sys.exit(main())
