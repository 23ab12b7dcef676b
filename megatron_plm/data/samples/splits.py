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
import importlib

import numpy as np

from megatron_plm.data.corpus import Corpus, corpus_paths


class Split(enum.IntEnum):
    TRAIN = 0
    VALID = 1
    TEST = 2


def _unit_interval(data: bytes, salt: bytes) -> float:
    digest = hashlib.blake2b(data, digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _native():
    try:
        return importlib.import_module("megatron_plm.data._split_hash_ext")
    except ImportError:
        return None


_BLOCK_DOCUMENTS = 1 << 22
"""Documents whose split values are computed at a time: the float temporaries stay O(block)."""

# Characters str.splitlines() also breaks on: names holding one take the reference path.
_OTHER_LINE_BREAKS = (b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")


def unit_intervals(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, salt: bytes) -> np.ndarray:
    """``_unit_interval`` of every field ``buffer[start : start + length]``: the C++ BLAKE2b
    (``csrc/splits``) when built, else hashlib field by field; the same floats either way."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    native = _native()
    if native is not None:
        buffer = np.ascontiguousarray(buffer, dtype=np.uint8)
        return native.blake2b_fields(buffer, starts, lengths, salt).astype(np.float64) / 2.0**64
    return np.array([_unit_interval(bytes(buffer[s : s + n]), salt) for s, n in zip(starts, lengths)], dtype=np.float64)


def _cluster_name_values(path, salt: bytes) -> np.ndarray:
    data = path.read_bytes()
    if any(brk in data for brk in _OTHER_LINE_BREAKS):
        names = data.decode("utf-8").splitlines()
        return np.array([_unit_interval(name.encode(), salt) for name in names], dtype=np.float64)
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == ord("\n"))
    if len(data) and not data.endswith(b"\n"):
        ends = np.r_[ends, len(data)]
    starts = np.r_[0, ends[:-1] + 1] if len(ends) else ends
    return unit_intervals(buffer, starts, ends - starts, salt)


def assign_splits(
    corpus: Corpus, weights: tuple[float, float, float], *, by_cluster: bool = True, salt: str = "megatron_plm"
) -> np.ndarray:
    """The :class:`Split` of every document (uint8). ``weights`` need not sum to 1."""
    weights_array = np.asarray(weights, dtype=np.float64)
    if weights_array.shape != (3,) or np.any(weights_array < 0) or weights_array.sum() <= 0:
        raise ValueError(f"split weights must be three non-negative numbers, not all zero; got {weights}")
    bounds = np.cumsum(weights_array / weights_array.sum())
    key = salt.encode()[:64]
    clusters = corpus.cluster_index() if by_cluster else None
    per_cluster = _cluster_name_values(corpus_paths(corpus.prefix)["clusters"], key) if clusters is not None else None
    dataset = corpus.indexed_dataset()
    residues = np.memmap(corpus_paths(corpus.prefix)["bin"], dtype=np.uint8, mode="r")
    splits = np.empty(len(corpus), dtype=np.uint8)
    for start in range(0, len(corpus), _BLOCK_DOCUMENTS):
        stop = min(start + _BLOCK_DOCUMENTS, len(corpus))
        values = np.empty(stop - start, dtype=np.float64)
        if clusters is not None:
            block = np.asarray(clusters[start:stop])
            clustered = block >= 0
            if clustered.any() and int(block.max()) >= len(per_cluster):
                from megatron_plm.safe_io import DamagedFileError

                paths = corpus_paths(corpus.prefix)
                raise DamagedFileError(
                    f"{paths['cluster']}: cluster index {int(block.max()):,}, but {paths['clusters']} names "
                    f"{len(per_cluster):,} clusters; rerun preprocess for this corpus"
                )
            values[clustered] = per_cluster[block[clustered]]
            unclustered = np.flatnonzero(~clustered)
        else:
            unclustered = np.arange(stop - start)
        if len(unclustered):
            # A document's residues are its bytes in the .bin (uint8 tokens): hash them in place.
            pointers = np.asarray(dataset.index.sequence_pointers[start:stop])[unclustered]
            lengths = np.asarray(dataset.sequence_lengths[start:stop])[unclustered]
            values[unclustered] = unit_intervals(residues, pointers, lengths, key)
        splits[start:stop] = np.searchsorted(bounds, values, side="right").clip(max=2)
    return splits


def split_documents(
    prefix, split: Split, weights: tuple[float, float, float], *, by_cluster: bool = True
) -> list[tuple[str, np.ndarray]]:
    """``(record id, token ids)`` of the documents of a preprocessed corpus in ``split``, assigned as a
    training run with these ``data.split_weights`` / ``data.split_by_cluster`` assigns them (the held-out
    split of a training corpus, for evaluation only)."""
    corpus = Corpus.open(prefix)
    chosen = np.flatnonzero(assign_splits(corpus, weights, by_cluster=by_cluster) == split)
    ids, dataset = corpus.record_ids(), corpus.indexed_dataset()
    return [(ids[d], np.asarray(dataset[int(d)]).astype(np.int64)) for d in chosen]
