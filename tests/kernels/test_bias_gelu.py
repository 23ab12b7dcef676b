"""The fused bias + GELU kernel (csrc/bias_gelu) against its PyTorch reference, and the MLP that uses
it against megatron-core's own. Kernel parity needs a GPU; the rest runs on CPU."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megatron_plm.kernels import bias_gelu as kernel
from megatron_plm.kernels import selfcheck
from megatron_plm.kernels.bias_gelu import bias_gelu, bias_gelu_reference

needs_gpu_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernel.kernel_available()),
    reason="kernel parity needs a CUDA GPU and the built extension (pip install -e . with nvcc)",
)


def mlps(runtime, **overrides):
    """megatron-core's MLP and ours, built from the same spec and holding the same weights."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.mlp import MLP

    from megatron_plm.models.config import ModelConfig
    from megatron_plm.models.mlp import BiasGeluMLP
    from megatron_plm.runtime.parallel import ParallelConfig

    config = ModelConfig(num_layers=1, hidden_size=64, num_attention_heads=4, ffn_hidden_size=192)
    config = dataclasses.replace(config.to_transformer_config(ParallelConfig()), **overrides)
    spec = get_gpt_layer_local_spec().submodules.mlp.submodules
    theirs = MLP(config, spec, ffn_hidden_size=config.ffn_hidden_size)
    ours = BiasGeluMLP(config, spec, ffn_hidden_size=config.ffn_hidden_size)
    with torch.no_grad():  # non-zero biases, so the bias path is exercised
        for p in theirs.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def test_mlp_is_megatron_cores_on_cpu(runtime):
    """Same parameters, outputs and gradients (bit for bit) as megatron-core's MLP (checkpoint keys:
    tests/models/test_attention_backends.py)."""
    theirs, ours = mlps(runtime)
    assert theirs.state_dict().keys() == ours.state_dict().keys()
    x = torch.randn(16, 3, 64, generator=torch.Generator().manual_seed(0))
    grad = torch.randn(16, 3, 64, generator=torch.Generator().manual_seed(1))
    results = []
    for mlp in (theirs, ours):
        inputs = x.clone().requires_grad_(True)
        out, out_bias = mlp(inputs)
        (out + out_bias).backward(grad)
        results.append((out, inputs.grad, [p.grad for p in mlp.parameters()]))
    (out_a, dx_a, grads_a), (out_b, dx_b, grads_b) = results
    assert torch.equal(out_a, out_b) and torch.equal(dx_a, dx_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_mlp_refuses_what_the_kernel_does_not_compute(runtime):
    with pytest.raises(ValueError, match="exact GELU"):
        mlps(runtime, gated_linear_unit=True)
    with pytest.raises(ValueError, match="exact GELU"):
        mlps(runtime, activation_func=F.silu)


def test_bad_bias_is_refused():
    with pytest.raises(ValueError, match="last dimension"):
        bias_gelu(torch.zeros(4, 8), torch.zeros(6))


@pytest.mark.skipif(not kernel.kernel_available(), reason="extension not built (no nvcc at install time)")
def test_built_kernel_checks_its_inputs():
    """The binding refuses what the kernel cannot take, with a message naming the argument."""
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        kernel._bias_gelu_cuda.bias_gelu_forward(torch.zeros(4, 8), torch.zeros(8), 0)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        kernel._bias_gelu_cuda.bias_gelu_backward(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(8), 132, 0)


@pytest.mark.skipif(not kernel.kernel_available(), reason="extension not built (no nvcc at install time)")
def test_backward_chunks_follow_the_sm_count_it_is_given():
    """The bias gradient's row chunks (~8 blocks per SM, >= 16 rows each, <= 65535) are a pure function of
    the SM count the caller passes: the backward queries no device attribute (issue 27)."""

    def expected(rows, cols, sms):
        column_blocks = max(cols // (128 * 8), 1)
        chunks = min(-(-8 * sms // column_blocks), -(-rows // 16), 65535)
        return max(chunks, 1)

    for rows, cols, sms in [(8192, 5120, 132), (8192, 5120, 66), (5, 2048, 132), (10**7, 64, 132), (64, 1003, 0)]:
        assert kernel._bias_gelu_cuda.row_chunks(rows, cols, sms) == expected(rows, cols, sms or 132)
    assert kernel._bias_gelu_cuda.row_chunks(8192, 5120, 132) != kernel._bias_gelu_cuda.row_chunks(8192, 5120, 66)


def test_sm_count_is_asked_once_per_device(monkeypatch):
    asked = []

    class Properties:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: asked.append(device) or Properties())
    kernel.multiprocessors.cache_clear()
    try:
        device = torch.device("cuda", 0)
        assert [kernel.multiprocessors(device) for _ in range(5)] == [132] * 5
        assert asked == [device]
    finally:
        kernel.multiprocessors.cache_clear()


@pytest.mark.skipif(not kernel.kernel_available(), reason="extension not built (no nvcc at install time)")
def test_kernels_are_dispatcher_ops_with_shapes():
    """Registered with torch.library, so profilers and torch.compile see them; shapes via fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(6, 2, 40, device="cuda", dtype=torch.bfloat16)
        bias = torch.empty(40, device="cuda", dtype=torch.bfloat16)
        out = torch.ops.megatron_plm.bias_gelu_forward(x, bias)
        grad_x, grad_bias = torch.ops.megatron_plm.bias_gelu_backward(out, x, bias)
    assert out.shape == grad_x.shape == x.shape and out.is_contiguous() and out.dtype == x.dtype
    assert grad_bias.shape == bias.shape and grad_bias.dtype == bias.dtype


# dtype x shape grid: the MLP activations of ESM-2 650M ([s, b, 5120]) and of the 1B CLM at TP 2, a width
# no 16-byte pack divides (the element-wise path), and fewer rows than a row chunk.
SHAPES = [(1024, 8, 5120), (8192, 1, 3072), (333, 2, 1003), (5, 1, 2048)]


@needs_gpu_kernel
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference_forward_and_backward(dtype, shape):
    """Error against an fp32 reference (on the same rounded inputs) at most 2x that of PyTorch's own
    same-dtype computation, for the output and the gradients of x and of the bias (the bound of the
    kernels' self-check, megatron_plm.kernels.selfcheck)."""
    generator = torch.Generator(device="cuda").manual_seed(sum(shape))
    x = (2 * torch.randn(shape, device="cuda", generator=generator)).to(dtype)
    bias = torch.randn(shape[-1], device="cuda", generator=generator).to(dtype)
    grad = torch.randn(shape, device="cuda", generator=generator).to(dtype)

    def run(fn, x, bias, grad):
        x, bias = x.detach().requires_grad_(True), bias.detach().requires_grad_(True)
        out = fn(x, bias)
        out.backward(grad)
        return [t.detach().float() for t in (out, x.grad, bias.grad)]

    want = run(bias_gelu_reference, x.float(), bias.float(), grad.float())
    same_dtype = run(bias_gelu_reference, x, bias, grad)
    # The kernel itself, not bias_gelu: that one would fall back to the reference on a failed self-check.
    ours = run(kernel.fused_bias_gelu, x, bias, grad)
    errors, allowed, failure = selfcheck.compare(("output", "grad x", "grad bias"), ours, same_dtype, want, dtype)
    assert failure is None, failure
