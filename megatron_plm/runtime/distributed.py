"""One entry point that brings up torch.distributed and megatron-core's parallel state.

Callers get a :class:`Runtime` back that says where they are (ranks, sizes, device,
process groups); nothing is stashed in a global argument namespace. megatron-core
itself keeps its process groups in ``megatron.core.parallel_state``: that global is
megatron-core's, and :meth:`Runtime.shutdown` tears it down.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from megatron_plm.runtime import accelerators, cpu
from megatron_plm.runtime.parallel import ParallelConfig

Backend = Literal["auto", "gloo", "nccl"]


@dataclass
class Runtime:
    """Where this process sits in the job. Returned by :func:`initialize`."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    """Where this rank's model and batches live: its GPU, or under the device-strict CPU shim a virtual
    ``cuda:0`` (tensors are on the CPU, placement is checked as on a GPU). Ask :attr:`on_gpu` about hardware."""
    backend: str
    parallel: ParallelConfig
    tp_rank: int
    pp_rank: int
    dp_rank: int
    data_parallel_size: int
    cpu_shim: bool
    """True when megatron-core's CUDA calls are being redirected to the CPU."""
    accelerators: accelerators.Accelerators
    process_groups: Any = field(repr=False)
    """megatron-core ``ProcessGroupCollection`` of the groups above (tp, pp, dp, embd, ...)."""

    @property
    def on_gpu(self) -> bool:
        """A real GPU (memory, device name, synchronisation): False under the CPU shim, strict or not."""
        return not self.cpu_shim

    @property
    def is_first_pipeline_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_pipeline_stage(self) -> bool:
        return self.pp_rank == self.parallel.pipeline_model_parallel_size - 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def shutdown(self) -> None:
        """Destroy megatron-core's groups and the default group; remove the CPU shim."""
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if self.cpu_shim:
            cpu.uninstall()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def initialize(
    parallel: ParallelConfig | None = None,
    *,
    seed: int = 1234,
    backend: Backend = "auto",
    timeout_minutes: int = 30,
) -> Runtime:
    """Initialise torch.distributed (gloo on CPU, NCCL on GPU) and megatron-core's parallel state.

    Works under ``torchrun`` (reads RANK/WORLD_SIZE/LOCAL_RANK) and as a plain single
    process (an in-memory store, no port needed). On a machine without a GPU the
    CPU shim (:mod:`megatron_plm.runtime.cpu`) is installed first.
    """
    parallel = parallel or ParallelConfig()
    has_gpu = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if has_gpu else "gloo"
    if backend == "nccl" and not has_gpu:
        raise ValueError("backend 'nccl' needs a GPU; use 'gloo' (or 'auto') on a CPU-only machine")

    if torch.distributed.is_initialized():
        raise RuntimeError("torch.distributed is already initialised; call Runtime.shutdown() first")

    timeout = datetime.timedelta(minutes=timeout_minutes)
    if _launched_by_torchrun():
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        parallel.validate(world_size)
        if has_gpu:
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    else:
        rank, world_size, local_rank = 0, 1, 0
        parallel.validate(world_size)
        if has_gpu:
            torch.cuda.set_device(0)
        store = torch.distributed.HashStore()
        torch.distributed.init_process_group(backend=backend, store=store, rank=0, world_size=1, timeout=timeout)

    cpu_shim = not has_gpu
    if cpu_shim:
        cpu.install()

    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.process_groups_config import ProcessGroupCollection

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    # The same seed on every rank: with use_cpu_initialization, weights then match the
    # TP=1 model exactly; megatron's tracker derives the per-TP-rank dropout streams.
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)

    return Runtime(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=torch.device("cuda", torch.cuda.current_device()) if has_gpu or cpu.strict() else torch.device("cpu"),
        backend=backend,
        parallel=parallel,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        data_parallel_size=parallel_state.get_data_parallel_world_size(),
        cpu_shim=cpu_shim,
        accelerators=accelerators.detect(),
        process_groups=ProcessGroupCollection.use_mpu_process_groups(),
    )
