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

Redirecting CUDA to the CPU hides one class of bug: a tensor made without a device
(so on the host, on a GPU machine too) that meets GPU tensors. On a GPU that is
"Expected all tensors to be on the same device" or NCCL refusing a CPU tensor; on
the CPU nothing happens. The *device-strict* mode (``install(strict=True)``, or
``MEGATRON_PLM_DEVICE_STRICT=1``, which the test suite sets) rehearses GPU placement:
it remembers which tensors would be on the GPU (made for a CUDA device, moved there,
or computed from such tensors) and which on the host (made with no device, or moved
back), and raises where a GPU would: an op mixing a host tensor of one or more
dimensions with GPU tensors, an in-place op writing GPU values into a host tensor,
and a host tensor handed to a collective of a group that would be NCCL (every group
but those megatron-core makes with ``backend="gloo"``). Tensors whose origin it cannot
see (made by autograd, or before the shim) are left unchecked.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["CpuRuntime", "DevicePlacementError", "install", "uninstall", "is_installed", "cpu_runtime", "strict"]

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


HOST, GPU = "host", "gpu"
"""Where a tensor would live on a GPU machine (device-strict mode)."""


class DevicePlacementError(RuntimeError):
    """Raised in device-strict mode where a GPU run would fail on tensors on two devices."""


# Ops that move data between devices or take host index tensors, as CUDA allows.
_MOVES = {torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.cuda, torch.Tensor.cpu}
_MIXING_ALLOWED = _MOVES | {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
_IN_PLACE_DUNDERS = {
    "__iadd__",
    "__isub__",
    "__imul__",
    "__itruediv__",
    "__ifloordiv__",
    "__ipow__",
    "__iand__",
    "__ior__",
}


_DEVICE_GETTER = torch.Tensor.device.__get__
_DATA_SETTER = torch.Tensor.data.__set__


def _tensors(args, kwargs):
    """The tensors among a call's arguments, one level into lists and tuples (``torch.cat([...])``)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


class Placement:
    """The GPU-or-host place of the tensors the device-strict mode has seen, keyed by identity
    (weak references: it keeps no tensor alive)."""

    def __init__(self):
        self._where: dict[int, tuple[weakref.ref, str]] = {}
        self.gloo_groups: weakref.WeakSet = weakref.WeakSet()

    def of(self, tensor: torch.Tensor) -> str | None:
        entry = self._where.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def mark(self, value: Any, where: str | None) -> None:
        if where is None:
            return
        if isinstance(value, torch.Tensor):
            key = id(value)
            self._where[key] = (weakref.ref(value, lambda _, key=key: self._where.pop(key, None)), where)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self.mark(item, where)

    def moved(self, tensor: torch.Tensor, where: str | None) -> torch.Tensor:
        """``tensor`` moved to ``where``. On the CPU a move returns the tensor itself; re-marking it would
        also move every other name for it, so a move that changes its place returns a copy, as a GPU does."""
        if where is None or self.of(tensor) == where:
            return tensor
        copy = tensor.clone()
        self.mark(copy, where)
        return copy

    def check_mix(self, func, args, kwargs) -> None:
        """Refuse what CUDA refuses: host tensors with dimensions beside GPU tensors in one op (0-dim host
        tensors pass as scalars), and GPU values written in place into a host tensor."""
        on_gpu, on_host = [], []
        for t in _tensors(args, kwargs):
            where = self.of(t)
            if where == GPU:
                on_gpu.append(t)
            elif where == HOST:
                on_host.append(t)
        if not on_gpu or not on_host:
            return
        name = getattr(func, "__name__", str(func))
        written = args[0] if args and isinstance(args[0], torch.Tensor) else None
        in_place = name in _IN_PLACE_DUNDERS or (name.endswith("_") and not name.startswith("_"))
        host_written = in_place and written is not None and self.of(written) == HOST
        if host_written or any(t.dim() > 0 for t in on_host):
            shapes = ", ".join(f"{tuple(t.shape)} on the host" for t in on_host)
            raise DevicePlacementError(
                f"device-strict: {name} mixes GPU tensors with {shapes}; on a GPU this fails with 'Expected all "
                "tensors to be on the same device' (create the host tensor with device=..., or move it with .to())"
            )

    def place_result(self, func, args, kwargs, requested: str | None, result) -> None:
        if func is torch.Tensor.cpu:
            where = HOST
        elif func is torch.Tensor.cuda:
            where = GPU
        elif requested is not None:
            where = requested
        else:
            places = {self.of(t) for t in _tensors(args, kwargs)}
            if func is torch.Tensor.to and len(args) > 1 and isinstance(args[1], torch.Tensor):
                places = {self.of(args[1])}  # t.to(other): other's device
            if GPU in places:
                where = GPU
            elif HOST in places:
                where = HOST
            elif not places:
                where = HOST  # a factory with no device: the host, on every machine
            else:
                where = None
        self.mark(result, where)

    def check_collective(self, name: str, tensors, group) -> None:
        if group is not None and group in self.gloo_groups:
            return
        host = [t for t in tensors if isinstance(t, torch.Tensor) and self.of(t) == HOST]
        if host:
            raise DevicePlacementError(
                f"device-strict: torch.distributed.{name} got a tensor of shape {tuple(host[0].shape)} on the host; "
                "on a GPU its group is NCCL, which takes CUDA tensors only"
            )


def _requested_place(func, args, kwargs) -> str | None:
    """GPU or HOST when a call names a device (``device=``, or ``.to(device)``), else None."""
    device = kwargs.get("device")
    if device is None and func is torch.Tensor.to:
        device = next(
            (a for a in args[1:] if isinstance(a, (str, torch.device, int)) and not isinstance(a, bool)), None
        )
    if device is None:
        return None
    return GPU if _is_cuda_device(device) else HOST


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU and makes ``Tensor.cuda()`` a no-op.

    ``Tensor.type()`` (no arguments) reports the CUDA type name of a CPU tensor,
    because megatron-core's optimizers branch on ``'torch.cuda.FloatTensor'``.
    With a :class:`Placement` (device-strict mode) it also tracks and checks where
    each tensor would be on a GPU, and reports ``cuda:0`` as the ``.device`` of
    tensors that would be there, so code that allocates "beside" them does too.
    """

    def __init__(self, placement: Placement | None = None):
        super().__init__()
        self.placement = placement

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs) if kwargs else {}
        placement = self.placement
        if placement is not None:
            if func == _DEVICE_GETTER:
                return torch.device("cuda", 0) if placement.of(args[0]) == GPU else func(*args)
            if func not in _MIXING_ALLOWED:
                placement.check_mix(func, args, kwargs)
            requested = _requested_place(func, args, kwargs)
        if func is torch.Tensor.cuda:
            if placement is None:
                return args[0]
            return placement.moved(args[0], GPU)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if func is torch.Tensor.pin_memory:
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func in _DEVICE_ARG_FUNCS_WITH_POSITIONAL_DEVICE:
            args = tuple(_to_cpu_device(a) if isinstance(a, (str, torch.device)) else a for a in args)
        result = func(*args, **kwargs)
        if placement is not None:
            if func == _DATA_SETTER:  # param.data = moved: the parameter is where its new data is
                placement.mark(args[0], placement.of(args[1]))
            elif func in _MOVES and result is args[0]:
                where = HOST if func is torch.Tensor.cpu else requested or placement.of(args[0])
                return placement.moved(result, where)
            placement.place_result(func, args, kwargs, requested, result)
        return result


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


# Point-to-point ops (send, recv, isend, irecv) are left alone: torch.distributed.P2POp accepts only the
# original isend/irecv, and pipeline stages exchange activations, which are on the GPU by construction.
_COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
)


def strict_requested() -> bool:
    """Whether ``MEGATRON_PLM_DEVICE_STRICT=1`` asks for the device-strict mode (the test suite sets it)."""
    return os.environ.get("MEGATRON_PLM_DEVICE_STRICT", "") == "1"


def _strict_collective(name: str, collective: Callable, placement: Placement) -> Callable:
    @functools.wraps(collective)
    def checked(*args, **kwargs):
        group = kwargs.get("group")
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        for value in (*args, *kwargs.values()):
            if isinstance(value, (list, tuple)):
                tensors += [v for v in value if isinstance(v, torch.Tensor)]
            elif isinstance(value, torch.Tensor):
                tensors.append(value)
            elif group is None and isinstance(value, torch.distributed.ProcessGroup):
                group = value
        placement.check_collective(name, tensors, group)
        return collective(*args, **kwargs)

    return checked


def _recording_gloo_groups(new_group: Callable, placement: Placement) -> Callable:
    @functools.wraps(new_group)
    def recording(*args, **kwargs):
        group = new_group(*args, **kwargs)
        backend = kwargs.get("backend", args[2] if len(args) > 2 else None)
        # Ranks outside a new group get an int marker (GroupMember.NON_GROUP_MEMBER), not a group.
        if isinstance(group, torch.distributed.ProcessGroup) and str(backend).lower() == "gloo":
            placement.gloo_groups.add(group)
        return group

    return recording


def _host_from_numpy(from_numpy: Callable, placement: Placement) -> Callable:
    @functools.wraps(from_numpy)
    def on_host(array):
        tensor = from_numpy(array)
        placement.mark(tensor, HOST)
        return tensor

    return on_host


def install(*, strict: bool | None = None) -> CpuRuntime:
    """Redirect megatron-core's CUDA uses to the CPU. Idempotent; refuses on a GPU machine.
    ``strict`` (default: :func:`strict_requested`) turns on the device-strict mode (module docstring)."""
    global _installed
    if _installed is not None:
        return _installed
    if torch.cuda.is_available():
        raise RuntimeError("megatron_plm.runtime.cpu.install() is for machines without a GPU; a GPU is present")

    from megatron.core.tensor_parallel import random as mcore_random

    placement = Placement() if (strict_requested() if strict is None else strict) else None
    runtime = CpuRuntime(mode=_CudaToCpuMode(placement), log_filter=_SilenceForkRngWarning())
    runtime.patch(torch.cuda, "current_device", lambda: 0)
    runtime.patch(torch.cuda, "synchronize", lambda device=None: None)
    runtime.patch(torch.cuda, "get_rng_state", _cpu_get_rng_state)
    runtime.patch(torch.cuda, "set_rng_state", _cpu_set_rng_state)
    runtime.patch(torch.cuda, "manual_seed", _cpu_manual_seed)
    runtime.patch(torch.cuda, "manual_seed_all", _cpu_manual_seed)
    runtime.patch(mcore_random, "_get_cuda_rng_state", _cpu_get_rng_state)
    runtime.patch(mcore_random, "_set_cuda_rng_state", _cpu_set_rng_state)
    if placement is not None:
        for name in _COLLECTIVES:
            runtime.patch(
                torch.distributed, name, _strict_collective(name, getattr(torch.distributed, name), placement)
            )
        runtime.patch(torch.distributed, "new_group", _recording_gloo_groups(torch.distributed.new_group, placement))
        runtime.patch(torch, "from_numpy", _host_from_numpy(torch.from_numpy, placement))
    logging.getLogger("megatron.core.tensor_parallel.random").addFilter(runtime.log_filter)
    runtime.mode.__enter__()
    _installed = runtime
    return runtime


def strict() -> bool:
    """Whether the installed shim is device-strict (so the runtime's device is a virtual ``cuda:0``)."""
    return _installed is not None and _installed.mode.placement is not None


def uninstall() -> None:
    """Undo :func:`install`; a no-op when nothing is installed."""
    global _installed
    if _installed is not None:
        _installed.remove()
        _installed = None


@contextlib.contextmanager
def cpu_runtime(*, strict: bool | None = None):
    """``with cpu_runtime(): ...`` for code (and tests) that want the shim for a block only."""
    already = is_installed()
    install(strict=strict)
    try:
        yield
    finally:
        if not already:
            uninstall()
