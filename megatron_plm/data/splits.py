"""Deterministic train/valid/test splits from the corpus alone.

A document's split is decided by a hash of its cluster name (so near-duplicates in
one cluster never straddle the split) or, without a cluster, of its residues; the
hash maps to [0, 1) and the split weights cut that interval. Nothing depends on file
order, run seed or machine: the same sequence lands in the same split in every corpus
built from it.
"""

from __future__ import annotations

import enum
import hashlib

import numpy as np

from megatron_plm.data.corpus import Corpus, corpus_paths


class Split(enum.IntEnum):
    TRAIN = 0
    VALID = 1
    TEST = 2


def _unit_interval(data: bytes, salt: bytes) -> float:
    digest = hashlib.blake2b(data, digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def assign_splits(corpus: Corpus, weights: tuple[float, float, float], *, by_cluster: bool = True,
                  salt: str = "megatron_plm") -> np.ndarray:  # fmt: skip
    """The :class:`Split` of every document (uint8). ``weights`` need not sum to 1."""
    weights_array = np.asarray(weights, dtype=np.float64)
    if weights_array.shape != (3,) or np.any(weights_array < 0) or weights_array.sum() <= 0:
        raise ValueError(f"split weights must be three non-negative numbers, not all zero; got {weights}")
    bounds = np.cumsum(weights_array / weights_array.sum())
    key = salt.encode()[:64]
    clusters = corpus.cluster_index() if by_cluster else None
    values = np.empty(len(corpus), dtype=np.float64)
    dataset = corpus.indexed_dataset()
    if clusters is not None:
        names = corpus_paths(corpus.prefix)["clusters"].read_text(encoding="utf-8").splitlines()
        per_cluster = np.array([_unit_interval(name.encode(), key) for name in names])
        clustered = clusters >= 0
        values[clustered] = per_cluster[clusters[clustered]]
        unclustered = np.flatnonzero(~clustered)
    else:
        unclustered = np.arange(len(corpus))
    for doc in unclustered:
        values[doc] = _unit_interval(dataset[int(doc)].tobytes(), key)
    return np.searchsorted(bounds, values, side="right").clip(max=2).astype(np.uint8)
