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
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from megatron_plm.data.corpus import Corpus
from megatron_plm.data.datasets import ProteinDataset, SampleConfig
from megatron_plm.data.masking import MaskingConfig
from megatron_plm.data.splits import Split, assign_splits
from megatron_plm.data.subword import load_tokenizer
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


@dataclass(kw_only=True)
class DataConfig:
    sources: list[DataSource]
    objective: Literal["clm", "mlm"] = "clm"
    """Set from the run's top-level ``objective`` when loaded as part of a TrainConfig."""
    seq_length: int = 1024
    packed: bool = True
    """Several proteins per sample (CLM always). MLM unpacked = ESM-2's one protein per sample."""
    reverse_prob: float = 0.0
    """CLM: probability of reversing a protein (framed ``2 ... 1``)."""
    mask_ratio: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    cluster_sampling: bool = True
    split_weights: tuple[float, float, float] = (0.98, 0.01, 0.01)
    """train / valid / test shares, assigned by hash (see splits.py)."""
    split_by_cluster: bool = True
    """Hash the cluster name when a document has one, so a cluster never straddles splits."""
    seed: int = 1234
    tokenizer: str | None = None
    """A subword tokenizer directory (``megatron-plm tokenizer train``); None: one token per residue.
    Every corpus must have been preprocessed with the same tokenizer."""
    masking: MaskingConfig = field(init=False)

    def __post_init__(self):
        self.masking = MaskingConfig(
            mask_ratio=self.mask_ratio, mask_token_prob=self.mask_token_prob, random_token_prob=self.random_token_prob
        )

    def sample_config(self) -> SampleConfig:
        return SampleConfig(
            objective=self.objective,
            seq_length=self.seq_length,
            packed=self.packed,
            reverse_prob=self.reverse_prob,
            masking=self.masking,
            cluster_sampling=self.cluster_sampling,
        )

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("data.sources is empty: give at least one corpus prefix")
        for i, source in enumerate(self.sources):
            if not source.weight > 0:
                raise ValueError(f"data.sources[{i}].weight must be > 0, got {source.weight}")
        self.sample_config().validate()
        if self.tokenizer is not None and self.reverse_prob:
            raise ValueError("data.reverse_prob must be 0 with a subword data.tokenizer: the corpus stores the "
                             "forward tokenization, and reversing its tokens would not tokenize the reversed protein")


def _derived_seed(seed: int, split: Split, source: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{split.name}/{source}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class DataBuilder:
    """Opens corpora and assigns splits once; builds datasets for any number of samples."""

    def __init__(self, config: DataConfig, tokenizer: ProteinTokenizer | None = None):
        config.validate()
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config.tokenizer)
        self._corpora: dict[str, Corpus] = {}
        self._splits: dict[str, np.ndarray] = {}

    def corpus(self, prefix: str) -> Corpus:
        if prefix not in self._corpora:
            corpus = Corpus.open(prefix)
            stored, expected = corpus.meta.get("tokenizer"), self.tokenizer.unique_identifiers
            if stored != expected:
                raise ValueError(
                    f"{prefix} was preprocessed with tokenizer {stored} but the run uses {expected} "
                    f"(data.tokenizer={self.config.tokenizer!r}): preprocess it with --tokenizer "
                    f"{self.config.tokenizer or '(none)'} or set data.tokenizer to the corpus's"
                )
            self._corpora[prefix] = corpus
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
