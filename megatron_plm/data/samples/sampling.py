"""Which documents a run visits, in which order: pure functions of (seed, epoch).

An *epoch* is one pass over the sampling units of a split: every document (uniform
sampling), or every cluster with one uniformly drawn member each (cluster-aware
sampling, ESM-2's UniRef50 -> UniRef90 scheme). Documents without a cluster count as
clusters of one. Epoch ``e``'s order depends only on the seed and ``e``, so the order of
a run is the same however far it is built, and a resumed run sees the same documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_plm.data.hashing import GOLDEN, mix64

# Random streams: every random decision draws from rng(seed, stream, counter).
STREAM_EPOCH_ORDER = 1
STREAM_CLUSTER_MEMBER = 2
STREAM_SAMPLE_SHUFFLE = 3
STREAM_SAMPLE = 4
STREAM_REVERSE = 5
STREAM_MASK = 6


def rng(seed: int, stream: int, counter: int) -> np.random.Generator:
    """A generator independent for every (seed, stream, counter): for per-epoch decisions."""
    return np.random.default_rng([seed, stream, counter])


def random_bits(seed: int, stream: int, index: np.ndarray, position: np.ndarray) -> np.ndarray:
    """A random uint64 word for each (index, position) pair (arrays broadcast together) that depends
    only on (seed, stream, index, position): the per-sample randomness of the datasets.

    Counter-based (splitmix64): a sample's draws are the same whether it is built alone or in a
    batch, and cost a few vectorised integer operations instead of a generator per sample."""
    key = mix64(np.array([seed], dtype=np.uint64) * GOLDEN + np.uint64(stream))
    key = mix64(key ^ (np.asarray(index, dtype=np.uint64) * GOLDEN))
    return mix64(key + (np.asarray(position, dtype=np.uint64) + np.uint64(1)) * GOLDEN)


def uniform_noise(seed: int, stream: int, index: np.ndarray, position: np.ndarray | int = 0) -> np.ndarray:
    """Uniform floats in [0, 1) from :func:`random_bits` (53-bit resolution)."""
    return (random_bits(seed, stream, index, position) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def uniform_fields(bits: np.ndarray, fields: int = 3) -> list[np.ndarray]:
    """Split each 64-bit word into ``fields`` independent uniforms in [0, 1) of 21 bits each."""
    width = 64 // fields
    scale = 1.0 / (1 << width)
    mask = np.uint64((1 << width) - 1)
    return [((bits >> np.uint64(k * width)) & mask).astype(np.float64) * scale for k in range(fields)]


@dataclass(frozen=True)
class SamplingUnits:
    """Documents grouped into sampling units (clusters); one unit per document when uniform."""

    documents: np.ndarray
    """Document ids, grouped by unit (int64)."""
    unit_starts: np.ndarray
    """Start of each unit in ``documents``; length = units + 1."""

    @classmethod
    def uniform(cls, documents: np.ndarray) -> "SamplingUnits":
        documents = np.asarray(documents, dtype=np.int64)
        return cls(documents=documents, unit_starts=np.arange(len(documents) + 1, dtype=np.int64))

    @classmethod
    def by_cluster(cls, documents: np.ndarray, cluster_of_document: np.ndarray) -> "SamplingUnits":
        """``cluster_of_document`` is indexed by document id; -1 makes a document its own unit."""
        documents = np.asarray(documents, dtype=np.int64)
        cluster_of_document = np.asarray(cluster_of_document)
        # Unclustered documents get unit keys beyond every cluster id (any such offset gives the same
        # stable order). Keys are int32 when they fit, filled block by block: this sort is the largest
        # transient of an index build (at 1e8 documents, 4.4 GB private with int64 keys).
        beyond = int(cluster_of_document.max(initial=-1)) + 1
        keys = np.empty(len(documents), dtype=np.int32 if beyond + len(documents) < 2**31 else np.int64)
        for start in range(0, len(documents), 1 << 22):
            keys[start : start + (1 << 22)] = cluster_of_document[documents[start : start + (1 << 22)]]
        singles = np.flatnonzero(keys < 0)
        keys[singles] = beyond + np.arange(len(singles), dtype=keys.dtype)
        del singles
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        del keys
        return cls(documents=documents[order], unit_starts=np.r_[starts, len(order)].astype(np.int64))

    @property
    def num_units(self) -> int:
        return len(self.unit_starts) - 1

    def epoch(self, seed: int, epoch: int) -> np.ndarray:
        """The documents of epoch ``epoch``: units in a shuffled order, one member each."""
        unit_order = rng(seed, STREAM_EPOCH_ORDER, epoch).permutation(self.num_units)
        sizes = np.diff(self.unit_starts)
        if np.all(sizes == 1):
            return self.documents[unit_order]
        picks = rng(seed, STREAM_CLUSTER_MEMBER, epoch).integers(0, sizes)
        return self.documents[self.unit_starts[:-1] + picks][unit_order]


class DocumentOrder:
    """The concatenated epochs of a split, built lazily as far as asked."""

    def __init__(self, units: SamplingUnits, seed: int):
        if units.num_units == 0:
            raise ValueError("no documents to sample from (is the split empty?)")
        self.units = units
        self.seed = seed
        self._epochs: list[np.ndarray] = []

    def documents(self, count: int) -> np.ndarray:
        """The first ``count`` documents of the order."""
        while sum(len(e) for e in self._epochs) < count:
            self._epochs.append(self.units.epoch(self.seed, len(self._epochs)))
        return np.concatenate(self._epochs)[:count] if self._epochs else np.zeros(0, dtype=np.int64)

    def documents_until_tokens(self, tokens: int, sizes: np.ndarray) -> np.ndarray:
        """The shortest prefix of the order whose documents (sized by ``sizes``) hold ``tokens``."""
        total, epochs = 0, 0
        while total < tokens:
            if epochs == len(self._epochs):
                self._epochs.append(self.units.epoch(self.seed, epochs))
            total += int(sizes[self._epochs[epochs]].sum())
            epochs += 1
        order = np.concatenate(self._epochs[:epochs])
        covered = np.cumsum(sizes[order])
        return order[: int(np.searchsorted(covered, tokens)) + 1]

    def epochs_spanned(self, count: int) -> float:
        """How many epochs the first ``count`` documents of the order make (fractional)."""
        return count / self.units.num_units
