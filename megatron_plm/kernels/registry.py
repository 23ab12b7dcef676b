"""Every fused kernel of ``csrc/``, and the check of all of them that ``megatron-plm env --check-kernels`` runs.

Kept apart from :mod:`selfcheck` because the kernels import the self-check; the list imports the kernels."""

from __future__ import annotations

from typing import Sequence

import torch

from megatron_plm.kernels import bias_gelu, rotary, selfcheck
from megatron_plm.kernels.selfcheck import CheckResult, FusedKernel

FUSED_KERNELS: tuple[FusedKernel, ...] = (rotary.KERNEL, bias_gelu.KERNEL)


def check_all(kernels: Sequence[FusedKernel] | None = None) -> tuple[list[CheckResult], dict[str, str]]:
    """Check every kernel in every dtype on every visible GPU: (results, {kernel: why it cannot run})."""
    results, skipped = [], {}
    for kernel in FUSED_KERNELS if kernels is None else kernels:
        reason = selfcheck.why_not_runnable(kernel)
        if reason is not None:
            skipped[kernel.name] = reason
            continue
        for index in range(torch.cuda.device_count()):
            results += [selfcheck.check(kernel, torch.device("cuda", index), dtype) for dtype in kernel.dtypes]
    return results, skipped
