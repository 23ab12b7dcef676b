"""Bias add + exact (erf) GELU: the MLP activation of ESM-2 and of our CLM recipes.

:func:`bias_gelu_reference` is what megatron-core's MLP computes when its bias-activation fusion is
off (``x + bias``, then ``F.gelu``), and so what every CPU run computes. ``csrc/bias_gelu/bias_gelu.cu``
fuses it on the GPU: forward one read of ``x`` and one write; backward one read of ``x`` and of the
incoming gradient, one write of the gradient of ``x``, with the bias gradient summed on the way in fp32.
megatron-core's own fused bias-GELU is the tanh approximation, which would change ESM-2's numerics.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from megatron_plm.kernels import selfcheck

try:
    from megatron_plm.kernels import _bias_gelu_cuda
except ImportError:  # not built (no nvcc at install time): the reference runs everywhere
    _bias_gelu_cuda = None

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def bias_gelu_reference(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``GELU(x + bias)`` as megatron-core's unfused MLP computes it (two PyTorch ops)."""
    return F.gelu(x + bias)


def kernel_available() -> bool:
    return _bias_gelu_cuda is not None


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """The SM count the backward sizes its bias-gradient chunks by: asked of CUDA once per device, not on
    every backward pass."""
    return torch.cuda.get_device_properties(device).multi_processor_count


if _bias_gelu_cuda is not None:
    # Dispatcher ops (not bare pybind calls), so torch.profiler, TorchDispatchMode-based tools such as
    # benchmarks/step_profile.py and torch.compile see them; the fake versions give their shapes.
    torch.library.define("megatron_plm::bias_gelu_forward", "(Tensor x, Tensor bias) -> Tensor")
    torch.library.define("megatron_plm::bias_gelu_backward", "(Tensor grad, Tensor x, Tensor bias) -> (Tensor, Tensor)")

    @torch.library.impl("megatron_plm::bias_gelu_forward", "CUDA")
    def _forward_cuda(x, bias):
        return _bias_gelu_cuda.bias_gelu_forward(x, bias, torch.cuda.current_stream(x.device).cuda_stream)

    @torch.library.impl("megatron_plm::bias_gelu_backward", "CUDA")
    def _backward_cuda(grad, x, bias):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        grad_x, partial = _bias_gelu_cuda.bias_gelu_backward(
            grad.contiguous(), x, bias, multiprocessors(x.device), stream
        )
        return grad_x, partial.sum(0).to(bias.dtype)

    @torch.library.register_fake("megatron_plm::bias_gelu_forward")
    def _forward_fake(x, bias):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("megatron_plm::bias_gelu_backward")
    def _backward_fake(grad, x, bias):
        return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(bias)


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):
        ctx.save_for_backward(x, bias)
        return torch.ops.megatron_plm.bias_gelu_forward(x, bias)

    @staticmethod
    def backward(ctx, grad):
        x, bias = ctx.saved_tensors
        return torch.ops.megatron_plm.bias_gelu_backward(grad, x, bias)


def fused_bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The kernel itself, unchecked: ``x`` and ``bias`` on one GPU in one dtype."""
    return _BiasGelu.apply(x.contiguous(), bias.contiguous())


def _check_case(device: torch.device, generator: torch.Generator):
    """512 rows of a width 16-byte packs divide (the vector path, as at ESM-2's and the CLM's widths),
    enough rows for several row chunks in the bias gradient: x, bias, grad."""
    x = 2 * torch.randn(256, 2, 640, device=device, generator=generator)
    bias = torch.randn(640, device=device, generator=generator)
    return [x, bias], (), torch.randn(x.shape, device=device, generator=generator)


KERNEL = selfcheck.FusedKernel(
    name="bias_gelu (csrc/bias_gelu)",
    fused=fused_bias_gelu,
    reference=bias_gelu_reference,
    case=_check_case,
    outputs=("output", "grad x", "grad bias"),
    built=kernel_available,
    dtypes=KERNEL_DTYPES,
)


def kernel_takes(x: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether the built kernel can take ``x`` and ``bias`` (before its self-check on their device and dtype)."""
    return (
        x.is_cuda
        and _bias_gelu_cuda is not None
        and x.dtype in KERNEL_DTYPES
        and bias.dtype == x.dtype
        and bias.device == x.device
    )


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``GELU(x + bias)`` with ``bias`` over ``x``'s last dimension: the fused kernel on CUDA tensors
    of one float dtype when built and when it passed its self-check on this device and dtype
    (:mod:`selfcheck`), else the reference."""
    if bias.dim() != 1 or bias.shape[0] != x.shape[-1]:
        raise ValueError(
            f"bias_gelu: bias must be a vector over x's last dimension ({x.shape[-1]}), got {tuple(bias.shape)}"
        )
    if kernel_takes(x, bias) and selfcheck.kernel_verified(KERNEL, x.device, x.dtype):
        return KERNEL.fused(x, bias)
    return bias_gelu_reference(x, bias)
