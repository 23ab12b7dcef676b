"""The alignment's own site-independent model (a PSSM) as a floor for family models, and where the
alignment sits on the assay's protein.

A family-trained language model has to beat the column frequencies of its own training alignment
before it can claim to have learned anything beyond them (couplings between positions). The
profile: per match column, weighted residue counts (homolog weights, 80% identity) plus a
pseudocount, normalised over the 20 standard residues; a mutant scores
log f(mutant) - log f(wild type), summed over its mutations. Positions of the wild type outside
the alignment's match columns score 0 (no information).

The target (the assay's wild type) is put in the alignment by
:func:`~megatron_plm.data.preprocess.msa_target.place_target` (the first record, a record that is a piece
of it, or HMMER), said in ``placed``; the match columns' coverage then says which region of the protein
the family -- and a model trained on it -- knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_plm.data.preprocess.homologs import AMINO_ACIDS, homolog_weights, one_hot
from megatron_plm.data.preprocess.msa import Alignment
from megatron_plm.data.preprocess.msa_target import covered_span, place_target

_INDEX = {chr(letter): i for i, letter in enumerate(AMINO_ACIDS)}
_GAP = ord("-")


@dataclass
class Profile:
    query: str
    """The target's residues in match columns (the first record's when no target was given)."""
    log_frequencies: np.ndarray
    """``[query length, 20]`` log residue frequencies, one row per query residue."""
    neff: float
    coverage: np.ndarray | None = None
    """Per query residue, the share of the alignment's rows with a residue in its match column."""
    positions: np.ndarray | None = None
    """0-based position in ``target`` of each query residue (None: found in a wild type by text search)."""
    target: str | None = None
    """The protein the profile was placed on."""
    placed: str = "the first record"

    def positions_in(self, wild_type: str) -> np.ndarray | None:
        """Where the query residues sit in ``wild_type``, or None when the profile is not of this protein."""
        if self.positions is not None and wild_type == self.target:
            return self.positions
        offset = wild_type.find(self.query)
        return None if offset < 0 else offset + np.arange(len(self.query))

    def scores(self, wild_type: str, mutations: list[list[tuple[str, int, str]]]) -> np.ndarray | None:
        """Scores of mutants of ``wild_type`` (0-based positions), or None when the query is not in it."""
        positions = self.positions_in(wild_type)
        if positions is None:
            return None
        row_of = {int(p): i for i, p in enumerate(positions)}
        out = np.zeros(len(mutations))
        for k, mutation in enumerate(mutations):
            for wt, position, mt in mutation:
                row = row_of.get(position)
                if row is not None and wt in _INDEX and mt in _INDEX:
                    out[k] += self.log_frequencies[row, _INDEX[mt]] - self.log_frequencies[row, _INDEX[wt]]
        return out

    def region(self, wild_type: str, min_coverage: float) -> tuple[int, int] | None:
        """``[start, end)`` of ``wild_type`` from the first to the last residue whose match column holds a
        residue in at least ``min_coverage`` of the rows (EVE's focus columns: at most 30% gaps), or None."""
        positions = self.positions_in(wild_type)
        if positions is None or self.coverage is None:
            return None
        span = covered_span(self.coverage, min_coverage)
        return None if span is None else (int(positions[span[0]]), int(positions[span[1]]) + 1)


def build_profile(
    alignment: Alignment,
    identity: float = 0.8,
    pseudocount: float = 0.5,
    weighted: bool = True,
    target: str | None = None,
    weights: np.ndarray | None = None,
) -> Profile | None:
    """PSSM over the target's residues in match columns (``target`` None: the first record's; columns where
    it has a gap are dropped). ``weights``: homolog weights already computed for this alignment. None when
    ``target`` is not this family's (:func:`place_target`)."""
    placement = place_target(alignment, target) if target is not None else None
    if target is not None and placement is None:
        return None
    if weights is None:
        weights = homolog_weights(alignment, identity).weights if weighted else np.ones(len(alignment.ids))
    x = one_hot(alignment.columns).reshape(len(alignment.ids), alignment.columns.shape[1], 20)
    counts = np.einsum("n,nla->la", weights, x)
    present = (alignment.columns != _GAP).mean(axis=0)
    if target is None:
        keep, positions, placed, query = alignment.columns[0] != _GAP, None, "the first record", alignment.query
    else:
        keep, positions, placed = placement.columns, placement.positions, placement.how
        query = "".join(target[p] for p in positions)
    counts = counts[keep]
    frequencies = (counts + pseudocount) / (counts.sum(axis=1, keepdims=True) + 20 * pseudocount)
    return Profile(
        query=query,
        log_frequencies=np.log(frequencies),
        neff=float(weights.sum()),
        coverage=present[keep],
        positions=positions,
        target=target,
        placed=placed,
    )
