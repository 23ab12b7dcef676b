"""Homolog reweighting: sequence weights 1 / (neighbours at >= 80% identity), as EVE and
DeepSequence weight an alignment, and 80%-identity clusters that carry them into sampling.

A family alignment over-represents what was sequenced most (hundreds of near-identical clinical
TEM variants, say); trained on as is, a model learns that bias. Weighting each sequence by the
inverse size of its identity neighbourhood makes the effective number of sequences (Neff, the sum
of the weights) count distinct families, not copies.

Identity of ``i`` to ``j`` = identical residues in match columns where both have one, divided by
the residues of ``i`` in match columns (EVE's normalisation; a sequence is its own neighbour).
Computed as one-hot matrix products in row blocks: O(N^2 L) time (N sequences, L match columns;
about 0.2 TFLOP for 4,501 x 286 here), O(N L + block x N) memory, plus the neighbour lists.

Training reads the weights through cluster-aware sampling (uniform over clusters, then a member):
greedy 80% clusters -- the unclaimed sequence with the most neighbours claims its unclaimed
neighbours, as CD-HIT-style clustering does -- give each member a sampling probability of 1 / (clusters x its cluster size), which
tracks 1 / neighbours without any change to the datasets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from megatron_plm.outputs import write_text_atomic

from megatron_plm.data.preprocess.msa import Alignment

AMINO_ACIDS = b"ACDEFGHIKLMNPQRSTVWY"


def one_hot(columns: np.ndarray) -> np.ndarray:
    """``[N, L]`` letters -> ``[N, L * 20]`` float32 one-hot over the 20 standard residues (gaps and
    unusual letters are all-zero: they match nothing)."""
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[np.frombuffer(AMINO_ACIDS, dtype=np.uint8)] = np.arange(20)
    codes = lookup[columns]
    n, length = codes.shape
    out = np.zeros((n, length, 20), dtype=np.float32)
    rows, cols = np.nonzero(codes >= 0)
    out[rows, cols, codes[rows, cols]] = 1.0
    return out.reshape(n, length * 20)


@dataclass
class HomologWeights:
    weights: np.ndarray
    """1 / neighbours, per sequence (float64)."""
    neighbours: list[np.ndarray]
    """Per sequence, the indices of the sequences it is at least ``identity`` identical to."""
    identity: float

    @property
    def neff(self) -> float:
        return float(self.weights.sum())


def homolog_weights(alignment: Alignment, identity: float = 0.8, block: int = 512) -> HomologWeights:
    """Weights 1 / |{j : identity(i, j) >= threshold}| over the alignment's match columns."""
    if not 0 < identity <= 1:
        raise ValueError(f"identity threshold must be in (0, 1], got {identity}")
    x = one_hot(alignment.columns)
    residues = x.sum(axis=1)
    neighbours = []
    for start in range(0, len(x), block):
        shared = x[start : start + block] @ x.T  # [block, N] identical residues
        length = np.maximum(residues[start : start + block, None], 1.0)
        # A small tolerance: float32 sums of ones are exact, the division is not.
        close = shared >= identity * length - 1e-4
        neighbours.extend(np.flatnonzero(row) for row in close)
    counts = np.array([max(len(n), 1) for n in neighbours], dtype=np.float64)
    return HomologWeights(weights=1.0 / counts, neighbours=neighbours, identity=identity)


def greedy_clusters(result: HomologWeights, ids: list[str]) -> np.ndarray:
    """Cluster index per sequence: repeatedly, the unclaimed sequence with the most neighbours (the
    centre of a dense region) claims its unclaimed neighbours. Records sharing an id (two domains of one
    protein) are put in the first one's cluster, so the clusters join on id unambiguously."""
    n = len(result.weights)
    cluster = np.full(n, -1, dtype=np.int64)
    count = 0
    for i in np.argsort(result.weights, kind="stable"):
        if cluster[i] >= 0:
            continue
        members = result.neighbours[i]
        cluster[members[cluster[members] < 0]] = count
        cluster[i] = count
        count += 1
    first: dict[str, int] = {}
    for i, record_id in enumerate(ids):
        cluster[i] = cluster[first.setdefault(record_id, i)]
    return cluster


def write_weights(prefix: str | os.PathLike, ids: list[str], result: HomologWeights, clusters: np.ndarray) -> dict:
    """``PREFIX.weights.tsv`` (id, weight, neighbours) and ``PREFIX.clusters.tsv`` (representative,
    member: what ``preprocess --clusters`` reads); each written whole, then renamed into place."""
    prefix = os.fspath(prefix)
    representative: dict[int, str] = {}
    for i in np.argsort(result.weights, kind="stable"):  # the claiming order: centres first
        representative.setdefault(int(clusters[i]), ids[i])
    files = {"weights": f"{prefix}.weights.tsv", "clusters": f"{prefix}.clusters.tsv"}
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    rows = {
        "weights": ["id\tweight\tneighbours"]
        + [f"{i}\t{w:.6g}\t{len(n)}" for i, w, n in zip(ids, result.weights, result.neighbours)],
        "clusters": ["cluster_representative\tmember"]
        + list(dict.fromkeys(f"{representative[int(c)]}\t{i}" for i, c in zip(ids, clusters))),
    }
    for name, path in files.items():  # each under a temporary name of its own, then renamed
        write_text_atomic(path, "\n".join(rows[name]) + "\n")
    return files


@dataclass(kw_only=True)
class MsaWeightsConfig:
    alignment: str = field(metadata={"cli": {"positional": True}})
    """The alignment: a3m, a2m or aligned FASTA (optionally .gz)."""
    output_prefix: str
    """Writes PREFIX.weights.tsv and PREFIX.clusters.tsv."""
    identity: float = 0.8
    """Neighbour threshold: sequences at least this identical count as one (0.8, as EVE)."""
    format: Literal["a3m", "a2m", "afa"] | None = None
    """The alignment's format; default: by extension, else a3m."""


def run_msa_weights(config: MsaWeightsConfig) -> int:
    """``megatron-plm msa-weights``: weights and identity clusters of an alignment, written atomically."""
    import time

    from megatron_plm.data.preprocess.msa import msa_format_of, read_msa
    from megatron_plm.outputs import prepare_output
    from megatron_plm.safe_io import check_output_prefix

    prefix = check_output_prefix(config.output_prefix)
    prepare_output(prefix + ".weights.tsv", what="--output-prefix")  # before the O(N^2 L) work, not after
    started = time.perf_counter()
    alignment = read_msa(config.alignment, config.format or msa_format_of(str(config.alignment)) or "a3m")
    result = homolog_weights(alignment, config.identity)
    clusters = greedy_clusters(result, alignment.ids)
    files = write_weights(config.output_prefix, alignment.ids, result, clusters)
    n, columns = alignment.columns.shape
    print(
        f"{n:,} sequences x {columns} match columns: Neff {result.neff:,.1f} at {config.identity:.0%} identity, "
        f"{clusters.max() + 1:,} clusters ({time.perf_counter() - started:.1f} s)"
    )
    print(f"wrote {files['weights']}, {files['clusters']} (train on the clusters: preprocess --clusters)")
    return 0
