"""How the model and the data are divided among processes: the ``parallel`` section of a run config.

Imports no torch; :func:`megatron_plm.runtime.distributed.initialize` brings the layout up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass(kw_only=True)
class ParallelConfig:
    """How the model and data are split across processes."""

    tensor_model_parallel_size: int = 1
    """Shards each weight matrix across this many ranks (keep it within a node)."""
    pipeline_model_parallel_size: int = 1
    """Splits the layer stack into this many stages."""
    sequence_parallel: bool = False
    """Shards LayerNorm/dropout activations along the sequence within the TP group (needs TP > 1 and TE or apex)."""
    use_distributed_optimizer: bool = False
    """Shards optimizer state across the data-parallel group (ZeRO-1)."""
    activation_recompute: Literal["none", "selective", "full"] = "none"
    """Recompute activations in the backward pass: the attention core only (selective), or every
    layer from its input (full; least memory, ~1/3 more compute)."""

    NOT_SUPPORTED: ClassVar[dict[str, str]] = {
        "virtual_pipeline_model_parallel_size": "the trainer builds one model chunk per pipeline stage",
        "context_parallel_size": "nothing splits sequences across ranks",
    }
    """megatron-core settings a user may expect here, refused by name when a config gives them."""

    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size

    def validate(self, world_size: int) -> None:
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"parallel.{name} must be a positive integer, got {value!r}")
        if world_size % self.model_parallel_size() != 0:
            raise ValueError(
                f"world size {world_size} is not divisible by tensor ({self.tensor_model_parallel_size}) x "
                f"pipeline ({self.pipeline_model_parallel_size}) parallel "
                f"sizes = {self.model_parallel_size()}; change parallel.* or the number of processes"
            )
        if self.activation_recompute not in ("none", "selective", "full"):
            raise ValueError(
                f"parallel.activation_recompute must be none, selective or full, got {self.activation_recompute!r}"
            )
        if self.sequence_parallel and self.tensor_model_parallel_size < 2:
            raise ValueError("parallel.sequence_parallel needs parallel.tensor_model_parallel_size >= 2")
