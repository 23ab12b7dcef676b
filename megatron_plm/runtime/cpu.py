"""Run megatron-core on a machine without a GPU.

megatron-core 0.16 assumes CUDA in a handful of places (listed in
``shared/notes/megatron-core-0.16-on-cpu.md``): tensors created with
``device="cuda"`` or ``torch.cuda.current_device()``, ``.cuda()`` calls, the CUDA
RNG tracker that every attention forward forks, ``torch.cuda.synchronize()`` in
the checkpoint writer, and optimizers that check ``param.type()`` against
``'torch.cuda.FloatTensor'``. This module redirects exactly those to the CPU.

It is installed by :func:`megatron_plm.runtime.distributed.initialize` only when
``torch.cuda.is_available()`` is false, and removed by :func:`uninstall`. Nothing
here runs at import time.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["CpuRuntime", "install", "uninstall", "is_installed", "cpu_runtime"]

_DEVICE_ARG_FUNCS_WITH_POSITIONAL_DEVICE = {torch.Tensor.to}


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    # An int device means "CUDA device index" in torch's factory functions.
    return isinstance(device, int) and not isinstance(device, bool)


def _to_cpu_device(device: Any) -> Any:
    return torch.device("cpu") if _is_cuda_device(device) else device


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU and makes ``Tensor.cuda()`` a no-op.

    ``Tensor.type()`` (no arguments) reports the CUDA type name of a CPU tensor,
    because megatron-core's optimizers branch on ``'torch.cuda.FloatTensor'``.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs) if kwargs else {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if func is torch.Tensor.pin_memory:
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func in _DEVICE_ARG_FUNCS_WITH_POSITIONAL_DEVICE:
            args = tuple(_to_cpu_device(a) if isinstance(a, (str, torch.device)) else a for a in args)
        return func(*args, **kwargs)


class _SilenceForkRngWarning(logging.Filter):
    """On the CPU the 'CUDA' RNG *is* the CPU RNG, so megatron's check that the CPU
    RNG did not change inside a fork always fires; it carries no information here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _cpu_manual_seed(seed: int) -> None:
    # Seeding torch.default_generator directly: routing to torch.manual_seed would
    # recurse through torch.cuda.manual_seed_all.
    torch.default_generator.manual_seed(int(seed))


@dataclass
class CpuRuntime:
    """The redirections currently installed, so that :meth:`remove` restores them exactly."""

    mode: _CudaToCpuMode
    log_filter: _SilenceForkRngWarning
    saved: list[tuple[Any, str, Any]] = field(default_factory=list)

    def patch(self, owner: Any, name: str, replacement: Callable) -> None:
        self.saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def remove(self) -> None:
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)
        self.saved.clear()
        logging.getLogger("megatron.core.tensor_parallel.random").removeFilter(self.log_filter)
        self.mode.__exit__(None, None, None)


_installed: CpuRuntime | None = None


def is_installed() -> bool:
    return _installed is not None


def install() -> CpuRuntime:
    """Redirect megatron-core's CUDA uses to the CPU. Idempotent; refuses on a GPU machine."""
    global _installed
    if _installed is not None:
        return _installed
    if torch.cuda.is_available():
        raise RuntimeError("megatron_plm.runtime.cpu.install() is for machines without a GPU; a GPU is present")

    from megatron.core.tensor_parallel import random as mcore_random

    runtime = CpuRuntime(mode=_CudaToCpuMode(), log_filter=_SilenceForkRngWarning())
    runtime.patch(torch.cuda, "current_device", lambda: 0)
    runtime.patch(torch.cuda, "synchronize", lambda device=None: None)
    runtime.patch(torch.cuda, "get_rng_state", _cpu_get_rng_state)
    runtime.patch(torch.cuda, "set_rng_state", _cpu_set_rng_state)
    runtime.patch(torch.cuda, "manual_seed", _cpu_manual_seed)
    runtime.patch(torch.cuda, "manual_seed_all", _cpu_manual_seed)
    runtime.patch(mcore_random, "_get_cuda_rng_state", _cpu_get_rng_state)
    runtime.patch(mcore_random, "_set_cuda_rng_state", _cpu_set_rng_state)
    logging.getLogger("megatron.core.tensor_parallel.random").addFilter(runtime.log_filter)
    runtime.mode.__enter__()
    _installed = runtime
    return runtime


def uninstall() -> None:
    """Undo :func:`install`; a no-op when nothing is installed."""
    global _installed
    if _installed is not None:
        _installed.remove()
        _installed = None


@contextlib.contextmanager
def cpu_runtime():
    """``with cpu_runtime(): ...`` for code (and tests) that want the shim for a block only."""
    already = is_installed()
    install()
    try:
        yield
    finally:
        if not already:
            uninstall()
