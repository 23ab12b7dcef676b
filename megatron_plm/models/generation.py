"""How a CLM samples proteins, as settings (:class:`SamplingConfig`) and as the ``transformers``
``GenerationConfig`` that realises them: ``evaluate generate`` samples with it, and ``export-hf``
writes it beside the weights, so both sample the same proteins at the same seed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megatron_plm.data.tokenizers.protein import RESIDUES_TOKENIZER, RESIDUES, STANDARD_AMINO_ACIDS


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    num_sequences: int = field(default=8, metadata={"cli": {"flags": ["--num", "--num-sequences"]}})
    """Sequences to sample (per prompt)."""
    max_length: int = 256
    """Residues at most, a prompt's included (the terminus tokens not counted); must fit the model's context."""
    temperature: float = 1.0
    """Softmax temperature."""
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches p (1.0: all)."""
    reverse: bool = False
    """Sample C->N (framed 2...1); written N->C."""
    allow_nonstandard: bool = False
    """Also sample the non-standard residues of the vocabulary (X, B, U, Z, O)."""
    seed: int = 0
    """Seed of the sampling."""
    use_cache: bool = True
    """Decode with the model's key/value cache where it has one (False: re-run the whole prefix each step)."""

    def validate(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):  # nan compares false to everything
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_length < 1 or self.num_sequences < 1:
            raise ValueError("top_k must be >= 0, max_length and num_sequences >= 1")


def generation_config(config: SamplingConfig, vocab_size: int = RESIDUES_TOKENIZER.vocab_size):
    """``transformers``' :class:`~transformers.GenerationConfig` that samples as :func:`generate` does.

    Tokens that are not allowed residues (nor the closing terminus) are suppressed, the closing terminus
    is forbidden until one residue follows the opening one (``min_length=2``: the opening terminus and a
    residue), and sampling stops at the closing terminus or after ``max_length`` residues. ``export-hf``
    writes it (at the default settings) as the export's ``generation_config.json``, so that ``model.generate``
    and ``pipeline("text-generation")`` sample proteins as ``evaluate generate`` does."""
    from transformers import GenerationConfig

    start, stop = (
        (RESIDUES_TOKENIZER.c_terminus, RESIDUES_TOKENIZER.n_terminus)
        if config.reverse
        else (RESIDUES_TOKENIZER.n_terminus, RESIDUES_TOKENIZER.c_terminus)
    )
    allowed = {
        RESIDUES_TOKENIZER.token_to_id(c) for c in (RESIDUES if config.allow_nonstandard else STANDARD_AMINO_ACIDS)
    }
    return GenerationConfig(
        do_sample=True,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        max_length=config.max_length + 1,
        min_length=2,
        suppress_tokens=[i for i in range(vocab_size) if i not in allowed and i != stop],
        bos_token_id=start,
        eos_token_id=stop,
        pad_token_id=RESIDUES_TOKENIZER.pad,
        use_cache=config.use_cache,
    )
