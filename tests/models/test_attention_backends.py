"""Attention backends honour protein boundaries: equality with megatron-core's local attention, and no
cross-talk between packed proteins (cf. Megatron-LM#2357). CPU; the te backend needs the container."""

import numpy as np
import pytest
import torch

from megatron_plm.data.samples.batch import collate
from megatron_plm.data.corpus import Corpus
from megatron_plm.data.samples.datasets import ProteinDataset, SampleConfig
from megatron_plm.data.samples.splits import Split
from megatron_plm.models.config import ModelConfig
from megatron_plm.models.mcore import PACKED_BACKENDS
from megatron_plm.models.build import build_model_chunk

CPU_BACKENDS = ["local", "sdpa", "varlen"]  # varlen runs its plain-PyTorch equivalent on CPU


def model(runtime, objective, backend, reference=None):
    config = ModelConfig(
        num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=128, vocab_size=35, attention_backend=backend
    )
    chunk = build_model_chunk(config, runtime, objective=objective).eval()
    chunk.backend = backend
    if reference is not None:
        chunk.load_state_dict(reference.state_dict())  # core attention holds no weights: same model
    return chunk


def batch(sample_corpus, objective, packed, count=4):
    corpus = Corpus.open(sample_corpus)
    dataset = ProteinDataset(
        corpus,
        np.arange(len(corpus)),
        config=SampleConfig(objective=objective, seq_length=128, packed=packed),
        num_samples=64,
        seed=3,
        split=Split.TRAIN,
        name="t",
    )
    return collate([dataset[i] for i in range(count)], causal=objective == "clm")


def logits(chunk, b, *, mask="segments"):
    """``[b, s, vocab]`` logits; packed backends get the batch as one thd row, on the model's device."""
    b = b.to(next(chunk.parameters()).device)
    with torch.no_grad():
        if mask != "segments":
            return chunk(b.tokens, b.position_ids, None)
        if chunk.backend in PACKED_BACKENDS:
            return chunk(**b.pack().model_inputs()).reshape(*b.tokens.shape, -1)
        return chunk(**b.model_inputs())


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
@pytest.mark.parametrize("objective, packed", [("clm", True), ("mlm", True), ("mlm", False)])
def test_backend_equals_local_attention(runtime, sample_corpus, objective, packed, backend):
    reference = model(runtime, objective, "local")
    other = model(runtime, objective, backend, reference)
    b = batch(sample_corpus, objective, packed)
    real = b.segment_ids >= 0
    difference = (logits(reference, b) - logits(other, b))[real].abs().max().item()
    assert difference <= 1e-5, difference


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_backend_trains_like_local_attention(runtime, sample_corpus, objective, backend):
    """Same loss gradients for every parameter (attention, fused MLP activation, heads) as the reference,
    and the same checkpoint keys, so a run can switch backends when it resumes."""
    reference = model(runtime, objective, "local").train()
    other = model(runtime, objective, backend, reference).train()
    assert reference.sharded_state_dict().keys() == other.sharded_state_dict().keys()
    b = batch(sample_corpus, objective, packed=True).to(runtime.device)
    grads = []
    for chunk in (reference, other):
        chunk.zero_grad()
        fed = b.pack() if backend in PACKED_BACKENDS and chunk is other else b
        token_losses = chunk(**fed.model_inputs(), labels=fed.labels)
        (token_losses * fed.loss_mask).sum().backward()
        grads.append({name: p.grad.clone() for name, p in chunk.named_parameters()})
    for name, want in grads[0].items():
        scale = want.abs().max().item()
        assert (grads[1][name] - want).abs().max().item() <= 1e-5 * max(scale, 1e-3), name


def _first_protein_changed(b):
    """Tokens of each row's first protein replaced; returns the batch and a mask of later proteins."""
    tokens = b.tokens.clone()
    first = b.segment_ids == 0
    tokens[first & (tokens >= 4) & (tokens <= 23)] = 5  # residues -> alanine; specials untouched
    later = b.segment_ids > 0
    assert later.any(), "the packed batch should hold more than one protein per row"
    return type(b)(**{**b.__dict__, "tokens": tokens}), later


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_no_attention_across_packed_proteins(runtime, sample_corpus, backend, objective):
    chunk = model(runtime, objective, backend)
    b = batch(sample_corpus, objective, packed=True)
    changed, later = _first_protein_changed(b)
    assert torch.equal(logits(chunk, b)[later], logits(chunk, changed)[later])
    # The control: without the boundary mask (plain causal attention) the change leaks into later proteins.
    if objective == "clm" and backend != "varlen":
        assert not torch.equal(logits(chunk, b, mask=None)[later], logits(chunk, changed, mask=None)[later])


def test_packed_backends_build_bidirectional_mlm_layers():
    """Packed backends take causality from the layer's mask type, not from a mask: MLM layers must be
    built bidirectional, or Transformer Engine and varlen would silently train a causal MLM."""
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_plm.models.mcore import layer_spec

    def mask_type(backend, objective):
        return layer_spec(backend, objective=objective).submodules.self_attention.params["attn_mask_type"]

    assert mask_type("varlen", "mlm") == AttnMaskType.no_mask
    assert mask_type("varlen", "clm") == AttnMaskType.causal
    try:
        te_mlm = mask_type("te", "mlm")
    except (ImportError, NameError) as error:  # megatron-core cannot build TE specs without TE
        pytest.skip(f"Transformer Engine not installed ({error})")
    assert te_mlm == AttnMaskType.no_mask


def test_pack_keeps_token_order_and_boundaries(sample_corpus):
    b = batch(sample_corpus, "clm", packed=True)
    packed = b.pack()
    rows, length = b.tokens.shape
    assert packed.tokens.shape == (1, rows * length) and torch.equal(packed.tokens[0], b.tokens.reshape(-1))
    params = packed.packed_seq_params()
    cu = params.cu_seqlens_q
    assert params.qkv_format == "thd" and cu[0] == 0 and cu[-1] == rows * length
    # Every segment holds one protein (or padding) and never crosses a row.
    flat_segments = b.segment_ids.reshape(-1)
    row_of = torch.arange(rows * length) // length
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        assert len(set(flat_segments[start:end].tolist())) == 1 and len(set(row_of[start:end].tolist())) == 1
    assert params.max_seqlen_q == int((cu[1:] - cu[:-1]).max())


def test_varlen_refuses_unpacked_batches(runtime, sample_corpus):
    chunk = model(runtime, "clm", "varlen")
    with pytest.raises(ValueError, match="needs packed batches"), torch.no_grad():
        chunk(**batch(sample_corpus, "clm", packed=True).to(runtime.device).model_inputs())


def _core_attention(cls, runtime, *, heads=4, groups=2, mask_type=None):
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    config = TransformerConfig(
        num_layers=1,
        hidden_size=64,
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=16,
        attention_dropout=0.0,
    )
    return cls(config, 1, mask_type or AttnMaskType.causal, "self")


def test_grouped_query_attention_shares_key_value_heads_without_copies(runtime, monkeypatch):
    """GQA (2 key/value heads for 4 query heads) through SDPA's and the varlen path's own head sharing: the
    same output as the keys and values repeated per query head, and no repeat_interleave (issue 27)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    from megatron_plm.models.attention import SDPAAttention, VarlenAttention

    generator = torch.Generator().manual_seed(0)
    s, b, t = 12, 2, 20
    q, k, v = (torch.randn(s, b, n, 16, generator=generator) for n in (4, 2, 2))
    repeated = [x.repeat_interleave(2, dim=2) for x in (k, v)]
    expected = _core_attention(SDPAAttention, runtime, groups=4)(q, *repeated, None)
    cu = torch.tensor([0, 7, 20], dtype=torch.int32)
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=13, max_seqlen_kv=13)
    tq, tk, tv = (torch.randn(t, n, 16, generator=generator) for n in (4, 2, 2))
    expected_thd = _core_attention(VarlenAttention, runtime, groups=4)(
        tq, tk.repeat_interleave(2, dim=1), tv.repeat_interleave(2, dim=1), None, packed_seq_params=packed
    )

    def no_copies(*args, **kwargs):
        raise AssertionError("repeat_interleave called: key/value heads copied")

    monkeypatch.setattr(torch.Tensor, "repeat_interleave", no_copies)
    got = _core_attention(SDPAAttention, runtime)(q, k, v, None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    got_thd = _core_attention(VarlenAttention, runtime)(tq, tk, tv, None, packed_seq_params=packed)
    torch.testing.assert_close(got_thd, expected_thd, rtol=1e-5, atol=1e-6)


def test_varlen_reads_how_its_kernel_takes_causality_once(runtime, monkeypatch):
    """The kernel's signature is read when the layer is built, not on every forward (issue 27)."""
    import inspect

    from megatron_plm.models import attention

    if attention._varlen_kernel() is None:
        pytest.skip(f"torch {torch.__version__} has no torch.nn.attention.varlen")
    reads = []
    real_signature = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda f, *a, **k: reads.append(f) or real_signature(f, *a, **k))
    layer = _core_attention(attention.VarlenAttention, runtime)
    calls = [layer.kernel_kwargs(causal) for causal in (True, False, True)]
    grouped = layer.kernel_kwargs(True, grouped=True)
    assert len(reads) == 1
    parameters = real_signature(attention._varlen_kernel()).parameters
    window = "window_size" in parameters
    assert calls[0] == ({"window_size": (-1, 0)} if window else {"is_causal": True})
    assert calls[1] == ({"window_size": (-1, -1)} if window else {"is_causal": False})
    assert grouped.get("enable_gqa", False) == ("enable_gqa" in parameters)
