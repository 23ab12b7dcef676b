"""Rotary position embedding over packed (``thd``) sequences: positions restart at every protein.

The rotate-half RoPE of megatron-core (and ESM-2): for ``i < d/2``,
``out[i] = x[i] cos(a) - x[i + d/2] sin(a)`` and ``out[i + d/2] = x[i + d/2] cos(a) + x[i] sin(a)``
with ``a = position * inv_freq[i]`` in fp32. :func:`rotary_reference` is that formula in PyTorch (as
megatron-core computes it); ``csrc/rotary/rotary.cu`` fuses it into one read and one write of ``x``,
forward and backward (the inverse rotation), finding each token's position from ``cu_seqlens``.
"""

from __future__ import annotations

import torch

from megatron_plm.kernels import selfcheck

try:
    from megatron_plm.kernels import _rotary_cuda
except ImportError:  # not built (no nvcc at install time): the reference runs everywhere
    _rotary_cuda = None


def inv_frequencies(head_dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """RoPE's ``1 / base^(2i / d)`` in fp32, computed as megatron-core's RotaryEmbedding does."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


def positions_in_segments(cu_seqlens: torch.Tensor, tokens: int) -> torch.Tensor:
    """Each token's position within its segment of ``cu_seqlens``."""
    index = torch.arange(tokens, device=cu_seqlens.device, dtype=torch.int64)
    segment = torch.bucketize(index, cu_seqlens[1:].long(), right=True)
    return index - cu_seqlens.long()[segment]


def rotary_reference(x: torch.Tensor, cu_seqlens: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``x [tokens, heads, head_dim]`` rotated in plain PyTorch (megatron-core's arithmetic: angles in
    fp32, cos/sin cast to ``x``'s dtype, products in that dtype)."""
    angles = positions_in_segments(cu_seqlens, x.shape[0]).float()[:, None] * inv_freq.float()[None, :]
    angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # [tokens, 1, head_dim]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernel_available() -> bool:
    return _rotary_cuda is not None


if _rotary_cuda is not None:
    # A dispatcher op (not a bare pybind call), so torch.profiler, TorchDispatchMode-based tools such as
    # benchmarks/step_profile.py and torch.compile see it; the fake version gives its shape.
    torch.library.define(
        "megatron_plm::rotary_thd", "(Tensor x, Tensor cu_seqlens, Tensor inv_freq, float sign) -> Tensor"
    )

    @torch.library.impl("megatron_plm::rotary_thd", "CUDA")
    def _rotary_cuda_impl(x, cu_seqlens, inv_freq, sign):
        return _rotary_cuda.rotary_thd(x, cu_seqlens, inv_freq, sign, torch.cuda.current_stream(x.device).cuda_stream)

    @torch.library.register_fake("megatron_plm::rotary_thd")
    def _rotary_fake(x, cu_seqlens, inv_freq, sign):
        return x.new_empty(x.shape)


class _RotaryTHD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cu_seqlens, inv_freq):
        ctx.save_for_backward(cu_seqlens, inv_freq)
        return torch.ops.megatron_plm.rotary_thd(x, cu_seqlens, inv_freq, 1.0)

    @staticmethod
    def backward(ctx, grad):
        cu_seqlens, inv_freq = ctx.saved_tensors
        grad = grad if grad.stride(-1) == 1 else grad.contiguous()
        return torch.ops.megatron_plm.rotary_thd(grad, cu_seqlens, inv_freq, -1.0), None, None


def fused_rotary_thd(x: torch.Tensor, cu_seqlens: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """The kernel itself, unchecked: ``x`` on a GPU with a unit last stride, ``cu_seqlens`` int32 and
    ``inv_freq`` fp32 on its device (what :func:`apply_rotary_thd` hands it)."""
    return _RotaryTHD.apply(x, cu_seqlens, inv_freq)


def _check_case(device: torch.device, generator: torch.Generator):
    """A few proteins of uneven lengths, head dim 64 (ESM-2 650M's): x, (cu_seqlens, inv_freq), grad."""
    x = torch.randn(200, 4, 64, device=device, generator=generator)
    cu = torch.tensor([0, 37, 41, 150, 200], dtype=torch.int32, device=device)
    return [x], (cu, inv_frequencies(64, device=device)), torch.randn(x.shape, device=device, generator=generator)


KERNEL = selfcheck.FusedKernel(
    name="rotary (csrc/rotary)",
    fused=fused_rotary_thd,
    reference=rotary_reference,
    case=_check_case,
    outputs=("output", "grad x"),
    built=kernel_available,
    dtypes=KERNEL_DTYPES,
)


def kernel_takes(x: torch.Tensor) -> bool:
    """Whether the built kernel can take ``x`` (before its self-check on ``x``'s device and dtype)."""
    return x.is_cuda and _rotary_cuda is not None and x.dtype in KERNEL_DTYPES


def apply_rotary_thd(x: torch.Tensor, cu_seqlens: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [tokens, heads, head_dim]``: the fused kernel on CUDA tensors when built and when it
    passed its self-check on this device and dtype (:mod:`selfcheck`), else the reference."""
    if x.dim() != 3 or x.shape[-1] % 2 or inv_freq.numel() * 2 != x.shape[-1]:
        raise ValueError(
            f"rotary: x must be [tokens, heads, head_dim] with head_dim = 2 x {inv_freq.numel()} "
            f"(inv_freq), got {tuple(x.shape)}"
        )
    if kernel_takes(x) and selfcheck.kernel_verified(KERNEL, x.device, x.dtype):
        cu = cu_seqlens.to(device=x.device, dtype=torch.int32).contiguous()
        x = x if x.stride(-1) == 1 else x.contiguous()
        return KERNEL.fused(x, cu, inv_freq.to(device=x.device, dtype=torch.float32).contiguous())
    return rotary_reference(x, cu_seqlens, inv_freq)
