"""Fused kernels that check themselves before they are trusted.

No user with a GPU should be the first to run a kernel of ``csrc/``. So the first time a process would
run a fused kernel on a given device and dtype, :func:`kernel_verified` runs it once on a small random
input, forward and backward, beside its PyTorch reference, and keeps the verdict for the rest of the
process: on a mismatch (or an exception from the kernel) it warns once, naming the kernel and the error,
and every later call on that device and dtype runs the reference instead.

The comparison is the parity tests' (``tests/kernels/``): the error of the kernel against an fp32
reference computed on the same rounded inputs may be at most twice that of PyTorch's own computation in
the kernel's dtype, plus, in fp32 (where PyTorch's error against itself is 0), a floor for fp32 rounding.
``megatron-plm env --check-kernels`` runs the same check for every kernel and dtype (:func:`megatron_plm.kernels.registry.check_all`).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

FP32_FLOOR = 1e-5
"""fp32 rounding the kernel may differ by (FMA, ``erff``/``sincosf``, summation order), relative to the
largest reference value (at least 1)."""


@dataclass(frozen=True)
class FusedKernel:
    """A fused kernel as the self-check sees it: how to run it, its reference, and a small test case."""

    name: str
    """Named in warnings and tables, with the folder of its source (``rotary (csrc/rotary)``)."""
    fused: Callable[..., torch.Tensor]
    """The kernel itself (an autograd function on CUDA tensors), with the reference's arguments."""
    reference: Callable[..., torch.Tensor]
    """The PyTorch computation the kernel replaces."""
    case: Callable[[torch.device, torch.Generator], tuple[list[torch.Tensor], tuple, torch.Tensor]]
    """``(device, generator) -> (fp32 inputs to differentiate, other arguments, fp32 output gradient)``."""
    outputs: tuple[str, ...]
    """Names of the compared tensors: the output, then the gradient of each differentiated input."""
    built: Callable[[], bool]
    """Whether the extension was compiled and imports here."""
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class CheckResult:
    kernel: str
    device: str
    dtype: torch.dtype
    errors: dict[str, float] = field(default_factory=dict)
    """Per compared tensor: the kernel's largest absolute error against the fp32 reference."""
    allowed: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    """Why the kernel was rejected (a mismatch or the exception it raised); None when it passed."""

    @property
    def passed(self) -> bool:
        return self.failure is None


def allowed_error(torch_error: float, reference: torch.Tensor, dtype: torch.dtype) -> float:
    """The parity tests' bound: twice PyTorch's own same-dtype error, plus the fp32 rounding floor."""
    floor = FP32_FLOOR * max(1.0, reference.abs().max().item()) if dtype == torch.float32 else 0.0
    return 2 * torch_error + floor


def compare(
    names: Sequence[str],
    ours: Sequence[torch.Tensor],
    same_dtype: Sequence[torch.Tensor],
    fp32: Sequence[torch.Tensor],
    dtype: torch.dtype,
) -> tuple[dict, dict, str | None]:
    """Errors of ``ours`` and of PyTorch's ``same_dtype`` results against ``fp32``: (errors, allowed,
    failure), failure naming every tensor over its bound (a NaN is over any bound)."""
    errors, allowed, over = {}, {}, []
    for name, o, t, w in zip(names, ours, same_dtype, fp32):
        errors[name] = (o.float() - w).abs().max().item()
        allowed[name] = allowed_error((t.float() - w).abs().max().item(), w, dtype)
        if not errors[name] <= allowed[name]:  # also catches NaN
            over.append(f"{name} max error {errors[name]:.3g} > allowed {allowed[name]:.3g}")
    return errors, allowed, "; ".join(over) or None


def _run(fn, inputs: list[torch.Tensor], others: tuple, grad: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    out = fn(*leaves, *others)
    out.backward(grad)
    return [out.detach()] + [leaf.grad for leaf in leaves]


def check(kernel: FusedKernel, device: torch.device | str, dtype: torch.dtype, *, seed: int = 0) -> CheckResult:
    """Run ``kernel`` and its reference on the kernel's small case; compare forward and backward."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    # Its own generator, autograd on (also inside inference mode), autocast off: the check neither sees nor
    # disturbs the caller's state.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        inputs, others, grad = kernel.case(device, generator)
        fp32 = _run(kernel.reference, inputs, others, grad)
        rounded = [t.to(dtype) for t in inputs]
        same_dtype = _run(kernel.reference, rounded, others, grad.to(dtype))
        try:
            ours = _run(kernel.fused, rounded, others, grad.to(dtype))
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # so that an error of the launch surfaces here
        except Exception as error:  # a kernel that cannot launch here (no image for this GPU, ...) is rejected too
            message = (str(error).strip().splitlines() or [""])[0]
            return CheckResult(kernel.name, str(device), dtype, failure=f"raised {type(error).__name__}: {message}")
    errors, allowed, failure = compare(kernel.outputs, ours, same_dtype, fp32, dtype)
    return CheckResult(kernel.name, str(device), dtype, errors, allowed, failure)


_verdicts: dict[tuple[str, str, torch.dtype], bool] = {}
_lock = threading.Lock()


def _device_key(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def kernel_verified(kernel: FusedKernel, device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether to run ``kernel`` on ``device`` in ``dtype``: checked on first use in this process, then
    remembered. A failed check warns once and the caller runs the reference from then on."""
    key = (kernel.name, _device_key(device), dtype)
    verdict = _verdicts.get(key)
    if verdict is not None:
        return verdict
    if torch.compiler.is_compiling() or (key[1].startswith("cuda") and torch.cuda.is_current_stream_capturing()):
        return True  # a check cannot run while tracing or capturing a graph: the kernel, unverified (as before)
    with _lock:
        if key not in _verdicts:
            result = check(kernel, key[1], dtype)
            if not result.passed:
                warnings.warn(
                    f"fused kernel {kernel.name} failed its self-check on {key[1]} in {_dtype_name(dtype)} "
                    f"({result.failure}); using its PyTorch reference for the rest of this run",
                    RuntimeWarning,
                    stacklevel=3,
                )
            _verdicts[key] = result.passed
    return _verdicts[key]


def forget_verdicts() -> None:
    """Drop every remembered verdict (tests; a process otherwise checks each kernel once)."""
    with _lock:
        _verdicts.clear()


def why_not_runnable(kernel: FusedKernel) -> str | None:
    """Why ``kernel`` cannot run on this machine, or None when it can."""
    if not torch.cuda.is_available():
        why = f"torch {torch.__version__} has no CUDA" if torch.version.cuda is None else "no CUDA GPU visible"
        built = "extension built" if kernel.built() else "extension not built"
        return f"{why} ({built}); the kernel runs on CUDA tensors only, its PyTorch reference runs here"
    if not kernel.built():
        return "extension not built (no nvcc at install time? see pip install --no-build-isolation -e . -v)"
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def format_results(results: Sequence[CheckResult], skipped: dict[str, str]) -> str:
    """The table ``megatron-plm env --check-kernels`` prints."""
    lines = []
    if results:
        lines.append(f"{'kernel':<26} {'device':<8} {'dtype':<9} {'max error / allowed, per output':<58} verdict")
        for r in results:
            if r.errors:
                errors = ", ".join(f"{name} {r.errors[name]:.2g}/{r.allowed[name]:.2g}" for name in r.errors)
            else:
                errors = "-"
            verdict = "ok: kernel" if r.passed else f"FAILED, reference used: {r.failure}"
            lines.append(f"{r.kernel:<26} {r.device:<8} {_dtype_name(r.dtype):<9} {errors:<58} {verdict}")
    for name, reason in skipped.items():
        lines.append(f"{name:<26} not checked: {reason}")
    return "\n".join(lines)
