"""The compute ledger: tokens and FLOPs per training phase (e.g. a CLM phase, then the MLM run
initialised from it), carried in checkpoints so a transfer study can report total compute; and
the achieved TFLOP/s and MFU of this launch on a GPU."""

from __future__ import annotations

import torch

from megatron_plm.training.config import TrainConfig
from megatron_plm.runtime.distributed import Runtime


class ComputeLedger:
    def __init__(self, config: TrainConfig, runtime: Runtime, phases: list[dict]):
        from megatron_plm.training.planner import flops_per_token, peak_flops

        self.phases = [dict(p) for p in phases]
        if not self.phases or self.phases[-1]["name"] != config.name:
            self.phases.append({"name": config.name, "objective": config.objective, "tokens": 0, "flops": 0.0})
        self.flops_per_token = flops_per_token(config)
        self.world_size = runtime.world_size
        self.on_gpu = runtime.on_gpu
        self.peak = peak_flops(torch.cuda.get_device_name(runtime.device)) if self.on_gpu else None

    def add(self, tokens: int) -> None:
        """Count ``tokens`` processed (all ranks together) in this run's phase."""
        self.phases[-1]["tokens"] += tokens
        self.phases[-1]["flops"] += self.flops_per_token * tokens

    def rates(self, tokens_per_s: float) -> dict:
        """TFLOP/s per GPU and MFU (GPU only) at a global throughput."""
        if not self.on_gpu:
            return {}
        tflops = self.flops_per_token * tokens_per_s / self.world_size / 1e12
        return {"tflops_per_gpu": tflops, **({"mfu": tflops * 1e12 / self.peak} if self.peak else {})}

    def summary(self) -> str:
        total = sum(p["flops"] for p in self.phases) or 1.0
        return "compute: " + "; ".join(
            f"{p['name']} ({p['objective']}) {p['tokens']:,} tokens, {p['flops']:.3g} FLOPs = {p['flops'] / total:.0%}"
            for p in self.phases
        )
