"""Sampling proteins from a CLM: temperature, top-k, top-p; framed and stopped by the terminus tokens.

Forward generation starts at ``1`` (N-terminus) and ends at ``2``; ``reverse`` starts at ``2`` and
the sampled C->N sequence is flipped back to N->C. Only residues (the 20 standard amino acids unless
``allow_nonstandard``) and the closing terminus can be sampled. A prompt fixes the first residues (the
last ones when reversed). Sampling is ``transformers``' ``generate`` (our checkpoints through the
export's conversion, in memory) with the settings of :func:`~megatron_plm.models.generation.generation_config`, which ``export-hf``
also writes: an export samples the same proteins at the same seed, and decodes through the key/value
cache, one token per step.
"""

from __future__ import annotations


from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from megatron_plm.data.tokenizers.protein import RESIDUES_TOKENIZER
from megatron_plm.evaluation.model import ModelTask, ScoringModel
from megatron_plm.models.generation import SamplingConfig, generation_config
from megatron_plm.outputs import write_text_atomic
from megatron_plm.progress import Progress


@dataclass(frozen=True, kw_only=True)
class GenerateTask(SamplingConfig, ModelTask):
    """``megatron-plm evaluate generate``: sample proteins from a CLM into a FASTA file."""

    output: Path
    """FASTA to write."""
    prompt: str | None = None
    """Residues every sequence starts with (ends with, if --reverse), or a FASTA file of such prefixes
    (--num sequences each); counted in --max-length."""

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(**{f.name: getattr(self, f.name) for f in fields(SamplingConfig)})


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
    prefix = RESIDUES_TOKENIZER.encode(prompt[::-1] if config.reverse else prompt).astype(np.int64)
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
        body = [t for t in row[1:] if t not in (settings.eos_token_id, RESIDUES_TOKENIZER.pad)]
        text = RESIDUES_TOKENIZER.decode(body)
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

    records = [(str(i), RESIDUES_TOKENIZER.encode(s).astype(np.int64)) for i, s in enumerate(sequences)]
    return [score.perplexity for score in perplexity(model, records)]
