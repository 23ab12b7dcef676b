"""The fused kernels' self-check (megatron_plm.kernels.selfcheck), on CPU: stand-ins for the kernels,
one wrong in a way a real kernel bug would be, one correct, go through the same decision the GPU takes."""

import dataclasses
import math
import warnings

import pytest
import torch

from megatron_plm.kernels import bias_gelu, rotary, selfcheck


@pytest.fixture(autouse=True)
def fresh_verdicts():
    selfcheck.forget_verdicts()
    yield
    selfcheck.forget_verdicts()


class Counted:
    """A kernel stand-in that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def rotary_without_restart(x, cu_seqlens, inv_freq):
    """A plausible kernel bug: positions run on across the pack instead of restarting at each protein."""
    whole = torch.tensor([0, x.shape[0]], dtype=cu_seqlens.dtype, device=x.device)
    return rotary.rotary_reference(x, whole, inv_freq)


def tanh_gelu(x, bias):
    """Another: the tanh approximation instead of the exact (erf) GELU."""
    return torch.nn.functional.gelu(x + bias, approximate="tanh")


def use_stand_in(monkeypatch, module, fused):
    """Make ``module`` take CPU tensors to its 'kernel', which is ``fused``."""
    stand_in = Counted(fused)
    monkeypatch.setattr(module, "KERNEL", dataclasses.replace(module.KERNEL, fused=stand_in))
    monkeypatch.setattr(module, "kernel_takes", lambda *tensors: True)
    return stand_in


def packed_input():
    x = torch.randn(30, 2, 8, generator=torch.Generator().manual_seed(0))
    return x, torch.tensor([0, 7, 19, 30], dtype=torch.int32), rotary.inv_frequencies(8)


def test_wrong_rotary_is_caught_and_replaced_for_the_rest_of_the_run(monkeypatch):
    stand_in = use_stand_in(monkeypatch, rotary, rotary_without_restart)
    x, cu, inv = packed_input()
    with pytest.warns(
        RuntimeWarning,
        match=r"rotary \(csrc/rotary\) failed its self-check on cpu in float32 "
        r"\(output max error .* > allowed .*\); using its PyTorch reference",
    ):
        first = rotary.apply_rotary_thd(x, cu, inv)
    assert stand_in.calls == 1  # the check's own run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per run, not per call
        second = rotary.apply_rotary_thd(x, cu, inv)
    assert stand_in.calls == 1
    assert torch.equal(first, rotary.rotary_reference(x, cu, inv)) and torch.equal(second, first)


def test_wrong_bias_gelu_is_caught_and_replaced(monkeypatch):
    stand_in = use_stand_in(monkeypatch, bias_gelu, tanh_gelu)
    x, bias = torch.randn(4, 3, 16), torch.randn(16)
    with pytest.warns(RuntimeWarning, match=r"bias_gelu \(csrc/bias_gelu\) failed its self-check .* grad x max error"):
        out = bias_gelu.bias_gelu(x, bias)
    bias_gelu.bias_gelu(x, bias)
    assert stand_in.calls == 1
    assert torch.equal(out, bias_gelu.bias_gelu_reference(x, bias))


def test_correct_kernel_is_kept_and_checked_once_per_device_and_dtype(monkeypatch):
    stand_in = use_stand_in(monkeypatch, rotary, rotary.rotary_reference)
    checks = Counted(selfcheck.check)
    monkeypatch.setattr(selfcheck, "check", checks)
    x, cu, inv = packed_input()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            rotary.apply_rotary_thd(x, cu, inv)
        assert (checks.calls, stand_in.calls) == (1, 1 + 3)  # the check's run, then every call
        rotary.apply_rotary_thd(x.bfloat16(), cu, inv)  # another dtype: checked on its own
    assert checks.calls == 2


def test_first_use_under_inference_mode_still_checks_both_directions(monkeypatch):
    """Evaluation may be the first use: the check still differentiates, and a correct kernel is kept."""
    stand_in = use_stand_in(monkeypatch, bias_gelu, bias_gelu.bias_gelu_reference)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")
        bias_gelu.bias_gelu(torch.randn(4, 16), torch.randn(16))
    assert stand_in.calls == 2  # the check's run, then the call


def test_a_kernel_that_raises_is_rejected(monkeypatch):
    def no_image(*args):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    use_stand_in(monkeypatch, bias_gelu, no_image)
    x, bias = torch.randn(4, 16), torch.randn(16)
    with pytest.warns(RuntimeWarning, match=r"raised RuntimeError: CUDA error: no kernel image is available[^\n]*\)"):
        out = bias_gelu.bias_gelu(x, bias)
    assert torch.equal(out, bias_gelu.bias_gelu_reference(x, bias))


def test_check_reports_errors_against_the_parity_bound():
    """bf16 results of the reference itself pass (error = PyTorch's own); a bias gradient that drops the
    sum over rows does not, and the result names it with its error."""
    kernel = bias_gelu.KERNEL
    passed = selfcheck.check(dataclasses.replace(kernel, fused=bias_gelu.bias_gelu_reference), "cpu", torch.bfloat16)
    assert passed.passed and set(passed.errors) == {"output", "grad x", "grad bias"}
    assert all(passed.errors[k] <= passed.allowed[k] for k in passed.errors)

    class LosesBiasGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            ctx.save_for_backward(x, b)
            return bias_gelu.bias_gelu_reference(x, b)

        @staticmethod
        def backward(ctx, grad):
            x, b = ctx.saved_tensors
            with torch.enable_grad():
                x, b = x.detach().requires_grad_(True), b.detach().requires_grad_(True)
                gx, gb = torch.autograd.grad(bias_gelu.bias_gelu_reference(x, b), (x, b), grad)
            return gx, gb / 2

    failed = selfcheck.check(dataclasses.replace(kernel, fused=LosesBiasGrad.apply), "cpu", torch.float32)
    assert not failed.passed and failed.failure.startswith("grad bias max error")
    assert failed.errors["grad bias"] > 1 and failed.errors["output"] == 0.0


def test_nan_is_a_mismatch():
    nan = torch.tensor([1.0, math.nan])
    errors, allowed, failure = selfcheck.compare(
        ["output"], [nan], [nan.nan_to_num()], [nan.nan_to_num()], torch.bfloat16
    )
    assert failure and "output" in failure


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU reports")
def test_env_check_kernels_on_cpu_says_why_nothing_was_checked(capsys):
    from megatron_plm.cli import main

    assert main(["env", "--check-kernels"]) == 0
    out = capsys.readouterr().out
    for name in ("rotary (csrc/rotary)", "bias_gelu (csrc/bias_gelu)"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert "not checked:" in line and "CUDA" in line
    assert "ok: kernel" not in out and "FAILED" not in out


def test_results_table_names_kernel_dtype_and_verdict():
    ok = selfcheck.CheckResult("rotary (csrc/rotary)", "cuda:0", torch.bfloat16, {"output": 0.01}, {"output": 0.02})
    bad = selfcheck.CheckResult("bias_gelu (csrc/bias_gelu)", "cuda:0", torch.float16, failure="raised RuntimeError: x")
    table = selfcheck.format_results([ok, bad], {})
    assert "bfloat16" in table and "0.01/0.02" in table and "ok: kernel" in table
    assert "FAILED, reference used: raised RuntimeError: x" in table
