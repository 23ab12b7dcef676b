"""Where a target protein sits in a family alignment, and the family cut to what covers it.

A family model is trained on an alignment and judged on one protein of the family (a deep mutational
scan's wild type). The target is put in the alignment's match columns one of three ways: the first
record is it (ColabFold, jackhmmer: the query leads), a record is a piece of it (a Pfam domain row such
as ``BLAT_ECOLX/26-286``), or it is aligned to the family's profile HMM with HMMER (``pyhmmer``:
hmmbuild over the match columns, hmmalign of the target), the field's standard tool.

The match columns' coverage (share of rows with a residue there) then says which region of the
protein the family knows: from the first to the last of the target's residues whose column holds a
residue in at least ``min_coverage`` of the rows (EVE's focus columns). Scoring can keep to that region
(``evaluate dms --region covered``), and so can training: ``preprocess --crop-to-target`` keeps of each
homolog only its residues from that region's first match column to its last, so the model learns what
it will be asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from megatron_plm.data.preprocess.fasta import read_fasta
from megatron_plm.data.preprocess.msa import Alignment, read_msa

_GAP = ord("-")
_TARGET_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWYXBUZO")


def read_target(value: str, name: str | None = None, flag: str = "--wildtype") -> str:
    """A protein given on the command line: a FASTA file (its one record, or the record called ``name``)
    or the sequence itself. The error names ``flag``."""
    if os.path.isfile(value):  # (a long sequence is no file name)
        records = {r.record_id: r.sequence.decode().upper() for r in read_fasta(value)}
        if len(records) == 1:
            return next(iter(records.values()))
        if name in records:
            return records[name]
        which = f"none is named {name}" if name else "which one is meant? give a file with one record"
        raise ValueError(f"{flag} {value}: {len(records)} records and {which}")
    sequence = value.strip().upper()
    bad = sorted(set(sequence) - _TARGET_LETTERS)
    if bad or not sequence:
        what = f"({bad[0]!r})" if bad else "(empty)"
        raise ValueError(f"{flag}: neither an existing FASTA file nor a protein sequence {what}")
    return sequence


@dataclass
class TargetPlacement:
    """The target's residues in the alignment's match columns."""

    columns: np.ndarray
    """Indices of the match columns where the target has a residue, in order."""
    positions: np.ndarray
    """0-based position in the target of each of those residues."""
    how: str
    """How it was put in (printed under the table)."""


def _in_match_columns(letters: Iterable[tuple[str, bool]], start: int) -> tuple[np.ndarray, np.ndarray]:
    """From an aligned row as ``(letter, in a match column)`` pairs, whose first residue is the target's
    ``start``: the match column and the target position of each residue in a match column."""
    columns, positions, column, position = [], [], 0, start
    for letter, match in letters:
        if letter.isalpha():
            if match:
                columns.append(column)
                positions.append(position)
            position += 1
        if match:
            column += 1
    return np.array(columns, dtype=np.int64), np.array(positions, dtype=np.int64)


def place_target(alignment: Alignment, target: str, min_filled: float = 0.9) -> TargetPlacement | None:
    """The target in the alignment's match columns: the first record, a record that is a piece of it
    with residues in at least ``min_filled`` of the match columns (a short fragment would place only
    part of it), or (neither) aligned to the family's profile HMM with HMMER (:func:`hmmalign_target`).
    None when it is none of these (not this family's protein)."""
    first = alignment.columns[0]
    residues = np.flatnonzero(first != _GAP)
    offset = target.find(alignment.query)
    if offset >= 0:
        return TargetPlacement(residues, offset + np.arange(len(residues)), "the first record")
    width = alignment.columns.shape[1]
    filled = (alignment.columns != _GAP).sum(axis=1)
    for i in np.argsort(-filled, kind="stable"):  # the fullest rows first: a short fragment may match too
        if filled[i] < min_filled * width:
            break
        text = (alignment.rows or [])[i].decode()
        segment = text.replace("-", "").replace(".", "").upper()
        start = target.find(segment)
        if start < 0:
            continue
        columns, positions = _in_match_columns(((c, not (c.islower() or c == ".")) for c in text), start)
        return TargetPlacement(columns, positions, f"found as record {alignment.ids[i]}")
    return hmmalign_target(alignment, target)


def hmmalign_target(alignment: Alignment, target: str, max_evalue: float = 1e-5) -> TargetPlacement | None:
    """HMMER through ``pyhmmer``: a profile HMM built over exactly the alignment's match columns (hand
    architecture), then the target aligned to it; its residues in match states give the placement.
    None when ``hmmsearch`` does not find the target a homolog (E-value above ``max_evalue``)."""
    import pyhmmer
    from pyhmmer.easel import Alphabet, TextMSA, TextSequence
    from pyhmmer.plan7 import Background, Builder

    amino = Alphabet.amino()
    rows = [TextSequence(name=str(i).encode(), sequence=r.tobytes().decode()) for i, r in enumerate(alignment.columns)]
    msa = TextMSA(name=b"family", sequences=rows)
    msa.reference = "x" * alignment.columns.shape[1]
    hmm, _, _ = Builder(amino, architecture="hand").build_msa(msa.digitize(amino), Background(amino))
    sequence = TextSequence(name=b"target", sequence=target).digitize(amino)
    hits = next(iter(pyhmmer.hmmer.hmmsearch([hmm], [sequence], E=max_evalue)))
    if not len(hits):  # hmmalign aligns anything; only a homolog is placed
        return None
    evalue = hits[0].evalue
    aligned = pyhmmer.hmmer.hmmalign(hmm, [sequence], trim=False)
    row, reference = aligned.alignment[0], aligned.reference
    columns, positions = _in_match_columns(((c, mark not in ".-") for c, mark in zip(row, reference)), 0)
    if not len(columns):
        raise ValueError("hmmalign put none of the target's residues in the family's match columns")
    return TargetPlacement(
        columns,
        positions,
        f"aligned with HMMER (pyhmmer {pyhmmer.__version__} hmmalign; hmmsearch E-value {evalue:.1e}): "
        f"{len(columns)} of its {len(target)} residues in {alignment.columns.shape[1]} match columns",
    )


@dataclass(frozen=True)
class CoveredRegion:
    """The part of the target the family covers, in the target and in the alignment."""

    start: int
    """0-based first residue of the target in the region."""
    end: int
    """One past the last."""
    first_column: int
    """The match column of the target's residue ``start``."""
    last_column: int
    """The match column of its residue ``end - 1``."""


def covered_span(coverage: np.ndarray, min_coverage: float) -> tuple[int, int] | None:
    """Indices of the first and last of the target's placed residues whose match column's ``coverage``
    (share of rows with a residue) is at least ``min_coverage``, or None when none is."""
    (kept,) = np.nonzero(coverage >= min_coverage)
    return (int(kept[0]), int(kept[-1])) if len(kept) else None


def covered_region(alignment: Alignment, placement: TargetPlacement, min_coverage: float) -> CoveredRegion | None:
    """The target from its first to its last residue whose match column holds a residue in at least
    ``min_coverage`` of the rows, or None when no column is that full."""
    span = covered_span((alignment.columns != _GAP).mean(axis=0)[placement.columns], min_coverage)
    if span is None:
        return None
    first, last = span
    return CoveredRegion(
        start=int(placement.positions[first]),
        end=int(placement.positions[last]) + 1,
        first_column=int(placement.columns[first]),
        last_column=int(placement.columns[last]),
    )


def crop_rows(alignment: Alignment, fmt: str, first_column: int, last_column: int) -> list[bytes]:
    """Each row's residues (upper case, gaps dropped) from match column ``first_column`` to ``last_column``,
    with the insertions between them: the homologs' part that aligns to that stretch (empty where a row has
    none there). ``fmt`` ``afa`` has no insertions: every column is a match column."""
    out = []
    for row in alignment.rows:
        letters = np.frombuffer(row, dtype=np.uint8)
        lower = (letters >= 97) & (letters <= 122)
        if fmt == "afa":
            match = np.ones(len(letters), dtype=bool)
        else:
            match = ~(lower | (letters == ord(".")))
        column = np.cumsum(match) - 1  # an insertion belongs after the match column before it
        inside = (column >= first_column) & np.where(match, column <= last_column, column < last_column)
        residue = lower | ((letters >= 65) & (letters <= 90))
        out.append(letters[inside & residue].tobytes().upper())
    return out


def cropped_homologs(path: str | os.PathLike, fmt: str, target: str, min_coverage: float) -> tuple[bytes, str]:
    """The alignment at ``path`` as FASTA of its homologs cut to the region of ``target`` the family covers
    (:func:`crop_rows`; rows left empty are dropped), and a line saying what was done."""
    alignment = read_msa(path, fmt)
    placement = place_target(alignment, target)
    if placement is None:
        raise ValueError(
            f"--crop-to-target: the target ({len(target)} residues) is not in {path}'s family: not its first record "
            "nor a piece of a record, and hmmsearch finds no hit at E <= 1e-5"
        )
    region = covered_region(alignment, placement, min_coverage)
    if region is None:
        raise ValueError(
            f"--crop-to-target: none of the target's match columns in {path} holds residues in "
            f">= {min_coverage:g} of the rows; lower --min-coverage"
        )
    rows = crop_rows(alignment, fmt, region.first_column, region.last_column)
    kept = [(name, row) for name, row in zip(alignment.ids, rows) if row]
    fasta = b"".join(b">%s\n%s\n" % (name.encode(), row) for name, row in kept)
    note = (
        f"{path}: cropped to the target's residues {region.start + 1}-{region.end} of {len(target)} (match columns "
        f"{region.first_column + 1}-{region.last_column + 1} of {alignment.columns.shape[1]}, the first and last with "
        f"residues in >= {min_coverage:g} of the rows; target placed: {placement.how}); "
        f"{len(rows) - len(kept):,} of {len(rows):,} rows hold no residue there and were dropped"
    )
    return fasta, note
