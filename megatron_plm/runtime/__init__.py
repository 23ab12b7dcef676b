"""Process start-up: torch.distributed, megatron-core parallel state, the CPU shim."""

from megatron_plm.runtime.distributed import ParallelConfig, Runtime, initialize

__all__ = ["ParallelConfig", "Runtime", "initialize"]
