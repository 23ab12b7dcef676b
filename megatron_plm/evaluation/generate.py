"""Sampling proteins from a CLM: temperature, top-k, top-p; framed and stopped by the terminus tokens.

Forward generation starts at ``1`` (N-terminus) and ends at ``2``; ``reverse`` starts at ``2`` and
the sampled C->N sequence is flipped back to N->C. Only residues (the 20 standard amino acids unless
``allow_nonstandard``) and the closing terminus can be sampled. A prompt fixes the first residues (the
last ones when reversed). Sampling is ``transformers``' ``generate`` (our checkpoints through the
export's conversion, in memory) with the settings of :func:`generation_config`, which ``export-hf``
also writes: an export samples the same proteins at the same seed, and decodes through the key/value
cache, one token per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from megatron_plm.data.tokenizer import RESIDUES, STANDARD_AMINO_ACIDS, ProteinTokenizer
from megatron_plm.evaluation.model import ScoringModel
from megatron_plm.outputs import write_text_atomic
from megatron_plm.progress import Progress

TOK = ProteinTokenizer()


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    num_sequences: int = 8
    max_length: int = 256
    """Residues at most, a prompt's included (the terminus tokens not counted); must fit the model's context."""
    temperature: float = 1.0
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches p (1.0: all)."""
    reverse: bool = False
    allow_nonstandard: bool = False
    seed: int = 0
    use_cache: bool = True
    """Decode with the model's key/value cache where it has one (False: re-run the whole prefix each step)."""

    def validate(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):  # nan compares false to everything
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_length < 1 or self.num_sequences < 1:
            raise ValueError("top_k must be >= 0, max_length and num_sequences >= 1")


def generation_config(config: SamplingConfig, vocab_size: int = TOK.vocab_size):
    """``transformers``' :class:`~transformers.GenerationConfig` that samples as :func:`generate` does.

    Tokens that are not allowed residues (nor the closing terminus) are suppressed, the closing terminus
    is forbidden until one residue follows the opening one (``min_length=2``: the opening terminus and a
    residue), and sampling stops at the closing terminus or after ``max_length`` residues. ``export-hf``
    writes it (at the default settings) as the export's ``generation_config.json``, so that ``model.generate``
    and ``pipeline("text-generation")`` sample proteins as ``evaluate generate`` does."""
    from transformers import GenerationConfig

    start, stop = (TOK.c_terminus, TOK.n_terminus) if config.reverse else (TOK.n_terminus, TOK.c_terminus)
    allowed = {TOK.token_to_id(c) for c in (RESIDUES if config.allow_nonstandard else STANDARD_AMINO_ACIDS)}
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
        pad_token_id=TOK.pad,
        use_cache=config.use_cache,
    )


class _StepProgress:
    """``transformers``' streamer protocol (``put`` the prompt, then each step's tokens; ``end``) as a progress bar."""

    def __init__(self, progress: Progress):
        self.progress, self.prompted = progress, False

    def put(self, value) -> None:
        if self.prompted:
            self.progress.update(1)
        self.prompted = True

    def end(self) -> None:
        pass


def generate(
    model: ScoringModel, config: SamplingConfig, prompt: str = "", *, show_progress: bool = False
) -> list[str]:
    """Sample ``num_sequences`` proteins (N->C strings) that begin with ``prompt`` (end with it when reverse).

    Sampling is ``transformers``' own (``model.generate`` with :func:`generation_config`, the RNG seeded with
    ``config.seed``), so the export of the same model, given the same settings after ``torch.manual_seed(seed)``,
    samples the same proteins."""
    if model.objective != "clm" or model.causal_lm is None:
        raise ValueError(f"{model.name} is a masked LM; generation needs a causal LM")
    config.validate()
    prompt = prompt.strip().upper()
    if len(prompt) >= config.max_length:
        raise ValueError(
            f"the prompt has {len(prompt)} residues; max_length ({config.max_length}) counts them, so it must be larger"
        )
    if config.max_length + 1 > model.context:
        raise ValueError(
            f"max_length {config.max_length} does not fit {model.name}'s context of {model.context} tokens "
            f"(the opening terminus + residues): at most {model.context - 1} residues; use a smaller max_length"
        )
    settings = generation_config(config, model.vocab_size)
    lm = model.causal_lm()
    prefix = TOK.encode(prompt[::-1] if config.reverse else prompt).astype(np.int64)
    ids = torch.as_tensor(np.concatenate([[settings.bos_token_id], prefix]), dtype=torch.long, device=lm.device)[None]
    devices = [lm.device.index or 0] if lm.device.type == "cuda" else []
    with (
        Progress(config.max_length - len(prompt), "generate", unit="tokens", enabled=show_progress) as progress,
        torch.random.fork_rng(devices=devices),
        torch.no_grad(),
    ):
        torch.manual_seed(config.seed)
        out = lm.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            generation_config=settings,
            num_return_sequences=config.num_sequences,
            streamer=_StepProgress(progress) if show_progress else None,
        )
    sequences = []
    for row in out.cpu().tolist():
        body = [t for t in row[1:] if t not in (settings.eos_token_id, TOK.pad)]
        text = TOK.decode(body)
        sequences.append(text[::-1] if config.reverse else text)
    return sequences


def write_fasta(
    path, sequences: list[str], perplexities: list[float], *, prefix: str = "generated", names: list[str] | None = None
) -> None:
    names = names or [f"{prefix}_{i}" for i in range(1, len(sequences) + 1)]
    lines = []
    for name, sequence, perplexity in zip(names, sequences, perplexities):
        lines.append(f">{name} length={len(sequence)} perplexity={perplexity:.3f}\n{sequence}\n")
    write_text_atomic(path, "".join(lines))


def generation_perplexities(model: ScoringModel, sequences: list[str]) -> list[float]:
    from megatron_plm.evaluation.perplexity import perplexity

    records = [(str(i), TOK.encode(s).astype(np.int64)) for i, s in enumerate(sequences)]
    return [score.perplexity for score in perplexity(model, records)]
