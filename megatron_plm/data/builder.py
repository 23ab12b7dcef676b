"""The data config and the one function the training loop calls to get its datasets.

Per split: one :class:`~megatron_plm.data.datasets.ProteinDataset` per source (a corpus, or
one source label within a corpus), mixed by weight through megatron-core's
``BlendedDataset`` when there is more than one. Splits come from
:func:`~megatron_plm.data.splits.assign_splits`, so they are the same for every run
over the same corpus.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields

import numpy as np

from megatron_plm.data.corpus import Corpus
from megatron_plm.data.datasets import Objective, ProteinDataset, SampleConfig
from megatron_plm.data.splits import Split, assign_splits
from megatron_plm.data.tokenizer import ProteinTokenizer

_BLEND_SURPLUS = 0.005
"""Each source is built a little larger than its share, as megatron-core's builder does, so the
blend never asks a source for a sample it does not have."""


@dataclass(kw_only=True)
class DataSource:
    prefix: str
    """A corpus written by ``megatron-plm preprocess`` (PREFIX.bin/.idx + metadata)."""
    weight: float = 1.0
    """Share of samples drawn from this source (normalised over sources)."""
    source_label: str | None = None
    """Use only this corpus's documents with this source label (None: all of them)."""


@dataclass(frozen=True, kw_only=True)
class DataConfig(SampleConfig):
    """How samples are made (the fields of :class:`SampleConfig`, masking under ``masking``), plus
    where they come from and how the corpora split."""

    sources: list[DataSource]
    objective: Objective = "clm"
    """Set from the run's top-level ``objective`` when loaded as part of a TrainConfig."""
    split_weights: tuple[float, float, float] = (0.98, 0.01, 0.01)
    """train / valid / test shares, assigned by hash (see splits.py)."""
    split_by_cluster: bool = True
    """Hash the cluster name when a document has one, so a cluster never straddles splits."""
    seed: int = 1234

    def sample_config(self) -> SampleConfig:
        return SampleConfig(**{f.name: getattr(self, f.name) for f in fields(SampleConfig)})

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("data.sources is empty: give at least one corpus prefix")
        for i, source in enumerate(self.sources):
            if not source.weight > 0:
                raise ValueError(f"data.sources[{i}].weight must be > 0, got {source.weight}")
        self.sample_config().validate()


def _derived_seed(seed: int, split: Split, source: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{split.name}/{source}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class DataBuilder:
    """Opens corpora and assigns splits once; builds datasets for any number of samples."""

    def __init__(self, config: DataConfig, tokenizer: ProteinTokenizer | None = None):
        config.validate()
        self.config = config
        self.tokenizer = tokenizer or ProteinTokenizer()
        self._corpora: dict[str, Corpus] = {}
        self._splits: dict[str, np.ndarray] = {}

    def corpus(self, prefix: str) -> Corpus:
        if prefix not in self._corpora:
            self._corpora[prefix] = Corpus.open(prefix)
            self._splits[prefix] = assign_splits(
                self._corpora[prefix], self.config.split_weights, by_cluster=self.config.split_by_cluster
            )
        return self._corpora[prefix]

    def documents(self, source: DataSource, split: Split) -> np.ndarray:
        corpus = self.corpus(source.prefix)
        selected = self._splits[source.prefix] == split
        if source.source_label is not None:
            if source.source_label not in corpus.source_labels:
                raise ValueError(
                    f"source label {source.source_label!r} not in {source.prefix} "
                    f"(it has {corpus.source_labels})"
                )
            selected &= np.asarray(corpus.source_index()) == corpus.source_labels.index(source.source_label)
        return np.flatnonzero(selected)

    def build(self, split: Split, num_samples: int):
        """A dataset of ``num_samples`` samples for ``split`` (a BlendedDataset over several sources)."""
        sources = self.config.sources
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        weights /= weights.sum()
        datasets = []
        for i, (source, weight) in enumerate(zip(sources, weights)):
            size = num_samples if len(sources) == 1 else math.ceil(weight * num_samples * (1 + _BLEND_SURPLUS)) + 1
            name = source.prefix + (f"[{source.source_label}]" if source.source_label else "")
            datasets.append(ProteinDataset(
                self.corpus(source.prefix), self.documents(source, split), config=self.config.sample_config(),
                num_samples=size, seed=_derived_seed(self.config.seed, split, i), split=split, name=name,
                tokenizer=self.tokenizer,
            ))  # fmt: skip
        if len(datasets) == 1:
            return datasets[0]
        from megatron.core.datasets.blended_dataset import BlendedDataset
        from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig

        megatron_config = BlendedMegatronDatasetConfig(
            random_seed=self.config.seed, sequence_length=self.config.seq_length, tokenizer=None
        )
        return BlendedDataset(datasets, weights.tolist(), num_samples, megatron_config)


def epochs_per_source(dataset, consumed_samples: int) -> dict[str, float]:
    """Epochs of each source's sampling units consumed by the first ``consumed_samples`` samples
    (the reference study's central data finding is that repeating data hurts: log this)."""
    if isinstance(dataset, ProteinDataset):
        return {dataset.name: dataset.epochs_at(consumed_samples)}
    drawn = np.bincount(np.asarray(dataset.dataset_index[:consumed_samples]), minlength=len(dataset.datasets))
    return {part.name: part.epochs_at(int(n)) for part, n in zip(dataset.datasets, drawn)}
