"""What samples a run draws, as configuration: the corpora, their split, and how samples are made.

Imports no torch (the run config is read before anything heavy loads)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from megatron_plm.data.samples.masking import MaskingConfig

Objective = Literal["clm", "mlm"]


@dataclass(frozen=True, kw_only=True)
class SampleRecipe:
    """How a sample is cut, framed and masked, whatever the objective: the part of the ``data`` section
    that the run's objective completes into a :class:`SampleConfig`."""

    seq_length: int = 1024
    """Tokens per sample, specials included."""
    packed: bool = True
    """Pack several proteins per sample (always for CLM). MLM unpacked: one protein per sample, cropped
    at random to ``seq_length`` with its ``<cls>``/``<eos>`` and padded (ESM-2's recipe)."""
    reverse_prob: float = 0.0
    """CLM: probability that a protein is reversed and framed ``2 ... 1`` (ProGen2's augmentation)."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    """MLM: which residues are selected for prediction and how they are corrupted (ESM-2: 15%, 80/10/10)."""
    cluster_sampling: bool = True
    """Uniform over clusters, then a uniform member, when the corpus has cluster ids."""


@dataclass(frozen=True, kw_only=True)
class SampleConfig(SampleRecipe):
    """Everything a dataset needs to make its samples: the recipe and the objective."""

    objective: Objective

    def validate(self) -> None:
        if self.objective not in ("clm", "mlm"):
            raise ValueError(f"data.objective must be 'clm' or 'mlm', got {self.objective!r}")
        if self.seq_length < 8:
            raise ValueError(f"data.seq_length must be at least 8, got {self.seq_length}")
        if self.objective == "clm" and not self.packed:
            raise ValueError("data.packed must be true for CLM (samples are packed end to end)")
        if not 0 <= self.reverse_prob <= 1:
            raise ValueError(f"data.reverse_prob must be in [0, 1], got {self.reverse_prob}")
        if self.reverse_prob and self.objective != "clm":
            raise ValueError("data.reverse_prob applies to CLM only; set it to 0 for MLM")
        if self.objective == "mlm":
            self.masking.validate()


@dataclass(kw_only=True)
class DataSource:
    prefix: str
    """A corpus written by ``megatron-plm preprocess`` (PREFIX.bin/.idx + metadata)."""
    weight: float = 1.0
    """Share of samples drawn from this source (normalised over sources)."""
    source_label: str | None = None
    """Use only this corpus's documents with this source label (None: all of them)."""


@dataclass(frozen=True, kw_only=True)
class DataConfig(SampleRecipe):
    """How samples are made (the fields of :class:`SampleRecipe`, masking under ``masking``), plus
    where they come from and how the corpora split. The objective is the run's (passed, not stored)."""

    sources: list[DataSource]
    """Corpora to mix; override one item as ``data.sources.0.prefix=...``."""
    split_weights: tuple[float, float, float] = (0.98, 0.01, 0.01)
    """train / valid / test shares, assigned by hash (see splits.py)."""
    split_by_cluster: bool = True
    """Hash the cluster name when a document has one, so a cluster never straddles splits."""
    seed: int = 1234
    """Seeds the sample order and masking (independent of ``training.seed``)."""
    cache: bool = True
    """Build splits and sample indices once and memory-map them on every rank (false: every process
    builds its own in memory, as before; same samples either way)."""
    cache_dir: str | None = None
    """Where the index cache lives; default: ``PREFIX.cache/`` beside each corpus."""
    cache_builder: Literal["global", "local"] = "global"
    """Who builds a missing entry: rank 0 (``global``, a directory all nodes share) or the first rank
    of each node (``local``, node-local disks)."""
    cache_timeout_s: float = 3600.0
    """How long the other ranks wait for the builder before failing with an error naming the entry."""
    cache_verify: bool = False
    """CRC-32 every cache file at every open (slow at scale: every rank reads the whole entry). Off: the
    builder verifies what it wrote in full once, and each open checks sizes, the build's description
    and a sampled SHA-256 (4 MiB per file). ``MEGATRON_PLM_CACHE_VERIFY=1`` turns it on too."""
    tokenizer: str | None = None
    """A subword tokenizer directory (``megatron-plm tokenizer train``); None: one token per residue.
    Every corpus must have been preprocessed with the same tokenizer."""

    def sample_config(self, objective: Objective) -> SampleConfig:
        return SampleConfig(objective=objective, **{f.name: getattr(self, f.name) for f in fields(SampleRecipe)})

    def validate(self, objective: Objective) -> None:
        if not self.sources:
            raise ValueError("data.sources is empty: give at least one corpus prefix")
        for i, source in enumerate(self.sources):
            if not source.weight > 0:
                raise ValueError(f"data.sources[{i}].weight must be > 0, got {source.weight}")
        if self.cache_builder not in ("global", "local"):
            raise ValueError(f"data.cache_builder must be 'global' or 'local', got {self.cache_builder!r}")
        if not self.cache_timeout_s > 0:
            raise ValueError(f"data.cache_timeout_s must be > 0, got {self.cache_timeout_s}")
        self.sample_config(objective).validate()
        if self.tokenizer is not None and self.reverse_prob:
            raise ValueError(
                "data.reverse_prob must be 0 with a subword data.tokenizer: the corpus stores the "
                "forward tokenization, and reversing its tokens would not tokenize the reversed protein"
            )


SPLIT_FIELDS = ("split_weights", "split_by_cluster")
"""``data`` fields that decide each document's split."""
ORDER_FIELDS = ("sources", "seed")
"""``data`` fields that decide how many samples each source gives and in which order."""
SAMPLES_DEPEND_ON = SPLIT_FIELDS + ORDER_FIELDS + tuple(f.name for f in fields(SampleRecipe))
"""Every ``data`` field that decides which samples a run sees, in which order: what the index cache's key
is made of (:meth:`~megatron_plm.data.samples.builder.DataBuilder.dataset`), and so what a resumed run
may not change. A field added to :class:`SampleRecipe` joins both."""
