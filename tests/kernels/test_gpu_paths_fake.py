"""The GPU-only branches (varlen flash attention, the fused RoPE and bias-GELU kernels), traced on fake CUDA
tensors: shapes, dtypes, devices and the kernels' signatures are checked without a GPU, under whatever torch
runs them (``benchmarks/gpu_suite.sh --dry-run`` runs this file under the GPU machine's torch 2.11). Forward
only: autograd on fake CUDA tensors needs a CUDA context."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from megatron_plm.kernels import bias_gelu, rotary, selfcheck
from megatron_plm.runtime import cpu

pytestmark = [
    pytest.mark.fake_cuda,
    pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the real kernels (tests/kernels, -m gpu)"),
]


class _SingleRank:
    def size(self):
        return 1


class _Groups:
    tp = _SingleRank()


@pytest.fixture
def fake_cuda(monkeypatch):
    if cpu.is_installed():
        pytest.skip("the CPU shim is installed: it would move the fake CUDA tensors to the CPU")
    monkeypatch.setattr(selfcheck, "kernel_verified", lambda *args, **kwargs: True)  # no numbers to check
    with FakeTensorMode():
        yield


@pytest.mark.parametrize("groups", [4, 2])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen_layer_takes_the_flash_kernel_and_the_fused_rope(fake_cuda, groups, causal):
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_plm.models.attention import VarlenAttention

    config = TransformerConfig(
        num_layers=1,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=groups,
        kv_channels=16,
        attention_dropout=0.0,
    )
    mask = AttnMaskType.causal if causal else AttnMaskType.no_mask
    layer = VarlenAttention(config, 1, mask, "self", pg_collection=_Groups())
    if layer.kernel is None:
        pytest.skip(f"torch {torch.__version__} has no varlen flash attention")
    calls = []
    kernel = layer.kernel
    layer.kernel = lambda *args, **kwargs: calls.append(kwargs) or kernel(*args, **kwargs)
    q, k, v = (torch.empty(20, n, 16, device="cuda", dtype=torch.bfloat16) for n in (4, groups, groups))
    cu = torch.tensor([0, 7, 20], dtype=torch.int32, device="cuda")
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=13, max_seqlen_kv=13)
    out = layer(q, k, v, None, packed_seq_params=packed)
    assert out.shape == (20, 64) and out.dtype == torch.bfloat16 and out.device.type == "cuda"
    assert len(calls) == 1 and calls[0]["scale"] == 16**-0.5
    if rotary.kernel_available():
        rope = rotary.apply_rotary_thd(q, cu, rotary.inv_frequencies(16, device="cuda"))
        assert rope.shape == q.shape and rope.dtype == q.dtype and rope.device == q.device


def test_bias_gelu_takes_the_fused_kernel(fake_cuda):
    if not bias_gelu.kernel_available():
        pytest.skip("extension not built (no nvcc at install time)")
    x = torch.empty(8, 2, 640, device="cuda", dtype=torch.bfloat16)
    bias = torch.empty(640, device="cuda", dtype=torch.bfloat16)
    assert bias_gelu.kernel_takes(x, bias)
    out = bias_gelu.bias_gelu(x, bias)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device.type == "cuda"
