"""The fused rotary kernel (csrc/rotary) against its PyTorch reference, and the reference against
megatron-core's own RoPE. Kernel parity needs a GPU; the rest runs on CPU."""

import numpy as np
import pytest
import torch

from megatron_plm.data.samples.batch import cu_seqlens_from_segments
from megatron_plm.kernels import rotary, selfcheck
from megatron_plm.kernels.rotary import apply_rotary_thd, inv_frequencies, rotary_reference

needs_gpu_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and rotary.kernel_available()),
    reason="kernel parity needs a CUDA GPU and the built extension (pip install -e . with nvcc)",
)


def real_boundaries(sample_corpus, rows: int, length: int) -> torch.Tensor:
    """cu_seqlens of packed CLM samples of the shipped corpus (proteins of real lengths)."""
    from megatron_plm.data.corpus import Corpus
    from megatron_plm.data.samples.datasets import ProteinDataset, SampleConfig
    from megatron_plm.data.samples.splits import Split

    corpus = Corpus.open(sample_corpus)
    dataset = ProteinDataset(
        corpus,
        np.arange(len(corpus)),
        config=SampleConfig(objective="clm", seq_length=length, packed=True),
        num_samples=rows,
        seed=5,
        split=Split.TRAIN,
        name="r",
    )
    segments = np.stack([dataset[i]["segment_ids"] for i in range(rows)])
    return torch.from_numpy(cu_seqlens_from_segments(segments)[0])


def test_reference_equals_megatron_core_rope(runtime, sample_corpus):
    """Our reference is megatron-core's thd RoPE (per-protein positions) to the last bit in fp32, on the
    device megatron-core puts its frequencies on (the current GPU on a GPU machine; a virtual one under
    the device-strict shim, which refuses inputs left on the host as a GPU would)."""
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_thd
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    cu = real_boundaries(sample_corpus, rows=3, length=256)
    tokens, heads, dim = int(cu[-1]), 4, 32
    freqs = RotaryEmbedding(kv_channels=dim, rotary_percent=1.0, use_cpu_initialization=True)(
        int((cu[1:] - cu[:-1]).max())
    )
    device = freqs.device
    x = torch.randn(tokens, heads, dim, generator=torch.Generator().manual_seed(0)).to(device)
    cu = cu.to(device)

    class SingleRank:
        def size(self):
            return 1

        def rank(self):
            return 0

    expected = _apply_rotary_pos_emb_thd(x, cu, freqs, cp_group=SingleRank())
    assert torch.equal(rotary_reference(x, cu, inv_frequencies(dim, device=device)), expected)


def test_positions_restart_at_every_protein():
    cu = torch.tensor([0, 3, 7, 8], dtype=torch.int32)
    assert rotary.positions_in_segments(cu, 8).tolist() == [0, 1, 2, 0, 1, 2, 3, 0]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="head_dim"):
        apply_rotary_thd(torch.zeros(4, 2, 6), torch.tensor([0, 4]), inv_frequencies(8))


@pytest.mark.skipif(not rotary.kernel_available(), reason="extension not built (no nvcc at install time)")
def test_built_kernel_checks_its_inputs():
    """The binding refuses what the kernel cannot take, with a message naming the argument."""
    cu, inv = torch.tensor([0, 4], dtype=torch.int32), inv_frequencies(8)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        rotary._rotary_cuda.rotary_thd(torch.zeros(4, 2, 8), cu, inv, 1.0, 0)


@pytest.mark.skipif(not rotary.kernel_available(), reason="extension not built (no nvcc at install time)")
def test_kernel_is_a_dispatcher_op_with_shapes():
    """Registered with torch.library, so profilers and torch.compile see it; shapes via fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    # A CPU-only torch cannot name a CUDA device even for fake tensors (unless the CPU shim is installed,
    # which made this pass only after another test had installed it); the shapes do not depend on it.
    FAKE_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    with FakeTensorMode():
        q = torch.empty(10, 4, 96, device=FAKE_DEVICE, dtype=torch.bfloat16)[..., :32]  # strided, as from fused QKV
        out = torch.ops.megatron_plm.rotary_thd(
            q, torch.empty(3, device=FAKE_DEVICE, dtype=torch.int32), torch.empty(16, device=FAKE_DEVICE), 1.0
        )
    assert out.shape == q.shape and out.is_contiguous() and out.dtype == q.dtype


# dtype x shape grid: head dims of ESM-2 (64 at 650M, 80 at 3B) and of our CLM recipes (128), few and
# many proteins per pack, and a strided input (q as megatron-core slices it from the fused QKV).
SHAPES = [(1024, 20, 64, 4), (4096, 16, 128, 40), (777, 8, 80, 1), (8192, 40, 128, 120)]


@needs_gpu_kernel
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens, heads, dim, proteins", SHAPES)
@pytest.mark.parametrize("strided", [False, True])
def test_kernel_matches_reference_forward_and_backward(dtype, tokens, heads, dim, proteins, strided):
    """Error against an fp32 reference at most 2x that of PyTorch's own same-dtype computation (the
    bound of the kernels' self-check, megatron_plm.kernels.selfcheck)."""
    generator = torch.Generator(device="cuda").manual_seed(tokens + heads)
    cuts = torch.randperm(tokens - 1, generator=generator, device="cuda")[: proteins - 1] + 1
    cu = torch.cat([torch.zeros(1, device="cuda"), cuts.sort().values, torch.full((1,), tokens, device="cuda")])
    cu = cu.to(torch.int32)
    inv = inv_frequencies(dim, device="cuda")
    base = torch.randn(tokens, heads, 3 * dim if strided else dim, device="cuda", generator=generator)
    x32 = base[..., :dim] if strided else base
    grad32 = torch.randn(tokens, heads, dim, device="cuda", generator=generator)

    def run(fn, x, grad):
        x = x.detach().requires_grad_(True)
        out = fn(x if x.stride(-1) == 1 else x.contiguous(), cu, inv)
        out.backward(grad)
        return out.detach().float(), x.grad.float()

    want = run(rotary_reference, x32, grad32)
    same_dtype = run(rotary_reference, x32.to(dtype), grad32.to(dtype))
    # The kernel itself, not apply_rotary_thd: that one would fall back to the reference on a failed self-check.
    ours = run(rotary.fused_rotary_thd, x32.to(dtype), grad32.to(dtype))
    errors, allowed, failure = selfcheck.compare(("output", "grad x"), ours, same_dtype, want, dtype)
    assert failure is None, failure
