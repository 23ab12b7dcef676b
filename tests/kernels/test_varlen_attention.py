"""PyTorch's varlen flash attention (what the varlen backend runs on a GPU) against our plain-PyTorch
reference (what it runs on the CPU): forward and backward, causal and bidirectional, one head per query
and grouped-query, over real protein boundaries. Needs a CUDA GPU."""

import pytest
import torch

from megatron_plm.models.attention import _varlen_kernel, _varlen_kernel_kwargs, varlen_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and _varlen_kernel() is not None),
        reason="varlen flash attention needs a CUDA GPU and torch >= 2.9",
    ),
]

# Real protein lengths from the shipped sample's first records, packed into one row.
LENGTHS = [237, 64, 511, 90, 1, 330]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads, groups", [(8, 8), (8, 2)])
def test_flash_matches_the_reference_within_twice_bf16_error(causal, heads, groups):
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32, device=device)
    t, d, scale = int(cu[-1]), 64, 64**-0.5
    q, k, v = (torch.randn(t, n, d, device=device, generator=generator) for n in (heads, groups, groups))
    grad = torch.randn(t, heads, d, device=device, generator=generator)

    def run(fn, dtype):
        inputs = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*inputs)
        out.backward(grad.to(dtype))
        return [out.float(), *(x.grad.float() for x in inputs)]

    kernel = _varlen_kernel()
    kernel_kwargs = _varlen_kernel_kwargs(kernel)(causal, grouped=groups < heads)
    longest = max(LENGTHS)
    flash = run(lambda a, b, c: kernel(a, b, c, cu, cu, longest, longest, scale=scale, **kernel_kwargs), torch.bfloat16)
    reference = run(lambda a, b, c: varlen_reference(a, b, c, cu, causal=causal, scale=scale), torch.float32)
    torch_bf16 = run(lambda a, b, c: varlen_reference(a, b, c, cu, causal=causal, scale=scale), torch.bfloat16)
    for name, got, exact, baseline in zip(("out", "dq", "dk", "dv"), flash, reference, torch_bf16):
        error, allowed = (got - exact).abs().max().item(), 2 * (baseline - exact).abs().max().item() + 1e-3
        assert error <= allowed, f"{name}: error {error:.3g} > {allowed:.3g} (twice PyTorch's own bf16 error)"
