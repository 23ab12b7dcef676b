"""A plain-text report of what this machine offers the trainer (``megatron-plm env``)."""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass

import torch

from megatron_plm.runtime import accelerators


@dataclass(kw_only=True)
class EnvConfig:
    check_kernels: bool = False
    """Also run every fused kernel's self-check in every dtype on each GPU and print a table."""


def describe_environment() -> str:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    found = accelerators.detect()
    lines = [
        f"python            {platform.python_version()}",
        f"torch             {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"megatron-core     {version('megatron-core')}",
        f"transformers      {version('transformers')}",
        f"GPUs              {found.cuda_devices}"
        + (f" x {torch.cuda.get_device_name(0)}" if found.cuda_devices else ""),
        f"distributed       {'nccl' if found.cuda_devices else 'gloo (megatron-core CUDA calls redirected to CPU)'}",
        f"Transformer Engine {found.transformer_engine or 'not installed (optional; in the NGC container)'}",
        f"apex              {'installed' if found.apex else 'not installed (optional; in the NGC container)'}",
        f"FP8-capable GPU   {'yes' if found.fp8_capable_gpu else 'no'}",
    ]
    return "\n".join(lines)
