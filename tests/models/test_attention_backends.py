"""Attention backends honour protein boundaries: equality with megatron-core's local attention, and no
cross-talk between packed proteins (cf. Megatron-LM#2357). CPU; the te backend needs the container."""

import numpy as np
import pytest
import torch

from megatron_plm.data.batch import collate
from megatron_plm.data.corpus import Corpus
from megatron_plm.data.datasets import ProteinDataset, SampleConfig
from megatron_plm.data.splits import Split
from megatron_plm.models.config import ModelConfig
from megatron_plm.training.build import build_model_chunk

CPU_BACKENDS = ["local", "sdpa"]


def model(runtime, objective, backend, reference=None):
    config = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=128, vocab_size=35,
                         attention_backend=backend)  # fmt: skip
    chunk = build_model_chunk(config, runtime, objective=objective).eval()
    if reference is not None:
        chunk.load_state_dict(reference.state_dict())  # core attention holds no weights: same model
    return chunk


def batch(sample_corpus, objective, packed, count=4):
    corpus = Corpus.open(sample_corpus)
    dataset = ProteinDataset(corpus, np.arange(len(corpus)), config=SampleConfig(objective=objective, seq_length=128,
                             packed=packed), num_samples=64, seed=3, split=Split.TRAIN, name="t")  # fmt: skip
    return collate([dataset[i] for i in range(count)], causal=objective == "clm")


def logits(chunk, b, *, mask="segments"):
    with torch.no_grad():
        return chunk(b.tokens, b.position_ids, b.attention_mask() if mask == "segments" else None)


@pytest.mark.parametrize("objective, packed", [("clm", True), ("mlm", True), ("mlm", False)])
def test_sdpa_equals_local_attention(runtime, sample_corpus, objective, packed):
    reference = model(runtime, objective, "local")
    other = model(runtime, objective, "sdpa", reference)
    b = batch(sample_corpus, objective, packed)
    real = (b.segment_ids >= 0)
    difference = (logits(reference, b) - logits(other, b))[real].abs().max().item()
    assert difference <= 1e-5, difference


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
    if objective == "clm":
        assert not torch.equal(logits(chunk, b, mask=None)[later], logits(chunk, changed, mask=None)[later])
