"""Optional accelerators (Transformer Engine, apex), detected at run time.

They ship in the NGC PyTorch container and cannot be installed next to a CPU
torch; code that needs one asks here and fails with a message naming what is
missing, instead of importing it at module import.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass

import torch


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Accelerators:
    transformer_engine: str | None
    """Installed Transformer Engine version, or None."""
    apex: bool
    """NVIDIA apex importable (the PyPI project named 'apex' is unrelated and is not counted)."""
    cuda_devices: int
    fp8_capable_gpu: bool
    """A GPU with compute capability >= 8.9 (Ada/Hopper/Blackwell) is present."""


def _has_nvidia_apex() -> bool:
    # NVIDIA apex provides apex.normalization; the unrelated PyPI 'apex' does not.
    if importlib.util.find_spec("apex") is None:
        return False
    try:
        return importlib.util.find_spec("apex.normalization") is not None
    except ModuleNotFoundError:
        return False


def detect() -> Accelerators:
    te_version = None
    if importlib.util.find_spec("transformer_engine") is not None:
        te_version = (
            _version("transformer-engine")
            or _version("transformer_engine")
            or _version("transformer-engine-torch")
            or "unknown"
        )
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    fp8 = n_gpus > 0 and torch.cuda.get_device_capability(0) >= (8, 9)
    return Accelerators(
        transformer_engine=te_version, apex=_has_nvidia_apex(), cuda_devices=n_gpus, fp8_capable_gpu=fp8
    )


def silence_fallback_warnings() -> None:
    """Hide megatron-core's import-time 'TE/apex not installed, falling back' warnings, and torch
    deprecation notices raised inside megatron-core.

    For the CLI only: they repeat on every rank and every import, while
    ``megatron-plm env`` and the run header already say which path is in use.
    """
    import warnings

    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex).*not installed.*", module=r"megatron")
    warnings.filterwarnings("ignore", message=r"full scope is deprecated", module=r"megatron")
    # torch deprecations that megatron-core 0.16's checkpoint code triggers; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`load_state_dict` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Please use DTensor instead", category=FutureWarning)
