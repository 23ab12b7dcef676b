"""The alignment's own site-independent model (a PSSM) as a floor for family models.

A family-trained language model has to beat the column frequencies of its own training alignment
before it can claim to have learned anything beyond them (couplings between positions). The
profile: per match column, weighted residue counts (homolog weights, 80% identity) plus a
pseudocount, normalised over the 20 standard residues; a mutant scores
log f(mutant) - log f(wild type), summed over its mutations. Positions of the wild type outside
the alignment's match columns score 0 (no information).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_plm.data.preprocess.homologs import AMINO_ACIDS, homolog_weights, one_hot
from megatron_plm.data.preprocess.msa import Alignment

_INDEX = {chr(letter): i for i, letter in enumerate(AMINO_ACIDS)}


@dataclass
class Profile:
    query: str
    """The alignment's first sequence (its residues in match columns)."""
    log_frequencies: np.ndarray
    """``[query length, 20]`` log residue frequencies, one row per query residue."""
    neff: float

    def scores(self, wild_type: str, mutations: list[list[tuple[str, int, str]]]) -> np.ndarray | None:
        """Scores of mutants of ``wild_type`` (0-based positions), or None when the query is not in it."""
        offset = wild_type.find(self.query)
        if offset < 0:
            return None
        out = np.zeros(len(mutations))
        for k, mutation in enumerate(mutations):
            for wt, position, mt in mutation:
                row = position - offset
                if 0 <= row < len(self.query) and wt in _INDEX and mt in _INDEX:
                    out[k] += self.log_frequencies[row, _INDEX[mt]] - self.log_frequencies[row, _INDEX[wt]]
        return out


def build_profile(
    alignment: Alignment, identity: float = 0.8, pseudocount: float = 0.5, weighted: bool = True
) -> Profile:
    """PSSM over the query's residues (columns where the first sequence has a gap are dropped)."""
    weights = homolog_weights(alignment, identity).weights if weighted else np.ones(len(alignment.ids))
    x = one_hot(alignment.columns).reshape(len(alignment.ids), alignment.columns.shape[1], 20)
    counts = np.einsum("n,nla->la", weights, x)
    counts = counts[alignment.columns[0] != ord("-")]
    frequencies = (counts + pseudocount) / (counts.sum(axis=1, keepdims=True) + 20 * pseudocount)
    return Profile(query=alignment.query, log_frequencies=np.log(frequencies), neff=float(weights.sum()))
