"""Leakage report: how close each benchmark protein came to the model's training data.

A training corpus holding close homologs of an assay's protein inflates that assay's zero-shot
score (Hermann et al. 2024), so a Spearman means little without the nearest training-set identity
beside it. The corpus is read back from its tokenized ``.bin`` (what the model saw, after every
filter), streamed to MMseqs2, and the benchmark proteins are searched against it.

The whole corpus is searched, not only its train split: the valid/test splits are a few percent,
and a homolog there still says the corpus is not clean.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

LEVELS = (0.3, 0.5, 0.9)
"""Identities at which training homologs are counted."""
CONTAMINATED_IDENTITY = 0.5
"""An assay is flagged when a training sequence is at least this identical to its protein (over
at least half of it): at 50% identity a homolog shares the fold and much of the fitness landscape."""


@dataclass
class Leakage:
    """One benchmark protein against one training corpus."""

    target: str
    nearest_identity: float | None
    """Highest identity of a training sequence covering >= half the protein (None: none >= 30%)."""
    homologs: dict[float, int]
    """Level -> training sequences at least that identical (over >= half the protein)."""
    flag_identity: float = CONTAMINATED_IDENTITY

    @property
    def contaminated(self) -> bool:
        return self.nearest_identity is not None and self.nearest_identity >= self.flag_identity


def corpus_records(prefix: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """``(record id, residues)`` of every document of a preprocessed corpus, decoded from its tokens."""
    from megatron_plm.data.corpus import Corpus, corpus_paths

    corpus = Corpus.open(prefix)
    vocab = corpus.meta["vocab"]
    # a residue or subword piece decodes to its letters; a special token (none is stored) to X
    pieces = [("".join(c for c in t if c.isalpha() and c.isupper()) or "X").encode() for t in vocab]
    single = all(len(p) == 1 for p in pieces)
    lookup = np.frombuffer(b"".join(pieces), dtype=np.uint8) if single else None
    tokens = corpus.token_array()
    index = corpus.indexed_dataset().index
    starts = corpus.token_starts(np.arange(len(corpus)))
    lengths = index.sequence_lengths
    with open(corpus_paths(prefix)["ids"], "rb") as ids:
        for document in range(len(corpus)):
            record_id = ids.readline().rstrip(b"\n").decode("utf-8")
            piece = tokens[starts[document] : starts[document] + lengths[document]]
            residues = lookup[piece].tobytes() if single else b"".join(pieces[t] for t in piece)
            yield record_id, residues


def leakage_report(
    targets: list[tuple[str, str]],
    corpus_prefix: str | os.PathLike,
    *,
    coverage: float = 0.5,
    sensitivity: float = 7.5,
    flag_identity: float = CONTAMINATED_IDENTITY,
    mmseqs: str | None = None,
    threads: int | None = None,
    log=sys.stderr,
) -> dict[str, Leakage]:
    """Nearest training identity and homolog counts per ``(name, sequence)`` target."""
    from megatron_plm.data.preprocess.decontaminate import search_homologs
    from megatron_plm.data.preprocess.mmseqs import find_mmseqs, memory_limit_arguments, write_records_for_mmseqs

    binary = find_mmseqs(mmseqs)
    work = Path(tempfile.mkdtemp(prefix="megatron-plm-leakage."))
    try:
        target_copy = write_records_for_mmseqs(((n, s.encode()) for n, s in targets), work / "targets.fasta")
        corpus_copy = write_records_for_mmseqs(corpus_records(corpus_prefix), work / "corpus.fasta")
        search = search_homologs(
            target_copy,
            corpus_copy,
            work,
            binary=binary,
            min_seq_id=min(LEVELS),
            coverage=coverage,
            cov_mode=2,  # coverage of the benchmark protein
            sensitivity=sensitivity,
            max_seqs=100_000,
            evalue=1e-3,
            extra=memory_limit_arguments(None, threads),
            log=log,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best: dict[str, dict[str, float]] = {name: {} for name, _ in targets}
    for hit in search.hits:  # one identity per (target, training record): its best alignment
        seen = best[hit.target]
        seen[hit.record] = max(seen.get(hit.record, 0.0), hit.identity)
    return {
        name: Leakage(
            target=name,
            nearest_identity=max(identities.values(), default=None),
            homologs={level: sum(v >= level for v in identities.values()) for level in LEVELS},
            flag_identity=flag_identity,
        )
        for name, identities in best.items()
    }


def recorded_train_corpus(saved_run) -> str | None:
    """The (first) corpus prefix a model's training run recorded (its
    :class:`~megatron_plm.checkpoint.saved_run.SavedRun`; None for a ``transformers`` model), if it
    still exists here."""
    if saved_run is None:
        return None
    sources = (saved_run.data or {}).get("sources") or []
    for source in sources:
        prefix = source.get("prefix") if isinstance(source, dict) else None
        if prefix and os.path.exists(f"{prefix}.idx"):
            return prefix
    return None


def leakage_cells(leakage: Leakage | None) -> list[str]:
    """Table cells: nearest identity, homologs at each level, and a flag."""
    if leakage is None:
        return ["-"] * (len(LEVELS) + 2)
    nearest = "<0.30" if leakage.nearest_identity is None else f"{leakage.nearest_identity:.2f}"
    return [nearest, *(str(leakage.homologs[level]) for level in LEVELS), "LEAK" if leakage.contaminated else "ok"]


LEAKAGE_HEADER = ["train id", *(f">={level:.0%}" for level in LEVELS), "leak"]
