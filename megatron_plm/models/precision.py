"""FP8 training through Transformer Engine: the config, its mapping onto megatron-core, and the guards.

``training.precision: fp8`` never falls back silently: without Transformer Engine, or on a GPU that
lacks the recipe's FP8 support, the run stops at start-up saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Compute capability each recipe needs: FP8 tensor cores arrive with Ada/Hopper (8.9 / 9.0); MXFP8
# block scaling with Blackwell (10.0).
_MIN_CAPABILITY = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0)}


@dataclass(kw_only=True)
class FP8Config:
    recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = "tensorwise"
    """Scaling recipe: delayed (amax history), tensorwise (current scaling), blockwise, or MXFP8 (Blackwell)."""
    format: Literal["hybrid", "e4m3"] = "hybrid"
    """hybrid: E4M3 forward, E5M2 gradients; e4m3: E4M3 both ways."""
    bf16_first_layers: int = 1
    """Transformer layers kept in BF16 at the start of the stack (sensitive to quantisation)."""
    bf16_last_layers: int = 1
    """... and at its end. The embedding and the output head always stay BF16."""

    def validate(self, num_layers: int) -> None:
        if self.recipe not in _MIN_CAPABILITY:
            raise ValueError(f"fp8.recipe must be one of {sorted(_MIN_CAPABILITY)}, got {self.recipe!r}")
        if self.bf16_first_layers < 0 or self.bf16_last_layers < 0:
            raise ValueError("fp8.bf16_first_layers and fp8.bf16_last_layers must be >= 0")
        if self.bf16_first_layers + self.bf16_last_layers >= num_layers:
            raise ValueError(
                f"fp8.bf16_first_layers + fp8.bf16_last_layers ({self.bf16_first_layers + self.bf16_last_layers}) "
                f"leave no FP8 layer of model.num_layers ({num_layers})"
            )
        if self.recipe == "delayed" and (self.bf16_first_layers or self.bf16_last_layers):
            raise ValueError(
                "fp8.recipe 'delayed' cannot keep layers in BF16 (megatron-core refuses it): set "
                "fp8.bf16_first_layers and fp8.bf16_last_layers to 0, or use the 'tensorwise' recipe"
            )

    def transformer_config_kwargs(self) -> dict:
        """The megatron-core ``TransformerConfig`` fields for this FP8 setup."""
        edges = self.bf16_first_layers or self.bf16_last_layers
        return {
            "fp8": self.format,
            "fp8_recipe": self.recipe,
            "first_last_layers_bf16": bool(edges),
            "num_layers_at_start_in_bf16": self.bf16_first_layers,
            "num_layers_at_end_in_bf16": self.bf16_last_layers,
        }


def check_fp8_supported(
    config: FP8Config, *, transformer_engine: str | None, gpu_capability: tuple[int, int] | None
) -> None:
    """Raise, naming what is missing, unless this machine can train with ``config``."""
    if transformer_engine is None:
        raise ValueError(
            "training.precision fp8 needs Transformer Engine, which is not installed (it ships in the NGC PyTorch "
            "container: see the Dockerfile); use precision bf16 here"
        )
    if gpu_capability is None:
        raise ValueError("training.precision fp8 needs a GPU; none is visible")
    needed = _MIN_CAPABILITY[config.recipe]
    if gpu_capability < needed:
        raise ValueError(
            f"fp8.recipe {config.recipe!r} needs compute capability {needed[0]}.{needed[1]} or newer; this GPU has "
            f"{gpu_capability[0]}.{gpu_capability[1]}"
            + (" (use 'tensorwise' on Hopper)" if config.recipe == "mxfp8" else "")
        )
