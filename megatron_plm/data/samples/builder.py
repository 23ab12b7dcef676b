"""The data config and the one function the training loop calls to get its datasets.

Per split: one :class:`~megatron_plm.data.samples.datasets.ProteinDataset` per source (a corpus, or
one source label within a corpus), mixed by weight through megatron-core's
``BlendedDataset`` when there is more than one. Splits come from
:func:`~megatron_plm.data.samples.splits.assign_splits`, so they are the same for every run
over the same corpus. With ``cache`` on (the default), splits and each dataset's indices are
built by one rank and memory-mapped by the others from ``cache_dir`` (see index_cache.py).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from megatron_plm.data.corpus import Corpus
from megatron_plm.config import to_plain
from megatron_plm.data.samples.config import SPLIT_FIELDS, DataConfig, DataSource, Objective
from megatron_plm.data.samples.datasets import ProteinDataset, build_index
from megatron_plm.data.samples.index_cache import IndexCache, corpus_fingerprint
from megatron_plm.data.samples.splits import Split, assign_splits
from megatron_plm.data.tokenizers.subword import load_tokenizer
from megatron_plm.data.tokenizers.protein import ProteinTokenizer

_BLEND_SURPLUS = 0.005
"""Each source is built a little larger than its share, as megatron-core's builder does, so the
blend never asks a source for a sample it does not have."""


INDEX_VERSION = 1
"""Part of every cache entry's description: bump it when a change to the code moves samples."""


def _derived_seed(seed: int, split: Split, source: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{split.name}/{source}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class DataBuilder:
    """Opens corpora and assigns splits once; builds datasets for any number of samples."""

    def __init__(self, config: DataConfig, objective: Objective, tokenizer: ProteinTokenizer | None = None):
        config.validate(objective)
        self.config, self.objective = config, objective
        self.tokenizer = tokenizer or load_tokenizer(config.tokenizer)
        self._corpora: dict[str, Corpus] = {}
        self._splits: dict[str, np.ndarray] = {}
        self._fingerprints: dict[str, dict] = {}
        self._caches: dict[str, IndexCache] = {}

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
        return self._corpora[prefix]

    def cache(self, prefix: str) -> IndexCache | None:
        """The index cache for a corpus (None when ``data.cache`` is off)."""
        if not self.config.cache:
            return None
        directory = self.config.cache_dir or os.fspath(prefix) + ".cache"
        if directory not in self._caches:
            self._caches[directory] = IndexCache(
                directory,
                builder=self.config.cache_builder,
                timeout_s=self.config.cache_timeout_s,
                verify=self.config.cache_verify,
            )
        return self._caches[directory]

    def _description(self, prefix: str, **fields) -> dict:
        if prefix not in self._fingerprints:
            self.corpus(prefix)
            self._fingerprints[prefix] = corpus_fingerprint(prefix)
        return {
            "index_version": INDEX_VERSION,
            "corpus": self._fingerprints[prefix],
            **{name: to_plain(getattr(self.config, name)) for name in SPLIT_FIELDS},
            **fields,
        }

    def splits(self, prefix: str) -> np.ndarray:
        """Every document's :class:`Split` (uint8)."""
        if prefix not in self._splits:
            corpus = self.corpus(prefix)

            def assign():
                return {
                    "splits": assign_splits(corpus, self.config.split_weights, by_cluster=self.config.split_by_cluster)
                }

            cache = self.cache(prefix)
            if cache is None:
                self._splits[prefix] = assign()["splits"]
            else:
                entry = cache.get(f"{Path(prefix).name}.splits", self._description(prefix, kind="splits"), assign)
                self._splits[prefix] = entry["splits"]
        return self._splits[prefix]

    def documents(self, source: DataSource, split: Split) -> np.ndarray:
        corpus = self.corpus(source.prefix)
        self._check_label(source)
        selected = self.splits(source.prefix) == split
        if source.source_label is not None:
            selected &= np.asarray(corpus.source_index()) == corpus.source_labels.index(source.source_label)
        return np.flatnonzero(selected)

    def _check_label(self, source: DataSource) -> None:
        corpus = self.corpus(source.prefix)
        if source.source_label is not None and source.source_label not in corpus.source_labels:
            raise ValueError(
                f"source label {source.source_label!r} not in {source.prefix} (it has {corpus.source_labels})"
            )

    def dataset(self, source: DataSource, split: Split, num_samples: int, seed: int) -> ProteinDataset:
        """One source's dataset for ``split``; its indices come from the cache when it is on."""
        corpus, sample_config = self.corpus(source.prefix), self.config.sample_config(self.objective)
        name = source.prefix + (f"[{source.source_label}]" if source.source_label else "")
        common = dict(
            config=sample_config, num_samples=num_samples, seed=seed, split=split, name=name, tokenizer=self.tokenizer
        )
        cache = self.cache(source.prefix)
        if cache is None:
            return ProteinDataset(corpus, self.documents(source, split), **common)
        self._check_label(source)
        description = self._description(
            source.prefix,
            kind="samples",
            split=split.name,
            source_label=source.source_label,
            seed=seed,
            num_samples=num_samples,
            sample=asdict(sample_config),
        )

        def build():
            documents = self.documents(source, split)
            if len(documents) == 0:
                raise ValueError(f"{name}: no documents in the {split.name.lower()} split")
            return build_index(corpus, documents, config=sample_config, num_samples=num_samples, seed=seed)

        label = source.source_label or "all"
        index = cache.get(f"{Path(source.prefix).name}.{label}.{split.name.lower()}", description, build)
        return ProteinDataset(corpus, index["units_documents"], index=index, **common)

    def build(self, split: Split, num_samples: int):
        """A dataset of ``num_samples`` samples for ``split`` (a BlendedDataset over several sources)."""
        sources = self.config.sources
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        weights /= weights.sum()
        datasets = []
        for i, (source, weight) in enumerate(zip(sources, weights)):
            size = num_samples if len(sources) == 1 else math.ceil(weight * num_samples * (1 + _BLEND_SURPLUS)) + 1
            datasets.append(self.dataset(source, split, size, _derived_seed(self.config.seed, split, i)))
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
