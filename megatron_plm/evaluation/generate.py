"""Sampling proteins from a CLM: temperature, top-k, top-p; framed and stopped by the terminus tokens.

Forward generation starts at ``1`` (N-terminus) and ends at ``2``; ``reverse`` starts at ``2`` and
the sampled C->N sequence is flipped back to N->C. Only residues (the 20 standard amino acids unless
``allow_nonstandard``) and the closing terminus can be sampled. A prompt fixes the first residues (the
last ones when reversed). Causal LMs decode through ``transformers``' key/value cache (our checkpoints
via the export's conversion, in memory): one token per step instead of the whole prefix.
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


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits


def generate(
    model: ScoringModel, config: SamplingConfig, prompt: str = "", *, show_progress: bool = False
) -> list[str]:
    """Sample ``num_sequences`` proteins (N->C strings) that begin with ``prompt`` (end with it when reverse).

    With a key/value cache (``model.decoder``) each step feeds one token; without, the whole prefix."""
    if model.objective != "clm":
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
    start, stop = (TOK.c_terminus, TOK.n_terminus) if config.reverse else (TOK.n_terminus, TOK.c_terminus)
    allowed = [TOK.token_to_id(c) for c in (RESIDUES if config.allow_nonstandard else STANDARD_AMINO_ACIDS)]
    permitted = torch.full((model.vocab_size,), float("-inf"))  # host: log_probs come back to the host
    permitted[allowed + [stop]] = 0.0
    generator = torch.Generator().manual_seed(config.seed)
    prefix = TOK.encode(prompt[::-1] if config.reverse else prompt).astype(np.int64)
    ids = torch.as_tensor(np.concatenate([[start], prefix]), dtype=torch.long).repeat(config.num_sequences, 1)  # host
    done = torch.zeros(config.num_sequences, dtype=torch.bool)  # host
    step = model.decoder() if model.decoder is not None and config.use_cache else None
    fresh = ids
    with Progress(config.max_length - len(prompt), "generate", unit="tokens", enabled=show_progress) as progress:
        while ids.shape[1] < config.max_length + 1 and not done.all():
            if step is not None:
                logits = model.step_log_probs(step, fresh)[:, -1] + permitted
            else:
                logits = model.log_probs(ids, torch.ones_like(ids))[:, -1] + permitted
            if ids.shape[1] == 1:
                logits[:, stop] = float("-inf")  # at least one residue
            probs = torch.softmax(_filter(logits / config.temperature, config.top_k, config.top_p), dim=-1)
            sampled = torch.multinomial(probs, 1, generator=generator)[:, 0]
            sampled = torch.where(done, torch.full_like(sampled, TOK.pad), sampled)
            done |= sampled == stop
            fresh = sampled[:, None]
            ids = torch.cat([ids, fresh], dim=1)
            progress.update(1)
    sequences = []
    for row in ids.tolist():
        body = [t for t in row[1:] if t not in (stop, TOK.pad)]
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
